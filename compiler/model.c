/* model.c -- building the graph IR, shape inference and invariant checks, statistics.
 * This file does not read or write files (load.cc does). */
#include "model.h"

#include <stdlib.h>
#include <math.h>
#include <string.h>

static const char *const g_op_names[] = {
#define X(e, s) s,
    TK_OP_LIST(X)
#undef X
};

const char *tk_op_name(tk_op op) {
  return (unsigned)op < TK_OP_COUNT ? g_op_names[op] : "unknown-op";
}

/* ---- construction ------------------------------------------------------------------ */

tk_model *tk_model_new(const char *arch, int classes, int c, int h, int w) {
  tk_model *m = tk_calloc(1, sizeof *m);
  if (!m) return NULL;
  m->format_version = 1;
  m->arch = tk_strdup(arch ? arch : "");
  m->classes = classes;
  m->in_c = c;
  m->in_h = h;
  m->in_w = w;
  m->lo = 0.0f;
  m->hi = 1.0f;
  if (!m->arch) {
    free(m);
    return NULL;
  }
  return m;
}

static void tensor_free(tk_tensor *t) {
  free(t->name);
  free(t->data);
  free(t->mask);
  free(t->scores);
}

static void metrics_free(tk_metric *ms, int n) {
  for (int i = 0; i < n; i++) free(ms[i].name);
  free(ms);
}

void tk_model_free(tk_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_tensors; i++) tensor_free(&m->tensors[i]);
  free(m->tensors);
  for (int i = 0; i < m->n_layers; i++) free(m->layers[i].name);
  free(m->layers);
  free(m->values);
  free(m->arch);
  free(m->mean);
  free(m->std);
  free(m->prov.method);
  free(m->prov.source);
  free(m->prov.created);
  free(m->prov.notes);
  metrics_free(m->prov.metrics, m->prov.n_metrics);
  if (m->train) {
    tk_train_state_clear(m->train);
    free(m->train);
  }
  free(m);
}

void tk_train_state_clear(tk_train_state *ts) {
  free(ts->rng);
  for (int i = 0; i < ts->n_momenta; i++) tensor_free(&ts->momenta[i]);
  free(ts->momenta);
  free(ts->config);
  free(ts->log);
  metrics_free(ts->best, ts->n_best);
  memset(ts, 0, sizeof *ts);
}

int tk_model_classes(const tk_model *m) { return m->classes; }

void tk_model_input_shape(const tk_model *m, int *c, int *h, int *w) {
  *c = m->in_c;
  *h = m->in_h;
  *w = m->in_w;
}

int tk_model_add_tensor(tk_model *m, const char *name, int ndim, const int64_t *shape) {
  if (ndim < 1 || ndim > 4) {
    tk_fail(TK_ERR_FORMAT, "tensor %s: %d dimensions (1 to 4 allowed)", name, ndim);
    return -1;
  }
  if (m->n_tensors >= TK_MAX_TENSORS) {
    tk_fail(TK_ERR_FORMAT, "tensor %s: more than %d tensors", name, TK_MAX_TENSORS);
    return -1;
  }
  int64_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 1 || shape[d] > TK_MAX_DIM) {
      tk_fail(TK_ERR_FORMAT, "tensor %s: shape[%d] = %lld out of range 1..%d", name, d,
              (long long)shape[d], TK_MAX_DIM);
      return -1;
    }
    numel *= shape[d];
    if (numel > TK_MAX_TENSOR_ELEMS) {
      tk_fail(TK_ERR_FORMAT, "tensor %s: more than %lld elements", name, (long long)TK_MAX_TENSOR_ELEMS);
      return -1;
    }
  }
  if (m->n_tensors == m->cap_tensors) {
    int cap = m->cap_tensors ? 2 * m->cap_tensors : 16;
    tk_tensor *nt = realloc(m->tensors, (size_t)cap * sizeof *nt);
    if (!nt) {
      tk_fail(TK_ERR_NOMEM, "out of memory adding tensor %s", name);
      return -1;
    }
    m->tensors = nt;
    m->cap_tensors = cap;
  }
  tk_tensor *t = &m->tensors[m->n_tensors];
  memset(t, 0, sizeof *t);
  t->name = tk_strdup(name);
  t->ndim = ndim;
  for (int d = 0; d < 4; d++) t->shape[d] = d < ndim ? shape[d] : 1;
  t->numel = numel;
  t->trainable = true;
  t->data = tk_alloc_aligned((size_t)numel * sizeof(float));
  if (!t->name || !t->data) {
    tensor_free(t);
    tk_fail(TK_ERR_NOMEM, "tensor %s: cannot allocate %lld floats", name, (long long)numel);
    return -1;
  }
  return m->n_tensors++;
}

