/* test_kernels.c -- every generated kernel variant against the naive reference ops
 * (runtime/ref/ref_ops.h): forward, input gradient and weight gradient.
 *
 * Each case is a one-layer model (conv2d -> global average pool, or linear) with a random
 * mask; the plan is forced to each variant with TICKET_NO_FALLBACK=1 so that a reference
 * fallback cannot hide a bug, and every emitted kernel is compiled with -Werror
 * (TICKET_CLANG_EXTRA) so template warnings fail the test.  The cache lives in a fresh
 * temporary directory.  Pass criterion: relative error (max |got - ref| / max |ref|) at most
 * 1e-5, exact zeros in dw off the mask, and the kernel's variant is the one asked for.
 *
 * Cases: sparsity 0 (no mask and an all-ones mask), 0.5, 0.9, 0.99, 1.0; an all-zero output
 * channel and input channel; stride 2 (even and odd widths, no padding, dilation 2: the batch
 * form's paired column phases and its fallback); 1x1; 3x3, 5x5, 4x4 stride 2 pad 1; odd maps
 * (7x7, 13x11) and a 2x2 one; channel counts 1..17 (every remainder of the 16-wide vector);
 * batch 1, 3, 17, 32; dilation 2 and groups 2; linear layers.  The table variant's forward layouts (by output rows,
 * the flattened grid, im2col) and the batch-vectorised kernel are each forced on the cases that
 * run every variant.
 *
 * Folding (compile.h, fold): every kernel that folds (all but value-baked, which must decline)
 * gets a random per-channel scale (negative ones too) and shift; its folded forward with and
 * without the ReLU epilogue and its input gradient with and without the ReLU mask are checked
 * against the reference ops on the folded weights and bias (the mask taken from the reference's
 * own relu'd output, passed to the kernel as relu_y); update() must drop the fold.  The dense
 * oneDNN kernel (runtime/dense.c) is checked the same way, in both fold modes, on the cases
 * that run every variant and on the linear ones (relative error 1e-4, as for oneDNN elsewhere).
 *
 * The inputs the kernels read (x, dy and the ReLU mask) end where an unreadable page begins
 * (galloc), so a prep that reads past the end of its input -- the vector tails of the row
 * copies must stay inside it -- crashes the test instead of passing by luck. */
#include "check.h"

#include "compiler/compile.h"
#include "compiler/emit.h"
#include "compiler/jit.h"
#include "compiler/toolchain.h"
#include "runtime/dense.h"
#include "runtime/ref/ref_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* n floats that end where a PROT_NONE page begins; gfree releases them.  The mapping's start
 * (whole pages before the data) is kept in a small table. */
static struct {
  float *p;
  void *base;
  size_t len;
} g_guarded[64];

static float *galloc(int64_t n) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE), bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
  const size_t data_pages = (bytes + page - 1) / page, len = (data_pages + 1) * page;
  void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  if (mprotect((char *)base + data_pages * page, page, PROT_NONE)) {
    munmap(base, len);
    return NULL;
  }
  float *p = (float *)((char *)base + data_pages * page - bytes);
  for (size_t k = 0; k < sizeof g_guarded / sizeof *g_guarded; k++)
    if (!g_guarded[k].p) {
      g_guarded[k].p = p, g_guarded[k].base = base, g_guarded[k].len = len;
      return p;
    }
  munmap(base, len);
  return NULL;
}

static void gfree(float *p) {
  for (size_t k = 0; p && k < sizeof g_guarded / sizeof *g_guarded; k++)
    if (g_guarded[k].p == p) {
      munmap(g_guarded[k].base, g_guarded[k].len);
      g_guarded[k].p = NULL;
      return;
    }
}

/* the variants under test: X(variant, trains) */
#define VARIANTS(X)                      \
  X(TK_VARIANT_SPARSE_TABLE, 1)          \
  X(TK_VARIANT_SPARSE_UNROLLED, 1)       \
  X(TK_VARIANT_VALUE_BAKED, 0)

typedef struct {
  const char *name;
  int linear;
  int I, O, H, W, KH, KW, S, P, D, G;
  double sparsity;
  int n;
  int special;   /* 0: random mask; 1: no mask; 2: output channel 1 and input channel 0 all zero */
  int all_variants;
} kcase;

static tk_rng g_rng;
static int g_cases_run;
static int g_acc_cases; /* kernels whose summed input gradient was checked */

static void fill(float *p, int64_t n) {
  for (int64_t i = 0; i < n; i++) p[i] = (float)(2.0 * tk_rng_uniform(&g_rng) - 1.0);
}

/* conv -> globalavgpool (classes = O), or linear (classes = O) */
static tk_model *make_model(const kcase *c) {
  tk_model *m = c->linear ? tk_model_new("kernel-test", c->O, c->I, 1, 1) : tk_model_new("kernel-test", c->O, c->I, c->H, c->W);
  if (!m) return NULL;
  int64_t ws[4], bs[1] = {c->O};
  int wi, bi;
  if (c->linear) {
    ws[0] = c->O, ws[1] = c->I;
    wi = tk_model_add_tensor(m, "fc.weight", 2, ws);
  } else {
    ws[0] = c->O, ws[1] = c->I / c->G, ws[2] = c->KH, ws[3] = c->KW;
    wi = tk_model_add_tensor(m, "conv.weight", 4, ws);
  }
  bi = tk_model_add_tensor(m, c->linear ? "fc.bias" : "conv.bias", 1, bs);
  tk_tensor *w = &m->tensors[wi];
  w->prunable = w->trainable = true;
  m->tensors[bi].trainable = true;
  fill(w->data, w->numel);
  fill(m->tensors[bi].data, c->O);
  if (c->special != 1) {
    uint8_t *mask = malloc((size_t)w->numel);
    for (int64_t k = 0; k < w->numel; k++) mask[k] = tk_rng_uniform(&g_rng) >= c->sparsity;
    if (c->special == 2) {
      int64_t per_o = w->numel / c->O, per_i = c->linear ? 1 : (int64_t)c->KH * c->KW;
      int ig = c->linear ? c->I : c->I / c->G;
      for (int64_t k = 0; k < per_o; k++) mask[1 * per_o + k] = 0;                 /* output channel 1 */
      for (int o = 0; o < c->O; o++)
        for (int64_t k = 0; k < per_i; k++) mask[(int64_t)o * ig * per_i + k] = 0; /* input channel 0 */
    }
    tk_tensor_set_mask(w, mask);
    free(mask);
  }
  tk_layer l = tk_layer_default(c->linear ? TK_OP_LINEAR : TK_OP_CONV2D, c->linear ? "fc" : "conv", 0);
  l.weight = wi, l.bias = bi;
  if (!c->linear) {
    l.kh = c->KH, l.kw = c->KW, l.sh = l.sw = c->S, l.ph = l.pw = c->P, l.dh = l.dw = c->D, l.groups = c->G;
  }
  tk_model_add_layer(m, &l);
  if (!c->linear) {
    tk_layer gp = tk_layer_default(TK_OP_GLOBALAVGPOOL, "pool", 1);
    tk_model_add_layer(m, &gp);
  }
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "%s: infer: %s\n", c->name, tk_last_error());
    tk_model_free(m);
    return NULL;
  }
  return m;
}

