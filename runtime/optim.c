/* optim.c -- SGD (momentum, Nesterov, weight decay) that keeps pruned weights exactly zero
 * and can train HYDRA scores instead of weights.
 * See optim.h for the update rule.  Arithmetic is float32 like torch.optim.SGD on CPU. */
#include "optim.h"

#include <stdlib.h>
#include <string.h>

void tk_sgd_update(float *w, float *g, float *buf, const uint8_t *mask, int64_t n, float lr, float mu, float wd,
                   int nesterov) {
  if (mask) {
    for (int64_t i = 0; i < n; i++)
      if (!mask[i]) {
        w[i] = 0.0f;
        g[i] = 0.0f;
        if (buf) buf[i] = 0.0f;
      }
  }
  for (int64_t i = 0; i < n; i++) {
    float d = g[i] + wd * w[i];
    if (buf) {
      float b = mu * buf[i] + d;
      buf[i] = b;
      d = nesterov ? d + mu * b : b;
    }
    w[i] = w[i] - lr * d;
  }
  /* The masked positions computed 0 - lr*(0 + wd*0) = 0 above; assigning again keeps -0.0f
   * and any non-finite gradient from leaking into a pruned position. */
  if (mask) {
    for (int64_t i = 0; i < n; i++)
      if (!mask[i]) {
        w[i] = 0.0f;
        if (buf) buf[i] = 0.0f;
      }
  }
}

tk_status tk_sgd_create_targets(tk_model *m, const tk_sgd_opts *o, const uint8_t *target, tk_sgd **out) {
  *out = NULL;
  if (!(o->lr >= 0) || !(o->momentum >= 0 && o->momentum < 1) || !(o->wd >= 0))
    return tk_fail(TK_ERR_ARG, "sgd: lr %g, momentum %g, weight decay %g out of range", o->lr, o->momentum, o->wd);
  if (o->nesterov && o->momentum <= 0) return tk_fail(TK_ERR_ARG, "sgd: Nesterov needs a momentum above 0");
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (target[t] == TK_SGD_SCORES && !tt->scores)
      return tk_fail(TK_ERR_ARG, "sgd: tensor %s has no scores to train", tt->name);
    if (target[t] == TK_SGD_DATA && !tt->trainable)
      return tk_fail(TK_ERR_ARG, "sgd: tensor %s is not trainable", tt->name);
    if (target[t] > TK_SGD_SCORES) return tk_fail(TK_ERR_ARG, "sgd: tensor %s: unknown target %d", tt->name, target[t]);
  }
  size_t nt = (size_t)(m->n_tensors ? m->n_tensors : 1);
  tk_sgd *s = tk_calloc(1, sizeof *s);
  if (!s) return TK_ERR_NOMEM;
  s->o = *o;
  s->m = m;
  s->buf = tk_calloc(nt, sizeof(float *));
  s->target = tk_calloc(nt, 1);
  if (!s->buf || !s->target) goto nomem;
  if (m->n_tensors) memcpy(s->target, target, (size_t)m->n_tensors);
  if (o->momentum > 0)
    for (int t = 0; t < m->n_tensors; t++) {
      if (target[t] == TK_SGD_SKIP) continue;
      s->buf[t] = tk_alloc_aligned((size_t)m->tensors[t].numel * sizeof(float));
      if (!s->buf[t]) goto nomem;
    }
  *out = s;
  return TK_OK;
nomem:
  tk_sgd_free(s);
  return TK_ERR_NOMEM;
}

tk_status tk_sgd_create(tk_model *m, const tk_sgd_opts *o, tk_sgd **out) {
  *out = NULL;
  uint8_t *target = tk_calloc((size_t)(m->n_tensors ? m->n_tensors : 1), 1);
  if (!target) return TK_ERR_NOMEM;
  for (int t = 0; t < m->n_tensors; t++) target[t] = m->tensors[t].trainable ? TK_SGD_DATA : TK_SGD_SKIP;
  tk_status st = tk_sgd_create_targets(m, o, target, out);
  free(target);
  return st;
}

void tk_sgd_free(tk_sgd *s) {
  if (!s) return;
  if (s->buf)
    for (int t = 0; t < s->m->n_tensors; t++) free(s->buf[t]);
  free(s->buf);
  free(s->target);
  free(s);
}

