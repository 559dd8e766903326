/* train.c -- the training loop: recipes (st, pgd, fgsm-rs, trades, mart), learning-rate
 * schedules, epochs with validation, best models, checkpoints and exact resumption.
 * See train.h for the recipes' exact losses and the determinism contract.
 *
 * Dimension letters: n images in a batch, K classes, D = C*H*W values per image.
 * Every buffer is allocated when the trainer (or the run) is created; a step allocates
 * nothing. */
#include "train.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- names ---------------------------------------------------------------------------------- */

static const char *const g_mode_names[] = {
#define X(e, s) s,
    TK_TRAIN_MODES(X)
#undef X
};
static const char *const g_sched_names[] = {
#define X(e, s) s,
    TK_SCHEDULES(X)
#undef X
};

const char *tk_train_mode_name(tk_train_mode m) { return (unsigned)m < TK_TRAIN_MODE_COUNT ? g_mode_names[m] : "?"; }
const char *tk_schedule_name(tk_schedule_kind k) { return (unsigned)k < TK_SCHED_COUNT ? g_sched_names[k] : "?"; }

int tk_train_mode_parse(const char *s, tk_train_mode *out) {
  for (int i = 0; i < TK_TRAIN_MODE_COUNT; i++)
    if (strcmp(s, g_mode_names[i]) == 0) return *out = (tk_train_mode)i, 1;
  return 0;
}

int tk_schedule_parse(const char *s, tk_schedule_kind *out) {
  for (int i = 0; i < TK_SCHED_COUNT; i++)
    if (strcmp(s, g_sched_names[i]) == 0) return *out = (tk_schedule_kind)i, 1;
  return 0;
}

/* ---- schedules ------------------------------------------------------------------------------ */

void tk_lr_default_milestones(tk_lr_schedule *s) {
  int cand[2] = {s->epochs / 2, (3 * s->epochs) / 4};
  s->n_milestones = 0;
  for (int i = 0; i < 2; i++) {
    if (cand[i] < 1) continue;
    if (s->n_milestones && s->milestones[s->n_milestones - 1] == cand[i]) continue;
    s->milestones[s->n_milestones++] = cand[i];
  }
}

double tk_lr_at(const tk_lr_schedule *s, int epoch, int iter, int iters) {
  double E = s->epochs;
  switch (s->kind) {
  case TK_SCHED_CONSTANT: return s->lr;
  case TK_SCHED_STEP: {
    double lr = s->lr;
    for (int i = 0; i < s->n_milestones; i++)
      if (s->milestones[i] < epoch) lr *= s->gamma;
    return lr;
  }
  case TK_SCHED_COSINE: return s->lr * 0.5 * (1.0 + cos((double)(epoch - 1) / E * M_PI));
  case TK_SCHED_CYCLIC: {
    double t = (epoch - 1) + (double)(iter + 1) / (iters > 0 ? iters : 1);
    double peak = (double)((2 * s->epochs) / 5);
    if (t <= peak && peak > 0) return s->lr * t / peak;
    if (t >= E) return 0.0;
    return s->lr * (E - t) / (E - peak);
  }
  case TK_SCHED_COUNT: break;
  }
  return s->lr;
}

/* ---- options -------------------------------------------------------------------------------- */

void tk_train_opts_default(tk_train_opts *o) {
  memset(o, 0, sizeof *o);
  o->mode = TK_TRAIN_ST;
  o->epochs = 1;
  o->batch = 128;
  o->sgd.lr = 0.1;
  o->sgd.momentum = 0.9;
  o->sgd.wd = 5e-4;
  o->sgd.nesterov = 0;
  o->sched.kind = TK_SCHED_COSINE;
  o->sched.gamma = 0.1;
  o->eps = 8.0 / 255;
  o->alpha = 2.0 / 255;
  o->steps = 10;
  o->beta = 6.0;
  o->attack_bn = TK_BN_EVAL;
  o->val_alpha = 2.0 / 255;
  o->val_steps = 10;
  o->seed = 1;
  o->sparsity = -1;
}

tk_status tk_train_opts_check(tk_train_opts *o) {
  if ((unsigned)o->mode >= TK_TRAIN_MODE_COUNT) return tk_fail(TK_ERR_ARG, "--mode: unknown mode %d", (int)o->mode);
  if (o->epochs < 1 || o->epochs > 100000) return tk_fail(TK_ERR_ARG, "--epochs: %d out of range 1..100000", o->epochs);
  if (o->batch < 2 || o->batch > 65536) return tk_fail(TK_ERR_ARG, "--batch: %d out of range 2..65536", o->batch);
  if (!(o->sgd.lr >= 0) || !isfinite(o->sgd.lr)) return tk_fail(TK_ERR_ARG, "--lr: %g must be finite and >= 0", o->sgd.lr);
  if (!(o->sgd.momentum >= 0 && o->sgd.momentum < 1))
    return tk_fail(TK_ERR_ARG, "--momentum: %g out of range [0, 1)", o->sgd.momentum);
  if (!(o->sgd.wd >= 0) || !isfinite(o->sgd.wd)) return tk_fail(TK_ERR_ARG, "--wd: %g must be finite and >= 0", o->sgd.wd);
  if (o->sgd.nesterov && o->sgd.momentum <= 0) return tk_fail(TK_ERR_ARG, "--nesterov: needs --momentum above 0");
  if (!(o->eps >= 0) || !isfinite(o->eps)) return tk_fail(TK_ERR_ARG, "--eps: %g must be finite and >= 0", o->eps);
  if (!(o->alpha >= 0) || !isfinite(o->alpha)) return tk_fail(TK_ERR_ARG, "--alpha: %g must be finite and >= 0", o->alpha);
  if (!(o->val_alpha >= 0) || !isfinite(o->val_alpha))
    return tk_fail(TK_ERR_ARG, "--val-alpha: %g must be finite and >= 0", o->val_alpha);
  if (!(o->beta >= 0) || !isfinite(o->beta)) return tk_fail(TK_ERR_ARG, "--beta: %g must be finite and >= 0", o->beta);
  if (o->mode == TK_TRAIN_FGSM_RS) o->steps = 1;
  if (o->steps < 1 || o->steps > 10000) return tk_fail(TK_ERR_ARG, "--steps: %d out of range 1..10000", o->steps);
  if (o->val_steps < 0 || o->val_steps > 10000)
    return tk_fail(TK_ERR_ARG, "--val-steps: %d out of range 0..10000", o->val_steps);
  if (o->crop_pad < 0 || o->crop_pad > 64) return tk_fail(TK_ERR_ARG, "--augment: crop padding %d out of range 0..64", o->crop_pad);
  if (o->attack_bn != TK_BN_EVAL && o->attack_bn != TK_BN_TRAIN) return tk_fail(TK_ERR_ARG, "--attack-bn: unknown mode");
  if ((unsigned)o->sched.kind >= TK_SCHED_COUNT) return tk_fail(TK_ERR_ARG, "--schedule: unknown schedule");
  if (o->prune_scores) {
    if (!(o->sparsity >= 0 || o->sparsity <= 1)) return tk_fail(TK_ERR_ARG, "--sparsity: not a number");
    if (o->sparsity < 0) return tk_fail(TK_ERR_ARG, "--sparsity: required with --prune-scores");
    if (!(o->sparsity <= 1)) return tk_fail(TK_ERR_ARG, "--sparsity: %g out of range [0, 1]", o->sparsity);
  } else {
    if (o->sparsity >= 0)
      return tk_fail(TK_ERR_ARG, "--sparsity: only with --prune-scores (pruning itself: ticket prune)");
    if (o->scaled_score_init) return tk_fail(TK_ERR_ARG, "--scaled-score-init: only with --prune-scores");
    if (o->freeze_bn) return tk_fail(TK_ERR_ARG, "--freeze-bn: only with --prune-scores");
  }
  o->sched.lr = o->sgd.lr;
  o->sched.epochs = o->epochs;
  if (!(o->sched.gamma > 0)) o->sched.gamma = 0.1;
  if (o->sched.kind == TK_SCHED_STEP && o->sched.n_milestones == 0) tk_lr_default_milestones(&o->sched);
  if (o->sched.n_milestones < 0 || o->sched.n_milestones > TK_MAX_MILESTONES)
    return tk_fail(TK_ERR_ARG, "--milestones: at most %d", TK_MAX_MILESTONES);
  for (int i = 0; i < o->sched.n_milestones; i++)
    if (o->sched.milestones[i] < 1 || (i && o->sched.milestones[i] < o->sched.milestones[i - 1]))
      return tk_fail(TK_ERR_ARG, "--milestones: %d must be >= 1 and non-decreasing", o->sched.milestones[i]);
  return TK_OK;
}

