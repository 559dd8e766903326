/* test_aot_models.h -- models for the pass and AOT tests (test_passes.c, test_aot.c), built
 * through the construction API of compiler/model.h, with random masks and random BatchNorm
 * statistics so that folding is not a no-op.
 *
 * ops_model(): every op and every AOT variant in one small graph (layer: op -> value):
 *   input 3x12x12, normalised in the model
 *    0 c1   conv 3->8 k3 s1 p1, no bias, masked -> v1      13 scale -> v14
 *    1 bn1  foldable -> v2                                  14 avgpool k2 s1 p1 -> v15
 *    2 relu1 (fused into c1) -> v3                          15 relu4 (producer is a pool:
 *    3 c2   conv 8->8 k3 s2 p1 groups 2, bias, dense -> v4     not fused) -> v16
 *    4 bn2  foldable -> v5                                  16 c5  conv 6->10 k2x3 s2 p0x1 -> v17
 *    5 sc   conv 8->8 k1 s2 on v3, masked -> v6             17 global avgpool -> v18
 *    6 add1 (v5, v6) -> v7                                  18 flatten -> v19
 *    7 bn3  not foldable (reads an add) -> v8               19 fc1 linear 10->12, masked -> v20
 *    8 relu3 (fused into bn3) -> v9                         20 bn4 foldable -> v21
 *    9 c3   conv 8->6 1x1 (reads x directly), masked -> v10 21 fce linear 10->12 on v19, every
 *   10 maxpool k3 s2 p1 -> v11                                  weight pruned -> v22
 *   11 c4   conv 6->6 k3 p2 d2, every weight pruned -> v12  22 add3 (v21, v22) -> v23
 *   12 add2 (v11, v12) -> v13                               23 relu5 (fused into add3) -> v24
 *                                                           24 fc2 linear 12->5 -> v25 logits
 */
#ifndef TK_TEST_AOT_MODELS_H
#define TK_TEST_AOT_MODELS_H

#include "compiler/model.h"
#include "compiler/zoo.h"
#include "runtime/engine.h"

#include <stdlib.h>
#include <string.h>

static inline float tm_uniform(tk_rng *r, float lo, float hi) { return lo + (hi - lo) * (float)tk_rng_uniform(r); }

static inline void tm_fill(tk_tensor *t, tk_rng *r, float lo, float hi) {
  for (int64_t i = 0; i < t->numel; i++) t->data[i] = tm_uniform(r, lo, hi);
}

/* Random mask keeping each element with probability `keep` (keep 1: an all-ones mask,
 * keep 0: everything pruned). */
static inline int tm_mask(tk_tensor *t, tk_rng *r, double keep) {
  uint8_t *mk = malloc((size_t)t->numel);
  if (!mk) return -1;
  for (int64_t i = 0; i < t->numel; i++) mk[i] = keep >= 1.0 ? 1 : keep <= 0.0 ? 0 : tk_rng_uniform(r) < keep;
  t->prunable = true;
  int rc = tk_tensor_set_mask(t, mk) == TK_OK ? 0 : -1;
  free(mk);
  return rc;
}

static inline int tm_tensor(tk_model *m, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t shape[4] = {a, b, c, d};
  return tk_model_add_tensor(m, name, ndim, shape);
}

/* Adds a conv layer reading value `in`; returns the layer index. */
static inline int tm_conv(tk_model *m, tk_rng *r, const char *name, int in, int ic, int oc, int kh, int kw, int s, int ph,
                          int pw, int d, int g, int bias) {
  char wn[64], bn[64];
  snprintf(wn, sizeof wn, "%s.weight", name);
  snprintf(bn, sizeof bn, "%s.bias", name);
  tk_layer l = tk_layer_default(TK_OP_CONV2D, name, in);
  l.weight = tm_tensor(m, wn, 4, oc, ic / g, kh, kw);
  tm_fill(&m->tensors[l.weight], r, -0.5f, 0.5f);
  m->tensors[l.weight].prunable = true;
  if (bias) {
    l.bias = tm_tensor(m, bn, 1, oc, 1, 1, 1);
    tm_fill(&m->tensors[l.bias], r, -0.2f, 0.2f);
  }
  l.kh = kh, l.kw = kw, l.sh = l.sw = s, l.ph = ph, l.pw = pw, l.dh = l.dw = d, l.groups = g;
  return tk_model_add_layer(m, &l);
}