static void check_rel(const char *what, const kcase *c, const char *vname, const float *got, const float *want,
                      int64_t n) {
  double r = check_rel_err(got, want, (size_t)n);
  if (!(r <= 1e-5)) {
    int64_t worst = 0;
    double wd = -1;
    for (int64_t k = 0; k < n; k++)
      if (fabs((double)got[k] - want[k]) > wd || isnan(got[k])) wd = fabs((double)got[k] - want[k]), worst = k;
    fprintf(stderr, "%s [%s] %s: relative error %.3g > 1e-5; worst [%lld]: got %.9g expected %.9g\n", c->name, vname,
            what, r, (long long)worst, got[worst], want[worst]);
    check_failures++;
  }
}

static void check_rel_tol(const char *what, const kcase *c, const char *vname, const float *got, const float *want,
                          int64_t n, double tol) {
  double r = check_rel_err(got, want, (size_t)n);
  if (!(r <= tol)) {
    int64_t worst = 0;
    double wd = -1;
    for (int64_t k = 0; k < n; k++)
      if (fabs((double)got[k] - want[k]) > wd || isnan(got[k])) wd = fabs((double)got[k] - want[k]), worst = k;
    fprintf(stderr, "%s [%s] %s: relative error %.3g > %g; worst [%lld]: got %.9g expected %.9g\n", c->name, vname,
            what, r, tol, (long long)worst, got[worst], want[worst]);
    check_failures++;
  }
}

/* The fold entries of kernel k against the reference ops on W*scale, b*scale + shift: forward
 * with and without the ReLU (relu_modes: bit 0 without, bit 1 with), input gradient with and
 * without the mask of the relu'd output (when training). */
static void check_fold(const kcase *c, tk_model *m, tk_kernel *k, const char *vname, int training, int relu_modes,
                       double tol) {
  const tk_layer *l = &m->layers[0];
  const tk_tensor *w = &m->tensors[l->weight];
  const float *b = m->tensors[l->bias].data;
  const int n = c->n, O = c->O;
  const int64_t xs = tk_shape_numel(l->in) * n, ys = tk_shape_numel(l->out) * n, per_o = w->numel / O;
  float *scale = malloc((size_t)O * 4), *shift = malloc((size_t)O * 4), *wf = malloc((size_t)w->numel * 4);
  float *bf = malloc((size_t)O * 4), *x = galloc(xs), *y = malloc((size_t)ys * 4);
  float *yr = malloc((size_t)ys * 4), *yrr = galloc(ys), *dy = galloc(ys);
  float *dym = malloc((size_t)ys * 4), *dx = malloc((size_t)xs * 4), *dxr = malloc((size_t)xs * 4);
  for (int o = 0; o < O; o++) {
    float u = (float)tk_rng_uniform(&g_rng);
    scale[o] = (o % 3 == 2 ? -1.0f : 1.0f) * (0.5f + u);
    shift[o] = (float)tk_rng_uniform(&g_rng) - 0.5f;
    bf[o] = b[o] * scale[o] + shift[o];
  }
  for (int64_t q = 0; q < w->numel; q++) wf[q] = (w->mask && !w->mask[q] ? 0.0f : w->data[q]) * scale[q / per_o];
  fill(x, xs);
  fill(dy, ys);
  CHECK(k->v->fold(k, scale, shift) == TK_OK);
  if (c->linear) tk_ref_linear_fwd(l, x, wf, bf, yr, n);
  else tk_ref_conv2d_fwd(l, x, wf, bf, yr, n);
  for (int64_t q = 0; q < ys; q++) yrr[q] = yr[q] > 0.0f ? yr[q] : 0.0f;
  for (int relu = 0; relu < 2; relu++) {
    if (!(relu_modes >> relu & 1)) continue;
    for (int64_t q = 0; q < ys; q++) y[q] = NAN;
    CHECK(k->v->fwd_folded(k, x, y, n, relu) == TK_OK);
    check_rel_tol(relu ? "folded forward + relu" : "folded forward", c, vname, y, relu ? yrr : yr, ys, tol);
    if (!training) continue;
    /* the mask is the relu'd output; without the ReLU, dy is used as it is */
    const float *ry = relu ? yrr : NULL;
    for (int64_t q = 0; q < ys; q++) dym[q] = !ry || ry[q] > 0.0f ? dy[q] : 0.0f;
    if (c->linear) tk_ref_linear_bwd_input(l, dym, wf, dxr, n);
    else tk_ref_conv2d_bwd_input(l, dym, wf, dxr, n);
    for (int64_t q = 0; q < xs; q++) dx[q] = NAN;
    CHECK(k->v->bwd_input_folded(k, dy, ry, dx, n) == TK_OK);
    check_rel_tol(relu ? "folded input gradient, masked" : "folded input gradient", c, vname, dx, dxr, xs, tol);
  }
  /* the fusions (compile.h, TK_KCAP_*): every table conv adds a residual in its forward's store,
   * into another buffer and into y itself; a conv whose input gradient runs as the transposed
   * layer's forward or over the batch sums it into dx, folded and not (TICKET_RES_BATCH=1:
   * the batch forms too, which the executor does not use by default) */
  const int want_res = !c->linear && k->variant == TK_VARIANT_SPARSE_TABLE;
  CHECK_MSG(!!(k->caps & TK_KCAP_FWD_RES) == want_res, "%s [%s]: residual-add cap %u, expected %d", c->name, vname,
            k->caps, want_res);
  if (k->caps & TK_KCAP_FWD_RES) {
    float *res = malloc((size_t)ys * 4), *want = malloc((size_t)ys * 4);
    fill(res, ys);
    for (int relu = 0; relu < 2; relu++) {
      for (int64_t q = 0; q < ys; q++) {
        float t = yr[q] + res[q];
        want[q] = relu ? (t > 0.0f ? t : 0.0f) : t;
        y[q] = NAN;
      }
      CHECK(k->v->fwd_folded_res(k, x, res, y, n, relu) == TK_OK);
      check_rel_tol(relu ? "folded forward + residual + relu" : "folded forward + residual", c, vname, y, want, ys, tol);
      memcpy(y, res, (size_t)ys * 4);
      CHECK(k->v->fwd_folded_res(k, x, y, y, n, relu) == TK_OK);
      check_rel_tol(relu ? "folded forward + residual in place + relu" : "folded forward + residual in place", c,
                    vname, y, want, ys, tol);
    }
    free(res), free(want);
  }
  if (k->caps & TK_KCAP_BWD_ACC) {
    CHECK(training);
    float *dx0 = malloc((size_t)xs * 4), *want = malloc((size_t)xs * 4);
    fill(dx0, xs);
    for (int mode = 0; mode < 3; mode++) { /* folded and masked, folded, the layer's own values */
      const float *ry = mode == 0 ? yrr : NULL;
      for (int64_t q = 0; q < ys; q++) dym[q] = !ry || ry[q] > 0.0f ? dy[q] : 0.0f;
      tk_ref_conv2d_bwd_input(l, dym, mode == 2 ? w->data : wf, dxr, n);
      for (int64_t q = 0; q < xs; q++) want[q] = dxr[q] + dx0[q];
      memcpy(dx, dx0, (size_t)xs * 4);
      CHECK(k->v->bwd_input_acc(k, dy, ry, dx, n, mode < 2) == TK_OK);
      check_rel_tol(mode == 0 ? "folded input gradient, masked, summed in" : mode == 1 ? "folded input gradient, summed in"
                                                                                     : "input gradient, summed in",
                    c, vname, dx, want, xs, tol);
    }
    g_acc_cases++;
    free(dx0), free(want);
  }
  /* the unfolded forward is untouched by the fold */
  CHECK(k->v->fwd(k, x, y, n) == TK_OK);
  if (c->linear) tk_ref_linear_fwd(l, x, w->data, b, yr, n);
  else tk_ref_conv2d_fwd(l, x, w->data, b, yr, n);
  check_rel_tol("forward beside a fold", c, vname, y, yr, ys, tol);
  /* update() and fold(NULL) drop the fold */
  CHECK(k->v->update(k) == TK_OK);
  CHECK_MSG(k->v->fwd_folded(k, x, y, n, relu_modes == 2) == TK_ERR_ARG, "%s [%s]: folded call after update()",
            c->name, vname);
  CHECK(k->v->fold(k, scale, shift) == TK_OK && k->v->fold(k, NULL, NULL) == TK_OK);
  CHECK_MSG(k->v->fwd_folded(k, x, y, n, relu_modes == 2) == TK_ERR_ARG, "%s [%s]: folded call after fold(NULL)",
            c->name, vname);
  free(scale), free(shift), free(wf), free(bf), gfree(x), free(y), free(yr), gfree(yrr), gfree(dy), free(dym), free(dx),
      free(dxr);
}