tk_layer tk_layer_default(tk_op op, const char *name, int input) {
  tk_layer l;
  memset(&l, 0, sizeof l);
  l.op = op;
  l.name = (char *)name;
  l.n_inputs = 1;
  l.inputs[0] = input;
  l.inputs[1] = -1;
  l.weight = l.bias = l.mean = l.var = -1;
  l.kh = l.kw = 1;
  l.sh = l.sw = 1;
  l.dh = l.dw = 1;
  l.groups = 1;
  l.eps = 1e-5f;
  l.momentum = 0.1f;
  return l;
}

int tk_model_add_layer(tk_model *m, const tk_layer *l) {
  if (m->n_layers >= TK_MAX_LAYERS) {
    tk_fail(TK_ERR_FORMAT, "layer %s: more than %d layers", l->name ? l->name : "?", TK_MAX_LAYERS);
    return -1;
  }
  if (m->n_layers == m->cap_layers) {
    int cap = m->cap_layers ? 2 * m->cap_layers : 16;
    tk_layer *nl = realloc(m->layers, (size_t)cap * sizeof *nl);
    if (!nl) {
      tk_fail(TK_ERR_NOMEM, "out of memory adding a layer");
      return -1;
    }
    m->layers = nl;
    m->cap_layers = cap;
  }
  tk_layer *d = &m->layers[m->n_layers];
  *d = *l;
  d->name = tk_strdup(l->name ? l->name : "");
  if (!d->name) return -1;
  return m->n_layers++;
}

int tk_model_find_tensor(const tk_model *m, const char *name) {
  for (int i = 0; i < m->n_tensors; i++)
    if (strcmp(m->tensors[i].name, name) == 0) return i;
  return -1;
}

static tk_status tensor_copy(tk_tensor *d, const tk_tensor *s) {
  *d = *s;
  d->name = tk_strdup(s->name);
  d->data = tk_alloc_aligned((size_t)s->numel * sizeof(float));
  d->mask = NULL;
  d->scores = NULL;
  if (!d->name || !d->data) return TK_ERR_NOMEM;
  memcpy(d->data, s->data, (size_t)s->numel * sizeof(float));
  if (s->mask) {
    if (!(d->mask = tk_malloc((size_t)s->numel))) return TK_ERR_NOMEM;
    memcpy(d->mask, s->mask, (size_t)s->numel);
  }
  if (s->scores) {
    if (!(d->scores = tk_malloc((size_t)s->numel * sizeof(float)))) return TK_ERR_NOMEM;
    memcpy(d->scores, s->scores, (size_t)s->numel * sizeof(float));
  }
  return TK_OK;
}

static tk_metric *metrics_copy(const tk_metric *s, int n) {
  tk_metric *d = tk_calloc((size_t)(n > 0 ? n : 1), sizeof *d);
  if (!d) return NULL;
  for (int i = 0; i < n; i++) {
    d[i].name = tk_strdup(s[i].name);
    d[i].value = s[i].value;
  }
  return d;
}

static char *strdup_or_null(const char *s) { return s ? tk_strdup(s) : NULL; }

