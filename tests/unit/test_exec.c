/* test_exec.c -- the fast executor (runtime/exec.c: compiled and dense engines, the ops of
 * runtime/ops.c, the oneDNN kernels of runtime/dense.c) against the reference engine
 * (runtime/ref/ref.c), the naive oracle.
 *
 * Graphs built with the construction API cover every op: convs (bias or not, stride 2,
 * padding, dilation, groups, 1x1), batchnorm on maps and on vectors (fused with a ReLU and
 * not), ReLU in place and not, residual adds (fused with a ReLU), max pool with padding,
 * average pool with padding, global average pool, per-channel scale, flatten + linear, input
 * normalisation, and a fully pruned layer; plus a zoo ResNet-20 (at 8x8).  Masks are random at
 * sparsity 0, 0.5, 0.9 and 0.99 over every conv/linear weight.  Engines: dense (oneDNN
 * everywhere), compiled with its own plan, and compiled forced to the reference, sparse-table
 * and sparse-unrolled kernels (the last at s >= 0.9 only; TICKET_HEAVY=1 runs every
 * combination, the zoo model included).
 *
 * For each engine and model: logits in eval and train mode, the running statistics after a
 * train-mode forward, the input gradient, every parameter gradient (on the mask; off it the
 * engine must give exactly 0), backward without dx, a batch smaller than max_batch (oneDNN
 * runs it in chunks), determinism, sync after a weight change and after a mask change, and
 * clear errors for a bad batch.  Tolerances (relative to the largest reference magnitude):
 * logits 1e-5 for generated sparse and reference kernels, 1e-4 when oneDNN runs a layer;
 * gradients and statistics 1e-4 (a parameter gradient relative to the largest gradient
 * entry of its layer).
 *
 * Eval-mode batchnorm folding (exec.c): the runs above fold wherever a batchnorm follows a
 * conv/linear (their backward asks for parameter gradients, so it goes the re-run way).
 * test_fold() runs the folded paths themselves on every engine: eval forward + input gradient
 * without parameter gradients (the folded backward: conv-bn-relu, conv-bn + add + relu,
 * linear-bn1d-relu, a fully pruned layer) at batches 4, 3 and 1 (whole images per thread and
 * rows split between threads) and, on a 9x9 network, at batch 32 where the batch-vectorised
 * kernels run; eval -> train -> eval (the folds follow the running statistics); weights changed
 * + sync(0); masks changed + sync(1); parameter gradients after a folded eval forward and after
 * a folded input gradient; and each engine again with TICKET_FOLD_BN=0, which must give the
 * same results.  The number of folded batchnorms is checked, so a fold that silently does not
 * happen fails.
 */
#include "check.h"

#include "compiler/zoo.h"
#include "runtime/dense.h"
#include "runtime/exec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAXB 4

static int g_max_batch = MAXB; /* of the engines the makers create */

/* ---- building graphs ---------------------------------------------------------------------------- */

typedef struct {
  tk_model *m;
  tk_rng rng;
} builder;

static float uni(builder *b, float lo, float hi) { return lo + (hi - lo) * (float)tk_rng_uniform(&b->rng); }

static int tensor(builder *b, const char *layer, const char *what, int ndim, int64_t d0, int64_t d1, int64_t d2,
                  int64_t d3) {
  char name[128];
  snprintf(name, sizeof name, "%s.%s", layer, what);
  int64_t shape[4] = {d0, d1, d2, d3};
  int t = tk_model_add_tensor(b->m, name, ndim, shape);
  if (t < 0) {
    fprintf(stderr, "test_exec: %s\n", tk_last_error());
    exit(1);
  }
  return t;
}

static int add_layer(builder *b, const tk_layer *l) {
  int i = tk_model_add_layer(b->m, l);
  if (i < 0) {
    fprintf(stderr, "test_exec: %s\n", tk_last_error());
    exit(1);
  }
  return i + 1; /* the value it produces */
}

static void fill_normal(builder *b, int t, double sd) {
  tk_tensor *tt = &b->m->tensors[t];
  for (int64_t i = 0; i < tt->numel; i++) tt->data[i] = (float)(sd * tk_rng_normal(&b->rng));
}

static void fill_uniform(builder *b, int t, float lo, float hi) {
  tk_tensor *tt = &b->m->tensors[t];
  for (int64_t i = 0; i < tt->numel; i++) tt->data[i] = uni(b, lo, hi);
}

static int conv(builder *b, const char *name, int in, int cin, int cout, int k, int s, int p, int d, int g, int bias) {
  tk_layer l = tk_layer_default(TK_OP_CONV2D, name, in);
  l.kh = l.kw = k, l.sh = l.sw = s, l.ph = l.pw = p, l.dh = l.dw = d, l.groups = g;
  l.weight = tensor(b, name, "weight", 4, cout, cin / g, k, k);
  b->m->tensors[l.weight].prunable = true;
  fill_normal(b, l.weight, sqrt(2.0 / (cin / g * k * k)));
  if (bias) {
    l.bias = tensor(b, name, "bias", 1, cout, 1, 1, 1);
    fill_uniform(b, l.bias, -0.1f, 0.1f);
  }
  return add_layer(b, &l);
}

static int linear(builder *b, const char *name, int in, int fin, int fout, int bias) {
  tk_layer l = tk_layer_default(TK_OP_LINEAR, name, in);
  l.weight = tensor(b, name, "weight", 2, fout, fin, 1, 1);
  b->m->tensors[l.weight].prunable = true;
  fill_normal(b, l.weight, sqrt(1.0 / fin));
  if (bias) {
    l.bias = tensor(b, name, "bias", 1, fout, 1, 1, 1);
    fill_uniform(b, l.bias, -0.1f, 0.1f);
  }
  return add_layer(b, &l);
}