/* The dense oneDNN kernel's folds, in both modes. */
static void run_dense_fold(const kcase *c, tk_model *m) {
  if (!tk_dense_available()) return;
  for (int mode = 1; mode <= 2; mode++) {
    tk_kernel *k = NULL;
    if (tk_kernel_dense_create_fold(m, 0, c->n, 0, mode, &k) != TK_OK) {
      fprintf(stderr, "%s [dense]: create: %s\n", c->name, tk_last_error());
      check_failures++;
      continue;
    }
    CHECK(k->v->fold && k->v->fwd_folded && k->v->bwd_input_folded);
    check_fold(c, m, k, mode == 2 ? "dense fold+relu" : "dense fold", 1, mode == 2 ? 2 : 1, 1e-4);
    /* the mode it was made for only */
    float *x = calloc((size_t)(tk_shape_numel(m->layers[0].in) * c->n), 4);
    float *y = calloc((size_t)(tk_shape_numel(m->layers[0].out) * c->n), 4);
    CHECK(k->v->update(k) == TK_OK);
    CHECK(k->v->fold(k, m->tensors[m->layers[0].bias].data, m->tensors[m->layers[0].bias].data) == TK_OK);
    CHECK(k->v->fwd_folded(k, x, y, c->n, mode == 1) == TK_ERR_ARG);
    free(x), free(y);
    k->v->destroy(k);
  }
  tk_kernel *k = NULL; /* fold mode 0: no fold entries */
  CHECK(tk_kernel_dense_create_ext(m, 0, c->n, 0, &k) == TK_OK && k && !k->v->fold && !k->v->fwd_folded);
  if (k) k->v->destroy(k);
}

