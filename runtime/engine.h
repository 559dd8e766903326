/* engine.h -- what runs a model: the contract between the runtime (attacks, training,
 * pruning, eval) and the engines that execute a graph (the reference engine, the compiled
 * engine, the dense oneDNN engine).
 *
 * An engine is created for one model and a maximum batch; it allocates everything then.
 * Layout: x (n, C, H, W) NCHW contiguous raw pixels (the engine applies the model's input
 * normalisation); logits (n, classes).
 *
 * The engine reads weights from the model's tensors.  After changing tensor data (an
 * optimizer step, a new mask), call tk_engine_sync(); a compiled engine repacks values then
 * (and recompiles only if a mask changed).
 */
#ifndef TK_ENGINE_H
#define TK_ENGINE_H

#include "../compiler/model.h"

struct tk_compile_opts; /* compiler/compile.h */

typedef enum { TK_BN_EVAL = 0, TK_BN_TRAIN = 1 } tk_bn_mode;

typedef struct tk_engine_vtbl {
  const char *name;
  /* Forward.  TK_BN_TRAIN uses batch statistics and updates running statistics in the
   * model's tensors (momentum as in PyTorch, unbiased variance for the running estimate).
   * Keeps what backward needs, for the last forward only. */
  tk_status (*forward)(tk_engine *e, const float *x, int n, tk_bn_mode bn, float *logits);
  /* Backward of the last forward, given dL/dlogits (n, classes).
   * dx: dL/dx (n, C, H, W) with respect to raw pixels, or NULL.
   * If param_grads, e->grads[t] (numel of tensor t) receives dL/dtensor for every trainable
   * tensor (overwritten, not accumulated); for masked tensors entries off the mask may be
   * anything and the optimizer ignores them. */
  tk_status (*backward)(tk_engine *e, const float *dlogits, float *dx, int param_grads);
  /* Model tensor data (or masks) changed. */
  tk_status (*sync)(tk_engine *e, int masks_changed);
  void (*destroy)(tk_engine *e);
} tk_engine_vtbl;

struct tk_engine {
  const tk_engine_vtbl *v;
  tk_model *m;       /* not owned */
  int max_batch;
  float **grads;     /* n_tensors pointers; NULL for tensors that are not trainable */
  int threads;       /* OpenMP threads the engine uses (0 = default) */
};

static inline tk_status tk_engine_forward(tk_engine *e, const float *x, int n, tk_bn_mode bn, float *logits) {
  return e->v->forward(e, x, n, bn, logits);
}
static inline tk_status tk_engine_backward(tk_engine *e, const float *dlogits, float *dx, int param_grads) {
  return e->v->backward(e, dlogits, dx, param_grads);
}
static inline tk_status tk_engine_sync(tk_engine *e, int masks_changed) { return e->v->sync(e, masks_changed); }

/* Engines (each in its own file). */
tk_status tk_ref_engine_create(tk_model *m, int max_batch, tk_engine **out);      /* runtime/ref/ref.c */
tk_status tk_compiled_engine_create(tk_model *m, int max_batch, const struct tk_compile_opts *opts,
                                    tk_engine **out); /* runtime/exec.c */
tk_status tk_dense_engine_create(tk_model *m, int max_batch, tk_engine **out); /* exec.c */

/* Shared helpers for engine implementers (runtime/engine.c). */
tk_status tk_engine_alloc_grads(tk_engine *e);  /* grads for every trainable tensor */
void tk_engine_free_grads(tk_engine *e);

/* Losses (runtime/loss.c): mean softmax cross-entropy over the batch.  Returns the loss;
 * dlogits (n, classes) = d(mean CE)/dlogits when not NULL; `correct` counts argmax hits. */
double tk_softmax_xent(const float *logits, const int *labels, int n, int classes, float *dlogits, int *correct);

#endif
