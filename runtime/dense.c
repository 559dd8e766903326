/* dense.c -- dense conv2d and linear kernels on oneDNN 2.6 (C API): the honest dense
 * baseline and the planner's fallback for layers where sparsity does not pay.
 *
 * What it is: a tk_kernel (compiler/compile.h) per conv2d / linear layer.  Convolution uses
 * oneDNN's direct algorithm (never Winograd, so results stay within float rounding of the
 * reference); linear is an inner product.  Every primitive takes format_tag_any, so oneDNN
 * picks its blocked layouts (brgconv on AVX-512); the NCHW activations of the executor are
 * reordered in and out around each call, weights are reordered once at create and on
 * update().
 *
 * Shapes are fixed in a oneDNN primitive, so a kernel holds one set of primitives per batch
 * size in {max_batch} + {powers of two below it}, all created here; a call with n images runs
 * the largest set that fits, repeatedly (at most log2(max_batch) + 1 runs).  Nothing is
 * allocated per call: memory objects are created once and only re-pointed.
 *
 * Layouts at this interface (compile.h):  x (N, I, H, W)  y (N, O, OH, OW)  NCHW
 *   conv weight (O, I/G, KH, KW) = oneDNN oihw (goihw with groups), bias (O)
 *   linear: x (N, I), y (N, O), weight (O, I) = oneDNN nc / oi
 *
 * Scratch of one call (shared between the kernels of an engine, see dense.h):
 *   A  blocked source side (src of fwd and bwd_w, diff_src of bwd_d)   largest variant
 *   B  blocked destination side (dst, diff_dst)
 *   C  blocked diff weights; also the masked weight copy during update()
 *   E  diff bias of the second and later batch chunks (O floats)
 *   F  folded input gradient with a ReLU mask: the masked output gradient, plain layout
 *      (max_batch x out elems; only when some batch size cannot mask while blocking, below)
 *   D  oneDNN scratchpad (user mode: the largest over all primitives)
 *
 * Folding an eval-mode batchnorm (compile.h, fold; created with fold_mode, dense.h): a second
 * forward primitive per batch size, always with a bias and, for a fold with ReLU, oneDNN's
 * eltwise ReLU post-op (fused into the convolution's store); the folded weights W*scale[o] in
 * every layout the primitives use (fbuf beside buf) and the folded bias.  The folded input
 * gradient masks dy by relu_y > 0 while it blocks dy into oneDNN's nChw16c layout (one pass,
 * replacing the reorder), or, for other layouts, in one pass into F ahead of the reorder.
 */
#include "dense.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include <stdlib.h>
#include <string.h>

int tk_dense_available(void) { return 1; }

#define MAX_VARIANTS 24
#define MAX_WFMT (2 * MAX_VARIANTS) /* a fwd and a bwd-data layout per batch size at most */

/* a reorder between a user (plain) layout and a primitive's layout; prim == NULL when equal */
typedef struct {
  dnnl_primitive_t prim;
  dnnl_memory_t from, to, scratch;
} xfer;

/* one primitive and its memory objects (handles set per call) */
typedef struct {
  dnnl_primitive_t prim;
  dnnl_memory_t m[5]; /* fwd: src wei bias dst   bwd_d: ddst wei dsrc   bwd_w: src ddst dwei dbias */
  dnnl_memory_t scratch;
  int wfmt;           /* index into the kernel's weight layouts (fwd, bwd_d) */
} prim_mem;

typedef struct {
  int n;
  prim_mem fwd, bwd_d, bwd_w;
  prim_mem fwd_f;             /* folded forward: bias, ReLU post-op (fold_mode 2); prim NULL without fold */
  xfer ff_src, ff_dst;        /* its x -> A, B -> y */
  int ddst_c16;               /* bwd_d's diff_dst is nChw16c: the masked blocking writes it directly */
  xfer f_src, f_dst;          /* x -> A, B -> y */
  xfer d_ddst, d_dsrc;        /* dy -> B, A -> dx */
  xfer w_src, w_ddst;         /* x -> A, dy -> B */
  xfer w_dwei, w_dwei_acc;    /* C -> dw (overwrite, accumulate) */
} variant;

typedef struct {
  dnnl_memory_desc_t md;
  float *buf, *fbuf; /* the weights, the folded weights (fold_mode > 0) */
  xfer pack;         /* user weights (masked copy in C) -> buf or fbuf */
} wfmt;

typedef struct {
  tk_kernel base;
  dnnl_engine_t eng;
  dnnl_stream_t strm;
  int is_conv, has_bias, out_c;
  int64_t in_elems, out_elems, w_elems; /* per image, per image, weight numel */
  int n_var;
  variant var[MAX_VARIANTS];  /* sorted by n, largest first */
  int n_wfmt;
  wfmt wf[MAX_WFMT];
  size_t off_a, off_b, off_c, off_e, off_f, off_d, scratch_bytes;
  int fold_mode;              /* 0: no fold, 1: fold, 2: fold with a ReLU (dense.h) */
  int folded;                 /* fbuf / fbias hold a fold of the current weights */
  float *fbias;               /* folded bias (O) */
  int shared;
  char *scratch;              /* own or shared */
  char impl[96];
} dense_kernel;

