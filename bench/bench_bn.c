/* bench_bn.c -- train-mode batchnorm (+ fused ReLU) of runtime/ops.c on ResNet-18's batchnorm
 * shapes (CIFAR, default batch 128).
 *
 *   OMP_WAIT_POLICY=PASSIVE bench_bn [--batch 128] [--threads 1,2] [--reps 31] [--flush 128] [--params]
 *                                    [--out-of-place]
 *
 * Times tk_ops_bn_train_fwd (relu) and tk_ops_bn_bwd (train, relu, acc = 0; dgamma and dbeta
 * only with --params: PGD's attack steps ask for dx alone).  The backward runs in place
 * (dx = dy), as the engine runs it (exec.c hands a batchnorm its output-gradient buffer); dy
 * is restored from a copy before each call, outside the clock.  The calls are interleaved (one
 * sample of each in turn, the first one rotating), each after reading --flush MB of other
 * memory so that every call starts from DRAM, as in a training step where the convolutions
 * between two batchnorms evict their tensors (--flush 0: from the caches); medians.  The GB/s
 * columns are the traffic each call needs at least (forward: read x, write y; backward: read x
 * and dy, write dx) over its median time.  For an A/B of a change, build the old and the new
 * ops.c side by side (the table in bench/README.md came from a copy of the old code in this
 * file: git show 0bade06:bench/bench_bn.c).  This machine is shared: compare columns within
 * one run, never across runs.
 *
 * Benchmarks only; the tests never time anything. */
#include "runtime/ops.h"
#include "runtime/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- the benchmark ------------------------------------------------------------------------ */

typedef struct {
  const char *name;
  int c, h;
} bn_shape;

static const bn_shape g_shapes[] = {
    {"layer1 64x32x32", 64, 32}, {"layer2 128x16x16", 128, 16}, {"layer3 256x8x8", 256, 8}, {"layer4 512x4x4", 512, 4}};

typedef struct {
  int n, c, hw, params;
  float *x, *y, *dy, *dx;                   /* (N, C, HW); dx = dy in place */
  float *gamma, *beta, *rm, *rv;            /* (C) */
  float *mean, *invstd, *a, *b, *dg, *dbeta; /* (C) */
} bn_bufs;

/* the timed calls, in the order of the table's columns */
enum { FWD, BWD, NCALLS };

static void run(const bn_bufs *t, int which) {
  const float eps = 1e-5f, mom = 0.1f;
  if (which == FWD)
    tk_ops_bn_train_fwd(t->x, t->gamma, t->beta, t->rm, t->rv, eps, mom, 1, t->y, t->mean, t->invstd, t->a, t->b, t->n,
                        t->c, t->hw);
  else
    tk_ops_bn_bwd(t->x, t->dy, t->gamma, t->mean, t->invstd, t->a, t->b, 1, 1, t->dx, t->params ? t->dg : NULL,
                  t->params ? t->dbeta : NULL, t->n, t->c, t->hw, 0);
}

