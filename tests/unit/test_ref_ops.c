/* test_ref_ops.c -- the reference ops against hand-checked values and against a second,
 * independently written formula.
 *
 *  1. conv2d / linear on tiny cases whose outputs are worked out by hand: identity and shift
 *     kernels, stride 2, dilation 2, groups 2, padding, bias.
 *  2. conv2d against `direct_conv` below, which pads the input explicitly into a bigger
 *     array and then indexes the dilated taps (the library bounds-checks instead), on random
 *     shapes with every combination of stride, padding, dilation, groups and bias.  The two
 *     backward ops are checked against their own direct scatter formulas and against the
 *     adjoint identities <conv(x), dy> = <x, conv_bwd_input(dy)> and <conv_w(x), dy> = <w, dw>.
 *  3. linear likewise.
 *  4. The reference kernel wrapper (runtime/kernel_ref.c): same results through the kernel
 *     interface, weight gradient zero off the mask, bad arguments rejected.
 *  5. The reference engine's other ops on hand-checked cases: maxpool with -inf padding,
 *     avgpool counting the padding, global average pool, scale, add, input normalisation,
 *     BatchNorm in eval and train mode with PyTorch's running-statistics update.
 * Tolerances: results are float32 rounded from double sums, so hand-checked values (small
 * integers) must match exactly; random cases to 1e-5 relative.
 */
#include "check.h"

#include "compiler/compile.h"
#include "runtime/engine.h"
#include "runtime/ref/ref_ops.h"

#include <math.h>
#include <string.h>

/* ---- helpers --------------------------------------------------------------------------- */

static tk_rng g_rng;

static void fill_random(float *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (float)(2.0 * tk_rng_uniform(&g_rng) - 1.0);
}

static tk_layer conv_layer(int ic, int h, int w, int oc, int kh, int kw, int s, int p, int d, int g) {
  tk_layer l = tk_layer_default(TK_OP_CONV2D, "conv", 0);
  l.kh = kh, l.kw = kw, l.sh = l.sw = s, l.ph = l.pw = p, l.dh = l.dw = d, l.groups = g;
  l.in = (tk_shape){ic, h, w};
  l.out.c = oc;
  l.out.h = (h + 2 * p - d * (kh - 1) - 1) / s + 1;
  l.out.w = (w + 2 * p - d * (kw - 1) - 1) / s + 1;
  return l;
}

/* Independent conv: explicit zero-padded copy, then plain indexing of dilated taps. */
static void direct_conv(const tk_layer *l, const float *x, const float *w, const float *b, float *y, int n) {
  const int I = l->in.c, H = l->in.h, W = l->in.w, O = l->out.c, OH = l->out.h, OW = l->out.w;
  const int HP = H + 2 * l->ph, WP = W + 2 * l->pw, IG = I / l->groups, OG = O / l->groups;
  float *xp = calloc((size_t)n * I * HP * WP, sizeof(float));
  for (int i = 0; i < n; i++)
    for (int c = 0; c < I; c++)
      for (int r = 0; r < H; r++)
        for (int q = 0; q < W; q++)
          xp[(((size_t)i * I + c) * HP + r + l->ph) * WP + q + l->pw] = x[(((size_t)i * I + c) * H + r) * W + q];
  for (int i = 0; i < n; i++)
    for (int o = 0; o < O; o++)
      for (int r = 0; r < OH; r++)
        for (int q = 0; q < OW; q++) {
          double s = b ? b[o] : 0.0;
          for (int c = 0; c < IG; c++)
            for (int u = 0; u < l->kh; u++)
              for (int v = 0; v < l->kw; v++) {
                int cin = (o / OG) * IG + c;
                s += (double)w[(((size_t)o * IG + c) * l->kh + u) * l->kw + v] *
                     xp[(((size_t)i * I + cin) * HP + r * l->sh + u * l->dh) * WP + q * l->sw + v * l->dw];
              }
          y[(((size_t)i * O + o) * OH + r) * OW + q] = (float)s;
        }
  free(xp);
}

