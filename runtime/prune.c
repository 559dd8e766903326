/* prune.c -- mask finding: scorers (magnitude, random, SynFlow, SNIP; IMP = magnitude with
 * rewinding), the top-k selection shared by every method, the iterative driver and
 * provenance.  See prune.h. */
#include "prune.h"

#include "../include/ticket.h"
#include "evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- scorers ---------------------------------------------------------------------------- */

static tk_status score_magnitude(tk_model *m, const tk_prune_opts *o, int round, float *const *scores) {
  (void)o;
  (void)round;
  for (int t = 0; t < m->n_tensors; t++) {
    if (!scores[t]) continue;
    const tk_tensor *tt = &m->tensors[t];
    for (int64_t i = 0; i < tt->numel; i++) scores[t][i] = fabsf(tt->data[i]);
  }
  return TK_OK;
}

static tk_status score_random(tk_model *m, const tk_prune_opts *o, int round, float *const *scores) {
  tk_rng rng;
  tk_rng_seed(&rng, o->seed * 0x9E3779B97F4A7C15ull + (uint64_t)round);
  for (int t = 0; t < m->n_tensors; t++) {
    if (!scores[t]) continue;
    for (int64_t i = 0; i < m->tensors[t].numel; i++) scores[t][i] = (float)tk_rng_uniform(&rng);
  }
  return TK_OK;
}

/* The engine a data- or gradient-driven scorer runs on: --engine, or the dense engine when this
 * build has one (exact, and cheap to create for every round's new mask), else the reference. */
static tk_status scorer_engine(tk_model *m, const tk_prune_opts *o, int batch, tk_engine **e) {
  if (o->engine_kind >= 0) return tk_engine_create(m, (tk_engine_kind)o->engine_kind, batch, e);
  tk_status st = tk_engine_create(m, TK_ENGINE_DENSE, batch, e);
  if (st == TK_ERR_UNSUPPORTED) st = tk_engine_create(m, TK_ENGINE_REFERENCE, batch, e);
  return st;
}

/* SynFlow (Tanaka et al. 2020; ganguli-lab/Synaptic-Flow Pruners.SynFlow, SEEDS.md 3.4), data
 * free: on a copy of the model with every tensor replaced by its absolute value (weights,
 * biases, batchnorm affine and running statistics: `linearize`), in eval mode, R = sum of the
 * logits of one all-ones input (after the input normalisation: the raw pixels are mean + std),
 * and the score of a weight is |w * dR/dw|.  Pruned weights are 0 in the copy, so their flow
 * is 0.  Float32 as the official code; a flow that overflows float32 is an error. */