static int bn(builder *b, const char *name, int in, int c) {
  tk_layer l = tk_layer_default(TK_OP_BATCHNORM, name, in);
  l.weight = tensor(b, name, "weight", 1, c, 1, 1, 1);
  l.bias = tensor(b, name, "bias", 1, c, 1, 1, 1);
  l.mean = tensor(b, name, "running_mean", 1, c, 1, 1, 1);
  l.var = tensor(b, name, "running_var", 1, c, 1, 1, 1);
  l.momentum = 0.1f + 0.1f * (float)(c % 3); /* not only PyTorch's default */
  fill_uniform(b, l.weight, 0.5f, 1.5f);
  fill_uniform(b, l.bias, -0.2f, 0.2f);
  fill_uniform(b, l.mean, -0.2f, 0.2f);
  fill_uniform(b, l.var, 0.5f, 1.5f);
  b->m->tensors[l.mean].trainable = b->m->tensors[l.var].trainable = false;
  return add_layer(b, &l);
}

static int op1(builder *b, tk_op op, const char *name, int in) {
  tk_layer l = tk_layer_default(op, name, in);
  return add_layer(b, &l);
}

static int pool(builder *b, tk_op op, const char *name, int in, int k, int s, int p) {
  tk_layer l = tk_layer_default(op, name, in);
  l.kh = l.kw = k, l.sh = l.sw = s, l.ph = l.pw = p;
  return add_layer(b, &l);
}

static int add2(builder *b, const char *name, int x, int y) {
  tk_layer l = tk_layer_default(TK_OP_ADD, name, x);
  l.n_inputs = 2;
  l.inputs[1] = y;
  return add_layer(b, &l);
}

static int scale(builder *b, const char *name, int in, int c) {
  tk_layer l = tk_layer_default(TK_OP_SCALE, name, in);
  l.weight = tensor(b, name, "weight", 3, c, 1, 1, 1);
  fill_uniform(b, l.weight, 0.5f, 1.5f);
  return add_layer(b, &l);
}

static void finish(builder *b, const char *what) {
  if (tk_model_infer(b->m) != TK_OK) {
    fprintf(stderr, "test_exec: %s: %s\n", what, tk_last_error());
    exit(1);
  }
}

/* Everything in one residual graph, input normalised, 3x10x10, 5 classes. */
static tk_model *model_mixed(uint64_t seed) {
  builder b = {tk_model_new("mixed", 5, 3, 10, 10), {{0}}};
  tk_rng_seed(&b.rng, seed);
  b.m->mean = malloc(3 * sizeof(float));
  b.m->std = malloc(3 * sizeof(float));
  for (int c = 0; c < 3; c++) b.m->mean[c] = 0.4f + 0.05f * c, b.m->std[c] = 0.2f + 0.03f * c;
  int v = conv(&b, "stem", 0, 3, 8, 3, 1, 1, 1, 1, 1);        /* 8x10x10 */
  v = bn(&b, "stem_bn", v, 8);
  int a = op1(&b, TK_OP_RELU, "stem_relu", v);                 /* fused into the bn */
  v = conv(&b, "b1.conv", a, 8, 8, 3, 1, 1, 1, 1, 0);
  v = bn(&b, "b1.bn", v, 8);
  v = add2(&b, "b1.add", v, a);
  v = op1(&b, TK_OP_RELU, "b1.relu", v);                       /* fused into the add */
  int p = pool(&b, TK_OP_MAXPOOL, "pool", v, 3, 2, 1);         /* 8x5x5, padded */
  v = conv(&b, "b2.dil", p, 8, 16, 3, 1, 2, 2, 1, 0);          /* dilation 2: 16x5x5 */
  v = scale(&b, "b2.scale", v, 16);
  int s = conv(&b, "b2.short", p, 8, 16, 1, 1, 0, 1, 1, 1);    /* 1x1 shortcut */
  v = add2(&b, "b2.add", v, s);
  v = op1(&b, TK_OP_RELU, "b2.relu", v);
  v = conv(&b, "b3.group", v, 16, 16, 3, 2, 1, 1, 4, 1);       /* grouped, stride 2: 16x3x3 */
  v = conv(&b, "b3.pruned", v, 16, 16, 3, 1, 1, 1, 1, 1);      /* fully pruned below */
  int q = pool(&b, TK_OP_AVGPOOL, "avg", v, 2, 1, 1);           /* 16x4x4, padded */
  int r = op1(&b, TK_OP_RELU, "relu_copy", q);                 /* not in place: q has 2 readers */
  int g1 = op1(&b, TK_OP_GLOBALAVGPOOL, "gap1", r);
  int g2 = op1(&b, TK_OP_GLOBALAVGPOOL, "gap2", q);
  v = add2(&b, "gap_add", g1, g2);
  v = op1(&b, TK_OP_FLATTEN, "flat", v);
  v = linear(&b, "fc1", v, 16, 12, 1);
  v = bn(&b, "fc1_bn", v, 12);                                 /* BatchNorm1d */
  v = op1(&b, TK_OP_RELU, "fc1_relu", v);
  v = linear(&b, "fc2", v, 12, 5, 1);
  finish(&b, "mixed");
  return b.m;
}

/* A small LeNet-like chain on a raw 1x12x12 input: flatten of a map into a linear. */
static tk_model *model_chain(uint64_t seed) {
  builder b = {tk_model_new("chain", 4, 1, 12, 12), {{0}}};
  tk_rng_seed(&b.rng, seed);
  int v = conv(&b, "c1", 0, 1, 6, 5, 1, 0, 1, 1, 1);          /* 6x8x8 */
  v = op1(&b, TK_OP_RELU, "r1", v);                            /* in place, not fused */
  v = pool(&b, TK_OP_MAXPOOL, "p1", v, 2, 2, 0);               /* 6x4x4 */
  v = conv(&b, "c2", v, 6, 8, 3, 1, 1, 1, 2, 0);               /* groups 2: 8x4x4 */
  v = op1(&b, TK_OP_RELU, "r2", v);
  v = op1(&b, TK_OP_FLATTEN, "flat", v);                       /* 128 */
  v = linear(&b, "fc1", v, 128, 10, 1);
  v = op1(&b, TK_OP_RELU, "r3", v);
  v = linear(&b, "fc2", v, 10, 4, 0);
  finish(&b, "chain");
  return b.m;
}

