/* ops.h -- fast NCHW ops of the executor (runtime/exec.c): everything but conv and linear.
 *
 * Forward and backward side by side under parallel names (`tk_ops_<op>_fwd`,
 * `tk_ops_<op>_bwd`).  Activations are NCHW contiguous float32; dimension letters used in
 * every comment of this file and ops.c:
 *   N batch, C channels, H W height and width of a map, HW = H*W (1 for flat vectors).
 * Semantics are PyTorch's (BatchNorm2d/1d, ReLU, MaxPool2d, AvgPool2d with
 * count_include_pad=True and floor mode, adaptive average pool to 1x1, add, per-channel
 * scale).  The naive oracle lives in the reference engine (runtime/ref/ref.c).
 *
 * Backward functions take `acc`: 0 overwrites dx, 1 adds into it (a value read by several
 * layers sums the gradients of its readers).  Unless a comment says otherwise, dx may be
 * the same buffer as dy (the executor runs elementwise backward passes in place).
 * Parameter gradients (dgamma, dbeta, dw) are always overwritten; NULL skips them.
 *
 * Work is split with OpenMP over N x C planes (static schedule); per-channel reductions are
 * done by one thread each in a fixed order, so results do not depend on the thread count.
 * Small problems run on the calling thread.
 */
#ifndef TK_OPS_H
#define TK_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Measures what an OpenMP region of `threads` costs here (a few empty ones, their median) and
 * keeps the ops' loops serial below the size where splitting them pays: 16384 elements where
 * idle threads spin, about 20 times that where they sleep (OMP_WAIT_POLICY=PASSIVE).  Called
 * when an engine is made, outside parallel regions; TICKET_PAR_MIN=N sets the size instead.
 * tk_ops_par_min: the size in force. */
void tk_ops_calibrate(int threads);
long tk_ops_par_min(void);

/* ---- input normalisation: y = (x - mean[c]) / std[c] ---------------------------------- */
/* x, y (N, C, HW); mean/std (C) or NULL (then y = x). */
void tk_ops_normalize_fwd(const float *x, const float *mean, const float *std, float *y, int n, int c, int hw);
/* dx = dy / std[c] */
void tk_ops_normalize_bwd(const float *dy, const float *std, float *dx, int n, int c, int hw, int acc);

/* ---- batch normalisation, optionally fused with a following ReLU --------------------------
 * x, y (N, C, HW); gamma, beta, running_mean, running_var, save_mean, save_invstd, save_a,
 * save_b (C).
 * Eval: y = relu?((x - running_mean) * gamma / sqrt(running_var + eps) + beta); saves the
 *   running mean and 1/sqrt(running_var + eps) for backward.
 * Train: normalises with the batch mean and biased batch variance, saves them (mean and
 *   1/sqrt(var + eps)) and updates the running statistics in place:
 *   running = (1 - momentum) * running + momentum * batch, with the unbiased variance
 *   (N*HW / (N*HW - 1) times the biased one).  N*HW must be at least 2.
 * Both save the per-channel affine they applied, y = relu?(x * save_a + save_b), from which
 * the backward recomputes the ReLU's mask.  y may equal x when no backward follows (it reads
 * x).  y NULL: the statistics and the affine only, no output (an add applies the affine,
 * tk_ops_add_affine_fwd). */
void tk_ops_bn_eval_fwd(const float *x, const float *gamma, const float *beta, const float *running_mean,
                        const float *running_var, float eps, int relu, float *y, float *save_mean,
                        float *save_invstd, float *save_a, float *save_b, int n, int c, int hw);
void tk_ops_bn_train_fwd(const float *x, const float *gamma, const float *beta, float *running_mean,
                         float *running_var, float eps, float momentum, int relu, float *y, float *save_mean,
                         float *save_invstd, float *save_a, float *save_b, int n, int c, int hw);
/* Backward of either mode.  x: the forward's input; save_*: what it saved; relu: it fused a
 * ReLU (the gradient is masked where x * save_a + save_b > 0, exactly where the forward's y
 * is > 0; save_a and save_b are read only then).  train: 1 when the forward used batch
 * statistics (dx then includes the terms through the mean and variance).  x must not alias
 * dx. */