static inline int tm_linear(tk_model *m, tk_rng *r, const char *name, int in, int fi, int fo) {
  char wn[64], bn[64];
  snprintf(wn, sizeof wn, "%s.weight", name);
  snprintf(bn, sizeof bn, "%s.bias", name);
  tk_layer l = tk_layer_default(TK_OP_LINEAR, name, in);
  l.weight = tm_tensor(m, wn, 2, fo, fi, 1, 1);
  tm_fill(&m->tensors[l.weight], r, -0.5f, 0.5f);
  m->tensors[l.weight].prunable = true;
  l.bias = tm_tensor(m, bn, 1, fo, 1, 1, 1);
  tm_fill(&m->tensors[l.bias], r, -0.2f, 0.2f);
  return tk_model_add_layer(m, &l);
}

/* Random BatchNorm parameters and statistics. */
static inline void tm_bn_random(tk_model *m, const tk_layer *l, tk_rng *r) {
  tm_fill(&m->tensors[l->weight], r, 0.5f, 1.5f);
  tm_fill(&m->tensors[l->bias], r, -0.5f, 0.5f);
  tm_fill(&m->tensors[l->mean], r, -0.5f, 0.5f);
  tm_fill(&m->tensors[l->var], r, 0.5f, 2.0f);
}

static inline int tm_bn(tk_model *m, tk_rng *r, const char *name, int in, int c) {
  char n1[64], n2[64], n3[64], n4[64];
  snprintf(n1, sizeof n1, "%s.weight", name);
  snprintf(n2, sizeof n2, "%s.bias", name);
  snprintf(n3, sizeof n3, "%s.running_mean", name);
  snprintf(n4, sizeof n4, "%s.running_var", name);
  tk_layer l = tk_layer_default(TK_OP_BATCHNORM, name, in);
  l.weight = tm_tensor(m, n1, 1, c, 1, 1, 1);
  l.bias = tm_tensor(m, n2, 1, c, 1, 1, 1);
  l.mean = tm_tensor(m, n3, 1, c, 1, 1, 1);
  l.var = tm_tensor(m, n4, 1, c, 1, 1, 1);
  m->tensors[l.mean].trainable = m->tensors[l.var].trainable = false;
  tm_bn_random(m, &l, r);
  return tk_model_add_layer(m, &l);
}

static inline int tm_op(tk_model *m, tk_op op, const char *name, int in, int in2) {
  tk_layer l = tk_layer_default(op, name, in);
  if (op == TK_OP_ADD) {
    l.n_inputs = 2;
    l.inputs[1] = in2;
  }
  return tk_model_add_layer(m, &l);
}

static inline int tm_pool(tk_model *m, tk_op op, const char *name, int in, int k, int s, int p) {
  tk_layer l = tk_layer_default(op, name, in);
  l.kh = l.kw = k, l.sh = l.sw = s, l.ph = l.pw = p;
  return tk_model_add_layer(m, &l);
}

/* The model described at the top; masks keep each weight with probability `keep` (the
 * layers marked "every weight pruned" keep none).  NULL on failure. */
