/* train.h -- standard and adversarial training on any engine, keeping the mask exact.
 *
 * Three layers, each usable on its own:
 *   tk_lr_at()            the learning-rate schedules (step, cosine, cyclic, constant)
 *   tk_trainer_step()     one optimisation step of a recipe on one batch: the attack, the
 *                         loss and its gradient through every branch, the SGD update
 *   tk_train_run()        epochs over a data set: shuffling, augmentation, validation (SA/RA),
 *                         best-SA/best-RA models, checkpoints every epoch and on a stop
 *                         request, exact resumption, a CSV log
 *
 * Recipes (SEEDS.md 3.1, 3.3, 3.5).  B = batch, z = f(x) clean logits, z' = f(x_adv),
 * p = softmax(z), q = softmax(z'); every training forward runs BatchNorm in train mode.
 *   st       CE(z, y)
 *   pgd      CE(z', y); x_adv = PGD-K on CE from a uniform start in the eps-ball (Madry)
 *   fgsm-rs  CE(z', y); x_adv = one step of alpha (default 1.25 eps) from a uniform start
 *   trades   CE(z, y) + beta/B * sum_i KL(p_i || q_i); x_adv maximises KL from
 *            x + 0.001 N(0,1).  p is NOT detached: the gradient flows through both branches.
 *            Forwards x, x_adv, x in train mode, as HYDRA's trades_loss (three running-stat
 *            updates in that order).
 *   mart     CE(z', y) + mean_i -log(1.0001 - q_i[y'_i] + 1e-12)
 *              + beta/B * sum_i KL(p_i || q_i + 1e-12) * (1.0000001 - p_i[y_i]),
 *            y'_i = the most likely wrong class under q_i; x_adv = PGD-K on CE from
 *            x + 0.001 N(0,1).  Forwards x then x_adv in train mode, as YisenWang/MART;
 *            the clean branch is recomputed for its backward with the running statistics
 *            restored, so they see exactly two updates.
 * Attacks run with BatchNorm in eval mode unless attack_bn = TK_BN_TRAIN (Double-Win; the
 * attack's forwards then update the running statistics, as there).  Training attacks keep the
 * last iterate (attack.h final_iterate).  Two deliberate differences from the seed code: every
 * attack start is clamped to the pixel range (attack.h; HYDRA and MART add the 0.001 N(0,1)
 * start unclamped), and HYDRA's trainer/adv.py extra train-mode forward of x (for its accuracy
 * print, a fourth running-statistics update per TRADES step) is not repeated.
 *
 * HYDRA's pruning step (prune_scores; SEEDS.md 3.2, runtime/hydra.h): the same recipes and
 * loop train, instead of the weights, the popup scores of every prunable tensor (and the
 * BatchNorm affine parameters unless freeze_bn).  Each step runs on W_eff = W * m, m the
 * layer-wise top-k of |scores| at `sparsity`, with no mask on the tensors, so the engine
 * computes dL/dW_eff at every position (score training runs dense, as HYDRA's does); the
 * scores take dL/ds = (dL/dW_eff * W) sign(s) with the same SGD (momentum, weight decay on the
 * scores too); weights and biases never change; after the update the masks are recomputed.
 * At a fresh start, tensors without scores (all of them with scaled_score_init) get
 * s = sqrt(6/fan_in) W / max|W|.  Checkpoints hold the dense W, the scores and their
 * momenta (under the weight tensors' names); best and final models are the pruned network:
 * W with the mask applied, the mask set, the scores kept, provenance method "hydra".
 *
 * Determinism: given the seed (and the thread count), a run is bit-for-bit reproducible, and a
 * run resumed from any checkpoint ends with the same weights as an uninterrupted one.  The
 * epoch's shuffle comes from (seed, epoch); augmentation and attack starts draw from one
 * generator whose state is saved in every checkpoint; validation draws from (seed, epoch).
 */
#ifndef TK_TRAIN_H
#define TK_TRAIN_H

#include "attack.h"
#include "data.h"
#include "engine.h"
#include "hydra.h"
#include "optim.h"

#include <signal.h>

/* ---- recipes and schedules ------------------------------------------------------------- */
#define TK_TRAIN_MODES(X) X(TK_TRAIN_ST, "st") X(TK_TRAIN_PGD, "pgd") X(TK_TRAIN_FGSM_RS, "fgsm-rs") \
  X(TK_TRAIN_TRADES, "trades") X(TK_TRAIN_MART, "mart")
