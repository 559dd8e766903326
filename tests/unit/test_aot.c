/* test_aot.c -- ahead-of-time artifacts (compiler/aot.c, templates/aot_*.in).
 *
 * For several models (every op and variant in ops_model; zoo lenet, cifar_model, resnet20 at
 * 0, 90 and 99% sparsity with random masks) the generated C is built with gcc and clang
 * (-std=c11 -Wall -Wextra -Wpedantic -Werror -ffp-contract=off) around a small harness, and:
 *   - its logits match the reference engine (relative error <= 1e-5) and the compiled JIT
 *     engine when this build has one;
 *   - gcc, clang, gcc -fopenmp and scalar-only (-DTK_NO_VECTOR) builds give bit-identical
 *     logits;
 *   - the aarch64 build (aarch64-linux-gnu-gcc -static, run under qemu-aarch64) gives logits
 *     bit-identical to the host build with the same flags (skipped with a note when the
 *     cross compiler or qemu is missing).
 * The artifact kinds of tk_aot_build: `so` (dlopen), `exe` (a .npy in, a .npy out), a cross
 * `exe`, and the error paths: a missing cross compiler, a compiler error that must name the
 * layer, bad names, bad input files for the executable.
 * TICKET_HEAVY=1 adds resnet18, vgg16_bn and wrn_28_4 at 99%.
 */
#include "check.h"
#include "compiler/aot.h"
#include "runtime/engine.h"
#include "runtime/exec.h"
#include "runtime/npy.h"
#include "test_aot_models.h"

#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOL 1e-5

static char g_dir[256];
static int g_have_clang, g_have_cross, g_cross_note_done;
static const char *g_strict = "-std=c11 -O2 -Wall -Wextra -Wpedantic -Werror -ffp-contract=off";

/* The harness: runs NAME on raw float32 input (n images) in two calls (1 image, then the
 * rest) to exercise batching and context reuse, checks the argument errors, writes raw
 * float32 logits. */
static const char *g_harness =
    "#include TK_HEADER\n"
    "#include <stdio.h>\n"
    "#include <stdlib.h>\n"
    "#define CAT2(a, b) a##b\n"
    "#define CAT(a, b) CAT2(a, b)\n"
    "#define F(s) CAT(TK_NAME, s)\n"
    "int main(int argc, char **argv) {\n"
    "  if (argc != 4) return 2;\n"
    "  const int n = atoi(argv[2]);\n"
    "  const size_t per = (size_t)F(_input_shape)[0] * F(_input_shape)[1] * F(_input_shape)[2];\n"
    "  if (per != (size_t)F(_input_c) * F(_input_h) * F(_input_w)) return 5;\n"
    "  float *x = malloc(n * per * sizeof(float)), *y = malloc((size_t)n * F(_classes) * sizeof(float));\n"
    "  FILE *f = fopen(argv[1], \"rb\");\n"
    "  if (!x || !y || !f || fread(x, sizeof(float), n * per, f) != n * per) return 3;\n"
    "  fclose(f);\n"
    "  F(_ctx) *ctx = F(_create)(n);\n"
    "  if (!ctx) return 4;\n"
    "  if (F(_run)(ctx, x, 1, y) != 0) return 6;\n"
    "  if (n > 1 && F(_run)(ctx, x + per, n - 1, y + F(_classes)) != 0) return 6;\n"
    "  if (F(_run)(ctx, x, n + 1, y) != -1 || F(_run)(ctx, x, 0, y) != -1 || F(_run)(NULL, x, 1, y) != -1) return 7;\n"
    "  if (F(_create)(0) != NULL || F(_info)()[0] == 0) return 8;\n"
    "  f = fopen(argv[3], \"wb\");\n"
    "  if (!f || fwrite(y, sizeof(float), (size_t)n * F(_classes), f) != (size_t)n * F(_classes)) return 9;\n"
    "  fclose(f);\n"
    "  F(_free)(ctx);\n"
    "  free(x);\n"
    "  free(y);\n"
    "  return 0;\n"
    "}\n";

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
  char cmd[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static int have(const char *prog) { return sh("command -v %s >/dev/null 2>&1", prog) == 0; }

static void print_file(const char *path, int max_lines) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[1024];
  for (int i = 0; i < max_lines && fgets(line, sizeof line, f); i++) fputs(line, stderr);
  fclose(f);
}

