/* hydra.c -- HYDRA score optimisation pieces: the scaled score init, the layer-wise top-k
 * mask of |scores|, the straight-through score gradient and the model's three forms
 * (running, checkpoint, pruned).  See hydra.h; the training loop is train.c.
 *
 * Per prunable tensor of N weights: W (N) frozen weights, m (N) mask bytes, s (N) scores in
 * the tensor, data (N) W_eff or W depending on the form. */
#include "hydra.h"
#include "prune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- scaled score init ------------------------------------------------------------------ */

tk_status tk_hydra_scaled_score_init(tk_model *m, int only_missing, int *n_init) {
  int n = 0;
  if (n_init) *n_init = 0;
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable || (only_missing && tt->scores)) continue;
    if (tt->ndim < 1 || tt->shape[0] < 1 || tt->numel < 1)
      return tk_fail(TK_ERR_SHAPE, "tensor %s: no fan-in for the scaled score init", tt->name);
    if (!tt->scores && !(tt->scores = tk_malloc((size_t)tt->numel * sizeof(float)))) return TK_ERR_NOMEM;
    double fan_in = (double)(tt->numel / tt->shape[0]);
    double mx = 0;
    for (int64_t i = 0; i < tt->numel; i++) mx = fmax(mx, fabs((double)tt->data[i]));
    /* sqrt(6 / fan_in) * W / max|W| (HYDRA initialize_scaled_score); all-zero weights: 0 */
    double c = mx > 0 ? sqrt(6.0 / fan_in) / mx : 0.0;
    for (int64_t i = 0; i < tt->numel; i++) tt->scores[i] = (float)(c * (double)tt->data[i]);
    n++;
  }
  if (n_init) *n_init = n;
  return TK_OK;
}

/* ---- the top-k mask ----------------------------------------------------------------------- */

tk_status tk_hydra_topk_mask(const float *s, int64_t n, int64_t prune, float *work, uint8_t *mask) {
  TK_ASSERT(prune >= 0 && prune <= n);
  int nan = 0;
  for (int64_t i = 0; i < n; i++) {
    work[i] = fabsf(s[i]);
    nan |= isnan(s[i]);
  }
  if (nan) {
    for (int64_t i = 0; i < n; i++)
      if (isnan(s[i])) return tk_fail(TK_ERR_ARG, "score %lld is NaN (diverged; try a lower --lr)", (long long)i);
  }
  if (prune == 0) {
    memset(mask, 1, (size_t)n);
    return TK_OK;
  }
  float thr = tk_prune_kth_smallest(work, n, prune - 1);
  int64_t below = 0;
  for (int64_t i = 0; i < n; i++) below += fabsf(s[i]) < thr;
  int64_t ties = prune - below; /* of the scores equal to thr, prune the first `ties` */
  for (int64_t i = 0; i < n; i++) {
    float a = fabsf(s[i]);
    uint8_t keep = !(a < thr);
    if (a == thr && ties > 0) keep = 0, ties--;
    mask[i] = keep;
  }
  return TK_OK;
}

/* ---- the state ------------------------------------------------------------------------------ */

struct tk_hydra {
  tk_model *m;     /* not owned */
  double sparsity;
  float **w;       /* n_tensors: frozen weights W of each prunable tensor, NULL otherwise */
  uint8_t **mask;  /* n_tensors: current mask of each prunable tensor */
  int64_t *prune;  /* n_tensors: pruned count */
  float *work;     /* the largest prunable numel */
};

void tk_hydra_free(tk_hydra *h) {
  if (!h) return;
  for (int t = 0; t < h->m->n_tensors; t++) {
    if (h->w) free(h->w[t]);
    if (h->mask) free(h->mask[t]);
  }
  free(h->w);
  free(h->mask);
  free(h->prune);
  free(h->work);
  free(h);
}

/* data = W where kept, +0 where pruned */
static void write_effective(tk_hydra *h) {
  for (int t = 0; t < h->m->n_tensors; t++) {
    if (!h->w[t]) continue;
    tk_tensor *tt = &h->m->tensors[t];
    const float *w = h->w[t];
    const uint8_t *mk = h->mask[t];
    for (int64_t i = 0; i < tt->numel; i++) tt->data[i] = mk[i] ? w[i] : 0.0f;
  }
}

