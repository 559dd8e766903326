/* engine.c -- the public engine API and helpers shared by engine implementations. */
#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

tk_status tk_engine_alloc_grads(tk_engine *e) {
  const tk_model *m = e->m;
  e->grads = tk_calloc((size_t)(m->n_tensors ? m->n_tensors : 1), sizeof(float *));
  if (!e->grads) return TK_ERR_NOMEM;
  for (int t = 0; t < m->n_tensors; t++) {
    if (!m->tensors[t].trainable) continue;
    e->grads[t] = tk_alloc_aligned((size_t)m->tensors[t].numel * sizeof(float));
    if (!e->grads[t]) return TK_ERR_NOMEM;
  }
  return TK_OK;
}

void tk_engine_free_grads(tk_engine *e) {
  if (!e->grads) return;
  for (int t = 0; t < e->m->n_tensors; t++) free(e->grads[t]);
  free(e->grads);
  e->grads = NULL;
}

tk_status tk_engine_create(tk_model *m, tk_engine_kind kind, int max_batch, tk_engine **out) {
  *out = NULL;
  if (max_batch < 1) return tk_fail(TK_ERR_ARG, "max_batch: %d must be at least 1", max_batch);
  switch (kind) {
  case TK_ENGINE_REFERENCE: return tk_ref_engine_create(m, max_batch, out);
  case TK_ENGINE_COMPILED:
    return tk_compiled_engine_create(m, max_batch, NULL, out);
  case TK_ENGINE_DENSE:
    return tk_dense_engine_create(m, max_batch, out);
  }
  return tk_fail(TK_ERR_ARG, "engine kind %d unknown", (int)kind);
}

void tk_engine_free(tk_engine *e) {
  if (e) e->v->destroy(e);
}

tk_status tk_infer(tk_engine *e, const float *x, int n, float *logits) {
  if (n < 1 || n > e->max_batch)
    return tk_fail(TK_ERR_ARG, "batch: %d outside 1..%d (the engine's max_batch)", n, e->max_batch);
  return e->v->forward(e, x, n, TK_BN_EVAL, logits);
}

double tk_softmax_xent(const float *logits, const int *labels, int n, int classes, float *dlogits, int *correct) {
  double total = 0.0;
  int hits = 0;
  for (int i = 0; i < n; i++) {
    const float *z = logits + (size_t)i * classes;
    int y = labels[i], arg = 0;
    double mx = z[0];
    for (int k = 1; k < classes; k++)
      if (z[k] > mx) mx = z[k], arg = k;
    hits += arg == y;
    double s = 0.0;
    for (int k = 0; k < classes; k++) s += exp((double)z[k] - mx);
    double lse = mx + log(s);
    total += lse - (double)z[y];
    if (dlogits) {
      float *d = dlogits + (size_t)i * classes;
      for (int k = 0; k < classes; k++)
        d[k] = (float)((exp((double)z[k] - lse) - (k == y ? 1.0 : 0.0)) / n);
    }
  }
  if (correct) *correct = hits;
  return n ? total / n : 0.0;
}