tk_model *tk_model_clone(const tk_model *s) {
  tk_model *m = tk_model_new(s->arch, s->classes, s->in_c, s->in_h, s->in_w);
  if (!m) return NULL;
  m->format_version = s->format_version;
  m->lo = s->lo;
  m->hi = s->hi;
  if (s->mean) {
    m->mean = tk_malloc((size_t)s->in_c * sizeof(float));
    m->std = tk_malloc((size_t)s->in_c * sizeof(float));
    if (!m->mean || !m->std) goto fail;
    memcpy(m->mean, s->mean, (size_t)s->in_c * sizeof(float));
    memcpy(m->std, s->std, (size_t)s->in_c * sizeof(float));
  }
  m->tensors = tk_calloc((size_t)(s->n_tensors ? s->n_tensors : 1), sizeof *m->tensors);
  if (!m->tensors) goto fail;
  m->cap_tensors = s->n_tensors ? s->n_tensors : 1;
  for (int i = 0; i < s->n_tensors; i++) {
    m->n_tensors = i + 1;
    if (tensor_copy(&m->tensors[i], &s->tensors[i]) != TK_OK) goto fail;
  }
  for (int i = 0; i < s->n_layers; i++)
    if (tk_model_add_layer(m, &s->layers[i]) < 0) goto fail;
  m->prov.method = strdup_or_null(s->prov.method);
  m->prov.source = strdup_or_null(s->prov.source);
  m->prov.created = strdup_or_null(s->prov.created);
  m->prov.notes = strdup_or_null(s->prov.notes);
  m->prov.sparsity = s->prov.sparsity;
  if (s->prov.n_metrics) {
    m->prov.metrics = metrics_copy(s->prov.metrics, s->prov.n_metrics);
    if (!m->prov.metrics) goto fail;
    m->prov.n_metrics = s->prov.n_metrics;
  }
  if (s->train) {
    const tk_train_state *st = s->train;
    tk_train_state *dt = tk_calloc(1, sizeof *dt);
    if (!dt) goto fail;
    m->train = dt;
    dt->epoch = st->epoch;
    dt->step = st->step;
    if (st->n_rng) {
      dt->rng = tk_malloc((size_t)st->n_rng * sizeof(uint64_t));
      if (!dt->rng) goto fail;
      memcpy(dt->rng, st->rng, (size_t)st->n_rng * sizeof(uint64_t));
      dt->n_rng = st->n_rng;
    }
    if (st->n_momenta) {
      dt->momenta = tk_calloc((size_t)st->n_momenta, sizeof *dt->momenta);
      if (!dt->momenta) goto fail;
      for (int i = 0; i < st->n_momenta; i++) {
        dt->n_momenta = i + 1;
        if (tensor_copy(&dt->momenta[i], &st->momenta[i]) != TK_OK) goto fail;
      }
    }
    dt->config = strdup_or_null(st->config);
    dt->log = strdup_or_null(st->log);
    if (st->n_best) {
      dt->best = metrics_copy(st->best, st->n_best);
      if (!dt->best) goto fail;
      dt->n_best = st->n_best;
    }
  }
  if (s->values && tk_model_infer(m) != TK_OK) goto fail;
  return m;
fail:
  tk_model_free(m);
  return NULL;
}

tk_status tk_tensor_set_mask(tk_tensor *t, const uint8_t *mask) {
  if (!mask) {
    free(t->mask);
    t->mask = NULL;
    return TK_OK;
  }
  if (!t->mask && !(t->mask = tk_malloc((size_t)t->numel))) return TK_ERR_NOMEM;
  for (int64_t i = 0; i < t->numel; i++) t->mask[i] = mask[i] ? 1 : 0;
  tk_tensor_apply_mask(t);
  return TK_OK;
}

void tk_tensor_apply_mask(tk_tensor *t) {
  if (!t->mask) return;
  for (int64_t i = 0; i < t->numel; i++)
    if (!t->mask[i]) t->data[i] = 0.0f;
}

/* ---- shape inference and invariants ------------------------------------------------- */

#define LFAIL(...) \
  return tk_fail_prefix(tk_fail(TK_ERR_FORMAT, __VA_ARGS__), "layer %d (%s, %s)", i, l->name, tk_op_name(l->op))

static tk_status check_tensor(const tk_model *m, int i, const tk_layer *l, const char *field, int idx,
                              int ndim, const int64_t *shape) {
  if (idx < 0) LFAIL("%s: missing", field);
  if (idx >= m->n_tensors) LFAIL("%s: tensor index %d out of range (%d tensors)", field, idx, m->n_tensors);
  const tk_tensor *t = &m->tensors[idx];
  bool ok = t->ndim == ndim;
  for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
  if (!ok) {
    char want[96] = "", got[96] = "";
    for (int d = 0; d < ndim; d++)
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "x" : "", (long long)shape[d]);
    for (int d = 0; d < t->ndim; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "x" : "", (long long)t->shape[d]);
    LFAIL("%s: tensor %s has shape %s, expected %s", field, t->name, got, want);
  }
  return TK_OK;
}

static int conv_out(int in, int k, int s, int p, int d) {
  int64_t span = (int64_t)d * (k - 1) + 1;
  int64_t o = ((int64_t)in + 2 * (int64_t)p - span);
  if (o < 0) return 0;
  return (int)(o / s + 1);
}

/* Inside tk_model_infer: record the error and leave through `done` (which frees). */
#define IFAIL(...)                                                                              \
  do {                                                                                          \
    st = tk_fail_prefix(tk_fail(TK_ERR_FORMAT, __VA_ARGS__), "layer %d (%s, %s)", i, l->name,   \
                        tk_op_name(l->op));                                                     \
    goto done;                                                                                  \
  } while (0)

