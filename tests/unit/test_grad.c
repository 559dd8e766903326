/* test_grad.c -- finite-difference checks of the reference engine's backward pass: the input
 * gradient and every parameter gradient, for every op, in both BatchNorm modes.
 *
 * Each case is a small random graph built with the compiler/model.h construction API.  The
 * loss is the engine's float32 forward followed by the mean softmax cross-entropy (double).
 * For the input x (raw pixels, so the model's normalisation is included) and for every
 * trainable tensor p:
 *   - directional derivatives along a few directions v (random normal, and sign(g)),
 *   - derivatives along single elements, for ELEMS random elements (all of small tensors),
 * each compared with the analytic <g, v>.  Differences are central, D(h) = (L(p + h v) -
 * L(p - h v)) / 2h, Richardson-extrapolated as (4 D(h/2) - D(h)) / 3 (error O(h^4): train-mode
 * BatchNorm over a batch of 3 is strongly curved), with h = 1e-3 times the array's scale
 * (1 for pixels, max|p| for a parameter).  Displacements are the ones actually stored in
 * float32, so rounding p +- hv does not count as error.
 *
 * Kinks: relu and maxpool are piecewise linear, and a difference that straddles a kink
 * averages two one-sided slopes (an error that does not shrink with h).  Every forward
 * records the activation pattern (the sign of each relu input and the argmax of each maxpool
 * window, read through tk_ref_engine_value); a difference whose forwards changed it is redone
 * with half the step, and for random directions a new direction.  The summary line per graph
 * counts those; the test fails if more than 5% of the checks had to be given up.
 *
 * Tolerances (float32 forwards make L noisy at about 1e-7 relative; noise below is that
 * rounding seen through the extrapolated difference quotient, 3 * 4e-7 max(1, |L|) / 2h):
 *   directional:  |got - want| <= 5e-3 |want| + 1e-3 S + noise,  S = sum |g_i dp_i| / 2h
 *   per element:  |got - want| <= 1e-2 |want| + 1e-3 max|g| + noise
 * On 16 seeds the worst case was 0.4 of its tolerance.  Sensitivity, checked by editing ref.c:
 * dropping either term of the train-mode BatchNorm backward, the avgpool divisor, the
 * normalisation's 1/std, GAP's 1/hw, the second input of add, or sending the maxpool gradient
 * to a neighbour fails by 19-900x the tolerance; a 1% error in a scale or BatchNorm weight
 * gradient fails too.
 *
 * Train-mode BatchNorm updates the running statistics on every forward: they are restored
 * from a snapshot (tk_model_clone) after every evaluation.  Last, the engine's results must
 * be bitwise the same with 1 and 2 OpenMP threads.
 * A failure reports the worst element (index, got, expected, relative error).
 */
#include "check.h"

#include "runtime/engine.h"
#include "runtime/ref/ref.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ELEMS 12
#define DIRS 3
#define H_STEP 1e-3 /* relative step of the central differences */

static tk_rng g_rng;

static double randn(void) { return tk_rng_normal(&g_rng); }

/* ---- graph construction ------------------------------------------------------------------ */

static int tensor(tk_model *m, const char *name, int ndim, const int64_t *shape, double mean, double sd) {
  int t = tk_model_add_tensor(m, name, ndim, shape);
  TK_ASSERT(t >= 0);
  for (int64_t i = 0; i < m->tensors[t].numel; i++) m->tensors[t].data[i] = (float)(mean + sd * randn());
  return t;
}

/* Each helper adds one layer reading value `in` and returns the value it produces. */
static int conv(tk_model *m, const char *name, int in, int ic, int oc, int kh, int kw, int sh, int sw, int ph, int pw,
                int dh, int dw, int groups, int bias) {
  char buf[128];
  tk_layer l = tk_layer_default(TK_OP_CONV2D, name, in);
  l.kh = kh, l.kw = kw, l.sh = sh, l.sw = sw, l.ph = ph, l.pw = pw, l.dh = dh, l.dw = dw, l.groups = groups;
  int64_t ws[4] = {oc, ic / groups, kh, kw}, bs = oc;
  snprintf(buf, sizeof buf, "%s.weight", name);
  l.weight = tensor(m, buf, 4, ws, 0.0, sqrt(2.0 / (double)(ic / groups * kh * kw)));
  m->tensors[l.weight].prunable = true;
  if (bias) {
    snprintf(buf, sizeof buf, "%s.bias", name);
    l.bias = tensor(m, buf, 1, &bs, 0.0, 0.2);
  }
  return tk_model_add_layer(m, &l) + 1;
}

