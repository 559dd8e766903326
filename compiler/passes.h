/* passes.h -- graph passes for frozen inference: BatchNorm folding and fusion marks.
 *
 * The passes run between graph checks and planning (see compiler/aot.c for the AOT pipeline):
 *
 *   model (shapes inferred) -> tk_pass_fold_bn -> tk_model_infer (invariants again)
 *                           -> tk_pass_mark_fusion -> plan -> emit
 *
 * A pass never changes results beyond float rounding.  Folding is only valid for frozen
 * inference (BatchNorm in eval mode): the folded model has no BatchNorm statistics left to
 * train or update, so the passes drop any training state.
 *
 * BN folding: a batchnorm layer whose input value is produced by a conv2d or linear layer and
 * read by nobody else is merged into that layer:
 *     a[c] = gamma[c] / sqrt(running_var[c] + eps)
 *     W'[c, ...] = W[c, ...] * a[c]          (pruned weights stay exactly zero; masks kept)
 *     b'[c] = (b[c] - running_mean[c]) * a[c] + beta[c]   (b = 0 when the layer had no bias)
 * computed in double, stored as float.  The batchnorm layer and its four tensors disappear
 * and the layers reading its value read the conv's value instead.  A batchnorm that cannot be
 * folded (its input comes from an add, a pool, the model input, or a value with other
 * readers) stays as it is.
 *
 * Fusion marks do not change the model: they record that a layer's output goes through a
 * ReLU in the layer's own epilogue (conv2d, linear, batchnorm, add, scale followed by a relu
 * that is the only reader of the value), so executors can skip the separate relu pass.
 */
#ifndef TK_PASSES_H
#define TK_PASSES_H

#include "model.h"

#include <stdio.h>

typedef struct {
  int fold_bn; /* fold batchnorm into the preceding conv/linear (default 1) */
  int fuse;    /* mark relu fusion (default 1) */
} tk_pass_opts;

void tk_pass_opts_default(tk_pass_opts *o);

/* Per-layer marks over a model (indices are that model's layers). */
typedef struct {
  int n_layers;
  unsigned char *relu_epilogue; /* 1: apply relu when storing this layer's output */
  unsigned char *absorbed;      /* 1: this relu layer is done by its producer's epilogue;
                                   its value is the producer's value */
  int n_fused;
} tk_fusion;

/* Statistics of one run of the passes. */
typedef struct {
  int bn_folded;  /* batchnorm layers merged into a conv/linear */
  int bn_kept;    /* batchnorm layers that could not be folded */
  int bias_added; /* conv/linear layers that got a bias tensor from folding */
  int relu_fused;
} tk_pass_stats;

/* Number of layers that read value v (v = 0 is the input; layer i produces v = i + 1).
 * The model output (the last value) counts one extra reader. */
int tk_value_readers(const tk_model *m, int v);

/* BN folding.  m must have passed tk_model_infer.  *out is a new model (shapes inferred);
 * m is not changed.  stats may be NULL. */
tk_status tk_pass_fold_bn(const tk_model *m, tk_model **out, tk_pass_stats *stats);

/* Fusion marks for m (shapes inferred). */
tk_status tk_pass_mark_fusion(const tk_model *m, tk_fusion **out, tk_pass_stats *stats);
void tk_fusion_free(tk_fusion *f);

/* The whole pass pipeline: fold (if asked), check the invariants again, mark fusion.
 * *out_model is always a new model (a copy when nothing was folded); *out_fusion may be
 * NULL when the caller does not want the marks. */
tk_status tk_passes_run(const tk_model *m, const tk_pass_opts *o, tk_model **out_model,
                        tk_fusion **out_fusion, tk_pass_stats *stats);

/* Human-readable listing of a model after the passes (for --dump-passes). */
void tk_passes_dump(FILE *f, const tk_model *m, const tk_fusion *fu, const tk_pass_stats *st);

#endif
