/* ref.c -- the reference engine: naive, obviously correct forward and backward passes of a
 * whole model.  It is the oracle the compiled and dense engines are tested against, so every
 * op is written as its textbook formula with double accumulators, in plain loops that favour
 * being easy to check over being fast.
 *
 * What it keeps (allocated once at create for max_batch, sized from m->values):
 *   act[v]   (max_batch, c, h, w) of value v; act[0] is the *normalised* input
 *   dact[v]  dL/dact[v], same shape; gradients of values read by several layers accumulate
 *   tmp      (max_batch, largest value) receives ops that overwrite their output before it is
 *            added into dact[...]
 *   bn_mean/bn_istd  per BatchNorm layer: the statistics of the last forward (batch
 *            statistics in train mode, running statistics in eval mode), per channel, double
 *
 * Semantics (PyTorch's; tests/unit/test_grad.c checks the backward against finite differences,
 * the tests in tests/py compare whole models with python3-torch):
 *   input      x_norm = (x - mean[c]) / std[c] when the model has a normalisation; dx is
 *              with respect to the raw pixels
 *   batchnorm  train: batch mean and biased variance normalise; running_mean/var (in the
 *              model's tensors) become (1-m) r + m stat with the unbiased variance for
 *              running_var; eval: running statistics.  Backward is exact in both modes.
 *   maxpool    padding counts as -inf; the first maximum in scan order takes the gradient
 *   avgpool    count_include_pad = True (the divisor is always kh*kw)
 *   linear     reads its input value flattened
 * Parameter gradients are the full dL/dtensor, also at pruned positions of masked tensors
 * (the engine uses the data as given; pruned data is zero by the model's invariant).
 * Running statistics get no gradient (their e->grads entry, if any, is zeroed).
 */
#include "ref.h"
#include "ref_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  tk_engine base;
  int n_values;      /* n_layers + 1 */
  float **act;       /* n_values pointers, see above */
  float **dact;
  float *tmp;
  double **bn_mean;  /* n_layers pointers, non-NULL for BatchNorm layers */
  double **bn_istd;  /* 1 / sqrt(var + eps) */
  int last_n;        /* batch of the last forward, 0 = none */
  int have_grad;     /* dact holds the backward of that forward */
  tk_bn_mode last_bn;
} ref_engine;

static size_t value_elems(const tk_model *m, int v) { return (size_t)tk_shape_numel(m->values[v]); }

static const float *tensor_data(const tk_model *m, int t) { return t >= 0 ? m->tensors[t].data : NULL; }

/* e->grads[t] when tensor t exists and is trainable, else NULL */
static float *grad_of(const ref_engine *r, int t) { return t >= 0 ? r->base.grads[t] : NULL; }

/* ---- element-wise and pooling ops (NCHW, per image i and channel c) ---------------------- */

static void input_fwd(const tk_model *m, const float *x, float *y, int n) {
  const size_t hw = (size_t)m->in_h * m->in_w;
  for (int i = 0; i < n; i++)
    for (int c = 0; c < m->in_c; c++) {
      const float *xs = x + ((size_t)i * m->in_c + c) * hw;
      float *ys = y + ((size_t)i * m->in_c + c) * hw;
      if (!m->mean) {
        memcpy(ys, xs, hw * sizeof(float));
        continue;
      }
      const double mu = m->mean[c], sd = m->std[c];
      for (size_t p = 0; p < hw; p++) ys[p] = (float)(((double)xs[p] - mu) / sd);
    }
}

static void input_bwd(const tk_model *m, const float *dy, float *dx, int n) {
  const size_t hw = (size_t)m->in_h * m->in_w;
  for (int i = 0; i < n; i++)
    for (int c = 0; c < m->in_c; c++) {
      const float *ds = dy + ((size_t)i * m->in_c + c) * hw;
      float *dd = dx + ((size_t)i * m->in_c + c) * hw;
      const double sd = m->std ? m->std[c] : 1.0;
      for (size_t p = 0; p < hw; p++) dd[p] = (float)((double)ds[p] / sd);
    }
}