typedef enum {
#define X(e, s) e,
  TK_TRAIN_MODES(X)
#undef X
  TK_TRAIN_MODE_COUNT
} tk_train_mode;

#define TK_SCHEDULES(X) X(TK_SCHED_STEP, "step") X(TK_SCHED_COSINE, "cosine") X(TK_SCHED_CYCLIC, "cyclic") \
  X(TK_SCHED_CONSTANT, "constant")
typedef enum {
#define X(e, s) e,
  TK_SCHEDULES(X)
#undef X
  TK_SCHED_COUNT
} tk_schedule_kind;

const char *tk_train_mode_name(tk_train_mode m);
int tk_train_mode_parse(const char *s, tk_train_mode *out);          /* 1 if known */
const char *tk_schedule_name(tk_schedule_kind k);
int tk_schedule_parse(const char *s, tk_schedule_kind *out);

#define TK_MAX_MILESTONES 16
typedef struct {
  tk_schedule_kind kind;
  double lr;          /* base (peak, for cyclic) learning rate */
  int epochs;         /* E */
  /* step: lr * gamma^(number of milestones m with m < e), e the epoch counted from 1
   * (torch MultiStepLR with milestones counted in finished epochs).  None given: E/2, 3E/4. */
  int n_milestones;
  int milestones[TK_MAX_MILESTONES];
  double gamma;       /* 0.1 */
} tk_lr_schedule;

/* Learning rate of step `iter` (0-based) of epoch `epoch` (1-based) with `iters` steps each:
 *   step      as above
 *   cosine    lr * 0.5 * (1 + cos((epoch-1)/E * pi))                       (HYDRA)
 *   cyclic    piecewise linear in t = epoch-1 + (iter+1)/iters through (0, 0), (P, lr),
 *             (E, 0) with P = floor(2E/5)                       (fast AT, locuslab/fast_adversarial)
 *   constant  lr */
double tk_lr_at(const tk_lr_schedule *s, int epoch, int iter, int iters);
/* Default milestones for a step schedule (E/2 and 3E/4, dropping duplicates and zeros). */
void tk_lr_default_milestones(tk_lr_schedule *s);

/* ---- augmentation (runtime/augment.c) -------------------------------------------------- */
/* In place on x (n, c, h, w): per image, a random crop of the zero-padded image (pad on each
 * side; pad 0 = none), then a horizontal flip with probability 1/2 when `flip`.  Draws, per
 * image in order: top, left (uniform in 0..2 pad) when pad > 0, then the flip coin.
 * tmp holds c*h*w floats. */
void tk_augment_batch(float *x, int n, int c, int h, int w, int pad, int flip, tk_rng *rng, float *tmp);

/* The robust losses on logits z (clean) and za (adversarial), both (n, K): the value, and the
 * gradients dz, dza of the value with respect to each (every term, both branches).  work
 * holds 3 K doubles.  Exposed for tests. */
double tk_trades_loss(const float *z, const float *za, const int *y, int n, int K, double beta, float *dz, float *dza,
                      double *work);
double tk_mart_loss(const float *z, const float *za, const int *y, int n, int K, double beta, float *dz, float *dza,
                    double *work);

/* ---- one step ----------------------------------------------------------------------------- */
typedef struct {
  tk_train_mode mode;
  int epochs, batch;
  tk_sgd_opts sgd;
  tk_lr_schedule sched;
  double eps, alpha;     /* pixel units; alpha of the training attack */
  int steps;             /* attack steps for pgd, trades, mart (fgsm-rs: 1) */
  double beta;           /* trades, mart */
  tk_bn_mode attack_bn;  /* BatchNorm mode of the training attack */
  int crop_pad, flip;    /* augmentation */
  double val_alpha;      /* validation attack: PGD-val_steps, eps, val_alpha, uniform start, eval BN */
  int val_steps;
  uint64_t seed;
  /* HYDRA score optimisation (see the top of this file) */
  int prune_scores;      /* train the scores of the prunable tensors, not the weights */
  double sparsity;       /* layer-wise fraction pruned, [0, 1]; < 0 = not given */
  int scaled_score_init; /* at a fresh start, overwrite every tensor's scores with the scaled init */
  int freeze_bn;         /* keep the BatchNorm affine parameters fixed too */
} tk_train_opts;

/* Defaults: st, 1 epoch, batch 128, lr 0.1, momentum 0.9, wd 5e-4, cosine, eps 8/255,
 * alpha 2/255, 10 steps, beta 6, attack BN eval, no augmentation, validation PGD-10
 * with alpha 2/255, seed 1, weights trained (no score training). */
