/* load_fixture.h -- a small model built through the construction API, for the loader tests
 * (test_load.c, test_badfiles.c) and the fuzz seed (tests/fuzz/).
 *
 * input 3x8x8 (normalised) -> conv1 3x3 pad 1 with bias (mask, scores) -> batchnorm -> relu
 * -> maxpool 2 -> conv2 3x3 pad 1 (mask) -> add (residual with the pool output) -> scale
 * -> global average pool -> flatten -> linear 6->5.  The element counts of the masked convs
 * (162 and 324) are not multiples of 8, so the last mask byte is partly padding.
 * fc.weight[0] holds FIXTURE_MAGIC so tests can find tensor data in the file.
 * Provenance and a training state (momenta, rng, config, log, best) are filled in.
 */
#ifndef TK_LOAD_FIXTURE_H
#define TK_LOAD_FIXTURE_H

#include "compiler/model.h"

#include <stdlib.h>
#include <string.h>

#define FIXTURE_MAGIC 1234.5678f

static float fixture_rand(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(*s >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static void fixture_fill(tk_tensor *t, uint64_t *s, float lo) {
  for (int64_t i = 0; i < t->numel; i++) {
    float v = fixture_rand(s);
    t->data[i] = lo > 0 ? lo + (v + 1.0f) : v;
  }
}

static void fixture_mask(tk_tensor *t, uint64_t *s) {
  uint8_t *mk = malloc((size_t)t->numel);
  for (int64_t i = 0; i < t->numel; i++) mk[i] = fixture_rand(s) > 0.0f;
  mk[t->numel - 1] = 1; /* the last element kept: its bit lives in the padded byte */
  tk_tensor_set_mask(t, mk);
  free(mk);
}

static tk_metric fixture_metric(const char *name, double v) {
  tk_metric m = {strdup(name), v};
  return m;
}

/* Returns the model with shapes inferred, or NULL. */
static tk_model *fixture_model(void) {
  uint64_t s = 42;
  tk_model *m = tk_model_new("fixture-net", 5, 3, 8, 8);
  if (!m) return NULL;
  m->lo = -0.0f; /* a negative zero must survive the round trip */
  m->hi = 1.0f;
  m->mean = malloc(3 * sizeof(float));
  m->std = malloc(3 * sizeof(float));
  const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, sd[3] = {0.2471f, 0.2435f, 0.2616f};
  memcpy(m->mean, mean, sizeof mean);
  memcpy(m->std, sd, sizeof sd);

  const int64_t w1[4] = {6, 3, 3, 3}, c6[1] = {6}, w2[4] = {6, 6, 3, 3}, sc[3] = {6, 1, 1}, fw[2] = {5, 6},
                fb[1] = {5};
  int t_w1 = tk_model_add_tensor(m, "conv1.weight", 4, w1);
  int t_b1 = tk_model_add_tensor(m, "conv1.bias", 1, c6);
  int t_g = tk_model_add_tensor(m, "bn1.weight", 1, c6);
  int t_be = tk_model_add_tensor(m, "bn1.bias", 1, c6);
  int t_rm = tk_model_add_tensor(m, "bn1.running_mean", 1, c6);
  int t_rv = tk_model_add_tensor(m, "bn1.running_var", 1, c6);
  int t_w2 = tk_model_add_tensor(m, "conv2.weight", 4, w2);
  int t_sc = tk_model_add_tensor(m, "scale.weight", 3, sc);
  int t_fw = tk_model_add_tensor(m, "fc.weight", 2, fw);
  int t_fb = tk_model_add_tensor(m, "fc.bias", 1, fb);
  if (t_fb < 0) goto fail;
  for (int i = 0; i < m->n_tensors; i++) fixture_fill(&m->tensors[i], &s, i == t_rv || i == t_g ? 0.5f : 0.0f);
  m->tensors[t_w1].prunable = m->tensors[t_w2].prunable = m->tensors[t_fw].prunable = true;
  m->tensors[t_w1].init = TK_INIT_KAIMING_NORMAL_FAN_OUT;
  m->tensors[t_b1].init = TK_INIT_TORCH_DEFAULT_BIAS;
  m->tensors[t_b1].init_fan_in = 27;
  m->tensors[t_rm].trainable = m->tensors[t_rv].trainable = false;
  m->tensors[t_sc].trainable = false;
  m->tensors[t_b1].data[2] = -0.0f;
  fixture_mask(&m->tensors[t_w1], &s);
  fixture_mask(&m->tensors[t_w2], &s);
  m->tensors[t_w1].scores = malloc((size_t)m->tensors[t_w1].numel * sizeof(float));
  for (int64_t i = 0; i < m->tensors[t_w1].numel; i++) m->tensors[t_w1].scores[i] = fixture_rand(&s);
  m->tensors[t_fw].data[0] = FIXTURE_MAGIC;

  tk_layer l = tk_layer_default(TK_OP_CONV2D, "conv1", 0);
  l.weight = t_w1, l.bias = t_b1, l.kh = l.kw = 3, l.ph = l.pw = 1;
  tk_model_add_layer(m, &l); /* -> value 1: 6x8x8 */
  l = tk_layer_default(TK_OP_BATCHNORM, "bn1", 1);
  l.weight = t_g, l.bias = t_be, l.mean = t_rm, l.var = t_rv, l.eps = 1e-3f, l.momentum = 0.05f;
  tk_model_add_layer(m, &l); /* 2 */
  l = tk_layer_default(TK_OP_RELU, "relu1", 2);
  tk_model_add_layer(m, &l); /* 3 */
  l = tk_layer_default(TK_OP_MAXPOOL, "pool1", 3);
  l.kh = l.kw = l.sh = l.sw = 2;
  tk_model_add_layer(m, &l); /* 4: 6x4x4 */
  l = tk_layer_default(TK_OP_CONV2D, "conv2", 4);
  l.weight = t_w2, l.kh = l.kw = 3, l.ph = l.pw = 1;
  tk_model_add_layer(m, &l); /* 5 */
  l = tk_layer_default(TK_OP_ADD, "add", 5);
  l.n_inputs = 2, l.inputs[1] = 4;
  tk_model_add_layer(m, &l); /* 6 */
  l = tk_layer_default(TK_OP_SCALE, "scale", 6);
  l.weight = t_sc;
  tk_model_add_layer(m, &l); /* 7 */
  l = tk_layer_default(TK_OP_GLOBALAVGPOOL, "gap", 7);
  tk_model_add_layer(m, &l); /* 8: 6x1x1 */
  l = tk_layer_default(TK_OP_FLATTEN, "flatten", 8);
  tk_model_add_layer(m, &l); /* 9 */
  l = tk_layer_default(TK_OP_LINEAR, "fc", 9);
  l.weight = t_fw, l.bias = t_fb, l.out_features = 5;
  if (tk_model_add_layer(m, &l) < 0) goto fail; /* 10: 5 logits */

  m->prov.method = strdup("synflow");
  m->prov.source = strdup("tests/unit/load_fixture.h");
  m->prov.created = strdup("2024-01-02T03:04:05Z");
  m->prov.notes = strdup("two lines\nof notes");
  m->prov.sparsity = 0.5;
  m->prov.n_metrics = 3;
  m->prov.metrics = malloc(3 * sizeof(tk_metric));
  m->prov.metrics[0] = fixture_metric("sa", 0.8125);
  m->prov.metrics[1] = fixture_metric("ra", 0.4531);
  m->prov.metrics[2] = fixture_metric("eps", 8.0 / 255.0);

  tk_train_state *ts = calloc(1, sizeof *ts);
  m->train = ts;
  ts->epoch = 3;
  ts->step = 1234567890123ll;
  ts->n_rng = 4;
  ts->rng = malloc(4 * sizeof(uint64_t));
  for (int i = 0; i < 4; i++) ts->rng[i] = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
  ts->config = strdup("{\"mode\": \"pgd\", \"eps\": 0.031}");
  ts->log = strdup("{\"epoch\": 1}\n{\"epoch\": 2}\n");
  ts->n_best = 1;
  ts->best = malloc(sizeof(tk_metric));
  ts->best[0] = fixture_metric("ra", 0.4531);
  const int mom_src[2] = {t_w1, t_fw};
  ts->momenta = calloc(2, sizeof(tk_tensor));
  for (int k = 0; k < 2; k++) {
    const tk_tensor *src = &m->tensors[mom_src[k]];
    tk_tensor *d = &ts->momenta[k];
    d->name = strdup(src->name);
    d->ndim = src->ndim;
    memcpy(d->shape, src->shape, sizeof d->shape);
    d->numel = src->numel;
    d->trainable = true;
    d->data = aligned_alloc(64, ((size_t)d->numel * sizeof(float) + 63) & ~(size_t)63);
    fixture_fill(d, &s, 0.0f);
    ts->n_momenta = k + 1;
  }
  if (tk_model_infer(m) != TK_OK) goto fail;
  return m;
fail:
  tk_model_free(m);
  return NULL;
}

#endif