/* Random masks at sparsity s over every prunable tensor; `all_zero` (a tensor name or NULL)
 * gets an empty mask. */
static void mask_model(tk_model *m, double s, uint64_t seed, const char *all_zero) {
  tk_rng rng;
  tk_rng_seed(&rng, seed);
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    uint8_t *mask = malloc((size_t)tt->numel);
    int zero = all_zero && !strcmp(tt->name, all_zero);
    for (int64_t i = 0; i < tt->numel; i++) mask[i] = !zero && tk_rng_uniform(&rng) >= s;
    tk_tensor_set_mask(tt, mask);
    free(mask);
  }
}

/* ---- comparing ---------------------------------------------------------------------------------- */

static double max_abs(const float *a, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++)
    if (fabs(a[i]) > m) m = fabs(a[i]);
  return m;
}

/* |got - want| <= tol * (|want| + max|want|), reporting the worst element. */
static bool close_rel(const char *what, const float *got, const float *want, size_t n, double tol) {
  return check_close(what, got, want, n, tol, tol * max_abs(want, n) + 1e-30);
}

typedef struct {
  const char *name;
  tk_engine *e;
  tk_model *m;
  double tol_logits;
} engine_case;

static float *fvec(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  if (!p) {
    fprintf(stderr, "test_exec: out of memory\n");
    exit(1);
  }
  return p;
}

/* The scale of a layer's gradients: the largest reference entry over all its tensors.  A
 * bias before a train-mode batchnorm has an exact gradient of 0 (the batch mean cancels it),
 * so its rounding noise is measured against the layer's weight gradient. */
static double layer_grad_scale(const tk_model *m, tk_engine *ref, int t) {
  double s = 0;
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    int ts[4] = {l->weight, l->bias, l->mean, l->var};
    int uses = 0;
    for (int k = 0; k < 4; k++) uses |= ts[k] == t;
    if (!uses) continue;
    for (int k = 0; k < 4; k++)
      if (ts[k] >= 0 && ref->grads[ts[k]]) {
        double a = max_abs(ref->grads[ts[k]], (size_t)m->tensors[ts[k]].numel);
        if (a > s) s = a;
      }
  }
  return s;
}

/* Parameter gradients: equal on the mask, exactly zero off it. */
static void compare_param_grads(const char *ctx, tk_engine *eng, tk_engine *ref) {
  const tk_model *m = eng->m;
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (!tt->trainable) continue;
    char what[256];
    snprintf(what, sizeof what, "%s: grad %s", ctx, tt->name);
    if (!eng->grads[t] || !ref->grads[t]) {
      CHECK_MSG(eng->grads[t] && ref->grads[t], "%s missing", what);
      continue;
    }
    float *g = fvec((size_t)tt->numel), *w = fvec((size_t)tt->numel);
    int off_mask_nonzero = 0;
    for (int64_t i = 0; i < tt->numel; i++) {
      int kept = !tt->mask || tt->mask[i];
      g[i] = kept ? eng->grads[t][i] : 0.0f;
      w[i] = kept ? ref->grads[t][i] : 0.0f;
      if (!kept && eng->grads[t][i] != 0.0f) off_mask_nonzero++;
    }
    check_close(what, g, w, (size_t)tt->numel, 1e-4, 1e-4 * layer_grad_scale(ref->m, ref, t) + 1e-30);
    CHECK_MSG(off_mask_nonzero == 0, "%s: %d entries off the mask are not 0", what, off_mask_nonzero);
    free(g);
    free(w);
  }
}

static void random_input(const tk_model *m, tk_rng *rng, float *x, int n) {
  size_t k = (size_t)n * m->in_c * m->in_h * m->in_w;
  for (size_t i = 0; i < k; i++) x[i] = m->lo + (m->hi - m->lo) * (float)tk_rng_uniform(rng);
}

/* One forward (and backward) on both engines, compared. */
static void run_pair(const char *ctx, engine_case *c, tk_engine *ref, const float *x, const float *dl, int n,
                     tk_bn_mode bn, int want_dx) {
  const tk_model *m = ref->m;
  size_t nl = (size_t)n * m->classes, nx = (size_t)n * m->in_c * m->in_h * m->in_w;
  float *lg = fvec(nl), *lw = fvec(nl), *dxg = fvec(nx), *dxw = fvec(nx);
  char what[256];
  tk_status s1 = tk_engine_forward(c->e, x, n, bn, lg), s2 = tk_engine_forward(ref, x, n, bn, lw);
  CHECK_MSG(s1 == TK_OK && s2 == TK_OK, "%s: forward failed: %s", ctx, tk_last_error());
  if (s1 != TK_OK || s2 != TK_OK) goto out;
  snprintf(what, sizeof what, "%s: logits", ctx);
  close_rel(what, lg, lw, nl, c->tol_logits);
  if (bn == TK_BN_TRAIN) /* running statistics were updated in each engine's own model */
    for (int i = 0; i < m->n_layers; i++) {
      const tk_layer *l = &m->layers[i];
      if (l->op != TK_OP_BATCHNORM) continue;
      snprintf(what, sizeof what, "%s: %s", ctx, m->tensors[l->mean].name);
      close_rel(what, c->m->tensors[l->mean].data, m->tensors[l->mean].data, (size_t)l->in.c, 1e-4);
      snprintf(what, sizeof what, "%s: %s", ctx, m->tensors[l->var].name);
      close_rel(what, c->m->tensors[l->var].data, m->tensors[l->var].data, (size_t)l->in.c, 1e-4);
    }
  s1 = tk_engine_backward(c->e, dl, want_dx ? dxg : NULL, 1);
  s2 = tk_engine_backward(ref, dl, want_dx ? dxw : NULL, 1);
  CHECK_MSG(s1 == TK_OK && s2 == TK_OK, "%s: backward failed: %s", ctx, tk_last_error());
  if (s1 != TK_OK || s2 != TK_OK) goto out;
  if (want_dx) {
    snprintf(what, sizeof what, "%s: dx", ctx);
    close_rel(what, dxg, dxw, nx, 1e-4);
  }
  compare_param_grads(ctx, c->e, ref);
out:
  free(lg);
  free(lw);
  free(dxg);
  free(dxw);
}