tk_status tk_model_infer(tk_model *m) {
  if (m->in_c < 1 || m->in_h < 1 || m->in_w < 1 || m->in_c > TK_MAX_DIM || m->in_h > TK_MAX_DIM ||
      m->in_w > TK_MAX_DIM)
    return tk_fail(TK_ERR_FORMAT, "input: shape %dx%dx%d out of range", m->in_c, m->in_h, m->in_w);
  if (tk_shape_numel((tk_shape){m->in_c, m->in_h, m->in_w}) > TK_MAX_VALUE_ELEMS)
    return tk_fail(TK_ERR_FORMAT, "input: %dx%dx%d is too large", m->in_c, m->in_h, m->in_w);
  if (m->classes < 1 || m->classes > TK_MAX_DIM)
    return tk_fail(TK_ERR_FORMAT, "classes: %d out of range 1..%d", m->classes, TK_MAX_DIM);
  if (!(m->lo < m->hi)) return tk_fail(TK_ERR_FORMAT, "input: value range [%g, %g] is empty", m->lo, m->hi);
  if (m->n_layers < 1) return tk_fail(TK_ERR_FORMAT, "layers: the model has no layers");
  if ((m->mean == NULL) != (m->std == NULL))
    return tk_fail(TK_ERR_FORMAT, "input: mean and std must both be given");
  for (int c = 0; m->std && c < m->in_c; c++)
    if (!(m->std[c] > 0) || !isfinite(m->mean[c]))
      return tk_fail(TK_ERR_FORMAT, "input: std[%d] = %g must be positive (mean %g)", c, m->std[c], m->mean[c]);
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    for (int u = 0; u < t; u++)
      if (strcmp(m->tensors[u].name, tt->name) == 0)
        return tk_fail(TK_ERR_FORMAT, "tensor %d: name %s is used twice", t, tt->name);
  }
  tk_shape *vals = realloc(m->values, (size_t)(m->n_layers + 1) * sizeof *vals);
  if (!vals) return tk_fail(TK_ERR_NOMEM, "out of memory");
  m->values = vals;
  vals[0] = (tk_shape){m->in_c, m->in_h, m->in_w};
  int *tensor_user = tk_malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof(int));
  if (!tensor_user) return TK_ERR_NOMEM;
  for (int t = 0; t < m->n_tensors; t++) tensor_user[t] = -1;
  tk_status st = TK_OK;
  for (int i = 0; i < m->n_layers && st == TK_OK; i++) {
    tk_layer *l = &m->layers[i];
    st = TK_ERR_FORMAT;
    if ((unsigned)l->op >= TK_OP_COUNT) {
      tk_fail_prefix(tk_fail(TK_ERR_FORMAT, "op: unknown op code %d", (int)l->op), "layer %d (%s)", i, l->name);
      break;
    }
    int want_inputs = l->op == TK_OP_ADD ? 2 : 1;
    if (l->n_inputs != want_inputs) {
      tk_fail_prefix(tk_fail(TK_ERR_FORMAT, "inputs: %d given, %d expected", l->n_inputs, want_inputs),
                     "layer %d (%s, %s)", i, l->name, tk_op_name(l->op));
      break;
    }
    bool bad = false;
    for (int k = 0; k < l->n_inputs; k++)
      if (l->inputs[k] < 0 || l->inputs[k] > i) {
        tk_fail_prefix(tk_fail(TK_ERR_FORMAT, "inputs[%d]: value %d is not produced before this layer "
                                              "(the graph must be acyclic, in execution order)", k, l->inputs[k]),
                       "layer %d (%s, %s)", i, l->name, tk_op_name(l->op));
        bad = true;
        break;
      }
    if (bad) break;
    /* every tensor reference in range and used by exactly one layer */
    int refs[4] = {l->weight, l->bias, l->mean, l->var};
    static const char *const rname[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int k = 0; k < 4 && !bad; k++) {
      if (refs[k] < 0) continue;
      if (refs[k] >= m->n_tensors) {
        tk_fail_prefix(tk_fail(TK_ERR_FORMAT, "%s: tensor index %d out of range (%d tensors)", rname[k], refs[k], m->n_tensors),
                       "layer %d (%s, %s)", i, l->name, tk_op_name(l->op));
        bad = true;
      } else if (tensor_user[refs[k]] >= 0) {
        tk_fail_prefix(tk_fail(TK_ERR_FORMAT, "%s: tensor %s is already used by layer %d", rname[k],
                               m->tensors[refs[k]].name, tensor_user[refs[k]]),
                       "layer %d (%s, %s)", i, l->name, tk_op_name(l->op));
        bad = true;
      } else {
        tensor_user[refs[k]] = i;
      }
    }
    if (bad) break;
    tk_shape in = vals[l->inputs[0]], out = in;
    l->in = in;
    switch (l->op) {
    case TK_OP_CONV2D: {
      if (l->kh < 1 || l->kw < 1 || l->kh > 64 || l->kw > 64) IFAIL("kernel: %dx%d out of range 1..64", l->kh, l->kw);
      if (l->sh < 1 || l->sw < 1 || l->sh > 64 || l->sw > 64) IFAIL("stride: %dx%d out of range 1..64", l->sh, l->sw);
      if (l->dh < 1 || l->dw < 1 || l->dh > 64 || l->dw > 64) IFAIL("dilation: %dx%d out of range 1..64", l->dh, l->dw);
      if (l->ph < 0 || l->pw < 0 || l->ph > 64 || l->pw > 64) IFAIL("padding: %dx%d out of range 0..64", l->ph, l->pw);
      if (l->groups < 1 || in.c % l->groups) IFAIL("groups: %d does not divide %d input channels", l->groups, in.c);
      if (l->weight < 0) IFAIL("weight: missing");
      const tk_tensor *w = &m->tensors[l->weight];
      if (w->ndim != 4) IFAIL("weight: tensor %s must have 4 dimensions, has %d", w->name, w->ndim);
      int64_t oc = w->shape[0];
      if (oc % l->groups) IFAIL("groups: %d does not divide %lld output channels", l->groups, (long long)oc);
      int64_t ws[4] = {oc, in.c / l->groups, l->kh, l->kw};
      if (check_tensor(m, i, l, "weight", l->weight, 4, ws) != TK_OK) goto done;
      if (l->bias >= 0 && check_tensor(m, i, l, "bias", l->bias, 1, &oc) != TK_OK) goto done;
      out.c = (int)oc;
      out.h = conv_out(in.h, l->kh, l->sh, l->ph, l->dh);
      out.w = conv_out(in.w, l->kw, l->sw, l->pw, l->dw);
      if (out.h < 1 || out.w < 1) IFAIL("output: %dx%d input gives an empty output", in.h, in.w);
      break;
    }
    case TK_OP_LINEAR: {
      if (l->weight < 0) IFAIL("weight: missing");
      const tk_tensor *w = &m->tensors[l->weight];
      if (w->ndim != 2) IFAIL("weight: tensor %s must have 2 dimensions, has %d", w->name, w->ndim);
      int64_t of = w->shape[0];
      if (l->out_features && l->out_features != of)
        IFAIL("out_features: %d but weight %s has %lld rows", l->out_features, w->name, (long long)of);
      int64_t ws[2] = {of, tk_shape_numel(in)};
      if (check_tensor(m, i, l, "weight", l->weight, 2, ws) != TK_OK) goto done;
      if (l->bias >= 0 && check_tensor(m, i, l, "bias", l->bias, 1, &of) != TK_OK) goto done;
      out = (tk_shape){(int)of, 1, 1};
      break;
    }
    case TK_OP_BATCHNORM: {
      int64_t c = in.c;
      if (!(l->eps > 0) || !(l->momentum >= 0 && l->momentum <= 1))
        IFAIL("eps/momentum: %g/%g out of range", l->eps, l->momentum);
      if (check_tensor(m, i, l, "weight", l->weight, 1, &c) != TK_OK ||
          check_tensor(m, i, l, "bias", l->bias, 1, &c) != TK_OK ||
          check_tensor(m, i, l, "running_mean", l->mean, 1, &c) != TK_OK ||
          check_tensor(m, i, l, "running_var", l->var, 1, &c) != TK_OK)
        goto done;
      const tk_tensor *v = &m->tensors[l->var];
      for (int64_t k = 0; k < c; k++)
        if (!(v->data[k] >= 0)) IFAIL("running_var: %s[%lld] = %g is negative", v->name, (long long)k, v->data[k]);
      break;
    }
    case TK_OP_RELU:
    case TK_OP_FLATTEN:
      if (l->weight >= 0 || l->bias >= 0) IFAIL("weight: this op takes no tensors");
      if (l->op == TK_OP_FLATTEN) out = (tk_shape){(int)tk_shape_numel(in), 1, 1};
      break;
    case TK_OP_MAXPOOL:
    case TK_OP_AVGPOOL:
      if (l->kh < 1 || l->kw < 1 || l->kh > 64 || l->kw > 64) IFAIL("kernel: %dx%d out of range 1..64", l->kh, l->kw);
      if (l->sh < 1 || l->sw < 1 || l->sh > 64 || l->sw > 64) IFAIL("stride: %dx%d out of range 1..64", l->sh, l->sw);
      if (l->ph < 0 || l->pw < 0 || 2 * (int64_t)l->ph > l->kh || 2 * (int64_t)l->pw > l->kw)
        IFAIL("padding: %dx%d must be at most half the kernel %dx%d", l->ph, l->pw, l->kh, l->kw);
      if (l->dh != 1 || l->dw != 1) IFAIL("dilation: pools take dilation 1");
      out.h = conv_out(in.h, l->kh, l->sh, l->ph, 1);
      out.w = conv_out(in.w, l->kw, l->sw, l->pw, 1);
      if (out.h < 1 || out.w < 1) IFAIL("output: %dx%d input gives an empty output", in.h, in.w);
      break;
    case TK_OP_GLOBALAVGPOOL:
      out = (tk_shape){in.c, 1, 1};
      break;
    case TK_OP_ADD: {
      tk_shape b = vals[l->inputs[1]];
      if (b.c != in.c || b.h != in.h || b.w != in.w)
        IFAIL("inputs: shapes %dx%dx%d and %dx%dx%d differ", in.c, in.h, in.w, b.c, b.h, b.w);
      break;
    }
    case TK_OP_SCALE: {
      int64_t ws[3] = {in.c, 1, 1};
      if (check_tensor(m, i, l, "weight", l->weight, 3, ws) != TK_OK) goto done;
      break;
    }
    case TK_OP_COUNT:
      break;
    }
    if (tk_shape_numel(out) > TK_MAX_VALUE_ELEMS) IFAIL("output: %dx%dx%d is too large", out.c, out.h, out.w);
    l->out = out;
    vals[i + 1] = out;
    st = TK_OK;
  }
