/* ref.h -- what the reference engine (ref.c) exposes beyond the engine contract: the values
 * it keeps, for tests and for comparing another engine layer by layer. */
#ifndef TK_REF_H
#define TK_REF_H

#include "../engine.h"

/* Value v of the last forward (0 = the normalised input, i + 1 = the output of layer i), NCHW
 * (n, c, h, w) with the n of that forward in *n.  NULL when e is not a reference engine, v is
 * out of range or there was no forward. */
const float *tk_ref_engine_value(const tk_engine *e, int v, int *n);
/* dL/d(value v) from the last backward (same layout), or NULL as above.  Value 0 (the
 * normalised input) is complete only when that backward was asked for dx. */
const float *tk_ref_engine_value_grad(const tk_engine *e, int v, int *n);

#endif