/* Statistics per channel c of x (n, C, HW): the batch mean and biased variance (train) or
 * the running ones (eval); train mode also updates the running statistics in the model. */
static void bn_stats(ref_engine *r, const tk_layer *l, int li, const float *x, int n, tk_bn_mode bn) {
  tk_model *m = r->base.m;
  const int C = l->in.c;
  const size_t hw = (size_t)l->in.h * l->in.w, cnt = (size_t)n * hw;
  float *rm = m->tensors[l->mean].data, *rv = m->tensors[l->var].data;
  for (int c = 0; c < C; c++) {
    double mu, var;
    if (bn == TK_BN_TRAIN) {
      double s = 0.0;
      for (int i = 0; i < n; i++)
        for (size_t p = 0; p < hw; p++) s += x[((size_t)i * C + c) * hw + p];
      mu = s / (double)cnt;
      double ss = 0.0;
      for (int i = 0; i < n; i++)
        for (size_t p = 0; p < hw; p++) {
          const double dv = x[((size_t)i * C + c) * hw + p] - mu;
          ss += dv * dv;
        }
      var = ss / (double)cnt;
      const double mom = l->momentum, unbiased = ss / (double)(cnt - 1);
      rm[c] = (float)((1.0 - mom) * rm[c] + mom * mu);
      rv[c] = (float)((1.0 - mom) * rv[c] + mom * unbiased);
    } else {
      mu = rm[c];
      var = rv[c];
    }
    r->bn_mean[li][c] = mu;
    r->bn_istd[li][c] = 1.0 / sqrt(var + (double)l->eps);
  }
}

static void bn_fwd(const ref_engine *r, const tk_layer *l, int li, const float *x, float *y, int n) {
  const tk_model *m = r->base.m;
  const int C = l->in.c;
  const size_t hw = (size_t)l->in.h * l->in.w;
  const float *gamma = m->tensors[l->weight].data, *beta = m->tensors[l->bias].data;
  for (int i = 0; i < n; i++)
    for (int c = 0; c < C; c++) {
      const double mu = r->bn_mean[li][c], is = r->bn_istd[li][c];
      const float *xs = x + ((size_t)i * C + c) * hw;
      float *ys = y + ((size_t)i * C + c) * hw;
      for (size_t p = 0; p < hw; p++) ys[p] = (float)((double)gamma[c] * (((double)xs[p] - mu) * is) + beta[c]);
    }
}

/* Backward of y = gamma * xhat + beta.
 *   eval:  xhat = (x - rm) * istd with constants, so dx = dy * gamma * istd.
 *   train: xhat = (x - mean_B) * istd_B, so with g = dy * gamma and averages over the batch
 *          and the map:  dx = istd * (g - avg(g) - xhat * avg(g * xhat)).
 * dgamma = sum dy * xhat, dbeta = sum dy (when wanted). dx is added into. */
static void bn_bwd(const ref_engine *r, const tk_layer *l, int li, const float *x, const float *dy, float *dx,
                   float *dgamma, float *dbeta, int n, tk_bn_mode bn) {
  const tk_model *m = r->base.m;
  const int C = l->in.c;
  const size_t hw = (size_t)l->in.h * l->in.w, cnt = (size_t)n * hw;
  const float *gamma = m->tensors[l->weight].data;
  for (int c = 0; c < C; c++) {
    const double mu = r->bn_mean[li][c], is = r->bn_istd[li][c], gm = gamma[c];
    double sdy = 0.0, sdyxh = 0.0;
    for (int i = 0; i < n; i++)
      for (size_t p = 0; p < hw; p++) {
        const size_t q = ((size_t)i * C + c) * hw + p;
        sdy += dy[q];
        sdyxh += (double)dy[q] * (((double)x[q] - mu) * is);
      }
    if (dgamma) dgamma[c] = (float)sdyxh;
    if (dbeta) dbeta[c] = (float)sdy;
    if (!dx) continue;
    for (int i = 0; i < n; i++)
      for (size_t p = 0; p < hw; p++) {
        const size_t q = ((size_t)i * C + c) * hw + p;
        double g;
        if (bn == TK_BN_TRAIN) {
          const double xh = ((double)x[q] - mu) * is;
          g = gm * is * ((double)dy[q] - sdy / (double)cnt - xh * sdyxh / (double)cnt);
        } else {
          g = gm * is * (double)dy[q];
        }
        dx[q] += (float)g;
      }
  }
}