static int linear(tk_model *m, const char *name, int in, int64_t infeat, int outf, int bias) {
  char buf[128];
  tk_layer l = tk_layer_default(TK_OP_LINEAR, name, in);
  int64_t ws[2] = {outf, infeat}, bs = outf;
  snprintf(buf, sizeof buf, "%s.weight", name);
  l.weight = tensor(m, buf, 2, ws, 0.0, 1.0 / sqrt((double)infeat));
  m->tensors[l.weight].prunable = true;
  if (bias) {
    snprintf(buf, sizeof buf, "%s.bias", name);
    l.bias = tensor(m, buf, 1, &bs, 0.0, 0.2);
  }
  return tk_model_add_layer(m, &l) + 1;
}

static int batchnorm(tk_model *m, const char *name, int in, int c, float momentum) {
  char buf[128];
  tk_layer l = tk_layer_default(TK_OP_BATCHNORM, name, in);
  int64_t s = c;
  l.momentum = momentum;
  snprintf(buf, sizeof buf, "%s.weight", name);
  l.weight = tensor(m, buf, 1, &s, 1.0, 0.3);
  snprintf(buf, sizeof buf, "%s.bias", name);
  l.bias = tensor(m, buf, 1, &s, 0.0, 0.2);
  snprintf(buf, sizeof buf, "%s.running_mean", name);
  l.mean = tensor(m, buf, 1, &s, 0.0, 0.2);
  snprintf(buf, sizeof buf, "%s.running_var", name);
  l.var = tensor(m, buf, 1, &s, 0.0, 0.0);
  for (int k = 0; k < c; k++) m->tensors[l.var].data[k] = (float)(0.5 + tk_rng_uniform(&g_rng));
  m->tensors[l.mean].trainable = m->tensors[l.var].trainable = false;
  return tk_model_add_layer(m, &l) + 1;
}

static int simple(tk_model *m, tk_op op, const char *name, int in) {
  tk_layer l = tk_layer_default(op, name, in);
  return tk_model_add_layer(m, &l) + 1;
}

static int pool(tk_model *m, tk_op op, const char *name, int in, int k, int s, int p) {
  tk_layer l = tk_layer_default(op, name, in);
  l.kh = l.kw = k, l.sh = l.sw = s, l.ph = l.pw = p;
  return tk_model_add_layer(m, &l) + 1;
}

static int add(tk_model *m, const char *name, int a, int b) {
  tk_layer l = tk_layer_default(TK_OP_ADD, name, a);
  l.n_inputs = 2, l.inputs[1] = b;
  return tk_model_add_layer(m, &l) + 1;
}

static int scale(tk_model *m, const char *name, int in, int c) {
  char buf[128];
  tk_layer l = tk_layer_default(TK_OP_SCALE, name, in);
  int64_t s[3] = {c, 1, 1};
  snprintf(buf, sizeof buf, "%s.weight", name);
  l.weight = tensor(m, buf, 3, s, 1.0, 0.5);
  return tk_model_add_layer(m, &l) + 1;
}

static void normalise(tk_model *m) {
  m->mean = malloc((size_t)m->in_c * sizeof(float));
  m->std = malloc((size_t)m->in_c * sizeof(float));
  for (int c = 0; c < m->in_c; c++) {
    m->mean[c] = (float)(0.3 + 0.4 * tk_rng_uniform(&g_rng));
    m->std[c] = (float)(0.15 + 0.2 * tk_rng_uniform(&g_rng));
  }
}

/* ---- the graphs ---------------------------------------------------------------------------- */