static int write_raw(const char *path, const float *x, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = fwrite(x, sizeof(float), n, f);
  return fclose(f) == 0 && w == n ? 0 : -1;
}

static float *read_raw(const char *path, size_t n) {
  FILE *f = fopen(path, "rb");
  float *y = malloc(n * sizeof(float));
  if (!f || !y || fread(y, sizeof(float), n, f) != n) {
    if (f) fclose(f);
    free(y);
    return NULL;
  }
  fclose(f);
  return y;
}

/* max|got-want| / max|want| <= tol, else report the worst element */
static void expect_close(const char *what, const float *got, const float *want, size_t n, double tol) {
  double rel = check_rel_err(got, want, n), mw = 0;
  for (size_t i = 0; i < n; i++) mw = fmax(mw, fabs(want[i]));
  printf("    %-40s relative error %.3g\n", what, rel);
  if (!(rel <= tol)) {
    fprintf(stderr, "%s: relative error %.3g exceeds %.1g\n", what, rel, tol);
    if (check_close(what, got, want, n, 0.0, tol * mw)) check_failures++;
  }
}

static void expect_identical(const char *what, const float *got, const float *want, size_t n) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++)
    if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ == 0) first = i;
  printf("    %-40s %s\n", what, bad ? "DIFFERENT" : "bit-identical");
  CHECK_MSG(bad == 0, "%s: %zu of %zu logits differ; first [%zu]: %.9g vs %.9g", what, bad, n, first,
            (double)got[first], (double)want[first]);
}

/* Starts building the harness for `name` with `cc flags` in the background; returns the pid
 * or -1.  Builds run two at a time (the machine has two cores). */
static pid_t build_start(const char *name, const char *tag, const char *cc, const char *flags) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "%s %s -DTK_NAME=%s '-DTK_HEADER=\"%s.h\"' -I%s -o %s/%s.%s %s/harness.c %s/%s.c -lm >%s/%s.%s.log 2>&1",
           cc, flags, name, name, g_dir, g_dir, name, tag, g_dir, g_dir, name, g_dir, name, tag);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* Waits for a build; reports a failure with the compiler's output. */
static int build_finish(pid_t pid, const char *name, const char *tag) {
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    char log[600];
    snprintf(log, sizeof log, "%s/%s.%s.log", g_dir, name, tag);
    fprintf(stderr, "%s: %s build failed:\n", name, tag);
    print_file(log, 40);
    check_failures++;
    return 0;
  }
  return 1;
}

/* Runs a built harness (through `runner`, "" for the host); returns the logits or NULL. */
static float *run_built(const char *name, const char *tag, const char *runner, int n, int classes) {
  char out[512], log[512];
  snprintf(out, sizeof out, "%s/%s.%s.out", g_dir, name, tag);
  snprintf(log, sizeof log, "%s/%s.%s.run.log", g_dir, name, tag);
  int rc = sh("%s %s/%s.%s %s/%s.in %d %s >%s 2>&1", runner, g_dir, name, tag, g_dir, name, n, out, log);
  if (rc != 0) {
    fprintf(stderr, "%s: %s run failed (exit %d)\n", name, tag, rc);
    print_file(log, 20);
    check_failures++;
    return NULL;
  }
  return read_raw(out, (size_t)n * classes);
}

#define WITH_EXTRA 1 /* gcc -fopenmp and clang builds too */
#define WITH_CROSS 2 /* the aarch64 build under qemu too */

