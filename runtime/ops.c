/* ops.c -- fast NCHW ops of the executor: input normalisation, batch norm (fused with ReLU),
 * ReLU, max/avg/global pools, add (fused with ReLU), per-channel scale.  See ops.h for the
 * contract.  N batch, C channels, HW = H*W.
 *
 * Parallel loops run over N x C planes or over blocks of channels; per-channel sums use
 * double accumulators in a fixed order, so results do not depend on the thread count.  Loops below
 * PAR_MIN elements stay on the calling thread: an OpenMP region costs about a microsecond
 * where idle threads spin (libgomp's default), which matters at batch 1 on small maps, and
 * about 40 where they sleep (OMP_WAIT_POLICY=PASSIVE), more than an add of 64x32x32 takes
 * on one thread -- tk_ops_calibrate measures it.
 */
#include "ops.h"
#include "util.h"

#include <math.h>
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

static long par_min_v = 16384; /* elements below which a loop stays serial (tk_ops_calibrate) */
#define PAR_MIN par_min_v
#define FLAT_BLOCK 4096 /* elements per work item of a flat parallel loop */

/* Runs BODY over [lo, hi) ranges covering [0, count): one range on the calling thread when
 * count is small, else blocks of FLAT_BLOCK shared by the threads (static schedule). */
#define FLAT_LOOP(count, BODY)                                                            \
  do {                                                                                    \
    const size_t n_ = (count);                                                            \
    if (n_ <= (size_t)PAR_MIN) {                                                          \
      const size_t lo = 0, hi = n_;                                                       \
      BODY;                                                                               \
    } else {                                                                              \
      const long nb_ = (long)((n_ + FLAT_BLOCK - 1) / FLAT_BLOCK);                        \
      TK_PRAGMA("omp parallel for schedule(static)")                                      \
      for (long b_ = 0; b_ < nb_; b_++) {                                                 \
        const size_t lo = (size_t)b_ * FLAT_BLOCK, hi = lo + FLAT_BLOCK < n_ ? lo + FLAT_BLOCK : n_; \
        BODY;                                                                             \
      }                                                                                   \
    }                                                                                     \
  } while (0)

/* An elementwise pass costs about 0.15-0.25 ns per element on one thread (an add of 64x32x32:
 * 9.5 us), so a region of `us` microseconds pays for itself on two threads from about 8-13
 * thousand elements per microsecond; 8192. */
void tk_ops_calibrate(int threads) {
  const char *e = getenv("TICKET_PAR_MIN");
  if (e && *e) {
    long long v = atoll(e);
    par_min_v = v > 0 ? (long)v : 16384;
    return;
  }
#ifdef _OPENMP
  if (threads < 2 || omp_in_parallel()) return;
  double v[9];
  for (int r = 0; r < 9; r++) {
    const double t0 = omp_get_wtime();
    volatile int sink = 0;
#pragma omp parallel num_threads(threads)
    sink = omp_get_thread_num();
    (void)sink;
    v[r] = omp_get_wtime() - t0;
  }
  const double elems = tk_median(v, 9) * 1e6 * 8192.0;
  par_min_v = elems < 16384.0 ? 16384 : elems > 16777216.0 ? 16777216 : (long)elems;
#else
  (void)threads;
#endif
}

long tk_ops_par_min(void) { return par_min_v; }

/* ---- input normalisation ------------------------------------------------------------------ */

void tk_ops_normalize_fwd(const float *x, const float *mean, const float *std, float *y, int n, int c, int hw) {
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    const float *xp = x + p * hw;
    float *yp = y + p * hw;
    if (!mean) {
      memcpy(yp, xp, (size_t)hw * sizeof(float));
      continue;
    }
    int ch = (int)(p % c);
    float m = mean[ch], r = 1.0f / std[ch];
    TK_PRAGMA("omp simd")
    for (int i = 0; i < hw; i++) yp[i] = (xp[i] - m) * r;
  }
}