static tk_status score_synflow(tk_model *m, const tk_prune_opts *o, int round, float *const *scores) {
  tk_model *lin = tk_model_clone(m);
  if (!lin) return TK_ERR_NOMEM;
  for (int t = 0; t < lin->n_tensors; t++) {
    tk_tensor *tt = &lin->tensors[t];
    for (int64_t i = 0; i < tt->numel; i++) tt->data[i] = fabsf(tt->data[i]);
  }
  tk_engine *e = NULL;
  tk_status st = tk_model_infer(lin);
  if (st == TK_OK) st = scorer_engine(lin, o, 1, &e);
  const int64_t in_n = (int64_t)lin->in_c * lin->in_h * lin->in_w, plane = (int64_t)lin->in_h * lin->in_w;
  float *x = tk_malloc((size_t)in_n * sizeof(float));
  float *logits = tk_malloc((size_t)lin->classes * sizeof(float));
  float *ones = tk_malloc((size_t)lin->classes * sizeof(float));
  if (st == TK_OK && (!x || !logits || !ones)) st = TK_ERR_NOMEM;
  if (st == TK_OK) {
    for (int c = 0; c < lin->in_c; c++)
      for (int64_t k = 0; k < plane; k++)
        x[c * plane + k] = lin->mean ? lin->mean[c] + lin->std[c] : 1.0f;
    for (int k = 0; k < lin->classes; k++) ones[k] = 1.0f;
    st = tk_engine_forward(e, x, 1, TK_BN_EVAL, logits);
  }
  if (st == TK_OK) {
    double r = 0.0;
    for (int k = 0; k < lin->classes; k++) r += logits[k];
    if (!isfinite(r) || r > 3.0e38)
      st = tk_fail(TK_ERR_UNSUPPORTED, "synflow: round %d: the flow R = %g overflows float32 (network too deep for float32 SynFlow)",
                   round + 1, r);
  }
  if (st == TK_OK) st = tk_engine_backward(e, ones, NULL, 1);
  for (int t = 0; st == TK_OK && t < m->n_tensors; t++) {
    if (!scores[t]) continue;
    const tk_tensor *lt = &lin->tensors[t];
    const float *g = e->grads[t];
    if (!g) {
      st = tk_fail(TK_ERR_INTERNAL, "synflow: no gradient for %s", lt->name);
      break;
    }
    for (int64_t i = 0; i < lt->numel; i++) {
      float s = fabsf(g[i] * lt->data[i]);
      if (!isfinite(s)) {
        st = tk_fail(TK_ERR_UNSUPPORTED, "synflow: round %d: the score of %s[%lld] is not finite (float32 overflow)",
                     round + 1, lt->name, (long long)i);
        break;
      }
      scores[t][i] = s;
    }
  }
  if (e) e->v->destroy(e);
  free(x);
  free(logits);
  free(ones);
  tk_model_free(lin);
  return st;
}

/* SNIP (Lee et al. 2019; as Synaptic-Flow's SNIP pruner): the score of a weight is
 * |sum over the prune set's batches of w * dL/dw| (the gradient of the loss with respect to
 * the weight's mask), L the mean cross-entropy of each batch, the model in eval mode. */
static tk_status score_snip(tk_model *m, const tk_prune_opts *o, int round, float *const *scores) {
  (void)round;
  const tk_dataset *d = o->data;
  if (!d || d->n < 1) return tk_fail(TK_ERR_ARG, "snip: --data is required (the prune set)");
  if (d->c != m->in_c || d->h != m->in_h || d->w != m->in_w)
    return tk_fail(TK_ERR_SHAPE, "snip: the data's images are %dx%dx%d, the model takes %dx%dx%d", d->c, d->h, d->w,
                   m->in_c, m->in_h, m->in_w);
  for (int i = 0; i < d->n; i++)
    if (d->y[i] < 0 || d->y[i] >= m->classes)
      return tk_fail(TK_ERR_ARG, "snip: label %d of image %d is outside the model's %d classes", d->y[i], i, m->classes);
  const int batch = d->n < o->batch ? d->n : o->batch;
  tk_engine *e = NULL;
  tk_status st = scorer_engine(m, o, batch, &e);
  float *logits = tk_malloc((size_t)batch * m->classes * sizeof(float));
  float *dl = tk_malloc((size_t)batch * m->classes * sizeof(float));
  if (st == TK_OK && (!logits || !dl)) st = TK_ERR_NOMEM;
  for (int t = 0; t < m->n_tensors; t++)
    if (scores[t]) memset(scores[t], 0, (size_t)m->tensors[t].numel * sizeof(float));
  const int64_t img = (int64_t)d->c * d->h * d->w;
  for (int b0 = 0; st == TK_OK && b0 < d->n; b0 += batch) {
    const int n = d->n - b0 < batch ? d->n - b0 : batch;
    if ((st = tk_engine_forward(e, d->x + b0 * img, n, TK_BN_EVAL, logits)) != TK_OK) break;
    tk_softmax_xent(logits, d->y + b0, n, m->classes, dl, NULL);
    if ((st = tk_engine_backward(e, dl, NULL, 1)) != TK_OK) break;
    for (int t = 0; t < m->n_tensors; t++) {
      if (!scores[t]) continue;
      const float *g = e->grads[t], *w = m->tensors[t].data;
      for (int64_t i = 0; i < m->tensors[t].numel; i++) scores[t][i] += g[i] * w[i];
    }
  }
  for (int t = 0; st == TK_OK && t < m->n_tensors; t++)
    if (scores[t])
      for (int64_t i = 0; i < m->tensors[t].numel; i++) scores[t][i] = fabsf(scores[t][i]);
  if (e) e->v->destroy(e);
  free(logits);
  free(dl);
  return st;
}