/* ---- one engine on one masked model ------------------------------------------------------------- */

static int g_cases;

static void test_engine(const char *model_name, const tk_model *base, double sparsity, const char *ename,
                        tk_status (*make)(tk_model *, tk_engine **, const void *), const void *arg,
                        tk_variant expect, int light) {
  char ctx[256];
  tk_model *mref = tk_model_clone(base), *meng = tk_model_clone(base);
  tk_engine *ref = NULL, *e = NULL;
  CHECK(mref && meng);
  if (tk_ref_engine_create(mref, MAXB, &ref) != TK_OK) {
    CHECK_MSG(0, "reference engine: %s", tk_last_error());
    goto out;
  }
  tk_status st = make(meng, &e, arg);
  if (st != TK_OK) {
    CHECK_MSG(0, "%s on %s at s=%.2f: create failed: %s", ename, model_name, sparsity, tk_last_error());
    goto out;
  }
  /* every layer on the forced variant (linear layers run unrolled as table kernels; fully
   * pruned layers are empty); a build without the JIT cannot give generated ones: skipped */
  int dense_layers = 0, wrong = 0;
  for (int i = 0; i < meng->n_layers; i++) {
    tk_variant v = tk_exec_layer_variant(e, i), want = expect;
    if (v == TK_VARIANT_NONE) continue;
    dense_layers += v == TK_VARIANT_DENSE;
    if (want == TK_VARIANT_SPARSE_UNROLLED && meng->layers[i].op == TK_OP_LINEAR) want = TK_VARIANT_SPARSE_TABLE;
    if (want != TK_VARIANT_NONE && v != want && v != TK_VARIANT_EMPTY) wrong++;
  }
  if (wrong) {
#ifdef TICKET_HAVE_JIT
    CHECK_MSG(0, "%s on %s: %d layer(s) not on the forced variant (%s)", ename, model_name, wrong, tk_exec_how(e));
#else
    printf("note: %s on %s: no generated kernels in this build; skipped\n", ename, model_name);
#endif
    goto out;
  }
  engine_case c = {ename, e, meng, dense_layers ? 1e-4 : 1e-5};
  g_cases++;
  tk_rng rng;
  tk_rng_seed(&rng, 1234);
  const int nmax = MAXB, ncls = base->classes;
  size_t nx = (size_t)nmax * base->in_c * base->in_h * base->in_w;
  float *x = fvec(nx), *dl = fvec((size_t)nmax * ncls), *l1 = fvec((size_t)nmax * ncls), *l2 = fvec((size_t)nmax * ncls);
  random_input(base, &rng, x, nmax);
  for (int i = 0; i < nmax * ncls; i++) dl[i] = (float)tk_rng_normal(&rng) / nmax;

  for (int n = nmax; n >= (light ? nmax : 3); n--) { /* 3 < max_batch: oneDNN runs chunks of 2 and 1 */
    snprintf(ctx, sizeof ctx, "%s/%s s=%.2f n=%d eval", ename, model_name, sparsity, n);
    run_pair(ctx, &c, ref, x, dl, n, TK_BN_EVAL, 1);
    snprintf(ctx, sizeof ctx, "%s/%s s=%.2f n=%d train", ename, model_name, sparsity, n);
    run_pair(ctx, &c, ref, x, dl, n, TK_BN_TRAIN, 1);
  }
  snprintf(ctx, sizeof ctx, "%s/%s s=%.2f no-dx", ename, model_name, sparsity);
  run_pair(ctx, &c, ref, x, dl, nmax, TK_BN_EVAL, 0);

  /* determinism: the same forward twice gives the same bits */
  CHECK(tk_engine_forward(e, x, nmax, TK_BN_EVAL, l1) == TK_OK);
  CHECK(tk_engine_forward(e, x, nmax, TK_BN_EVAL, l2) == TK_OK);
  CHECK_MSG(!memcmp(l1, l2, (size_t)nmax * ncls * sizeof(float)), "%s/%s: two forwards differ", ename, model_name);

  /* bad batches: a clear error, nothing run */
  CHECK(tk_engine_forward(e, x, nmax + 1, TK_BN_EVAL, l1) == TK_ERR_ARG);
  CHECK(tk_engine_forward(e, x, 0, TK_BN_EVAL, l1) == TK_ERR_ARG);

  /* weights change (same mask): sync(0) repacks */
  for (int t = 0; t < meng->n_tensors; t++) {
    tk_tensor *a = &meng->tensors[t], *b = &mref->tensors[t];
    if (!a->trainable) continue;
    for (int64_t i = 0; i < a->numel; i++) {
      float v = a->data[i] * 1.25f + 0.01f * (float)((i % 7) - 3);
      if (a->mask && !a->mask[i]) v = 0.0f;
      a->data[i] = b->data[i] = v;
    }
  }
  CHECK(tk_engine_sync(e, 0) == TK_OK && tk_engine_sync(ref, 0) == TK_OK);
  snprintf(ctx, sizeof ctx, "%s/%s s=%.2f after sync(0)", ename, model_name, sparsity);
  run_pair(ctx, &c, ref, x, dl, nmax, TK_BN_EVAL, 1);

  /* masks change: sync(1) plans and builds again */
  double s2 = sparsity >= 0.9 ? 0.95 : sparsity > 0.5 ? 0.5 : 0.8;
  mask_model(meng, s2, 99, NULL);
  mask_model(mref, s2, 99, NULL);
  st = tk_engine_sync(e, 1);
  CHECK_MSG(st == TK_OK, "%s/%s: sync(1): %s", ename, model_name, tk_last_error());
  CHECK(tk_engine_sync(ref, 1) == TK_OK);
  if (st == TK_OK) {
    int dl2 = 0;
    for (int i = 0; i < meng->n_layers; i++) dl2 += tk_exec_layer_variant(e, i) == TK_VARIANT_DENSE;
    c.tol_logits = dl2 ? 1e-4 : 1e-5;
    snprintf(ctx, sizeof ctx, "%s/%s s=%.2f after sync(1)", ename, model_name, sparsity);
    run_pair(ctx, &c, ref, x, dl, nmax, TK_BN_TRAIN, 1);
  }
  free(x);
  free(dl);
  free(l1);
  free(l2);
out:
  tk_engine_free(e);
  tk_engine_free(ref);
  tk_model_free(meng);
  tk_model_free(mref);
}

