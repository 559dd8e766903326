/* ref_ops.c -- naive reference conv2d and linear (see ref_ops.h): the oracle for every fast
 * kernel and the fallback when no generated kernel exists.
 *
 * Every output element is one double-precision sum over its terms in a fixed order, so the
 * result does not depend on the number of threads.  The liberties taken for speed: a row of
 * outputs is accumulated at once (a block of up to ROW_BLOCK doubles on the stack), and the
 * loops over a row run over the range of columns a tap can reach (tap_range) instead of
 * testing every column; each element still sums exactly the terms of the textbook formula.
 * Zero weights are not skipped (0 * inf must give NaN as in PyTorch).
 *
 * Dimension letters: N batch, I/O input/output channels, G groups, IG = I/G, OG = O/G,
 * H W input map, OH OW output map, KH KW kernel, SH SW stride, PH PW padding, DH DW dilation.
 *   x (N, I, H, W)   w (O, IG, KH, KW)   b (O)   y (N, O, OH, OW)
 *   conv:  y[n,o,oy,ox] = b[o] + sum_{c<IG, ky, kx} w[o,c,ky,kx] * x[n, g*IG+c, iy, ix]
 *          with g = o / OG, iy = oy*SH - PH + ky*DH, ix = ox*SW - PW + kx*DW, zero outside.
 *   linear (K = I*H*W of the input value, x viewed as (N, K)):  y[n,o] = b[o] + sum_k w[o,k] x[n,k]
 */
#include "ref_ops.h"

#include <stdlib.h>
#include <string.h>

#define ROW_BLOCK 256
/* Parallel regions only pay off above this many multiply-adds (thread wake-ups cost more than
 * tiny ops, badly so on a loaded machine). */
#define PAR_MIN_WORK 200000.0

typedef struct {
  int I, H, W, O, OH, OW, G, IG, OG, KH, KW, SH, SW, PH, PW, DH, DW;
} conv_dims;

static conv_dims dims_of(const tk_layer *l) {
  conv_dims d;
  TK_ASSERT(l->kw >= 1 && l->kw <= 64); /* tk_model_infer's bound; the row loops rely on it */
  d.I = l->in.c, d.H = l->in.h, d.W = l->in.w;
  d.O = l->out.c, d.OH = l->out.h, d.OW = l->out.w;
  d.G = l->groups, d.IG = d.I / d.G, d.OG = d.O / d.G;
  d.KH = l->kh, d.KW = l->kw, d.SH = l->sh, d.SW = l->sw;
  d.PH = l->ph, d.PW = l->pw, d.DH = l->dh, d.DW = l->dw;
  return d;
}

/* ---- conv2d ------------------------------------------------------------------------------ */