/* One model through the checks selected by `what`. */
static void run_case(const char *name, tk_model *m, int n, const tk_pass_opts *passes, int what) {
  printf("  %s (%.1f%% sparse, batch %d)\n", name, 100.0 * tk_model_sparsity(m), n);
  tk_aot_opts o;
  tk_aot_opts_default(&o);
  o.name = name;
  if (passes) o.passes = *passes;
  tk_aot_unit *u = NULL;
  tk_status st = tk_aot_generate(m, &o, &u);
  CHECK_MSG(st == TK_OK, "%s: generate: %s", name, tk_last_error());
  if (st != TK_OK) return;
  /* every kept weight is stored, and pruned weights are not: at 99% sparsity the tables are
   * a small fraction of the dense weights */
  int64_t kept = 0, total = 0;
  for (int i = 0; i < u->n_layers; i++) {
    CHECK(u->layers[i].variant != TK_AOT_SPARSE_TABLE || u->layers[i].nnz < u->layers[i].numel);
    kept += u->layers[i].nnz;
    total += u->layers[i].numel;
  }
  CHECK(u->table_bytes >= 4 * kept);
  if (kept < total / 20)
    CHECK_MSG(u->table_bytes < 4 * total / 5, "%s: %lld bytes of tables for %lld of %lld weights kept", name,
              (long long)u->table_bytes, (long long)kept, (long long)total);
  tk_aot_outputs res;
  char dir[300];
  snprintf(dir, sizeof dir, "%s/", g_dir);
  st = tk_aot_build(u, &o, dir, &res);
  CHECK_MSG(st == TK_OK && res.n_files == 2, "%s: write C: %s", name, tk_last_error());
  tk_aot_outputs_free(&res);
  tk_aot_unit_free(u);
  if (st != TK_OK) return;

  float *x = tm_input(m, n, 99);
  char path[512];
  snprintf(path, sizeof path, "%s/%s.in", g_dir, name);
  CHECK(x && write_raw(path, x, (size_t)n * m->in_c * m->in_h * m->in_w) == 0);
  const size_t cnt = (size_t)n * m->classes;
  float *ref = tm_reference(m, x, n);
  CHECK(ref != NULL);
  /* builds: host gcc and aarch64 together, then gcc -fopenmp and clang together */
  char native[512], omp[600], cross[600];
  snprintf(native, sizeof native, "%s -march=native", g_strict);
  snprintf(omp, sizeof omp, "%s -march=native -fopenmp", g_strict);
  snprintf(cross, sizeof cross, "%s -static", g_strict);
  const int do_cross = (what & WITH_CROSS) && g_have_cross;
  pid_t p_gcc = build_start(name, "gcc", "gcc", native);
  pid_t p_arm = do_cross ? build_start(name, "aarch64", "aarch64-linux-gnu-gcc", cross) : -1;
  int ok_gcc = build_finish(p_gcc, name, "gcc");
  int ok_arm = do_cross && build_finish(p_arm, name, "aarch64");
  float *host = ok_gcc ? run_built(name, "gcc", "", n, m->classes) : NULL;
  if (host && ref) expect_close("gcc build vs reference engine", host, ref, cnt, TOL);

  /* the JIT engine, when this build has one */
  tk_engine *e = NULL;
  st = tk_engine_create(m, TK_ENGINE_COMPILED, n, &e);
  if (st == TK_OK) {
    float *jit = malloc(cnt * sizeof(float));
    CHECK(tk_exec_is_exec(e));
    if (jit && tk_infer(e, x, n, jit) == TK_OK) {
      if (host) expect_close("gcc build vs compiled engine", host, jit, cnt, TOL);
    } else {
      CHECK_MSG(0, "%s: compiled engine inference: %s", name, tk_last_error());
    }
    free(jit);
    tk_engine_free(e);
  } else {
    printf("    compiled engine: not compared (%s)\n", tk_last_error());
  }

  if (!(what & WITH_CROSS)) {
    printf("    (no aarch64 build for this case)\n");
  } else if (!g_have_cross) {
    if (!g_cross_note_done) printf("    cross part skipped: aarch64-linux-gnu-gcc or qemu-aarch64 not found\n");
    g_cross_note_done = 1;
  } else if (ok_arm && host) {
    float *arm = run_built(name, "aarch64", "qemu-aarch64", n, m->classes);
    if (arm) expect_identical("aarch64 under qemu vs x86-64 gcc", arm, host, cnt);
    free(arm);
  }
  if ((what & WITH_EXTRA) && host) {
    pid_t p_omp = build_start(name, "omp", "gcc", omp);
    pid_t p_cl = g_have_clang ? build_start(name, "clang", "clang-16", native) : -1;
    if (build_finish(p_omp, name, "omp")) {
      float *y = run_built(name, "omp", "OMP_NUM_THREADS=2", n, m->classes);
      if (y) expect_identical("gcc -fopenmp vs gcc", y, host, cnt);
      free(y);
    }
    if (g_have_clang && build_finish(p_cl, name, "clang")) {
      float *y = run_built(name, "clang", "", n, m->classes);
      if (y) expect_identical("clang-16 vs gcc", y, host, cnt);
      free(y);
    }
    char scalar[600];
    snprintf(scalar, sizeof scalar, "%s -DTK_NO_VECTOR", g_strict);
    if (build_finish(build_start(name, "scalar", "gcc", scalar), name, "scalar")) {
      float *y = run_built(name, "scalar", "", n, m->classes);
      if (y) expect_identical("scalar-only (-DTK_NO_VECTOR) vs gcc", y, host, cnt);
      free(y);
    }
  }
  free(host);
  free(ref);
  free(x);
}