static const tk_prune_method g_methods[] = {
    {"magnitude", score_magnitude, 1, 0, "keep the largest |w| (one shot)"},
    {"random", score_random, 1, 0, "keep a uniformly random subset"},
    {"synflow", score_synflow, 100, 0, "data-free synaptic flow |w * dR/dw| of the all-ones input, 100 rounds"},
    {"snip", score_snip, 1, 0, "connection sensitivity |w * dL/dw| on a prune set of data (one shot)"},
    {"imp", score_magnitude, 1, 1, "one IMP round: prune 20% of the kept weights by |w|, rewind to a checkpoint"},
    {NULL, NULL, 0, 0, NULL}};

const tk_prune_method *tk_prune_methods(void) { return g_methods; }

const tk_prune_method *tk_prune_find(const char *name) {
  for (const tk_prune_method *p = g_methods; name && p->name; p++)
    if (strcmp(p->name, name) == 0) return p;
  return NULL;
}

void tk_prune_opts_default(tk_prune_opts *o) {
  memset(o, 0, sizeof *o);
  o->method = "magnitude";
  o->sparsity = -1;
  o->scope = TK_SCOPE_GLOBAL;
  o->seed = 1;
  o->rate = 0.2;
  o->engine_kind = -1;
  o->batch = 256;
}

int64_t tk_round_half_even(double x) {
  double f = floor(x), d = x - f;
  if (d > 0.5) return (int64_t)f + 1;
  if (d < 0.5) return (int64_t)f;
  return ((int64_t)f % 2 == 0) ? (int64_t)f : (int64_t)f + 1;
}

int64_t tk_prune_count(double sparsity, int64_t n) {
  int64_t k = (int64_t)floor(sparsity * (double)n + 1e-6);
  return k < 0 ? 0 : (k > n ? n : k);
}

/* ---- selection ---------------------------------------------------------------------------- */

static void swapf(float *a, float *b) {
  float t = *a;
  *a = *b;
  *b = t;
}

/* Three-way partitioning keeps runs of equal scores (common: zeros) linear. */
float tk_prune_kth_smallest(float *v, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    /* median of three as the pivot */
    if (v[mid] < v[lo]) swapf(&v[mid], &v[lo]);
    if (v[hi] < v[lo]) swapf(&v[hi], &v[lo]);
    if (v[hi] < v[mid]) swapf(&v[hi], &v[mid]);
    float piv = v[mid];
    int64_t lt = lo, i = lo, gt = hi;
    while (i <= gt) {
      if (v[i] < piv) swapf(&v[lt++], &v[i++]);
      else if (v[i] > piv) swapf(&v[i], &v[gt--]);
      else i++;
    }
    /* [lo, lt) < piv, [lt, gt] == piv, (gt, hi] > piv */
    if (k < lt) hi = lt - 1;
    else if (k > gt) lo = gt + 1;
    else return piv;
  }
  return v[k];
}