/* conv with stride, padding, dilation, groups, bias, non-square kernels/strides; normalised input */
static tk_model *g_conv(void) {
  tk_model *m = tk_model_new("conv", 5, 3, 7, 7);
  normalise(m);
  int v = conv(m, "c1", 0, 3, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1);  /* 4x4x4 */
  v = conv(m, "c2", v, 4, 6, 3, 3, 1, 1, 2, 2, 2, 2, 2, 1);      /* 6x4x4, dilation 2, groups 2 */
  v = conv(m, "c3", v, 6, 3, 2, 3, 1, 2, 0, 1, 1, 1, 3, 0);      /* 3x3x2, stride (1,2), groups 3 */
  v = simple(m, TK_OP_FLATTEN, "flat", v);
  linear(m, "fc", v, 18, 5, 1);
  return m;
}

/* linear reading a map (implicit flatten), relu, add of a value to itself */
static tk_model *g_linear(void) {
  tk_model *m = tk_model_new("linear", 4, 2, 3, 3);
  int v = linear(m, "fc1", 0, 18, 7, 1);
  v = simple(m, TK_OP_RELU, "relu", v);
  v = add(m, "twice", v, v);
  linear(m, "fc2", v, 7, 4, 0);
  return m;
}

/* batchnorm on maps and on a vector (after a linear), relu, global average pool */
static tk_model *g_batchnorm(void) {
  tk_model *m = tk_model_new("batchnorm", 3, 3, 5, 5);
  normalise(m);
  int v = conv(m, "c1", 0, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0);
  v = batchnorm(m, "bn1", v, 4, 0.1f);
  v = simple(m, TK_OP_RELU, "relu", v);
  v = simple(m, TK_OP_GLOBALAVGPOOL, "gap", v);
  v = simple(m, TK_OP_FLATTEN, "flat", v);
  v = linear(m, "fc1", v, 4, 6, 1);
  v = batchnorm(m, "bn2", v, 6, 0.3f);
  linear(m, "fc2", v, 6, 3, 1);
  return m;
}

/* max and average pooling with padding after a conv + relu */
static tk_model *g_pools(void) {
  tk_model *m = tk_model_new("pools", 4, 2, 8, 8);
  int v = conv(m, "c1", 0, 2, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1);
  v = simple(m, TK_OP_RELU, "relu", v);
  v = pool(m, TK_OP_MAXPOOL, "max", v, 3, 2, 1);  /* 3x4x4 */
  v = pool(m, TK_OP_AVGPOOL, "avg1", v, 2, 1, 1); /* 3x5x5, padding counted */
  v = pool(m, TK_OP_AVGPOOL, "avg2", v, 3, 2, 0); /* 3x2x2 */
  v = simple(m, TK_OP_FLATTEN, "flat", v);
  linear(m, "fc", v, 12, 4, 0);
  return m;
}

/* maxpool directly on the input (which is built without near-ties) */
static tk_model *g_maxpool(void) {
  tk_model *m = tk_model_new("maxpool", 3, 2, 6, 6);
  int v = pool(m, TK_OP_MAXPOOL, "max1", 0, 3, 2, 1); /* 2x3x3 */
  v = pool(m, TK_OP_MAXPOOL, "max2", v, 2, 1, 0);     /* 2x2x2 */
  v = simple(m, TK_OP_FLATTEN, "flat", v);
  linear(m, "fc", v, 8, 3, 1);
  return m;
}

/* residual add with the input, scale, batchnorm */
static tk_model *g_residual(void) {
  tk_model *m = tk_model_new("residual", 3, 4, 5, 5);
  normalise(m);
  int v = conv(m, "c1", 0, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1);
  v = batchnorm(m, "bn", v, 4, 0.1f);
  v = add(m, "res", v, 0);
  v = simple(m, TK_OP_RELU, "relu", v);
  v = scale(m, "scale", v, 4);
  v = simple(m, TK_OP_GLOBALAVGPOOL, "gap", v);
  v = simple(m, TK_OP_FLATTEN, "flat", v);
  linear(m, "fc", v, 4, 3, 1);
  return m;
}

