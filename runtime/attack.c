/* attack.c -- L-inf PGD, FGSM and the TRADES KL attack on any engine (see attack.h for the
 * semantics and the invariants that worst-case tracking guarantees).
 *
 * Dimension letters: B = the engine's max batch, D = C*H*W values per image, K = classes.
 * Every buffer is allocated in tk_attacker_create; a run allocates nothing. */
#include "attack.h"

#include "exec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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
  int judge_end;  /* the run's caller wants `fooled`: judge the last iterate too (set by run) */
  /* running statistics of every BatchNorm layer, saved around train-mode attacks */
  int n_bn;
  int *bn_tensor; /* (n_bn) tensor indices */
  float *bn_save; /* sum of their numels */
  /* Parallel eval-mode attacks (nw > 0): chunks of the batch attacked by nw serial attackers,
   * each on its own single-threaded replica of e (owned), current with e's counters gen_v,
   * gen_m (tk_exec_generation); start (B, D): the starts of a restart, drawn in the serial
   * order; wst / werr: a failed worker's status and message (errors are per thread). */
  int nw;
  tk_attacker **w;
  unsigned long gen_v, gen_m;
  float *start;
  int wst; /* tk_status */
  char werr[512];
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
  o->chunk = 32;
}

void tk_attacker_free(tk_attacker *a) {
  if (!a) return;
  for (int t = 0; t < a->nw && a->w; t++)
    if (a->w[t]) {
      tk_engine *we = a->w[t]->e;
      tk_attacker_free(a->w[t]);
      tk_engine_free(we);
    }
  free(a->w);
  free(a->start);
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

/* The replicas of a parallel attack: one per thread of an executor engine with 2+ threads,
 * for eval-mode attacks with a chunk size (TICKET_ATTACK_CHUNK overrides o->chunk: "0" off,
 * for A/B runs), each planned for batches of one chunk on one thread. */
static tk_status make_workers(tk_attacker *a) {
  int chunk = a->o.chunk;
  const char *env = getenv("TICKET_ATTACK_CHUNK");
  if (env && *env) chunk = atoi(env);
  const int T = a->e->threads;
  if (chunk <= 0 || T < 2 || a->o.bn != TK_BN_EVAL || a->B < 2 || !tk_exec_is_exec(a->e)) return TK_OK;
  if (chunk > a->B) chunk = a->B;
  a->o.chunk = chunk;
  a->w = tk_calloc((size_t)T, sizeof *a->w);
  a->start = tk_alloc_aligned((size_t)a->B * (size_t)a->D * sizeof(float));
  if (!a->w || !a->start) return tk_fail(TK_ERR_NOMEM, "attack: out of memory for %d workers", T);
  a->nw = T;
  tk_exec_generation(a->e, &a->gen_v, &a->gen_m);
  tk_attack_opts wo = a->o;
  wo.chunk = 0;
  for (int t = 0; t < T; t++) {
    tk_engine *we = NULL;
    tk_status st = tk_exec_replicate(a->e, chunk, 1, &we);
    if (st == TK_OK && (st = tk_attacker_create(we, &wo, &a->w[t])) != TK_OK) tk_engine_free(we);
    if (st != TK_OK) return tk_fail_prefix(st, "attack: worker %d of %d", t + 1, T);
  }
  return TK_OK;
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
  if (o->chunk < 0) return tk_fail(TK_ERR_ARG, "attack: chunk %d must be >= 0", o->chunk);
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
  tk_status st = make_workers(a);
  if (st != TK_OK) {
    tk_attacker_free(a);
    return st;
  }
  *out = a;
  return TK_OK;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* one value of a random start (before the clamp to [lo, hi]) */
static inline float start_value(const tk_attack_opts *o, tk_rng *rng) {
  if (o->start == TK_START_UNIFORM) return (float)(2.0 * tk_rng_uniform(rng) - 1.0) * (float)o->eps;
  if (o->start == TK_START_NORMAL_0001) return 0.001f * (float)tk_rng_normal(rng);
  return 0.0f;
}

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

/* The clean images as the first candidates (delta = 0 lies in every eps-ball): done[i] and
 * x_adv[i] = x[i] where the model misclassifies x[i]. */
static tk_status clean_check(tk_attacker *a, const float *x, const int *y, int n, float *x_adv, int *done) {
  const size_t D = (size_t)a->D;
  tk_status st = tk_engine_forward(a->e, x, n, a->o.bn, a->logits);
  if (st != TK_OK) return st;
  for (int i = 0; i < n; i++)
    if (argmax_row(a->logits + (size_t)i * a->K, a->K) != y[i]) {
      done[i] = 1;
      memcpy(x_adv + i * D, x + i * D, D * sizeof(float));
    }
  return TK_OK;
}

/* One restart over examples [0, n) of x: the active ones (all, or in eval mode those not yet
 * done) start from x + delta0 rows when given, else from draws of rng in example order; then
 * the steps.  The CE gradient is that of the mean over n_loss examples (the caller's batch).
 * *active: how many examples it ran (0: nothing left to attack). */
static tk_status run_restart(tk_attacker *a, const float *x, const int *y, int n, int n_loss, const float *delta0,
                             tk_rng *rng, float *x_adv, int *done, int *active) {
  tk_engine *e = a->e;
  const tk_attack_opts *o = &a->o;
  const size_t D = (size_t)a->D;
  const int K = a->K;
  const float lo = e->m->lo, hi = e->m->hi, eps = (float)o->eps, alpha = (float)o->alpha;
  const int track = !o->final_iterate; /* y != NULL checked by the caller */
  const int judge_end = y && (track || o->restarts > 1 || a->judge_end);
  const int compact = o->bn == TK_BN_EVAL;
  tk_status st = TK_OK;
  int na = 0;
  for (int i = 0; i < n; i++)
    if (!compact || !done[i]) a->idx[na++] = i;
  *active = na;
  if (na == 0) return TK_OK;
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
    const float *given = delta0 ? delta0 + a->idx[j] * D : NULL;
    for (size_t k = 0; k < D; k++) {
      const float d = given ? given[k] : start_value(o, rng);
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
        if (done[i] || argmax_row(a->logits + (size_t)j * K, K) == a->yc[j]) continue;
        done[i] = 1;
        a->hit[j] = 1;
        any_hit = 1;
        memcpy(x_adv + i * D, a->xin + j * D, D * sizeof(float));
      }
    }
    if (t == o->steps) break;
    loss_grad(a, na, n_loss);
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
    if (done[i]) continue;
    for (size_t k = 0; k < D; k++) x_adv[i * D + k] = clampf(a->x0[j * D + k] + a->delta[j * D + k], lo, hi);
  }
  return TK_OK;
}

