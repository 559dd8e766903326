/* bench_bn.c -- train-mode batchnorm (+ fused ReLU) of runtime/ops.c against its previous
 * version, on ResNet-18's batchnorm shapes (CIFAR, default batch 128).
 *
 *   OMP_WAIT_POLICY=PASSIVE bench_bn [--batch 128] [--threads 1,2] [--reps 31] [--flush 128] [--params]
 *                                    [--out-of-place]
 *
 * Times tk_ops_bn_train_fwd (relu) and tk_ops_bn_bwd (train, relu, acc = 0; dgamma and dbeta
 * only with --params: PGD's attack steps ask for dx alone) beside "old", a copy of ops.c's
 * batchnorm from before the backward recomputed the ReLU mask from x (git 39fe921: its
 * backward read the forward's output y for the mask).  The backward runs in place (dx = dy),
 * as the engine runs it (exec.c hands a batchnorm its output-gradient buffer); dy is restored
 * from a copy before each call, outside the clock.  The calls are interleaved (one sample of
 * each in turn, the first one rotating), each after reading --flush MB of other memory so that
 * every call starts from DRAM, as in a training step where the convolutions between two
 * batchnorms evict their tensors; medians.  The outputs of old and new are compared bit for
 * bit once per shape ("same").  The GB/s column is the traffic each new call needs at least
 * (forward: read x, write y; backward: read x and dy, write dx) over its median time.  This
 * machine is shared: compare columns within one run, never across runs.
 *
 * Benchmarks only; the tests never time anything. */
#include "runtime/ops.h"
#include "runtime/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef _OPENMP
#define TK_PRAGMA(x) _Pragma(x)
#else
#define TK_PRAGMA(x)
#endif
#define PAR_MIN 16384 /* as in ops.c */

/* ---- the baseline: ops.c's train-mode batchnorm at git 39fe921, verbatim but renamed ------- */

/* ReLU that lets NaN through, as PyTorch's does */
static inline float relu1(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }

/* y = relu?(x * a + b) for one plane */
static inline void affine_plane(const float *x, float a, float b, int relu, float *y, int hw) {
  if (relu) {
    TK_PRAGMA("omp simd")
    for (int i = 0; i < hw; i++) y[i] = relu1(x[i] * a + b);
  } else {
    TK_PRAGMA("omp simd")
    for (int i = 0; i < hw; i++) y[i] = x[i] * a + b;
  }
}

/* Train-mode statistics and both backward passes work on blocks of channels, each block
 * walked image by image: a block's planes in one image are contiguous (about BN_BLOCK floats),
 * so reads stream through memory instead of jumping a whole image between planes (which
 * cost 3-4x on 4x4 and 8x8 maps).  Per-channel sums stay in a fixed order (images, then
 * chunks), so results do not depend on the thread count. */
#define BN_BLOCK 1024
static int bn_block_channels(int c, int hw) {
  int cb = (BN_BLOCK + hw - 1) / hw;
  return cb < 1 ? 1 : cb > c ? c : cb;
}
#define BN_MAX_CB BN_BLOCK /* the most channels in a block (hw = 1) */

/* Per-plane sums of (x - k) and (x - k)^2: float vector lanes over chunks of BN_CHUNK
 * elements, double across chunks (see bn_plane_sums). */
#define BN_CHUNK 64
static inline void plane_moments(const float *xp, float k, int hw, double *s1, double *s2) {
  double a = 0.0, b = 0.0;
  for (int k0 = 0; k0 < hw; k0 += BN_CHUNK) {
    const int k1 = k0 + BN_CHUNK < hw ? k0 + BN_CHUNK : hw;
    float ca = 0.0f, cb = 0.0f;
    TK_PRAGMA("omp simd reduction(+ : ca, cb)")
    for (int j = k0; j < k1; j++) {
      float d = xp[j] - k;
      ca += d;
      cb += d * d;
    }
    a += ca;
    b += cb;
  }
  *s1 += a;
  *s2 += b;
}