/* everything together: a small residual network */
static tk_model *g_mini_resnet(void) {
  tk_model *m = tk_model_new("mini_resnet", 10, 3, 8, 8);
  normalise(m);
  int v = conv(m, "stem", 0, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0);
  v = batchnorm(m, "stem_bn", v, 8, 0.1f);
  int a = simple(m, TK_OP_RELU, "stem_relu", v);
  v = conv(m, "b1c1", a, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 2, 0);
  v = batchnorm(m, "b1bn1", v, 8, 0.1f);
  v = simple(m, TK_OP_RELU, "b1relu1", v);
  v = conv(m, "b1c2", v, 8, 8, 3, 3, 1, 1, 2, 2, 2, 2, 1, 0);
  v = batchnorm(m, "b1bn2", v, 8, 0.1f);
  v = add(m, "b1add", v, a);
  v = simple(m, TK_OP_RELU, "b1relu2", v);
  v = pool(m, TK_OP_MAXPOOL, "pool", v, 2, 2, 0);                       /* 8x4x4 */
  v = conv(m, "c2", v, 8, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1);            /* 16x2x2 */
  v = batchnorm(m, "bn2", v, 16, 0.1f);
  v = simple(m, TK_OP_RELU, "relu2", v);
  v = scale(m, "scale", v, 16);
  v = pool(m, TK_OP_AVGPOOL, "avg", v, 2, 1, 1);                        /* 16x3x3 */
  v = simple(m, TK_OP_GLOBALAVGPOOL, "gap", v);
  v = simple(m, TK_OP_FLATTEN, "flat", v);
  linear(m, "fc", v, 16, 10, 1);
  return m;
}

/* ---- finite differences ------------------------------------------------------------------- */

typedef struct {
  tk_model *m, *snap;   /* the model and a snapshot of its running statistics */
  tk_engine *e;
  tk_bn_mode bn;
  int n;
  float *x, *logits;
  int *y;
  /* the activation pattern: the sign of every relu input and the argmax of every maxpool
   * window, at the base point and after the latest forward */
  size_t pat_len;
  int32_t *pat_base, *pat_cur;
  int kink;             /* the latest forward changed the pattern */
} ctx;

/* Fills out (when not NULL) with the activation pattern of the engine's last forward and
 * returns its length.  The maxpool argmax follows PyTorch: padding is -inf, first maximum. */
static size_t pattern(const ctx *c, int32_t *out) {
  size_t k = 0;
  for (int li = 0; li < c->m->n_layers; li++) {
    const tk_layer *l = &c->m->layers[li];
    if (l->op != TK_OP_RELU && l->op != TK_OP_MAXPOOL) continue;
    int n = 0;
    const float *in = tk_ref_engine_value(c->e, l->inputs[0], &n);
    TK_ASSERT(in && n == c->n);
    if (l->op == TK_OP_RELU) {
      for (size_t q = 0; q < (size_t)n * tk_shape_numel(l->in); q++, k++)
        if (out) out[k] = in[q] > 0.0f;
      continue;
    }
    for (int i = 0; i < n; i++)
      for (int ch = 0; ch < l->in.c; ch++) {
        const float *xs = in + ((size_t)i * l->in.c + ch) * l->in.h * l->in.w;
        for (int oy = 0; oy < l->out.h; oy++)
          for (int ox = 0; ox < l->out.w; ox++, k++) {
            int32_t arg = -1;
            float best = -INFINITY;
            for (int ky = 0; ky < l->kh; ky++)
              for (int kx = 0; kx < l->kw; kx++) {
                int iy = oy * l->sh - l->ph + ky, ix = ox * l->sw - l->pw + kx;
                if (iy < 0 || iy >= l->in.h || ix < 0 || ix >= l->in.w) continue;
                if (arg < 0 || xs[iy * l->in.w + ix] > best) best = xs[iy * l->in.w + ix], arg = iy * l->in.w + ix;
              }
            if (out) out[k] = arg;
          }
      }
  }
  return k;
}