static void run_variant(const kcase *c, tk_model *m, tk_variant v, int training, const char *cache) {
  const char *vname = tk_variant_name(v);
  const tk_layer *l = &m->layers[0];
  const tk_tensor *w = &m->tensors[l->weight];
  const float *b = m->tensors[l->bias].data;
  int64_t nnz = tk_tensor_nnz(w);
  tk_compile_opts o;
  tk_compile_opts_default(&o);
  o.batch = c->n;
  o.training = training;
  o.force = v;
  o.cache_dir = cache;
  tk_plan *p = NULL;
  if (tk_plan_make(m, &o, &p) != TK_OK) {
    fprintf(stderr, "%s [%s]: plan: %s\n", c->name, vname, tk_last_error());
    check_failures++;
    return;
  }
  tk_variant want = nnz == 0 ? TK_VARIANT_EMPTY : (c->linear ? TK_VARIANT_SPARSE_TABLE : v);
  CHECK_MSG(p->layers[0].variant == want, "%s [%s]: planned %s", c->name, vname, tk_variant_name(p->layers[0].variant));
  const char *vbe = getenv("TICKET_VEC_BATCH"), *bte = getenv("TICKET_BWD_T");
  if (vbe && *vbe && !c->linear && want == TK_VARIANT_SPARSE_TABLE) {
    /* a transposed input gradient (TICKET_BWD_T=1, training, stride 1) replaces the batch one */
    const int t = training && bte && !strcmp(bte, "1") && c->S == 1 && c->D == 1 && c->G == 1 &&
                  c->P <= c->KH - 1 && c->P <= c->KW - 1;
    int forced = !strcmp(vbe, "1")    ? TK_VB_ALL
                 : !strcmp(vbe, "0")  ? 0
                 : !strcmp(vbe, "iw") ? TK_VB_BWD_INPUT | TK_VB_BWD_WEIGHT
                 : !strcmp(vbe, "fw") ? TK_VB_FWD | TK_VB_BWD_WEIGHT
                                      : -1;
    if (t && forced >= 0) forced = (forced & ~TK_VB_BWD_INPUT) | TK_VB_BWD_T;
    CHECK_MSG(p->layers[0].vec_batch == forced, "%s [%s]: vec_batch %d, forced %s%s", c->name, vname,
              p->layers[0].vec_batch, vbe, t ? " and transposed" : "");
  }
  tk_kernel *ks[2] = {NULL, NULL};
  if (tk_sparse_build(m, p, &o, c->n, ks) != TK_OK || !ks[0]) {
    fprintf(stderr, "%s [%s]: build: %s\n", c->name, vname, tk_last_error());
    check_failures++;
    tk_plan_free(p);
    return;
  }
  tk_kernel *k = ks[0];
  CHECK_MSG(k->variant == want, "%s [%s]: kernel variant %s", c->name, vname, tk_variant_name(k->variant));
  int64_t xs = tk_shape_numel(l->in) * c->n, ys = tk_shape_numel(l->out) * c->n;
  float *x = galloc(xs), *y = malloc((size_t)ys * 4), *yr = malloc((size_t)ys * 4);
  float *dy = galloc(ys), *dx = malloc((size_t)xs * 4), *dxr = malloc((size_t)xs * 4);
  float *dw = malloc((size_t)w->numel * 4), *dwr = malloc((size_t)w->numel * 4);
  float *db = malloc((size_t)c->O * 4), *dbr = malloc((size_t)c->O * 4);
  fill(x, xs);
  fill(dy, ys);
  for (int64_t q = 0; q < ys; q++) y[q] = NAN;
  /* forward, twice: the second call must not depend on state left by the first */
  for (int rep = 0; rep < 2; rep++) {
    CHECK(k->v->fwd(k, x, y, c->n) == TK_OK);
    if (c->linear) tk_ref_linear_fwd(l, x, w->data, b, yr, c->n);
    else tk_ref_conv2d_fwd(l, x, w->data, b, yr, c->n);
    check_rel(rep ? "forward (repeat)" : "forward", c, vname, y, yr, ys);
  }
  /* batch smaller than max: only the first image */
  if (c->n > 1) {
    CHECK(k->v->fwd(k, x, y, 1) == TK_OK);
    check_rel("forward n=1", c, vname, y, yr, ys / c->n);
  }
  /* new values, same mask: update() repacks (value-baked must refuse changed values) */
  if (k->variant != TK_VARIANT_VALUE_BAKED) {
    for (int64_t q = 0; q < w->numel; q++) w->data[q] *= -0.5f;
    tk_tensor_apply_mask(&m->tensors[l->weight]);
    CHECK(k->v->update(k) == TK_OK);
    CHECK(k->v->fwd(k, x, y, c->n) == TK_OK);
    if (c->linear) tk_ref_linear_fwd(l, x, w->data, b, yr, c->n);
    else tk_ref_conv2d_fwd(l, x, w->data, b, yr, c->n);
    check_rel("forward after update", c, vname, y, yr, ys);
  } else {
    float keep = w->data[0];
    int64_t q = 0;
    while (q < w->numel && w->mask && !w->mask[q]) q++;
    if (q < w->numel) {
      keep = w->data[q];
      w->data[q] += 1.0f;
      CHECK_MSG(k->v->update(k) != TK_OK, "%s [%s]: update with changed values must fail", c->name, vname);
      w->data[q] = keep;
      CHECK(k->v->update(k) == TK_OK);
    }
  }
  if (training) {
    CHECK(k->v->bwd_input(k, dy, dx, c->n) == TK_OK);
    if (c->linear) tk_ref_linear_bwd_input(l, dy, w->data, dxr, c->n);
    else tk_ref_conv2d_bwd_input(l, dy, w->data, dxr, c->n);
    check_rel("input gradient", c, vname, dx, dxr, xs);
    for (int64_t q = 0; q < w->numel; q++) dw[q] = NAN;
    CHECK(k->v->bwd_weight(k, x, dy, dw, db, c->n) == TK_OK);
    if (c->linear) tk_ref_linear_bwd_weight(l, x, dy, dwr, dbr, c->n);
    else tk_ref_conv2d_bwd_weight(l, x, dy, dwr, dbr, c->n);
    int64_t off_mask_bad = 0;
    for (int64_t q = 0; q < w->numel; q++) {
      if (w->mask && !w->mask[q]) {
        off_mask_bad += dw[q] != 0.0f;
        dwr[q] = 0.0f;
      }
    }
    CHECK_MSG(off_mask_bad == 0, "%s [%s]: %lld weight-gradient entries off the mask are not 0", c->name, vname,
              (long long)off_mask_bad);
    check_rel("weight gradient", c, vname, dw, dwr, w->numel);
    check_rel("bias gradient", c, vname, db, dbr, c->O);
    /* db may be NULL */
    CHECK(k->v->bwd_weight(k, x, dy, dw, NULL, c->n) == TK_OK);
  } else {
    CHECK(k->v->bwd_input(k, dy, dx, c->n) != TK_OK); /* no gradients were built */
  }
  CHECK(k->v->fwd(k, x, y, c->n + 1) != TK_OK); /* batch over max_batch */
  if (k->variant == TK_VARIANT_VALUE_BAKED) {
    CHECK_MSG(!k->v->fold && !k->v->fwd_folded && !k->v->bwd_input_folded, "%s [%s]: value-baked kernel folds",
              c->name, vname);
  } else {
    CHECK_MSG(k->v->fold && k->v->fwd_folded && k->v->bwd_input_folded, "%s [%s]: no fold entries", c->name, vname);
    if (k->v->fold) {
      tk_rng keep_rng = g_rng; /* leave the later cases' data as it was */
      check_fold(c, m, k, vname, training, 3, 1e-5);
      g_rng = keep_rng;
    }
  }
  k->v->destroy(k);
  tk_plan_free(p);
  gfree(x), free(y), free(yr), gfree(dy), free(dx), free(dxr), free(dw), free(dwr), free(db), free(dbr);
  g_cases_run++;
}