static void old_bn_train_fwd(const float *x, const float *gamma, const float *beta, float *running_mean,
                             float *running_var, float eps, float momentum, int relu, float *y, float *save_mean,
                             float *save_invstd, int n, int c, int hw) {
  const double count = (double)n * hw;
  const size_t cs = (size_t)c * hw; /* stride between images */
  const int cb = bn_block_channels(c, hw), nblk = (c + cb - 1) / cb;
  TK_PRAGMA("omp parallel for schedule(static) if(count * c > PAR_MIN)")
  for (int blk = 0; blk < nblk; blk++) {
    const int c0 = blk * cb, nc = c - c0 < cb ? c - c0 : cb;
    /* One pass of shifted moments: sums of (x - k) and (x - k)^2 with k the channel's mean
     * over the first image, close enough to the batch mean that the variance
     * E[(x-k)^2] - E[x-k]^2 loses no precision to cancellation. */
    float k[BN_MAX_CB], a[BN_MAX_CB], b[BN_MAX_CB];
    double s1[BN_MAX_CB], s2[BN_MAX_CB];
    for (int j = 0; j < nc; j++) {
      const float *xp = x + (size_t)(c0 + j) * hw;
      double t = 0.0;
      for (int q = 0; q < hw; q++) t += xp[q];
      k[j] = (float)(t / hw);
      s1[j] = s2[j] = 0.0;
    }
    for (int i = 0; i < n; i++) {
      const float *xi = x + i * cs + (size_t)c0 * hw;
      for (int j = 0; j < nc; j++) plane_moments(xi + (size_t)j * hw, k[j], hw, &s1[j], &s2[j]);
    }
    for (int j = 0; j < nc; j++) {
      const int ch = c0 + j;
      const double d = s1[j] / count; /* mean - k */
      const double mean = (double)k[j] + d;
      double ss = s2[j] - s1[j] * d; /* sum of (x - mean)^2 */
      if (ss < 0.0) ss = 0.0;
      const double var = ss / count; /* biased: used to normalise */
      const double invstd = 1.0 / sqrt(var + (double)eps);
      save_mean[ch] = (float)mean;
      save_invstd[ch] = (float)invstd;
      const double unbiased = count > 1 ? ss / (count - 1.0) : var;
      running_mean[ch] = (float)((1.0 - momentum) * running_mean[ch] + momentum * mean);
      running_var[ch] = (float)((1.0 - momentum) * running_var[ch] + momentum * unbiased);
      a[j] = (float)(gamma[ch] * invstd);
      b[j] = (float)(beta[ch] - mean * gamma[ch] * invstd);
    }
    for (int i = 0; i < n; i++)
      for (int j = 0; j < nc; j++) {
        const size_t off = i * cs + (size_t)(c0 + j) * hw;
        affine_plane(x + off, a[j], b[j], relu, y + off, hw);
      }
  }
}

/* Masked output gradient: g where the fused ReLU passed its input (y > 0), else 0.  Both
 * operands are loaded unconditionally, so the compiler makes it a vector select, not a branch
 * (a branch on the sign of random activations mispredicts half the time: 4.5x slower). */
static inline float masked(float y, float g) { return y > 0.0f ? g : 0.0f; }
/* RELU is a literal at every use, so each caller gets its own loop */
#define MASKED(RELU, yp, gp, k) ((RELU) ? masked((yp)[k], (gp)[k]) : (gp)[k])
/* LOOP(RELU, ACC) expanded for the four literal pairs, chosen by the runtime flags */
#define RELU_ACC_DISPATCH(LOOP, relu, acc)                              \
  do {                                                                  \
    if (relu) {                                                         \
      if (acc) { LOOP(1, 1) } else { LOOP(1, 0) }                       \
    } else {                                                            \
      if (acc) { LOOP(0, 1) } else { LOOP(0, 0) }                       \
    }                                                                   \
  } while (0)

/* dx (+)= a * masked(dy) over one plane: eval-mode batchnorm's input gradient */
static inline void bn_scale_plane(const float *yp, const float *gp, float a, int relu, int acc, float *dp, int hw) {
#define BN_SCALE_LOOP(RELU, ACC)                                                   \
  TK_PRAGMA("omp simd")                                                            \
  for (int k = 0; k < hw; k++) {                                                   \
    float v = a * MASKED(RELU, yp, gp, k);                                         \
    dp[k] = (ACC) ? dp[k] + v : v;                                                 \
  }
  RELU_ACC_DISPATCH(BN_SCALE_LOOP, relu, acc);
#undef BN_SCALE_LOOP
}