/* ---- the trainer ---------------------------------------------------------------------------- */

struct tk_trainer {
  tk_engine *e;
  tk_model *m;
  tk_train_opts o;
  tk_sgd *sgd;
  tk_attacker *atk;   /* training attack; NULL for st */
  int D, K, max_n;
  float *xadv;        /* (n, D) adversarial batch */
  float *z, *za, *zr; /* (n, K) clean, adversarial, recomputed clean logits */
  float *dz, *dza;    /* (n, K) */
  double *work;       /* 3 K doubles for the losses */
  float **acc;        /* per trainable tensor: gradient accumulated over two backward passes */
  float **snap;       /* per BatchNorm running-statistics tensor: a copy (mart) */
  int have_adv;
  tk_hydra *hydra;    /* prune_scores: frozen weights, masks */
  float **sgrad;      /* prune_scores, per prunable tensor: the scores' gradient */
  float **pgrad;      /* prune_scores: n_tensors gradient pointers handed to the optimizer */
};

static int mode_two_branch(tk_train_mode m) { return m == TK_TRAIN_TRADES || m == TK_TRAIN_MART; }

void tk_trainer_free(tk_trainer *t) {
  if (!t) return;
  if (t->atk) tk_attacker_free(t->atk);
  tk_sgd_free(t->sgd);
  free(t->xadv);
  free(t->z);
  free(t->za);
  free(t->zr);
  free(t->dz);
  free(t->dza);
  free(t->work);
  if (t->acc)
    for (int i = 0; i < t->m->n_tensors; i++) free(t->acc[i]);
  free(t->acc);
  if (t->snap)
    for (int i = 0; i < t->m->n_tensors; i++) free(t->snap[i]);
  free(t->snap);
  if (t->sgrad)
    for (int i = 0; i < t->m->n_tensors; i++) free(t->sgrad[i]);
  free(t->sgrad);
  free(t->pgrad);
  tk_hydra_free(t->hydra);
  free(t);
}

/* prune_scores: the model into the running form, an optimizer of the scores (and of the
 * BatchNorm affine parameters unless frozen), the score-gradient buffers. */
static tk_status hydra_setup(tk_trainer *t) {
  tk_model *m = t->m;
  size_t nt = (size_t)(m->n_tensors ? m->n_tensors : 1);
  int cleared = 0;
  for (int i = 0; i < m->n_tensors; i++)
    if (m->tensors[i].prunable && !t->e->grads[i])
      return tk_fail(TK_ERR_ARG, "tensor %s: prunable but not trainable: its scores get no gradient",
                     m->tensors[i].name);
  tk_status st = tk_hydra_create(m, t->o.sparsity, &t->hydra, &cleared);
  if (st != TK_OK) return st;
  if ((st = tk_engine_sync(t->e, cleared)) != TK_OK) return st;
  uint8_t *target = tk_calloc(nt, 1);
  if (!target || !(t->sgrad = tk_calloc(nt, sizeof(float *))) || !(t->pgrad = tk_calloc(nt, sizeof(float *)))) {
    free(target);
    return TK_ERR_NOMEM;
  }
  for (int i = 0; i < m->n_tensors; i++)
    if (m->tensors[i].prunable) {
      target[i] = TK_SGD_SCORES;
      if (!(t->sgrad[i] = tk_alloc_aligned((size_t)m->tensors[i].numel * sizeof(float)))) {
        free(target);
        return TK_ERR_NOMEM;
      }
    }
  if (!t->o.freeze_bn)
    for (int l = 0; l < m->n_layers; l++) {
      const tk_layer *ly = &m->layers[l];
      if (ly->op != TK_OP_BATCHNORM) continue;
      if (ly->weight >= 0 && m->tensors[ly->weight].trainable) target[ly->weight] = TK_SGD_DATA;
      if (ly->bias >= 0 && m->tensors[ly->bias].trainable) target[ly->bias] = TK_SGD_DATA;
    }
  st = tk_sgd_create_targets(m, &t->o.sgd, target, &t->sgd);
  free(target);
  return st;
}

