/* test_cache.c -- the on-disk kernel object cache (compiler/cache.c) through tk_sparse_build.
 *
 *  1. cold build: every object compiled and written; the kernels match the reference
 *  2. warm build: every object from the cache, nothing compiled, identical results; extra
 *     clang flags (TICKET_CLANG_EXTRA) are part of the key
 *  3. table kernels do not depend on the mask (a new mask of the same shape is a hit);
 *     unrolled kernels do (a miss)
 *  4. corrupt entries (a flipped payload byte, a truncated file, a foreign file under the
 *     entry's name) are detected, removed, rebuilt and rewritten
 *  5. concurrent writers: two forked processes build into the same empty cache at once and
 *     hammer put/get on one key; every read is whole and correct, nothing is corrupt
 *  6. no_cache writes nothing; an unusable cache directory is a clear error
 */
#include "check.h"

#include "compiler/cache.h"
#include "compiler/compile.h"
#include "compiler/jit.h"
#include "compiler/toolchain.h"
#include "runtime/ref/ref_ops.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static tk_model *make_model(uint64_t seed, double sparsity) {
  tk_model *m = tk_model_new("cache-test", 10, 4, 8, 8);
  tk_rng r;
  tk_rng_seed(&r, seed);
  int64_t w1s[4] = {8, 4, 3, 3}, w2s[4] = {12, 8, 3, 3}, fcs[2] = {10, 12}, b[1] = {10};
  int w1 = tk_model_add_tensor(m, "c1.weight", 4, w1s), w2 = tk_model_add_tensor(m, "c2.weight", 4, w2s);
  int fc = tk_model_add_tensor(m, "fc.weight", 2, fcs), fb = tk_model_add_tensor(m, "fc.bias", 1, b);
  int ws[3] = {w1, w2, fc};
  for (int k = 0; k < 3; k++) {
    tk_tensor *t = &m->tensors[ws[k]];
    t->prunable = t->trainable = true;
    uint8_t *mask = malloc((size_t)t->numel);
    for (int64_t q = 0; q < t->numel; q++) {
      t->data[q] = (float)tk_rng_normal(&r);
      mask[q] = tk_rng_uniform(&r) >= sparsity;
    }
    tk_tensor_set_mask(t, mask);
    free(mask);
  }
  m->tensors[fb].trainable = true;
  tk_layer c1 = tk_layer_default(TK_OP_CONV2D, "c1", 0);
  c1.weight = w1, c1.kh = c1.kw = 3, c1.ph = c1.pw = 1;
  tk_layer c2 = tk_layer_default(TK_OP_CONV2D, "c2", 1);
  c2.weight = w2, c2.kh = c2.kw = 3, c2.sh = c2.sw = 2, c2.ph = c2.pw = 1;
  tk_layer gp = tk_layer_default(TK_OP_GLOBALAVGPOOL, "gap", 2);
  tk_layer l = tk_layer_default(TK_OP_LINEAR, "fc", 3);
  l.weight = fc, l.bias = fb;
  tk_model_add_layer(m, &c1);
  tk_model_add_layer(m, &c2);
  tk_model_add_layer(m, &gp);
  tk_model_add_layer(m, &l);
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "infer: %s\n", tk_last_error());
    exit(1);
  }
  return m;
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strstr(e->d_name, ".tko") && !strstr(e->d_name, ".tmp")) n++;
  closedir(d);
  return n;
}

/* Builds every conv/linear of m with `variant`, runs layer 1 (c2) forward and compares with
 * the reference; returns the number of failures (0 = fine) and the output in y. */
static int build_and_check(tk_model *m, tk_variant variant, const char *cache, int no_cache, float *y) {
  tk_compile_opts o;
  tk_compile_opts_default(&o);
  o.force = variant;
  o.cache_dir = cache;
  o.no_cache = no_cache;
  o.batch = 2;
  tk_plan *p = NULL;
  tk_kernel *ks[4] = {0};
  if (tk_plan_make(m, &o, &p) != TK_OK || tk_sparse_build(m, p, &o, 2, ks) != TK_OK) {
    fprintf(stderr, "build: %s\n", tk_last_error());
    tk_plan_free(p);
    return 1;
  }
  const tk_layer *l = &m->layers[1];
  int64_t xs = tk_shape_numel(l->in) * 2, ys = tk_shape_numel(l->out) * 2;
  float *x = malloc((size_t)xs * 4), *yr = malloc((size_t)ys * 4);
  for (int64_t q = 0; q < xs; q++) x[q] = (float)sin(0.37 * (double)q);
  int bad = 0;
  if (!ks[1] || ks[1]->v->fwd(ks[1], x, y, 2) != TK_OK) bad++;
  tk_ref_conv2d_fwd(l, x, m->tensors[l->weight].data, NULL, yr, 2);
  if (!bad && check_rel_err(y, yr, (size_t)ys) > 1e-5) {
    fprintf(stderr, "layer c2: relative error %.3g\n", check_rel_err(y, yr, (size_t)ys));
    bad++;
  }
  for (int i = 0; i < 4; i++)
    if (ks[i]) ks[i]->v->destroy(ks[i]);
  tk_plan_free(p);
  free(x);
  free(yr);
  return bad;
}