static void run_case(const kcase *c, const char *cache) {
  tk_model *m = make_model(c);
  if (!m) {
    check_failures++;
    return;
  }
  float *w0 = malloc((size_t)m->tensors[m->layers[0].weight].numel * 4);
  memcpy(w0, m->tensors[m->layers[0].weight].data, (size_t)m->tensors[m->layers[0].weight].numel * 4);
#define X(v, trains)                                                                                       \
  if (v == TK_VARIANT_SPARSE_TABLE || c->all_variants) {                                                   \
    memcpy(m->tensors[m->layers[0].weight].data, w0, (size_t)m->tensors[m->layers[0].weight].numel * 4); \
    run_variant(c, m, v, trains, cache);                                                                   \
  }
  VARIANTS(X)
#undef X
  memcpy(m->tensors[m->layers[0].weight].data, w0, (size_t)m->tensors[m->layers[0].weight].numel * 4);
  if (c->all_variants || c->linear) { /* oneDNN's primitives are slow to make: the cases that run every form */
    tk_rng keep_rng = g_rng; /* leave the later cases' data as it was */
    run_dense_fold(c, m);
    g_rng = keep_rng;
  }
  /* the table kernel's layouts, each forced (the geometry and the plan pick one by a cost
   * estimate): the forward by output rows straight to y, the flattened grid through z, the tap
   * copies (im2col), and the batch-vectorised kernel (16 images per vector, every pass; with
   * 1 or 3 images the other lanes are idle, with 32 two blocks), once more with channel chunks
   * of 3 (TICKET_BATCH_CHUNK: partial sums carried across chunks, empty chunks, a short last one);
   * and the stride-1 forward on column-shifted copies (TICKET_XS, where it applies), once with
   * input-channel chunks of 3 (TICKET_XS_CH: sums kept in y or z between chunks), whole-image
   * copies and copies made band by band (TICKET_XL; a short last chunk, the padding rows); the
   * im2col and grid forwards in input-channel chunks of 3 (TICKET_CHUNK: im2col's sums wait in y
   * or z between chunks, the grid's in z; im2col's table chunk-major), and once beside the batch
   * forms (which keep the table o-major: the per-image forward then runs unchunked); im2col by
   * default reads the KW column-shifted copies with rows OW wide where they apply (stride 1,
   * OW a multiple of 8: the 8x8, 8x16 and dilated cases), so it runs once more with one copy
   * per tap (TICKET_PK=0) */
  if (!c->linear && c->all_variants) {
    static const struct {
      const char *tag, *im2col, *rows, *vec_batch, *chunk, *xs, *xs_ch, *bwd_t, *xl, *ch, *pk;
    } forms[] = {{"rows", "0", "1", "0", "", "0", "", "", "", "", ""},
                 {"grid", "0", "0", "0", "", "0", "", "", "", "", ""},
                 {"im2col", "1", "0", "0", "", "0", "", "", "", "", ""},
                 {"im2col chunked", "1", "0", "0", "", "0", "", "", "", "3", ""},
                 {"im2col tap copies", "1", "0", "0", "", "0", "", "", "", "", "0"},
                 {"im2col tap copies chunked", "1", "0", "0", "", "0", "", "", "", "3", "0"},
                 {"im2col tap copies, transposed input gradient", "1", "0", "0", "", "0", "", "1", "", "", "0"},
                 {"grid chunked", "0", "0", "0", "", "0", "", "", "", "3", ""},
                 {"shifted", "0", "0", "0", "", "1", "", "", "0", "", ""},
                 {"shifted chunked", "0", "0", "0", "", "1", "3", "", "0", "", ""},
                 {"shifted by band", "0", "0", "0", "", "1", "", "", "1", "", ""},
                 {"shifted by band, chunked", "0", "0", "0", "", "1", "3", "", "1", "", ""},
                 {"batch", "", "", "1", "0", "", "", "", "", "", ""},
                 {"batch chunked", "", "", "1", "3", "", "", "", "", "", ""},
                 {"batch gradients, spatial forward", "", "", "iw", "", "", "", "", "", "", ""},
                 {"batch forward and weight gradient", "", "", "fw", "", "", "", "", "", "", ""},
                 {"rows, transposed input gradient", "0", "1", "0", "", "0", "", "1", "", "", ""},
                 {"im2col, transposed input gradient", "1", "0", "0", "", "0", "", "1", "", "", ""},
                 {"im2col chunked, transposed input gradient", "1", "0", "0", "", "0", "", "1", "", "3", ""},
                 {"shifted chunked, transposed input gradient", "0", "0", "0", "", "1", "3", "1", "0", "", ""},
                 {"shifted by band, chunked, transposed input gradient", "0", "0", "0", "", "1", "3", "1", "1", "", ""},
                 {"batch chunked, transposed input gradient", "", "", "fw", "3", "", "", "1", "", "", ""},
                 {"batch beside im2col chunked", "1", "0", "1", "", "0", "", "", "", "3", ""}};
    for (size_t f = 0; f < sizeof forms / sizeof *forms; f++) {
      char name[160];
      snprintf(name, sizeof name, "%s (%s forced)", c->name, forms[f].tag);
      kcase cf = *c;
      cf.name = name;
      setenv("TICKET_IM2COL", forms[f].im2col, 1);
      setenv("TICKET_ROWS", forms[f].rows, 1);
      setenv("TICKET_VEC_BATCH", forms[f].vec_batch, 1);
      setenv("TICKET_BATCH_CHUNK", forms[f].chunk, 1);
      setenv("TICKET_XS", forms[f].xs, 1);
      setenv("TICKET_XS_CH", forms[f].xs_ch, 1);
      setenv("TICKET_BWD_T", forms[f].bwd_t, 1);
      setenv("TICKET_XL", forms[f].xl, 1);
      setenv("TICKET_CHUNK", forms[f].ch ? forms[f].ch : "", 1);
      setenv("TICKET_PK", forms[f].pk ? forms[f].pk : "", 1);
      memcpy(m->tensors[m->layers[0].weight].data, w0, (size_t)m->tensors[m->layers[0].weight].numel * 4);
      /* the forms added last draw their data from a copy of the generator, so that they leave
       * the later cases' data as it was */
      const int own_rng = !strcmp(forms[f].tag, "batch chunked") || !strcmp(forms[f].tag, "batch beside im2col chunked");
      tk_rng keep_rng = g_rng;
      run_variant(&cf, m, TK_VARIANT_SPARSE_TABLE, 1, cache);
      if (own_rng) g_rng = keep_rng;
      unsetenv("TICKET_IM2COL");
      unsetenv("TICKET_ROWS");
      unsetenv("TICKET_VEC_BATCH");
      unsetenv("TICKET_BATCH_CHUNK");
      unsetenv("TICKET_XS");
      unsetenv("TICKET_XS_CH");
      unsetenv("TICKET_BWD_T");
      unsetenv("TICKET_XL");
      unsetenv("TICKET_CHUNK");
      unsetenv("TICKET_PK");
    }
  }
  free(w0);
  tk_model_free(m);
}

/* Calls with fewer images than threads: with TICKET_SPLIT unset each kernel runs them in
 * turns split between the threads and on one thread (timing both, sparse.c split_pick), then
 * the faster.  Every call's output must be the same, bit for bit, whichever way it ran; and
 * the same as with TICKET_SPLIT=0 and =1. */
