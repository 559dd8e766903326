/* compile.h -- the compiler's contract: options, the per-layer plan, and kernels.
 *
 * Pipeline (compiler/compile.c keeps it visible in one function):
 *   model (verified, shapes inferred) -> plan (plan.c) -> emit C per layer from templates
 *   (emit.c) -> clang -> object -> ORC JIT (jit.c), cached on disk -> tk_kernel objects
 *   that the executor (runtime/exec.c) calls.
 *
 * A kernel implements one conv2d or linear layer (linear is a 1x1 conv on a 1x1 map).
 * All activations at this interface are NCHW contiguous:
 *   x  (n, I, H, W)     y (n, O, OH, OW)     linear: x (n, I), y (n, O)
 * Kernels are single-threaded per call range internally driven by the kernel's own OpenMP
 * loop (GCC libgomp, the one OpenMP runtime in the process); they never allocate per call.
 */
#ifndef TK_COMPILE_H
#define TK_COMPILE_H

#include "model.h"

typedef enum {
  TK_VARIANT_NONE = 0,       /* not a conv/linear layer */
  TK_VARIANT_REFERENCE,      /* naive reference loops (tests, fallback without a toolchain) */
  TK_VARIANT_DENSE,          /* oneDNN */
  TK_VARIANT_SPARSE_TABLE,   /* generated, table-driven over the mask (values passed as data) */
  TK_VARIANT_SPARSE_UNROLLED,/* generated, indices as constants, <= ~100 nnz per function */
  TK_VARIANT_VALUE_BAKED,    /* generated, values as immediates: frozen inference only */
  TK_VARIANT_EMPTY,          /* every weight pruned: output is the bias */
  TK_VARIANT_COUNT
} tk_variant;

const char *tk_variant_name(tk_variant v);

struct tk_compile_opts {
  int batch;               /* batch the plan is made for (the engine's max_batch if 0) */
  int threads;             /* 0 = omp_get_max_threads() */
  int training;            /* also build input- and weight-gradient kernels */
  int tune;                /* time the candidates instead of trusting the cost model */
  int force;               /* -1 = planner decides; else a tk_variant for every conv/linear */
  const char *cache_dir;   /* NULL = $TICKET_CACHE or ~/.cache/ticket */
  int no_cache;            /* compile afresh, write nothing */
  int verbose;             /* log each layer's choice and the compile steps to stderr */
};
typedef struct tk_compile_opts tk_compile_opts;
void tk_compile_opts_default(tk_compile_opts *o);

typedef struct {
  tk_variant variant;
  int vec_batch;           /* passes vectorised over the batch (TK_VB_* bits); the others over the
                            * flattened spatial index.  Linear layers: TK_VB_ALL (always the batch) */
  double est_sparse_us, est_dense_us; /* cost-model (or measured, with tune) time per call */
  char reason[192];        /* one line: why */
} tk_layer_plan;

/* tk_layer_plan.vec_batch: one bit per pass.  TK_VB_BWD_T (stride-1 convs, training): the
 * input gradient runs as the forward of the transposed layer (dy -> dx with the flipped,
 * transposed pattern; its own kernel, on the forward's form: TK_VB_FWD decides that one too),
 * instead of the layer's own input-gradient functions (TK_VB_BWD_INPUT then clear). */
enum { TK_VB_FWD = 1, TK_VB_BWD_INPUT = 2, TK_VB_BWD_WEIGHT = 4, TK_VB_ALL = 7, TK_VB_BWD_T = 8 };
/* Whether a layer can have TK_VB_BWD_T: a conv with stride and dilation 1, one group and
 * padding at most K-1 (its transposed layer's padding K-1-P is then >= 0). */
int tk_conv_transposable(const tk_layer *l);

typedef struct {
  int n_layers;            /* == model n_layers; non-conv layers have TK_VARIANT_NONE */
  tk_layer_plan *layers;
  int batch, threads;
} tk_plan;

tk_status tk_plan_make(const tk_model *m, const tk_compile_opts *o, tk_plan **out);
void tk_plan_free(tk_plan *p);