static void flip_byte(const char *path, long at_from_end) {
  FILE *f = fopen(path, "r+b");
  if (!f) return;
  fseek(f, -at_from_end, SEEK_END);
  int c = fgetc(f);
  fseek(f, -at_from_end, SEEK_END);
  fputc(c ^ 0x5a, f);
  fclose(f);
}

static int first_entry(const char *dir, char *out, size_t n, int skip) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int k = 0, found = 0;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, ".tko") && k++ == skip) {
      snprintf(out, n, "%s/%s", dir, e->d_name);
      found = 1;
      break;
    }
  if (d) closedir(d);
  return found;
}

int main(void) {
  char why[256];
  if (!tk_jit_built(why, sizeof why) || !tk_cc_path(why, sizeof why)) check_skip(why);
  setenv("TICKET_NO_FALLBACK", "1", 1);
  char dir[] = "/tmp/ticket-test-cache-XXXXXX";
  if (!mkdtemp(dir)) check_skip("cannot create a temporary directory");
  char cache[300];
  snprintf(cache, sizeof cache, "%s/objects", dir); /* created by the cache itself */
  tk_model *m = make_model(1, 0.5);
  int64_t ys = tk_shape_numel(m->layers[1].out) * 2;
  float *y1 = malloc((size_t)ys * 4), *y2 = malloc((size_t)ys * 4);
  tk_cache_stats s0, s1, s2;

  /* 5. concurrent writers -- first, before this process starts OpenMP threads or LLVM,
   * so that the forked children start clean */
  char cache2[300];
  snprintf(cache2, sizeof cache2, "%s/concurrent", dir);
  pid_t pids[2];
  for (int c = 0; c < 2; c++) {
    pids[c] = fork();
    if (pids[c] == 0) {
      float *y = malloc((size_t)ys * 4);
      int bad = build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache2, 0, y);
      /* hammer one key: every read must be whole and exact */
      tk_cache c2;
      if (tk_cache_open(&c2, cache2, 0) != TK_OK) _exit(3);
      static unsigned char payload[100000];
      for (size_t q = 0; q < sizeof payload; q++) payload[q] = (unsigned char)(q * 7 + 3);
      uint64_t key[2] = {0x1234, 0x5678};
      for (int it = 0; it < 40; it++) {
        if (tk_cache_put(&c2, key, payload, sizeof payload) != TK_OK) bad++;
        void *got = NULL;
        size_t n = 0;
        if (tk_cache_get(&c2, key, &got, &n) != 1 || n != sizeof payload || memcmp(got, payload, n)) bad++;
        free(got);
      }
      tk_cache_stats st;
      tk_cache_stats_get(&st);
      _exit(bad || st.corrupt ? 1 : 0);
    }
  }
  for (int c = 0; c < 2; c++) {
    int status = 0;
    waitpid(pids[c], &status, 0);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "concurrent writer %d failed (status %d)", c, status);
  }
  tk_cache_stats_get(&s1);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache2, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.hits - s1.hits == 3 && s2.corrupt == s1.corrupt && s2.compiled == s1.compiled,
            "after concurrent writers: hits %ld corrupt %ld compiled %ld", s2.hits - s1.hits, s2.corrupt - s1.corrupt,
            s2.compiled - s1.compiled);

  /* 1. cold */
  tk_cache_stats_get(&s0);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache, 0, y1) == 0);
  tk_cache_stats_get(&s1);
  int objects = count_entries(cache);
  CHECK_MSG(objects == 3, "%d cache entries after a cold build of 3 layers", objects);
  CHECK_MSG(s1.compiled - s0.compiled == 3 && s1.writes - s0.writes == 3 && s1.hits == s0.hits,
            "cold: compiled %ld, written %ld, hits %ld", s1.compiled - s0.compiled, s1.writes - s0.writes,
            s1.hits - s0.hits);

  /* 2. warm */
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.hits - s1.hits == 3 && s2.compiled == s1.compiled, "warm: hits %ld, compiled %ld", s2.hits - s1.hits,
            s2.compiled - s1.compiled);
  CHECK_MSG(memcmp(y1, y2, (size_t)ys * 4) == 0, "warm results differ from cold results");

  /* 2b. extra clang flags (TICKET_CLANG_EXTRA) change the objects, so they are part of the key:
   * a build under new flags compiles afresh, and the plain build after it still hits */
  setenv("TICKET_CLANG_EXTRA", "-DTK_NO_NT", 1);
  tk_cache_stats_get(&s1);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.compiled - s1.compiled == 3 && s2.hits == s1.hits, "extra clang flags: compiled %ld, hits %ld",
            s2.compiled - s1.compiled, s2.hits - s1.hits);
  unsetenv("TICKET_CLANG_EXTRA");
  tk_cache_stats_get(&s1);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.hits - s1.hits == 3 && s2.compiled == s1.compiled, "plain flags again: hits %ld, compiled %ld",
            s2.hits - s1.hits, s2.compiled - s1.compiled);

  /* 3. mask independence of table kernels; unrolled kernels depend on the mask */
  tk_model *m2 = make_model(2, 0.7);
  tk_cache_stats_get(&s1);
  CHECK(build_and_check(m2, TK_VARIANT_SPARSE_TABLE, cache, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.compiled == s1.compiled && s2.hits - s1.hits == 3, "new mask, table: compiled %ld",
            s2.compiled - s1.compiled);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_UNROLLED, cache, 0, y2) == 0);
  tk_cache_stats_get(&s1);
  CHECK(build_and_check(m2, TK_VARIANT_SPARSE_UNROLLED, cache, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.compiled - s1.compiled == 2, "new mask, unrolled convs: compiled %ld (want 2)", s2.compiled - s1.compiled);

  /* 4. corruption: flipped payload byte, truncation, a foreign file */
  char e0[400], e1[400], e2[400];
  tk_model *m3 = make_model(3, 0.5);
  CHECK(build_and_check(m3, TK_VARIANT_SPARSE_UNROLLED, cache, 0, y1) == 0); /* warm for m3? compiled now */
  int before = count_entries(cache);
  CHECK(first_entry(cache, e0, sizeof e0, 0) && first_entry(cache, e1, sizeof e1, 1) &&
        first_entry(cache, e2, sizeof e2, 2));
  flip_byte(e0, 100);
  CHECK(truncate(e1, 60) == 0);
  FILE *ff = fopen(e2, "wb");
  if (ff) fputs("not an object at all", ff), fclose(ff);
  tk_cache_stats_get(&s1);
  /* rebuild everything that may use these entries (every entry in the cache: which three
   * readdir() lists first depends on the keys) */
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache, 0, y2) == 0);
  setenv("TICKET_CLANG_EXTRA", "-DTK_NO_NT", 1);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache, 0, y2) == 0);
  unsetenv("TICKET_CLANG_EXTRA");
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_UNROLLED, cache, 0, y2) == 0);
  CHECK(build_and_check(m2, TK_VARIANT_SPARSE_UNROLLED, cache, 0, y2) == 0);
  CHECK(build_and_check(m3, TK_VARIANT_SPARSE_UNROLLED, cache, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.corrupt - s1.corrupt == 3, "%ld corrupt entries detected, want 3", s2.corrupt - s1.corrupt);
  CHECK_MSG(s2.compiled - s1.compiled == 3, "%ld rebuilt, want 3", s2.compiled - s1.compiled);
  CHECK_MSG(count_entries(cache) == before, "%d entries after the rebuild, %d before", count_entries(cache), before);
  tk_cache_stats_get(&s1);
  CHECK(build_and_check(m3, TK_VARIANT_SPARSE_UNROLLED, cache, 0, y2) == 0);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache, 0, y2) == 0);
  tk_cache_stats_get(&s2);
  CHECK_MSG(s2.corrupt == s1.corrupt && s2.compiled == s1.compiled, "rewritten entries are not clean hits");

  /* 6. no_cache writes nothing; a bad directory is an error naming it */
  char cache3[300];
  snprintf(cache3, sizeof cache3, "%s/none", dir);
  CHECK(build_and_check(m, TK_VARIANT_SPARSE_TABLE, cache3, 1, y2) == 0);
  CHECK(access(cache3, F_OK) != 0);
  tk_cache bad;
  char notdir[420];
  snprintf(notdir, sizeof notdir, "%s/x", e0); /* under a regular file */
  CHECK(tk_cache_open(&bad, notdir, 0) == TK_ERR_IO);
  CHECK_MSG(strstr(tk_last_error(), "cache") != NULL, "message: %s", tk_last_error());

  tk_model_free(m);
  tk_model_free(m2);
  tk_model_free(m3);
  free(y1);
  free(y2);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
  return check_done("test_cache");
}
