/* attack.h -- L-inf PGD and FGSM on any engine.
 *
 * Semantics (SEEDS.md 3.1, 3.3): start from x + delta, delta ~ U(-eps, eps) (or
 * 0.001*N(0,1) for TRADES/MART, or 0), clamped to the model's pixel range; each step
 * x += alpha * sign(grad of the loss); project onto the eps-ball around x and onto
 * [lo, hi].  eps and alpha are in pixel units even when the model normalises its input.
 * Restarts keep, per example, the first adversarial example that fools the model (or the
 * last restart's when none does), so restarts never raise robust accuracy.
 */
#ifndef TK_ATTACK_H
#define TK_ATTACK_H

#include "engine.h"

typedef enum { TK_START_UNIFORM = 0, TK_START_NORMAL_0001, TK_START_ZERO } tk_attack_start;
typedef enum { TK_ATTACK_LOSS_CE = 0, TK_ATTACK_LOSS_KL } tk_attack_loss; /* KL(p_clean || p_adv) as in TRADES */

typedef struct {
  double eps, alpha;
  int steps;                 /* 1 with start ZERO and alpha = eps is FGSM */
  int restarts;              /* >= 1 */
  tk_attack_start start;
  tk_attack_loss loss;
  tk_bn_mode bn;             /* BatchNorm mode of the attack's forwards (eval by default) */
} tk_attack_opts;

typedef struct tk_attacker tk_attacker;
/* All buffers for batches up to e->max_batch are allocated here. */
tk_status tk_attacker_create(tk_engine *e, const tk_attack_opts *o, tk_attacker **out);
/* x_adv (n, C, H, W) receives the adversarial batch; fooled[i] (may be NULL) = 1 when the
 * model misclassifies x_adv[i].  For KL loss `y` may be NULL. */
tk_status tk_attacker_run(tk_attacker *a, const float *x, const int *y, int n, tk_rng *rng, float *x_adv,
                          int *fooled);
void tk_attacker_free(tk_attacker *a);

#endif