/* An order-preserving unsigned key of a (non-NaN) score; -0 and +0 share one. */
static inline uint32_t score_key(float s) {
  uint32_t u;
  if (s == 0.0f) s = 0.0f;
  memcpy(&u, &s, sizeof u);
  return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

#define KEY_BUCKETS 2048 /* the top 11 bits of a key */

/* Prunes `need` more positions among the kept ones of tensors[ids[0..nid)], lowest score
 * first, ties by position. new_masks[t] are the masks being built.  The threshold is found
 * by a histogram of the keys' top bits, then a selection among the scores of one bucket;
 * the loops over every weight are free of data-dependent branches (masks and scores are
 * random to a branch predictor). */
static tk_status select_group(tk_model *m, float *const *scores, const int *ids, int nid, int64_t need,
                              uint8_t **new_masks) {
  if (need <= 0) return TK_OK;
  int64_t kept = 0;
  int64_t *hist = tk_calloc(KEY_BUCKETS, sizeof(int64_t));
  if (!hist) return TK_ERR_NOMEM;
  for (int k = 0; k < nid; k++) {
    const tk_tensor *t = &m->tensors[ids[k]];
    const uint8_t *nm = new_masks[ids[k]];
    const float *sc = scores[ids[k]];
    int bad = 0;
    for (int64_t i = 0; i < t->numel; i++) {
      const int on = nm[i];
      bad |= on & isnan(sc[i]);
      kept += on;
      hist[score_key(sc[i]) >> 21] += on;
    }
    if (bad) {
      free(hist);
      for (int64_t i = 0; i < t->numel; i++)
        if (nm[i] && isnan(sc[i])) return tk_fail(TK_ERR_INTERNAL, "prune: the score of %s[%lld] is NaN", t->name, (long long)i);
    }
  }
  TK_ASSERT(need <= kept);
  /* the bucket holding the need-th lowest score, and how many kept scores lie below it */
  int64_t under = 0;
  uint32_t b = 0;
  while (under + hist[b] < need) under += hist[b++];
  const int64_t nc = hist[b];
  free(hist);
  float *v = tk_malloc((size_t)nc * sizeof(float));
  if (!v) return TK_ERR_NOMEM;
  int64_t j = 0;
  for (int k = 0; k < nid; k++) {
    const tk_tensor *t = &m->tensors[ids[k]];
    const uint8_t *nm = new_masks[ids[k]];
    const float *sc = scores[ids[k]];
    for (int64_t i = 0; i < t->numel; i++)
      if ((score_key(sc[i]) >> 21) == b && nm[i]) v[j++] = sc[i];
  }
  TK_ASSERT(j == nc);
  float thr = tk_prune_kth_smallest(v, nc, need - 1 - under);
  free(v);
  int64_t below = 0;
  for (int k = 0; k < nid; k++) {
    const tk_tensor *t = &m->tensors[ids[k]];
    const uint8_t *nm = new_masks[ids[k]];
    const float *sc = scores[ids[k]];
    for (int64_t i = 0; i < t->numel; i++) below += nm[i] & (sc[i] < thr);
  }
  int64_t ties = need - below; /* of the positions scoring exactly thr, prune the first `ties` */
  for (int k = 0; k < nid; k++) {
    const tk_tensor *t = &m->tensors[ids[k]];
    uint8_t *nm = new_masks[ids[k]];
    const float *sc = scores[ids[k]];
    for (int64_t i = 0; i < t->numel; i++) {
      const float s = sc[i];
      nm[i] &= (uint8_t)!(s < thr);
      if (s == thr && nm[i] && ties > 0) nm[i] = 0, ties--;
    }
  }
  return TK_OK;
}

tk_status tk_prune_select_counts(tk_model *m, float *const *scores, const int64_t *targets, tk_prune_scope scope) {
  int n = 0;
  int *ids = tk_malloc((size_t)(m->n_tensors ? m->n_tensors : 1) * sizeof(int));
  uint8_t **nm = tk_calloc((size_t)(m->n_tensors ? m->n_tensors : 1), sizeof(uint8_t *));
  tk_status st = TK_ERR_NOMEM;
  if (!ids || !nm) goto done;
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    if (!scores[t]) {
      st = tk_fail(TK_ERR_INTERNAL, "prune: no scores for prunable tensor %s", tt->name);
      goto done;
    }
    ids[n++] = t;
    if (!(nm[t] = tk_malloc((size_t)tt->numel))) goto done;
    for (int64_t i = 0; i < tt->numel; i++) nm[t][i] = (uint8_t)(!tt->mask || tt->mask[i] != 0); /* 0/1 */
  }
  if (!n) {
    st = tk_fail(TK_ERR_ARG, "prune: the model has no prunable tensors");
    goto done;
  }
  if (scope == TK_SCOPE_GLOBAL) {
    int64_t total = 0, pruned = 0;
    for (int k = 0; k < n; k++) {
      total += m->tensors[ids[k]].numel;
      pruned += m->tensors[ids[k]].numel - tk_tensor_nnz(&m->tensors[ids[k]]);
    }
    if (targets[0] < pruned || targets[0] > total) {
      st = tk_fail(TK_ERR_ARG, "--sparsity: asks for %lld of %lld weights pruned, but %lld already are (%.4f)",
                   (long long)targets[0], (long long)total, (long long)pruned, (double)pruned / (double)total);
      goto done;
    }
    if ((st = select_group(m, scores, ids, n, targets[0] - pruned, nm)) != TK_OK) goto done;
  } else {
    for (int k = 0; k < n; k++) {
      const tk_tensor *tt = &m->tensors[ids[k]];
      int64_t pruned = tt->numel - tk_tensor_nnz(tt);
      if (targets[k] < pruned || targets[k] > tt->numel) {
        st = tk_fail(TK_ERR_ARG, "--sparsity: tensor %s: asks for %lld of %lld weights pruned, but %lld already are",
                     tt->name, (long long)targets[k], (long long)tt->numel, (long long)pruned);
        goto done;
      }
      if ((st = select_group(m, scores, &ids[k], 1, targets[k] - pruned, nm)) != TK_OK) goto done;
    }
  }
  for (int k = 0; k < n; k++) {
    tk_tensor *tt = &m->tensors[ids[k]];
    int64_t kept = 0;
    for (int64_t i = 0; i < tt->numel; i++) kept += nm[ids[k]][i];
    if ((st = tk_tensor_set_mask(tt, kept == tt->numel ? NULL : nm[ids[k]])) != TK_OK) goto done;
  }
  st = TK_OK;
done:
  for (int t = 0; nm && t < m->n_tensors; t++) free(nm[t]);
  free(nm);
  free(ids);
  return st;
}