/* Reads a buffer bigger than the caches, so that the next call starts from DRAM. */
static float *g_flush;
static size_t g_flush_n;
static volatile float g_sink;
static void flush_caches(void) {
  float s = 0.0f;
  for (size_t i = 0; i < g_flush_n; i += 16) s += g_flush[i];
  g_sink = s;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int parse_list(const char *s, int *out, int max) {
  int k = 0;
  for (const char *p = s; *p && k < max;) {
    out[k++] = atoi(p);
    const char *comma = strchr(p, ',');
    if (!comma) break;
    p = comma + 1;
  }
  return k;
}

int main(int argc, char **argv) {
  int n = 128, reps = 31, flush_mb = 128, params = 0, inplace = 1, threads[8] = {1, 2}, nthreads = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--batch") && i + 1 < argc) n = atoi(argv[++i]);
    else if (!strcmp(a, "--threads") && i + 1 < argc) nthreads = parse_list(argv[++i], threads, 8);
    else if (!strcmp(a, "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(a, "--flush") && i + 1 < argc) flush_mb = atoi(argv[++i]);
    else if (!strcmp(a, "--params")) params = 1;
    else if (!strcmp(a, "--out-of-place")) inplace = 0;
    else {
      fprintf(stderr, "usage: bench_bn [--batch 128] [--threads 1,2] [--reps 31] [--flush MB] [--params] "
                      "[--out-of-place]\n"
                      "Medians of train-mode batchnorm forward and backward (fused ReLU), interleaved.\n");
      return !!strcmp(a, "--help") * 2;
    }
  }
  if (n < 1 || reps < 1 || nthreads < 1 || flush_mb < 0) {
    fprintf(stderr, "bench_bn: bad --batch, --threads, --reps or --flush\n");
    return 2;
  }
  g_flush_n = (size_t)flush_mb << 18;
  g_flush = g_flush_n ? malloc(g_flush_n * sizeof(float)) : NULL;
  for (size_t i = 0; i < g_flush_n; i++) g_flush[i] = 1.0f;
  printf("batch %d, %d reps, flush %d MB, backward %s %s, OMP_WAIT_POLICY=%s; medians in ms\n", n, reps, flush_mb,
         params ? "with dgamma, dbeta," : "dx only,", inplace ? "in place" : "out of place",
         getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "(unset)");
  printf("%-18s %3s %6s | %8s %5s | %8s %5s\n", "shape", "thr", "MB", "fwd", "GB/s", "bwd", "GB/s");
  double *samples = malloc((size_t)reps * NCALLS * sizeof(double));
  for (size_t si = 0; si < sizeof g_shapes / sizeof *g_shapes; si++) {
    const bn_shape *s = &g_shapes[si];
    bn_bufs t = {.n = n, .c = s->c, .hw = s->h * s->h, .params = params};
    const size_t count = (size_t)n * t.c * t.hw;
    float *dy0 = malloc(count * sizeof(float)); /* dy, restored before each backward */
    float **big[] = {&t.x, &t.y, &t.dy, &t.dx};
    for (size_t k = 0; k < 4; k++) *big[k] = k < 3 || !inplace ? tk_alloc_aligned(count * sizeof(float)) : t.dy;
    float **small[] = {&t.gamma, &t.beta, &t.rm, &t.rv, &t.mean, &t.invstd, &t.a, &t.b, &t.dg, &t.dbeta};
    for (size_t k = 0; k < 10; k++) *small[k] = tk_alloc_aligned((size_t)t.c * sizeof(float));
    tk_rng r;
    tk_rng_seed(&r, 7 + si);
    for (size_t q = 0; q < count; q++) {
      t.x[q] = (float)(tk_rng_normal(&r) * 0.8 + 0.1);
      t.dy[q] = dy0[q] = (float)tk_rng_normal(&r);
    }
    for (int ch = 0; ch < t.c; ch++) {
      t.gamma[ch] = (float)(0.5 + tk_rng_uniform(&r));
      t.beta[ch] = (float)(tk_rng_uniform(&r) - 0.5);
      t.rm[ch] = 0.0f, t.rv[ch] = 1.0f;
    }
    const double mb = (double)count * sizeof(float) / 1e6;
    for (int ti = 0; ti < nthreads; ti++) {
#ifdef _OPENMP
      omp_set_num_threads(threads[ti]);
#endif
      for (int w = 0; w < NCALLS; w++) { /* warm-up: thread pool, page faults */
        memcpy(t.dy, dy0, count * sizeof(float));
        run(&t, w);
      }
      /* the backward uses the statistics of the forward before it, or of the warm-up's */
      for (int rep = 0; rep < reps; rep++)
        for (int k = 0; k < NCALLS; k++) {
          const int w = (rep + k) % NCALLS;
          if (w == BWD) memcpy(t.dy, dy0, count * sizeof(float));
          flush_caches();
          const double t0 = tk_now();
          run(&t, w);
          samples[(size_t)w * reps + rep] = tk_now() - t0;
        }
      double med[NCALLS];
      for (int w = 0; w < NCALLS; w++) {
        qsort(samples + (size_t)w * reps, (size_t)reps, sizeof(double), cmp_d);
        med[w] = samples[(size_t)w * reps + reps / 2];
      }
      printf("%-18s %3d %6.1f | %8.3f %5.1f | %8.3f %5.1f\n", s->name, threads[ti], mb, 1e3 * med[FWD],
             2 * mb / 1e3 / med[FWD], 1e3 * med[BWD], 3 * mb / 1e3 / med[BWD]);
      fflush(stdout);
    }
    for (size_t k = 0; k < 4; k++)
      if (k < 3 || !inplace) free(*big[k]);
    free(dy0);
    for (size_t k = 0; k < 10; k++) free(*small[k]);
  }
  free(samples);
  free(g_flush);
  return 0;
}
