/* tiny_cnn.c -- see tiny_cnn.h */
#include "tiny_cnn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tk_model *tiny_cnn(const char *name, uint64_t seed, tk_op pool, int normalise, double sparsity) {
  tk_model *m = tk_model_new(name, TINY_NCLS, TINY_IC, TINY_IH, TINY_IW);
  if (normalise) {
    m->mean = malloc(TINY_IC * sizeof(float));
    m->std = malloc(TINY_IC * sizeof(float));
    for (int c = 0; c < TINY_IC; c++) m->mean[c] = 0.4f + 0.1f * c, m->std[c] = 0.25f + 0.05f * c;
  }
  int64_t s_cw[4] = {4, TINY_IC, 3, 3}, s4[1] = {4}, s_fw[2] = {TINY_NCLS, 36}, s5[1] = {TINY_NCLS};
  tk_model_add_tensor(m, "conv.weight", 4, s_cw);
  tk_model_add_tensor(m, "conv.bias", 1, s4);
  tk_model_add_tensor(m, "bn.weight", 1, s4);
  tk_model_add_tensor(m, "bn.bias", 1, s4);
  tk_model_add_tensor(m, "bn.running_mean", 1, s4);
  tk_model_add_tensor(m, "bn.running_var", 1, s4);
  tk_model_add_tensor(m, "fc.weight", 2, s_fw);
  tk_model_add_tensor(m, "fc.bias", 1, s5);
  m->tensors[TINY_CW].prunable = m->tensors[TINY_FW].prunable = true;
  m->tensors[TINY_RM].trainable = m->tensors[TINY_RV].trainable = false;
  tk_layer l = tk_layer_default(TK_OP_CONV2D, "conv", 0);
  l.kh = l.kw = 3;
  l.ph = l.pw = 1;
  l.weight = TINY_CW;
  l.bias = TINY_CB;
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_BATCHNORM, "bn", 1);
  l.weight = TINY_G, l.bias = TINY_B, l.mean = TINY_RM, l.var = TINY_RV;
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_RELU, "relu", 2);
  tk_model_add_layer(m, &l);
  l = tk_layer_default(pool, "pool", 3);
  l.kh = l.kw = l.sh = l.sw = 2;
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_FLATTEN, "flatten", 4);
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_LINEAR, "fc", 5);
  l.weight = TINY_FW, l.bias = TINY_FB;
  tk_model_add_layer(m, &l);
  tk_rng r;
  tk_rng_seed(&r, seed);
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    for (int64_t i = 0; i < tt->numel; i++) {
      double u = tk_rng_uniform(&r) - 0.5;
      if (t == TINY_RV || t == TINY_G) tt->data[i] = (float)(1.0 + 0.2 * u);
      else if (t == TINY_RM) tt->data[i] = (float)(0.1 * u);
      else tt->data[i] = (float)(t == TINY_FW ? 0.4 * u : 0.8 * u);
    }
  }
  if (sparsity > 0)
    for (int t = 0; t < m->n_tensors; t++) {
      tk_tensor *tt = &m->tensors[t];
      if (!tt->prunable) continue;
      uint8_t *mask = malloc((size_t)tt->numel);
      for (int64_t i = 0; i < tt->numel; i++) mask[i] = tk_rng_uniform(&r) >= sparsity;
      tk_tensor_set_mask(tt, mask);
      free(mask);
    }
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "test model: %s\n", tk_last_error());
    exit(1);
  }
  return m;
}

tk_dataset *tiny_data(int n, uint64_t seed) {
  enum { PER = TINY_IC * TINY_IH * TINY_IW };
  tk_dataset *d = calloc(1, sizeof *d);
  d->name = strdup("synthetic");
  d->n = n, d->c = TINY_IC, d->h = TINY_IH, d->w = TINY_IW, d->classes = TINY_NCLS;
  d->x = malloc((size_t)n * PER * sizeof(float));
  d->y = malloc((size_t)n * sizeof(int));
  tk_rng r;
  tk_rng_seed(&r, seed);
  for (int i = 0; i < n; i++) {
    int y = (int)tk_rng_below(&r, TINY_NCLS);
    d->y[i] = y;
    for (int k = 0; k < PER; k++)
      d->x[(size_t)i * PER + k] = (float)(0.3 * tk_rng_uniform(&r) + (k % TINY_NCLS == y ? 0.6 : 0.1));
  }
  return d;
}

void tiny_data_free(tk_dataset *d) {
  free(d->name);
  free(d->x);
  free(d->y);
  free(d);
}
