/* dense.h -- extras of the dense oneDNN kernels (runtime/dense.c) beyond compile.h.
 *
 * tk_kernel_dense_create() (compile.h) gives a self-contained kernel.  An executor running
 * many dense layers one after another lets them share one scratch buffer instead (blocked
 * copies of the activations and oneDNN's scratchpad, sized for max_batch): create with
 * shared_scratch = 1, ask each kernel for its size, allocate the maximum once and hand it to
 * every kernel before the first call.  A kernel with shared scratch and none set fails its
 * calls with TK_ERR_INTERNAL.
 *
 * Built without oneDNN (-DTICKET_DNNL=OFF) every create returns TK_ERR_UNSUPPORTED
 * (runtime/nodnnl/dense_none.c).
 */
#ifndef TK_DENSE_H
#define TK_DENSE_H

#include "../compiler/compile.h"

tk_status tk_kernel_dense_create_ext(const tk_model *m, int layer, int max_batch, int shared_scratch,
                                     tk_kernel **out);
/* The same, able to fold an eval-mode batchnorm (compile.h, fold): fold_mode 0 = no fold (the
 * vtable's fold entries are NULL, as with _ext), 1 = fold, 2 = fold with a ReLU after it.  A
 * fold needs primitives of its own (bias, ReLU post-op) and a second copy of the weights in
 * every layout, made here, so ask for it only where the caller folds.  fwd_folded must be
 * called with relu == (fold_mode == 2), bwd_input_folded with relu_y only in mode 2. */
tk_status tk_kernel_dense_create_fold(const tk_model *m, int layer, int max_batch, int shared_scratch, int fold_mode,
                                      tk_kernel **out);
/* Bytes of scratch a call needs (0 for kernels that own theirs). */
size_t tk_kernel_dense_scratch_size(const tk_kernel *k);
/* Shared scratch: 64-byte aligned, at least tk_kernel_dense_scratch_size() bytes.  The
 * weights are packed through the scratch, so call the kernel's update() once after this. */
void tk_kernel_dense_set_scratch(tk_kernel *k, void *scratch);
/* oneDNN's name of the forward implementation at max_batch (e.g. "brg:avx512_core"). */
const char *tk_kernel_dense_impl(const tk_kernel *k);
/* 1 when this build has oneDNN. */
int tk_dense_available(void);

#endif