#define DN(call)                                                                                   \
  do {                                                                                             \
    dnnl_status_t s_ = (call);                                                                     \
    if (s_ != dnnl_success) {                                                                      \
      st = tk_fail(TK_ERR_INTERNAL, "layer %d (%s): oneDNN: %s failed: %s", k->base.layer,         \
                   k->base.m->layers[k->base.layer].name, #call, dnnl_status2str(s_));             \
      goto fail;                                                                                   \
    }                                                                                              \
  } while (0)

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static void md_plain(dnnl_memory_desc_t *md, int nd, const int64_t *dims, dnnl_format_tag_t tag) {
  dnnl_dims_t d;
  for (int i = 0; i < nd; i++) d[i] = dims[i];
  dnnl_memory_desc_init_by_tag(md, nd, d, dnnl_f32, tag);
}

static dnnl_status_t make_mem(dnnl_memory_t *out, const dnnl_memory_desc_t *md, dnnl_engine_t eng) {
  return dnnl_memory_create(out, md, eng, DNNL_MEMORY_NONE);
}

/* Largest scratch among the primitives seen so far (region D). */
static void note_scratch(size_t *d, const_dnnl_primitive_desc_t pd) {
  const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
  size_t s = md ? dnnl_memory_desc_get_size(md) : 0;
  if (s > *d) *d = s;
}

/* Builds a reorder from `src` to `dst` unless they are equal.  accumulate: dst += src. */
static tk_status xfer_make(dense_kernel *k, xfer *x, const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst,
                           int accumulate, size_t *scratch_max) {
  tk_status st = TK_OK;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t pd = NULL;
  memset(x, 0, sizeof *x);
  if (dnnl_memory_desc_equal(src, dst) && !accumulate) return TK_OK;
  DN(dnnl_primitive_attr_create(&attr));
  DN(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
  if (accumulate) {
    DN(dnnl_post_ops_create(&po));
    DN(dnnl_post_ops_append_sum(po, 1.0f));
    DN(dnnl_primitive_attr_set_post_ops(attr, po));
  }
  DN(dnnl_reorder_primitive_desc_create(&pd, src, k->eng, dst, k->eng, attr));
  note_scratch(scratch_max, pd);
  DN(dnnl_primitive_create(&x->prim, pd));
  DN(make_mem(&x->from, src, k->eng));
  DN(make_mem(&x->to, dst, k->eng));
  DN(make_mem(&x->scratch, dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0), k->eng));
fail:
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (po) dnnl_post_ops_destroy(po);
  if (attr) dnnl_primitive_attr_destroy(attr);
  return st;
}

static void xfer_free(xfer *x) {
  if (x->prim) dnnl_primitive_destroy(x->prim);
  if (x->from) dnnl_memory_destroy(x->from);
  if (x->to) dnnl_memory_destroy(x->to);
  if (x->scratch) dnnl_memory_destroy(x->scratch);
  memset(x, 0, sizeof *x);
}

static void prim_free(prim_mem *p) {
  if (p->prim) dnnl_primitive_destroy(p->prim);
  for (int i = 0; i < 5; i++)
    if (p->m[i]) dnnl_memory_destroy(p->m[i]);
  if (p->scratch) dnnl_memory_destroy(p->scratch);
  memset(p, 0, sizeof *p);
}

static dnnl_status_t set(dnnl_memory_t mem, const void *p) { return dnnl_memory_set_data_handle(mem, (void *)p); }

static tk_status xfer_run(dense_kernel *k, xfer *x, const void *from, void *to) {
  tk_status st = TK_OK;
  DN(set(x->from, from));
  DN(set(x->to, to));
  DN(set(x->scratch, k->scratch + k->off_d));
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, x->from}, {DNNL_ARG_TO, x->to}, {DNNL_ARG_SCRATCHPAD, x->scratch}};
  DN(dnnl_primitive_execute(x->prim, k->strm, 3, args));
fail:
  return st;
}

/* index of a weight layout equal to md, added when new (with its packing reorder) */
static tk_status wfmt_find(dense_kernel *k, const dnnl_memory_desc_t *md, const dnnl_memory_desc_t *user,
                           size_t *scratch_max, int *idx) {
  tk_status st = TK_OK;
  for (int i = 0; i < k->n_wfmt; i++)
    if (dnnl_memory_desc_equal(&k->wf[i].md, md)) {
      *idx = i;
      return TK_OK;
    }
  if (k->n_wfmt == MAX_WFMT)
    return tk_fail(TK_ERR_INTERNAL, "layer %d: oneDNN chose more than %d weight layouts", k->base.layer, MAX_WFMT);
  wfmt *w = &k->wf[k->n_wfmt];
  w->md = *md;
  w->buf = tk_alloc_aligned(dnnl_memory_desc_get_size(md));
  if (!w->buf) return TK_ERR_NOMEM;
  if (k->fold_mode && !(w->fbuf = tk_alloc_aligned(dnnl_memory_desc_get_size(md)))) {
    free(w->buf);
    w->buf = NULL;
    return TK_ERR_NOMEM;
  }
  *idx = k->n_wfmt++;
  if ((st = xfer_make(k, &w->pack, user, md, 0, scratch_max)) != TK_OK) return st;
  return TK_OK;
}

typedef struct {
  dnnl_memory_desc_t src, dst, wei, bias, any_src, any_dst, any_wei;
} layer_mds;

/* user (plain) and "any" descriptors of this layer for a batch of n */
static void layer_descs(const dense_kernel *k, const tk_layer *l, const tk_tensor *w, int n, layer_mds *d) {
  if (k->is_conv) {
    int64_t sd[4] = {n, l->in.c, l->in.h, l->in.w}, dd[4] = {n, l->out.c, l->out.h, l->out.w};
    md_plain(&d->src, 4, sd, dnnl_nchw);
    md_plain(&d->dst, 4, dd, dnnl_nchw);
    md_plain(&d->any_src, 4, sd, dnnl_format_tag_any);
    md_plain(&d->any_dst, 4, dd, dnnl_format_tag_any);
    if (l->groups > 1) {
      int64_t g = l->groups, wd[5] = {g, w->shape[0] / g, w->shape[1], w->shape[2], w->shape[3]};
      md_plain(&d->wei, 5, wd, dnnl_goihw);
      md_plain(&d->any_wei, 5, wd, dnnl_format_tag_any);
    } else {
      md_plain(&d->wei, 4, w->shape, dnnl_oihw);
      md_plain(&d->any_wei, 4, w->shape, dnnl_format_tag_any);
    }
  } else {
    int64_t sd[2] = {n, tk_shape_numel(l->in)}, dd[2] = {n, l->out.c};
    md_plain(&d->src, 2, sd, dnnl_nc);
    md_plain(&d->dst, 2, dd, dnnl_nc);
    md_plain(&d->any_src, 2, sd, dnnl_format_tag_any);
    md_plain(&d->any_dst, 2, dd, dnnl_format_tag_any);
    md_plain(&d->wei, 2, w->shape, dnnl_oi);
    md_plain(&d->any_wei, 2, w->shape, dnnl_format_tag_any);
  }
  int64_t bd[1] = {w->shape[0]};
  md_plain(&d->bias, 1, bd, dnnl_x);
}