/* `so` and `exe` artifacts through tk_aot_build, and the error paths. */
static void test_artifacts(void) {
  printf("artifacts: so, exe, cross exe, errors\n");
  tk_model *m = ops_model(21, 0.3);
  CHECK(m != NULL);
  if (!m) return;
  const int n = 3;
  const size_t cnt = (size_t)n * m->classes;
  float *x = tm_input(m, n, 5), *ref = tm_reference(m, x, n);
  CHECK(x && ref);
  if (!x || !ref) goto done;
  tk_aot_opts o;
  tk_aot_opts_default(&o);
  o.name = "opsart";
  o.source = "ops_model";
  tk_aot_unit *u = NULL;
  CHECK(tk_aot_generate(m, &o, &u) == TK_OK);
  if (!u) goto done;
  tk_aot_outputs res;
  char out[512], in_npy[512], out_npy[512];

  /* shared object + header beside it */
  o.emit = TK_AOT_EMIT_SO;
  snprintf(out, sizeof out, "%s/libopsart.so", g_dir);
  tk_status st = tk_aot_build(u, &o, out, &res);
  CHECK_MSG(st == TK_OK && res.n_files == 2, "so: %s", tk_last_error());
  if (st == TK_OK) {
    char hdr[512];
    snprintf(hdr, sizeof hdr, "%s/opsart.h", g_dir);
    CHECK(access(hdr, R_OK) == 0);
    void *h = dlopen(out, RTLD_NOW | RTLD_LOCAL);
    CHECK_MSG(h != NULL, "dlopen: %s", dlerror());
    if (h) {
      void *(*create)(int) = (void *(*)(int))dlsym(h, "opsart_create");
      int (*run)(void *, const float *, int, float *) = (int (*)(void *, const float *, int, float *))dlsym(h, "opsart_run");
      void (*fr)(void *) = (void (*)(void *))dlsym(h, "opsart_free");
      CHECK(create && run && fr);
      if (create && run && fr) {
        void *ctx = create(n);
        float *y = malloc(cnt * sizeof(float));
        CHECK(ctx && y && run(ctx, x, n, y) == 0);
        if (ctx && y) expect_close("so (dlopen) vs reference engine", y, ref, cnt, TOL);
        fr(ctx);
        free(y);
      }
      dlclose(h);
    }
  }
  tk_aot_outputs_free(&res);

  /* executable: .npy in, .npy out, arg-max printed */
  o.emit = TK_AOT_EMIT_EXE;
  snprintf(out, sizeof out, "%s/opsart_exe", g_dir);
  snprintf(in_npy, sizeof in_npy, "%s/opsart_in.npy", g_dir);
  snprintf(out_npy, sizeof out_npy, "%s/opsart_out.npy", g_dir);
  int64_t xs[4] = {n, m->in_c, m->in_h, m->in_w};
  CHECK(tk_npy_write_f32(in_npy, 4, xs, x) == TK_OK);
  st = tk_aot_build(u, &o, out, &res);
  CHECK_MSG(st == TK_OK && res.n_files == 1, "exe: %s", tk_last_error());
  tk_aot_outputs_free(&res);
  if (st == TK_OK) {
    CHECK(sh("%s %s %s > %s/exe.stdout 2>&1", out, in_npy, out_npy, g_dir) == 0);
    int nd;
    int64_t shape[8];
    float *y = NULL;
    CHECK(tk_npy_read_f32(out_npy, &nd, shape, &y) == TK_OK && nd == 2 && shape[0] == n && shape[1] == m->classes);
    if (y) expect_close("exe (.npy) vs reference engine", y, ref, cnt, TOL);
    free(y);
    /* a batch of the wrong image size: one-line error, non-zero exit */
    int64_t bad[4] = {1, m->in_c, m->in_h + 1, m->in_w};
    CHECK(tk_npy_write_f32(in_npy, 4, bad, x) == TK_OK);
    CHECK(sh("%s %s %s/never.npy > %s/exe.err 2>&1", out, in_npy, g_dir, g_dir) == 1);
    char errp[512];
    snprintf(errp, sizeof errp, "%s/exe.err", g_dir);
    void *txt = NULL;
    size_t tn = 0;
    CHECK(tk_read_file(errp, 1 << 16, &txt, &tn) == TK_OK && txt && memmem(txt, tn, "shape", 5));
    free(txt);
    CHECK(sh("%s %s/missing.npy > /dev/null 2>&1", out, g_dir) == 1);
  }

  /* a cross executable (static) under qemu: bit-identical to the host with the same flags */
  if (g_have_cross) {
    o.target = "aarch64-linux-gnu";
    o.cflags = "-ffp-contract=off";
    snprintf(out, sizeof out, "%s/opsart_arm", g_dir);
    CHECK(tk_npy_write_f32(in_npy, 4, xs, x) == TK_OK);
    st = tk_aot_build(u, &o, out, &res);
    CHECK_MSG(st == TK_OK, "cross exe: %s", tk_last_error());
    tk_aot_outputs_free(&res);
    o.target = NULL;
    o.portable = 1;
    char host[512];
    snprintf(host, sizeof host, "%s/opsart_host", g_dir);
    tk_status st2 = tk_aot_build(u, &o, host, &res);
    CHECK_MSG(st2 == TK_OK, "host exe: %s", tk_last_error());
    tk_aot_outputs_free(&res);
    if (st == TK_OK && st2 == TK_OK) {
      char arm_npy[512];
      snprintf(arm_npy, sizeof arm_npy, "%s/opsart_arm.npy", g_dir);
      CHECK(sh("qemu-aarch64 %s %s %s > /dev/null 2>&1", out, in_npy, arm_npy) == 0);
      CHECK(sh("%s %s %s > /dev/null 2>&1", host, in_npy, out_npy) == 0);
      int nd;
      int64_t s1[8], s2[8];
      float *ya = NULL, *yh = NULL;
      CHECK(tk_npy_read_f32(arm_npy, &nd, s1, &ya) == TK_OK && tk_npy_read_f32(out_npy, &nd, s2, &yh) == TK_OK);
      if (ya && yh) {
        expect_identical("cross exe under qemu vs host exe", ya, yh, cnt);
        expect_close("cross exe vs reference engine", ya, ref, cnt, TOL);
      }
      free(ya);
      free(yh);
    }
    o.portable = 0;
    o.cflags = NULL;
  }

  /* errors: a missing cross compiler, a compiler error inside a layer, bad names */
  o.target = "nonexistent-linux-gnu";
  snprintf(out, sizeof out, "%s/never", g_dir);
  st = tk_aot_build(u, &o, out, &res);
  CHECK_MSG(st == TK_ERR_UNSUPPORTED && strstr(tk_last_error(), "nonexistent-linux-gnu-gcc"), "missing cross cc: %s",
            tk_last_error());
  tk_aot_outputs_free(&res);
  CHECK(access(out, F_OK) != 0);
  o.target = NULL;
  /* a compiler error inside layer 3 (`sc` after folding, a sparse conv): the message names
   * the model and the layer, the diagnostics are kept */
  {
    char *orig = u->c_src, *at = strstr(orig, "static const int32_t tk_l3_off[");
    CHECK(at != NULL);
    if (at) {
      const char *inj = "#error injected into the tables of layer 3\n";
      size_t pre = (size_t)(at - orig), len = strlen(orig);
      char *bad = malloc(len + strlen(inj) + 1);
      memcpy(bad, orig, pre);
      strcpy(bad + pre, inj);
      strcat(bad, at);
      u->c_src = bad;
      st = tk_aot_build(u, &o, out, &res);
      u->c_src = orig;
      free(bad);
      printf("    compile error reported as: %.200s\n", tk_last_error());
      CHECK_MSG(st == TK_ERR_COMPILE && strstr(tk_last_error(), "layer 3 (sc, conv2d)") &&
                    strstr(tk_last_error(), "opsart") && res.diagnostics && strstr(res.diagnostics, "injected"),
                "compile error: %s", tk_last_error());
      tk_aot_outputs_free(&res);
      CHECK(access(out, F_OK) != 0);
    }
  }
  o.cflags = NULL;
  o.emit = TK_AOT_EMIT_C;
  snprintf(out, sizeof out, "%s/other", g_dir);
  CHECK(tk_aot_build(u, &o, out, &res) == TK_ERR_ARG);
  tk_aot_outputs_free(&res);
  tk_aot_unit_free(u);
  tk_aot_unit *v = NULL;
  o.name = "9lives";
  CHECK(tk_aot_generate(m, &o, &v) == TK_ERR_ARG && v == NULL);
  o.name = "tk_x";
  CHECK(tk_aot_generate(m, &o, &v) == TK_ERR_ARG && v == NULL);
  char *nm = tk_aot_name_from_path("dir/9-lenet.v2.tkt");
  CHECK(nm && !strcmp(nm, "model_9_lenet"));
  free(nm);
done:
  free(x);
  free(ref);
  tk_model_free(m);
}