tk_status tk_prune_select(tk_model *m, float *const *scores, double sparsity, tk_prune_scope scope) {
  if (!(sparsity >= 0 && sparsity <= 1)) return tk_fail(TK_ERR_ARG, "--sparsity: %g out of range [0, 1]", sparsity);
  int64_t *targets = tk_calloc((size_t)(m->n_tensors ? m->n_tensors : 1), sizeof(int64_t));
  if (!targets) return TK_ERR_NOMEM;
  int n = 0;
  int64_t total = 0;
  for (int t = 0; t < m->n_tensors; t++)
    if (m->tensors[t].prunable) {
      total += m->tensors[t].numel;
      targets[n++] = tk_prune_count(sparsity, m->tensors[t].numel);
    }
  if (scope == TK_SCOPE_GLOBAL) targets[0] = tk_prune_count(sparsity, total);
  tk_status st = tk_prune_select_counts(m, scores, targets, scope);
  free(targets);
  return st;
}

/* ---- the driver ---------------------------------------------------------------------------- */

static tk_status check_rewind(const tk_model *m, const tk_model *r) {
  if (r->n_tensors != m->n_tensors)
    return tk_fail(TK_ERR_SHAPE, "--rewind: the checkpoint has %d tensors, the model %d", r->n_tensors, m->n_tensors);
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *a = &m->tensors[t];
    int k = tk_model_find_tensor(r, a->name);
    if (k < 0) return tk_fail(TK_ERR_SHAPE, "--rewind: the checkpoint has no tensor %s", a->name);
    const tk_tensor *b = &r->tensors[k];
    if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof a->shape) != 0)
      return tk_fail(TK_ERR_SHAPE, "--rewind: tensor %s has another shape in the checkpoint", a->name);
  }
  return TK_OK;
}

static tk_status set_str(char **dst, const char *s) {
  char *d = tk_strdup(s);
  if (!d) return TK_ERR_NOMEM;
  free(*dst);
  *dst = d;
  return TK_OK;
}