void tk_sgd_step(tk_sgd *s, float *const *grads, double lr) {
  tk_model *m = s->m;
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (s->target[t] == TK_SGD_SKIP) continue;
    TK_ASSERT(grads[t] != NULL);
    int scores = s->target[t] == TK_SGD_SCORES;
    tk_sgd_update(scores ? tt->scores : tt->data, grads[t], s->buf[t], scores ? NULL : tt->mask, tt->numel, (float)lr,
                  (float)s->o.momentum, (float)s->o.wd, s->o.nesterov);
  }
}

tk_status tk_sgd_check_mask(const tk_sgd *s) {
  const tk_model *m = s->m;
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (!tt->mask) continue;
    for (int64_t i = 0; i < tt->numel; i++) {
      if (tt->mask[i]) continue;
      if (tt->data[i] != 0.0f)
        return tk_fail(TK_ERR_INTERNAL, "mask violated: tensor %s element %lld is pruned but holds %.9g", tt->name,
                       (long long)i, tt->data[i]);
      if (s->target[t] == TK_SGD_DATA && s->buf[t] && s->buf[t][i] != 0.0f)
        return tk_fail(TK_ERR_INTERNAL, "mask violated: tensor %s element %lld is pruned but its momentum is %.9g",
                       tt->name, (long long)i, s->buf[t][i]);
    }
  }
  return TK_OK;
}

static void momentum_free(tk_tensor *t) {
  free(t->name);
  free(t->data);
  free(t->mask);
  free(t->scores);
  memset(t, 0, sizeof *t);
}

tk_status tk_sgd_save(const tk_sgd *s, tk_model *m) {
  const tk_model *src = s->m;
  if (!m->train && !(m->train = tk_calloc(1, sizeof *m->train))) return TK_ERR_NOMEM;
  tk_train_state *ts = m->train;
  for (int i = 0; i < ts->n_momenta; i++) momentum_free(&ts->momenta[i]);
  free(ts->momenta);
  ts->momenta = NULL;
  ts->n_momenta = 0;
  int n = 0;
  for (int t = 0; t < src->n_tensors; t++) n += s->buf[t] != NULL;
  if (!n) return TK_OK;
  ts->momenta = tk_calloc((size_t)n, sizeof *ts->momenta);
  if (!ts->momenta) return TK_ERR_NOMEM;
  for (int t = 0; t < src->n_tensors; t++) {
    if (!s->buf[t]) continue;
    const tk_tensor *tt = &src->tensors[t];
    tk_tensor *d = &ts->momenta[ts->n_momenta++];
    d->name = tk_strdup(tt->name);
    d->ndim = tt->ndim;
    memcpy(d->shape, tt->shape, sizeof d->shape);
    d->numel = tt->numel;
    d->trainable = false;
    d->data = tk_alloc_aligned((size_t)tt->numel * sizeof(float));
    if (!d->name || !d->data) return TK_ERR_NOMEM;
    memcpy(d->data, s->buf[t], (size_t)tt->numel * sizeof(float));
  }
  return TK_OK;
}

tk_status tk_sgd_load(tk_sgd *s, const tk_train_state *from) {
  const tk_model *m = s->m;
  for (int t = 0; t < m->n_tensors; t++) {
    if (!s->buf[t]) continue;
    const tk_tensor *tt = &m->tensors[t];
    const tk_tensor *mo = NULL;
    for (int i = 0; from && i < from->n_momenta; i++)
      if (from->momenta[i].name && strcmp(from->momenta[i].name, tt->name) == 0) mo = &from->momenta[i];
    if (!mo) return tk_fail(TK_ERR_FORMAT, "train_state.momenta: no momentum for tensor %s", tt->name);
    if (mo->numel != tt->numel || !mo->data)
      return tk_fail(TK_ERR_FORMAT, "train_state.momenta: %s has %lld elements, the tensor %lld", tt->name,
                     (long long)mo->numel, (long long)tt->numel);
    memcpy(s->buf[t], mo->data, (size_t)tt->numel * sizeof(float));
  }
  return TK_OK;
}