/* Independent backward: scatter every output's gradient to the padded input and weights. */
static void direct_conv_bwd(const tk_layer *l, const float *x, const float *w, const float *dy, float *dx,
                            float *dw, float *db, int n) {
  const int I = l->in.c, H = l->in.h, W = l->in.w, O = l->out.c, OH = l->out.h, OW = l->out.w;
  const int HP = H + 2 * l->ph, WP = W + 2 * l->pw, IG = I / l->groups, OG = O / l->groups;
  double *dxp = calloc((size_t)n * I * HP * WP, sizeof(double));
  double *dwd = calloc((size_t)O * IG * l->kh * l->kw, sizeof(double));
  double *dbd = calloc((size_t)O, sizeof(double));
  for (int i = 0; i < n; i++)
    for (int o = 0; o < O; o++)
      for (int r = 0; r < OH; r++)
        for (int q = 0; q < OW; q++) {
          double g = dy[(((size_t)i * O + o) * OH + r) * OW + q];
          dbd[o] += g;
          for (int c = 0; c < IG; c++)
            for (int u = 0; u < l->kh; u++)
              for (int v = 0; v < l->kw; v++) {
                int cin = (o / OG) * IG + c, pr = r * l->sh + u * l->dh, pq = q * l->sw + v * l->dw;
                size_t wi = (((size_t)o * IG + c) * l->kh + u) * l->kw + v;
                dxp[(((size_t)i * I + cin) * HP + pr) * WP + pq] += g * w[wi];
                int xr = pr - l->ph, xq = pq - l->pw;
                if (xr >= 0 && xr < H && xq >= 0 && xq < W) dwd[wi] += g * x[(((size_t)i * I + cin) * H + xr) * W + xq];
              }
        }
  for (int i = 0; i < n; i++)
    for (int c = 0; c < I; c++)
      for (int r = 0; r < H; r++)
        for (int q = 0; q < W; q++)
          dx[(((size_t)i * I + c) * H + r) * W + q] = (float)dxp[(((size_t)i * I + c) * HP + r + l->ph) * WP + q + l->pw];
  for (size_t k = 0; k < (size_t)O * IG * l->kh * l->kw; k++) dw[k] = (float)dwd[k];
  for (int o = 0; o < O; o++) db[o] = (float)dbd[o];
  free(dxp);
  free(dwd);
  free(dbd);
}

static double dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

/* ---- 1. hand-checked conv and linear ----------------------------------------------------- */

