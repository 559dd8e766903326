/* attack.c -- L-inf PGD, FGSM and the TRADES KL attack on any engine (see attack.h for the
 * semantics and the invariants that worst-case tracking guarantees).
 *
 * Dimension letters: B = the engine's max batch, D = C*H*W values per image, K = classes.
 * Every buffer is allocated in tk_attacker_create; a run allocates nothing. */
#include "attack.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tk_attacker {
  tk_engine *e;
  tk_attack_opts o;
  int B, D, K;
  float *x0;      /* (B, D) clean images of the active rows */
  float *delta;   /* (B, D) perturbation of the active rows */
  float *xin;     /* (B, D) clamp(x0 + delta, lo, hi): what the model sees */
  float *grad;    /* (B, D) dL/dxin */
  float *logits;  /* (B, K) */
  float *dlogits; /* (B, K) */
  float *pclean;  /* (B, K) softmax of the clean logits (KL loss) */
  int *idx;       /* (B) active row -> example */
  int *yc;        /* (B) label of the active row */
  int *hit;       /* (B) the active row was fooled at this iterate */
  int *done;      /* (B) example already has its adversarial example */
  /* running statistics of every BatchNorm layer, saved around train-mode attacks */
  int n_bn;
  int *bn_tensor; /* (n_bn) tensor indices */
  float *bn_save; /* sum of their numels */
};

void tk_attack_opts_default(tk_attack_opts *o) {
  memset(o, 0, sizeof *o);
  o->eps = 8.0 / 255.0;
  o->alpha = 2.0 / 255.0;
  o->steps = 10;
  o->restarts = 1;
  o->start = TK_START_UNIFORM;
  o->loss = TK_ATTACK_LOSS_CE;
  o->bn = TK_BN_EVAL;
}

void tk_attacker_free(tk_attacker *a) {
  if (!a) return;
  free(a->x0);
  free(a->delta);
  free(a->xin);
  free(a->grad);
  free(a->logits);
  free(a->dlogits);
  free(a->pclean);
  free(a->idx);
  free(a->yc);
  free(a->hit);
  free(a->done);
  free(a->bn_tensor);
  free(a->bn_save);
  free(a);
}

