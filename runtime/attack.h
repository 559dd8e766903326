/* attack.h -- L-inf PGD and FGSM on any engine.
 *
 * Semantics (SEEDS.md 3.1, 3.3): start from x + delta, delta ~ U(-eps, eps) (or
 * 0.001*N(0,1) for TRADES/MART, or 0), clamped to the model's pixel range; each step
 * x += alpha * sign(grad of the loss); project onto the eps-ball around x and onto
 * [lo, hi].  eps and alpha are in pixel units even when the model normalises its input.
 * Restarts keep, per example, the first adversarial example that fools the model (or the
 * last restart's when none does), so restarts never raise robust accuracy.
 *
 * Worst-case tracking (the default, for evaluation): the clean image and every iterate
 * x_0 (the start), x_1, ..., x_K are checked, and x_adv is the first of them that the model
 * misclassifies (the last iterate when none does).  PGD itself is not monotone (a later
 * iterate can be classified correctly again), but with tracking these hold by construction:
 *   - robust accuracy <= standard accuracy (the clean image is a candidate: delta = 0);
 *   - eps = 0 gives robust accuracy == standard accuracy (every candidate equals x);
 *   - more steps never raise it: with the same seed, K+1 steps repeat the K-step
 *     trajectory exactly and check one more iterate;
 *   - more restarts never raise it: restart r is only run for examples not yet fooled.
 * Robust accuracy is NOT guaranteed to be monotone in eps (trajectories for different eps
 * differ); it is in practice on any grid coarse enough to matter.
 * With final_iterate = 1 the attack follows the reference implementations exactly
 * (advertorch LinfPGDAttack, HYDRA/TRADES): x_adv is the last iterate, nothing is tracked.
 * That is what adversarial training wants.
 *
 * Float32 semantics follow advertorch's: delta is the state; a step is
 *   delta += alpha * sign(g);  delta = clamp(delta, -eps, eps);  delta = clamp(x + delta, lo, hi) - x
 * with sign(0) = 0, and the model sees (and x_adv is) clamp(x + delta, lo, hi).  The CE
 * gradient is that of the mean over the batch given to tk_attacker_run (scale does not
 * change the sign); the KL loss is summed over the batch (TRADES' KLDivLoss(sum)).  Both
 * are computed in float32 the way PyTorch computes them (log-softmax backward), so that
 * near-saturated examples get the gradient signs the published numbers were measured with.
 * Every start, including TRADES' 0.001*N(0,1), is clamped to [lo, hi] (TRADES' own code
 * feeds its first forward unclamped; after the first step both are clamped alike).
 *
 * BatchNorm: bn = TK_BN_TRAIN runs the attack's forwards with batch statistics; those
 * forwards update the running statistics, which tk_attacker_run snapshots and restores
 * unless update_bn_stats is set.  In eval mode finished examples are dropped from the batch
 * (they cannot change the others); in train mode the batch is kept whole, because batch
 * statistics couple the examples.
 *
 * Parallel attacks (eval mode, o.chunk > 0, an executor engine with T >= 2 threads): an
 * example's attack does not depend on the other examples of its batch, so tk_attacker_create
 * makes T replicas of the engine (tk_exec_replicate: planned for one chunk on one thread) and a
 * run cuts the batch into a multiple of T chunks of at most o.chunk examples, which the T
 * threads attack at once, each on its replica: no synchronisation between layers, and each
 * thread's activations are one chunk's.  The starts are drawn in the serial order and the CE
 * gradient is still that of the mean over the whole batch, so every example follows the
 * trajectory the serial attack gives it on the replicas' kernels (which may round differently
 * from the engine's own, being planned for another batch).  The replicas follow the engine:
 * a run first syncs them when the engine was synced or ran a train-mode forward since
 * (tk_exec_generation).  TICKET_ATTACK_CHUNK overrides o.chunk ("0": off, for A/B runs).
 * tk_attack_opts_default sets o.chunk = 32.
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
  int final_iterate;         /* 1: x_adv is the last iterate (training, reference semantics);
                                0: worst-case tracking (evaluation), see above */
  int update_bn_stats;       /* with bn = TK_BN_TRAIN: keep the running-statistics updates */
  int chunk;                 /* eval mode on an executor engine with 2+ threads: the batch is cut
                                into chunks of at most this many examples, attacked at once by
                                one single-threaded replica of the engine per thread (see
                                "Parallel attacks" above); 0: the engine alone, with its threads */
} tk_attack_opts;

/* eps 8/255, alpha 2/255, 10 steps, 1 restart, uniform start, CE, BatchNorm eval, tracking,
 * chunks of 32 for parallel attacks. */
void tk_attack_opts_default(tk_attack_opts *o);

typedef struct tk_attacker tk_attacker;
/* All buffers for batches up to e->max_batch are allocated here. */
tk_status tk_attacker_create(tk_engine *e, const tk_attack_opts *o, tk_attacker **out);
/* x_adv (n, C, H, W) receives the adversarial batch; fooled[i] (may be NULL) = 1 when the
 * model misclassifies x_adv[i].  For KL loss `y` may be NULL. */
tk_status tk_attacker_run(tk_attacker *a, const float *x, const int *y, int n, tk_rng *rng, float *x_adv,
                          int *fooled);
/* As tk_attacker_run, but the first restart starts from x + delta0 (n, C, H, W) (clamped to
 * [lo, hi]) instead of a random draw; later restarts draw from rng as usual.  For tests and
 * for reproducing another implementation's trajectory. */
tk_status tk_attacker_run_from(tk_attacker *a, const float *x, const int *y, int n, const float *delta0,
                               tk_rng *rng, float *x_adv, int *fooled);
/* Threads of the parallel attack (0: the engine attacks alone) and *chunk, its largest chunk. */
int tk_attacker_workers(const tk_attacker *a, int *chunk);
void tk_attacker_free(tk_attacker *a);

#endif