tk_status tk_trainer_create(tk_engine *e, const tk_train_opts *o, tk_trainer **out) {
  *out = NULL;
  tk_model *m = e->m;
  if (!e->grads) return tk_fail(TK_ERR_UNSUPPORTED, "engine %s: has no parameter gradients", e->v->name);
  for (int i = 0; i < m->n_tensors; i++)
    if (m->tensors[i].trainable && !e->grads[i])
      return tk_fail(TK_ERR_INTERNAL, "engine %s: no gradient for trainable tensor %s", e->v->name, m->tensors[i].name);
  tk_trainer *t = tk_calloc(1, sizeof *t);
  if (!t) return TK_ERR_NOMEM;
  t->e = e;
  t->m = m;
  t->o = *o;
  t->D = (int)tk_shape_numel((tk_shape){m->in_c, m->in_h, m->in_w});
  t->K = m->classes;
  t->max_n = e->max_batch;
  size_t nd = (size_t)t->max_n * t->D * sizeof(float), nk = (size_t)t->max_n * t->K * sizeof(float);
  tk_status st = o->prune_scores ? hydra_setup(t) : tk_sgd_create(m, &o->sgd, &t->sgd);
  if (st != TK_OK) goto fail;
  st = TK_ERR_NOMEM;
  if (!(t->z = tk_alloc_aligned(nk)) || !(t->za = tk_alloc_aligned(nk)) || !(t->zr = tk_alloc_aligned(nk)) ||
      !(t->dz = tk_alloc_aligned(nk)) || !(t->dza = tk_alloc_aligned(nk)) ||
      !(t->work = tk_alloc_aligned(3 * (size_t)t->K * sizeof(double))))
    goto fail;
  if (o->mode != TK_TRAIN_ST) {
    if (!(t->xadv = tk_alloc_aligned(nd))) goto fail;
    tk_attack_opts ao;
    tk_attack_opts_default(&ao);
    ao.eps = o->eps;
    ao.alpha = o->alpha;
    ao.steps = o->mode == TK_TRAIN_FGSM_RS ? 1 : o->steps;
    ao.restarts = 1;
    ao.start = (o->mode == TK_TRAIN_TRADES || o->mode == TK_TRAIN_MART) ? TK_START_NORMAL_0001 : TK_START_UNIFORM;
    ao.loss = o->mode == TK_TRAIN_TRADES ? TK_ATTACK_LOSS_KL : TK_ATTACK_LOSS_CE;
    ao.bn = o->attack_bn;
    ao.final_iterate = 1;                        /* the last iterate, as the reference recipes */
    ao.update_bn_stats = o->attack_bn == TK_BN_TRAIN; /* Double-Win: attack forwards update them */
    if ((st = tk_attacker_create(e, &ao, &t->atk)) != TK_OK) goto fail;
    st = TK_ERR_NOMEM;
  }
  if (mode_two_branch(o->mode)) {
    if (!(t->acc = tk_calloc((size_t)m->n_tensors, sizeof(float *)))) goto fail;
    if (!(t->snap = tk_calloc((size_t)m->n_tensors, sizeof(float *)))) goto fail;
    for (int i = 0; i < m->n_tensors; i++)
      if (m->tensors[i].trainable && !(t->acc[i] = tk_alloc_aligned((size_t)m->tensors[i].numel * sizeof(float))))
        goto fail;
    for (int l = 0; l < m->n_layers; l++) {
      const tk_layer *ly = &m->layers[l];
      if (ly->op != TK_OP_BATCHNORM) continue;
      int ids[2] = {ly->mean, ly->var};
      for (int k = 0; k < 2; k++)
        if (ids[k] >= 0 && !t->snap[ids[k]] &&
            !(t->snap[ids[k]] = tk_alloc_aligned((size_t)m->tensors[ids[k]].numel * sizeof(float))))
          goto fail;
    }
  }
  *out = t;
  return TK_OK;
fail:
  tk_trainer_free(t);
  return st;
}

tk_sgd *tk_trainer_sgd(tk_trainer *t) { return t->sgd; }
tk_hydra *tk_trainer_hydra(tk_trainer *t) { return t->hydra; }
const float *tk_trainer_last_adv(const tk_trainer *t) { return t->have_adv ? t->xadv : NULL; }

/* ---- losses: value and gradients with respect to the logits (double inside) ---------------- */