void tk_ops_normalize_bwd(const float *dy, const float *std, float *dx, int n, int c, int hw, int acc) {
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    const float *g = dy + p * hw;
    float *d = dx + p * hw;
    float r = std ? 1.0f / std[p % c] : 1.0f;
    if (acc) {
      TK_PRAGMA("omp simd")
      for (int i = 0; i < hw; i++) d[i] += g[i] * r;
    } else {
      TK_PRAGMA("omp simd")
      for (int i = 0; i < hw; i++) d[i] = g[i] * r;
    }
  }
}

/* ---- batch normalisation ---------------------------------------------------------------------- */

/* ReLU that lets NaN through, as PyTorch's does */
static inline float relu1(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }

/* The per-channel affine map x * a + b of both modes.  The backward does not read the fused
 * ReLU's output back: it recomputes the mask (x * a + b > 0) from x with the a and b the
 * forward saved, one array less in each of its passes.  That mask must be the one the forward
 * applied, bit for bit, so both directions go through this one expression (the compiler then
 * contracts it to the same FMA, or not, everywhere). */
static inline float bn_affine(float x, float a, float b) { return x * a + b; }

/* y = relu?(x * a + b) for one plane */
static inline void affine_plane(const float *x, float a, float b, int relu, float *y, int hw) {
  if (relu) {
    TK_PRAGMA("omp simd")
    for (int i = 0; i < hw; i++) y[i] = relu1(bn_affine(x[i], a, b));
  } else {
    TK_PRAGMA("omp simd")
    for (int i = 0; i < hw; i++) y[i] = bn_affine(x[i], a, b);
  }
}

void tk_ops_bn_eval_fwd(const float *x, const float *gamma, const float *beta, const float *running_mean,
                        const float *running_var, float eps, int relu, float *y, float *save_mean,
                        float *save_invstd, float *save_a, float *save_b, int n, int c, int hw) {
  for (int ch = 0; ch < c; ch++) {
    save_mean[ch] = running_mean[ch];
    save_invstd[ch] = (float)(1.0 / sqrt((double)running_var[ch] + (double)eps));
    save_a[ch] = gamma[ch] * save_invstd[ch];
    save_b[ch] = beta[ch] - save_mean[ch] * save_a[ch];
  }
  if (!y) return;
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    int ch = (int)(p % c);
    affine_plane(x + p * hw, save_a[ch], save_b[ch], relu, y + p * hw, hw);
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

void tk_ops_bn_train_fwd(const float *x, const float *gamma, const float *beta, float *running_mean,
                         float *running_var, float eps, float momentum, int relu, float *y, float *save_mean,
                         float *save_invstd, float *save_a, float *save_b, int n, int c, int hw) {
  const double count = (double)n * hw;
  const size_t cs = (size_t)c * hw; /* stride between images */
  const int cb = bn_block_channels(c, hw), nblk = (c + cb - 1) / cb;
  TK_PRAGMA("omp parallel for schedule(static) if(count * c > PAR_MIN)")
  for (int blk = 0; blk < nblk; blk++) {
    const int c0 = blk * cb, nc = c - c0 < cb ? c - c0 : cb;
    /* One pass of shifted moments: sums of (x - k) and (x - k)^2 with k the channel's mean
     * over the first image, close enough to the batch mean that the variance
     * E[(x-k)^2] - E[x-k]^2 loses no precision to cancellation. */
    float k[BN_MAX_CB];
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
      save_a[ch] = (float)(gamma[ch] * invstd);
      save_b[ch] = (float)(beta[ch] - mean * gamma[ch] * invstd);
    }
    for (int i = 0; y && i < n; i++)
      for (int j = 0; j < nc; j++) {
        const size_t off = i * cs + (size_t)(c0 + j) * hw;
        affine_plane(x + off, save_a[c0 + j], save_b[c0 + j], relu, y + off, hw);
      }
  }
}