tk_status tk_hydra_create(tk_model *m, double sparsity, tk_hydra **out, int *masks_cleared) {
  *out = NULL;
  if (masks_cleared) *masks_cleared = 0;
  if (!(sparsity >= 0 && sparsity <= 1)) return tk_fail(TK_ERR_ARG, "--sparsity: %g out of range [0, 1]", sparsity);
  int64_t maxn = 0;
  int np = 0;
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    if (!tt->scores)
      return tk_fail(TK_ERR_ARG, "tensor %s: no scores to train (initialise them: --scaled-score-init)", tt->name);
    if (tt->numel > maxn) maxn = tt->numel;
    np++;
  }
  if (!np) return tk_fail(TK_ERR_ARG, "--prune-scores: the model has no prunable tensors");
  size_t nt = (size_t)m->n_tensors;
  tk_hydra *h = tk_calloc(1, sizeof *h);
  if (!h) return TK_ERR_NOMEM;
  h->m = m;
  h->sparsity = sparsity;
  if (!(h->w = tk_calloc(nt, sizeof(float *))) || !(h->mask = tk_calloc(nt, sizeof(uint8_t *))) ||
      !(h->prune = tk_calloc(nt, sizeof(int64_t))) || !(h->work = tk_alloc_aligned((size_t)maxn * sizeof(float))))
    goto nomem;
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    h->w[t] = tk_alloc_aligned((size_t)tt->numel * sizeof(float));
    h->mask[t] = tk_malloc((size_t)tt->numel);
    if (!h->w[t] || !h->mask[t])
      goto nomem;
    tk_tensor_apply_mask(tt); /* pruned weights are 0 (the format says so; keep it so) */
    memcpy(h->w[t], tt->data, (size_t)tt->numel * sizeof(float));
    h->prune[t] = tk_prune_count(sparsity, tt->numel);
    if (tt->mask) {
      tk_tensor_set_mask(tt, NULL);
      if (masks_cleared) *masks_cleared = 1;
    }
  }
  tk_status st = tk_hydra_refresh(h);
  if (st != TK_OK) {
    tk_hydra_free(h);
    return st;
  }
  *out = h;
  return TK_OK;
nomem:
  tk_hydra_free(h);
  return TK_ERR_NOMEM;
}

tk_status tk_hydra_refresh(tk_hydra *h) {
  for (int t = 0; t < h->m->n_tensors; t++) {
    if (!h->w[t]) continue;
    const tk_tensor *tt = &h->m->tensors[t];
    tk_status st = tk_hydra_topk_mask(tt->scores, tt->numel, h->prune[t], h->work, h->mask[t]);
    if (st != TK_OK) return tk_fail_prefix(st, "tensor %s", tt->name);
  }
  write_effective(h);
  return TK_OK;
}

void tk_hydra_score_grads(const tk_hydra *h, float *const *wgrad, float *const *sgrad) {
  for (int t = 0; t < h->m->n_tensors; t++) {
    if (!h->w[t]) continue;
    const tk_tensor *tt = &h->m->tensors[t];
    const float *g = wgrad[t], *w = h->w[t], *s = tt->scores;
    float *gs = sgrad[t];
    TK_ASSERT(g && gs);
    for (int64_t i = 0; i < tt->numel; i++) {
      float v = g[i] * w[i];
      gs[i] = s[i] > 0 ? v : (s[i] < 0 ? -v : 0.0f);
    }
  }
}

void tk_hydra_to_checkpoint(tk_hydra *h) {
  for (int t = 0; t < h->m->n_tensors; t++) {
    if (!h->w[t]) continue;
    tk_tensor *tt = &h->m->tensors[t];
    tk_tensor_set_mask(tt, NULL);
    memcpy(tt->data, h->w[t], (size_t)tt->numel * sizeof(float));
  }
}

void tk_hydra_to_running(tk_hydra *h) {
  for (int t = 0; t < h->m->n_tensors; t++)
    if (h->w[t]) tk_tensor_set_mask(&h->m->tensors[t], NULL);
  write_effective(h);
}

tk_status tk_hydra_to_pruned(tk_hydra *h) {
  write_effective(h);
  for (int t = 0; t < h->m->n_tensors; t++) {
    if (!h->w[t]) continue;
    tk_tensor *tt = &h->m->tensors[t];
    int64_t kept = 0;
    for (int64_t i = 0; i < tt->numel; i++) kept += h->mask[t][i];
    tk_status st = tk_tensor_set_mask(tt, kept == tt->numel ? NULL : h->mask[t]);
    if (st != TK_OK) return st;
  }
  return TK_OK;
}

const uint8_t *tk_hydra_mask(const tk_hydra *h, int t) {
  return t >= 0 && t < h->m->n_tensors ? h->mask[t] : NULL;
}

double tk_hydra_sparsity(const tk_hydra *h) { return h->sparsity; }

double tk_hydra_achieved(const tk_hydra *h) {
  int64_t total = 0, pruned = 0;
  for (int t = 0; t < h->m->n_tensors; t++) {
    if (!h->w[t]) continue;
    int64_t n = h->m->tensors[t].numel;
    total += n;
    for (int64_t i = 0; i < n; i++) pruned += !h->mask[t][i];
  }
  return total ? (double)pruned / (double)total : 0.0;
}