static void restore_buffers(ctx *c) {
  for (int t = 0; t < c->m->n_tensors; t++)
    if (!c->m->tensors[t].trainable)
      memcpy(c->m->tensors[t].data, c->snap->tensors[t].data, (size_t)c->m->tensors[t].numel * sizeof(float));
}

/* L at the current x and model; sets c->kink when a relu or maxpool switched branch. */
static double loss(ctx *c) {
  tk_status st = tk_engine_forward(c->e, c->x, c->n, c->bn, c->logits);
  TK_ASSERT(st == TK_OK);
  restore_buffers(c);
  pattern(c, c->pat_cur);
  c->kink = memcmp(c->pat_cur, c->pat_base, c->pat_len * sizeof(int32_t)) != 0;
  return tk_softmax_xent(c->logits, c->y, c->n, c->m->classes, NULL, NULL);
}

typedef struct {
  double worst;   /* largest error / tolerance */
  int evals;      /* central differences used */
  int retried;    /* central differences redone with a smaller step or another direction/element */
  int skipped;    /* given up: every step tried crossed a kink */
} fd_stats;

#define MAX_TRIES 12

/* One Richardson-extrapolated central difference along v: with D(h) = (L(p + h v) -
 * L(p - h v)) / 2h, want = (4 D(h/2) - D(h)) / 3, whose truncation error is O(h^4) rather than
 * O(h^2) (train-mode BatchNorm over 3 images is strongly curved).  got is the same
 * combination of the predictions <g, dp> / 2h, dp being the displacement actually stored in
 * float32.  *s = sum |g_i dp_i| / 2h at step h.  Returns 0 when a forward crossed a kink. */
static int richardson(ctx *c, float *p, const float *p0, const float *v, const float *g, size_t numel, double h,
                      double *want, double *got, double *s) {
  double w[2], gt[2];
  for (int k = 0; k < 2; k++) {
    const double hk = k ? h / 2 : h;
    for (size_t i = 0; i < numel; i++) p[i] = (float)(p0[i] + hk * v[i]);
    double lp = loss(c);
    int kink = c->kink;
    double pred = 0, sabs = 0;
    for (size_t i = 0; i < numel; i++) {
      float plus = p[i], minus = (float)(p0[i] - hk * v[i]);
      double dp = (double)plus - (double)minus;
      pred += g[i] * dp;
      sabs += fabs(g[i] * dp);
      p[i] = minus;
    }
    double lm = loss(c);
    kink |= c->kink;
    memcpy(p, p0, numel * sizeof(float));
    if (kink) return 0;
    w[k] = (lp - lm) / (2 * hk);
    gt[k] = pred / (2 * hk);
    if (k == 0) *s = sabs / (2 * hk);
  }
  *want = (4 * w[1] - w[0]) / 3;
  *got = (4 * gt[1] - gt[0]) / 3;
  return 1;
}

/* Checks gradient g (numel) of the loss with respect to p (numel floats, perturbed in place).
 * A difference whose forwards changed the activation pattern straddles a kink, where the
 * central difference averages two one-sided slopes; it is redone with half the step (and,
 * for random directions, a new direction), up to MAX_TRIES times. */