void tk_ops_bn_bwd(const float *x, const float *dy, const float *gamma, const float *save_mean,
                   const float *save_invstd, const float *save_a, const float *save_b, int relu, int train, float *dx,
                   float *dgamma, float *dbeta, int n, int c, int hw, int acc);

/* ---- ReLU ------------------------------------------------------------------------------- */
/* y = max(x, 0) over count elements (NaN stays NaN); y may equal x. */
void tk_ops_relu_fwd(const float *x, float *y, size_t count);
/* dx = dy * (y > 0), y the forward output. */
void tk_ops_relu_bwd(const float *y, const float *dy, float *dx, size_t count, int acc);

/* ---- pools ------------------------------------------------------------------------------ */
typedef struct {
  int c, ih, iw, oh, ow; /* channels, input and output map */
  int kh, kw, sh, sw, ph, pw;
} tk_pool_dims;

/* x (N, C, IH, IW) -> y (N, C, OH, OW); argmax (N, C, OH, OW) receives the index inside the
 * input plane (ih*IW + iw) of each maximum (the first one in scan order, or the last NaN, as
 * PyTorch).  Padding never wins: it acts as -inf. */
void tk_ops_maxpool_fwd(const tk_pool_dims *d, const float *x, float *y, int32_t *argmax, int n);
/* dx (N, C, IH, IW) receives dy at the argmax positions. dx must not alias dy. */
void tk_ops_maxpool_bwd(const tk_pool_dims *d, const float *dy, const int32_t *argmax, float *dx, int n, int acc);
/* Average over the window including zero padding (divisor kh*kw). */
void tk_ops_avgpool_fwd(const tk_pool_dims *d, const float *x, float *y, int n);
void tk_ops_avgpool_bwd(const tk_pool_dims *d, const float *dy, float *dx, int n, int acc); /* no alias */

/* ---- global average pool: x (N, C, HW) -> y (N, C) ---------------------------------------- */
void tk_ops_gap_fwd(const float *x, float *y, int n, int c, int hw);
void tk_ops_gap_bwd(const float *dy, float *dx, int n, int c, int hw, int acc); /* no alias */

/* ---- add, optionally fused with a following ReLU ----------------------------------------- */
/* y = relu?(a + b) over count elements; y may equal a or b. */
void tk_ops_add_fwd(const float *a, const float *b, int relu, float *y, size_t count);
/* y = relu?(f0(x0) + f1(x1)) over (N, C, HW), fk(x) = x * ak[c] + bk[c] (the batchnorm affine,
 * the very expression tk_ops_bn_*_fwd apply, so y is bit-identical to a batchnorm's output
 * added), or x itself when ak is NULL: a batchnorm's output pass fused into the add that
 * reads it.  y may equal x0 or x1. */
void tk_ops_add_affine_fwd(const float *x0, const float *a0, const float *b0, const float *x1, const float *a1,
                           const float *b1, int relu, float *y, int n, int c, int hw);
/* g = dy * (relu_y > 0) (or dy when relu_y is NULL); da (acc_a) and db (acc_b) receive g
 * (NULL skips).  dy is overwritten with g.  Any of dy, da, db may be the same buffer. */
void tk_ops_add_bwd(const float *relu_y, float *dy, float *da, int acc_a, float *db, int acc_b, size_t count);

/* ---- per-channel scale: y = x * w[c] --------------------------------------------------------- */
void tk_ops_scale_fwd(const float *x, const float *w, float *y, int n, int c, int hw);
/* dw[c] = sum dy*x (overwritten; NULL skips), dx = dy * w[c].  x must not alias dx. */
void tk_ops_scale_bwd(const float *x, const float *dy, const float *w, float *dx, float *dw, int n, int c, int hw,
                      int acc);

/* ---- helpers ------------------------------------------------------------------------------- */
/* y += x over count elements (y may equal x). */
void tk_ops_accumulate(float *y, const float *x, size_t count);
/* db[c] = sum over N and HW of dy (the bias gradient of a conv or linear layer). */
void tk_ops_channel_sum(const float *dy, float *db, int n, int c, int hw);

#endif
