/* ref_ops.h -- naive, obviously correct reference ops: the oracle for every fast kernel.
 * Shapes come from the layer (l->in, l->out filled by tk_model_infer).  NCHW contiguous.
 * Weights are used as given (pruned entries are already zero in the model's data).
 * Backward functions overwrite their outputs. */
#ifndef TK_REF_OPS_H
#define TK_REF_OPS_H

#include "../../compiler/model.h"

void tk_ref_conv2d_fwd(const tk_layer *l, const float *x, const float *w, const float *b, float *y, int n);
void tk_ref_conv2d_bwd_input(const tk_layer *l, const float *dy, const float *w, float *dx, int n);
void tk_ref_conv2d_bwd_weight(const tk_layer *l, const float *x, const float *dy, float *dw, float *db, int n);
void tk_ref_linear_fwd(const tk_layer *l, const float *x, const float *w, const float *b, float *y, int n);
void tk_ref_linear_bwd_input(const tk_layer *l, const float *dy, const float *w, float *dx, int n);
void tk_ref_linear_bwd_weight(const tk_layer *l, const float *x, const float *dy, float *dw, float *db, int n);

#endif