/* Integer division rounding up / down, for any sign of a and b > 0. */
static int div_up(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
static int div_down(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* The output columns ox in [lo, hi) whose tap kx reads an input column ix = ox*SW - PW + kx*DW
 * inside [ix_lo, ix_hi), limited to [ox_lo, ox_hi).  Loops over that range need no bounds
 * checks; this is all the "cleverness" there is. */
static void tap_range(const conv_dims *d, int kx, int ix_lo, int ix_hi, int ox_lo, int ox_hi, int *lo, int *hi) {
  const int off = kx * d->DW - d->PW; /* ix = ox*SW + off */
  int a = div_up(ix_lo - off, d->SW), b = div_down(ix_hi - 1 - off, d->SW) + 1;
  *lo = a > ox_lo ? a : ox_lo;
  *hi = b < ox_hi ? b : ox_hi;
  if (*hi < *lo) *hi = *lo;
}

void tk_ref_conv2d_fwd(const tk_layer *l, const float *x, const float *w, const float *b, float *y, int n) {
  const conv_dims d = dims_of(l);
  const size_t wsz = (size_t)d.IG * d.KH * d.KW; /* weights per output channel */
  const double work = (double)n * d.O * d.OH * d.OW * (double)wsz;
#pragma omp parallel for collapse(2) schedule(static) if (work > PAR_MIN_WORK)
  for (int i = 0; i < n; i++)
    for (int o = 0; o < d.O; o++) {
      const int g = o / d.OG;
      const float *wo = w + (size_t)o * wsz;                                  /* (IG, KH, KW) */
      const float *xg = x + ((size_t)i * d.I + (size_t)g * d.IG) * d.H * d.W; /* (IG, H, W) */
      float *yo = y + ((size_t)i * d.O + o) * d.OH * d.OW;                    /* (OH, OW) */
      for (int oy = 0; oy < d.OH; oy++)
        for (int ox0 = 0; ox0 < d.OW; ox0 += ROW_BLOCK) {
          const int nb = d.OW - ox0 < ROW_BLOCK ? d.OW - ox0 : ROW_BLOCK;
          double acc[ROW_BLOCK]; /* acc[k] = y[oy][ox0 + k] */
          int lo[64], hi[64];    /* per kx: the columns of this block the tap reaches (KW <= 64) */
          for (int k = 0; k < nb; k++) acc[k] = b ? (double)b[o] : 0.0;
          for (int kx = 0; kx < d.KW; kx++) tap_range(&d, kx, 0, d.W, ox0, ox0 + nb, &lo[kx], &hi[kx]);
          for (int c = 0; c < d.IG; c++)
            for (int ky = 0; ky < d.KH; ky++) {
              const int iy = oy * d.SH - d.PH + ky * d.DH;
              if (iy < 0 || iy >= d.H) continue;
              const float *xrow = xg + ((size_t)c * d.H + iy) * d.W;
              for (int kx = 0; kx < d.KW; kx++) {
                const double wv = wo[((size_t)c * d.KH + ky) * d.KW + kx];
                const int off = kx * d.DW - d.PW;
                if (d.SW == 1) /* the same loop, contiguous: the compiler vectorises it */
                  for (int ox = lo[kx]; ox < hi[kx]; ox++) acc[ox - ox0] += wv * xrow[ox + off];
                else
                  for (int ox = lo[kx]; ox < hi[kx]; ox++) acc[ox - ox0] += wv * xrow[ox * d.SW + off];
              }
            }
          for (int k = 0; k < nb; k++) yo[(size_t)oy * d.OW + ox0 + k] = (float)acc[k];
        }
    }
}

/* dx[n, c, iy, ix] = sum over o in c's group, ky, kx (in that order) of w[o, c%IG, ky, kx] *
 * dy[n, o, oy, ox] for the output position (oy, ox) whose tap (ky, kx) reads (iy, ix), if any:
 * iy = oy*SH - PH + ky*DH and ix = ox*SW - PW + kx*DW. */
void tk_ref_conv2d_bwd_input(const tk_layer *l, const float *dy, const float *w, float *dx, int n) {
  const conv_dims d = dims_of(l);
  const size_t wsz = (size_t)d.IG * d.KH * d.KW;
  const double work = (double)n * d.O * d.OH * d.OW * (double)wsz;
#pragma omp parallel for collapse(2) schedule(static) if (work > PAR_MIN_WORK)
  for (int i = 0; i < n; i++)
    for (int c = 0; c < d.I; c++) {
      const int g = c / d.IG, cl = c % d.IG;
      float *dxc = dx + ((size_t)i * d.I + c) * d.H * d.W; /* (H, W) */
      for (int iy = 0; iy < d.H; iy++)
        for (int ix0 = 0; ix0 < d.W; ix0 += ROW_BLOCK) {
          const int nb = d.W - ix0 < ROW_BLOCK ? d.W - ix0 : ROW_BLOCK;
          double acc[ROW_BLOCK]; /* acc[k] = dx[iy][ix0 + k] */
          int lo[64], hi[64];    /* per kx: the outputs whose tap lands in this block */
          for (int k = 0; k < nb; k++) acc[k] = 0.0;
          for (int kx = 0; kx < d.KW; kx++) tap_range(&d, kx, ix0, ix0 + nb, 0, d.OW, &lo[kx], &hi[kx]);
          for (int o = g * d.OG; o < (g + 1) * d.OG; o++) {
            const float *wc = w + (size_t)o * wsz + (size_t)cl * d.KH * d.KW; /* (KH, KW) */
            const float *dyo = dy + ((size_t)i * d.O + o) * d.OH * d.OW;      /* (OH, OW) */
            for (int ky = 0; ky < d.KH; ky++) {
              const int ty = iy + d.PH - ky * d.DH; /* = oy * SH */
              if (ty < 0 || ty % d.SH) continue;
              const int oy = ty / d.SH;
              if (oy >= d.OH) continue;
              const float *dyrow = dyo + (size_t)oy * d.OW;
              for (int kx = 0; kx < d.KW; kx++) {
                const double wv = wc[(size_t)ky * d.KW + kx];
                const int off = kx * d.DW - d.PW;
                /* each input column is hit by at most one ox, so every acc element still
                 * sums its terms in the order (o, ky, kx) */
                if (d.SW == 1)
                  for (int ox = lo[kx]; ox < hi[kx]; ox++) acc[ox + off - ix0] += wv * dyrow[ox];
                else
                  for (int ox = lo[kx]; ox < hi[kx]; ox++) acc[ox * d.SW + off - ix0] += wv * dyrow[ox];
              }
            }
          }
          for (int k = 0; k < nb; k++) dxc[(size_t)iy * d.W + ix0 + k] = (float)acc[k];
        }
    }
}

/* dw[o,c,ky,kx] = sum_{n,oy,ox} dy[n,o,oy,ox] * x[n, g*IG+c, iy, ix];  db[o] = sum_{n,oy,ox} dy.
 * dw or db may be NULL (not wanted). */
void tk_ref_conv2d_bwd_weight(const tk_layer *l, const float *x, const float *dy, float *dw, float *db, int n) {
  const conv_dims d = dims_of(l);
  const double work = (double)n * d.O * d.OH * d.OW * (double)d.IG * d.KH * d.KW;
  if (dw) {
#pragma omp parallel for collapse(2) schedule(static) if (work > PAR_MIN_WORK)
    for (int o = 0; o < d.O; o++)
      for (int c = 0; c < d.IG; c++) {
        const int g = o / d.OG;
        for (int ky = 0; ky < d.KH; ky++)
          for (int kx = 0; kx < d.KW; kx++) {
            const int off = kx * d.DW - d.PW;
            int lo, hi;
            tap_range(&d, kx, 0, d.W, 0, d.OW, &lo, &hi);
            double acc = 0.0;
            for (int i = 0; i < n; i++) {
              const float *xc = x + ((size_t)i * d.I + (size_t)g * d.IG + c) * d.H * d.W;
              const float *dyo = dy + ((size_t)i * d.O + o) * d.OH * d.OW;
              for (int oy = 0; oy < d.OH; oy++) {
                const int iy = oy * d.SH - d.PH + ky * d.DH;
                if (iy < 0 || iy >= d.H) continue;
                const float *dyrow = dyo + (size_t)oy * d.OW, *xrow = xc + (size_t)iy * d.W;
                /* four partial sums in a fixed order break the dependency chain */
                double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
                int ox = lo;
                for (; ox + 4 <= hi; ox += 4) {
                  a0 += (double)dyrow[ox] * xrow[ox * d.SW + off];
                  a1 += (double)dyrow[ox + 1] * xrow[(ox + 1) * d.SW + off];
                  a2 += (double)dyrow[ox + 2] * xrow[(ox + 2) * d.SW + off];
                  a3 += (double)dyrow[ox + 3] * xrow[(ox + 3) * d.SW + off];
                }
                for (; ox < hi; ox++) a0 += (double)dyrow[ox] * xrow[ox * d.SW + off];
                acc += (a0 + a1) + (a2 + a3);
              }
            }
            dw[(((size_t)o * d.IG + c) * d.KH + ky) * d.KW + kx] = (float)acc;
          }
      }
  }
  if (db) {
    for (int o = 0; o < d.O; o++) {
      double acc = 0.0;
      for (int i = 0; i < n; i++) {
        const float *dyo = dy + ((size_t)i * d.O + o) * d.OH * d.OW;
        for (size_t p = 0; p < (size_t)d.OH * d.OW; p++) acc += dyo[p];
      }
      db[o] = (float)acc;
    }
  }
}

/* ---- linear ------------------------------------------------------------------------------ */

void tk_ref_linear_fwd(const tk_layer *l, const float *x, const float *w, const float *b, float *y, int n) {
  const size_t K = (size_t)tk_shape_numel(l->in);
  const int O = l->out.c;
  const double work = (double)n * O * (double)K;
#pragma omp parallel for collapse(2) schedule(static) if (work > PAR_MIN_WORK)
  for (int i = 0; i < n; i++)
    for (int o = 0; o < O; o++) {
      const float *xi = x + (size_t)i * K, *wo = w + (size_t)o * K;
      double acc = b ? (double)b[o] : 0.0;
      for (size_t k = 0; k < K; k++) acc += (double)wo[k] * xi[k];
      y[(size_t)i * O + o] = (float)acc;
    }
}

/* dx[n,k] = sum_o dy[n,o] w[o,k] */
void tk_ref_linear_bwd_input(const tk_layer *l, const float *dy, const float *w, float *dx, int n) {
  const size_t K = (size_t)tk_shape_numel(l->in);
  const int O = l->out.c;
  const double work = (double)n * O * (double)K;
#pragma omp parallel for schedule(static) if (work > PAR_MIN_WORK)
  for (int i = 0; i < n; i++)
    for (size_t k = 0; k < K; k++) {
      double acc = 0.0;
      for (int o = 0; o < O; o++) acc += (double)dy[(size_t)i * O + o] * w[(size_t)o * K + k];
      dx[(size_t)i * K + k] = (float)acc;
    }
}

/* dw[o,k] = sum_n dy[n,o] x[n,k];  db[o] = sum_n dy[n,o].  dw or db may be NULL. */
void tk_ref_linear_bwd_weight(const tk_layer *l, const float *x, const float *dy, float *dw, float *db, int n) {
  const size_t K = (size_t)tk_shape_numel(l->in);
  const int O = l->out.c;
  const double work = (double)n * O * (double)K;
  if (dw) {
#pragma omp parallel for schedule(static) if (work > PAR_MIN_WORK)
    for (int o = 0; o < O; o++)
      for (size_t k = 0; k < K; k++) {
        double acc = 0.0;
        for (int i = 0; i < n; i++) acc += (double)dy[(size_t)i * O + o] * x[(size_t)i * K + k];
        dw[(size_t)o * K + k] = (float)acc;
      }
  }
  if (db) {
    for (int o = 0; o < O; o++) {
      double acc = 0.0;
      for (int i = 0; i < n; i++) acc += dy[(size_t)i * O + o];
      db[o] = (float)acc;
    }
  }
}