static void conv_hand(void) {
  float x9[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, y[64];
  /* identity 3x3 kernel, padding 1: y == x */
  {
    tk_layer l = conv_layer(1, 3, 3, 1, 3, 3, 1, 1, 1, 1);
    float w[9] = {0, 0, 0, 0, 1, 0, 0, 0, 0};
    tk_ref_conv2d_fwd(&l, x9, w, NULL, y, 1);
    check_close("identity kernel", y, x9, 9, 0, 0);
  }
  /* shift: weight at the top-left tap, padding 1: y[r][q] = x[r-1][q-1] */
  {
    tk_layer l = conv_layer(1, 3, 3, 1, 3, 3, 1, 1, 1, 1);
    float w[9] = {1, 0, 0, 0, 0, 0, 0, 0, 0}, want[9] = {0, 0, 0, 0, 1, 2, 0, 4, 5};
    tk_ref_conv2d_fwd(&l, x9, w, NULL, y, 1);
    check_close("shift kernel", y, want, 9, 0, 0);
  }
  /* all-ones 3x3, padding 1, bias 0.5: neighbourhood sums + 0.5 */
  {
    tk_layer l = conv_layer(1, 3, 3, 1, 3, 3, 1, 1, 1, 1);
    float w[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, b = 0.5f;
    float want[9] = {12.5f, 21.5f, 16.5f, 27.5f, 45.5f, 33.5f, 24.5f, 39.5f, 28.5f};
    tk_ref_conv2d_fwd(&l, x9, w, &b, y, 1);
    check_close("padding 1 ones + bias", y, want, 9, 0, 0);
  }
  float x25[25];
  for (int i = 0; i < 25; i++) x25[i] = (float)i;
  /* 1x1 weight 2, stride 2 on a 5x5 ramp: 2 * x[0::2, 0::2] */
  {
    tk_layer l = conv_layer(1, 5, 5, 1, 1, 1, 2, 0, 1, 1);
    float w = 2, want[9] = {0, 4, 8, 20, 24, 28, 40, 44, 48};
    CHECK(l.out.h == 3 && l.out.w == 3);
    tk_ref_conv2d_fwd(&l, x25, &w, NULL, y, 1);
    check_close("stride 2", y, want, 9, 0, 0);
  }
  /* ones 3x3 with dilation 2 on the 5x5 ramp: one output, the sum over the even grid = 108 */
  {
    tk_layer l = conv_layer(1, 5, 5, 1, 3, 3, 1, 0, 2, 1);
    float w[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, want = 108;
    CHECK(l.out.h == 1 && l.out.w == 1);
    tk_ref_conv2d_fwd(&l, x25, w, NULL, y, 1);
    check_close("dilation 2", y, &want, 1, 0, 0);
  }
  /* stride 2 + padding 1, 3x3 ones on the 5x5 ramp: 3x3 outputs of clipped windows */
  {
    tk_layer l = conv_layer(1, 5, 5, 1, 3, 3, 2, 1, 1, 1);
    float w[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    /* windows centred at (0,0),(0,2),(0,4),(2,0),...: e.g. centre (0,0) covers x[0..1][0..1] = 0+1+5+6 */
    float want[9] = {12, 27, 24, 63, 108, 81, 72, 117, 84};
    tk_ref_conv2d_fwd(&l, x25, w, NULL, y, 1);
    check_close("stride 2 padding 1", y, want, 9, 0, 0);
  }
  /* groups 2: 4 input channels, 2 outputs, 1x1: y0 = 1*x0 + 10*x1, y1 = 100*x2 + 1000*x3 */
  {
    tk_layer l = conv_layer(4, 1, 2, 2, 1, 1, 1, 0, 1, 2);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}; /* channels of 2 pixels */
    float w[4] = {1, 10, 100, 1000}, want[4] = {1 + 30, 2 + 40, 500 + 7000, 600 + 8000};
    tk_ref_conv2d_fwd(&l, x, w, NULL, y, 1);
    check_close("groups 2", y, want, 4, 0, 0);
    /* backward input: dx[c] = w of c's output * dy; with dy = 1 everywhere */
    float dy[4] = {1, 1, 1, 1}, dx[8], wantdx[8] = {1, 1, 10, 10, 100, 100, 1000, 1000};
    tk_ref_conv2d_bwd_input(&l, dy, w, dx, 1);
    check_close("groups 2 bwd_input", dx, wantdx, 8, 0, 0);
    float dw[4], db[2], wantdw[4] = {3, 7, 11, 15}, wantdb[2] = {2, 2};
    tk_ref_conv2d_bwd_weight(&l, x, dy, dw, db, 1);
    check_close("groups 2 bwd_weight", dw, wantdw, 4, 0, 0);
    check_close("groups 2 bwd_bias", db, wantdb, 2, 0, 0);
  }
  /* shift kernel backward: dy = e at output (1,1) flows to x(0,0) */
  {
    tk_layer l = conv_layer(1, 3, 3, 1, 3, 3, 1, 1, 1, 1);
    float w[9] = {1, 0, 0, 0, 0, 0, 0, 0, 0}, dy[9] = {0, 0, 0, 0, 1, 0, 0, 0, 0}, dx[9];
    float want[9] = {1, 0, 0, 0, 0, 0, 0, 0, 0};
    tk_ref_conv2d_bwd_input(&l, dy, w, dx, 1);
    check_close("shift kernel bwd_input", dx, want, 9, 0, 0);
  }
}

static void linear_hand(void) {
  tk_layer l = tk_layer_default(TK_OP_LINEAR, "fc", 0);
  l.in = (tk_shape){3, 1, 1};
  l.out = (tk_shape){2, 1, 1};
  float w[6] = {1, 2, 3, 4, 5, 6}, b[2] = {0.5f, -1}, x[6] = {1, 1, 1, 1, 0, -1}, y[4];
  float want[4] = {6.5f, 14, -1.5f, -3};
  tk_ref_linear_fwd(&l, x, w, b, y, 2);
  check_close("linear hand", y, want, 4, 0, 0);
  float dy[4] = {1, 0, 2, -1}, dx[6], wantdx[6] = {1, 2, 3, 2 - 4, 4 - 5, 6 - 6};
  tk_ref_linear_bwd_input(&l, dy, w, dx, 2);
  check_close("linear hand bwd_input", dx, wantdx, 6, 0, 0);
  float dw[6], db[2], wantdw[6] = {1 + 2, 1 + 0, 1 - 2, 0 - 1, 0, 0 + 1}, wantdb[2] = {3, -1};
  tk_ref_linear_bwd_weight(&l, x, dy, dw, db, 2);
  check_close("linear hand bwd_weight", dw, wantdw, 6, 0, 0);
  check_close("linear hand bwd_bias", db, wantdb, 2, 0, 0);
  /* a linear reading a (C, H, W) value flattens it */
  l.in = (tk_shape){1, 1, 3};
  tk_ref_linear_fwd(&l, x, w, b, y, 2);
  check_close("linear on a 1x1x3 map", y, want, 4, 0, 0);
}

/* ---- 2./3. random cases against the direct formulas ------------------------------------ */

static void conv_random(void) {
  struct { int ic, h, w, oc, kh, kw, s, p, d, g, bias; } cases[] = {
      {1, 5, 5, 1, 3, 3, 1, 0, 1, 1, 0},  {3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1},  {3, 8, 8, 2, 3, 3, 2, 1, 1, 1, 1},
      {2, 9, 7, 4, 3, 3, 1, 2, 2, 2, 0},  {4, 6, 6, 6, 1, 1, 2, 0, 1, 2, 1},  {6, 7, 9, 6, 3, 3, 1, 1, 1, 6, 0},
      {4, 11, 10, 4, 5, 3, 3, 2, 2, 4, 1}, {2, 5, 5, 3, 2, 2, 1, 0, 1, 1, 1}, {3, 4, 4, 3, 4, 4, 1, 3, 1, 3, 1},
      {8, 3, 3, 16, 3, 3, 1, 1, 1, 2, 0}, {1, 300, 2, 2, 1, 3, 1, 1, 1, 1, 1}, {2, 2, 300, 2, 3, 3, 1, 1, 1, 1, 1},
  };
  for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
    const int n = 3;
    tk_layer l = conv_layer(cases[ci].ic, cases[ci].h, cases[ci].w, cases[ci].oc, cases[ci].kh, cases[ci].kw,
                            cases[ci].s, cases[ci].p, cases[ci].d, cases[ci].g);
    /* non-square strides/paddings on the odd cases */
    if (ci % 3 == 2) {
      l.sw = 1, l.pw = 0;
      l.out.w = (l.in.w + 2 * l.pw - l.dw * (l.kw - 1) - 1) / l.sw + 1;
    }
    const size_t nx = (size_t)n * l.in.c * l.in.h * l.in.w, ny = (size_t)n * l.out.c * l.out.h * l.out.w;
    const size_t nw = (size_t)l.out.c * (l.in.c / l.groups) * l.kh * l.kw;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc((size_t)l.out.c * 4), *y = malloc(ny * 4),
          *yr = malloc(ny * 4), *dy = malloc(ny * 4), *dx = malloc(nx * 4), *dxr = malloc(nx * 4),
          *dw = malloc(nw * 4), *dwr = malloc(nw * 4), *db = malloc((size_t)l.out.c * 4),
          *dbr = malloc((size_t)l.out.c * 4);
    fill_random(x, nx), fill_random(w, nw), fill_random(b, (size_t)l.out.c), fill_random(dy, ny);
    const float *bias = cases[ci].bias ? b : NULL;
    char what[96];
    snprintf(what, sizeof what, "conv case %zu fwd", ci);
    tk_ref_conv2d_fwd(&l, x, w, bias, y, n);
    direct_conv(&l, x, w, bias, yr, n);
    check_close(what, y, yr, ny, 1e-5, 1e-6);
    tk_ref_conv2d_bwd_input(&l, dy, w, dx, n);
    tk_ref_conv2d_bwd_weight(&l, x, dy, dw, db, n);
    direct_conv_bwd(&l, x, w, dy, dxr, dwr, dbr, n);
    snprintf(what, sizeof what, "conv case %zu bwd_input", ci);
    check_close(what, dx, dxr, nx, 1e-5, 1e-6);
    snprintf(what, sizeof what, "conv case %zu bwd_weight", ci);
    check_close(what, dw, dwr, nw, 1e-5, 1e-6);
    snprintf(what, sizeof what, "conv case %zu bwd_bias", ci);
    check_close(what, db, dbr, (size_t)l.out.c, 1e-5, 1e-6);
    /* adjoint identities: <conv(x) - b, dy> = <x, dx> = <w, dw> */
    tk_ref_conv2d_fwd(&l, x, w, NULL, y, n);
    double a = dot(y, dy, ny), bx = dot(x, dx, nx), bw = dot(w, dw, nw);
    CHECK_MSG(fabs(a - bx) <= 1e-5 * (fabs(a) + 1), "case %zu: <conv x, dy> = %.9g, <x, dx> = %.9g", ci, a, bx);
    CHECK_MSG(fabs(a - bw) <= 1e-5 * (fabs(a) + 1), "case %zu: <conv x, dy> = %.9g, <w, dw> = %.9g", ci, a, bw);
    free(x), free(w), free(b), free(y), free(yr), free(dy), free(dx), free(dxr), free(dw), free(dwr), free(db),
        free(dbr);
  }
}

static void linear_random(void) {
  const int n = 4, K = 37, O = 5;
  tk_layer l = tk_layer_default(TK_OP_LINEAR, "fc", 0);
  l.in = (tk_shape){1, 37, 1};
  l.out = (tk_shape){O, 1, 1};
  float x[4 * 37], w[5 * 37], b[5], y[20], yr[20], dy[20], dx[4 * 37], dxr[4 * 37], dw[5 * 37], dwr[5 * 37],
      db[5], dbr[5];
  fill_random(x, sizeof x / 4), fill_random(w, sizeof w / 4), fill_random(b, 5), fill_random(dy, 20);
  for (int i = 0; i < n; i++)
    for (int o = 0; o < O; o++) {
      double s = b[o];
      for (int k = 0; k < K; k++) s += (double)x[i * K + k] * w[o * K + k];
      yr[i * O + o] = (float)s;
    }
  memset(dxr, 0, sizeof dxr), memset(dwr, 0, sizeof dwr), memset(dbr, 0, sizeof dbr);
  for (int i = 0; i < n; i++)
    for (int o = 0; o < O; o++) {
      dbr[o] += dy[i * O + o];
      for (int k = 0; k < K; k++) {
        dxr[i * K + k] += dy[i * O + o] * w[o * K + k];
        dwr[o * K + k] += dy[i * O + o] * x[i * K + k];
      }
    }
  tk_ref_linear_fwd(&l, x, w, b, y, n);
  tk_ref_linear_bwd_input(&l, dy, w, dx, n);
  tk_ref_linear_bwd_weight(&l, x, dy, dw, db, n);
  check_close("linear random fwd", y, yr, 20, 1e-5, 1e-6);
  check_close("linear random bwd_input", dx, dxr, (size_t)n * K, 1e-5, 1e-6);
  check_close("linear random bwd_weight", dw, dwr, (size_t)O * K, 1e-5, 1e-6);
  check_close("linear random bwd_bias", db, dbr, O, 1e-5, 1e-6);
}

/* ---- 4. the reference kernel ------------------------------------------------------------- */

static int add_tensor(tk_model *m, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t s[4] = {a, b, c, d};
  int t = tk_model_add_tensor(m, name, ndim, s);
  TK_ASSERT(t >= 0);
  fill_random(m->tensors[t].data, (size_t)m->tensors[t].numel);
  return t;
}

static void kernel_ref(void) {
  tk_model *m = tk_model_new("k", 6, 2, 5, 5);
  tk_layer c = tk_layer_default(TK_OP_CONV2D, "conv", 0);
  c.kh = c.kw = 3, c.ph = c.pw = 1, c.sh = c.sw = 2;
  c.weight = add_tensor(m, "conv.weight", 4, 4, 2, 3, 3);
  c.bias = add_tensor(m, "conv.bias", 1, 4, 0, 0, 0);
  m->tensors[c.weight].prunable = true;
  tk_model_add_layer(m, &c);
  tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 1);
  tk_model_add_layer(m, &f);
  tk_layer fc = tk_layer_default(TK_OP_LINEAR, "fc", 2);
  fc.weight = add_tensor(m, "fc.weight", 2, 6, 36, 0, 0);
  tk_model_add_layer(m, &fc);
  tk_tensor *wt = &m->tensors[c.weight];
  uint8_t mask[72];
  for (int i = 0; i < 72; i++) mask[i] = (uint8_t)(tk_rng_uniform(&g_rng) < 0.5);
  CHECK(tk_tensor_set_mask(wt, mask) == TK_OK);
  CHECK(tk_model_infer(m) == TK_OK);

  const int n = 2;
  const tk_layer *l = &m->layers[0];
  float x[2 * 50], y[2 * 36], yr[2 * 36], dy[2 * 36], dx[2 * 50], dxr[2 * 50], dw[72], dwr[72], db[4], dbr[4];
  fill_random(x, 100), fill_random(dy, 72);
  tk_kernel *k = NULL;
  CHECK(tk_kernel_reference_create(m, 0, n, &k) == TK_OK && k);
  if (k) {
    CHECK(k->variant == TK_VARIANT_REFERENCE);
    CHECK(k->v->fwd(k, x, y, n) == TK_OK);
    CHECK(k->v->bwd_input(k, dy, dx, n) == TK_OK);
    CHECK(k->v->bwd_weight(k, x, dy, dw, db, n) == TK_OK);
    CHECK(k->v->update(k) == TK_OK);
    direct_conv(l, x, wt->data, m->tensors[c.bias].data, yr, n);
    direct_conv_bwd(l, x, wt->data, dy, dxr, dwr, dbr, n);
    for (int i = 0; i < 72; i++)
      if (!mask[i]) dwr[i] = 0.0f;
    check_close("reference kernel fwd", y, yr, 72, 1e-5, 1e-6);
    check_close("reference kernel bwd_input", dx, dxr, 100, 1e-5, 1e-6);
    check_close("reference kernel bwd_weight (zero off the mask)", dw, dwr, 72, 1e-5, 1e-6);
    check_close("reference kernel bwd_bias", db, dbr, 4, 1e-5, 1e-6);
    for (int i = 0; i < 72; i++) CHECK_MSG(mask[i] || dw[i] == 0.0f, "dw[%d] = %g off the mask", i, dw[i]);
    CHECK(k->v->fwd(k, x, y, n + 1) == TK_ERR_ARG); /* beyond max_batch */
    k->v->destroy(k);
  }
  /* the linear layer through the kernel */
  CHECK(tk_kernel_reference_create(m, 2, 1, &k) == TK_OK && k);
  if (k) {
    float fy[6], fyr[6];
    CHECK(k->v->fwd(k, yr, fy, 1) == TK_OK);
    tk_ref_linear_fwd(&m->layers[2], yr, m->tensors[fc.weight].data, NULL, fyr, 1);
    check_close("reference kernel linear", fy, fyr, 6, 0, 0);
    k->v->destroy(k);
  }
  CHECK(tk_kernel_reference_create(m, 1, 1, &k) == TK_ERR_ARG && !k);  /* flatten has no kernel */
  CHECK(tk_kernel_reference_create(m, 7, 1, &k) == TK_ERR_ARG && !k);  /* no such layer */
  CHECK(tk_kernel_reference_create(m, 0, 0, &k) == TK_ERR_ARG && !k);  /* max_batch 0 */
  tk_model_free(m);
}

/* ---- 5. the engine's other ops on hand-checked cases ---------------------------------------- */

/* Runs x through a model that ends in a flatten of the op's output and compares. */
static void run_model(const char *what, tk_model *m, const float *x, int n, tk_bn_mode bn, const float *want,
                      float tol) {
  tk_engine *e = NULL;
  tk_status st = tk_model_infer(m);
  CHECK_MSG(st == TK_OK, "%s: infer: %s", what, tk_last_error());
  if (st != TK_OK) return;
  CHECK(tk_ref_engine_create(m, n, &e) == TK_OK);
  if (!e) return;
  float out[256];
  CHECK((size_t)n * m->classes <= 256);
  CHECK(tk_engine_forward(e, x, n, bn, out) == TK_OK);
  check_close(what, out, want, (size_t)n * m->classes, tol, tol);
  tk_engine_free(e);
}

static void engine_ops_hand(void) {
  float x16[16];
  for (int i = 0; i < 16; i++) x16[i] = (float)((i * 7) % 16) - 5.0f; /* a permutation of -5..10 */
  /* rows: [-5 2 9 0] [7 -2 5 -4] [3 10 1 8] [-1 6 -3 4] */
  {
    tk_model *m = tk_model_new("maxpool", 9, 1, 4, 4);
    tk_layer p = tk_layer_default(TK_OP_MAXPOOL, "pool", 0);
    p.kh = p.kw = 3, p.sh = p.sw = 2, p.ph = p.pw = 1;
    tk_model_add_layer(m, &p);
    tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 1);
    tk_model_add_layer(m, &f);
    /* 2x2 output: windows rows -1..1 / 1..3, cols -1..1 / 1..3; padding never wins even
     * though every value in the top-left window is negative-or-small */
    float want[4] = {7, 9, 10, 10};
    m->classes = 4;
    run_model("maxpool k3 s2 p1", m, x16, 1, TK_BN_EVAL, want, 0);
    tk_model_free(m);
  }
  {
    float xneg[16];
    for (int i = 0; i < 16; i++) xneg[i] = -1.0f - (float)i; /* all negative: padding (-inf) must not win */
    tk_model *m = tk_model_new("maxpool-neg", 4, 1, 4, 4);
    tk_layer p = tk_layer_default(TK_OP_MAXPOOL, "pool", 0);
    p.kh = p.kw = 2, p.sh = p.sw = 2, p.ph = p.pw = 1;
    tk_model_add_layer(m, &p);
    tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 1);
    tk_model_add_layer(m, &f);
    m->classes = 9;
    float want[9] = {-1, -2, -4, -5, -6, -8, -13, -14, -16};
    run_model("maxpool of negatives with padding", m, xneg, 1, TK_BN_EVAL, want, 0);
    tk_model_free(m);
  }
  {
    tk_model *m = tk_model_new("avgpool", 9, 1, 3, 3);
    tk_layer p = tk_layer_default(TK_OP_AVGPOOL, "pool", 0);
    p.kh = p.kw = 3, p.ph = p.pw = 1;
    tk_model_add_layer(m, &p);
    tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 1);
    tk_model_add_layer(m, &f);
    float x9[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    /* count_include_pad: always divided by 9 */
    float want[9] = {12 / 9.f, 21 / 9.f, 16 / 9.f, 27 / 9.f, 45 / 9.f, 33 / 9.f, 24 / 9.f, 39 / 9.f, 28 / 9.f};
    run_model("avgpool k3 p1 count_include_pad", m, x9, 1, TK_BN_EVAL, want, 1e-7f);
    tk_model_free(m);
  }
  {
    /* input normalisation, scale, add (residual of the normalised input with itself scaled), GAP */
    tk_model *m = tk_model_new("misc", 2, 2, 2, 2);
    m->mean = malloc(2 * sizeof(float)), m->std = malloc(2 * sizeof(float));
    m->mean[0] = 0.5f, m->mean[1] = 1.0f, m->std[0] = 0.25f, m->std[1] = 2.0f;
    tk_layer s = tk_layer_default(TK_OP_SCALE, "scale", 0);
    int64_t ss[3] = {2, 1, 1};
    s.weight = tk_model_add_tensor(m, "scale.weight", 3, ss);
    m->tensors[s.weight].data[0] = 3, m->tensors[s.weight].data[1] = -1;
    tk_model_add_layer(m, &s);
    tk_layer a = tk_layer_default(TK_OP_ADD, "add", 1);
    a.n_inputs = 2, a.inputs[1] = 0;
    tk_model_add_layer(m, &a);
    tk_layer g = tk_layer_default(TK_OP_GLOBALAVGPOOL, "gap", 2);
    tk_model_add_layer(m, &g);
    tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 3);
    tk_model_add_layer(m, &f);
    float x[8] = {0.5f, 0.75f, 1.0f, 0.25f, 1, 3, 5, -1};
    /* normalised: c0 = (x-0.5)/0.25 = {0,1,2,-1} -> mean 0.5; c1 = (x-1)/2 = {0,1,2,-1} -> 0.5
     * scale+add: c0 * (3+1) -> 2, c1 * (-1+1) -> 0 */
    float want[2] = {2, 0};
    run_model("normalisation, scale, add, gap", m, x, 1, TK_BN_EVAL, want, 1e-6f);
    tk_model_free(m);
  }
  {
    /* BatchNorm: 1 channel, 2 images of 1x2: values {1, 3} and {5, 7} */
    tk_model *m = tk_model_new("bn", 4, 1, 1, 2);
    tk_layer b = tk_layer_default(TK_OP_BATCHNORM, "bn", 0);
    int64_t one = 1;
    b.weight = tk_model_add_tensor(m, "bn.weight", 1, &one);
    b.bias = tk_model_add_tensor(m, "bn.bias", 1, &one);
    b.mean = tk_model_add_tensor(m, "bn.running_mean", 1, &one);
    b.var = tk_model_add_tensor(m, "bn.running_var", 1, &one);
    b.eps = 1.0f; /* a round eps keeps the hand numbers exact */
    b.momentum = 0.25f;
    m->tensors[b.weight].data[0] = 2, m->tensors[b.bias].data[0] = 1;
    m->tensors[b.mean].data[0] = 3, m->tensors[b.var].data[0] = 3;
    m->tensors[b.mean].trainable = m->tensors[b.var].trainable = false;
    tk_model_add_layer(m, &b);
    tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 1);
    tk_model_add_layer(m, &f);
    m->classes = 2;
    float x[4] = {1, 3, 5, 7};
    /* eval: 2 * (x - 3) / sqrt(3 + 1) + 1 = x - 2 */
    float want_eval[4] = {-1, 1, 3, 5};
    run_model("batchnorm eval", m, x, 2, TK_BN_EVAL, want_eval, 1e-6f);
    CHECK(m->tensors[b.mean].data[0] == 3 && m->tensors[b.var].data[0] == 3); /* eval changes nothing */
    /* train: batch mean 4, biased var (9+1+1+9)/4 = 5, so 2 * (x - 4) / sqrt(6) + 1;
     * running: mean 0.75*3 + 0.25*4 = 3.25, var 0.75*3 + 0.25*(20/3) = 47/12 (unbiased) */
    float want_train[4];
    for (int i = 0; i < 4; i++) want_train[i] = (float)(2.0 * (x[i] - 4.0) / sqrt(6.0) + 1.0);
    run_model("batchnorm train", m, x, 2, TK_BN_TRAIN, want_train, 1e-6f);
    float rm = m->tensors[b.mean].data[0], rv = m->tensors[b.var].data[0], wrm = 3.25f, wrv = 47.0f / 12.0f;
    check_close("batchnorm running_mean update", &rm, &wrm, 1, 1e-7, 0);
    check_close("batchnorm running_var update (unbiased)", &rv, &wrv, 1, 1e-7, 0);
    /* train mode with one value per channel is refused before anything changes */
    tk_engine *e = NULL;
    float out[4];
    m->in_w = 1; /* one pixel per image */
    m->classes = 1;
    CHECK(tk_model_infer(m) == TK_OK);
    CHECK(tk_ref_engine_create(m, 2, &e) == TK_OK);
    if (e) {
      tk_status st = tk_engine_forward(e, x, 1, TK_BN_TRAIN, out);
      CHECK_MSG(st == TK_ERR_ARG && strstr(tk_last_error(), "more than 1 value"), "got %s: %s", tk_status_name(st),
                tk_last_error());
      CHECK(m->tensors[b.mean].data[0] == rm);
      CHECK(tk_engine_forward(e, x, 2, TK_BN_TRAIN, out) == TK_OK); /* two images are enough */
      CHECK(tk_engine_backward(e, out, NULL, 1) == TK_OK);
      CHECK(e->grads[b.mean] == NULL && e->grads[b.var] == NULL && e->grads[b.weight] != NULL);
      CHECK(tk_engine_forward(e, x, 3, TK_BN_EVAL, out) == TK_ERR_ARG); /* beyond max_batch */
      tk_engine_free(e);
    }
    tk_model_free(m);
  }
  {
    /* backward without a forward is an error, not a crash */
    tk_model *m = tk_model_new("nofwd", 2, 1, 1, 2);
    tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 0);
    tk_model_add_layer(m, &f);
    CHECK(tk_model_infer(m) == TK_OK);
    tk_engine *e = NULL;
    CHECK(tk_ref_engine_create(m, 1, &e) == TK_OK);
    float d[2] = {1, 1};
    if (e) CHECK(tk_engine_backward(e, d, NULL, 0) == TK_ERR_ARG);
    tk_engine_free(e);
    tk_model_free(m);
  }
}

int main(void) {
  tk_rng_seed(&g_rng, 12345);
  conv_hand();
  linear_hand();
  conv_random();
  linear_random();
  kernel_ref();
  engine_ops_hand();
  return check_done("test_ref_ops");
}