/* ---- engine makers ------------------------------------------------------------------------------ */

static char g_cache[256];

static tk_status make_dense(tk_model *m, tk_engine **e, const void *arg) {
  (void)arg;
  return tk_dense_engine_create(m, g_max_batch, e);
}

static tk_status make_compiled(tk_model *m, tk_engine **e, const void *arg) {
  const int *force = arg;
  /* a generated variant must not quietly fall back to the reference kernel */
  if (force && (*force == TK_VARIANT_SPARSE_TABLE || *force == TK_VARIANT_SPARSE_UNROLLED))
    setenv("TICKET_NO_FALLBACK", "1", 1);
  else
    unsetenv("TICKET_NO_FALLBACK");
  tk_compile_opts o;
  memset(&o, 0, sizeof o);
  o.force = force ? *force : -1;
  o.training = 1;
  o.cache_dir = g_cache;
  return tk_compiled_engine_create(m, g_max_batch, &o, e);
}

static tk_status make_default(tk_model *m, tk_engine **e, const void *arg) {
  (void)arg;
  unsetenv("TICKET_NO_FALLBACK");
  return tk_engine_create(m, TK_ENGINE_COMPILED, g_max_batch, e); /* opts NULL: the engine's defaults */
}

/* ---- eval-mode batchnorm folding ----------------------------------------------------------------- */

/* conv-bn-relu, conv(bias)-bn + add + relu, stride 2 to 12 channels (not a multiple of 16:
 * oneDNN's blocked layouts have padding channels) on an odd map, a 1x1 (fully pruned in some
 * cases), global pool, linear-bn1d-relu, linear.  3x9x9, 5 classes. */
static tk_model *model_foldnet(uint64_t seed) {
  builder b = {tk_model_new("foldnet", 5, 3, 9, 9), {{0}}};
  tk_rng_seed(&b.rng, seed);
  int v = conv(&b, "c1", 0, 3, 16, 3, 1, 1, 1, 1, 0);       /* 16x9x9 */
  v = bn(&b, "c1_bn", v, 16);
  int a = op1(&b, TK_OP_RELU, "c1_relu", v);                 /* fused into c1_bn */
  v = conv(&b, "c2", a, 16, 16, 3, 1, 1, 1, 1, 1);           /* with a bias */
  v = bn(&b, "c2_bn", v, 16);                                 /* folded without a ReLU */
  v = add2(&b, "add", v, a);
  v = op1(&b, TK_OP_RELU, "add_relu", v);
  v = conv(&b, "c3", v, 16, 12, 3, 2, 1, 1, 1, 0);           /* 12x5x5 */
  v = bn(&b, "c3_bn", v, 12);
  v = op1(&b, TK_OP_RELU, "c3_relu", v);
  v = conv(&b, "c4", v, 12, 20, 1, 1, 0, 1, 1, 0);           /* 1x1: 20x5x5 */
  v = bn(&b, "c4_bn", v, 20);
  v = op1(&b, TK_OP_RELU, "c4_relu", v);
  v = op1(&b, TK_OP_GLOBALAVGPOOL, "gap", v);
  v = op1(&b, TK_OP_FLATTEN, "flat", v);
  v = linear(&b, "fc1", v, 20, 10, 0);
  v = bn(&b, "fc1_bn", v, 10);                                /* BatchNorm1d, fused ReLU */
  v = op1(&b, TK_OP_RELU, "fc1_relu", v);
  v = linear(&b, "fc2", v, 10, 5, 1);
  finish(&b, "foldnet");
  return b.m;
}

/* batchnorms right after a conv/linear whose output nothing else reads: the foldable ones */
static int foldable_bns(const tk_model *m) {
  int c = 0;
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    int in = l->inputs[0], readers = 0;
    if (l->op != TK_OP_BATCHNORM || in < 1) continue;
    for (int j = 0; j < m->n_layers; j++)
      for (int k = 0; k < m->layers[j].n_inputs; k++) readers += m->layers[j].inputs[k] == in;
    c += readers == 1 && (m->layers[in - 1].op == TK_OP_CONV2D || m->layers[in - 1].op == TK_OP_LINEAR);
  }
  return c;
}

/* eval forward + input gradient without parameter gradients on e (and e0 when given) and
 * the reference: logits and dx compared */