/* log-softmax of one row into ls (K doubles) */
static void log_softmax_row(const float *z, int K, double *ls) {
  double mx = z[0];
  for (int k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
  double s = 0;
  for (int k = 0; k < K; k++) s += exp((double)z[k] - mx);
  double lse = mx + log(s);
  for (int k = 0; k < K; k++) ls[k] = (double)z[k] - lse;
}

static int argmax_row(const float *z, int K) {
  int a = 0;
  for (int k = 1; k < K; k++)
    if (z[k] > z[a]) a = k;
  return a;
}

/* TRADES: CE(z, y) (mean) + beta/n * sum_i KL(p_i || q_i); gradients into dz (clean branch,
 * both terms) and dza (adversarial branch). */
double tk_trades_loss(const float *z, const float *za, const int *y, int n, int K, double beta, float *dz,
                          float *dza, double *work) {
  double *lp = work, *lq = work + K, total = 0;
  for (int i = 0; i < n; i++) {
    const float *zi = z + (size_t)i * K, *zai = za + (size_t)i * K;
    float *dzi = dz + (size_t)i * K, *dzai = dza + (size_t)i * K;
    log_softmax_row(zi, K, lp);
    log_softmax_row(zai, K, lq);
    double kl = 0;
    for (int k = 0; k < K; k++) {
      double p = exp(lp[k]);
      if (p > 0) kl += p * (lp[k] - lq[k]);
    }
    total += -lp[y[i]] + beta * kl;
    for (int k = 0; k < K; k++) {
      double p = exp(lp[k]), q = exp(lq[k]);
      double h = p > 0 ? lp[k] - lq[k] : 0.0;
      /* d KL / d z_k = p_k (h_k - KL);  d KL / d z'_k = q_k - p_k */
      dzi[k] = (float)(((p - (k == y[i])) + beta * p * (h - kl)) / n);
      dzai[k] = (float)(beta * (q - p) / n);
    }
  }
  return total / n;
}

/* MART (YisenWang/MART mart.py), see train.h. */
double tk_mart_loss(const float *z, const float *za, const int *y, int n, int K, double beta, float *dz,
                        float *dza, double *work) {
  double *lp = work, *lq = work + K, *g = work + 2 * K, total = 0;
  for (int i = 0; i < n; i++) {
    const float *zi = z + (size_t)i * K, *zai = za + (size_t)i * K;
    float *dzi = dz + (size_t)i * K, *dzai = dza + (size_t)i * K;
    int yi = y[i];
    log_softmax_row(zi, K, lp);
    log_softmax_row(zai, K, lq);
    /* y' = the most likely class under q other than y (argsort's top two) */
    int t1 = -1;
    for (int k = 0; k < K; k++)
      if (k != yi && (t1 < 0 || lq[k] > lq[t1])) t1 = k;
    if (t1 < 0) t1 = yi; /* one class only */
    double qt = exp(lq[t1]);
    double ce = -lq[yi];
    double nll = -log(1.0001 - qt + 1e-12);
    double py = exp(lp[yi]), w = 1.0000001 - py;
    double kl = 0;
    for (int k = 0; k < K; k++) {
      double p = exp(lp[k]);
      if (p > 0) kl += p * (lp[k] - log(exp(lq[k]) + 1e-12));
    }
    total += ce + nll + beta * kl * w;
    /* adversarial branch */
    double spr = 0; /* sum_k p_k r_k with r_k = q_k / (q_k + 1e-12) */
    for (int k = 0; k < K; k++) {
      double q = exp(lq[k]);
      spr += exp(lp[k]) * q / (q + 1e-12);
    }
    for (int k = 0; k < K; k++) {
      double p = exp(lp[k]), q = exp(lq[k]);
      double d_ce = q - (k == yi);
      double d_nll = qt * ((k == t1) - q) / (1.0001 + 1e-12 - qt);
      double d_kl = -p * q / (q + 1e-12) + q * spr;
      dzai[k] = (float)((d_ce + d_nll + beta * w * d_kl) / n);
    }
    /* clean branch: g_k = d(w * KL)/dp_k = w (log p_k + 1 - log(q_k + 1e-12)) - KL [k == y];
     * d/dz_j = p_j (g_j - sum_k p_k g_k) */
    double sg = 0;
    for (int k = 0; k < K; k++) {
      double p = exp(lp[k]);
      g[k] = (p > 0 ? w * (lp[k] + 1.0 - log(exp(lq[k]) + 1e-12)) : 0.0) - (k == yi ? kl : 0.0);
      sg += p * g[k];
    }
    for (int k = 0; k < K; k++) dzi[k] = (float)(beta * exp(lp[k]) * (g[k] - sg) / n);
  }
  return total / n;
}

/* ---- adversarial examples ----------------------------------------------------------------- */

static tk_status make_adv(tk_trainer *t, const float *x, const int *y, int n, const float *start, tk_rng *rng) {
  const int *yy = t->o.mode == TK_TRAIN_TRADES ? NULL : y;
  t->have_adv = 1;
  if (start) return tk_attacker_run_from(t->atk, x, yy, n, start, rng, t->xadv, NULL);
  return tk_attacker_run(t->atk, x, yy, n, rng, t->xadv, NULL);
}

/* ---- one step ------------------------------------------------------------------------------- */

static void snapshot_bn(tk_trainer *t, int restore) {
  for (int i = 0; i < t->m->n_tensors; i++) {
    if (!t->snap[i]) continue;
    size_t bytes = (size_t)t->m->tensors[i].numel * sizeof(float);
    if (restore) memcpy(t->m->tensors[i].data, t->snap[i], bytes);
    else memcpy(t->snap[i], t->m->tensors[i].data, bytes);
  }
}

static void grads_copy(tk_trainer *t, int add) {
  const tk_model *m = t->m;
  for (int i = 0; i < m->n_tensors; i++) {
    if (!t->acc[i]) continue;
    float *a = t->acc[i];
    const float *g = t->e->grads[i];
    int64_t n = m->tensors[i].numel;
    if (add)
      for (int64_t k = 0; k < n; k++) a[k] += g[k];
    else
      memcpy(a, g, (size_t)n * sizeof(float));
  }
}

static int count_correct(const float *z, const int *y, int n, int K) {
  int c = 0;
  for (int i = 0; i < n; i++) c += argmax_row(z + (size_t)i * K, K) == y[i];
  return c;
}

tk_status tk_trainer_step(tk_trainer *t, const float *x, const int *y, int n, const float *start, double lr,
                          tk_rng *rng, tk_step_stats *out) {
  tk_engine *e = t->e;
  int K = t->K;
  tk_status st;
  if (n < 1 || n > t->max_n) return tk_fail(TK_ERR_ARG, "batch: %d images, the engine takes 1..%d", n, t->max_n);
  for (int i = 0; i < n; i++)
    if (y[i] < 0 || y[i] >= K) return tk_fail(TK_ERR_ARG, "labels: label %d of image %d outside 0..%d", y[i], i, K - 1);
  double loss = 0;
  int correct = 0;
  float *const *grads = e->grads;
  t->have_adv = 0;
  switch (t->o.mode) {
  case TK_TRAIN_ST:
    if ((st = tk_engine_forward(e, x, n, TK_BN_TRAIN, t->z)) != TK_OK) return st;
    loss = tk_softmax_xent(t->z, y, n, K, t->dz, &correct);
    if ((st = tk_engine_backward(e, t->dz, NULL, 1)) != TK_OK) return st;
    break;
  case TK_TRAIN_PGD:
  case TK_TRAIN_FGSM_RS:
    if ((st = make_adv(t, x, y, n, start, rng)) != TK_OK) return st;
    if ((st = tk_engine_forward(e, t->xadv, n, TK_BN_TRAIN, t->za)) != TK_OK) return st;
    loss = tk_softmax_xent(t->za, y, n, K, t->dza, &correct);
    if ((st = tk_engine_backward(e, t->dza, NULL, 1)) != TK_OK) return st;
    break;
  case TK_TRAIN_TRADES:
  case TK_TRAIN_MART: {
    int trades = t->o.mode == TK_TRAIN_TRADES;
    if ((st = make_adv(t, x, y, n, start, rng)) != TK_OK) return st;
    if ((st = tk_engine_forward(e, x, n, TK_BN_TRAIN, t->z)) != TK_OK) return st;
    if ((st = tk_engine_forward(e, t->xadv, n, TK_BN_TRAIN, t->za)) != TK_OK) return st;
    loss = trades ? tk_trades_loss(t->z, t->za, y, n, K, t->o.beta, t->dz, t->dza, t->work)
                  : tk_mart_loss(t->z, t->za, y, n, K, t->o.beta, t->dz, t->dza, t->work);
    correct = count_correct(trades ? t->z : t->za, y, n, K);
    if ((st = tk_engine_backward(e, t->dza, NULL, 1)) != TK_OK) return st;
    grads_copy(t, 0);
    /* the clean branch again, so that the engine holds its activations for the backward:
     * TRADES forwards x a second time anyway (the KL target); MART restores the running
     * statistics so that they see two updates, as in PyTorch */
    if (!trades) snapshot_bn(t, 0);
    if ((st = tk_engine_forward(e, x, n, TK_BN_TRAIN, t->zr)) != TK_OK) return st;
    if (!trades) snapshot_bn(t, 1);
    if ((st = tk_engine_backward(e, t->dz, NULL, 1)) != TK_OK) return st;
    grads_copy(t, 1);
    grads = t->acc;
    break;
  }
  case TK_TRAIN_MODE_COUNT:
    return tk_fail(TK_ERR_ARG, "train: unknown mode");
  }
  if (!isfinite(loss))
    return tk_fail(TK_ERR_ARG, "train: the loss is %g (diverged; try a lower --lr)", loss);
  if (t->hydra) {
    /* the scores' straight-through gradient in place of the weights' */
    tk_hydra_score_grads(t->hydra, grads, t->sgrad);
    for (int i = 0; i < t->m->n_tensors; i++) t->pgrad[i] = t->sgrad[i] ? t->sgrad[i] : grads[i];
    grads = t->pgrad;
  }
  tk_sgd_step(t->sgd, grads, lr);
  if (t->hydra && (st = tk_hydra_refresh(t->hydra)) != TK_OK) return st;
  if ((st = tk_engine_sync(e, 0)) != TK_OK) return st;
  if (out) {
    out->loss = loss;
    out->correct = correct;
    out->n = n;
  }
  return TK_OK;
}

/* ---- small string helpers -------------------------------------------------------------------- */

typedef struct { char *s; size_t len, cap; int oom; } sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->cap - b->len;
    int k = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? room : 0, fmt, ap);
    va_end(ap);
    if (k < 0) { b->oom = 1; return; }
    if (b->s && (size_t)k < room) { b->len += (size_t)k; return; }
    size_t cap = (b->cap ? b->cap * 2 : 256) + (size_t)k;
    char *ns = realloc(b->s, cap);
    if (!ns) { b->oom = 1; return; }
    b->s = ns;
    b->cap = cap;
  }
}

