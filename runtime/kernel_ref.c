/* kernel_ref.c -- the reference kernel provider (compiler/compile.h): a tk_kernel for one
 * conv2d or linear layer that calls the naive ops of runtime/ref/ref_ops.c.  The compiled
 * engine uses it as the fallback when a layer has no generated or dense kernel, and tests use
 * it as the oracle behind the kernel interface.
 *
 * Weights are read from the model's tensors on every call, so update() has nothing to repack.
 * bwd_weight zeroes the entries of dw that are off the mask, as the kernel contract requires.
 * It declines the optional fold entries (compile.h): the oracle runs every op as written.
 */
#include "../compiler/compile.h"
#include "ref/ref_ops.h"

#include <stdlib.h>
#include <string.h>

static const tk_layer *layer_of(const tk_kernel *k) { return &k->m->layers[k->layer]; }

static tk_status check_batch(const tk_kernel *k, int n) {
  if (n < 1 || n > k->max_batch)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): batch %d outside 1..%d (the kernel's max_batch)", k->layer,
                   layer_of(k)->name, n, k->max_batch);
  return TK_OK;
}

static tk_status kref_fwd(tk_kernel *k, const float *x, float *y, int n) {
  tk_status st = check_batch(k, n);
  if (st != TK_OK) return st;
  const tk_layer *l = layer_of(k);
  const float *w = k->m->tensors[l->weight].data, *b = l->bias >= 0 ? k->m->tensors[l->bias].data : NULL;
  if (l->op == TK_OP_CONV2D) tk_ref_conv2d_fwd(l, x, w, b, y, n);
  else tk_ref_linear_fwd(l, x, w, b, y, n);
  return TK_OK;
}

static tk_status kref_bwd_input(tk_kernel *k, const float *dy, float *dx, int n) {
  tk_status st = check_batch(k, n);
  if (st != TK_OK) return st;
  const tk_layer *l = layer_of(k);
  const float *w = k->m->tensors[l->weight].data;
  if (l->op == TK_OP_CONV2D) tk_ref_conv2d_bwd_input(l, dy, w, dx, n);
  else tk_ref_linear_bwd_input(l, dy, w, dx, n);
  return TK_OK;
}

static tk_status kref_bwd_weight(tk_kernel *k, const float *x, const float *dy, float *dw, float *db, int n) {
  tk_status st = check_batch(k, n);
  if (st != TK_OK) return st;
  const tk_layer *l = layer_of(k);
  if (l->op == TK_OP_CONV2D) tk_ref_conv2d_bwd_weight(l, x, dy, dw, db, n);
  else tk_ref_linear_bwd_weight(l, x, dy, dw, db, n);
  const tk_tensor *w = &k->m->tensors[l->weight];
  if (dw && w->mask)
    for (int64_t i = 0; i < w->numel; i++)
      if (!w->mask[i]) dw[i] = 0.0f;
  return TK_OK;
}

static tk_status kref_update(tk_kernel *k) {
  (void)k;
  return TK_OK; /* values are read from the model on every call */
}

static void kref_destroy(tk_kernel *k) { free(k); }

/* no fold entries: the executor runs a batchnorm after a reference kernel unfolded */
static const tk_kernel_vtbl g_kref_vtbl = {kref_fwd, kref_bwd_input, kref_bwd_weight, kref_update, kref_destroy,
                                           NULL,     NULL,           NULL,            NULL,        NULL};

tk_status tk_kernel_reference_create(const tk_model *m, int layer, int max_batch, tk_kernel **out) {
  *out = NULL;
  if (layer < 0 || layer >= m->n_layers)
    return tk_fail(TK_ERR_ARG, "reference kernel: layer %d out of range (%d layers)", layer, m->n_layers);
  const tk_layer *l = &m->layers[layer];
  if (l->op != TK_OP_CONV2D && l->op != TK_OP_LINEAR)
    return tk_fail(TK_ERR_ARG, "layer %d (%s, %s): a kernel implements conv2d or linear only", layer, l->name,
                   tk_op_name(l->op));
  if (max_batch < 1) return tk_fail(TK_ERR_ARG, "layer %d (%s): max_batch %d must be at least 1", layer, l->name, max_batch);
  if (!m->values || l->weight < 0 || l->weight >= m->n_tensors)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): the model is not verified (run tk_model_infer)", layer, l->name);
  tk_kernel *k = tk_calloc(1, sizeof *k);
  if (!k) return TK_ERR_NOMEM;
  k->v = &g_kref_vtbl;
  k->variant = TK_VARIANT_REFERENCE;
  k->m = m;
  k->layer = layer;
  k->max_batch = max_batch;
  *out = k;
  return TK_OK;
}