/* Max and average pooling share the window walk.  Windows start at oy*SH - PH; positions
 * outside the map are padding (-inf for max, zero for average, still counted in kh*kw). */
static void pool_fwd(const tk_layer *l, const float *x, float *y, int n) {
  const int C = l->in.c, H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
  const int is_max = l->op == TK_OP_MAXPOOL;
  const double work = (double)n * C * OH * OW * l->kh * l->kw;
#pragma omp parallel for collapse(2) schedule(static) if (work > 200000.0)
  for (int i = 0; i < n; i++)
    for (int c = 0; c < C; c++) {
      const float *xs = x + ((size_t)i * C + c) * H * W;
      float *ys = y + ((size_t)i * C + c) * OH * OW;
      for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++) {
          double best = -INFINITY, sum = 0.0;
          for (int ky = 0; ky < l->kh; ky++)
            for (int kx = 0; kx < l->kw; kx++) {
              const int iy = oy * l->sh - l->ph + ky, ix = ox * l->sw - l->pw + kx;
              if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
              const double v = xs[(size_t)iy * W + ix];
              sum += v;
              if (v > best || isnan(v)) best = v;
            }
          ys[(size_t)oy * OW + ox] = (float)(is_max ? best : sum / (double)(l->kh * l->kw));
        }
    }
}

/* dx added into.  Max: the gradient goes to the first position holding the maximum (scan
 * order ky, kx; with NaNs, the last NaN), as PyTorch's CPU kernel does. */
static void pool_bwd(const tk_layer *l, const float *x, const float *dy, float *dx, int n) {
  const int C = l->in.c, H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
  const int is_max = l->op == TK_OP_MAXPOOL;
  const double work = (double)n * C * OH * OW * l->kh * l->kw;
#pragma omp parallel for collapse(2) schedule(static) if (work > 200000.0)
  for (int i = 0; i < n; i++)
    for (int c = 0; c < C; c++) {
      const float *xs = x + ((size_t)i * C + c) * H * W;
      const float *ds = dy + ((size_t)i * C + c) * OH * OW;
      float *dd = dx + ((size_t)i * C + c) * H * W;
      for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++) {
          const float g = ds[(size_t)oy * OW + ox];
          double best = -INFINITY;
          long arg = -1;
          for (int ky = 0; ky < l->kh; ky++)
            for (int kx = 0; kx < l->kw; kx++) {
              const int iy = oy * l->sh - l->ph + ky, ix = ox * l->sw - l->pw + kx;
              if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
              const long q = (long)iy * W + ix;
              if (is_max) {
                const double v = xs[q];
                if (arg < 0 || v > best || isnan(v)) best = v, arg = q;
              } else {
                dd[q] += (float)((double)g / (double)(l->kh * l->kw));
              }
            }
          if (is_max && arg >= 0) dd[arg] += g;
        }
    }
}

/* ---- the engine ---------------------------------------------------------------------------- */

