/* optim.h -- SGD with momentum, Nesterov and weight decay, with PyTorch's semantics, and
 * with the mask kept exact.
 *
 * One step, per element (torch.optim.SGD, dampening 0):
 *   d   = g + wd * w
 *   buf = mu * buf + d                  (buf starts at 0, so the first step gives buf = d)
 *   d   = nesterov ? d + mu * buf : buf
 *   w  -= lr * d
 * For a masked tensor, the weight, the gradient and the momentum at every pruned position are
 * set to exactly 0 on every step, so pruned weights stay exactly zero for any number of
 * steps, with momentum and weight decay.  Weight decay applies to every trainable tensor
 * (weights, biases, BatchNorm affine), as model.parameters() does in the seed recipes.
 *
 * What is trained: by default the data of every trainable tensor.  tk_sgd_create_targets
 * chooses per tensor: its data, its HYDRA popup scores (tk_tensor.scores; HYDRA's score
 * optimisation, runtime/hydra.h: the weights are frozen then), or nothing.  Scores are dense:
 * every score is updated, with weight decay and momentum, whatever the tensor's mask.
 *
 * The momentum buffers live in the optimizer (one per trained tensor) and are saved into,
 * and restored from, a model's TrainState (tk_train_state.momenta, matched by tensor name).
 * A tensor whose scores are trained keeps the scores' momentum under the tensor's name (its
 * data has none: it is frozen); the run's config tells which (train.c refuses to resume with
 * other settings).
 */
#ifndef TK_OPTIM_H
#define TK_OPTIM_H

#include "../compiler/model.h"

typedef struct {
  double lr;        /* base learning rate (the schedule scales it) */
  double momentum;  /* mu; 0 = plain SGD */
  double wd;        /* weight decay (L2, added to the gradient) */
  int nesterov;
} tk_sgd_opts;

/* What an optimizer trains of a tensor. */
typedef enum { TK_SGD_SKIP = 0, TK_SGD_DATA = 1, TK_SGD_SCORES = 2 } tk_sgd_target;

typedef struct {
  tk_sgd_opts o;
  tk_model *m;      /* not owned */
  uint8_t *target;  /* m->n_tensors tk_sgd_target values */
  float **buf;      /* m->n_tensors pointers; NULL for tensors not trained (or momentum 0) */
} tk_sgd;

/* The update of one tensor of n elements; mask may be NULL (dense).  g is modified: its
 * pruned entries are zeroed.  Exposed for tests. */
void tk_sgd_update(float *w, float *g, float *buf, const uint8_t *mask, int64_t n, float lr, float mu, float wd,
                   int nesterov);

/* Trains the data of every trainable tensor. */
tk_status tk_sgd_create(tk_model *m, const tk_sgd_opts *o, tk_sgd **out);
/* Trains what target[t] (m->n_tensors tk_sgd_target values) says; TK_SGD_SCORES needs the
 * tensor's scores, TK_SGD_DATA a trainable tensor. */
tk_status tk_sgd_create_targets(tk_model *m, const tk_sgd_opts *o, const uint8_t *target, tk_sgd **out);
void tk_sgd_free(tk_sgd *s);
/* One step over every trained tensor: grads[t] (numel of tensor t) is the gradient of what
 * is trained of t (its data or its scores), lr = the learning rate of this step. */
void tk_sgd_step(tk_sgd *s, float *const *grads, double lr);

/* Checks that every pruned position has weight 0 and, when its data is trained, momentum 0.
 * Returns TK_ERR_INTERNAL naming the first tensor and element that breaks it. */
tk_status tk_sgd_check_mask(const tk_sgd *s);

/* Copy the buffers into m->train->momenta (creating the TrainState when absent) and back. */
tk_status tk_sgd_save(const tk_sgd *s, tk_model *m);
/* Every trained tensor must have a momentum of the same name and size in `from`. */
tk_status tk_sgd_load(tk_sgd *s, const tk_train_state *from);

#endif
