/* ref_ops.c -- naive reference conv2d and linear (see ref_ops.h): the oracle for every fast
 * kernel and the fallback when no generated kernel exists.
 *
 * Every output element is one double-precision sum over its terms in a fixed order, so the
 * result does not depend on the number of threads.  The only liberty taken for speed is that
 * a row of outputs is accumulated at once (a block of up to ROW_BLOCK doubles on the stack);
 * each element still sums exactly the terms of the textbook formula.  Zero weights are not
 * skipped (0 * inf must give NaN as in PyTorch).
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
  d.I = l->in.c, d.H = l->in.h, d.W = l->in.w;
  d.O = l->out.c, d.OH = l->out.h, d.OW = l->out.w;
  d.G = l->groups, d.IG = d.I / d.G, d.OG = d.O / d.G;
  d.KH = l->kh, d.KW = l->kw, d.SH = l->sh, d.SW = l->sw;
  d.PH = l->ph, d.PW = l->pw, d.DH = l->dh, d.DW = l->dw;
  return d;
}

/* ---- conv2d ------------------------------------------------------------------------------ */

void tk_ref_conv2d_fwd(const tk_layer *l, const float *x, const float *w, const float *b, float *y, int n) {
  const conv_dims d = dims_of(l);
  const size_t wsz = (size_t)d.IG * d.KH * d.KW; /* weights per output channel */
  const double work = (double)n * d.O * d.OH * d.OW * (double)wsz;
#pragma omp parallel for collapse(2) schedule(static) if (work > PAR_MIN_WORK)
  for (int i = 0; i < n; i++)
    for (int o = 0; o < d.O; o++) {
      const int g = o / d.OG;
      const float *wo = w + (size_t)o * wsz;                            /* (IG, KH, KW) */
      const float *xg = x + ((size_t)i * d.I + (size_t)g * d.IG) * d.H * d.W; /* (IG, H, W) */
      float *yo = y + ((size_t)i * d.O + o) * d.OH * d.OW;               /* (OH, OW) */
      for (int oy = 0; oy < d.OH; oy++)
        for (int ox0 = 0; ox0 < d.OW; ox0 += ROW_BLOCK) {
          const int nb = d.OW - ox0 < ROW_BLOCK ? d.OW - ox0 : ROW_BLOCK;
          double acc[ROW_BLOCK];
          for (int k = 0; k < nb; k++) acc[k] = b ? (double)b[o] : 0.0;
          for (int c = 0; c < d.IG; c++)
            for (int ky = 0; ky < d.KH; ky++) {
              const int iy = oy * d.SH - d.PH + ky * d.DH;
              if (iy < 0 || iy >= d.H) continue;
              const float *xrow = xg + ((size_t)c * d.H + iy) * d.W;
              for (int kx = 0; kx < d.KW; kx++) {
                const double wv = wo[((size_t)c * d.KH + ky) * d.KW + kx];
                for (int k = 0; k < nb; k++) {
                  const int ix = (ox0 + k) * d.SW - d.PW + kx * d.DW;
                  if (ix >= 0 && ix < d.W) acc[k] += wv * xrow[ix];
                }
              }
            }
          for (int k = 0; k < nb; k++) yo[(size_t)oy * d.OW + ox0 + k] = (float)acc[k];
        }
    }
}

/* dx[n, c, iy, ix] = sum over o in c's group, ky, kx with iy = oy*SH - PH + ky*DH and
 * ix = ox*SW - PW + kx*DW for some output position (oy, ox) of w[o, c%IG, ky, kx] * dy[n,o,oy,ox]. */
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
          double acc[ROW_BLOCK];
          for (int k = 0; k < nb; k++) acc[k] = 0.0;
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
                for (int k = 0; k < nb; k++) {
                  const int tx = ix0 + k + d.PW - kx * d.DW; /* = ox * SW */
                  if (tx >= 0 && tx % d.SW == 0 && tx / d.SW < d.OW) acc[k] += wv * dyrow[tx / d.SW];
                }
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
            double acc = 0.0;
            for (int i = 0; i < n; i++) {
              const float *xc = x + ((size_t)i * d.I + (size_t)g * d.IG + c) * d.H * d.W;
              const float *dyo = dy + ((size_t)i * d.O + o) * d.OH * d.OW;
              for (int oy = 0; oy < d.OH; oy++) {
                const int iy = oy * d.SH - d.PH + ky * d.DH;
                if (iy < 0 || iy >= d.H) continue;
                for (int ox = 0; ox < d.OW; ox++) {
                  const int ix = ox * d.SW - d.PW + kx * d.DW;
                  if (ix >= 0 && ix < d.W) acc += (double)dyo[(size_t)oy * d.OW + ox] * xc[(size_t)iy * d.W + ix];
                }
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
