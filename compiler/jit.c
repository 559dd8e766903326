/* jit.c -- LLVM-C ORC LLJIT: load relocatable objects produced by clang (toolchain.c) into
 * this process and look up their functions.  The only file of Ticket that includes llvm-c. */
#include "jit.h"

#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <elf.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* a function of an added object: its name and size (for the perf map) */
typedef struct {
  char *name;
  uint64_t size;
} jit_fn;

struct tk_jit {
  LLVMOrcLLJITRef lljit;
  int refs;
  pthread_mutex_t lock;
  FILE *perf_map; /* TICKET_PERF_MAP=1: /tmp/perf-<pid>.map, so that perf names the kernels */
  jit_fn *fns;
  size_t n_fns, cap_fns;
};

bool tk_jit_built(char *why, size_t why_len) {
  (void)why, (void)why_len;
  return true;
}

static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;
static int g_init_failed;
static void init_llvm(void) {
  g_init_failed = LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter();
}

/* Turns an LLVMErrorRef into tk_fail (consumes it). */
static tk_status llvm_fail(LLVMErrorRef e, const char *what) {
  char *msg = LLVMGetErrorMessage(e);
  tk_status st = tk_fail(TK_ERR_COMPILE, "%s: LLVM ORC: %s", what, msg ? msg : "unknown error");
  LLVMDisposeErrorMessage(msg);
  return st;
}

tk_status tk_jit_create(tk_jit **out) {
  *out = NULL;
  pthread_once(&g_init_once, init_llvm);
  if (g_init_failed) return tk_fail(TK_ERR_UNSUPPORTED, "LLVM: the native target is not available");
  tk_jit *j = tk_calloc(1, sizeof *j);
  if (!j) return TK_ERR_NOMEM;
  LLVMErrorRef e = LLVMOrcCreateLLJIT(&j->lljit, NULL);
  if (e) {
    free(j);
    return llvm_fail(e, "creating the JIT");
  }
  LLVMOrcDefinitionGeneratorRef gen;
  e = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(j->lljit), NULL, NULL);
  if (e) {
    LLVMOrcDisposeLLJIT(j->lljit);
    free(j);
    return llvm_fail(e, "resolving host symbols");
  }
  LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(j->lljit), gen);
  j->refs = 1;
  pthread_mutex_init(&j->lock, NULL);
  const char *pm = getenv("TICKET_PERF_MAP");
  if (pm && !strcmp(pm, "1")) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
    j->perf_map = fopen(path, "a");
  }
  *out = j;
  return TK_OK;
}

/* Records the sizes of the object's functions (its ELF symbol table), for the perf map.  Reads
 * only within [obj, obj + n); an object it does not understand records nothing. */
static void note_functions(tk_jit *j, const unsigned char *obj, size_t n) {
  Elf64_Ehdr eh;
  if (n < sizeof eh) return;
  memcpy(&eh, obj, sizeof eh);
  if (memcmp(eh.e_ident, ELFMAG, SELFMAG) || eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_shentsize != sizeof(Elf64_Shdr) ||
      eh.e_shoff > n || (n - eh.e_shoff) / sizeof(Elf64_Shdr) < eh.e_shnum)
    return;
  for (unsigned k = 0; k < eh.e_shnum; k++) {
    Elf64_Shdr sh, st;
    memcpy(&sh, obj + eh.e_shoff + k * sizeof sh, sizeof sh);
    if (sh.sh_type != SHT_SYMTAB || sh.sh_link >= eh.e_shnum || sh.sh_offset > n || sh.sh_size > n - sh.sh_offset)
      continue;
    memcpy(&st, obj + eh.e_shoff + sh.sh_link * sizeof st, sizeof st);
    if (st.sh_offset > n || st.sh_size > n - st.sh_offset) continue;
    const char *names = (const char *)obj + st.sh_offset;
    for (uint64_t q = 0; q < sh.sh_size / sizeof(Elf64_Sym); q++) {
      Elf64_Sym sym;
      memcpy(&sym, obj + sh.sh_offset + q * sizeof sym, sizeof sym);
      if (ELF64_ST_TYPE(sym.st_info) != STT_FUNC || sym.st_name >= st.sh_size) continue;
      const char *name = names + sym.st_name;
      if (!memchr(name, 0, st.sh_size - sym.st_name)) continue;
      if (j->n_fns == j->cap_fns) {
        size_t cap = j->cap_fns ? 2 * j->cap_fns : 64;
        jit_fn *f = realloc(j->fns, cap * sizeof *f);
        if (!f) return;
        j->fns = f, j->cap_fns = cap;
      }
      char *dup = strdup(name);
      if (!dup) return;
      j->fns[j->n_fns++] = (jit_fn){dup, sym.st_size};
    }
  }
}

tk_status tk_jit_add_object(tk_jit *j, const void *obj, size_t n, const char *what) {
  LLVMMemoryBufferRef mb = LLVMCreateMemoryBufferWithMemoryRangeCopy(obj, n, what);
  if (!mb) return tk_fail(TK_ERR_NOMEM, "%s: out of memory copying the object", what);
  pthread_mutex_lock(&j->lock);
  if (j->perf_map) note_functions(j, obj, n);
  LLVMErrorRef e = LLVMOrcLLJITAddObjectFile(j->lljit, LLVMOrcLLJITGetMainJITDylib(j->lljit), mb);
  pthread_mutex_unlock(&j->lock);
  return e ? llvm_fail(e, what) : TK_OK;
}

void *tk_jit_lookup(tk_jit *j, const char *symbol) {
  LLVMOrcExecutorAddress addr = 0;
  pthread_mutex_lock(&j->lock);
  LLVMErrorRef e = LLVMOrcLLJITLookup(j->lljit, &addr, symbol);
  for (size_t k = 0; !e && addr && j->perf_map && k < j->n_fns; k++)
    if (!strcmp(j->fns[k].name, symbol)) {
      fprintf(j->perf_map, "%llx %llx %s\n", (unsigned long long)addr, (unsigned long long)j->fns[k].size, symbol);
      fflush(j->perf_map);
      break;
    }
  pthread_mutex_unlock(&j->lock);
  if (e) {
    llvm_fail(e, symbol);
    return NULL;
  }
  if (!addr) tk_fail(TK_ERR_COMPILE, "%s: symbol has address 0", symbol);
  return (void *)(uintptr_t)addr;
}

void tk_jit_retain(tk_jit *j) {
  pthread_mutex_lock(&j->lock);
  j->refs++;
  pthread_mutex_unlock(&j->lock);
}

void tk_jit_release(tk_jit *j) {
  if (!j) return;
  pthread_mutex_lock(&j->lock);
  int left = --j->refs;
  pthread_mutex_unlock(&j->lock);
  if (left) return;
  LLVMErrorRef e = LLVMOrcDisposeLLJIT(j->lljit);
  if (e) LLVMConsumeError(e);
  if (j->perf_map) fclose(j->perf_map);
  for (size_t k = 0; k < j->n_fns; k++) free(j->fns[k].name);
  free(j->fns);
  pthread_mutex_destroy(&j->lock);
  free(j);
}