static void check_split_auto(const char *cache) {
  kcase c = {"split", 0, 16, 24, 8, 8, 3, 3, 1, 1, 1, 1, 0.5, 1, 0, 0};
  tk_model *m = make_model(&c);
  const tk_layer *l = &m->layers[0];
  const int64_t xs = tk_shape_numel(l->in), ys = tk_shape_numel(l->out);
  float *x = galloc(xs), *dy = galloc(ys);
  fill(x, xs);
  fill(dy, ys);
  float *y[3], *dx[3];
  const char *modes[3] = {"", "0", "1"};
  for (int mode = 0; mode < 3; mode++) {
    y[mode] = malloc((size_t)ys * 4), dx[mode] = malloc((size_t)xs * 4);
    setenv("TICKET_SPLIT", modes[mode], 1);
    tk_compile_opts o;
    tk_compile_opts_default(&o);
    o.batch = 1, o.threads = 2, o.training = 1, o.force = TK_VARIANT_SPARSE_TABLE, o.cache_dir = cache;
    tk_plan *p = NULL;
    tk_kernel *ks[2] = {NULL, NULL};
    if (tk_plan_make(m, &o, &p) != TK_OK || tk_sparse_build(m, p, &o, 1, ks) != TK_OK || !ks[0]) {
      fprintf(stderr, "split: build: %s\n", tk_last_error());
      check_failures++;
      tk_plan_free(p);
      continue;
    }
    tk_kernel *k = ks[0];
    float *yc = malloc((size_t)ys * 4), *dxc = malloc((size_t)xs * 4);
    /* more calls than the measuring takes (4 of each way), so that both ways and the choice run */
    for (int call = 0; call < 12; call++) {
      CHECK(k->v->fwd(k, x, call ? yc : y[mode], 1) == TK_OK);
      CHECK(k->v->bwd_input(k, dy, call ? dxc : dx[mode], 1) == TK_OK);
      if (call) {
        CHECK_MSG(!memcmp(yc, y[mode], (size_t)ys * 4), "split (TICKET_SPLIT=%s): forward call %d differs from the first",
                  modes[mode], call);
        CHECK_MSG(!memcmp(dxc, dx[mode], (size_t)xs * 4),
                  "split (TICKET_SPLIT=%s): input gradient call %d differs from the first", modes[mode], call);
      }
    }
    if (mode) {
      CHECK_MSG(!memcmp(y[mode], y[0], (size_t)ys * 4), "split: TICKET_SPLIT=%s forward differs from measured", modes[mode]);
      CHECK_MSG(!memcmp(dx[mode], dx[0], (size_t)xs * 4), "split: TICKET_SPLIT=%s input gradient differs", modes[mode]);
    }
    float *yr = malloc((size_t)ys * 4);
    tk_ref_conv2d_fwd(l, x, m->tensors[l->weight].data, m->tensors[l->bias].data, yr, 1);
    check_rel("forward", &c, modes[mode][0] ? modes[mode] : "measured", y[mode], yr, ys);
    free(yr);
    free(yc);
    free(dxc);
    k->v->destroy(k);
    tk_plan_free(p);
  }
  for (int mode = 0; mode < 3; mode++) free(y[mode]), free(dx[mode]);
  gfree(x);
  gfree(dy);
  setenv("TICKET_SPLIT", "1", 1);
  tk_model_free(m);
}

/* The emitted source: provenance header, and a clang error names the layer. */
static void check_source(const char *cache) {
  kcase c = {"source", 0, 8, 8, 6, 6, 3, 3, 1, 1, 1, 1, 0.5, 1, 0, 0};
  tk_model *m = make_model(&c);
  tk_geom g;
  tk_tables t;
  CHECK(tk_geom_make(m, 0, &g) == TK_OK);
  CHECK(tk_tables_build(m, 0, &g, 1, &t) == TK_OK);
  tk_codebuf cb;
  tk_cb_init(&cb);
  tk_emit_opts eo = {.variant = TK_VARIANT_SPARSE_UNROLLED, .training = 1, .static_tables = 1, .model_hash = "abc"};
  uint64_t key[2];
  tk_emit_layer(&cb, m, 0, &g, &t, &eo, key);
  CHECK(cb.err == TK_OK);
  CHECK(cb.buf && !strncmp(cb.buf, "/* Generated by Ticket", 22));
  CHECK(cb.buf && strstr(cb.buf, " * layer:     0 conv (conv2d)") != NULL);
  CHECK(cb.buf && strstr(cb.buf, "TK_FN(rp)") != NULL);
  /* the static-table source compiles warning-free too */
  tk_cc_unit u = {"layer 0 (conv)", cb.buf, cb.len, NULL, 0};
  CHECK_MSG(tk_cc_compile(&u, 1, 1, "-Werror") == TK_OK, "static-table source: %s", tk_last_error());
  free(u.obj);
  /* a broken source: the error names the unit (the layer) */
  const char *bad = "int f(void) { return undefined_thing; }\n";
  tk_cc_unit ub = {"layer 7 (broken)", bad, strlen(bad), NULL, 0};
  fprintf(stderr, "(an intentional clang error follows)\n");
  CHECK(tk_cc_compile(&ub, 1, 1, NULL) == TK_ERR_COMPILE);
  CHECK_MSG(strstr(tk_last_error(), "layer 7 (broken)") && strstr(tk_last_error(), "undefined_thing"), "message: %s",
            tk_last_error());
  /* a template with an undeclared parameter is an emitter error, not a crash */
  tk_codebuf e;
  tk_cb_init(&e);
  tk_tparam bogus = {"NOPE", "1"};
  tk_template_expand(&e, "linear_table.c.in", &bogus, 1);
  CHECK(e.err != TK_OK && strstr(e.msg, "NOPE"));
  tk_cb_free(&e);
  tk_cb_free(&cb);
  tk_tables_free(&t);
  tk_model_free(m);
  (void)cache;
}

/* The planner's per-pass layout (compiler/plan.c, vec_batch_passes): with 16+ images and 16+
 * input channels, the forward on the batch on stride-1 maps up to 8x8; with gradients, the
 * input and weight gradients on stride-1 maps up to 16x16 and 32x32 up to sparsity 0.96, the
 * weight gradient at stride 2 and the input gradient there too for kernels larger than 1x1 on
 * even input widths; TICKET_VEC_BATCH overrides with "0", "1" or pass letters.  With gradients,
 * a stride-1 conv with 16+ input channels runs its input gradient as its transposed layer's
 * forward (T) unless that gradient is on the batch on a map up to 16x16; TICKET_BWD_T
 * overrides ("0" never, "1" every stride-1 conv), and a forced TICKET_VEC_BATCH alone means never. */