static void check_array(ctx *c, const char *what, float *p, const float *g, size_t numel, double h_scale, double l0,
                        fd_stats *fs) {
  double gmax = 0;
  for (size_t i = 0; i < numel; i++) gmax = fmax(gmax, fabs(g[i]));
  float *p0 = malloc(numel * sizeof(float)), *v = malloc(numel * sizeof(float));
  memcpy(p0, p, numel * sizeof(float));
  /* loss rounding (about 1e-7 relative) seen through the extrapolated difference quotient */
  const double noise1 = 3 * 4e-7 * fmax(1.0, fabs(l0)) / 2;
  char name[200];

  /* directional */
  for (int d = 0; d <= DIRS; d++) {
    double want = 0, got = 0, s = 0, h = H_STEP * h_scale;
    int ok = 0;
    for (int tries = 0; tries < MAX_TRIES && !ok; tries++, h *= 0.5) {
      for (size_t i = 0; i < numel; i++)
        v[i] = d == DIRS ? (g[i] > 0 ? 1.0f : g[i] < 0 ? -1.0f : 0.0f) : (float)randn();
      ok = richardson(c, p, p0, v, g, numel, h, &want, &got, &s);
      if (!ok) fs->retried++;
    }
    if (!ok) {
      fs->skipped++;
      continue;
    }
    fs->evals++;
    const double slack = 1e-3 * s + noise1 / (h * 2); /* h was halved once more on exit */
    float gotf = (float)got, wantf = (float)want;
    fs->worst = fmax(fs->worst, fabs(got - want) / (5e-3 * fabs(want) + slack));
    snprintf(name, sizeof name, "%s: directional derivative %d (atol %.3g)", what, d, slack);
    check_close(name, &gotf, &wantf, 1, 5e-3, slack);
  }

  /* per element: all of a small array, else ELEMS random ones */
  size_t count = numel < ELEMS ? numel : ELEMS;
  float *eg = malloc(count * sizeof(float)), *ef = malloc(count * sizeof(float));
  size_t checked = 0;
  double noise = 0;
  char list[96] = "";
  memset(v, 0, numel * sizeof(float));
  for (size_t k = 0, attempts = 0; k < count && attempts < 4 * count; attempts++) {
    size_t i = numel <= ELEMS ? k : (size_t)tk_rng_below(&g_rng, numel);
    double want = 0, got = 0, s = 0, h = H_STEP * h_scale;
    int ok = 0;
    v[i] = 1.0f;
    for (int tries = 0; tries < MAX_TRIES && !ok; tries++, h *= 0.5) {
      ok = richardson(c, p, p0, v, g, numel, h, &want, &got, &s);
      if (!ok) fs->retried++;
    }
    v[i] = 0.0f;
    if (numel <= ELEMS) k++; /* small arrays: every element, given up or not */
    if (!ok) {
      fs->skipped++;
      continue;
    }
    if (numel > ELEMS) k++;
    fs->evals++;
    /* got = g_i dp / 2h and want are derivatives along e_i scaled by dp / 2h (1 up to rounding) */
    ef[checked] = (float)want;
    eg[checked] = (float)got;
    noise = fmax(noise, noise1 / (h * 2));
    if (strlen(list) < sizeof list - 12) snprintf(list + strlen(list), sizeof list - strlen(list), " %zu", i);
    checked++;
  }
  double atol = 1e-3 * gmax + noise;
  for (size_t k = 0; k < checked; k++)
    fs->worst = fmax(fs->worst, fabs((double)eg[k] - ef[k]) / (1e-2 * fabs(ef[k]) + atol));
  snprintf(name, sizeof name, "%s: per-element (atol %.3g; elements%s)", what, atol, list);
  check_close(name, eg, ef, checked, 1e-2, atol);
  free(eg), free(ef), free(p0), free(v);
}

/* Input values for the maxpool graph: per image a random permutation of k/72, so values in
 * any window differ by at least 1/72 and no perturbation of size ~1e-3 moves an argmax. */
static void distinct_input(float *x, int n, size_t img) {
  for (int i = 0; i < n; i++) {
    float *xi = x + (size_t)i * img;
    for (size_t k = 0; k < img; k++) xi[k] = (float)k / (float)img;
    for (size_t k = img - 1; k > 0; k--) {
      size_t j = (size_t)tk_rng_below(&g_rng, k + 1);
      float t = xi[k];
      xi[k] = xi[j], xi[j] = t;
    }
  }
}