/* Flat JSON objects of our own making: {"key": value, ...}; values are numbers, strings,
 * null, true/false or arrays/objects compared as raw text. */
static const char *json_skip_ws(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
  return p;
}

static const char *json_string_end(const char *p) { /* p at the opening quote */
  for (p++; *p && *p != '"'; p++)
    if (*p == '\\' && p[1]) p++;
  return *p ? p + 1 : p;
}

static const char *json_value_end(const char *p) {
  int depth = 0;
  for (; *p; p++) {
    if (*p == '"') { p = json_string_end(p) - 1; continue; }
    if (*p == '[' || *p == '{') depth++;
    else if (*p == ']' || *p == '}') {
      if (!depth) return p;
      depth--;
    } else if (*p == ',' && !depth) return p;
  }
  return p;
}

/* Finds key in obj; returns value start and length, or NULL. */
static const char *json_find(const char *obj, const char *key, size_t *len) {
  const char *p = json_skip_ws(obj);
  if (*p != '{') return NULL;
  p++;
  size_t kl = strlen(key);
  for (;;) {
    p = json_skip_ws(p);
    if (*p != '"') return NULL;
    const char *ks = p + 1, *ke = json_string_end(p);
    p = json_skip_ws(ke);
    if (*p != ':') return NULL;
    p = json_skip_ws(p + 1);
    const char *ve = json_value_end(p);
    size_t vl = (size_t)(ve - p);
    while (vl && (p[vl - 1] == ' ' || p[vl - 1] == '\n')) vl--;
    if ((size_t)(ke - 1 - ks) == kl && memcmp(ks, key, kl) == 0) {
      *len = vl;
      return p;
    }
    if (*ve != ',') return NULL;
    p = ve + 1;
  }
}

char *tk_config_diff(const char *a, const char *b) {
  const char *objs[2] = {a ? a : "{}", b ? b : "{}"};
  for (int side = 0; side < 2; side++) {
    const char *p = json_skip_ws(objs[side]);
    if (*p != '{') return tk_strdup("config: not a JSON object");
    p++;
    for (;;) {
      p = json_skip_ws(p);
      if (*p != '"') break;
      const char *ks = p + 1, *ke = json_string_end(p);
      char key[128];
      size_t kl = (size_t)(ke - 1 - ks);
      if (kl >= sizeof key) kl = sizeof key - 1;
      memcpy(key, ks, kl);
      key[kl] = 0;
      size_t la = 0, lb = 0;
      const char *va = json_find(objs[0], key, &la), *vb = json_find(objs[1], key, &lb);
      if (!va || !vb || la != lb || memcmp(va, vb, la) != 0) {
        sbuf s = {0};
        sb_printf(&s, "%s: %.*s vs %.*s", key, va ? (int)la : 8, va ? va : "(absent)", vb ? (int)lb : 8,
                  vb ? vb : "(absent)");
        return s.s;
      }
      p = json_skip_ws(ke);
      if (*p != ':') break;
      p = json_value_end(json_skip_ws(p + 1));
      if (*p != ',') break;
      p++;
    }
  }
  return NULL;
}

/* ---- the run: state kept in the TrainState ------------------------------------------------ */

/* TrainState.best holds these run metrics (names are part of the checkpoint format). */
enum { RM_BEST_SA, RM_BEST_SA_EPOCH, RM_BEST_RA, RM_BEST_RA_EPOCH, RM_EPOCH_LOSS, RM_EPOCH_CORRECT, RM_EPOCH_SEEN,
       RM_COUNT };
static const char *const g_rm_names[RM_COUNT] = {"best_sa", "best_sa_epoch", "best_ra", "best_ra_epoch",
                                                 "epoch_loss_sum", "epoch_correct", "epoch_seen"};

typedef struct {
  double v[RM_COUNT];
} run_metrics;

int tk_train_state_resumable(const tk_model *m) {
  return m->train && m->train->n_rng == 4 && m->train->rng && m->train->config;
}

static tk_status state_set_metrics(tk_train_state *ts, const run_metrics *rm) {
  for (int i = 0; i < ts->n_best; i++) free(ts->best[i].name);
  free(ts->best);
  ts->n_best = 0;
  if (!(ts->best = tk_calloc(RM_COUNT, sizeof *ts->best))) return TK_ERR_NOMEM;
  for (int i = 0; i < RM_COUNT; i++) {
    if (!(ts->best[i].name = tk_strdup(g_rm_names[i]))) return TK_ERR_NOMEM;
    ts->best[i].value = rm->v[i];
    ts->n_best = i + 1;
  }
  return TK_OK;
}

static void state_get_metrics(const tk_train_state *ts, run_metrics *rm) {
  for (int i = 0; i < RM_COUNT; i++) {
    rm->v[i] = (i == RM_BEST_SA || i == RM_BEST_RA) ? -1 : 0;
    for (int k = 0; k < ts->n_best; k++)
      if (ts->best[k].name && strcmp(ts->best[k].name, g_rm_names[i]) == 0) rm->v[i] = ts->best[k].value;
  }
}

static tk_status set_string(char **dst, const char *s) {
  char *d = tk_strdup(s ? s : "");
  if (!d) return TK_ERR_NOMEM;
  free(*dst);
  *dst = d;
  return TK_OK;
}

/* Sets (or replaces) a provenance metric. */
static tk_status prov_set_metric(tk_model *m, const char *name, double v) {
  for (int i = 0; i < m->prov.n_metrics; i++)
    if (m->prov.metrics[i].name && strcmp(m->prov.metrics[i].name, name) == 0) {
      m->prov.metrics[i].value = v;
      return TK_OK;
    }
  tk_metric *nm = realloc(m->prov.metrics, (size_t)(m->prov.n_metrics + 1) * sizeof *nm);
  if (!nm) return tk_fail(TK_ERR_NOMEM, "out of memory");
  m->prov.metrics = nm;
  if (!(nm[m->prov.n_metrics].name = tk_strdup(name))) return TK_ERR_NOMEM;
  nm[m->prov.n_metrics++].value = v;
  return TK_OK;
}

/* Saves the model with a TrainState that keeps the run's record (epoch, step, config, log,
 * metrics) but not the momenta or the generator: a finished model, not a checkpoint.  With
 * score training (h), the pruned network: masks set, W_eff, the scores. */
static tk_status save_finished(tk_model *m, tk_hydra *h, const char *path) {
  if (h) {
    tk_status st = tk_hydra_to_pruned(h);
    if (st == TK_OK) {
      m->prov.sparsity = tk_model_sparsity(m);
      st = save_finished(m, NULL, path);
    }
    tk_hydra_to_running(h);
    return st;
  }
  tk_train_state *full = m->train, lite;
  memset(&lite, 0, sizeof lite);
  if (full) {
    lite = *full;
    lite.n_rng = 0;
    lite.rng = NULL;
    lite.n_momenta = 0;
    lite.momenta = NULL;
  }
  m->train = full ? &lite : NULL;
  tk_status st = tk_model_save(m, path);
  m->train = full;
  return st;
}