/* Per-plane sums of g and g * (x - mean): float vector lanes over chunks of BN_CHUNK elements
 * (a few additions per lane), double across chunks and planes, in a fixed order.  Whole-plane
 * float sums were measurably too coarse for train-mode batchnorm, whose input gradient
 * subtracts these means from g. */
static inline void bn_plane_sums(const float *xp, const float *yp, const float *gp, float mean, int relu, int hw,
                                 double *sg, double *sgx) {
  double s = 0.0, sx = 0.0;
  for (int k0 = 0; k0 < hw; k0 += BN_CHUNK) {
    const int k1 = k0 + BN_CHUNK < hw ? k0 + BN_CHUNK : hw;
    float cs = 0.0f, cx = 0.0f;
    if (relu) {
      TK_PRAGMA("omp simd reduction(+ : cs, cx)")
      for (int k = k0; k < k1; k++) {
        float g = masked(yp[k], gp[k]);
        cs += g;
        cx += g * (xp[k] - mean);
      }
    } else {
      TK_PRAGMA("omp simd reduction(+ : cs, cx)")
      for (int k = k0; k < k1; k++) {
        cs += gp[k];
        cx += gp[k] * (xp[k] - mean);
      }
    }
    s += cs;
    sx += cx;
  }
  *sg += s;
  *sgx += sx;
}

static void old_bn_bwd(const float *x, const float *relu_y, const float *dy, const float *gamma,
                       const float *save_mean, const float *save_invstd, int train, float *dx, float *dgamma,
                       float *dbeta, int n, int c, int hw, int acc) {
  const double count = (double)n * hw;
  const size_t cs = (size_t)c * hw;
  const int relu = relu_y != NULL;
  if (!train && !dgamma && !dbeta) {
    /* eval mode, input gradient only (every PGD step): one scaling pass, no sums */
    if (!dx) return;
    long planes = (long)n * c;
    TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
    for (long p = 0; p < planes; p++) {
      int ch = (int)(p % c);
      bn_scale_plane(relu ? relu_y + p * hw : NULL, dy + p * hw, gamma[ch] * save_invstd[ch], relu, acc,
                     dx + p * hw, hw);
    }
    return;
  }
  const int cb = bn_block_channels(c, hw), nblk = (c + cb - 1) / cb;
  TK_PRAGMA("omp parallel for schedule(static) if(count * c > PAR_MIN)")
  for (int blk = 0; blk < nblk; blk++) {
    const int c0 = blk * cb, nc = c - c0 < cb ? c - c0 : cb;
    double sg[BN_MAX_CB], sgx[BN_MAX_CB]; /* sum g, sum g * (x - mean) */
    for (int j = 0; j < nc; j++) sg[j] = sgx[j] = 0.0;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < nc; j++) {
        const size_t off = i * cs + (size_t)(c0 + j) * hw;
        bn_plane_sums(x + off, relu ? relu_y + off : NULL, dy + off, save_mean[c0 + j], relu, hw, &sg[j], &sgx[j]);
      }
    for (int j = 0; j < nc; j++) {
      sgx[j] *= save_invstd[c0 + j]; /* sum g * xhat */
      if (dgamma) dgamma[c0 + j] = (float)sgx[j];
      if (dbeta) dbeta[c0 + j] = (float)sg[j];
    }
    if (!dx) continue;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < nc; j++) {
        const int ch = c0 + j;
        const float mean = save_mean[ch], invstd = save_invstd[ch];
        const float k0 = gamma[ch] * invstd;
        const size_t off = i * cs + (size_t)ch * hw;
        const float *xp = x + off, *gp = dy + off, *yp = relu ? relu_y + off : NULL;
        float *dp = dx + off;
        if (!train) {
          bn_scale_plane(yp, gp, k0, relu, acc, dp, hw);
          continue;
        }
        const float mg = (float)(sg[j] / count);   /* mean of g */
        const float mgx = (float)(sgx[j] / count); /* mean of g * xhat */
        const float kx = invstd * mgx;
#define BN_TRAIN_LOOP(RELU, ACC)                                                    \
  TK_PRAGMA("omp simd")                                                             \
  for (int k = 0; k < hw; k++) {                                                    \
    float v = k0 * (MASKED(RELU, yp, gp, k) - mg - (xp[k] - mean) * kx);            \
    dp[k] = (ACC) ? dp[k] + v : v;                                                  \
  }
        RELU_ACC_DISPATCH(BN_TRAIN_LOOP, relu, acc);
#undef BN_TRAIN_LOOP
      }
  }
}

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
enum { OLD_FWD, NEW_FWD, OLD_BWD, NEW_BWD, NCALLS };