static tk_status ref_forward(tk_engine *e, const float *x, int n, tk_bn_mode bn, float *logits) {
  ref_engine *r = (ref_engine *)e;
  tk_model *m = e->m;
  if (n < 1 || n > e->max_batch)
    return tk_fail(TK_ERR_ARG, "reference engine: batch %d outside 1..%d (max_batch)", n, e->max_batch);
  if (bn != TK_BN_EVAL && bn != TK_BN_TRAIN) return tk_fail(TK_ERR_ARG, "reference engine: bn mode %d unknown", bn);
  /* check before anything changes: train-mode BatchNorm needs two values per channel */
  for (int li = 0; bn == TK_BN_TRAIN && li < m->n_layers; li++) {
    const tk_layer *l = &m->layers[li];
    if (l->op == TK_OP_BATCHNORM && (int64_t)n * l->in.h * l->in.w < 2)
      return tk_fail(TK_ERR_ARG, "layer %d (%s, batchnorm): train mode needs more than 1 value per channel "
                                 "(batch %d of %dx%d maps)", li, l->name, n, l->in.h, l->in.w);
  }
  r->last_n = 0;
  r->have_grad = 0;
  input_fwd(m, x, r->act[0], n);
  for (int li = 0; li < m->n_layers; li++) {
    const tk_layer *l = &m->layers[li];
    const float *in = r->act[l->inputs[0]];
    float *out = r->act[li + 1];
    const size_t nout = (size_t)n * value_elems(m, li + 1);
    switch (l->op) {
    case TK_OP_CONV2D:
      tk_ref_conv2d_fwd(l, in, tensor_data(m, l->weight), tensor_data(m, l->bias), out, n);
      break;
    case TK_OP_LINEAR:
      tk_ref_linear_fwd(l, in, tensor_data(m, l->weight), tensor_data(m, l->bias), out, n);
      break;
    case TK_OP_BATCHNORM:
      bn_stats(r, l, li, in, n, bn);
      bn_fwd(r, l, li, in, out, n);
      break;
    case TK_OP_RELU:
      for (size_t q = 0; q < nout; q++) out[q] = in[q] > 0.0f ? in[q] : (isnan(in[q]) ? in[q] : 0.0f);
      break;
    case TK_OP_MAXPOOL:
    case TK_OP_AVGPOOL:
      pool_fwd(l, in, out, n);
      break;
    case TK_OP_GLOBALAVGPOOL: {
      const size_t hw = (size_t)l->in.h * l->in.w;
      for (size_t q = 0; q < (size_t)n * l->in.c; q++) {
        double s = 0.0;
        for (size_t p = 0; p < hw; p++) s += in[q * hw + p];
        out[q] = (float)(s / (double)hw);
      }
      break;
    }
    case TK_OP_ADD: {
      const float *in2 = r->act[l->inputs[1]];
      for (size_t q = 0; q < nout; q++) out[q] = in[q] + in2[q];
      break;
    }
    case TK_OP_FLATTEN:
      memcpy(out, in, nout * sizeof(float));
      break;
    case TK_OP_SCALE: {
      const float *s = tensor_data(m, l->weight);
      const size_t hw = (size_t)l->in.h * l->in.w;
      for (int i = 0; i < n; i++)
        for (int c = 0; c < l->in.c; c++)
          for (size_t p = 0; p < hw; p++) {
            const size_t q = ((size_t)i * l->in.c + c) * hw + p;
            out[q] = s[c] * in[q];
          }
      break;
    }
    case TK_OP_COUNT:
      return tk_fail(TK_ERR_INTERNAL, "layer %d (%s): unknown op", li, l->name);
    }
  }
  memcpy(logits, r->act[m->n_layers], (size_t)n * m->classes * sizeof(float));
  r->last_n = n;
  r->last_bn = bn;
  return TK_OK;
}

/* dst += src over n elements */
static void add_into(float *dst, const float *src, size_t n) {
  for (size_t q = 0; q < n; q++) dst[q] += src[q];
}