done:
  if (st == TK_OK) {
    tk_shape last = vals[m->n_layers];
    if (last.c != m->classes || last.h != 1 || last.w != 1)
      st = tk_fail(TK_ERR_FORMAT, "classes: the last layer produces %dx%dx%d, expected %d logits", last.c,
                   last.h, last.w, m->classes);
  }
  for (int t = 0; st == TK_OK && t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (tensor_user[t] < 0) st = tk_fail(TK_ERR_FORMAT, "tensor %s: not used by any layer", tt->name);
    else if (tt->mask && !tt->prunable)
      st = tk_fail(TK_ERR_FORMAT, "tensor %s: has a mask but is not prunable", tt->name);
  }
  free(tensor_user);
  return st;
}

/* ---- statistics --------------------------------------------------------------------- */

int64_t tk_tensor_nnz(const tk_tensor *t) {
  if (!t->mask) return t->numel;
  int64_t n = 0;
  for (int64_t i = 0; i < t->numel; i++) n += t->mask[i] != 0;
  return n;
}

void tk_layer_macs(const tk_model *m, const tk_layer *l, int64_t *dense, int64_t *sparse) {
  *dense = *sparse = 0;
  if (l->op != TK_OP_CONV2D && l->op != TK_OP_LINEAR) return;
  const tk_tensor *w = &m->tensors[l->weight];
  int64_t pix = (int64_t)l->out.h * l->out.w;
  *dense = w->numel * pix;
  *sparse = tk_tensor_nnz(w) * pix;
}

int64_t tk_layer_params(const tk_model *m, const tk_layer *l) {
  int64_t n = 0;
  int refs[4] = {l->weight, l->bias, l->mean, l->var};
  for (int k = 0; k < 4; k++)
    if (refs[k] >= 0 && m->tensors[refs[k]].trainable) n += m->tensors[refs[k]].numel;
  return n;
}

double tk_model_sparsity(const tk_model *m) {
  int64_t total = 0, kept = 0;
  for (int t = 0; t < m->n_tensors; t++) {
    if (!m->tensors[t].prunable) continue;
    total += m->tensors[t].numel;
    kept += tk_tensor_nnz(&m->tensors[t]);
  }
  return total ? 1.0 - (double)kept / (double)total : 0.0;
}