static void run(const bn_bufs *t, int which) {
  const float eps = 1e-5f, mom = 0.1f;
  switch (which) {
  case OLD_FWD:
    old_bn_train_fwd(t->x, t->gamma, t->beta, t->rm, t->rv, eps, mom, 1, t->y, t->mean, t->invstd, t->n, t->c, t->hw);
    break;
  case NEW_FWD:
    tk_ops_bn_train_fwd(t->x, t->gamma, t->beta, t->rm, t->rv, eps, mom, 1, t->y, t->mean, t->invstd, t->a, t->b, t->n,
                        t->c, t->hw);
    break;
  case OLD_BWD:
    old_bn_bwd(t->x, t->y, t->dy, t->gamma, t->mean, t->invstd, 1, t->dx, t->params ? t->dg : NULL,
               t->params ? t->dbeta : NULL, t->n, t->c, t->hw, 0);
    break;
  case NEW_BWD:
    tk_ops_bn_bwd(t->x, t->dy, t->gamma, t->mean, t->invstd, t->a, t->b, 1, 1, t->dx, t->params ? t->dg : NULL,
                  t->params ? t->dbeta : NULL, t->n, t->c, t->hw, 0);
    break;
  }
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

static size_t same_bits(const float *a, const float *b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return bad;
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
                      "Medians of train-mode batchnorm forward and backward (fused ReLU), old and new, interleaved.\n");
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
  printf("%-18s %3s %6s | %8s %8s %6s %5s | %8s %8s %6s %5s | %s\n", "shape", "thr", "MB", "fwd old", "fwd new", "new/old",
         "GB/s", "bwd old", "bwd new", "new/old", "GB/s", "same");
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
    /* old and new must agree bit for bit (the running statistics aside, updated by each) */
    float *y0 = malloc(count * sizeof(float)), *dx0 = malloc(count * sizeof(float));
    run(&t, OLD_FWD);
    run(&t, OLD_BWD);
    memcpy(y0, t.y, count * sizeof(float));
    memcpy(dx0, t.dx, count * sizeof(float));
    memcpy(t.dy, dy0, count * sizeof(float));
    run(&t, NEW_FWD);
    run(&t, NEW_BWD);
    const size_t bad = same_bits(t.y, y0, count) + same_bits(t.dx, dx0, count);
    free(y0), free(dx0);
    const double mb = (double)count * sizeof(float) / 1e6;
    for (int ti = 0; ti < nthreads; ti++) {
#ifdef _OPENMP
      omp_set_num_threads(threads[ti]);
#endif
      for (int w = 0; w < NCALLS; w++) { /* warm-up: thread pool, page faults */
        memcpy(t.dy, dy0, count * sizeof(float));
        run(&t, w);
      }
      /* any order is valid: both forwards write the same y, mean and 1/std (and new's a, b) */
      for (int rep = 0; rep < reps; rep++)
        for (int k = 0; k < NCALLS; k++) {
          const int w = (rep + k) % NCALLS;
          if (w == OLD_BWD || w == NEW_BWD) memcpy(t.dy, dy0, count * sizeof(float));
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
      printf("%-18s %3d %6.1f | %8.3f %8.3f %6.3f %5.1f | %8.3f %8.3f %6.3f %5.1f | %s\n", s->name, threads[ti], mb,
             1e3 * med[OLD_FWD], 1e3 * med[NEW_FWD], med[NEW_FWD] / med[OLD_FWD], 2 * mb / 1e3 / med[NEW_FWD],
             1e3 * med[OLD_BWD], 1e3 * med[NEW_BWD], med[NEW_BWD] / med[OLD_BWD], 3 * mb / 1e3 / med[NEW_BWD],
             bad ? "NO" : "yes");
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