static tk_status ref_backward(tk_engine *e, const float *dlogits, float *dx, int param_grads) {
  ref_engine *r = (ref_engine *)e;
  tk_model *m = e->m;
  const int n = r->last_n;
  if (n < 1) return tk_fail(TK_ERR_ARG, "reference engine: backward without a forward");
  for (int v = 0; v < r->n_values; v++) memset(r->dact[v], 0, (size_t)n * value_elems(m, v) * sizeof(float));
  memcpy(r->dact[m->n_layers], dlogits, (size_t)n * m->classes * sizeof(float));
  if (param_grads)
    for (int t = 0; t < m->n_tensors; t++)
      if (e->grads[t]) memset(e->grads[t], 0, (size_t)m->tensors[t].numel * sizeof(float));
  for (int li = m->n_layers - 1; li >= 0; li--) {
    const tk_layer *l = &m->layers[li];
    const int vin = l->inputs[0];
    const float *in = r->act[vin], *dy = r->dact[li + 1];
    float *din = r->dact[vin];
    const size_t nin = (size_t)n * value_elems(m, vin);
    /* the input gradient of value 0 is only needed when dx is wanted */
    const int want_din = vin > 0 || dx != NULL;
    switch (l->op) {
    case TK_OP_CONV2D:
    case TK_OP_LINEAR: {
      const int conv = l->op == TK_OP_CONV2D;
      if (param_grads) {
        float *dw = grad_of(r, l->weight), *db = grad_of(r, l->bias);
        if (conv) tk_ref_conv2d_bwd_weight(l, in, dy, dw, db, n);
        else tk_ref_linear_bwd_weight(l, in, dy, dw, db, n);
      }
      if (want_din) {
        if (conv) tk_ref_conv2d_bwd_input(l, dy, tensor_data(m, l->weight), r->tmp, n);
        else tk_ref_linear_bwd_input(l, dy, tensor_data(m, l->weight), r->tmp, n);
        add_into(din, r->tmp, nin);
      }
      break;
    }
    case TK_OP_BATCHNORM:
      bn_bwd(r, l, li, in, dy, want_din ? din : NULL, param_grads ? grad_of(r, l->weight) : NULL,
             param_grads ? grad_of(r, l->bias) : NULL, n, r->last_bn);
      break;
    case TK_OP_RELU:
      for (size_t q = 0; q < nin; q++)
        if (in[q] > 0.0f) din[q] += dy[q];
      break;
    case TK_OP_MAXPOOL:
    case TK_OP_AVGPOOL:
      pool_bwd(l, in, dy, din, n);
      break;
    case TK_OP_GLOBALAVGPOOL: {
      const size_t hw = (size_t)l->in.h * l->in.w;
      for (size_t q = 0; q < (size_t)n * l->in.c; q++)
        for (size_t p = 0; p < hw; p++) din[q * hw + p] += (float)((double)dy[q] / (double)hw);
      break;
    }
    case TK_OP_ADD:
      add_into(din, dy, nin);
      add_into(r->dact[l->inputs[1]], dy, nin);
      break;
    case TK_OP_FLATTEN:
      add_into(din, dy, nin);
      break;
    case TK_OP_SCALE: {
      const float *s = tensor_data(m, l->weight);
      float *ds = param_grads ? grad_of(r, l->weight) : NULL;
      const size_t hw = (size_t)l->in.h * l->in.w;
      for (int c = 0; c < l->in.c; c++) {
        double acc = 0.0;
        for (int i = 0; i < n; i++)
          for (size_t p = 0; p < hw; p++) {
            const size_t q = ((size_t)i * l->in.c + c) * hw + p;
            din[q] += s[c] * dy[q];
            acc += (double)dy[q] * in[q];
          }
        if (ds) ds[c] = (float)acc;
      }
      break;
    }
    case TK_OP_COUNT:
      return tk_fail(TK_ERR_INTERNAL, "layer %d (%s): unknown op", li, l->name);
    }
  }
  if (dx) input_bwd(m, r->dact[0], dx, n);
  r->have_grad = 1;
  return TK_OK;
}

static tk_status ref_sync(tk_engine *e, int masks_changed) {
  (void)e;
  (void)masks_changed;
  return TK_OK; /* weights are read from the model on every call */
}

static void ref_destroy(tk_engine *e) {
  ref_engine *r = (ref_engine *)e;
  for (int v = 0; r->act && v < r->n_values; v++) free(r->act[v]);
  for (int v = 0; r->dact && v < r->n_values; v++) free(r->dact[v]);
  for (int li = 0; r->bn_mean && li < e->m->n_layers; li++) free(r->bn_mean[li]);
  for (int li = 0; r->bn_istd && li < e->m->n_layers; li++) free(r->bn_istd[li]);
  free(r->act);
  free(r->dact);
  free(r->bn_mean);
  free(r->bn_istd);
  free(r->tmp);
  tk_engine_free_grads(e);
  free(r);
}

