/* test_toolchain.c -- the kernel compiler's objects (compiler/toolchain.c) carry only 64-bit
 * absolute relocations.
 *
 * The JIT places an object's code and its constants wherever the allocator puts them; in a
 * process that maps gigabytes of activations between two kernel builds they can end up more
 * than 2 GB apart, and a 32-bit pc-relative relocation is then silently truncated (a load from
 * an unmapped address).  Kernels are therefore compiled with the large code model; this test
 * compiles a source that needs a constant pool (a vector shuffle mask), a call (memset) and
 * static data, walks the ELF relocation sections and fails on any other relocation type.
 *
 * Then the same object goes through the JIT with TICKET_PERF_MAP=1: each function looked up
 * must appear in /tmp/perf-<pid>.map at the address the JIT returned, with a non-zero size,
 * so that perf can name the generated kernels.
 */
#include "check.h"

#include "compiler/jit.h"
#include "compiler/toolchain.h"

#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* the JIT's perf map names both probe functions at their addresses */
static void check_perf_map(const tk_cc_unit *u) {
  char why[256];
  if (!tk_jit_built(why, sizeof why)) {
    printf("perf map: skipped (%s)\n", why);
    return;
  }
  char path[64];
  snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
  unlink(path);
  setenv("TICKET_PERF_MAP", "1", 1);
  tk_jit *j = NULL;
  CHECK_MSG(tk_jit_create(&j) == TK_OK, "JIT: %s", tk_last_error());
  unsetenv("TICKET_PERF_MAP");
  if (!j) return;
  CHECK_MSG(tk_jit_add_object(j, u->obj, u->obj_len, "relocation probe") == TK_OK, "add: %s", tk_last_error());
  static const char *const fns[] = {"k_shuffle", "k_call"};
  void *addr[2];
  for (int f = 0; f < 2; f++) {
    addr[f] = tk_jit_lookup(j, fns[f]);
    CHECK_MSG(addr[f] != NULL, "lookup %s: %s", fns[f], tk_last_error());
  }
  FILE *fp = fopen(path, "r");
  CHECK_MSG(fp != NULL, "TICKET_PERF_MAP=1 wrote no %s", path);
  int found = 0;
  unsigned long long a, size;
  char name[64];
  while (fp && fscanf(fp, "%llx %llx %63s", &a, &size, name) == 3)
    for (int f = 0; f < 2; f++)
      if (!strcmp(name, fns[f])) {
        CHECK_MSG(a == (unsigned long long)(uintptr_t)addr[f] && size > 0, "%s: map says %llx size %llx, JIT %p",
                  fns[f], a, size, addr[f]);
        found |= 1 << f;
      }
  CHECK_MSG(found == 3, "perf map names %s%s", found & 1 ? "" : "no k_shuffle ", found & 2 ? "" : "no k_call");
  if (fp) fclose(fp);
  unlink(path);
  tk_jit_release(j);
  printf("perf map: both functions at their JIT addresses\n");
}

static const char g_src[] =
    "#include <string.h>\n"
    "typedef float v16 __attribute__((vector_size(64)));\n"
    "static float table[64] = {1, 2, 3};\n"
    "void k_shuffle(float *p) {\n"
    "  v16 a = *(v16 *)p, b = *(v16 *)(p + 16);\n"
    "  *(v16 *)p = __builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)\n"
    "              + (v16){1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f, 8.5f, 9.5f, 1.25f, 2.25f, 3.25f, 4.25f, 5.25f, 6.25f, 7.25f};\n"
    "}\n"
    "void k_call(float *p, int n) { memset(p, 0, (size_t)n * sizeof *p); p[0] = table[n & 63]; }\n";

int main(void) {
  char why[256];
#if defined(__x86_64__)
  const unsigned abs64 = R_X86_64_64;
#elif defined(__aarch64__)
  const unsigned abs64 = R_AARCH64_ABS64;
#else
  check_skip("no relocation check for this host architecture");
#endif
  if (!tk_cc_path(why, sizeof why)) check_skip(why);
  CHECK_MSG(strstr(tk_cc_flags(), "-mcmodel=large") != NULL, "kernel flags without the large code model: %s",
            tk_cc_flags());
  tk_cc_unit u = {.name = "relocation probe", .src = g_src, .src_len = sizeof g_src - 1};
  tk_status st = tk_cc_compile(&u, 1, 1, NULL);
  CHECK_MSG(st == TK_OK, "compile failed: %s", tk_last_error());
  if (st != TK_OK) return check_done("toolchain");
  const unsigned char *o = u.obj;
  CHECK_MSG(u.obj_len >= sizeof(Elf64_Ehdr) && !memcmp(o, ELFMAG, SELFMAG) && o[EI_CLASS] == ELFCLASS64,
            "the object is not ELF64 (%zu bytes)", u.obj_len);
  if (check_failures) return check_done("toolchain");
  Elf64_Ehdr eh;
  memcpy(&eh, o, sizeof eh);
  CHECK_MSG(eh.e_shoff > 0 && eh.e_shentsize == sizeof(Elf64_Shdr) &&
                eh.e_shoff + (size_t)eh.e_shnum * sizeof(Elf64_Shdr) <= u.obj_len,
            "section header table out of range");
  int n_rel = 0, n_bad = 0;
  for (int i = 0; !check_failures && i < eh.e_shnum; i++) {
    Elf64_Shdr sh;
    memcpy(&sh, o + eh.e_shoff + (size_t)i * sizeof sh, sizeof sh);
    if (sh.sh_type == SHT_REL) {
      CHECK_MSG(0, "section %d: SHT_REL (expected RELA on this target)", i);
      continue;
    }
    if (sh.sh_type != SHT_RELA) continue;
    CHECK_MSG(sh.sh_offset + sh.sh_size <= u.obj_len && sh.sh_entsize == sizeof(Elf64_Rela),
              "section %d: relocations out of range", i);
    for (size_t k = 0; !check_failures && k < sh.sh_size / sizeof(Elf64_Rela); k++) {
      Elf64_Rela r;
      memcpy(&r, o + sh.sh_offset + k * sizeof r, sizeof r);
      n_rel++;
      if (ELF64_R_TYPE(r.r_info) != abs64) {
        n_bad++;
        fprintf(stderr, "FAIL: relocation %zu of section %d has type %u (only %u, 64-bit absolute, is safe)\n", k,
                i, (unsigned)ELF64_R_TYPE(r.r_info), abs64);
      }
    }
  }
  /* the probe needs at least the constant, the table and memset */
  CHECK_MSG(n_rel >= 3, "only %d relocations: the probe did not exercise what it should", n_rel);
  CHECK_MSG(n_bad == 0, "%d of %d relocations are not 64-bit absolute", n_bad, n_rel);
  printf("%d relocations, all 64-bit absolute\n", n_rel);
  check_perf_map(&u);
  free(u.obj);
  return check_done("toolchain");
}