static void check_graph(tk_model *m, tk_bn_mode bn, int distinct) {
  tk_status st = tk_model_infer(m);
  CHECK_MSG(st == TK_OK, "%s: infer: %s", m->arch, tk_last_error());
  if (st != TK_OK) return;
  ctx c = {.m = m, .bn = bn, .n = 3};
  c.snap = tk_model_clone(m);
  CHECK(tk_ref_engine_create(m, c.n, &c.e) == TK_OK);
  if (!c.e || !c.snap) return;
  const size_t img = (size_t)m->in_c * m->in_h * m->in_w;
  c.x = malloc((size_t)c.n * img * sizeof(float));
  c.logits = malloc((size_t)c.n * m->classes * sizeof(float));
  c.y = malloc((size_t)c.n * sizeof(int));
  float *dl = malloc((size_t)c.n * m->classes * sizeof(float)), *dx = malloc((size_t)c.n * img * sizeof(float));
  if (distinct) distinct_input(c.x, c.n, img);
  else
    for (size_t k = 0; k < (size_t)c.n * img; k++) c.x[k] = (float)tk_rng_uniform(&g_rng);
  for (int i = 0; i < c.n; i++) c.y[i] = (int)tk_rng_below(&g_rng, (uint64_t)m->classes);

  CHECK(tk_engine_forward(c.e, c.x, c.n, bn, c.logits) == TK_OK);
  restore_buffers(&c);
  c.pat_len = pattern(&c, NULL);
  c.pat_base = malloc((c.pat_len + 1) * sizeof(int32_t));
  c.pat_cur = malloc((c.pat_len + 1) * sizeof(int32_t));
  pattern(&c, c.pat_base);
  double l0 = tk_softmax_xent(c.logits, c.y, c.n, m->classes, dl, NULL);
  CHECK(tk_engine_backward(c.e, dl, dx, 1) == TK_OK);
  /* keep the gradients: later forwards leave e->grads alone, but copy to be explicit */
  float **g = calloc((size_t)m->n_tensors, sizeof *g);
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    CHECK_MSG((c.e->grads[t] != NULL) == tt->trainable, "%s: tensor %s: grads %s but trainable %d", m->arch, tt->name,
              c.e->grads[t] ? "present" : "absent", tt->trainable);
    if (!c.e->grads[t]) continue;
    g[t] = malloc((size_t)tt->numel * sizeof(float));
    memcpy(g[t], c.e->grads[t], (size_t)tt->numel * sizeof(float));
  }
  const char *mode = bn == TK_BN_TRAIN ? "train" : "eval";
  char what[160];
  snprintf(what, sizeof what, "%s (bn %s) input", m->arch, mode);
  fd_stats fs = {0};
  check_array(&c, what, c.x, dx, (size_t)c.n * img, 1.0, l0, &fs);
  int checked = 1;
  for (int t = 0; t < m->n_tensors; t++) {
    if (!g[t]) continue;
    tk_tensor *tt = &m->tensors[t];
    double sc = 0;
    for (int64_t k = 0; k < tt->numel; k++) sc = fmax(sc, fabs(tt->data[k]));
    snprintf(what, sizeof what, "%s (bn %s) %s", m->arch, mode, tt->name);
    check_array(&c, what, tt->data, g[t], (size_t)tt->numel, fmax(sc, 0.1), l0, &fs);
    checked++;
  }
  printf("%-12s bn %-5s loss %.6f: %d arrays, %d differences (%d redone at a kink, %d given up), "
         "worst error %.3f of its tolerance\n", m->arch, mode, l0, checked, fs.evals, fs.retried, fs.skipped, fs.worst);
  /* kinks are rare at these steps: giving up more than a few checks means the test lost its power */
  CHECK_MSG(fs.skipped <= fs.evals / 20, "%s (bn %s): %d of %d checks given up at kinks", m->arch, mode, fs.skipped,
            fs.evals + fs.skipped);
  for (int t = 0; t < m->n_tensors; t++) free(g[t]);
  free(g), free(dl), free(dx), free(c.x), free(c.logits), free(c.y), free(c.pat_base), free(c.pat_cur);
  tk_engine_free(c.e);
  tk_model_free(c.snap);
}

static int has_bn(const tk_model *m) {
  for (int i = 0; i < m->n_layers; i++)
    if (m->layers[i].op == TK_OP_BATCHNORM) return 1;
  return 0;
}

/* The reference engine's results do not depend on the number of threads: every output is one
 * sum in a fixed order, whichever thread computes it.  The graph is big enough that the ops
 * take their parallel paths. */
