/* bench_compile.c -- how long the sparse kernels of a zoo model take to build: cold (every
 * layer emitted and compiled by parallel clang processes) and warm (objects from the on-disk
 * cache, no clang), each into a fresh LLJIT.
 *
 *   bench_compile [--arch resnet18] [--sparsity 0.9] [--variant sparse-table] [--training]
 *                 [--cache DIR] [--repeats 3]
 *
 * The cold build uses a new temporary cache directory (or DIR, emptied first by the caller);
 * warm builds reuse it.  Benchmarks only; the tests never time anything. */
#include "compiler/cache.h"
#include "compiler/compile.h"
#include "compiler/zoo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double build(tk_model *m, const tk_compile_opts *o, int *n_kernels) {
  tk_plan *p = NULL;
  if (tk_plan_make(m, o, &p) != TK_OK) {
    fprintf(stderr, "bench_compile: plan: %s\n", tk_last_error());
    exit(1);
  }
  tk_kernel **ks = calloc((size_t)m->n_layers, sizeof *ks);
  double t0 = tk_now();
  if (tk_sparse_build(m, p, o, 1, ks) != TK_OK) {
    fprintf(stderr, "bench_compile: build: %s\n", tk_last_error());
    exit(1);
  }
  double t = tk_now() - t0;
  *n_kernels = 0;
  for (int i = 0; i < m->n_layers; i++)
    if (ks[i]) (*n_kernels)++, ks[i]->v->destroy(ks[i]);
  free(ks);
  tk_plan_free(p);
  return t;
}

int main(int argc, char **argv) {
  const char *arch = "resnet18", *cache = NULL, *variant = "sparse-table";
  double sparsity = 0.9;
  int training = 0, repeats = 3;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      printf("usage: bench_compile [--arch resnet18] [--sparsity 0.9] [--variant sparse-table|sparse-unrolled]\n"
             "                     [--training] [--cache DIR] [--repeats 3]\n");
      return 0;
    } else if (!strcmp(a, "--arch") && v) {
      arch = v, i++;
    } else if (!strcmp(a, "--sparsity") && v) {
      sparsity = atof(v), i++;
    } else if (!strcmp(a, "--variant") && v) {
      variant = v, i++;
    } else if (!strcmp(a, "--cache") && v) {
      cache = v, i++;
    } else if (!strcmp(a, "--repeats") && v) {
      repeats = atoi(v), i++;
    } else if (!strcmp(a, "--training")) {
      training = 1;
    } else {
      fprintf(stderr, "bench_compile: unknown argument %s\n", a);
      return 2;
    }
  }
  tk_model *m = NULL;
  if (tk_zoo_create(arch, 0, 0, 0, 0, 1, &m) != TK_OK) {
    fprintf(stderr, "bench_compile: %s\n", tk_last_error());
    return 1;
  }
  tk_rng r;
  tk_rng_seed(&r, 3);
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    uint8_t *mask = malloc((size_t)tt->numel);
    for (int64_t k = 0; k < tt->numel; k++) mask[k] = tk_rng_uniform(&r) >= sparsity;
    tk_tensor_set_mask(tt, mask);
    free(mask);
  }
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "bench_compile: %s\n", tk_last_error());
    return 1;
  }
  char dir[] = "/tmp/ticket-bench-compile-XXXXXX";
  if (!cache) {
    if (!mkdtemp(dir)) return 1;
    cache = dir;
  }
  tk_compile_opts o;
  tk_compile_opts_default(&o);
  o.cache_dir = cache;
  o.training = training;
  o.force = !strcmp(variant, "sparse-unrolled") ? TK_VARIANT_SPARSE_UNROLLED : TK_VARIANT_SPARSE_TABLE;
  int nk = 0;
  tk_cache_stats s0, s1;
  tk_cache_stats_get(&s0);
  double cold = build(m, &o, &nk);
  tk_cache_stats_get(&s1);
  printf("%s, sparsity %.2f, %s%s: %d kernels, cold %.3f s (%ld objects compiled)\n", arch, sparsity, variant,
         training ? " with gradients" : "", nk, cold, s1.compiled - s0.compiled);
  for (int k = 0; k < repeats; k++) {
    tk_cache_stats_get(&s0);
    double warm = build(m, &o, &nk);
    tk_cache_stats_get(&s1);
    printf("  warm %.3f s (%ld from cache, %ld compiled)\n", warm, s1.hits - s0.hits, s1.compiled - s0.compiled);
  }
  if (cache == dir) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_compile: could not remove %s\n", dir);
  }
  tk_model_free(m);
  return 0;
}