/* Masked output gradient: g where the fused ReLU passed its input (v = x * a + b > 0), else 0.
 * Both operands are computed unconditionally, so the compiler makes it a vector select, not a
 * branch (a branch on the sign of random activations mispredicts half the time: 4.5x slower).
 * v > 0 is exactly where the forward's relu1(v) > 0 (0, -0 and NaN give false on both sides). */
static inline float masked(float v, float g) { return v > 0.0f ? g : 0.0f; }
/* RELU is a literal at every use, so each caller gets its own loop; ra, rb: the channel's a, b */
#define MASKED(RELU, xp, gp, k) ((RELU) ? masked(bn_affine((xp)[k], ra, rb), (gp)[k]) : (gp)[k])
/* LOOP(RELU, ACC) expanded for the four literal pairs, chosen by the runtime flags */
#define RELU_ACC_DISPATCH(LOOP, relu, acc)                              \
  do {                                                                  \
    if (relu) {                                                         \
      if (acc) { LOOP(1, 1) } else { LOOP(1, 0) }                       \
    } else {                                                            \
      if (acc) { LOOP(0, 1) } else { LOOP(0, 0) }                       \
    }                                                                   \
  } while (0)

/* dx (+)= k0 * masked(dy) over one plane: eval-mode batchnorm's input gradient (xp is read
 * only for the mask) */
static inline void bn_scale_plane(const float *xp, const float *gp, float ra, float rb, float k0, int relu, int acc,
                                  float *dp, int hw) {
#define BN_SCALE_LOOP(RELU, ACC)                                                   \
  TK_PRAGMA("omp simd")                                                            \
  for (int k = 0; k < hw; k++) {                                                   \
    float v = k0 * MASKED(RELU, xp, gp, k);                                        \
    dp[k] = (ACC) ? dp[k] + v : v;                                                 \
  }
  RELU_ACC_DISPATCH(BN_SCALE_LOOP, relu, acc);
#undef BN_SCALE_LOOP
}

/* Per-plane sums of g and g * (x - mean): float vector lanes over chunks of BN_CHUNK elements
 * (a few additions per lane), double across chunks and planes, in a fixed order.  Whole-plane
 * float sums were measurably too coarse for train-mode batchnorm, whose input gradient
 * subtracts these means from g. */
