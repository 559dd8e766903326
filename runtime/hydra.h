/* hydra.h -- HYDRA's pruning step (SEEDS.md 3.2): the popup scores of every prunable tensor
 * decide a layer-wise top-k mask, the network runs with the effective weights W * m, and the
 * scores learn from the robust loss through a straight-through estimator.  train.c drives it
 * (`ticket train --prune-scores`); this file holds the pieces that do not depend on the loop.
 *
 *   scaled score init   s = sqrt(6 / fan_in) * W / max|W| per tensor (signed; fan_in = numel /
 *                       shape[0], torch's fan_in of a conv or linear weight); a tensor whose
 *                       weights are all zero gets scores 0.  The forward uses |s|, so the
 *                       first mask is layer-wise magnitude pruning (LWM).
 *   mask                per prunable tensor of N weights, the floor(S*N + 1e-6) lowest |s| are
 *                       pruned (prune.h's count, HYDRA's int((1-k)*numel)); among equal |s|
 *                       the lower index is pruned first, as prune.c's selection.
 *   forward             W_eff = W * m: the tensors hold W_eff and no mask while scores train,
 *                       so every engine computes the full dL/dW_eff (dense: HYDRA's is dense).
 *   backward            dL/ds = (dL/dW_eff * W) * sign(s)  (GetSubnet passes the gradient
 *                       through; the sign comes from |s|; sign(0) = 0).
 *
 * The frozen weights W live in the state (one copy per prunable tensor).  The model switches
 * between three forms:
 *   running      data = W_eff, no mask                     (what the engine runs on)
 *   checkpoint   data = W, no mask                          (resumable: W is not lost)
 *   pruned       data = W_eff, mask = m                     (the result, ready to fine-tune)
 * Scores stay in tk_tensor.scores in every form.
 */
#ifndef TK_HYDRA_H
#define TK_HYDRA_H

#include "../compiler/model.h"

/* Writes the scaled score init into every prunable tensor (allocating scores where absent);
 * with only_missing, tensors that already have scores keep them.  *n_init (may be NULL)
 * receives the number of tensors initialised. */
tk_status tk_hydra_scaled_score_init(tk_model *m, int only_missing, int *n_init);

/* mask (n bytes) = 0 for the `prune` lowest |s[i]| (ties: lower index first), 1 elsewhere.
 * work holds n floats.  Fails on a NaN score. */
tk_status tk_hydra_topk_mask(const float *s, int64_t n, int64_t prune, float *work, uint8_t *mask);

typedef struct tk_hydra tk_hydra;

/* Takes m (its data as the frozen weights W; a masked tensor's pruned weights are 0 and stay
 * 0) into the running form: masks cleared, masks from the scores, data = W_eff.  Every
 * prunable tensor needs scores.  *masks_cleared (may be NULL) tells whether a tensor had a
 * mask (an engine made for m must then be synced with masks_changed).  Allocates everything
 * the steps need. */
tk_status tk_hydra_create(tk_model *m, double sparsity, tk_hydra **out, int *masks_cleared);
void tk_hydra_free(tk_hydra *h);

/* After the scores changed: new masks, data = W_eff (running form).  Allocates nothing. */
tk_status tk_hydra_refresh(tk_hydra *h);

/* sgrad[t] = (wgrad[t] * W) * sign(scores) for every prunable tensor t (wgrad = dL/dW_eff);
 * both arrays have n_tensors pointers, the others are left alone. */
void tk_hydra_score_grads(const tk_hydra *h, float *const *wgrad, float *const *sgrad);

/* The forms (see above).  to_checkpoint: data = W.  to_running: data = W_eff, masks cleared.
 * to_pruned: data = W_eff, masks set (allocates the mask bytes). */
void tk_hydra_to_checkpoint(tk_hydra *h);
void tk_hydra_to_running(tk_hydra *h);
tk_status tk_hydra_to_pruned(tk_hydra *h);

/* The current mask of tensor t (NULL when t is not prunable), and the sparsity asked for. */
const uint8_t *tk_hydra_mask(const tk_hydra *h, int t);
double tk_hydra_sparsity(const tk_hydra *h);
/* Fraction of the prunable weights pruned by the current masks. */
double tk_hydra_achieved(const tk_hydra *h);

#endif