void tk_train_opts_default(tk_train_opts *o);
/* Checks ranges; fills derived defaults.  Errors name the option. */
tk_status tk_train_opts_check(tk_train_opts *o);

typedef struct {
  double loss;      /* the recipe's loss on this batch */
  int correct;      /* argmax hits: clean for st and trades, adversarial for pgd, fgsm-rs, mart */
  int n;
} tk_step_stats;

typedef struct tk_trainer tk_trainer;
/* Allocates everything for batches up to e->max_batch: attack, buffers, optimizer.  With
 * prune_scores, every prunable tensor needs scores; the model is put into the running form
 * (hydra.h: data = W_eff, masks cleared) and the engine synced. */
tk_status tk_trainer_create(tk_engine *e, const tk_train_opts *o, tk_trainer **out);
void tk_trainer_free(tk_trainer *t);
/* One step on (x, y) of n images (already augmented).  `start`: NULL (the attack draws its
 * random start from rng), or an (n, C, H, W) perturbation to start the attack from instead
 * (a testing hook that makes runs comparable with another implementation).  lr: this step's
 * learning rate. */
tk_status tk_trainer_step(tk_trainer *t, const float *x, const int *y, int n, const float *start, double lr,
                          tk_rng *rng, tk_step_stats *st);
tk_sgd *tk_trainer_sgd(tk_trainer *t);
/* The adversarial batch of the last step ((n, C, H, W)), NULL for st. */
const float *tk_trainer_last_adv(const tk_trainer *t);
/* The score-training state (NULL without prune_scores). */
tk_hydra *tk_trainer_hydra(tk_trainer *t);

/* ---- epochs ------------------------------------------------------------------------------- */
typedef struct {
  const char *out;          /* final model; NULL = do not write */
  const char *best_sa_out;  /* best validation SA / RA models; NULL = do not write */
  const char *best_ra_out;
  const char *checkpoint;   /* model + TrainState after every epoch and on a stop; NULL = none */
  const char *log_csv;      /* per-epoch CSV, rewritten atomically each epoch; NULL = none */
  const char *config;       /* JSON of the settings that shape the run, kept in the TrainState */
  const float *init_delta;  /* testing hook: (n_train, C, H, W) attack starts by image index */
  float *adv_out;           /* testing hook: (n_train, C, H, W) receives each image's latest
                               adversarial example, by image index; NULL = none */
  int progress;             /* progress lines on stderr */
  volatile sig_atomic_t *stop; /* when it becomes non-zero: finish the step, checkpoint, return */
  int max_steps;            /* > 0: stop (as on a stop request) after this many steps in this call */
  int resume;               /* continue from e->m's TrainState when it is a checkpoint */
} tk_run_opts;

typedef struct {
  int epochs_done;
  int64_t steps;
  int interrupted;          /* stopped early; the checkpoint holds the state */
  int resumed_epoch;        /* resumed after this many finished epochs (-1: fresh start) */
  int64_t resumed_step;
  double train_loss, train_acc; /* last finished epoch */
  double val_sa, val_ra;        /* last finished epoch, -1 without validation */
  double best_sa, best_ra;
  int best_sa_epoch, best_ra_epoch;
  double images_per_s, seconds; /* this call */
  double sparsity;
  int scores_init;          /* prune_scores: tensors whose scores got the scaled init */
  char *log;                /* JSON lines, one per finished epoch (owned; free()) */
} tk_run_result;

/* Trains e->m on `train` (validating on `val` when it has images).  With r->resume and a
 * TrainState in e->m that is a checkpoint (generator state present), the run continues from it
 * after checking that its config equals r->config; otherwise any TrainState is replaced.
 * The checkpoint state is kept in e->m->train as the run goes (and written to r->checkpoint).
 * The engine's max_batch must be at least o->batch.
 * With prune_scores, e->m ends as the pruned network after a finished run and as the
 * checkpoint (dense weights, scores, no masks) after an interrupted one, the engine synced
 * either way; after a failure it may be in any of hydra.h's forms. */
tk_status tk_train_run(tk_engine *e, const tk_dataset *train, const tk_dataset *val, const tk_train_opts *o,
                       const tk_run_opts *r, tk_run_result *res);
/* 1 when the model's TrainState is a resumable checkpoint (generator state and config present). */
int tk_train_state_resumable(const tk_model *m);
/* First differing setting of two flat config JSON objects as "key: a vs b", or NULL if equal. */
char *tk_config_diff(const char *a, const char *b);

#endif