static inline void bn_plane_sums(const float *xp, const float *gp, float ra, float rb, float mean, int relu, int hw,
                                 double *sg, double *sgx) {
  double s = 0.0, sx = 0.0;
  for (int k0 = 0; k0 < hw; k0 += BN_CHUNK) {
    const int k1 = k0 + BN_CHUNK < hw ? k0 + BN_CHUNK : hw;
    float cs = 0.0f, cx = 0.0f;
    if (relu) {
      TK_PRAGMA("omp simd reduction(+ : cs, cx)")
      for (int k = k0; k < k1; k++) {
        float g = MASKED(1, xp, gp, k);
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

void tk_ops_bn_bwd(const float *x, const float *dy, const float *gamma, const float *save_mean,
                   const float *save_invstd, const float *save_a, const float *save_b, int relu, int train, float *dx,
                   float *dgamma, float *dbeta, int n, int c, int hw, int acc) {
  const double count = (double)n * hw;
  const size_t cs = (size_t)c * hw;
  if (!train && !dgamma && !dbeta) {
    /* eval mode, input gradient only (every PGD step): one scaling pass, no sums */
    if (!dx) return;
    long planes = (long)n * c;
    TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
    for (long p = 0; p < planes; p++) {
      int ch = (int)(p % c);
      const float ra = relu ? save_a[ch] : 0.0f, rb = relu ? save_b[ch] : 0.0f;
      bn_scale_plane(x + p * hw, dy + p * hw, ra, rb, gamma[ch] * save_invstd[ch], relu, acc, dx + p * hw, hw);
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
        const int ch = c0 + j;
        const size_t off = i * cs + (size_t)ch * hw;
        const float ra = relu ? save_a[ch] : 0.0f, rb = relu ? save_b[ch] : 0.0f;
        bn_plane_sums(x + off, dy + off, ra, rb, save_mean[ch], relu, hw, &sg[j], &sgx[j]);
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
        const float ra = relu ? save_a[ch] : 0.0f, rb = relu ? save_b[ch] : 0.0f;
        const float k0 = gamma[ch] * invstd;
        const size_t off = i * cs + (size_t)ch * hw;
        const float *xp = x + off, *gp = dy + off;
        float *dp = dx + off;
        if (!train) {
          bn_scale_plane(xp, gp, ra, rb, k0, relu, acc, dp, hw);
          continue;
        }
        const float mg = (float)(sg[j] / count);   /* mean of g */
        const float mgx = (float)(sgx[j] / count); /* mean of g * xhat */
        const float kx = invstd * mgx;
#define BN_TRAIN_LOOP(RELU, ACC)                                                    \
  TK_PRAGMA("omp simd")                                                             \
  for (int k = 0; k < hw; k++) {                                                    \
    float v = k0 * (MASKED(RELU, xp, gp, k) - mg - (xp[k] - mean) * kx);            \
    dp[k] = (ACC) ? dp[k] + v : v;                                                  \
  }
        RELU_ACC_DISPATCH(BN_TRAIN_LOOP, relu, acc);
#undef BN_TRAIN_LOOP
      }
  }
}

/* ---- ReLU ------------------------------------------------------------------------------------ */

void tk_ops_relu_fwd(const float *x, float *y, size_t count) {
  FLAT_LOOP(count, TK_PRAGMA("omp simd") for (size_t i = lo; i < hi; i++) y[i] = relu1(x[i]));
}

void tk_ops_relu_bwd(const float *y, const float *dy, float *dx, size_t count, int acc) {
  if (acc)
    FLAT_LOOP(count, TK_PRAGMA("omp simd") for (size_t i = lo; i < hi; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f);
  else
    FLAT_LOOP(count, TK_PRAGMA("omp simd") for (size_t i = lo; i < hi; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f);
}

/* ---- pools ------------------------------------------------------------------------------------ */

/* The common 2x2 window, stride 2, no padding (LeNet, VGG): the same first-maximum and
 * NaN rules as the general loop below, without its bounds logic, so it vectorises. */
static void maxpool_fwd_2x2s2(const tk_pool_dims *d, const float *x, float *y, int32_t *argmax, long planes) {
  const int ih = d->ih, iw = d->iw, oh = d->oh, ow = d->ow;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * oh * ow * 4 > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    const float *xp = x + p * ih * iw;
    float *yp = y + p * oh * ow;
    int32_t *ap = argmax + p * oh * ow;
    for (int oy = 0; oy < oh; oy++) {
      const float *r0 = xp + 2 * oy * iw, *r1 = r0 + iw;
      const int32_t base = 2 * oy * iw;
      TK_PRAGMA("omp simd")
      for (int ox = 0; ox < ow; ox++) {
        float bv = r0[2 * ox];
        int32_t bi = base + 2 * ox;
        float v = r0[2 * ox + 1];
        if (v > bv || v != v) bv = v, bi = base + 2 * ox + 1;
        v = r1[2 * ox];
        if (v > bv || v != v) bv = v, bi = base + iw + 2 * ox;
        v = r1[2 * ox + 1];
        if (v > bv || v != v) bv = v, bi = base + iw + 2 * ox + 1;
        yp[oy * ow + ox] = bv;
        ap[oy * ow + ox] = bi;
      }
    }
  }
}

void tk_ops_maxpool_fwd(const tk_pool_dims *d, const float *x, float *y, int32_t *argmax, int n) {
  const long planes = (long)n * d->c;
  const int ih = d->ih, iw = d->iw, oh = d->oh, ow = d->ow;
  if (d->kh == 2 && d->kw == 2 && d->sh == 2 && d->sw == 2 && d->ph == 0 && d->pw == 0 && 2 * oh <= ih &&
      2 * ow <= iw) {
    maxpool_fwd_2x2s2(d, x, y, argmax, planes);
    return;
  }
  TK_PRAGMA("omp parallel for schedule(static) if(planes * oh * ow * d->kh * d->kw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    const float *xp = x + p * ih * iw;
    float *yp = y + p * oh * ow;
    int32_t *ap = argmax + p * oh * ow;
    for (int oy = 0; oy < oh; oy++) {
      int y0 = oy * d->sh - d->ph, y1 = y0 + d->kh;
      if (y0 < 0) y0 = 0;
      if (y1 > ih) y1 = ih;
      for (int ox = 0; ox < ow; ox++) {
        int x0 = ox * d->sw - d->pw, x1 = x0 + d->kw;
        if (x0 < 0) x0 = 0;
        if (x1 > iw) x1 = iw;
        int best = y0 * iw + x0;
        float bv = xp[best];
        for (int yy = y0; yy < y1; yy++)
          for (int xx = x0; xx < x1; xx++) {
            float v = xp[yy * iw + xx];
            if (v > bv || isnan(v)) { /* a NaN wins (the last one), as in PyTorch */
              bv = v;
              best = yy * iw + xx;
            }
          }
        yp[oy * ow + ox] = bv;
        ap[oy * ow + ox] = best;
      }
    }
  }
}

void tk_ops_maxpool_bwd(const tk_pool_dims *d, const float *dy, const int32_t *argmax, float *dx, int n, int acc) {
  const long planes = (long)n * d->c;
  const int in = d->ih * d->iw, on = d->oh * d->ow;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * in > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    float *dp = dx + p * in;
    const float *gp = dy + p * on;
    const int32_t *ap = argmax + p * on;
    if (!acc) memset(dp, 0, (size_t)in * sizeof(float));
    for (int o = 0; o < on; o++) dp[ap[o]] += gp[o];
  }
}

void tk_ops_avgpool_fwd(const tk_pool_dims *d, const float *x, float *y, int n) {
  const long planes = (long)n * d->c;
  const int ih = d->ih, iw = d->iw, oh = d->oh, ow = d->ow;
  const float inv = 1.0f / (float)(d->kh * d->kw);
  TK_PRAGMA("omp parallel for schedule(static) if(planes * oh * ow * d->kh * d->kw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    const float *xp = x + p * ih * iw;
    float *yp = y + p * oh * ow;
    for (int oy = 0; oy < oh; oy++) {
      int y0 = oy * d->sh - d->ph, y1 = y0 + d->kh;
      if (y0 < 0) y0 = 0;
      if (y1 > ih) y1 = ih;
      for (int ox = 0; ox < ow; ox++) {
        int x0 = ox * d->sw - d->pw, x1 = x0 + d->kw;
        if (x0 < 0) x0 = 0;
        if (x1 > iw) x1 = iw;
        float s = 0.0f;
        for (int yy = y0; yy < y1; yy++)
          for (int xx = x0; xx < x1; xx++) s += xp[yy * iw + xx];
        yp[oy * ow + ox] = s * inv;
      }
    }
  }
}

void tk_ops_avgpool_bwd(const tk_pool_dims *d, const float *dy, float *dx, int n, int acc) {
  const long planes = (long)n * d->c;
  const int ih = d->ih, iw = d->iw, oh = d->oh, ow = d->ow;
  const float inv = 1.0f / (float)(d->kh * d->kw);
  TK_PRAGMA("omp parallel for schedule(static) if(planes * oh * ow * d->kh * d->kw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    float *dp = dx + p * ih * iw;
    const float *gp = dy + p * oh * ow;
    if (!acc) memset(dp, 0, (size_t)ih * iw * sizeof(float));
    for (int oy = 0; oy < oh; oy++) {
      int y0 = oy * d->sh - d->ph, y1 = y0 + d->kh;
      if (y0 < 0) y0 = 0;
      if (y1 > ih) y1 = ih;
      for (int ox = 0; ox < ow; ox++) {
        int x0 = ox * d->sw - d->pw, x1 = x0 + d->kw;
        if (x0 < 0) x0 = 0;
        if (x1 > iw) x1 = iw;
        float g = gp[oy * ow + ox] * inv;
        for (int yy = y0; yy < y1; yy++)
          for (int xx = x0; xx < x1; xx++) dp[yy * iw + xx] += g;
      }
    }
  }
}

/* ---- global average pool ---------------------------------------------------------------------- */

void tk_ops_gap_fwd(const float *x, float *y, int n, int c, int hw) {
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    const float *xp = x + p * hw;
    double s = 0.0;
    TK_PRAGMA("omp simd reduction(+ : s)")
    for (int i = 0; i < hw; i++) s += xp[i];
    y[p] = (float)(s / hw);
  }
}

void tk_ops_gap_bwd(const float *dy, float *dx, int n, int c, int hw, int acc) {
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    float g = dy[p] / (float)hw;
    float *dp = dx + p * hw;
    if (acc) {
      TK_PRAGMA("omp simd")
      for (int i = 0; i < hw; i++) dp[i] += g;
    } else {
      TK_PRAGMA("omp simd")
      for (int i = 0; i < hw; i++) dp[i] = g;
    }
  }
}

/* ---- add ----------------------------------------------------------------------------------------- */

void tk_ops_add_fwd(const float *a, const float *b, int relu, float *y, size_t count) {
  if (relu)
    FLAT_LOOP(count, TK_PRAGMA("omp simd") for (size_t i = lo; i < hi; i++) y[i] = relu1(a[i] + b[i]));
  else
    FLAT_LOOP(count, TK_PRAGMA("omp simd") for (size_t i = lo; i < hi; i++) y[i] = a[i] + b[i]);
}

void tk_ops_add_affine_fwd(const float *x0, const float *a0, const float *b0, const float *x1, const float *a1,
                           const float *b1, int relu, float *y, int n, int c, int hw) {
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    const int ch = (int)(p % c);
    const float *u = x0 + p * hw, *v = x1 + p * hw;
    float *yp = y + p * hw;
    const float ua = a0 ? a0[ch] : 0.0f, ub = a0 ? b0[ch] : 0.0f, va = a1 ? a1[ch] : 0.0f, vb = a1 ? b1[ch] : 0.0f;
    /* the four combinations as loops of their own, so that each vectorises without selects */
#define ADD_AFFINE_LOOP(EU, EV)                                      \
  if (relu) {                                                        \
    TK_PRAGMA("omp simd")                                            \
    for (int k = 0; k < hw; k++) yp[k] = relu1((EU) + (EV));         \
  } else {                                                           \
    TK_PRAGMA("omp simd")                                            \
    for (int k = 0; k < hw; k++) yp[k] = (EU) + (EV);                \
  }
    if (a0 && a1) {
      ADD_AFFINE_LOOP(bn_affine(u[k], ua, ub), bn_affine(v[k], va, vb))
    } else if (a0) {
      ADD_AFFINE_LOOP(bn_affine(u[k], ua, ub), v[k])
    } else if (a1) {
      ADD_AFFINE_LOOP(u[k], bn_affine(v[k], va, vb))
    } else {
      ADD_AFFINE_LOOP(u[k], v[k])
    }
#undef ADD_AFFINE_LOOP
  }
}

/* d (+)= g over [lo, hi) */
static inline void grad_to(const float *g, float *d, int acc, size_t lo, size_t hi) {
  if (!d) return;
  if (acc) {
    TK_PRAGMA("omp simd")
    for (size_t i = lo; i < hi; i++) d[i] += g[i];
  } else if (d != g) {
    memcpy(d + lo, g + lo, (hi - lo) * sizeof(float));
  }
}

void tk_ops_add_bwd(const float *relu_y, float *dy, float *da, int acc_a, float *db, int acc_b, size_t count) {
  /* Block by block: mask dy in place (it dies here), then hand it to the input that does not
   * share dy's buffer first, so that both read g before it is overwritten. */
  float *first = da == dy ? db : da, *second = da == dy ? da : db;
  const int acc_first = da == dy ? acc_b : acc_a, acc_second = da == dy ? acc_a : acc_b;
  FLAT_LOOP(count, {
    if (relu_y) {
      TK_PRAGMA("omp simd")
      for (size_t i = lo; i < hi; i++) dy[i] = relu_y[i] > 0.0f ? dy[i] : 0.0f;
    }
    grad_to(dy, first, acc_first, lo, hi);
    grad_to(dy, second, acc_second, lo, hi);
  });
}

/* ---- per-channel scale ---------------------------------------------------------------------------- */

void tk_ops_scale_fwd(const float *x, const float *w, float *y, int n, int c, int hw) {
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    float s = w[p % c];
    const float *xp = x + p * hw;
    float *yp = y + p * hw;
    TK_PRAGMA("omp simd")
    for (int i = 0; i < hw; i++) yp[i] = xp[i] * s;
  }
}