/* The serial attack; a->done[i]: example i fooled. */
static tk_status attack_batch(tk_attacker *a, const float *x, const int *y, int n, const float *delta0,
                              tk_rng *rng, float *x_adv) {
  tk_status st = TK_OK;
  memset(a->done, 0, (size_t)n * sizeof(int));
  if (!a->o.final_iterate && y && (st = clean_check(a, x, y, n, x_adv, a->done)) != TK_OK) return st;
  for (int r = 0; r < a->o.restarts; r++) {
    int active = 0;
    if ((st = run_restart(a, x, y, n, n, r == 0 ? delta0 : NULL, rng, x_adv, a->done, &active)) != TK_OK) return st;
    if (!active) break;
  }
  return TK_OK;
}

/* ---- the parallel attack ---------------------------------------------------------------------- */

/* Brings the replicas up to date with a->e (a sync of each when e's counters moved). */
static tk_status workers_sync(tk_attacker *a) {
  unsigned long v = 0, m = 0;
  tk_exec_generation(a->e, &v, &m);
  if (v == a->gen_v && m == a->gen_m) return TK_OK;
  for (int t = 0; t < a->nw; t++) {
    tk_status st = tk_engine_sync(a->w[t]->e, m != a->gen_m);
    if (st != TK_OK) return tk_fail_prefix(st, "attack: worker %d of %d", t + 1, a->nw);
  }
  a->gen_v = v, a->gen_m = m;
  return TK_OK;
}