static void run_eval_dx(const char *ctx, tk_engine *e, tk_engine *e0, tk_engine *ref, const float *x, const float *dl,
                        int n, double tol) {
  const tk_model *m = ref->m;
  size_t nl = (size_t)n * m->classes, nx = (size_t)n * m->in_c * m->in_h * m->in_w;
  float *lg = fvec(nl), *lw = fvec(nl), *l0 = fvec(nl), *dxg = fvec(nx), *dxw = fvec(nx), *dx0 = fvec(nx);
  char what[256];
  tk_status s1 = tk_engine_forward(e, x, n, TK_BN_EVAL, lg), s2 = tk_engine_forward(ref, x, n, TK_BN_EVAL, lw);
  tk_status s3 = e0 ? tk_engine_forward(e0, x, n, TK_BN_EVAL, l0) : TK_OK;
  CHECK_MSG(s1 == TK_OK && s2 == TK_OK && s3 == TK_OK, "%s: forward failed: %s", ctx, tk_last_error());
  if (s1 || s2 || s3) goto out;
  snprintf(what, sizeof what, "%s: logits", ctx);
  close_rel(what, lg, lw, nl, tol);
  s1 = tk_engine_backward(e, dl, dxg, 0);
  s2 = tk_engine_backward(ref, dl, dxw, 0);
  s3 = e0 ? tk_engine_backward(e0, dl, dx0, 0) : TK_OK;
  CHECK_MSG(s1 == TK_OK && s2 == TK_OK && s3 == TK_OK, "%s: backward failed: %s", ctx, tk_last_error());
  if (s1 || s2 || s3) goto out;
  snprintf(what, sizeof what, "%s: dx", ctx);
  close_rel(what, dxg, dxw, nx, 1e-4);
  if (e0) {
    snprintf(what, sizeof what, "%s: logits, TICKET_FOLD_BN=0 vs folded", ctx);
    close_rel(what, l0, lg, nl, tol);
    snprintf(what, sizeof what, "%s: dx, TICKET_FOLD_BN=0 vs folded", ctx);
    close_rel(what, dx0, dxg, nx, 1e-4);
  }
out:
  free(lg), free(lw), free(l0), free(dxg), free(dxw), free(dx0);
}

static int g_last_res_fused; /* residual adds the last test_fold's engine fused into its stores */

/* One engine maker on one masked model, folding on (and off, TICKET_FOLD_BN=0): e and e0 must
 * agree, and with the reference; on the compiled engine the folds also carry the residual adds
 * (exec.c: fused into the store of the layer computing their later input) and the summed input
 * gradients, which e0 (no folds) computes as passes of their own. */
static void test_fold(const char *model_name, const tk_model *base, double sparsity, const char *ename,
                      tk_status (*make)(tk_model *, tk_engine **, const void *), const void *arg, int want_folds,
                      int nmax) {
  char ctx[256];
  g_max_batch = nmax;
  tk_model *mref = tk_model_clone(base), *meng = tk_model_clone(base), *meng0 = tk_model_clone(base);
  tk_engine *ref = NULL, *e = NULL, *e0 = NULL;
  CHECK(mref && meng && meng0);
  if (tk_ref_engine_create(mref, nmax, &ref) != TK_OK) {
    CHECK_MSG(0, "reference engine: %s", tk_last_error());
    goto out;
  }
  tk_status st = make(meng, &e, arg);
  if (st == TK_OK) {
    setenv("TICKET_FOLD_BN", "0", 1);
    st = make(meng0, &e0, arg);
    unsetenv("TICKET_FOLD_BN");
  }
  if (st != TK_OK) {
    CHECK_MSG(0, "fold: %s on %s at s=%.2f: create failed: %s", ename, model_name, sparsity, tk_last_error());
    goto out;
  }
  CHECK_MSG(tk_exec_bn_folds(e) == want_folds, "fold: %s on %s s=%.2f: %d batchnorm(s) folded, expected %d (%s)",
            ename, model_name, sparsity, tk_exec_bn_folds(e), want_folds, tk_exec_how(e));
  CHECK_MSG(tk_exec_bn_folds(e0) == 0, "fold: %s: TICKET_FOLD_BN=0 still folds %d", ename, tk_exec_bn_folds(e0));
  CHECK_MSG(tk_exec_res_fused(e0) == 0, "fold: %s: TICKET_FOLD_BN=0 still fuses %d add(s)", ename, tk_exec_res_fused(e0));
  g_last_res_fused = tk_exec_res_fused(e);
  int dense_layers = 0;
  for (int i = 0; i < meng->n_layers; i++) dense_layers += tk_exec_layer_variant(e, i) == TK_VARIANT_DENSE;
  const double tol = dense_layers ? 1e-4 : 1e-5;
  g_cases++;
  tk_rng rng;
  tk_rng_seed(&rng, 4321);
  const int ncls = base->classes;
  size_t nx = (size_t)nmax * base->in_c * base->in_h * base->in_w, nl = (size_t)nmax * ncls;
  float *x = fvec(nx), *dl = fvec(nl), *lg = fvec(nl);
  random_input(base, &rng, x, nmax);
  for (size_t i = 0; i < nl; i++) dl[i] = (float)tk_rng_normal(&rng) / nmax;
  engine_case c = {ename, e, meng, tol};

  const int ns[3] = {nmax, nmax - 1, 1};
  for (int k = 0; k < 3; k++) {
    snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f n=%d eval dx", ename, model_name, sparsity, ns[k]);
    run_eval_dx(ctx, e, e0, ref, x, dl, ns[k], tol);
  }
  /* eval -> train -> eval: the train forward moves the running statistics (in each engine's own
   * model), so the second eval forward must use new folds */
  for (int k = 0; k < 2; k++) {
    CHECK(tk_engine_forward(e, x, nmax, TK_BN_TRAIN, lg) == TK_OK);
    CHECK(tk_engine_forward(e0, x, nmax, TK_BN_TRAIN, lg) == TK_OK);
    CHECK(tk_engine_forward(ref, x, nmax, TK_BN_TRAIN, lg) == TK_OK);
    snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f eval after train forward %d", ename, model_name, sparsity, k + 1);
    run_eval_dx(ctx, e, e0, ref, x, dl, nmax, tol);
  }
  /* parameter gradients after a folded eval forward (the re-run), and after a folded input
   * gradient of the same forward */
  snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f eval param grads", ename, model_name, sparsity);
  run_pair(ctx, &c, ref, x, dl, nmax, TK_BN_EVAL, 1);
  {
    float *d1 = fvec(nx), *d2 = fvec(nx);
    CHECK(tk_engine_forward(e, x, nmax, TK_BN_EVAL, lg) == TK_OK && tk_engine_forward(ref, x, nmax, TK_BN_EVAL, lg) == TK_OK);
    CHECK(tk_engine_backward(e, dl, d1, 0) == TK_OK);
    CHECK(tk_engine_backward(e, dl, d1, 1) == TK_OK && tk_engine_backward(ref, dl, d2, 1) == TK_OK);
    snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f param grads after a folded dx: dx", ename, model_name, sparsity);
    close_rel(ctx, d1, d2, nx, 1e-4);
    snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f param grads after a folded dx", ename, model_name, sparsity);
    compare_param_grads(ctx, e, ref);
    /* and a folded input gradient again after that */
    CHECK(tk_engine_forward(e, x, nmax, TK_BN_EVAL, lg) == TK_OK && tk_engine_backward(e, dl, d1, 0) == TK_OK);
    snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f folded dx after param grads", ename, model_name, sparsity);
    close_rel(ctx, d1, d2, nx, 1e-4);
    free(d1), free(d2);
  }
  /* weights (and batchnorm parameters) change, same mask: sync(0), then the folds follow */
  for (tk_model *mm = meng; mm; mm = mm == meng ? meng0 : mm == meng0 ? mref : NULL)
    for (int t = 0; t < mm->n_tensors; t++) {
      tk_tensor *a = &mm->tensors[t];
      if (!a->trainable) continue;
      for (int64_t i = 0; i < a->numel; i++) {
        float v = a->data[i] * 0.75f - 0.02f * (float)((i % 5) - 2);
        a->data[i] = a->mask && !a->mask[i] ? 0.0f : v;
      }
    }
  CHECK(tk_engine_sync(e, 0) == TK_OK && tk_engine_sync(e0, 0) == TK_OK && tk_engine_sync(ref, 0) == TK_OK);
  snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f after sync(0)", ename, model_name, sparsity);
  run_eval_dx(ctx, e, e0, ref, x, dl, nmax, tol);
  /* masks change: sync(1) builds new kernels, which fold again */
  double s2 = sparsity >= 0.9 ? 0.95 : sparsity > 0.5 ? 0.5 : 0.8;
  for (tk_model *mm = meng; mm; mm = mm == meng ? meng0 : mm == meng0 ? mref : NULL) mask_model(mm, s2, 77, NULL);
  st = tk_engine_sync(e, 1);
  CHECK_MSG(st == TK_OK, "fold %s/%s: sync(1): %s", ename, model_name, tk_last_error());
  CHECK(tk_engine_sync(e0, 1) == TK_OK && tk_engine_sync(ref, 1) == TK_OK);
  if (st == TK_OK) {
    int dl2 = 0;
    for (int i = 0; i < meng->n_layers; i++) dl2 += tk_exec_layer_variant(e, i) == TK_VARIANT_DENSE;
    snprintf(ctx, sizeof ctx, "fold %s/%s s=%.2f after sync(1)", ename, model_name, sparsity);
    run_eval_dx(ctx, e, e0, ref, x, dl, nmax, dl2 ? 1e-4 : 1e-5);
  }
  free(x), free(dl), free(lg);
out:
  tk_engine_free(e);
  tk_engine_free(e0);
  tk_engine_free(ref);
  tk_model_free(meng);
  tk_model_free(meng0);
  tk_model_free(mref);
  g_max_batch = MAXB;
}