/* ---- kernels -------------------------------------------------------------------------- */
typedef struct tk_kernel tk_kernel;
typedef struct {
  /* y = conv(x, W*M) + b for a batch of n <= max_batch */
  tk_status (*fwd)(tk_kernel *k, const float *x, float *y, int n);
  /* dx = d(sum y*dy)/dx  (overwritten) */
  tk_status (*bwd_input)(tk_kernel *k, const float *dy, float *dx, int n);
  /* dw (weight numel) and db (O, or NULL) overwritten; entries of dw off the mask are 0 */
  tk_status (*bwd_weight)(tk_kernel *k, const float *x, const float *dy, float *dw, float *db, int n);
  /* the layer's weight/bias values changed (same mask): repack (this also drops a fold) */
  tk_status (*update)(tk_kernel *k);
  void (*destroy)(tk_kernel *k);

  /* ---- optional: an eval-mode per-channel affine folded into the layer (NULL: not supported;
   * the caller then runs the layer and the affine separately).  Used by the executor to fold an
   * eval-mode batchnorm y = scale[o]*z + shift[o] (z = conv(x, W*M) + b) into its conv/linear:
   *   fold(k, scale, shift)   installs W'[o,...] = W[o,...]*scale[o] (the mask is unchanged) and
   *                           b'[o] = b[o]*scale[o] + shift[o] (b = 0 without a bias), computed from
   *                           the model's current weights; scale, shift: O floats each, copied.
   *                           scale NULL drops the fold.  Not per call: once per weight or
   *                           statistics change (update() drops the fold).  Allocates nothing.
   *   fwd_folded              y = relu?(conv(x, W') + b'): relu 1 applies max(., 0) at the store
   *                           (NaN passes, as PyTorch's ReLU)
   *   bwd_input_folded        dx = conv_transpose(dy masked, W'), where masked means dy taken as 0
   *                           where relu_y <= 0 (relu_y: the layer's folded, ReLU'd output, same
   *                           layout as dy; NULL: no masking)
   * The folded calls fail with TK_ERR_ARG when no fold is installed. */
  tk_status (*fold)(tk_kernel *k, const float *scale, const float *shift);
  tk_status (*fwd_folded)(tk_kernel *k, const float *x, float *y, int n, int relu);
  tk_status (*bwd_input_folded)(tk_kernel *k, const float *dy, const float *relu_y, float *dx, int n);

  /* ---- optional, where the kernel's caps say so (the executor's fusions; NULL or a missing cap:
   * the caller runs the add as a pass of its own):
   *   fwd_folded_res   (TK_KCAP_FWD_RES) y = relu?(conv(x, W') + b' + res): a residual add, and
   *                    the ReLU after it, fused into the folded forward's store (res: y's layout)
   *   bwd_input_acc    (TK_KCAP_BWD_ACC) dx += the input gradient: of the fold's values with dy
   *                    masked by relu_y when folded (as bwd_input_folded), else of the layer's
   *                    own (relu_y NULL), summed into dx by the kernel's store instead of a
   *                    temporary and a pass of its own */
  tk_status (*fwd_folded_res)(tk_kernel *k, const float *x, const float *res, float *y, int n, int relu);
  tk_status (*bwd_input_acc)(tk_kernel *k, const float *dy, const float *relu_y, float *dx, int n, int folded);
} tk_kernel_vtbl;

enum { TK_KCAP_FWD_RES = 1, TK_KCAP_BWD_ACC = 2 };

struct tk_kernel {
  const tk_kernel_vtbl *v;
  tk_variant variant;
  const tk_model *m;
  int layer;
  int max_batch;
  unsigned caps; /* TK_KCAP_* bits: which optional calls this kernel supports */
};

/* Providers. */
tk_status tk_kernel_reference_create(const tk_model *m, int layer, int max_batch, tk_kernel **out); /* runtime/kernel_ref.c */
tk_status tk_kernel_dense_create(const tk_model *m, int layer, int max_batch, tk_kernel **out);     /* runtime/dense.c */
/* Generates, compiles (JIT, cached) and wraps kernels for every layer whose plan variant is a
 * generated one; kernels[i] is set for those layers and left untouched for the others. */
tk_status tk_sparse_build(const tk_model *m, const tk_plan *p, const tk_compile_opts *o, int max_batch,
                          tk_kernel **kernels); /* compiler/sparse.c */

#endif