static size_t md_size(const_dnnl_primitive_desc_t pd, dnnl_query_t q) {
  const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, q, 0);
  return md ? dnnl_memory_desc_get_size(md) : 0;
}

/* Creates the primitives of one batch size. */
static tk_status variant_make(dense_kernel *k, variant *v, int n, size_t sz[4]) {
  tk_status st = TK_OK;
  const tk_model *m = k->base.m;
  const tk_layer *l = &m->layers[k->base.layer];
  const tk_tensor *w = &m->tensors[l->weight];
  dnnl_primitive_attr_t attr = NULL, fattr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t fpd = NULL, dpd = NULL, wpd = NULL, ffpd = NULL;
  layer_mds d;
  v->n = n;
  layer_descs(k, l, w, n, &d);
  const dnnl_memory_desc_t *bias_md = k->has_bias ? &d.bias : NULL;
  DN(dnnl_primitive_attr_create(&attr));
  DN(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
  /* the folded forward always has a bias; with a ReLU, as a post-op.  It is made for
   * forward_training like the layer's own forward, so that both get the same implementation and
   * layouts (forward_inference picks brgconv on NHWC here) and differ only by the fusion. */
  if (k->fold_mode) {
    DN(dnnl_primitive_attr_create(&fattr));
    DN(dnnl_primitive_attr_set_scratchpad_mode(fattr, dnnl_scratchpad_mode_user));
    if (k->fold_mode == 2) {
      DN(dnnl_post_ops_create(&po));
      DN(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
      DN(dnnl_primitive_attr_set_post_ops(fattr, po));
    }
  }

  if (k->is_conv) {
    dnnl_dims_t strides = {l->sh, l->sw}, dil = {l->dh - 1, l->dw - 1}, pad = {l->ph, l->pw};
    dnnl_convolution_desc_t cf, cd, cw;
    DN(dnnl_dilated_convolution_forward_desc_init(&cf, dnnl_forward_training, dnnl_convolution_direct, &d.any_src,
                                                  &d.any_wei, bias_md, &d.any_dst, strides, dil, pad, pad));
    DN(dnnl_primitive_desc_create(&fpd, &cf, attr, k->eng, NULL));
    DN(dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &d.any_src, &d.any_wei,
                                                        &d.any_dst, strides, dil, pad, pad));
    DN(dnnl_primitive_desc_create(&dpd, &cd, attr, k->eng, fpd));
    DN(dnnl_dilated_convolution_backward_weights_desc_init(&cw, dnnl_convolution_direct, &d.any_src, &d.any_wei,
                                                           bias_md, &d.any_dst, strides, dil, pad, pad));
    DN(dnnl_primitive_desc_create(&wpd, &cw, attr, k->eng, fpd));
    if (k->fold_mode) {
      dnnl_convolution_desc_t cff;
      DN(dnnl_dilated_convolution_forward_desc_init(&cff, dnnl_forward_training, dnnl_convolution_direct, &d.any_src,
                                                    &d.any_wei, &d.bias, &d.any_dst, strides, dil, pad, pad));
      DN(dnnl_primitive_desc_create(&ffpd, &cff, fattr, k->eng, NULL));
    }
  } else {
    dnnl_inner_product_desc_t pf, pdd, pw;
    DN(dnnl_inner_product_forward_desc_init(&pf, dnnl_forward_training, &d.any_src, &d.any_wei, bias_md, &d.any_dst));
    DN(dnnl_primitive_desc_create(&fpd, &pf, attr, k->eng, NULL));
    DN(dnnl_inner_product_backward_data_desc_init(&pdd, &d.any_src, &d.any_wei, &d.any_dst));
    DN(dnnl_primitive_desc_create(&dpd, &pdd, attr, k->eng, fpd));
    DN(dnnl_inner_product_backward_weights_desc_init(&pw, &d.any_src, &d.any_wei, bias_md, &d.any_dst));
    DN(dnnl_primitive_desc_create(&wpd, &pw, attr, k->eng, fpd));
    if (k->fold_mode) {
      dnnl_inner_product_desc_t pff;
      DN(dnnl_inner_product_forward_desc_init(&pff, dnnl_forward_training, &d.any_src, &d.any_wei, &d.bias,
                                              &d.any_dst));
      DN(dnnl_primitive_desc_create(&ffpd, &pff, fattr, k->eng, NULL));
    }
  }
  if (!k->impl[0]) {
    const char *name = NULL;
    if (dnnl_primitive_desc_query(fpd, dnnl_query_impl_info_str, 0, &name) == dnnl_success && name)
      snprintf(k->impl, sizeof k->impl, "%s", name);
  }
  note_scratch(&sz[3], fpd);
  note_scratch(&sz[3], dpd);
  note_scratch(&sz[3], wpd);
  if (ffpd) note_scratch(&sz[3], ffpd);

  /* forward: x -> [A] -> conv -> [B] -> y */
  {
    const dnnl_memory_desc_t *src = dnnl_primitive_desc_query_md(fpd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *wei = dnnl_primitive_desc_query_md(fpd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dst = dnnl_primitive_desc_query_md(fpd, dnnl_query_dst_md, 0);
    if ((st = xfer_make(k, &v->f_src, &d.src, src, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = xfer_make(k, &v->f_dst, dst, &d.dst, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = wfmt_find(k, wei, &d.wei, &sz[3], &v->fwd.wfmt)) != TK_OK) goto fail;
    if (v->f_src.prim && dnnl_memory_desc_get_size(src) > sz[0]) sz[0] = dnnl_memory_desc_get_size(src);
    if (v->f_dst.prim && dnnl_memory_desc_get_size(dst) > sz[1]) sz[1] = dnnl_memory_desc_get_size(dst);
    DN(dnnl_primitive_create(&v->fwd.prim, fpd));
    DN(make_mem(&v->fwd.m[0], src, k->eng));
    DN(make_mem(&v->fwd.m[1], wei, k->eng));
    if (k->has_bias) DN(make_mem(&v->fwd.m[2], dnnl_primitive_desc_query_md(fpd, dnnl_query_weights_md, 1), k->eng));
    DN(make_mem(&v->fwd.m[3], dst, k->eng));
    DN(make_mem(&v->fwd.scratch, dnnl_primitive_desc_query_md(fpd, dnnl_query_scratchpad_md, 0), k->eng));
  }
  /* backward data: dy -> [B] -> conv_bwd_d -> [A] -> dx */
  {
    const dnnl_memory_desc_t *ddst = dnnl_primitive_desc_query_md(dpd, dnnl_query_diff_dst_md, 0);
    const dnnl_memory_desc_t *wei = dnnl_primitive_desc_query_md(dpd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dsrc = dnnl_primitive_desc_query_md(dpd, dnnl_query_diff_src_md, 0);
    if ((st = xfer_make(k, &v->d_ddst, &d.dst, ddst, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = xfer_make(k, &v->d_dsrc, dsrc, &d.src, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = wfmt_find(k, wei, &d.wei, &sz[3], &v->bwd_d.wfmt)) != TK_OK) goto fail;
    if (v->d_ddst.prim && dnnl_memory_desc_get_size(ddst) > sz[1]) sz[1] = dnnl_memory_desc_get_size(ddst);
    if (v->d_dsrc.prim && dnnl_memory_desc_get_size(dsrc) > sz[0]) sz[0] = dnnl_memory_desc_get_size(dsrc);
    if (k->is_conv) {
      dnnl_memory_desc_t c16;
      int64_t dd[4] = {n, l->out.c, l->out.h, l->out.w};
      md_plain(&c16, 4, dd, dnnl_nChw16c);
      v->ddst_c16 = dnnl_memory_desc_equal(ddst, &c16);
    }
    DN(dnnl_primitive_create(&v->bwd_d.prim, dpd));
    DN(make_mem(&v->bwd_d.m[0], ddst, k->eng));
    DN(make_mem(&v->bwd_d.m[1], wei, k->eng));
    DN(make_mem(&v->bwd_d.m[2], dsrc, k->eng));
    DN(make_mem(&v->bwd_d.scratch, dnnl_primitive_desc_query_md(dpd, dnnl_query_scratchpad_md, 0), k->eng));
  }
  /* backward weights: x -> [A], dy -> [B] -> conv_bwd_w -> [C] -> dw */
  {
    const dnnl_memory_desc_t *src = dnnl_primitive_desc_query_md(wpd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *ddst = dnnl_primitive_desc_query_md(wpd, dnnl_query_diff_dst_md, 0);
    const dnnl_memory_desc_t *dwei = dnnl_primitive_desc_query_md(wpd, dnnl_query_diff_weights_md, 0);
    if ((st = xfer_make(k, &v->w_src, &d.src, src, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = xfer_make(k, &v->w_ddst, &d.dst, ddst, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = xfer_make(k, &v->w_dwei, dwei, &d.wei, 0, &sz[3])) != TK_OK) goto fail;
    if (v->w_dwei.prim && (st = xfer_make(k, &v->w_dwei_acc, dwei, &d.wei, 1, &sz[3])) != TK_OK) goto fail;
    if (v->w_src.prim && dnnl_memory_desc_get_size(src) > sz[0]) sz[0] = dnnl_memory_desc_get_size(src);
    if (v->w_ddst.prim && dnnl_memory_desc_get_size(ddst) > sz[1]) sz[1] = dnnl_memory_desc_get_size(ddst);
    if (md_size(wpd, dnnl_query_diff_weights_md) > sz[2]) sz[2] = md_size(wpd, dnnl_query_diff_weights_md);
    DN(dnnl_primitive_create(&v->bwd_w.prim, wpd));
    DN(make_mem(&v->bwd_w.m[0], src, k->eng));
    DN(make_mem(&v->bwd_w.m[1], ddst, k->eng));
    DN(make_mem(&v->bwd_w.m[2], dwei, k->eng));
    if (k->has_bias)
      DN(make_mem(&v->bwd_w.m[3], dnnl_primitive_desc_query_md(wpd, dnnl_query_diff_weights_md, 1), k->eng));
    DN(make_mem(&v->bwd_w.scratch, dnnl_primitive_desc_query_md(wpd, dnnl_query_scratchpad_md, 0), k->eng));
  }
  /* folded forward: x -> [A] -> conv + bias (+ ReLU) -> [B] -> y */
  if (ffpd) {
    const dnnl_memory_desc_t *src = dnnl_primitive_desc_query_md(ffpd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *wei = dnnl_primitive_desc_query_md(ffpd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dst = dnnl_primitive_desc_query_md(ffpd, dnnl_query_dst_md, 0);
    if ((st = xfer_make(k, &v->ff_src, &d.src, src, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = xfer_make(k, &v->ff_dst, dst, &d.dst, 0, &sz[3])) != TK_OK) goto fail;
    if ((st = wfmt_find(k, wei, &d.wei, &sz[3], &v->fwd_f.wfmt)) != TK_OK) goto fail;
    if (v->ff_src.prim && dnnl_memory_desc_get_size(src) > sz[0]) sz[0] = dnnl_memory_desc_get_size(src);
    if (v->ff_dst.prim && dnnl_memory_desc_get_size(dst) > sz[1]) sz[1] = dnnl_memory_desc_get_size(dst);
    DN(dnnl_primitive_create(&v->fwd_f.prim, ffpd));
    DN(make_mem(&v->fwd_f.m[0], src, k->eng));
    DN(make_mem(&v->fwd_f.m[1], wei, k->eng));
    DN(make_mem(&v->fwd_f.m[2], dnnl_primitive_desc_query_md(ffpd, dnnl_query_weights_md, 1), k->eng));
    DN(make_mem(&v->fwd_f.m[3], dst, k->eng));
    DN(make_mem(&v->fwd_f.scratch, dnnl_primitive_desc_query_md(ffpd, dnnl_query_scratchpad_md, 0), k->eng));
  }
fail:
  if (fpd) dnnl_primitive_desc_destroy(fpd);
  if (dpd) dnnl_primitive_desc_destroy(dpd);
  if (wpd) dnnl_primitive_desc_destroy(wpd);
  if (ffpd) dnnl_primitive_desc_destroy(ffpd);
  if (po) dnnl_post_ops_destroy(po);
  if (attr) dnnl_primitive_attr_destroy(attr);
  if (fattr) dnnl_primitive_attr_destroy(fattr);
  return st;
}

/* the largest variant with at most n images */
static variant *pick(dense_kernel *k, int n) {
  for (int i = 0; i < k->n_var; i++)
    if (k->var[i].n <= n) return &k->var[i];
  return &k->var[k->n_var - 1];
}

static tk_status check_call(dense_kernel *k, int n) {
  if (n < 1 || n > k->base.max_batch)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): batch %d outside 1..%d", k->base.layer,
                   k->base.m->layers[k->base.layer].name, n, k->base.max_batch);
  if (!k->scratch)
    return tk_fail(TK_ERR_INTERNAL, "layer %d: dense kernel called before its shared scratch was set", k->base.layer);
  return TK_OK;
}

/* ---- calls ------------------------------------------------------------------------------------------ */

/* the forward over n images: the layer's own primitives, or the folded ones */
static tk_status run_fwd(dense_kernel *k, const float *x, float *y, int n, int folded) {
  const float *bias = folded ? k->fbias
                             : k->has_bias ? k->base.m->tensors[k->base.m->layers[k->base.layer].bias].data : NULL;
  char *A = k->scratch + k->off_a, *B = k->scratch + k->off_b;
  tk_status st = TK_OK;
  for (int done = 0; done < n;) {
    variant *v = pick(k, n - done);
    const float *xi = x + (size_t)done * k->in_elems;
    float *yo = y + (size_t)done * k->out_elems;
    xfer *xs = folded ? &v->ff_src : &v->f_src, *xd = folded ? &v->ff_dst : &v->f_dst;
    if (xs->prim && (st = xfer_run(k, xs, xi, A)) != TK_OK) return st;
    prim_mem *p = folded ? &v->fwd_f : &v->fwd;
    DN(set(p->m[0], xs->prim ? (const void *)A : xi));
    DN(set(p->m[1], folded ? k->wf[p->wfmt].fbuf : k->wf[p->wfmt].buf));
    if (bias) DN(set(p->m[2], bias));
    DN(set(p->m[3], xd->prim ? (void *)B : yo));
    DN(set(p->scratch, k->scratch + k->off_d));
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->m[0]}, {DNNL_ARG_WEIGHTS, p->m[1]}, {DNNL_ARG_DST, p->m[3]},
                               {DNNL_ARG_SCRATCHPAD, p->scratch}, {DNNL_ARG_BIAS, p->m[2]}};
    DN(dnnl_primitive_execute(p->prim, k->strm, bias ? 5 : 4, args));
    if (xd->prim && (st = xfer_run(k, xd, B, yo)) != TK_OK) return st;
    done += v->n;
  }
fail:
  return st;
}

static tk_status dense_fwd(tk_kernel *kk, const float *x, float *y, int n) {
  dense_kernel *k = (dense_kernel *)kk;
  tk_status st = check_call(k, n);
  if (st != TK_OK) return st;
  return run_fwd(k, x, y, n, 0);
}

/* ---- the ReLU mask of a folded input gradient ---------------------------------------------------- */

/* dy where y > 0, else 0, without a data-dependent branch (one per element, mispredicted half
 * the time on ReLU outputs, cost several times the copy): the bits of dy and-ed with the mask */
static inline float keep_pos(float dy, float y) {
  uint32_t u;
  memcpy(&u, &dy, sizeof u);
  u &= -(uint32_t)(y > 0.0f);
  memcpy(&dy, &u, sizeof u);
  return dy;
}

/* d (n, C, P) plain = dy where y > 0, else 0 */
static void mask_plain(const float *dy, const float *y, float *d, size_t count) {
  const long nb = (long)((count + 4095) / 4096);
#pragma omp parallel for schedule(static) if (count > 65536)
  for (long b = 0; b < nb; b++) {
    size_t lo = (size_t)b * 4096, hi = lo + 4096 < count ? lo + 4096 : count;
    for (size_t i = lo; i < hi; i++) d[i] = keep_pos(dy[i], y[i]);
  }
}

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12) /* __builtin_shufflevector */
#define DENSE_TR16 1
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16fu __attribute__((vector_size(64), aligned(4), may_alias));

/* In-place transpose of the 16x16 matrix r[row][lane]: four rounds of swapping the off-diagonal
 * b x b blocks of every 2b x 2b block (b = 8, 4, 2, 1), as templates/conv_batch.c.in. */
#define TR_ROUND(b, LO, HI)                                                                        \
  for (int q = 0; q < 16; q++)                                                                     \
    if (!(q & (b))) {                                                                              \
      v16f u = r[q], v = r[q + (b)];                                                               \
      r[q] = __builtin_shufflevector(u, v, LO);                                                    \
      r[q + (b)] = __builtin_shufflevector(u, v, HI);                                              \
    }
#define TR_L8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define TR_H8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define TR_L4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define TR_H4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define TR_L2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define TR_H2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define TR_L1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define TR_H1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
static inline void tr16(v16f r[16]) {
  TR_ROUND(8, TR_L8, TR_H8)
  TR_ROUND(4, TR_L4, TR_H4)
  TR_ROUND(2, TR_L2, TR_H2)
  TR_ROUND(1, TR_L1, TR_H1)
}
#endif

/* d = dy where y > 0, else 0, blocked from NCHW (n, C, P) into oneDNN's nChw16c
 * d[((i*CB + cb)*P + p)*16 + l] (channel cb*16 + l; channels >= C are the zero padding):
 * 16 channels x 16 positions at a time, masked rows of 16 floats in, 16x16 in-register
 * transpose, rows of 16 floats out.  Memory-bound: it moves one stream more than oneDNN's
 * reorder (y), and replaces that reorder and the batchnorm's backward pass. */
static void mask_block16(const float *dy, const float *y, float *d, int n, int C, int64_t P) {
  const int CB = (C + 15) / 16;
  const long items = (long)n * CB;
#pragma omp parallel for schedule(static) if ((int64_t)n * C * P > 65536)
  for (long it = 0; it < items; it++) {
    const int i = (int)(it / CB), cb = (int)(it % CB), lc = C - cb * 16 < 16 ? C - cb * 16 : 16;
    const size_t base = ((size_t)i * C + (size_t)cb * 16) * (size_t)P;
    const float *g = dy + base, *yy = y + base;
    float *o = d + (size_t)it * (size_t)P * 16;
    int64_t p0 = 0;
#ifdef DENSE_TR16
    if (lc == 16)
      for (; p0 + 16 <= P; p0 += 16) {
        v16f r[16];
        for (int l = 0; l < 16; l++) {
          const v16f gv = *(const v16fu *)(g + (size_t)l * (size_t)P + p0);
          const v16f yv = *(const v16fu *)(yy + (size_t)l * (size_t)P + p0);
          r[l] = (v16f)((v16i)gv & (v16i)(yv > (v16f){0}));
        }
        tr16(r);
        for (int q = 0; q < 16; q++) *(v16fu *)(o + (size_t)(p0 + q) * 16) = r[q];
      }
#endif
    for (; p0 < P; p0++) /* the rest: a short last tile, fewer than 16 channels (padding zero) */
      for (int l = 0; l < 16; l++) {
        const size_t e = (size_t)l * (size_t)P + (size_t)p0;
        o[(size_t)p0 * 16 + l] = l < lc ? keep_pos(g[e], yy[e]) : 0.0f;
      }
  }
}

/* The input gradient over n images: relu_y NULL or not folded: dy as given; else dy masked by
 * relu_y > 0 on its way into the primitive's layout. */
static tk_status run_bwd_input(dense_kernel *k, const float *dy, const float *relu_y, float *dx, int n, int folded) {
  char *A = k->scratch + k->off_a, *B = k->scratch + k->off_b;
  float *F = (float *)(k->scratch + k->off_f);
  const tk_layer *l = &k->base.m->layers[k->base.layer];
  tk_status st = TK_OK;
  for (int done = 0; done < n;) {
    variant *v = pick(k, n - done);
    const float *gi = dy + (size_t)done * k->out_elems;
    float *dxo = dx + (size_t)done * k->in_elems;
    const void *ddst = v->d_ddst.prim ? (const void *)B : gi;
    if (relu_y) {
      const float *yi = relu_y + (size_t)done * k->out_elems;
      if (v->d_ddst.prim && v->ddst_c16) {
        mask_block16(gi, yi, (float *)B, v->n, l->out.c, (int64_t)l->out.h * l->out.w);
      } else {
        mask_plain(gi, yi, F, (size_t)v->n * (size_t)k->out_elems);
        if (v->d_ddst.prim && (st = xfer_run(k, &v->d_ddst, F, B)) != TK_OK) return st;
        if (!v->d_ddst.prim) ddst = F;
      }
    } else if (v->d_ddst.prim && (st = xfer_run(k, &v->d_ddst, gi, B)) != TK_OK) {
      return st;
    }
    prim_mem *p = &v->bwd_d;
    DN(set(p->m[0], ddst));
    DN(set(p->m[1], folded ? k->wf[p->wfmt].fbuf : k->wf[p->wfmt].buf));
    DN(set(p->m[2], v->d_dsrc.prim ? (void *)A : dxo));
    DN(set(p->scratch, k->scratch + k->off_d));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_DIFF_DST, p->m[0]}, {DNNL_ARG_WEIGHTS, p->m[1]},
                               {DNNL_ARG_DIFF_SRC, p->m[2]}, {DNNL_ARG_SCRATCHPAD, p->scratch}};
    DN(dnnl_primitive_execute(p->prim, k->strm, 4, args));
    if (v->d_dsrc.prim && (st = xfer_run(k, &v->d_dsrc, A, dxo)) != TK_OK) return st;
    done += v->n;
  }
fail:
  return st;
}

static tk_status dense_bwd_input(tk_kernel *kk, const float *dy, float *dx, int n) {
  dense_kernel *k = (dense_kernel *)kk;
  tk_status st = check_call(k, n);
  if (st != TK_OK) return st;
  return run_bwd_input(k, dy, NULL, dx, n, 0);
}

static tk_status dense_bwd_weight(tk_kernel *kk, const float *x, const float *dy, float *dw, float *db, int n) {
  dense_kernel *k = (dense_kernel *)kk;
  tk_status st = check_call(k, n);
  if (st != TK_OK) return st;
  char *A = k->scratch + k->off_a, *B = k->scratch + k->off_b;
  float *C = (float *)(k->scratch + k->off_c), *E = (float *)(k->scratch + k->off_e);
  for (int done = 0, chunk = 0; done < n; chunk++) {
    variant *v = pick(k, n - done);
    const float *xi = x + (size_t)done * k->in_elems;
    const float *gi = dy + (size_t)done * k->out_elems;
    if (v->w_src.prim && (st = xfer_run(k, &v->w_src, xi, A)) != TK_OK) return st;
    if (v->w_ddst.prim && (st = xfer_run(k, &v->w_ddst, gi, B)) != TK_OK) return st;
    prim_mem *p = &v->bwd_w;
    float *wt = (v->w_dwei.prim || chunk > 0) ? C : dw; /* blocked, or a later chunk to add */
    float *bt = (chunk == 0 && db) ? db : E;
    DN(set(p->m[0], v->w_src.prim ? (const void *)A : xi));
    DN(set(p->m[1], v->w_ddst.prim ? (const void *)B : gi));
    DN(set(p->m[2], wt));
    if (k->has_bias) DN(set(p->m[3], bt));
    DN(set(p->scratch, k->scratch + k->off_d));
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->m[0]}, {DNNL_ARG_DIFF_DST, p->m[1]}, {DNNL_ARG_DIFF_WEIGHTS, p->m[2]},
                               {DNNL_ARG_SCRATCHPAD, p->scratch}, {DNNL_ARG_DIFF_BIAS, p->m[3]}};
    DN(dnnl_primitive_execute(p->prim, k->strm, k->has_bias ? 5 : 4, args));
    if (v->w_dwei.prim) {
      if ((st = xfer_run(k, chunk ? &v->w_dwei_acc : &v->w_dwei, C, dw)) != TK_OK) return st;
    } else if (chunk) {
      for (int64_t i = 0; i < k->w_elems; i++) dw[i] += C[i];
    }
    if (k->has_bias && db && chunk)
      for (int o = 0; o < k->out_c; o++) db[o] += E[o];
    done += v->n;
  }
  if (!k->has_bias && db) memset(db, 0, (size_t)k->out_c * sizeof(float));
  const uint8_t *mask = k->base.m->tensors[k->base.m->layers[kk->layer].weight].mask;
  if (mask)
    for (int64_t i = 0; i < k->w_elems; i++)
      if (!mask[i]) dw[i] = 0.0f;
fail:
  return st;
}

/* Repack the weights (masked) into every layout the primitives use. */
static tk_status dense_update(tk_kernel *kk) {
  dense_kernel *k = (dense_kernel *)kk;
  tk_status st = TK_OK;
  if (!k->scratch) return tk_fail(TK_ERR_INTERNAL, "layer %d: dense kernel updated before its scratch was set", kk->layer);
  const tk_tensor *w = &kk->m->tensors[kk->m->layers[kk->layer].weight];
  const float *src = w->data;
  if (w->mask) { /* pruned data should already be zero; the mask is the truth */
    float *C = (float *)(k->scratch + k->off_c);
    for (int64_t i = 0; i < w->numel; i++) C[i] = w->mask[i] ? w->data[i] : 0.0f;
    src = C;
  }
  k->folded = 0;
  for (int i = 0; i < k->n_wfmt; i++) {
    if (k->wf[i].pack.prim) {
      if ((st = xfer_run(k, &k->wf[i].pack, src, k->wf[i].buf)) != TK_OK) return st;
    } else {
      memcpy(k->wf[i].buf, src, (size_t)w->numel * sizeof(float));
    }
  }
  return st;
}

/* The folded weights W*M*scale[o] (through C) in every layout, and the folded bias. */
static tk_status dense_fold(tk_kernel *kk, const float *scale, const float *shift) {
  dense_kernel *k = (dense_kernel *)kk;
  tk_status st = TK_OK;
  k->folded = 0;
  if (!scale) return TK_OK;
  if (!k->scratch) return tk_fail(TK_ERR_INTERNAL, "layer %d: dense kernel folded before its scratch was set", kk->layer);
  const tk_layer *l = &kk->m->layers[kk->layer];
  const tk_tensor *w = &kk->m->tensors[l->weight];
  const float *bias = k->has_bias ? kk->m->tensors[l->bias].data : NULL;
  const int64_t per_o = w->numel / k->out_c; /* oihw / goihw / oi: the output channel is outermost */
  float *C = (float *)(k->scratch + k->off_c);
  for (int o = 0; o < k->out_c; o++) {
    const float a = scale[o];
    const float *wd = w->data + (int64_t)o * per_o;
    const uint8_t *mk = w->mask ? w->mask + (int64_t)o * per_o : NULL;
    float *c = C + (int64_t)o * per_o;
    for (int64_t j = 0; j < per_o; j++) c[j] = !mk || mk[j] ? wd[j] * a : 0.0f;
    k->fbias[o] = (bias ? bias[o] : 0.0f) * a + shift[o];
  }
  for (int i = 0; i < k->n_wfmt; i++) {
    if (k->wf[i].pack.prim) {
      if ((st = xfer_run(k, &k->wf[i].pack, C, k->wf[i].fbuf)) != TK_OK) return st;
    } else {
      memcpy(k->wf[i].fbuf, C, (size_t)w->numel * sizeof(float));
    }
  }
  k->folded = 1;
  return st;
}

static tk_status check_fold(dense_kernel *k, int n) {
  tk_status st = check_call(k, n);
  if (st != TK_OK) return st;
  if (!k->folded)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): folded call without a fold (call fold() after update())", k->base.layer,
                   k->base.m->layers[k->base.layer].name);
  return TK_OK;
}

static tk_status dense_fwd_folded(tk_kernel *kk, const float *x, float *y, int n, int relu) {
  dense_kernel *k = (dense_kernel *)kk;
  tk_status st = check_fold(k, n);
  if (st != TK_OK) return st;
  if ((relu != 0) != (k->fold_mode == 2))
    return tk_fail(TK_ERR_ARG, "layer %d (%s): the dense kernel was made for a fold %s a ReLU", kk->layer,
                   kk->m->layers[kk->layer].name, k->fold_mode == 2 ? "with" : "without");
  return run_fwd(k, x, y, n, 1);
}

static tk_status dense_bwd_input_folded(tk_kernel *kk, const float *dy, const float *relu_y, float *dx, int n) {
  dense_kernel *k = (dense_kernel *)kk;
  tk_status st = check_fold(k, n);
  if (st != TK_OK) return st;
  if (relu_y && k->fold_mode != 2)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): the dense kernel was made for a fold without a ReLU", kk->layer,
                   kk->m->layers[kk->layer].name);
  return run_bwd_input(k, dy, relu_y, dx, n, 1);
}

static void dense_destroy(tk_kernel *kk) {
  dense_kernel *k = (dense_kernel *)kk;
  if (!k) return;
  for (int i = 0; i < k->n_var; i++) {
    variant *v = &k->var[i];
    prim_free(&v->fwd);
    prim_free(&v->bwd_d);
    prim_free(&v->bwd_w);
    prim_free(&v->fwd_f);
    xfer *xs[] = {&v->f_src, &v->f_dst,  &v->d_ddst,      &v->d_dsrc, &v->w_src,
                  &v->w_ddst, &v->w_dwei, &v->w_dwei_acc, &v->ff_src, &v->ff_dst};
    for (size_t j = 0; j < sizeof xs / sizeof *xs; j++) xfer_free(xs[j]);
  }
  for (int i = 0; i < k->n_wfmt; i++) {
    xfer_free(&k->wf[i].pack);
    free(k->wf[i].buf);
    free(k->wf[i].fbuf);
  }
  free(k->fbias);
  if (!k->shared) free(k->scratch);
  if (k->strm) dnnl_stream_destroy(k->strm);
  if (k->eng) dnnl_engine_destroy(k->eng);
  free(k);
}

static const tk_kernel_vtbl g_dense_vtbl = {dense_fwd, dense_bwd_input, dense_bwd_weight, dense_update, dense_destroy,
                                           NULL,      NULL,            NULL,             NULL,         NULL};
static const tk_kernel_vtbl g_dense_fold_vtbl = {dense_fwd,  dense_bwd_input,  dense_bwd_weight,      dense_update,
                                                dense_destroy, dense_fold, dense_fwd_folded, dense_bwd_input_folded,
                                                NULL,          NULL};

tk_status tk_kernel_dense_create_ext(const tk_model *m, int layer, int max_batch, int shared_scratch,
                                     tk_kernel **out) {
  return tk_kernel_dense_create_fold(m, layer, max_batch, shared_scratch, 0, out);
}

tk_status tk_kernel_dense_create_fold(const tk_model *m, int layer, int max_batch, int shared_scratch, int fold_mode,
                                      tk_kernel **out) {
  *out = NULL;
  if (layer < 0 || layer >= m->n_layers) return tk_fail(TK_ERR_ARG, "dense kernel: layer %d out of range", layer);
  const tk_layer *l = &m->layers[layer];
  if (l->op != TK_OP_CONV2D && l->op != TK_OP_LINEAR)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): a dense kernel needs conv2d or linear, not %s", layer, l->name,
                   tk_op_name(l->op));
  if (max_batch < 1) return tk_fail(TK_ERR_ARG, "layer %d (%s): max_batch %d", layer, l->name, max_batch);
  if (fold_mode < 0 || fold_mode > 2) return tk_fail(TK_ERR_ARG, "layer %d (%s): fold mode %d", layer, l->name, fold_mode);
  dense_kernel *k = tk_calloc(1, sizeof *k);
  if (!k) return TK_ERR_NOMEM;
  tk_status st = TK_OK;
  k->fold_mode = fold_mode;
  k->base.v = fold_mode ? &g_dense_fold_vtbl : &g_dense_vtbl;
  k->base.variant = TK_VARIANT_DENSE;
  k->base.m = m;
  k->base.layer = layer;
  k->base.max_batch = max_batch;
  k->shared = shared_scratch;
  k->is_conv = l->op == TK_OP_CONV2D;
  k->has_bias = l->bias >= 0;
  k->out_c = l->out.c;
  k->in_elems = tk_shape_numel(l->in);
  k->out_elems = tk_shape_numel(l->out);
  k->w_elems = m->tensors[l->weight].numel;
  if (fold_mode && !(k->fbias = tk_calloc((size_t)k->out_c, sizeof(float)))) {
    st = TK_ERR_NOMEM;
    goto fail;
  }
  DN(dnnl_engine_create(&k->eng, dnnl_cpu, 0));
  DN(dnnl_stream_create(&k->strm, k->eng, dnnl_stream_default_flags));

  size_t sz[4] = {0, 0, 0, 0}; /* A, B, C, D */
  int batches[MAX_VARIANTS], nb = 0;
  batches[nb++] = max_batch;
  for (int b = 1 << 30; b >= 1; b >>= 1)
    if (b < max_batch && nb < MAX_VARIANTS) batches[nb++] = b;
  for (int i = 0; i < nb; i++) {
    if ((st = variant_make(k, &k->var[i], batches[i], sz)) != TK_OK) goto fail;
    k->n_var = i + 1;
  }
  size_t wbytes = (size_t)k->w_elems * sizeof(float);
  if (wbytes > sz[2]) sz[2] = wbytes; /* C also holds the masked weights in update() */
  k->off_a = 0;
  k->off_b = k->off_a + align64(sz[0]);
  k->off_c = k->off_b + align64(sz[1]);
  size_t fbytes = 0; /* F: the masked output gradient, when some batch size cannot mask while blocking */
  for (int i = 0; i < k->n_var && fold_mode == 2; i++)
    if (!(k->var[i].d_ddst.prim && k->var[i].ddst_c16)) fbytes = (size_t)max_batch * (size_t)k->out_elems * sizeof(float);
  k->off_e = k->off_c + align64(sz[2]);
  k->off_f = k->off_e + align64((size_t)k->out_c * sizeof(float));
  k->off_d = k->off_f + align64(fbytes);
  k->scratch_bytes = k->off_d + align64(sz[3]);
  if (!shared_scratch) {
    if (!(k->scratch = tk_alloc_aligned(k->scratch_bytes))) {
      st = TK_ERR_NOMEM;
      goto fail;
    }
    if ((st = dense_update(&k->base)) != TK_OK) goto fail;
  }
  *out = &k->base;
  return TK_OK;
fail:
  dense_destroy(&k->base);
  return st;
}

tk_status tk_kernel_dense_create(const tk_model *m, int layer, int max_batch, tk_kernel **out) {
  return tk_kernel_dense_create_ext(m, layer, max_batch, 0, out);
}

size_t tk_kernel_dense_scratch_size(const tk_kernel *kk) {
  const dense_kernel *k = (const dense_kernel *)kk;
  return k->shared ? k->scratch_bytes : 0;
}

void tk_kernel_dense_set_scratch(tk_kernel *kk, void *scratch) {
  dense_kernel *k = (dense_kernel *)kk;
  if (k->shared) k->scratch = scratch;
}

const char *tk_kernel_dense_impl(const tk_kernel *kk) { return ((const dense_kernel *)kk)->impl; }