/* Every engine on the folding graphs: mixed (conv-bn-relu, conv-bn + add + relu, linear-bn1d-relu;
 * a fully pruned conv at s >= 0.9) at batch 4, foldnet at batch 4 and at batch 32 (the
 * batch-vectorised kernels, forced on and off) with its 1x1 conv fully pruned at s >= 0.9. */
static void test_folds(tk_model *mixed, int heavy) {
  const int force_ref = TK_VARIANT_REFERENCE, force_table = TK_VARIANT_SPARSE_TABLE,
            force_unrolled = TK_VARIANT_SPARSE_UNROLLED;
  tk_model *foldnet = model_foldnet(11);
  const double sparsities[] = {0.0, 0.5, 0.9, 0.99};
  for (int mi = 0; mi < 2; mi++) {
    const tk_model *base = mi ? foldnet : mixed;
    const char *mname = mi ? "foldnet" : "mixed", *pruned = mi ? "c4.weight" : "b3.pruned.weight";
    const int nf = foldable_bns(base);
    for (size_t si = 0; si < sizeof sparsities / sizeof *sparsities; si++) {
      const double s = sparsities[si];
      tk_model *m = tk_model_clone(base);
      mask_model(m, s, 300 + si, s > 0.8 ? pruned : NULL);
      if (tk_dense_available()) test_fold(mname, m, s, "dense", make_dense, NULL, nf, MAXB);
      test_fold(mname, m, s, "compiled", make_default, NULL, nf, MAXB);
      test_fold(mname, m, s, "compiled-table", make_compiled, &force_table, nf, MAXB);
      CHECK_MSG(mi == 1 || s > 0.5 || g_last_res_fused > 0, "mixed s=%.2f compiled-table: its add not fused", s);
      test_fold(mname, m, s, "compiled-reference", make_compiled, &force_ref, 0, MAXB);
      CHECK_MSG(g_last_res_fused == 0, "%s s=%.2f: the reference kernels fused %d add(s)", mname, s, g_last_res_fused);
      if (s >= 0.99 || heavy) /* unrolled code is slow to compile: its own sparsity only */
        test_fold(mname, m, s, "compiled-unrolled", make_compiled, &force_unrolled, nf, MAXB);
      if (mi == 1 && (s == 0.5 || s == 0.9 || heavy)) { /* batch 32 */
        if (tk_dense_available()) test_fold(mname, m, s, "dense b32", make_dense, NULL, nf, 32);
        setenv("TICKET_VEC_BATCH", "1", 1);
        test_fold(mname, m, s, "compiled-table b32 vec_batch", make_compiled, &force_table, nf, 32);
        setenv("TICKET_VEC_BATCH", "0", 1);
        test_fold(mname, m, s, "compiled-table b32", make_compiled, &force_table, nf, 32);
        unsetenv("TICKET_VEC_BATCH");
      }
      tk_model_free(m);
    }
  }
  tk_model_free(foldnet);
}