/* A checkpoint; with score training the dense weights W (not W_eff), no masks, the scores. */
static tk_status save_checkpoint(tk_model *m, tk_hydra *h, const char *path) {
  if (h) tk_hydra_to_checkpoint(h);
  tk_status st = tk_model_save(m, path);
  if (h) tk_hydra_to_running(h);
  return st;
}

/* Provenance of a score-training run's models (method "hydra"). */
static tk_status hydra_provenance(tk_model *m, const tk_train_opts *o) {
  char notes[256], created[32];
  time_t now_t = time(NULL);
  struct tm tmv;
  gmtime_r(&now_t, &tmv);
  strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tmv);
  snprintf(notes, sizeof notes, "scope=layer score training: mode=%s epochs=%d lr=%g wd=%g%s%s",
           tk_train_mode_name(o->mode), o->epochs, o->sgd.lr, o->sgd.wd, o->scaled_score_init ? " scaled-score-init" : "",
           o->freeze_bn ? " freeze-bn" : "");
  tk_status st;
  if ((st = set_string(&m->prov.method, "hydra")) != TK_OK || (st = set_string(&m->prov.created, created)) != TK_OK ||
      (st = set_string(&m->prov.notes, notes)) != TK_OK)
    return st;
  m->prov.sparsity = o->sparsity;
  return TK_OK;
}

typedef struct {
  int epoch;
  double lr, train_loss, train_acc, val_sa, val_ra;
  long long steps;
} epoch_rec;

#define LOG_FMT "{\"epoch\":%d,\"lr\":%.9g,\"train_loss\":%.9g,\"train_acc\":%.9g,\"val_sa\":%.9g,\"val_ra\":%.9g,\"steps\":%lld}"
#define LOG_SCAN "{\"epoch\":%d,\"lr\":%lg,\"train_loss\":%lg,\"train_acc\":%lg,\"val_sa\":%lg,\"val_ra\":%lg,\"steps\":%lld}"

static tk_status write_csv(const char *path, const char *log) {
  sbuf b = {0};
  sb_printf(&b, "epoch,lr,train_loss,train_acc,val_sa,val_ra,steps\n");
  for (const char *p = log ? log : ""; *p;) {
    epoch_rec r;
    if (sscanf(p, LOG_SCAN, &r.epoch, &r.lr, &r.train_loss, &r.train_acc, &r.val_sa, &r.val_ra, &r.steps) == 7)
      sb_printf(&b, "%d,%.9g,%.9g,%.9g,%.9g,%.9g,%lld\n", r.epoch, r.lr, r.train_loss, r.train_acc, r.val_sa, r.val_ra,
                r.steps);
    const char *nl = strchr(p, '\n');
    if (!nl) break;
    p = nl + 1;
  }
  if (b.oom) {
    free(b.s);
    return tk_fail(TK_ERR_NOMEM, "out of memory");
  }
  tk_status st = tk_write_file_atomic(path, b.s, b.len);
  free(b.s);
  return st;
}