void tk_ops_scale_bwd(const float *x, const float *dy, const float *w, float *dx, float *dw, int n, int c, int hw,
                      int acc) {
  const size_t cs = (size_t)c * hw;
  if (dw) {
    TK_PRAGMA("omp parallel for schedule(static) if((long)n * c * hw > PAR_MIN)")
    for (int ch = 0; ch < c; ch++) {
      double s = 0.0;
      for (int i = 0; i < n; i++) {
        const float *xp = x + i * cs + (size_t)ch * hw, *gp = dy + i * cs + (size_t)ch * hw;
        TK_PRAGMA("omp simd reduction(+ : s)")
        for (int k = 0; k < hw; k++) s += (double)xp[k] * gp[k];
      }
      dw[ch] = (float)s;
    }
  }
  if (!dx) return;
  long planes = (long)n * c;
  TK_PRAGMA("omp parallel for schedule(static) if(planes * hw > PAR_MIN)")
  for (long p = 0; p < planes; p++) {
    float s = w[p % c];
    const float *gp = dy + p * hw;
    float *dp = dx + p * hw;
    if (acc) {
      TK_PRAGMA("omp simd")
      for (int i = 0; i < hw; i++) dp[i] += gp[i] * s;
    } else {
      TK_PRAGMA("omp simd")
      for (int i = 0; i < hw; i++) dp[i] = gp[i] * s;
    }
  }
}

/* ---- helpers ---------------------------------------------------------------------------------------- */

void tk_ops_accumulate(float *y, const float *x, size_t count) {
  FLAT_LOOP(count, TK_PRAGMA("omp simd") for (size_t i = lo; i < hi; i++) y[i] += x[i]);
}

void tk_ops_channel_sum(const float *dy, float *db, int n, int c, int hw) {
  const size_t cs = (size_t)c * hw;
  TK_PRAGMA("omp parallel for schedule(static) if((long)n * c * hw > PAR_MIN)")
  for (int ch = 0; ch < c; ch++) {
    double s = 0.0;
    for (int i = 0; i < n; i++) {
      const float *gp = dy + i * cs + (size_t)ch * hw;
      TK_PRAGMA("omp simd reduction(+ : s)")
      for (int k = 0; k < hw; k++) s += gp[k];
    }
    db[ch] = (float)s;
  }
}