static const tk_engine_vtbl g_ref_vtbl = {"reference", ref_forward, ref_backward, ref_sync, ref_destroy};

const float *tk_ref_engine_value(const tk_engine *e, int v, int *n) {
  const ref_engine *r = (const ref_engine *)e;
  if (!e || e->v != &g_ref_vtbl || v < 0 || v >= r->n_values || r->last_n < 1) return NULL;
  *n = r->last_n;
  return r->act[v];
}

const float *tk_ref_engine_value_grad(const tk_engine *e, int v, int *n) {
  const ref_engine *r = (const ref_engine *)e;
  if (!e || e->v != &g_ref_vtbl || v < 0 || v >= r->n_values || r->last_n < 1 || !r->have_grad) return NULL;
  *n = r->last_n;
  return r->dact[v];
}

tk_status tk_ref_engine_create(tk_model *m, int max_batch, tk_engine **out) {
  *out = NULL;
  if (max_batch < 1) return tk_fail(TK_ERR_ARG, "max_batch: %d must be at least 1", max_batch);
  if (!m->values) return tk_fail(TK_ERR_ARG, "reference engine: the model has no inferred shapes (run tk_model_infer)");
  /* activations, their gradients and one scratch value: refuse what this machine cannot hold
   * rather than touching memory until the kernel kills the process */
  double per_image = 0, largest = 0;
  for (int v = 0; v <= m->n_layers; v++) {
    per_image += 2.0 * (double)value_elems(m, v);
    if ((double)value_elems(m, v) > largest) largest = (double)value_elems(m, v);
  }
  const double need = (per_image + largest) * (double)max_batch * sizeof(float);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const double phys = pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
  if (phys > 0 && need > 0.8 * phys)
    return tk_fail(TK_ERR_NOMEM, "reference engine: batch %d needs %.2f GB of activations, more than this "
                                 "machine's %.2f GB allows (use a smaller batch)",
                   max_batch, need / 1e9, phys / 1e9);
  ref_engine *r = tk_calloc(1, sizeof *r);
  if (!r) return TK_ERR_NOMEM;
  r->base.v = &g_ref_vtbl;
  r->base.m = m;
  r->base.max_batch = max_batch;
  r->n_values = m->n_layers + 1;
  tk_status st = TK_ERR_NOMEM;
  if (!(r->act = tk_calloc((size_t)r->n_values, sizeof(float *)))) goto fail;
  if (!(r->dact = tk_calloc((size_t)r->n_values, sizeof(float *)))) goto fail;
  if (!(r->bn_mean = tk_calloc((size_t)m->n_layers, sizeof(double *)))) goto fail;
  if (!(r->bn_istd = tk_calloc((size_t)m->n_layers, sizeof(double *)))) goto fail;
  for (int v = 0; v < r->n_values; v++) {
    const size_t bytes = (size_t)max_batch * value_elems(m, v) * sizeof(float);
    if (!(r->act[v] = tk_alloc_aligned(bytes))) goto fail;
    if (!(r->dact[v] = tk_alloc_aligned(bytes))) goto fail;
  }
  if (!(r->tmp = tk_alloc_aligned((size_t)max_batch * (size_t)largest * sizeof(float)))) goto fail;
  for (int li = 0; li < m->n_layers; li++) {
    if (m->layers[li].op != TK_OP_BATCHNORM) continue;
    if (!(r->bn_mean[li] = tk_calloc((size_t)m->layers[li].in.c, sizeof(double)))) goto fail;
    if (!(r->bn_istd[li] = tk_calloc((size_t)m->layers[li].in.c, sizeof(double)))) goto fail;
  }
  if ((st = tk_engine_alloc_grads(&r->base)) != TK_OK) goto fail;
  *out = &r->base;
  return TK_OK;
fail:
  ref_destroy(&r->base);
  return st;
}
