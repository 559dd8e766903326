/* exec.h -- extras of the fast graph executor (runtime/exec.c) beyond engine.h: the plan it
 * runs, its memory, and an optional per-layer profile for benchmarks.
 *
 * The engines themselves are created through engine.h (tk_compiled_engine_create,
 * tk_dense_engine_create) or tk_engine_create().  Every function here accepts any engine and
 * answers 0 / NULL for engines that are not executor engines (the reference engine).
 */
#ifndef TK_EXEC_H
#define TK_EXEC_H

#include "../compiler/compile.h"
#include "engine.h"

/* 1 when e is a compiled or dense engine of this executor. */
int tk_exec_is_exec(const tk_engine *e);

/* The kernel variant each conv/linear layer runs (TK_VARIANT_NONE for other layers). */
tk_variant tk_exec_layer_variant(const tk_engine *e, int layer);
/* One line on how the kernels were chosen ("plan", "dense everywhere: ...").  Never NULL. */
const char *tk_exec_how(const tk_engine *e);
/* Batchnorms folded into their conv/linear in eval-mode forwards (see exec.c; 0 with
 * TICKET_FOLD_BN=0 or when no kernel supports it). */
int tk_exec_bn_folds(const tk_engine *e);
/* Residual adds fused into a folded layer's store in eval-mode forwards (see exec.c; 0 with
 * TICKET_FUSE=0 or TICKET_FOLD_BN=0, or where no kernel supports it). */
int tk_exec_res_fused(const tk_engine *e);
/* Bytes of the engine's arena (activations, gradients, statistics, kernel scratch). */
size_t tk_exec_arena_bytes(const tk_engine *e);

/* A new engine of e's kind, options and model, for batches up to max_batch on `threads`
 * OpenMP threads (planned for that batch and thread count).  It reads the model's tensors as
 * they are now; see tk_exec_generation for keeping it in step with e. */
tk_status tk_exec_replicate(const tk_engine *e, int max_batch, int threads, tk_engine **out);
/* Counters of what changed e's results since it was created: *values counts its syncs and its
 * train-mode forwards (which move the running statistics), *masks its syncs with changed
 * masks.  A replica made at counters (v, m) is current while they are unchanged; otherwise
 * it needs tk_engine_sync(replica, masks changed).  Returns 0 (counters untouched) for engines
 * that are not executor engines. */
int tk_exec_generation(const tk_engine *e, unsigned long *values, unsigned long *masks);

/* Per-layer wall time of forward and backward, summed over calls since the last enable.
 * Timing costs two clock reads per layer and call; off by default.  An eval-mode batchnorm
 * folded into its conv/linear is timed with that layer (its own entry counts ~0). */
typedef struct {
  double fwd_s, bwd_s;
  long fwd_calls, bwd_calls;
} tk_exec_layer_time;
void tk_exec_profile_enable(tk_engine *e, int on); /* also resets the sums */
/* Copies min(cap, n_layers) entries; returns n_layers (0 for other engines).  Time spent in a
 * ReLU fused into the layer before it is counted there. */
int tk_exec_profile(const tk_engine *e, tk_exec_layer_time *out, int cap);

#endif