static inline tk_model *ops_model(uint64_t seed, double keep) {
  tk_rng r;
  tk_rng_seed(&r, seed);
  tk_model *m = tk_model_new("ops_test", 5, 3, 12, 12);
  if (!m) return NULL;
  m->mean = malloc(3 * sizeof(float));
  m->std = malloc(3 * sizeof(float));
  for (int c = 0; c < 3; c++) m->mean[c] = 0.4f + 0.05f * (float)c, m->std[c] = 0.2f + 0.03f * (float)c;
  int l;
  l = tm_conv(m, &r, "c1", 0, 3, 8, 3, 3, 1, 1, 1, 1, 1, 0);                       /* 0 -> v1 */
  tm_mask(&m->tensors[m->layers[l].weight], &r, keep);
  tm_bn(m, &r, "bn1", 1, 8);                                                         /* 1 -> v2 */
  tm_op(m, TK_OP_RELU, "relu1", 2, -1);                                              /* 2 -> v3 */
  tm_conv(m, &r, "c2", 3, 8, 8, 3, 3, 2, 1, 1, 1, 2, 1);                             /* 3 -> v4 */
  tm_bn(m, &r, "bn2", 4, 8);                                                         /* 4 -> v5 */
  l = tm_conv(m, &r, "sc", 3, 8, 8, 1, 1, 2, 0, 0, 1, 1, 0);                         /* 5 -> v6 */
  tm_mask(&m->tensors[m->layers[l].weight], &r, keep);
  tm_op(m, TK_OP_ADD, "add1", 5, 6);                                                 /* 6 -> v7 */
  tm_bn(m, &r, "bn3", 7, 8);                                                         /* 7 -> v8 */
  tm_op(m, TK_OP_RELU, "relu3", 8, -1);                                              /* 8 -> v9 */
  l = tm_conv(m, &r, "c3", 9, 8, 6, 1, 1, 1, 0, 0, 1, 1, 1);                         /* 9 -> v10 */
  tm_mask(&m->tensors[m->layers[l].weight], &r, keep);
  tm_pool(m, TK_OP_MAXPOOL, "maxpool", 10, 3, 2, 1);                                 /* 10 -> v11 */
  l = tm_conv(m, &r, "c4", 11, 6, 6, 3, 3, 1, 2, 2, 2, 1, 1);                        /* 11 -> v12 */
  tm_mask(&m->tensors[m->layers[l].weight], &r, 0.0);
  tm_op(m, TK_OP_ADD, "add2", 11, 12);                                               /* 12 -> v13 */
  {
    tk_layer s = tk_layer_default(TK_OP_SCALE, "scale", 13);                         /* 13 -> v14 */
    s.weight = tm_tensor(m, "scale.weight", 3, 6, 1, 1, 1);
    tm_fill(&m->tensors[s.weight], &r, 0.5f, 2.0f);
    tk_model_add_layer(m, &s);
  }
  tm_pool(m, TK_OP_AVGPOOL, "avgpool", 14, 2, 1, 1);                                 /* 14 -> v15 */
  tm_op(m, TK_OP_RELU, "relu4", 15, -1);                                             /* 15 -> v16 */
  l = tm_conv(m, &r, "c5", 16, 6, 10, 2, 3, 2, 0, 1, 1, 1, 1);                       /* 16 -> v17 */
  tm_op(m, TK_OP_GLOBALAVGPOOL, "gap", 17, -1);                                      /* 17 -> v18 */
  tm_op(m, TK_OP_FLATTEN, "flatten", 18, -1);                                        /* 18 -> v19 */
  l = tm_linear(m, &r, "fc1", 19, 10, 12);                                           /* 19 -> v20 */
  tm_mask(&m->tensors[m->layers[l].weight], &r, keep);
  tm_bn(m, &r, "bn4", 20, 12);                                                       /* 20 -> v21 */
  l = tm_linear(m, &r, "fce", 19, 10, 12);                                           /* 21 -> v22 */
  tm_mask(&m->tensors[m->layers[l].weight], &r, 0.0);
  tm_op(m, TK_OP_ADD, "add3", 21, 22);                                               /* 22 -> v23 */
  tm_op(m, TK_OP_RELU, "relu5", 23, -1);                                             /* 23 -> v24 */
  tm_linear(m, &r, "fc2", 24, 12, 5);                                                /* 24 -> v25 */
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "ops_model: %s\n", tk_last_error());
    tk_model_free(m);
    return NULL;
  }
  return m;
}

/* A zoo model with random masks on its prunable tensors (keep < 1; keep == 1 leaves them
 * dense) and random BatchNorm statistics. */
static inline tk_model *zoo_model(const char *arch, uint64_t seed, double keep) {
  tk_model *m = NULL;
  if (tk_zoo_create(arch, 0, 0, 0, 0, seed, &m) != TK_OK) {
    fprintf(stderr, "zoo_model %s: %s\n", arch, tk_last_error());
    return NULL;
  }
  tk_rng r;
  tk_rng_seed(&r, seed ^ 0x9e3779b97f4a7c15ull);
  for (int i = 0; i < m->n_layers; i++)
    if (m->layers[i].op == TK_OP_BATCHNORM) tm_bn_random(m, &m->layers[i], &r);
  if (keep < 1.0)
    for (int t = 0; t < m->n_tensors; t++)
      if (m->tensors[t].prunable && tm_mask(&m->tensors[t], &r, keep) != 0) {
        tk_model_free(m);
        return NULL;
      }
  return m;
}

/* n images of raw pixels in the model's range. */
static inline float *tm_input(const tk_model *m, int n, uint64_t seed) {
  tk_rng r;
  tk_rng_seed(&r, seed);
  size_t count = (size_t)n * m->in_c * m->in_h * m->in_w;
  float *x = malloc(count * sizeof(float));
  for (size_t i = 0; x && i < count; i++) x[i] = tm_uniform(&r, m->lo, m->hi);
  return x;
}

/* Logits of the reference engine (BatchNorm in eval mode); NULL on failure. */
static inline float *tm_reference(tk_model *m, const float *x, int n) {
  tk_engine *e = NULL;
  float *y = malloc((size_t)n * m->classes * sizeof(float));
  if (!y || tk_engine_create(m, TK_ENGINE_REFERENCE, n, &e) != TK_OK || tk_infer(e, x, n, y) != TK_OK) {
    fprintf(stderr, "reference engine: %s\n", tk_last_error());
    free(y);
    tk_engine_free(e);
    return NULL;
  }
  tk_engine_free(e);
  return y;
}

#endif