/* In eval mode an example's attack does not depend on the others in its batch, so the batch
 * is cut into chunks (a multiple of the worker count, at most o.chunk examples each) that the
 * workers attack at once, each with its replica on one thread: no synchronisation between the
 * layers, and each worker's activations stay a chunk's size.  The random starts are drawn here,
 * in the serial attack's order, and the loss is the mean over the whole batch, so a chunk's
 * examples follow the trajectories the serial attack computes on the replicas' kernels. */
static tk_status attack_parallel(tk_attacker *a, const float *x, const int *y, int n, const float *delta0,
                                 tk_rng *rng, float *x_adv) {
  const tk_attack_opts *o = &a->o;
  const size_t D = (size_t)a->D;
  const int T = a->nw;
  int nch = (n + o->chunk - 1) / o->chunk;
  nch = (nch + T - 1) / T * T;
  const int len = (n + nch - 1) / nch;
  nch = (n + len - 1) / len;
  tk_status st = workers_sync(a);
  if (st != TK_OK) return st;
  for (int t = 0; t < T; t++) a->w[t]->judge_end = a->judge_end;
  memset(a->done, 0, (size_t)n * sizeof(int));
  const int clean = !o->final_iterate && y;
  for (int r = 0; r < o->restarts + clean; r++) {
    const int phase_clean = clean && r == 0, rr = r - clean; /* rr: the restart */
    if (!phase_clean) {
      int active = 0;
      for (int i = 0; i < n; i++) {
        if (a->done[i]) continue;
        active++;
        float *si = a->start + i * D;
        if (rr == 0 && delta0) memcpy(si, delta0 + i * D, D * sizeof(float));
        else
          for (size_t k = 0; k < D; k++) si[k] = start_value(o, rng);
      }
      if (!active) break;
    }
    a->wst = TK_OK;
    int next = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(T)
#endif
    {
#ifdef _OPENMP
      tk_attacker *w = a->w[omp_get_thread_num()];
#else
      tk_attacker *w = a->w[0];
#endif
      for (;;) {
        int c, failed;
#ifdef _OPENMP
#pragma omp atomic capture
#endif
        c = next++;
#ifdef _OPENMP
#pragma omp atomic read
#endif
        failed = a->wst;
        if (c >= nch || failed) break;
        const int c0 = c * len, cn = n - c0 < len ? n - c0 : len;
        int active = 0;
        tk_status s = phase_clean ? clean_check(w, x + c0 * D, y + c0, cn, x_adv + c0 * D, a->done + c0)
                                  : run_restart(w, x + c0 * D, y ? y + c0 : NULL, cn, n, a->start + c0 * D, NULL,
                                                x_adv + c0 * D, a->done + c0, &active);
        if (s != TK_OK) {
#ifdef _OPENMP
#pragma omp critical(tk_attack_worker_error)
#endif
          if (a->wst == TK_OK) {
            snprintf(a->werr, sizeof a->werr, "%s", tk_last_error());
#ifdef _OPENMP
#pragma omp atomic write
#endif
            a->wst = (int)s;
          }
        }
      }
    }
    if (a->wst != TK_OK) return tk_fail((tk_status)a->wst, "attack: %s", a->werr);
  }
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
  a->judge_end = fooled != NULL;
  tk_status st = a->nw > 0 && n >= a->nw ? attack_parallel(a, x, y, n, delta0, rng, x_adv)
                                         : attack_batch(a, x, y, n, delta0, rng, x_adv);
  if (st == TK_OK && fooled)
    for (int i = 0; i < n; i++) fooled[i] = a->done[i];
  if (save_bn) {
    bn_snapshot(a, 1);
    tk_status s2 = tk_engine_sync(a->e, 0);
    if (st == TK_OK) st = s2;
  }
  return st;
}

int tk_attacker_workers(const tk_attacker *a, int *chunk) {
  if (chunk) *chunk = a && a->nw ? a->o.chunk : 0;
  return a ? a->nw : 0;
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