/* ---- errors and special cases ------------------------------------------------------------------- */

static void test_errors(const tk_model *base) {
  tk_model *m = tk_model_clone(base);
  tk_engine *e = NULL;
  CHECK(tk_compiled_engine_create(m, 0, NULL, &e) == TK_ERR_ARG && !e);
  CHECK(tk_compiled_engine_create(m, 2, NULL, &e) == TK_OK && e);
  if (e) {
    float x[2 * 3 * 10 * 10], lg[2 * 5], dl[2 * 5] = {0};
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = 0.5f;
    /* backward before any forward */
    CHECK(tk_engine_backward(e, dl, NULL, 1) == TK_ERR_ARG);
    /* train-mode batchnorm over one value per channel (the 1-D batchnorm at batch 1) */
    tk_status st = tk_engine_forward(e, x, 1, TK_BN_TRAIN, lg);
    CHECK_MSG(st == TK_ERR_ARG && strstr(tk_last_error(), "fc1_bn"), "got %d: %s", st, tk_last_error());
    CHECK(tk_engine_forward(e, x, 2, (tk_bn_mode)7, lg) == TK_ERR_ARG);
    CHECK(tk_engine_forward(e, x, 1, TK_BN_EVAL, lg) == TK_OK);
    CHECK(tk_exec_arena_bytes(e) > 0);
    tk_exec_layer_time prof[64];
    tk_exec_profile_enable(e, 1);
    CHECK(tk_engine_forward(e, x, 2, TK_BN_EVAL, lg) == TK_OK);
    CHECK(tk_engine_backward(e, dl, NULL, 1) == TK_OK);
    int nl = tk_exec_profile(e, prof, 64);
    CHECK(nl == m->n_layers);
    CHECK(prof[0].fwd_calls == 1 && prof[0].bwd_calls == 1 && prof[0].fwd_s >= 0);
  }
  tk_engine_free(e);
  tk_model_free(m);
}

static void rmtree_cache(void) {
  if (!g_cache[0]) return;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_cache);
  if (system(cmd) != 0) fprintf(stderr, "test_exec: could not remove %s\n", g_cache);
}

int main(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(g_cache, sizeof g_cache, "%s/ticket-test-exec-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_cache)) g_cache[0] = 0;
  atexit(rmtree_cache);

  tk_model *models[3] = {model_mixed(7), model_chain(8), NULL};
  const char *names[3] = {"mixed", "chain", "resnet20"};
  const char *pruned[3] = {"b3.pruned.weight", "c2.weight", NULL};
  tk_status zs = tk_zoo_create("resnet20", 10, 3, 8, 8, 5, &models[2]);
  if (zs != TK_OK) {
    printf("note: zoo resnet20 unavailable (%s); testing the built graphs only\n", tk_last_error());
    models[2] = NULL;
  }
  test_errors(models[0]);

  const char *hv = getenv("TICKET_HEAVY");
  const int heavy = hv && !strcmp(hv, "1");
  const double sparsities[] = {0.0, 0.5, 0.9, 0.99};
  const int force_ref = TK_VARIANT_REFERENCE, force_table = TK_VARIANT_SPARSE_TABLE,
            force_unrolled = TK_VARIANT_SPARSE_UNROLLED;
  for (int mi = 0; mi < 3; mi++) {
    if (!models[mi]) continue;
    for (size_t si = 0; si < sizeof sparsities / sizeof *sparsities; si++) {
      double s = sparsities[si];
      /* the zoo model runs at one sparsity, lightly: it is the slowest for the oracle; unrolled
       * code (slow to compile when dense) runs where it is meant to, at high sparsity */
      const int zoo = mi == 2;
      if (zoo && s != 0.9 && !heavy) continue;
      tk_model *m = tk_model_clone(models[mi]);
      mask_model(m, s, 100 + si, s > 0.8 ? pruned[mi] : NULL);
      if (tk_dense_available()) test_engine(names[mi], m, s, "dense", make_dense, NULL, TK_VARIANT_DENSE, zoo);
      test_engine(names[mi], m, s, "compiled", make_default, NULL, TK_VARIANT_NONE, zoo);
      if (!zoo || heavy) {
        test_engine(names[mi], m, s, "compiled-table", make_compiled, &force_table, TK_VARIANT_SPARSE_TABLE, zoo);
        test_engine(names[mi], m, s, "compiled-reference", make_compiled, &force_ref, TK_VARIANT_REFERENCE, zoo);
      }
      if ((!zoo && s >= 0.9) || heavy)
        test_engine(names[mi], m, s, "compiled-unrolled", make_compiled, &force_unrolled, TK_VARIANT_SPARSE_UNROLLED,
                    zoo);
      tk_model_free(m);
    }
  }
  test_folds(models[0], heavy);
  if (models[2]) { /* the zoo ResNet-20: every batchnorm after a conv folds */
    tk_model *m = tk_model_clone(models[2]);
    mask_model(m, 0.9, 500, NULL);
    test_fold("resnet20", m, 0.9, "compiled", make_default, NULL, foldable_bns(m), MAXB);
    CHECK_MSG(g_last_res_fused > 0, "resnet20 compiled: no residual add fused into a store");
    if (tk_dense_available()) test_fold("resnet20", m, 0.9, "dense", make_dense, NULL, foldable_bns(m), MAXB);
    tk_model_free(m);
  }
  printf("test_exec: %d engine/model/sparsity cases compared with the reference engine\n", g_cases);
  CHECK(g_cases > 0);
  for (int mi = 0; mi < 3; mi++) tk_model_free(models[mi]);
  return check_done("test_exec");
}