tk_status tk_attacker_create(tk_engine *e, const tk_attack_opts *o, tk_attacker **out) {
  *out = NULL;
  if (!e || !o) return tk_fail(TK_ERR_ARG, "attack: no engine or options");
  if (!(o->eps >= 0) || !isfinite(o->eps)) return tk_fail(TK_ERR_ARG, "attack: eps %g must be >= 0", o->eps);
  if (!(o->alpha >= 0) || !isfinite(o->alpha))
    return tk_fail(TK_ERR_ARG, "attack: alpha %g must be >= 0", o->alpha);
  if (o->steps < 0 || o->steps > 1000000) return tk_fail(TK_ERR_ARG, "attack: steps %d out of range 0..1000000", o->steps);
  if (o->restarts < 1 || o->restarts > 100000)
    return tk_fail(TK_ERR_ARG, "attack: restarts %d out of range 1..100000", o->restarts);
  if ((unsigned)o->start > TK_START_ZERO) return tk_fail(TK_ERR_ARG, "attack: start %d unknown", (int)o->start);
  if ((unsigned)o->loss > TK_ATTACK_LOSS_KL) return tk_fail(TK_ERR_ARG, "attack: loss %d unknown", (int)o->loss);
  if (o->bn != TK_BN_EVAL && o->bn != TK_BN_TRAIN) return tk_fail(TK_ERR_ARG, "attack: bn mode %d unknown", (int)o->bn);
  const tk_model *m = e->m;
  tk_attacker *a = tk_calloc(1, sizeof *a);
  if (!a) return TK_ERR_NOMEM;
  a->e = e;
  a->o = *o;
  a->B = e->max_batch;
  a->D = m->in_c * m->in_h * m->in_w;
  a->K = m->classes;
  const size_t BD = (size_t)a->B * (size_t)a->D, BK = (size_t)a->B * (size_t)a->K;
  a->x0 = tk_alloc_aligned(BD * sizeof(float));
  a->delta = tk_alloc_aligned(BD * sizeof(float));
  a->xin = tk_alloc_aligned(BD * sizeof(float));
  a->grad = tk_alloc_aligned(BD * sizeof(float));
  a->logits = tk_alloc_aligned(BK * sizeof(float));
  a->dlogits = tk_alloc_aligned(BK * sizeof(float));
  a->pclean = tk_alloc_aligned(BK * sizeof(float));
  a->idx = tk_calloc((size_t)a->B, sizeof(int));
  a->yc = tk_calloc((size_t)a->B, sizeof(int));
  a->hit = tk_calloc((size_t)a->B, sizeof(int));
  a->done = tk_calloc((size_t)a->B, sizeof(int));
  int64_t bn_elems = 0;
  for (int i = 0; i < m->n_layers; i++)
    if (m->layers[i].op == TK_OP_BATCHNORM) a->n_bn += 2;
  a->bn_tensor = tk_calloc((size_t)(a->n_bn ? a->n_bn : 1), sizeof(int));
  if (a->bn_tensor) {
    int k = 0;
    for (int i = 0; i < m->n_layers; i++) {
      const tk_layer *l = &m->layers[i];
      if (l->op != TK_OP_BATCHNORM) continue;
      a->bn_tensor[k++] = l->mean;
      a->bn_tensor[k++] = l->var;
      bn_elems += m->tensors[l->mean].numel + m->tensors[l->var].numel;
    }
  }
  a->bn_save = tk_calloc((size_t)(bn_elems ? bn_elems : 1), sizeof(float));
  if (!a->x0 || !a->delta || !a->xin || !a->grad || !a->logits || !a->dlogits || !a->pclean || !a->idx ||
      !a->yc || !a->hit || !a->done || !a->bn_tensor || !a->bn_save) {
    tk_attacker_free(a);
    return tk_fail(TK_ERR_NOMEM, "attack: out of memory for batch %d of %d values", e->max_batch, a->D);
  }
  *out = a;
  return TK_OK;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

static int argmax_row(const float *z, int K) {
  int arg = 0;
  for (int k = 1; k < K; k++)
    if (z[k] > z[arg]) arg = k;
  return arg;
}

/* The loss gradients follow PyTorch's float32 arithmetic (F.cross_entropy = nll_loss of
 * log_softmax; log_softmax's backward g - exp(out) * sum(g)), not a more accurate one: for a
 * confidently classified example the true gradient is below float32 resolution, and what
 * the reference implementations computed there (e.g. exp(out_y) rounding to exactly 1, which
 * drops the label's term) is what robust accuracies were published with. */

/* log-softmax probabilities exp(z - max - log(sum exp(z - max))), all in float32 */
static void logsoftmax_probs(const float *z, int K, float *p) {
  float m = z[0], s = 0;
  for (int k = 1; k < K; k++) m = fmaxf(m, z[k]);
  for (int k = 0; k < K; k++) s += expf(z[k] - m);
  const float ls = logf(s);
  for (int k = 0; k < K; k++) p[k] = expf((z[k] - m) - ls);
}

/* softmax as F.softmax computes it: exp(z - max) / sum, float32 (the KL target) */
static void softmax_row(const float *z, int K, float *p) {
  float m = z[0], s = 0;
  for (int k = 1; k < K; k++) m = fmaxf(m, z[k]);
  for (int k = 0; k < K; k++) s += (p[k] = expf(z[k] - m));
  for (int k = 0; k < K; k++) p[k] /= s;
}

/* dL/dlogits of the attack loss for rows [0, na).
 *   CE, mean over the n examples of the call: g = -1/n at the label, d = g - q * sum(g)
 *   KL, sum over rows of KL(pclean || softmax(z)): g = -p, d = g - q * sum(g) = q * sum(p) - p */
static void loss_grad(tk_attacker *a, int na, int n) {
  const int K = a->K;
  const float inv_n = 1.0f / (float)n;
  for (int j = 0; j < na; j++) {
    float *d = a->dlogits + (size_t)j * K;
    logsoftmax_probs(a->logits + (size_t)j * K, K, d);
    if (a->o.loss == TK_ATTACK_LOSS_CE) {
      for (int k = 0; k < K; k++) d[k] = (k == a->yc[j] ? -inv_n : 0.0f) + d[k] * inv_n;
    } else {
      const float *p = a->pclean + (size_t)j * K;
      float sp = 0;
      for (int k = 0; k < K; k++) sp += p[k];
      for (int k = 0; k < K; k++) d[k] = -p[k] + d[k] * sp;
    }
  }
}

static void bn_snapshot(tk_attacker *a, int restore) {
  tk_model *m = a->e->m;
  float *s = a->bn_save;
  for (int k = 0; k < a->n_bn; k++) {
    tk_tensor *t = &m->tensors[a->bn_tensor[k]];
    if (restore) memcpy(t->data, s, (size_t)t->numel * sizeof(float));
    else memcpy(s, t->data, (size_t)t->numel * sizeof(float));
    s += t->numel;
  }
}

/* Drops the rows with hit[j] set, keeping the order of the others; returns the new count. */
static int compact_rows(tk_attacker *a, int na) {
  const size_t D = (size_t)a->D, K = (size_t)a->K;
  int w = 0;
  for (int j = 0; j < na; j++) {
    if (a->hit[j]) continue;
    if (w != j) {
      memcpy(a->x0 + w * D, a->x0 + j * D, D * sizeof(float));
      memcpy(a->delta + w * D, a->delta + j * D, D * sizeof(float));
      memcpy(a->pclean + w * K, a->pclean + j * K, K * sizeof(float));
      a->idx[w] = a->idx[j];
      a->yc[w] = a->yc[j];
    }
    a->hit[w] = 0;
    w++;
  }
  return w;
}

/* ---- the attack ------------------------------------------------------------------------------ */

static tk_status attack_batch(tk_attacker *a, const float *x, const int *y, int n, const float *delta0,
                              tk_rng *rng, float *x_adv, int *fooled) {
  tk_engine *e = a->e;
  const tk_attack_opts *o = &a->o;
  const size_t D = (size_t)a->D;
  const int K = a->K;
  const float lo = e->m->lo, hi = e->m->hi, eps = (float)o->eps, alpha = (float)o->alpha;
  const int track = !o->final_iterate;          /* y != NULL checked by the caller */
  const int judge_end = y && (track || fooled || o->restarts > 1);
  const int compact = o->bn == TK_BN_EVAL;
  tk_status st = TK_OK;

  memset(a->done, 0, (size_t)n * sizeof(int));
  if (track && y) {
    /* the clean image is the first candidate (delta = 0 lies in every eps-ball) */
    if ((st = tk_engine_forward(e, x, n, o->bn, a->logits)) != TK_OK) return st;
    for (int i = 0; i < n; i++)
      if (argmax_row(a->logits + (size_t)i * K, K) != y[i]) {
        a->done[i] = 1;
        memcpy(x_adv + i * D, x + i * D, D * sizeof(float));
      }
  }
  for (int r = 0; r < o->restarts; r++) {
    int na = 0;
    for (int i = 0; i < n; i++)
      if (!compact || !a->done[i]) a->idx[na++] = i;
    if (na == 0) break;
    for (int j = 0; j < na; j++) {
      const int i = a->idx[j];
      memcpy(a->x0 + j * D, x + i * D, D * sizeof(float));
      a->yc[j] = y ? y[i] : 0;
      a->hit[j] = 0;
    }
    /* the start: delta0, U(-eps, eps), 0.001 N(0, 1) or 0; then x0 + delta clamped to [lo, hi] */
    for (int j = 0; j < na; j++) {
      const float *xj = a->x0 + j * D;
      float *dj = a->delta + j * D;
      const float *given = r == 0 && delta0 ? delta0 + a->idx[j] * D : NULL;
      for (size_t k = 0; k < D; k++) {
        float d;
        if (given) d = given[k];
        else if (o->start == TK_START_UNIFORM) d = (float)(2.0 * tk_rng_uniform(rng) - 1.0) * eps;
        else if (o->start == TK_START_NORMAL_0001) d = 0.001f * (float)tk_rng_normal(rng);
        else d = 0.0f;
        dj[k] = clampf(xj[k] + d, lo, hi) - xj[k];
      }
    }
    if (o->loss == TK_ATTACK_LOSS_KL) {
      if ((st = tk_engine_forward(e, a->x0, na, o->bn, a->logits)) != TK_OK) return st;
      for (int j = 0; j < na; j++) softmax_row(a->logits + (size_t)j * K, K, a->pclean + (size_t)j * K);
    }
    for (int t = 0; t <= o->steps; t++) {
      for (size_t k = 0; k < (size_t)na * D; k++) a->xin[k] = clampf(a->x0[k] + a->delta[k], lo, hi);
      if (t == o->steps && !judge_end) break;
      if ((st = tk_engine_forward(e, a->xin, na, o->bn, a->logits)) != TK_OK) return st;
      int any_hit = 0;
      if (y && (track || t == o->steps)) {
        for (int j = 0; j < na; j++) {
          const int i = a->idx[j];
          if (a->done[i] || argmax_row(a->logits + (size_t)j * K, K) == a->yc[j]) continue;
          a->done[i] = 1;
          a->hit[j] = 1;
          any_hit = 1;
          memcpy(x_adv + i * D, a->xin + j * D, D * sizeof(float));
        }
      }
      if (t == o->steps) break;
      loss_grad(a, na, n);
      if ((st = tk_engine_backward(e, a->dlogits, a->grad, 0)) != TK_OK) return st;
      /* delta += alpha sign(g); project onto the eps-ball, then onto [lo, hi] */
      for (size_t k = 0; k < (size_t)na * D; k++) {
        const float g = a->grad[k];
        const float s = g > 0 ? 1.0f : g < 0 ? -1.0f : 0.0f;
        float d = a->delta[k] + alpha * s;
        d = fminf(fmaxf(d, -eps), eps);
        a->delta[k] = clampf(a->x0[k] + d, lo, hi) - a->x0[k];
      }
      if (compact && any_hit && (na = compact_rows(a, na)) == 0) break;
      if (!compact) memset(a->hit, 0, (size_t)na * sizeof(int));
    }
    /* examples not fooled keep the last iterate of the latest restart */
    for (int j = 0; j < na; j++) {
      const int i = a->idx[j];
      if (a->done[i]) continue;
      for (size_t k = 0; k < D; k++) x_adv[i * D + k] = clampf(a->x0[j * D + k] + a->delta[j * D + k], lo, hi);
    }
  }
  if (fooled)
    for (int i = 0; i < n; i++) fooled[i] = a->done[i];
  return TK_OK;
}

static tk_status run(tk_attacker *a, const float *x, const int *y, int n, const float *delta0, tk_rng *rng,
                     float *x_adv, int *fooled) {
  if (!a || !x || !x_adv) return tk_fail(TK_ERR_ARG, "attack: missing input or output batch");
  if (n < 1 || n > a->B) return tk_fail(TK_ERR_ARG, "attack: batch %d outside 1..%d (the engine's max_batch)", n, a->B);
  if (!y) {
    if (a->o.loss == TK_ATTACK_LOSS_CE) return tk_fail(TK_ERR_ARG, "attack: the cross-entropy attack needs labels");
    if (fooled || a->o.restarts > 1 || !a->o.final_iterate)
      return tk_fail(TK_ERR_ARG, "attack: without labels only final_iterate, 1 restart, no `fooled` output is possible");
  }
  if (!rng && !delta0 && a->o.start != TK_START_ZERO) return tk_fail(TK_ERR_ARG, "attack: a random start needs an rng");
  if (!rng && a->o.restarts > 1 && a->o.start != TK_START_ZERO)
    return tk_fail(TK_ERR_ARG, "attack: restarts need an rng");
  if (y)
    for (int i = 0; i < n; i++)
      if (y[i] < 0 || y[i] >= a->K) return tk_fail(TK_ERR_ARG, "attack: label %d of example %d outside 0..%d", y[i], i, a->K - 1);
  const int save_bn = a->o.bn == TK_BN_TRAIN && !a->o.update_bn_stats && a->n_bn > 0;
  if (save_bn) bn_snapshot(a, 0);
  tk_status st = attack_batch(a, x, y, n, delta0, rng, x_adv, fooled);
  if (save_bn) {
    bn_snapshot(a, 1);
    tk_status s2 = tk_engine_sync(a->e, 0);
    if (st == TK_OK) st = s2;
  }
  return st;
}

tk_status tk_attacker_run(tk_attacker *a, const float *x, const int *y, int n, tk_rng *rng, float *x_adv,
                          int *fooled) {
  return run(a, x, y, n, NULL, rng, x_adv, fooled);
}

tk_status tk_attacker_run_from(tk_attacker *a, const float *x, const int *y, int n, const float *delta0,
                               tk_rng *rng, float *x_adv, int *fooled) {
  if (!delta0) return tk_fail(TK_ERR_ARG, "attack: no start perturbation given");
  return run(a, x, y, n, delta0, rng, x_adv, fooled);
}