static void check_plan_vec_batch(void) {
  unsetenv("TICKET_VEC_BATCH");
  unsetenv("TICKET_BWD_T");
  enum { F = TK_VB_FWD, I = TK_VB_BWD_INPUT, W = TK_VB_BWD_WEIGHT, T = TK_VB_BWD_T };
  static const struct {
    kcase c;
    int training, want;
    const char *env, *bwd_t;
  } pc[] = {
      {{"plan 4x4 batch 32", 0, 16, 16, 4, 4, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 0, F, NULL, NULL},
      {{"plan 4x4 batch 8", 0, 16, 16, 4, 4, 3, 3, 1, 1, 1, 1, 0.9, 8, 0, 0}, 1, T, NULL, NULL},
      {{"plan 8x8 batch 16", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.99, 16, 0, 0}, 0, F, NULL, NULL},
      {{"plan 8x8 batch 32 training", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 1, F | I | W, NULL, NULL},
      {{"plan 8x8 batch 32, 8 input channels", 0, 8, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 1, 0, NULL, NULL},
      {{"plan 16x16 batch 32", 0, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 0, 0, NULL, NULL},
      {{"plan 16x16 s=0.99 batch 32", 0, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 0.99, 32, 0, 0}, 0, 0, NULL, NULL},
      {{"plan 16x16 s=0.99 batch 32 training", 0, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 0.99, 32, 0, 0}, 1, I | W, NULL, NULL},
      {{"plan 32x32 batch 32 training", 0, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 1, W | T, NULL, NULL},
      {{"plan 32x32 batch 32", 0, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 0, 0, NULL, NULL},
      {{"plan 32x32 s=0.99 batch 128 training", 0, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1, 0.99, 128, 0, 0}, 1, T, NULL, NULL},
      {{"plan 16x16 batch 1 training", 0, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 0.9, 1, 0, 0}, 1, T, NULL, NULL},
      {{"plan 16x16 5x5 pad 1 batch 1 training", 0, 16, 16, 16, 16, 5, 5, 1, 1, 1, 1, 0.9, 1, 0, 0}, 1, T, NULL, NULL},
      {{"plan 16x16 pad 3 batch 1 training", 0, 16, 16, 16, 16, 3, 3, 1, 3, 1, 1, 0.9, 1, 0, 0}, 1, 0, NULL, NULL},
      {{"plan 16x16 dilation 2 batch 1 training", 0, 16, 16, 16, 16, 3, 3, 1, 2, 2, 1, 0.9, 1, 0, 0}, 1, 0, NULL, NULL},
      {{"plan 16x16 2 groups batch 1 training", 0, 16, 16, 16, 16, 3, 3, 1, 1, 1, 2, 0.9, 1, 0, 0}, 1, 0, NULL, NULL},
      {{"plan 16x16 s2 batch 1 training", 0, 16, 16, 16, 16, 3, 3, 2, 1, 1, 1, 0.9, 1, 0, 0}, 1, 0, NULL, NULL},
      {{"plan 8x8 batch 1 training", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 1, 0, 0}, 1, T, NULL, NULL},
      {{"plan first layer 3->16 batch 1 training", 0, 3, 16, 32, 32, 3, 3, 1, 1, 1, 1, 0.9, 1, 0, 0}, 1, 0, NULL, NULL},
      {{"plan 32x32 batch 32 training, transposed off", 0, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 1, I | W, NULL, "0"},
      {{"plan 8x8 batch 32 training, transposed on", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 1, F | W | T, NULL, "1"},
      {{"plan 8x8 batch 1 training, transposed on", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 1, 0, 0}, 1, T, NULL, "1"},
      {{"plan 8x8 s2 batch 32 training, transposed on", 0, 16, 16, 8, 8, 3, 3, 2, 1, 1, 1, 0.9, 32, 0, 0}, 1, I | W, NULL, "1"},
      {{"plan 32x32 batch 32, transposed on", 0, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 0, 0, NULL, "1"},
      {{"plan 8x8 s2 batch 32 training", 0, 16, 16, 8, 8, 3, 3, 2, 1, 1, 1, 0.9, 32, 0, 0}, 1, I | W, NULL, NULL},
      {{"plan 9x9 s2 batch 32 training", 0, 16, 16, 9, 9, 3, 3, 2, 1, 1, 1, 0.9, 32, 0, 0}, 1, W, NULL, NULL},
      {{"plan 1x1 16x16 s2 batch 32 training", 0, 16, 32, 16, 16, 1, 1, 2, 0, 1, 1, 0.9, 32, 0, 0}, 1, W, NULL, NULL},
      {{"plan 8x8 s2 batch 32", 0, 16, 16, 8, 8, 3, 3, 2, 1, 1, 1, 0.9, 32, 0, 0}, 0, 0, NULL, NULL},
      {{"plan 4x4 batch 2, forced iw", 0, 16, 16, 4, 4, 3, 3, 1, 1, 1, 1, 0.9, 2, 0, 0}, 1, I | W, "iw", NULL},
      {{"plan 8x8 s2 batch 32, forced 1", 0, 16, 16, 8, 8, 3, 3, 2, 1, 1, 1, 0.9, 32, 0, 0}, 1, F | I | W, "1", NULL},
      {{"plan 8x8 batch 32, forced 0", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 1, 0, "0", NULL},
      {{"plan 8x8 batch 32, forced 1 without training", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 0, F, "1", NULL},
      {{"plan 8x8 batch 32, forced iw without training", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 0}, 0, 0, "iw", NULL},
  };
  for (size_t i = 0; i < sizeof pc / sizeof *pc; i++) {
    tk_model *m = make_model(&pc[i].c);
    tk_compile_opts o;
    tk_compile_opts_default(&o);
    o.batch = pc[i].c.n;
    o.training = pc[i].training;
    o.force = TK_VARIANT_SPARSE_TABLE;
    if (pc[i].env) setenv("TICKET_VEC_BATCH", pc[i].env, 1);
    if (pc[i].bwd_t) setenv("TICKET_BWD_T", pc[i].bwd_t, 1);
    tk_plan *p = NULL;
    CHECK(m && tk_plan_make(m, &o, &p) == TK_OK);
    if (p) CHECK_MSG(p->layers[0].vec_batch == pc[i].want, "%s: vec_batch %d, expected %d", pc[i].c.name,
                     p->layers[0].vec_batch, pc[i].want);
    unsetenv("TICKET_VEC_BATCH");
    unsetenv("TICKET_BWD_T");
    tk_plan_free(p);
    tk_model_free(m);
  }
}

int main(void) {
  char why[256];
  if (!tk_jit_built(why, sizeof why) || !tk_cc_path(why, sizeof why)) check_skip(why);
  setenv("TICKET_NO_FALLBACK", "1", 1);
  setenv("TICKET_CLANG_EXTRA", "-Werror", 1);
  setenv("TICKET_RES_BATCH", "1", 1); /* residual and summed input gradient in every form that has them */
  /* calls of fewer images than threads split every image (not timed against one thread, sparse.c):
   * the split path runs wherever there are threads; check_split_auto checks the timed choice */
  setenv("TICKET_SPLIT", "1", 1);
  char cache[] = "/tmp/ticket-test-kernels-XXXXXX";
  if (!mkdtemp(cache)) check_skip("cannot create a temporary cache directory");
  tk_rng_seed(&g_rng, 12345);
  const int heavy = getenv("TICKET_HEAVY") && !strcmp(getenv("TICKET_HEAVY"), "1");
  static const kcase cases[] = {
      /* name                  lin  I   O   H   W  KH KW S  P  D  G  sparsity n special all */
      {"3x3 s=0 no mask", 0, 4, 6, 8, 8, 3, 3, 1, 1, 1, 1, 0.0, 3, 1, 1},
      {"3x3 s=0 ones mask", 0, 16, 24, 8, 8, 3, 3, 1, 1, 1, 1, 0.0, 3, 0, 0},
      {"3x3 s=0.5", 0, 8, 12, 8, 8, 3, 3, 1, 1, 1, 1, 0.5, 3, 0, 1},
      {"3x3 s=0.9", 0, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 0.9, 3, 0, 1},
      {"3x3 s=0.99", 0, 64, 64, 8, 8, 3, 3, 1, 1, 1, 1, 0.99, 3, 0, 1},
      {"3x3 s=1.0 (empty)", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 1.0, 3, 0, 0},
      {"zero out+in channel", 0, 6, 10, 9, 9, 3, 3, 1, 1, 1, 1, 0.3, 3, 2, 1},
      {"3x3 stride 2", 0, 8, 16, 16, 16, 3, 3, 2, 1, 1, 1, 0.5, 3, 0, 1},
      {"3x3 stride 2 odd", 0, 8, 8, 9, 9, 3, 3, 2, 1, 1, 1, 0.5, 3, 0, 1},
      {"3x3 stride 2 8 and 24 wide", 0, 8, 8, 8, 24, 3, 3, 2, 1, 1, 1, 0.5, 3, 0, 1},
      {"3x3 stride 2 pad 0 16 wide", 0, 4, 8, 10, 16, 3, 3, 2, 0, 1, 1, 0.5, 3, 0, 1},
      {"3x3 stride 2 12x10 no pad, batch 17", 0, 8, 8, 12, 10, 3, 3, 2, 0, 1, 1, 0.5, 17, 0, 1},
      {"3x3 stride 2 dilation 2", 0, 8, 8, 12, 12, 3, 3, 2, 2, 2, 1, 0.5, 3, 0, 1},
      {"1x1", 0, 16, 24, 8, 8, 1, 1, 1, 0, 1, 1, 0.5, 3, 0, 1},
      {"1x1 stride 2", 0, 16, 32, 16, 16, 1, 1, 2, 0, 1, 1, 0.5, 3, 0, 1},
      {"5x5 pad 2", 0, 4, 8, 12, 12, 5, 5, 1, 2, 1, 1, 0.5, 3, 0, 1},
      {"4x4 s2 p1 (cifar_model)", 0, 8, 16, 32, 32, 4, 4, 2, 1, 1, 1, 0.9, 3, 0, 1},
      {"7x7 map", 0, 8, 8, 7, 7, 3, 3, 1, 1, 1, 1, 0.5, 3, 0, 0},
      {"3x3 no pad 12x10 (transposed pad 2)", 0, 8, 8, 12, 10, 3, 3, 1, 0, 1, 1, 0.5, 3, 0, 1},
      {"13x11 map", 0, 8, 8, 13, 11, 3, 3, 1, 1, 1, 1, 0.5, 3, 0, 1},
      {"13x11 5x5 s2 no pad", 0, 4, 6, 13, 11, 5, 5, 2, 0, 1, 1, 0.3, 3, 0, 0},
      {"4x4 map (resnet layer4)", 0, 16, 16, 4, 4, 3, 3, 1, 1, 1, 1, 0.9, 3, 0, 1},
      {"2x2 map (vgg16_bn's last convs), batch 17", 0, 32, 16, 2, 2, 3, 3, 1, 1, 1, 1, 0.9, 17, 0, 1},
      {"large map 33x33", 0, 4, 8, 33, 33, 3, 3, 1, 1, 1, 1, 0.5, 1, 0, 0},
      {"dilation 2", 0, 8, 8, 12, 12, 3, 3, 1, 2, 2, 1, 0.5, 3, 0, 1},
      {"dilation 2 8x8", 0, 8, 8, 8, 8, 3, 3, 1, 2, 2, 1, 0.5, 3, 0, 1},
      {"3x3 no pad 10x10 -> 8x8", 0, 8, 8, 10, 10, 3, 3, 1, 0, 1, 1, 0.5, 3, 0, 1},
      {"5x5 pad 2 8x16", 0, 6, 8, 8, 16, 5, 5, 1, 2, 1, 1, 0.5, 3, 0, 1},
      {"groups 2", 0, 8, 12, 8, 8, 3, 3, 1, 1, 1, 2, 0.5, 3, 0, 1},
      {"depthwise", 0, 8, 8, 8, 8, 3, 3, 1, 1, 1, 8, 0.3, 3, 0, 0},
      {"batch 1", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 1, 0, 1},
      {"batch 32", 0, 16, 16, 8, 8, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 1},
      {"first layer 3->16", 0, 3, 16, 32, 32, 3, 3, 1, 1, 1, 1, 0.5, 3, 0, 0},
      {"linear 37->10", 1, 37, 10, 1, 1, 1, 1, 1, 0, 1, 1, 0.5, 3, 0, 1},
      {"linear 512->10 s=0.9", 1, 512, 10, 1, 1, 1, 1, 1, 0, 1, 1, 0.9, 1, 0, 0},
      {"linear batch 32", 1, 64, 33, 1, 1, 1, 1, 1, 0, 1, 1, 0.5, 32, 0, 0},
      {"linear batch 17", 1, 20, 17, 1, 1, 1, 1, 1, 0, 1, 1, 0.5, 17, 0, 0},
      {"linear s=0", 1, 20, 7, 1, 1, 1, 1, 1, 0, 1, 1, 0.0, 3, 1, 0},
      {"linear zero out+in", 1, 24, 9, 1, 1, 1, 1, 1, 0, 1, 1, 0.2, 3, 2, 0},
      {"linear empty", 1, 24, 9, 1, 1, 1, 1, 1, 0, 1, 1, 1.0, 3, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(&cases[i], cache);
  /* channel counts 1..17: every remainder of the vector width, in and out */
  for (int ch = 1; ch <= 17; ch++) {
    char name[64];
    snprintf(name, sizeof name, "channels %d->%d", ch, 18 - ch);
    kcase c = {name, 0, ch, 18 - ch, 6, 5, 3, 3, 1, 1, 1, 1, 0.5, 3, 0, heavy || ch == 17};
    run_case(&c, cache);
    snprintf(name, sizeof name, "linear %d->%d", ch, 18 - ch);
    kcase cl = {name, 1, ch, 18 - ch, 1, 1, 1, 1, 1, 0, 1, 1, 0.5, ch % 2 ? 3 : 16, 0, 0};
    run_case(&cl, cache);
  }
  if (heavy) {
    kcase big = {"resnet 128x16 s=0.9 batch 32", 0, 128, 128, 16, 16, 3, 3, 1, 1, 1, 1, 0.9, 32, 0, 1};
    run_case(&big, cache);
  }
  check_plan_vec_batch();
  check_split_auto(cache);
  check_source(cache);
  printf("%d kernel/variant cases run, %d with a summed input gradient\n", g_cases_run, g_acc_cases);
  CHECK_MSG(g_acc_cases > 0, "no kernel summed its input gradient into dx");
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache);
  if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", cache);
  return check_done("test_kernels");
}