static uint64_t mix64(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Standard and robust accuracy on `val` (eval-mode BatchNorm). */
static tk_status validate(tk_engine *e, tk_attacker *va, const tk_dataset *val, int B, tk_rng *rng, float *logits,
                          float *xadv, int *fooled, double *sa, double *ra) {
  const tk_model *m = e->m;
  size_t D = (size_t)val->c * val->h * val->w;
  int K = m->classes;
  long hit = 0, rhit = 0;
  tk_status st;
  for (int s = 0; s < val->n; s += B) {
    int n = val->n - s < B ? val->n - s : B;
    const float *x = val->x + (size_t)s * D;
    const int *y = val->y + s;
    if ((st = tk_infer(e, x, n, logits)) != TK_OK) return st;
    hit += count_correct(logits, y, n, K);
    if (va) {
      if ((st = tk_attacker_run(va, x, y, n, rng, xadv, fooled)) != TK_OK) return st;
      for (int i = 0; i < n; i++) rhit += !fooled[i];
    }
  }
  *sa = (double)hit / val->n;
  *ra = va ? (double)rhit / val->n : -1;
  return TK_OK;
}

tk_status tk_train_run(tk_engine *e, const tk_dataset *train, const tk_dataset *val, const tk_train_opts *oin,
                       const tk_run_opts *r, tk_run_result *res) {
  tk_model *m = e->m;
  tk_train_opts o = *oin;
  tk_status st = tk_train_opts_check(&o);
  memset(res, 0, sizeof *res);
  res->resumed_epoch = -1;
  res->val_sa = res->val_ra = res->best_sa = res->best_ra = -1;
  if (st != TK_OK) return st;
  int C = m->in_c, H = m->in_h, W = m->in_w, K = m->classes;
  size_t D = (size_t)C * H * W;
  if (train->c != C || train->h != H || train->w != W)
    return tk_fail(TK_ERR_SHAPE, "data %s: images are %dx%dx%d, the model takes %dx%dx%d", train->name, train->c,
                   train->h, train->w, C, H, W);
  if (train->classes > K)
    return tk_fail(TK_ERR_SHAPE, "data %s: %d classes, the model has %d", train->name, train->classes, K);
  if (val && val->n && (val->c != C || val->h != H || val->w != W))
    return tk_fail(TK_ERR_SHAPE, "validation data %s: images are %dx%dx%d, the model takes %dx%dx%d", val->name,
                   val->c, val->h, val->w, C, H, W);
  if (train->n < 2) return tk_fail(TK_ERR_ARG, "data %s: %d training images, at least 2 needed", train->name, train->n);
  if (e->max_batch < o.batch)
    return tk_fail(TK_ERR_ARG, "--batch: %d but the engine was made for batches up to %d", o.batch, e->max_batch);
  int B = o.batch;
  int full = train->n / B, rem = train->n % B;
  /* a trailing batch of a single image is dropped: batch statistics need two */
  int nb = full + (rem >= 2 ? 1 : 0);

  tk_trainer *t = NULL;
  tk_attacker *va = NULL;
  int *perm = tk_malloc((size_t)train->n * sizeof(int));
  float *xb = tk_alloc_aligned((size_t)B * D * sizeof(float)), *tmp = tk_alloc_aligned(D * sizeof(float));
  float *sb = r->init_delta ? tk_alloc_aligned((size_t)B * D * sizeof(float)) : NULL;
  float *logits = tk_alloc_aligned((size_t)B * K * sizeof(float));
  float *vadv = tk_alloc_aligned((size_t)B * D * sizeof(float));
  int *yb = tk_malloc((size_t)B * sizeof(int)), *fooled = tk_malloc((size_t)B * sizeof(int));
  sbuf log = {0};
  if (!perm || !xb || !tmp || (r->init_delta && !sb) || !logits || !vadv || !yb || !fooled) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  /* a checkpoint to continue from, or a fresh start */
  const int resuming = r->resume && tk_train_state_resumable(m);
  if (resuming) {
    char *diff = tk_config_diff(m->train->config, r->config);
    if (diff) {
      st = tk_fail(TK_ERR_ARG, "%s: train_state.config: made with different settings (%s); use the same options or "
                   "start afresh", r->checkpoint ? r->checkpoint : "checkpoint", diff);
      free(diff);
      goto done;
    }
  }
  if (o.prune_scores && !resuming &&
      (st = tk_hydra_scaled_score_init(m, !o.scaled_score_init, &res->scores_init)) != TK_OK)
    goto done;
  if (o.prune_scores && !resuming && r->progress)
    fprintf(stderr, "score training: layer-wise sparsity %g, scaled score init on %d tensor%s\n", o.sparsity,
            res->scores_init, res->scores_init == 1 ? "" : "s");
  if ((st = tk_trainer_create(e, &o, &t)) != TK_OK) goto done;
  if (val && val->n && o.val_steps > 0) {
    tk_attack_opts ao;
    tk_attack_opts_default(&ao);
    ao.eps = o.eps;
    ao.alpha = o.val_alpha;
    ao.steps = o.val_steps;
    ao.restarts = 1;
    ao.start = TK_START_UNIFORM;
    ao.loss = TK_ATTACK_LOSS_CE;
    ao.bn = TK_BN_EVAL;
    ao.final_iterate = 0; /* evaluation: worst case over the iterates */
    if ((st = tk_attacker_create(e, &ao, &va)) != TK_OK) goto done;
  }

  /* ---- fresh start or resumption ---- */
  tk_rng rng;
  tk_rng_seed(&rng, o.seed);
  run_metrics rm;
  for (int i = 0; i < RM_COUNT; i++) rm.v[i] = (i == RM_BEST_SA || i == RM_BEST_RA) ? -1 : 0;
  int epoch0 = 0;
  int64_t step = 0;
  if (resuming) {
    tk_train_state *ts = m->train;
    epoch0 = ts->epoch;
    step = ts->step;
    if (epoch0 < 0 || epoch0 > o.epochs || step < (int64_t)epoch0 * nb || step > (int64_t)(epoch0 + 1) * nb ||
        (epoch0 == o.epochs && step != (int64_t)epoch0 * nb)) {
      st = tk_fail(TK_ERR_FORMAT, "train_state: epoch %d and step %lld do not fit %d epochs of %d steps", epoch0,
                   (long long)step, o.epochs, nb);
      goto done;
    }
    if (!(ts->rng[0] | ts->rng[1] | ts->rng[2] | ts->rng[3])) {
      st = tk_fail(TK_ERR_FORMAT, "train_state.rng: the generator state is all zeros");
      goto done;
    }
    if ((st = tk_sgd_load(t->sgd, ts)) != TK_OK) goto done;
    memcpy(rng.s, ts->rng, sizeof rng.s);
    state_get_metrics(ts, &rm);
    sb_printf(&log, "%s", ts->log ? ts->log : "");
    res->resumed_epoch = epoch0;
    res->resumed_step = step;
  } else {
    if (!m->train && !(m->train = tk_calloc(1, sizeof *m->train))) {
      st = TK_ERR_NOMEM;
      goto done;
    }
    tk_train_state_clear(m->train);
    /* metrics measured on the weights we start from no longer describe the result */
    for (int i = 0; i < m->prov.n_metrics; i++) free(m->prov.metrics[i].name);
    free(m->prov.metrics);
    m->prov.metrics = NULL;
    m->prov.n_metrics = 0;
    if (o.prune_scores && (st = hydra_provenance(m, &o)) != TK_OK) goto done;
  }
  tk_train_state *ts = m->train;
  if ((st = set_string(&ts->config, r->config ? r->config : "{}")) != TK_OK) goto done;
  if (!ts->rng && !(ts->rng = tk_calloc(4, sizeof(uint64_t)))) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  ts->n_rng = 4;
  res->best_sa = rm.v[RM_BEST_SA];
  res->best_ra = rm.v[RM_BEST_RA];
  res->best_sa_epoch = (int)rm.v[RM_BEST_SA_EPOCH];
  res->best_ra_epoch = (int)rm.v[RM_BEST_RA_EPOCH];

  /* saves everything needed to continue after `epochs_done` epochs and `step` steps */
#define SAVE_CHECKPOINT(epochs_done)                                                         \
  do {                                                                                      \
    ts->epoch = (epochs_done);                                                              \
    ts->step = step;                                                                        \
    memcpy(ts->rng, rng.s, sizeof rng.s);                                                   \
    if ((st = tk_sgd_save(t->sgd, m)) != TK_OK) goto done;                                  \
    if ((st = state_set_metrics(ts, &rm)) != TK_OK) goto done;                              \
    if ((st = set_string(&ts->log, log.s)) != TK_OK) goto done;                             \
    if (r->checkpoint && (st = save_checkpoint(m, t->hydra, r->checkpoint)) != TK_OK) goto done; \
  } while (0)

  double t_start = tk_now(), t_last = t_start;
  long images = 0;
  int steps_here = 0;
  for (int ep = epoch0 + 1; ep <= o.epochs; ep++) {
    /* the epoch's order depends on (seed, epoch) only */
    tk_rng prng;
    tk_rng_seed(&prng, mix64(o.seed, (uint64_t)ep));
    for (int i = 0; i < train->n; i++) perm[i] = i;
    for (int i = train->n - 1; i > 0; i--) {
      int j = (int)tk_rng_below(&prng, (uint64_t)i + 1), tmpi = perm[i];
      perm[i] = perm[j];
      perm[j] = tmpi;
    }
    int it0 = (int)(step - (int64_t)(ep - 1) * nb);
    if (it0 == 0) rm.v[RM_EPOCH_LOSS] = rm.v[RM_EPOCH_CORRECT] = rm.v[RM_EPOCH_SEEN] = 0;
    double lr = 0;
    for (int it = it0; it < nb; it++) {
      int s0 = it * B, n = train->n - s0 < B ? train->n - s0 : B;
      for (int i = 0; i < n; i++) {
        int idx = perm[s0 + i];
        memcpy(xb + (size_t)i * D, train->x + (size_t)idx * D, D * sizeof(float));
        yb[i] = train->y[idx];
        if (sb) memcpy(sb + (size_t)i * D, r->init_delta + (size_t)idx * D, D * sizeof(float));
      }
      if (o.crop_pad > 0 || o.flip) tk_augment_batch(xb, n, C, H, W, o.crop_pad, o.flip, &rng, tmp);
      lr = tk_lr_at(&o.sched, ep, it, nb);
      tk_step_stats ss;
      if ((st = tk_trainer_step(t, xb, yb, n, sb, lr, &rng, &ss)) != TK_OK) {
        tk_fail_prefix(st, "epoch %d step %d", ep, it + 1);
        goto done;
      }
      if (r->adv_out && tk_trainer_last_adv(t))
        for (int i = 0; i < n; i++)
          memcpy(r->adv_out + (size_t)perm[s0 + i] * D, tk_trainer_last_adv(t) + (size_t)i * D, D * sizeof(float));
      step++;
      steps_here++;
      images += n;
      rm.v[RM_EPOCH_LOSS] += ss.loss * n;
      rm.v[RM_EPOCH_CORRECT] += ss.correct;
      rm.v[RM_EPOCH_SEEN] += n;
      double now = tk_now();
      if (r->progress && (now - t_last >= 2.0 || it == nb - 1)) {
        fprintf(stderr, "epoch %d/%d  step %d/%d  loss %.4f  acc %.2f%%  lr %.4g  %.0f img/s\n", ep, o.epochs, it + 1,
                nb, rm.v[RM_EPOCH_LOSS] / rm.v[RM_EPOCH_SEEN], 100.0 * rm.v[RM_EPOCH_CORRECT] / rm.v[RM_EPOCH_SEEN],
                lr, images / (now - t_start));
        t_last = now;
      }
      if ((r->stop && *r->stop) || (r->max_steps > 0 && steps_here >= r->max_steps)) {
        if (it == nb - 1) break; /* finish the epoch: it is one validation away */
        SAVE_CHECKPOINT(ep - 1);
        res->interrupted = 1;
        goto finished;
      }
    }
    /* ---- end of the epoch: mask check, validation, best models, log, checkpoint ---- */
    if ((st = tk_sgd_check_mask(t->sgd)) != TK_OK) {
      tk_fail_prefix(st, "epoch %d", ep);
      goto done;
    }
    double vsa = -1, vra = -1;
    if (val && val->n) {
      tk_rng vrng;
      tk_rng_seed(&vrng, mix64(o.seed ^ 0x5641u, (uint64_t)ep));
      if ((st = validate(e, va, val, B, &vrng, logits, vadv, fooled, &vsa, &vra)) != TK_OK) {
        tk_fail_prefix(st, "epoch %d: validation", ep);
        goto done;
      }
      if ((st = prov_set_metric(m, "val_sa", vsa)) != TK_OK) goto done;
      if (va && ((st = prov_set_metric(m, "val_ra", vra)) != TK_OK || (st = prov_set_metric(m, "val_eps", o.eps)) != TK_OK))
        goto done;
    }
    double seen = rm.v[RM_EPOCH_SEEN] > 0 ? rm.v[RM_EPOCH_SEEN] : 1;
    res->train_loss = rm.v[RM_EPOCH_LOSS] / seen;
    res->train_acc = rm.v[RM_EPOCH_CORRECT] / seen;
    res->val_sa = vsa;
    res->val_ra = vra;
    lr = tk_lr_at(&o.sched, ep, nb - 1, nb); /* the epoch's last step */
    sb_printf(&log, LOG_FMT "\n", ep, lr, res->train_loss, res->train_acc, vsa, vra, (long long)step);
    if (log.oom) {
      st = tk_fail(TK_ERR_NOMEM, "out of memory");
      goto done;
    }
    int new_sa = vsa >= 0 && vsa > rm.v[RM_BEST_SA], new_ra = vra >= 0 && vra > rm.v[RM_BEST_RA];
    if (new_sa) rm.v[RM_BEST_SA] = vsa, rm.v[RM_BEST_SA_EPOCH] = ep;
    if (new_ra) rm.v[RM_BEST_RA] = vra, rm.v[RM_BEST_RA_EPOCH] = ep;
    if ((new_sa && r->best_sa_out) || (new_ra && r->best_ra_out)) {
      /* a finished model of this epoch: its record (log, metrics) up to and including it */
      ts->epoch = ep;
      ts->step = step;
      rm.v[RM_EPOCH_LOSS] = rm.v[RM_EPOCH_CORRECT] = rm.v[RM_EPOCH_SEEN] = 0;
      if ((st = set_string(&ts->log, log.s)) != TK_OK || (st = state_set_metrics(ts, &rm)) != TK_OK) goto done;
      if (new_sa && r->best_sa_out && (st = save_finished(m, t->hydra, r->best_sa_out)) != TK_OK) goto done;
      if (new_ra && r->best_ra_out && (st = save_finished(m, t->hydra, r->best_ra_out)) != TK_OK) goto done;
    }
    rm.v[RM_EPOCH_LOSS] = rm.v[RM_EPOCH_CORRECT] = rm.v[RM_EPOCH_SEEN] = 0;
    res->epochs_done = ep;
    SAVE_CHECKPOINT(ep);
    if (r->log_csv && (st = write_csv(r->log_csv, log.s)) != TK_OK) goto done;
    if (r->progress)
      fprintf(stderr, "epoch %d/%d done: loss %.4f  train acc %.2f%%%s", ep, o.epochs, res->train_loss,
              100 * res->train_acc, vsa >= 0 ? "" : "\n");
    if (r->progress && vsa >= 0) {
      if (vra >= 0) fprintf(stderr, "  val SA %.2f%%  RA %.2f%%\n", 100 * vsa, 100 * vra);
      else fprintf(stderr, "  val SA %.2f%%\n", 100 * vsa);
    }
    if (ep < o.epochs && ((r->stop && *r->stop) || (r->max_steps > 0 && steps_here >= r->max_steps))) {
      res->interrupted = 1;
      goto finished;
    }
  }
  res->epochs_done = o.epochs;
  if (r->out) {
    ts->epoch = o.epochs;
    ts->step = step;
    if ((st = set_string(&ts->log, log.s)) != TK_OK || (st = save_finished(m, t->hydra, r->out)) != TK_OK)
      goto done;
  }
finished:
#undef SAVE_CHECKPOINT
  if (t->hydra) {
    /* the pruned network after a finished run, the checkpoint's form after a stop */
    if (res->interrupted) tk_hydra_to_checkpoint(t->hydra);
    else if ((st = tk_hydra_to_pruned(t->hydra)) != TK_OK) goto done;
    if ((st = tk_engine_sync(e, 1)) != TK_OK) goto done;
  }
  res->steps = step;
  res->seconds = tk_now() - t_start;
  res->images_per_s = res->seconds > 0 ? images / res->seconds : 0;
  res->best_sa = rm.v[RM_BEST_SA];
  res->best_ra = rm.v[RM_BEST_RA];
  res->best_sa_epoch = (int)rm.v[RM_BEST_SA_EPOCH];
  res->best_ra_epoch = (int)rm.v[RM_BEST_RA_EPOCH];
  res->sparsity = t->hydra ? tk_hydra_achieved(t->hydra) : tk_model_sparsity(m);
  res->log = log.s;
  log.s = NULL;
  st = TK_OK;
done:
  free(log.s);
  tk_trainer_free(t);
  if (va) tk_attacker_free(va);
  free(perm);
  free(xb);
  free(tmp);
  free(sb);
  free(logits);
  free(vadv);
  free(yb);
  free(fooled);
  return st;
}