tk_status tk_prune(tk_model *m, const tk_prune_opts *o, tk_prune_report *rep) {
  const tk_prune_method *meth = tk_prune_find(o->method);
  if (!meth) {
    char names[256] = "";
    for (const tk_prune_method *p = g_methods; p->name; p++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", p == g_methods ? "" : ", ", p->name);
    return tk_fail(TK_ERR_ARG, "--method: unknown method '%s' (known: %s)", o->method ? o->method : "", names);
  }
  if (o->scope != TK_SCOPE_GLOBAL && o->scope != TK_SCOPE_LAYER) return tk_fail(TK_ERR_ARG, "--scope: unknown scope");
  if (meth->needs_rewind && !o->rewind)
    return tk_fail(TK_ERR_ARG, "--rewind: method %s needs the checkpoint to rewind to", meth->name);
  if (o->rewind) {
    tk_status st = check_rewind(m, o->rewind);
    if (st != TK_OK) return st;
  }
  if (o->sparsity >= 0 ? !(o->sparsity <= 1) : !meth->needs_rewind)
    return o->sparsity < 0 ? tk_fail(TK_ERR_ARG, "--sparsity: required for method %s", meth->name)
                           : tk_fail(TK_ERR_ARG, "--sparsity: %g out of range [0, 1]", o->sparsity);
  if (!(o->rate > 0 && o->rate <= 1)) return tk_fail(TK_ERR_ARG, "--rate: %g out of range (0, 1]", o->rate);
  int iters = o->iterations > 0 ? o->iterations : meth->default_iterations;

  int np = 0;
  int64_t total = 0, kept0 = 0;
  for (int t = 0; t < m->n_tensors; t++)
    if (m->tensors[t].prunable) {
      np++;
      total += m->tensors[t].numel;
      kept0 += tk_tensor_nnz(&m->tensors[t]);
    }
  if (!np) return tk_fail(TK_ERR_ARG, "prune: the model has no prunable tensors");

  tk_status st = TK_ERR_NOMEM;
  tk_progress prog;
  memset(&prog, 0, sizeof prog);
  int nt = m->n_tensors;
  float **scores = tk_calloc((size_t)nt, sizeof(float *));
  int64_t *final = tk_calloc((size_t)np, sizeof(int64_t)), *now = tk_calloc((size_t)np, sizeof(int64_t));
  int64_t *before = tk_calloc((size_t)np, sizeof(int64_t));
  if (!scores || !final || !now || !before) goto done;
  /* final targets per group: index k over prunable tensors (layer), or [0] (global) */
  {
    int k = 0;
    int64_t pruned_all = total - kept0;
    for (int t = 0; t < nt; t++) {
      const tk_tensor *tt = &m->tensors[t];
      if (!tt->prunable) continue;
      before[k] = tk_tensor_nnz(tt);
      if (!(scores[t] = tk_malloc((size_t)tt->numel * sizeof(float)))) goto done;
      int64_t pruned = tt->numel - before[k];
      final[k] = o->sparsity >= 0 ? tk_prune_count(o->sparsity, tt->numel)
                                  : pruned + tk_round_half_even(o->rate * (double)before[k]);
      k++;
    }
    if (o->scope == TK_SCOPE_GLOBAL)
      final[0] = o->sparsity >= 0 ? tk_prune_count(o->sparsity, total)
                                  : pruned_all + tk_round_half_even(o->rate * (double)kept0);
  }
  tk_progress_start(&prog, meth->name, iters, iters > 1 ? o->progress : -1);
  prog.unit = "rounds";
  for (int round = 0; round < iters; round++) {
    if (round) {
      char extra[48];
      snprintf(extra, sizeof extra, "sparsity %.4f", tk_model_sparsity(m));
      tk_progress_update(&prog, round, extra);
    }
    /* round r of n keeps density d^((r+1)/n) of the group, d its final density */
    int ng = o->scope == TK_SCOPE_GLOBAL ? 1 : np, k = 0;
    for (int t = 0; t < nt && k < ng; t++) {
      if (!m->tensors[t].prunable) continue;
      int64_t n = o->scope == TK_SCOPE_GLOBAL ? total : m->tensors[t].numel;
      if (round == iters - 1) {
        now[k] = final[k];
      } else {
        double d = 1.0 - (double)final[k] / (double)n;
        double dr = pow(d, (double)(round + 1) / iters);
        now[k] = tk_prune_count(1.0 - dr, n);
      }
      k++;
    }
    /* an intermediate target never undoes pruning that is already there */
    {
      int kk = 0;
      int64_t pruned_all = 0;
      for (int t = 0; t < nt; t++)
        if (m->tensors[t].prunable) {
          int64_t pr = m->tensors[t].numel - tk_tensor_nnz(&m->tensors[t]);
          pruned_all += pr;
          if (o->scope == TK_SCOPE_LAYER && now[kk] < pr && round < iters - 1) now[kk] = pr;
          kk++;
        }
      if (o->scope == TK_SCOPE_GLOBAL && now[0] < pruned_all && round < iters - 1) now[0] = pruned_all;
    }
    if ((st = meth->score(m, o, round, scores)) != TK_OK) goto done;
    if ((st = tk_prune_select_counts(m, scores, now, o->scope)) != TK_OK) goto done;
  }
  if (o->rewind) {
    for (int t = 0; t < nt; t++) {
      tk_tensor *a = &m->tensors[t];
      const tk_tensor *b = &o->rewind->tensors[tk_model_find_tensor(o->rewind, a->name)];
      memcpy(a->data, b->data, (size_t)a->numel * sizeof(float));
      tk_tensor_apply_mask(a);
    }
  }
  /* provenance */
  {
    char notes[512], created[32];
    time_t now_t = time(NULL);
    struct tm tmv;
    gmtime_r(&now_t, &tmv);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    int len = snprintf(notes, sizeof notes, "scope=%s", o->scope == TK_SCOPE_GLOBAL ? "global" : "layer");
    if (o->sparsity < 0) len += snprintf(notes + len, sizeof notes - (size_t)len, " rate=%g", o->rate);
    if (strcmp(meth->name, "random") == 0)
      len += snprintf(notes + len, sizeof notes - (size_t)len, " seed=%llu", (unsigned long long)o->seed);
    if (iters > 1) len += snprintf(notes + len, sizeof notes - (size_t)len, " iterations=%d", iters);
    if (o->rewind) snprintf(notes + len, sizeof notes - (size_t)len, " rewound");
    if ((st = set_str(&m->prov.method, meth->name)) != TK_OK || (st = set_str(&m->prov.created, created)) != TK_OK ||
        (st = set_str(&m->prov.notes, notes)) != TK_OK)
      goto done;
    m->prov.sparsity = tk_model_sparsity(m);
    for (int i = 0; i < m->prov.n_metrics; i++) free(m->prov.metrics[i].name);
    free(m->prov.metrics);
    m->prov.metrics = NULL;
    m->prov.n_metrics = 0;
    if (m->train) {
      tk_train_state_clear(m->train);
      free(m->train);
      m->train = NULL;
    }
  }
  if (rep) {
    memset(rep, 0, sizeof *rep);
    if (!(rep->tensors = tk_calloc((size_t)np, sizeof *rep->tensors))) goto done;
    int k = 0;
    for (int t = 0; t < nt; t++) {
      const tk_tensor *tt = &m->tensors[t];
      if (!tt->prunable) continue;
      tk_prune_tensor_report *r = &rep->tensors[k];
      r->tensor = t;
      r->numel = tt->numel;
      r->kept_before = before[k];
      r->kept_after = tk_tensor_nnz(tt);
      rep->total += r->numel;
      rep->kept_before += r->kept_before;
      rep->kept_after += r->kept_after;
      k++;
    }
    rep->n = np;
    rep->sparsity_before = 1.0 - (double)rep->kept_before / (double)rep->total;
    rep->sparsity_after = 1.0 - (double)rep->kept_after / (double)rep->total;
  }
  st = TK_OK;
done:
  tk_progress_end(&prog);
  for (int t = 0; scores && t < nt; t++) free(scores[t]);
  free(scores);
  free(final);
  free(now);
  free(before);
  return st;
}