/* zoo model `arch` at the given fraction kept (1: dense, no masks; 2: all-ones masks) */
static void zoo_case(const char *arch, const char *name, double keep, int n, int what) {
  tk_model *m = zoo_model(arch, 17, keep >= 1.0 ? 1.0 : keep);
  CHECK_MSG(m != NULL, "%s", arch);
  if (!m) return;
  if (keep > 1.0) {
    tk_rng r;
    tk_rng_seed(&r, 1);
    for (int t = 0; t < m->n_tensors; t++)
      if (m->tensors[t].prunable) tm_mask(&m->tensors[t], &r, 1.0);
  }
  run_case(name, m, n, NULL, what);
  tk_model_free(m);
}

int main(void) {
  const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(g_dir, sizeof g_dir, "%s/test_aot_XXXXXX", tmp);
  if (!mkdtemp(g_dir)) check_skip("cannot create a temporary directory");
  if (!have("gcc")) check_skip("gcc not found");
  g_have_clang = have("clang-16");
  g_have_cross = have("aarch64-linux-gnu-gcc") && have("qemu-aarch64");
  char hp[300];
  snprintf(hp, sizeof hp, "%s/harness.c", g_dir);
  if (tk_write_file_atomic(hp, g_harness, strlen(g_harness)) != TK_OK) check_skip("cannot write the harness");
  printf("work directory %s\n", g_dir);

  printf("ops model (every op and variant)\n");
  tk_model *m = ops_model(3, 0.5);
  CHECK(m != NULL);
  if (m) {
    run_case("ops50", m, 3, NULL, WITH_EXTRA | WITH_CROSS);
    tk_pass_opts p;
    tk_pass_opts_default(&p);
    p.fold_bn = 0;
    p.fuse = 0;
    run_case("ops50_nofold", m, 2, &p, WITH_CROSS);
    tk_model_free(m);
  }
  printf("zoo models\n");
  /* the dense 0% cases are the slowest to compile; resnet20_0 covers dense code on aarch64 */
  zoo_case("lenet", "lenet_0", 1.0, 3, 0);
  zoo_case("lenet", "lenet_90", 0.1, 3, WITH_CROSS);
  zoo_case("lenet", "lenet_99", 0.01, 3, WITH_CROSS);
  zoo_case("cifar_model", "cifar_model_0", 2.0, 3, 0);
  zoo_case("cifar_model", "cifar_model_90", 0.1, 3, WITH_EXTRA | WITH_CROSS);
  zoo_case("cifar_model", "cifar_model_99", 0.01, 3, WITH_CROSS);
  zoo_case("resnet20", "resnet20_0", 1.0, 2, WITH_CROSS);
  zoo_case("resnet20", "resnet20_90", 0.1, 2, WITH_EXTRA | WITH_CROSS);
  zoo_case("resnet20", "resnet20_99", 0.01, 2, WITH_CROSS);
  const char *heavy = getenv("TICKET_HEAVY");
  if (heavy && !strcmp(heavy, "1")) {
    zoo_case("resnet18", "resnet18_99", 0.01, 2, WITH_EXTRA | WITH_CROSS);
    zoo_case("vgg16_bn", "vgg16_bn_99", 0.01, 2, WITH_CROSS);
    zoo_case("wrn_28_4", "wrn_28_4_99", 0.01, 1, WITH_CROSS);
  }
  test_artifacts();

  int rc = check_done("test_aot");
  if (rc == 0) sh("rm -rf %s", g_dir);
  else fprintf(stderr, "test_aot: files kept in %s\n", g_dir);
  return rc;
}