static void check_determinism(void) {
#ifdef _OPENMP
  tk_model *m = tk_model_new("threads", 10, 3, 16, 16);
  normalise(m);
  int v = conv(m, "c1", 0, 3, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0);
  v = batchnorm(m, "bn1", v, 16, 0.1f);
  v = simple(m, TK_OP_RELU, "relu1", v);
  v = pool(m, TK_OP_MAXPOOL, "pool", v, 3, 2, 1);          /* 16x8x8 */
  v = conv(m, "c2", v, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1); /* 32x8x8 */
  v = simple(m, TK_OP_RELU, "relu2", v);
  v = simple(m, TK_OP_GLOBALAVGPOOL, "gap", v);
  v = simple(m, TK_OP_FLATTEN, "flat", v);
  linear(m, "fc", v, 32, 10, 1);
  CHECK(tk_model_infer(m) == TK_OK);
  const int n = 8;
  const size_t img = (size_t)m->in_c * m->in_h * m->in_w;
  float *x = malloc((size_t)n * img * sizeof(float)), dl[80], lg[2][80], *dx[2], *gw[2][2];
  for (size_t k = 0; k < (size_t)n * img; k++) x[k] = (float)tk_rng_uniform(&g_rng);
  int y[8] = {1, 5, 9, 0, 3, 3, 7, 2};
  const int w[2] = {tk_model_find_tensor(m, "c1.weight"), tk_model_find_tensor(m, "c2.weight")};
  const int saved = omp_get_max_threads();
  for (int r = 0; r < 2; r++) {
    omp_set_num_threads(r == 0 ? 1 : 2);
    tk_model *mc = tk_model_clone(m);
    tk_engine *e = NULL;
    CHECK(tk_ref_engine_create(mc, n, &e) == TK_OK);
    CHECK(tk_engine_forward(e, x, n, TK_BN_TRAIN, lg[r]) == TK_OK);
    tk_softmax_xent(lg[r], y, n, m->classes, dl, NULL);
    dx[r] = malloc((size_t)n * img * sizeof(float));
    CHECK(tk_engine_backward(e, dl, dx[r], 1) == TK_OK);
    for (int k = 0; k < 2; k++) {
      gw[r][k] = malloc((size_t)mc->tensors[w[k]].numel * sizeof(float));
      memcpy(gw[r][k], e->grads[w[k]], (size_t)mc->tensors[w[k]].numel * sizeof(float));
    }
    tk_engine_free(e);
    tk_model_free(mc);
  }
  omp_set_num_threads(saved);
  CHECK_MSG(!memcmp(lg[0], lg[1], sizeof lg[0]), "logits differ between 1 and 2 threads");
  CHECK_MSG(!memcmp(dx[0], dx[1], (size_t)n * img * sizeof(float)), "input gradients differ between 1 and 2 threads");
  for (int k = 0; k < 2; k++) {
    CHECK_MSG(!memcmp(gw[0][k], gw[1][k], (size_t)m->tensors[w[k]].numel * sizeof(float)),
              "%s gradients differ between 1 and 2 threads", m->tensors[w[k]].name);
    free(gw[0][k]), free(gw[1][k]);
  }
  free(x), free(dx[0]), free(dx[1]);
  tk_model_free(m);
#endif
}

int main(void) {
  tk_rng_seed(&g_rng, 20240607);
  struct { tk_model *(*build)(void); int distinct; } graphs[] = {
      {g_conv, 0}, {g_linear, 0}, {g_batchnorm, 0}, {g_pools, 0}, {g_maxpool, 1}, {g_residual, 0}, {g_mini_resnet, 0},
  };
  for (size_t k = 0; k < sizeof graphs / sizeof *graphs; k++) {
    tk_model *m = graphs[k].build();
    check_graph(m, TK_BN_EVAL, graphs[k].distinct);
    if (has_bn(m)) check_graph(m, TK_BN_TRAIN, graphs[k].distinct);
    tk_model_free(m);
  }
  check_determinism();
  return check_done("test_grad");
}
