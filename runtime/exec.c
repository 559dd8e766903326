/* exec.c -- the fast graph executor: the compiled engine and the dense engine (engine.h).
 *
 * Both run a model's layers in order on NCHW activations.  conv2d and linear layers call a
 * tk_kernel (compiler/compile.h); everything else calls the fast ops of runtime/ops.c.
 *   compiled engine: the plan (compiler/plan.c) names each layer's kernel: generated sparse
 *                    kernels and "empty" ones (every weight pruned: the output is the bias),
 *                    all from one tk_sparse_build call (compiler/sparse.c); oneDNN
 *                    (dense.c); or the naive reference (kernel_ref.c).
 *   dense engine:    every conv/linear on oneDNN -- the honest dense baseline.
 *
 * Plan, then execute (STYLE.md 6, 7): create() decides every buffer from the model's shapes
 * and max_batch, fills a table of sizes, makes ONE allocation (the arena) and carves it into
 * named pointers; forward and backward allocate nothing.
 *
 * Memory (per value v, "numel" = elements per image, all buffers for max_batch images):
 *   act[v]     (N, C, H, W) NCHW activation; act[0] is the normalised input.  Aliases:
 *              flatten is a view of its input; a ReLU whose input has no other reader runs
 *              in place, and after batchnorm or add it is fused into that layer (the layer
 *              writes relu(out); the ReLU step does nothing; backward masks by out > 0).
 *   grad slots gradient buffers shared by liveness: walking the layers backwards, a value's
 *              gradient is born at its last reader and dies at its producer.  Elementwise
 *              layers (batchnorm, relu, add, flatten, scale) hand their output-gradient
 *              buffer to their first unborn input and work in place; later readers add in.
 *   gtmp       input gradient of a conv/linear whose input gradient already holds a sum
 *              (kernels overwrite), added in afterwards
 *   bn stats   per batchnorm: mean, 1/std and the affine y = a*x + b of the last unfolded
 *              forward (its backward recomputes the fused ReLU's mask from x, a and b), the
 *              fold's a and b (C each)
 *   argmax     per maxpool: int32 (N, C, OH, OW) index of each maximum in its input plane
 *   kscratch   the dense kernels' shared scratch (blocked copies, oneDNN scratchpad)
 *
 * Eval-mode batchnorm folding: a batchnorm whose input is a conv/linear output read by nothing
 * else is, in eval mode, the per-channel affine y = a*z + b (a = gamma/sqrt(running_var + eps),
 * b = beta - running_mean*a), folded into the layer (compile.h, fold): W' = W*a[o] (the mask
 * is unchanged), b' = bias*a + b.  A TK_BN_EVAL forward runs that layer on the folded values
 * straight into the batchnorm's output buffer, with the batchnorm's fused ReLU as the kernel's
 * store epilogue, and skips the batchnorm step; backward runs the layer's input gradient on the
 * folded values with dy masked by (y > 0) inside the kernel's output-gradient preparation, and
 * skips the batchnorm step.  The folds are recomputed on the first eval forward after they went
 * stale: at create, on sync() (weights changed) and on every TK_BN_TRAIN forward (the running
 * statistics changed), never per call otherwise.  A backward with parameter gradients after a
 * folded forward first runs the folded pairs again unfolded (the layers' outputs z are the
 * batchnorms' inputs, needed for dgamma and the layers' own weight gradients; the batchnorms'
 * outputs are rewritten from z, so that the ReLU masks their backward recomputes from z are
 * those of the outputs the later layers see) and then goes the unfolded way.  A layer whose
 * kernel has no fold entries (the reference kernel, value-baked code) keeps the unfolded path.
 * Both engines fold the same layers, so the dense baseline runs the same folded graph.
 * Residual adds fused into a folded layer's store (eval mode): an add whose later-computed
 * input is a folded batchnorm's output read by nothing else, the other input ready before that
 * batchnorm's layer runs, and whose kernel can add a residual (TK_KCAP_FWD_RES): the layer's
 * folded forward writes relu?(its output + the other input) straight into the add's output
 * and the add step does nothing (the batchnorm's own output buffer is not written; backward
 * is unchanged: the add masks by its output).  And an input gradient that sums into a buffer
 * already holding a gradient (G_ACC) is summed by the kernel's store where it can
 * (TK_KCAP_BWD_ACC), instead of going through gtmp and a pass of its own.
 * A batchnorm (not folded, without a ReLU) whose output only an add reads writes no output:
 * it computes its statistics and affine, and the add computes relu?(a*z + b + other) from its
 * input z (tk_ops_add_affine_fwd, bit-identical), one write and one read of the tensor less
 * (train mode above all: both of a downsampling block's batchnorms).
 * Environment: TICKET_FOLD_BN=0 turns folding off, TICKET_FUSE=0 the three fusions above (A/B
 * measurements); read when the engine is created.
 *
 * Numerics follow PyTorch (runtime/ops.h); the reference engine (runtime/ref/ref.c) is the
 * oracle in tests/unit/test_exec.c.  Results are deterministic for a given thread count.
 *
 * How to add an op: write its forward and backward in ops.c (parallel names, `acc` flag),
 * call them from step_fwd() and step_bwd(); if its backward can run in place on the output
 * gradient, list it in grad_inplace_ok(); if it keeps state for backward (like batchnorm's
 * statistics or maxpool's argmax), size it in plan_memory()'s table; add it to a graph in
 * tests/unit/test_exec.c.
 */
#include "exec.h"

#include "dense.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

typedef enum { G_NONE = 0, G_WRITE, G_ACC, G_INPLACE } grad_mode;

typedef struct {
  const tk_layer *l;
  int relu_fused;   /* batchnorm/add: also applies the ReLU that reads its output */
  int folded;       /* ReLU done by its producer: no forward work, backward passes through */
  int fold_with;    /* conv/linear: the batchnorm that can fold into it; batchnorm: that layer; -1 */
  int fold_on;      /* the pair folds in eval mode (structure, kernel support, TICKET_FOLD_BN) */
  int res_add;      /* conv/linear with fold_on: the add its folded forward completes, -1 */
  int res_in;       /* that add: its input the layer's store adds (the other one) */
  int fused_into;   /* add: the layer whose folded forward writes it, -1 */
  int bn_defer;     /* batchnorm read only by an add: that add applies its affine (not when folded) */
  int defer_in[2];  /* add: the batchnorm step behind each input whose affine it applies, -1 */
  float *fscale, *fshift; /* batchnorm: the fold's a and b */
  float *in[2], *out;
  int64_t in_elems, out_elems; /* per image */
  int gout;                    /* grad slot of the output, -1: no gradient reaches this layer */
  int gin[2];                  /* grad slots of the inputs */
  grad_mode gmode[2];
  float *mean, *invstd;        /* batchnorm: the last unfolded forward's statistics */
  float *a, *b;                /* and its affine y = relu?(a*x + b), whence backward's ReLU mask */
  int32_t *argmax;             /* maxpool */
  tk_pool_dims pool;
  tk_kernel *k;                /* conv/linear */
  tk_variant variant;
  double t_fwd, t_bwd;
  long n_fwd, n_bwd;
} step;

typedef struct {
  tk_engine base;
  int dense_only;
  tk_compile_opts opts;
  tk_plan *plan;
  char how[256];
  int n_values;
  step *steps;        /* n_layers */
  float **act;        /* n_values */
  int n_slots;
  float **slot;       /* n_slots gradient buffers */
  int grad0;          /* slot of value 0's gradient, -1 when nothing reaches the input */
  float *gtmp;
  uint8_t *zero_grad; /* per tensor: grads[t] is not written by any layer, zero it */
  char *arena;
  size_t arena_bytes;
  void *kscratch, *kscratch_extra; /* kscratch lives in the arena; extra after a re-plan */
  size_t kscratch_bytes;
  int last_n;
  tk_bn_mode last_bn;
  int profile;
  int *readers, *alias; /* n_values: readers of each value; value whose buffer it uses, or -1 */
  int fold_env;         /* TICKET_FOLD_BN is not 0 */
  int fuse_env;         /* TICKET_FUSE is not 0 */
  int n_res_fused;      /* adds fused into a folded layer's store */
  int n_folds;          /* pairs with fold_on */
  int fold_stale;       /* the kernels' folds do not match the weights and running statistics */
  int last_folded;      /* the last forward ran the folded pairs folded */
  /* what changed since creation (tk_exec_generation): values counts syncs and train-mode
   * forwards (running statistics), masks the syncs with masks_changed */
  unsigned long gen_values, gen_masks;
} exec_engine;

static const tk_engine_vtbl g_compiled_vtbl, g_dense_vtbl;

static exec_engine *as_exec(const tk_engine *e) {
  return (e && (e->v == &g_compiled_vtbl || e->v == &g_dense_vtbl)) ? (exec_engine *)e : NULL;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

#define LAYER_FAIL(st, i, l, ...) \
  tk_fail_prefix(tk_fail(st, __VA_ARGS__), "layer %d (%s, %s)", (i), (l)->name, tk_op_name((l)->op))

/* ---- kernels ---------------------------------------------------------------------------------------- */

static int is_kernel_op(tk_op op) { return op == TK_OP_CONV2D || op == TK_OP_LINEAR; }

/* variants tk_sparse_build makes (EMPTY needs no code but is made there too) */
static int is_built_by_sparse(tk_variant v) {
  return v == TK_VARIANT_SPARSE_TABLE || v == TK_VARIANT_SPARSE_UNROLLED || v == TK_VARIANT_VALUE_BAKED ||
         v == TK_VARIANT_EMPTY;
}

static void kernels_free(exec_engine *x) {
  for (int i = 0; x->steps && i < x->base.m->n_layers; i++)
    if (x->steps[i].k) {
      x->steps[i].k->v->destroy(x->steps[i].k);
      x->steps[i].k = NULL;
    }
  tk_plan_free(x->plan);
  x->plan = NULL;
}

/* Plans (compiled engine) and creates every conv/linear kernel. */
static tk_status kernels_make(exec_engine *x) {
  tk_model *m = x->base.m;
  const int L = m->n_layers;
  tk_status st = TK_OK;
  tk_kernel **ks = tk_calloc((size_t)L, sizeof *ks);
  if (!ks) return TK_ERR_NOMEM;
  for (int i = 0; i < L; i++) x->steps[i].variant = is_kernel_op(m->layers[i].op) ? TK_VARIANT_DENSE : TK_VARIANT_NONE;
  if (x->dense_only) {
    snprintf(x->how, sizeof x->how, "dense: every conv/linear on oneDNN");
  } else {
    if ((st = tk_plan_make(m, &x->opts, &x->plan)) != TK_OK) goto done;
    if (x->plan->n_layers != L) {
      st = tk_fail(TK_ERR_INTERNAL, "plan: %d layers for a model of %d", x->plan->n_layers, L);
      goto done;
    }
    int built = 0, count[TK_VARIANT_COUNT] = {0};
    for (int i = 0; i < L; i++) {
      if (!is_kernel_op(m->layers[i].op)) continue;
      tk_variant v = x->plan->layers[i].variant;
      x->steps[i].variant = v;
      built += is_built_by_sparse(v);
      if ((unsigned)v < TK_VARIANT_COUNT) count[v]++;
    }
    snprintf(x->how, sizeof x->how, "plan for batch %d, %d thread(s):", x->plan->batch, x->plan->threads);
    for (int v = 1; v < TK_VARIANT_COUNT; v++)
      if (count[v])
        snprintf(x->how + strlen(x->how), sizeof x->how - strlen(x->how), " %d %s", count[v],
                 tk_variant_name((tk_variant)v));
    if (built && (st = tk_sparse_build(m, x->plan, &x->opts, x->base.max_batch, ks)) != TK_OK) goto done;
  }
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    tk_variant v = x->steps[i].variant;
    if (!is_kernel_op(l->op) || ks[i]) continue;
    /* a dense kernel makes its fold primitives only where a batchnorm will fold into it */
    const int fw = x->steps[i].fold_with;
    const int fold_mode = x->fold_env && fw >= 0 ? (x->steps[fw].relu_fused ? 2 : 1) : 0;
    switch (v) {
    case TK_VARIANT_REFERENCE: st = tk_kernel_reference_create(m, i, x->base.max_batch, &ks[i]); break;
    case TK_VARIANT_DENSE: st = tk_kernel_dense_create_fold(m, i, x->base.max_batch, 1, fold_mode, &ks[i]); break;
    default:
      st = LAYER_FAIL(TK_ERR_INTERNAL, i, l, "kernel: the plan's variant %d produced no kernel", (int)v);
      break;
    }
    if (st != TK_OK) goto done;
  }
  for (int i = 0; i < L; i++) {
    x->steps[i].k = ks[i];
    ks[i] = NULL;
  }
done:
  for (int i = 0; i < L; i++)
    if (ks[i]) ks[i]->v->destroy(ks[i]);
  free(ks);
  return st;
}

static size_t kernels_scratch(const exec_engine *x) {
  size_t s = 0;
  for (int i = 0; i < x->base.m->n_layers; i++) {
    const tk_kernel *k = x->steps[i].k;
    if (k && k->variant == TK_VARIANT_DENSE) {
      size_t z = tk_kernel_dense_scratch_size(k);
      if (z > s) s = z;
    }
  }
  return s;
}

/* Hands the shared scratch to the dense kernels and packs every kernel's weights. */
static tk_status kernels_bind_and_update(exec_engine *x) {
  for (int i = 0; i < x->base.m->n_layers; i++) {
    tk_kernel *k = x->steps[i].k;
    if (!k) continue;
    if (k->variant == TK_VARIANT_DENSE) tk_kernel_dense_set_scratch(k, x->kscratch);
    tk_status st = k->v->update(k);
    if (st != TK_OK) return st;
  }
  return TK_OK;
}

/* ---- batchnorm folding -------------------------------------------------------------------------- */

/* Which pairs fold, from the structure (plan_graph, plan_memory) and the kernels' support;
 * the folds become stale.  Called whenever kernels are made. */
static void folds_bind(exec_engine *x) {
  const int L = x->base.m->n_layers;
  x->n_folds = 0;
  for (int i = 0; i < L; i++) x->steps[i].fold_on = 0;
  for (int i = 0; i < L && x->fold_env; i++) {
    step *s = &x->steps[i];
    if (!is_kernel_op(s->l->op) || s->fold_with < 0 || !s->k) continue;
    const tk_kernel_vtbl *v = s->k->v;
    if (!v->fold || !v->fwd_folded || !v->bwd_input_folded) continue;
    s->fold_on = x->steps[s->fold_with].fold_on = 1;
    x->n_folds++;
  }
  x->fold_stale = 1;
  /* residual adds into the store of the folded layer that computes their later input */
  x->n_res_fused = 0;
  for (int i = 0; i < L; i++) x->steps[i].res_add = x->steps[i].fused_into = -1;
  for (int i = 0; i < L && x->fuse_env; i++) {
    step *s = &x->steps[i];
    const tk_layer *l = s->l;
    if (l->op != TK_OP_ADD || l->n_inputs != 2) continue;
    const int late = l->inputs[0] > l->inputs[1] ? 0 : 1, u = l->inputs[late], uo = l->inputs[1 - late];
    if (u < 1 || uo == u) continue;
    const step *b = &x->steps[u - 1];
    if (b->l->op != TK_OP_BATCHNORM || !b->fold_on || b->relu_fused || x->readers[u] != 1 || x->alias[u] >= 0)
      continue;
    step *c = &x->steps[b->fold_with];
    /* the other input must be written by then: not a batchnorm that leaves its affine to this add */
    const step *bo = uo >= 1 ? &x->steps[uo - 1] : NULL;
    if (uo - 1 >= b->fold_with || (bo && bo->bn_defer && !bo->fold_on) || !c->k || !(c->k->caps & TK_KCAP_FWD_RES) ||
        !c->k->v->fwd_folded_res || s->out == c->in[0])
      continue;
    c->res_add = i, c->res_in = 1 - late;
    s->fused_into = b->fold_with;
    x->n_res_fused++;
  }
  size_t len = strlen(x->how);
  if (!x->fold_env)
    snprintf(x->how + len, sizeof x->how - len, "; batchnorm folding off (TICKET_FOLD_BN=0)");
  else if (x->n_folds)
    snprintf(x->how + len, sizeof x->how - len, "; %d batchnorm(s) folded in eval mode", x->n_folds);
  len = strlen(x->how);
  if (!x->fuse_env)
    snprintf(x->how + len, sizeof x->how - len, "; add fusions off (TICKET_FUSE=0)");
  else if (x->n_res_fused)
    snprintf(x->how + len, sizeof x->how - len, ", %d residual add(s) into their stores", x->n_res_fused);
}

/* Batchnorm i in eval mode: its statistics for backward (mean, 1/std) and the fold's a and b,
 * computed as tk_ops_bn_eval_fwd computes them. */
static void bn_eval_affine(exec_engine *x, int i) {
  const tk_model *m = x->base.m;
  step *s = &x->steps[i];
  const tk_layer *l = s->l;
  const float *g = m->tensors[l->weight].data, *b = m->tensors[l->bias].data;
  const float *rm = m->tensors[l->mean].data, *rv = m->tensors[l->var].data;
  for (int c = 0; c < l->in.c; c++) {
    s->mean[c] = rm[c];
    s->invstd[c] = (float)(1.0 / sqrt((double)rv[c] + (double)l->eps));
    s->fscale[c] = g[c] * s->invstd[c];
    s->fshift[c] = b[c] - s->mean[c] * s->fscale[c];
  }
}

/* Recomputes every fold from the current weights and running statistics. */
static tk_status folds_refresh(exec_engine *x) {
  for (int i = 0; i < x->base.m->n_layers; i++) {
    step *s = &x->steps[i];
    if (!s->fold_on || s->l->op != TK_OP_BATCHNORM) continue;
    bn_eval_affine(x, i);
    tk_kernel *k = x->steps[s->fold_with].k;
    tk_status st = k->v->fold(k, s->fscale, s->fshift);
    if (st != TK_OK) return LAYER_FAIL(st, s->fold_with, x->steps[s->fold_with].l, "folding %s", s->l->name);
  }
  x->fold_stale = 0;
  return TK_OK;
}

/* ---- planning the graph: readers, aliases, fusions, folds ---------------------------------------- */

static tk_status plan_graph(exec_engine *x) {
  tk_model *m = x->base.m;
  const int L = m->n_layers, V = L + 1;
  x->readers = tk_calloc((size_t)V, sizeof(int));
  x->alias = tk_malloc((size_t)V * sizeof(int));
  if (!x->readers || !x->alias) return TK_ERR_NOMEM;
  int *readers = x->readers, *alias = x->alias;
  for (int i = 0; i < L; i++)
    for (int k = 0; k < m->layers[i].n_inputs; k++) readers[m->layers[i].inputs[k]]++;
  for (int v = 0; v < V; v++) alias[v] = -1;
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    step *s = &x->steps[i];
    const int in = l->inputs[0], out = i + 1;
    s->fold_with = -1;
    if (l->op == TK_OP_FLATTEN) alias[out] = in;
    if (l->op != TK_OP_RELU) continue;
    int ok = 1; /* in place: nobody else reads the buffer, and it is not the input image */
    for (int u = in; ok; u = alias[u]) {
      if (u == 0 || readers[u] != 1) ok = 0;
      if (alias[u] < 0) break;
    }
    if (!ok) continue;
    alias[out] = in;
    const tk_layer *p = in > 0 ? &m->layers[in - 1] : NULL;
    if (p && alias[in] < 0 && (p->op == TK_OP_BATCHNORM || p->op == TK_OP_ADD) && !x->steps[in - 1].relu_fused) {
      x->steps[in - 1].relu_fused = 1;
      s->folded = 1;
    }
  }
  /* batchnorm (without a ReLU) read only by an add: the add applies its affine */
  for (int i = 0; i < L; i++) x->steps[i].defer_in[0] = x->steps[i].defer_in[1] = -1;
  for (int i = 0; i < L && x->fuse_env; i++) {
    const tk_layer *l = &m->layers[i];
    if (l->op != TK_OP_ADD || l->n_inputs != 2 || l->inputs[0] == l->inputs[1]) continue;
    for (int k = 0; k < 2; k++) {
      const int u = l->inputs[k];
      if (u < 1 || m->layers[u - 1].op != TK_OP_BATCHNORM || readers[u] != 1 || alias[u] >= 0 ||
          x->steps[u - 1].relu_fused)
        continue;
      x->steps[u - 1].bn_defer = 1;
      x->steps[i].defer_in[k] = u - 1;
    }
  }
  /* batchnorm after a conv/linear whose output nothing else reads: foldable in eval mode (the
   * layer then writes the batchnorm's output; its own output buffer serves train mode) */
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    const int in = l->inputs[0];
    if (l->op != TK_OP_BATCHNORM || in < 1 || readers[in] != 1 || alias[in] >= 0) continue;
    if (!is_kernel_op(m->layers[in - 1].op) || m->layers[in - 1].out.c != l->in.c) continue;
    x->steps[i].fold_with = in - 1;
    x->steps[in - 1].fold_with = i;
  }
  return TK_OK;
}

/* ---- planning the buffers ------------------------------------------------------------------------ */

/* Elementwise layers whose backward may run in place on their output gradient. */
static int grad_inplace_ok(tk_op op) {
  return op == TK_OP_BATCHNORM || op == TK_OP_RELU || op == TK_OP_ADD || op == TK_OP_FLATTEN || op == TK_OP_SCALE;
}

typedef struct {
  size_t cap;
  int busy;
} slot_info;

/* A free slot for `need` bytes: the smallest that fits, else the largest free one grown, else new. */
static int slot_get(slot_info *s, int *ns, size_t need) {
  int best = -1;
  for (int i = 0; i < *ns; i++)
    if (!s[i].busy && s[i].cap >= need && (best < 0 || s[i].cap < s[best].cap)) best = i;
  if (best < 0)
    for (int i = 0; i < *ns; i++)
      if (!s[i].busy && (best < 0 || s[i].cap > s[best].cap)) best = i;
  if (best < 0) best = (*ns)++;
  if (s[best].cap < need) s[best].cap = need;
  s[best].busy = 1;
  return best;
}

/* The arena: every buffer, its size in the table, then one allocation carved in order. */
typedef struct {
  size_t *act_off;   /* n_values; SIZE_MAX: alias */
  int *act_alias;    /* n_values; value whose buffer is used, or -1 */
  size_t *slot_off;  /* n_slots */
  size_t *stat_off;  /* n_layers: bn stats or argmax */
  size_t gtmp_off, kscratch_off, total;
} arena_table;

static tk_status plan_memory(exec_engine *x) {
  tk_model *m = x->base.m;
  const int L = m->n_layers, V = L + 1;
  const size_t B = (size_t)x->base.max_batch;
  tk_status st = TK_ERR_NOMEM;
  const int *alias = x->alias;
  int *vslot = tk_malloc((size_t)V * sizeof(int));
  slot_info *slots = tk_calloc((size_t)V + 1, sizeof(slot_info));
  arena_table t = {0};
  t.act_off = tk_calloc((size_t)V, sizeof(size_t));
  t.slot_off = tk_calloc((size_t)V + 1, sizeof(size_t));
  t.stat_off = tk_calloc((size_t)L, sizeof(size_t));
  x->zero_grad = tk_calloc((size_t)(m->n_tensors ? m->n_tensors : 1), 1);
  x->act = tk_calloc((size_t)V, sizeof(float *));
  x->slot = tk_calloc((size_t)V + 1, sizeof(float *));
  if (!vslot || !slots || !t.act_off || !t.slot_off || !t.stat_off || !x->zero_grad ||
      !x->act || !x->slot)
    goto done;
#define VBYTES(v) (B * (size_t)tk_shape_numel(m->values[v]) * sizeof(float))

  /* backward: gradient slots by liveness (readers, aliases and fusions: plan_graph) */
  for (int v = 0; v < V; v++) vslot[v] = -1;
  int ns = 0;
  size_t gtmp = 0;
  vslot[L] = slot_get(slots, &ns, VBYTES(L));
  for (int i = L - 1; i >= 0; i--) {
    const tk_layer *l = &m->layers[i];
    step *s = &x->steps[i];
    s->gout = vslot[i + 1];
    s->gin[0] = s->gin[1] = -1;
    s->gmode[0] = s->gmode[1] = G_NONE;
    if (s->gout < 0) continue; /* no gradient reaches this layer */
    int handed = 0;
    for (int k = 0; k < l->n_inputs; k++) {
      int v = l->inputs[k];
      if (vslot[v] >= 0) {
        s->gmode[k] = G_ACC;
        if (is_kernel_op(l->op) && VBYTES(v) > gtmp) gtmp = VBYTES(v);
      } else if (!handed && grad_inplace_ok(l->op)) {
        vslot[v] = s->gout;
        handed = 1;
        s->gmode[k] = G_INPLACE;
      } else {
        vslot[v] = slot_get(slots, &ns, VBYTES(v));
        s->gmode[k] = G_WRITE;
      }
      s->gin[k] = vslot[v];
    }
    if (s->folded && s->gmode[0] != G_INPLACE) {
      st = LAYER_FAIL(TK_ERR_INTERNAL, i, l, "fused ReLU without an in-place gradient");
      goto done;
    }
    if (!handed) slots[s->gout].busy = 0;
  }
  x->grad0 = vslot[0];
  /* a folded pair runs the layer's input gradient on the batchnorm's output gradient: the
   * batchnorm's backward must be in place (it always is: the layer's output has one reader) */
  for (int i = 0; i < L; i++) {
    step *s = &x->steps[i];
    if (m->layers[i].op == TK_OP_BATCHNORM && s->fold_with >= 0 && x->steps[s->fold_with].gout != s->gout) {
      x->steps[s->fold_with].fold_with = -1;
      s->fold_with = -1;
    }
  }

  /* parameter gradients no live layer writes are zeroed by backward */
  for (int ti = 0; ti < m->n_tensors; ti++) x->zero_grad[ti] = 1;
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    if (x->steps[i].gout < 0) continue;
    if (l->weight >= 0) x->zero_grad[l->weight] = 0;
    if (l->bias >= 0 && l->op != TK_OP_SCALE) x->zero_grad[l->bias] = 0;
  }

  /* the table of sizes */
  size_t off = 0;
  for (int v = 0; v < V; v++) {
    t.act_off[v] = off;
    if (alias[v] < 0) off += align64(VBYTES(v));
  }
  for (int k = 0; k < ns; k++) {
    t.slot_off[k] = off;
    off += align64(slots[k].cap);
  }
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    t.stat_off[i] = off;
    if (l->op == TK_OP_BATCHNORM) off += 6 * align64((size_t)l->in.c * sizeof(float));
    if (l->op == TK_OP_MAXPOOL) off += align64(B * (size_t)tk_shape_numel(l->out) * sizeof(int32_t));
  }
  t.gtmp_off = off;
  off += align64(gtmp);
  t.kscratch_off = off;
  x->kscratch_bytes = kernels_scratch(x);
  off += align64(x->kscratch_bytes);
  t.total = off;

  /* refuse what this machine cannot hold rather than touching memory until the kernel kills us */
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const double phys = pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
  if (phys > 0 && (double)t.total > 0.8 * phys) {
    st = tk_fail(TK_ERR_NOMEM, "engine: batch %d needs %.2f GB of buffers, more than this machine's %.2f GB allows "
                               "(use a smaller batch)", x->base.max_batch, (double)t.total / 1e9, phys / 1e9);
    goto done;
  }
  if (!(x->arena = tk_alloc_aligned(t.total))) goto done;
  x->arena_bytes = t.total;

  /* carve */
  for (int v = 0; v < V; v++) x->act[v] = alias[v] < 0 ? (float *)(x->arena + t.act_off[v]) : x->act[alias[v]];
  x->n_slots = ns;
  for (int k = 0; k < ns; k++) x->slot[k] = (float *)(x->arena + t.slot_off[k]);
  x->gtmp = gtmp ? (float *)(x->arena + t.gtmp_off) : NULL;
  x->kscratch = x->kscratch_bytes ? x->arena + t.kscratch_off : NULL;
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    step *s = &x->steps[i];
    s->l = l;
    s->in[0] = x->act[l->inputs[0]];
    s->in[1] = l->n_inputs > 1 ? x->act[l->inputs[1]] : NULL;
    s->out = x->act[i + 1];
    s->in_elems = tk_shape_numel(l->in);
    s->out_elems = tk_shape_numel(l->out);
    if (l->op == TK_OP_BATCHNORM) {
      const size_t cb = align64((size_t)l->in.c * sizeof(float));
      s->mean = (float *)(x->arena + t.stat_off[i]);
      s->invstd = (float *)(x->arena + t.stat_off[i] + cb);
      s->fscale = (float *)(x->arena + t.stat_off[i] + 2 * cb);
      s->fshift = (float *)(x->arena + t.stat_off[i] + 3 * cb);
      s->a = (float *)(x->arena + t.stat_off[i] + 4 * cb);
      s->b = (float *)(x->arena + t.stat_off[i] + 5 * cb);
    }
    if (l->op == TK_OP_MAXPOOL) s->argmax = (int32_t *)(x->arena + t.stat_off[i]);
    if (l->op == TK_OP_MAXPOOL || l->op == TK_OP_AVGPOOL)
      s->pool = (tk_pool_dims){l->in.c, l->in.h, l->in.w, l->out.h, l->out.w, l->kh, l->kw, l->sh, l->sw, l->ph, l->pw};
  }
  st = TK_OK;
#undef VBYTES
done:
  free(vslot);
  free(slots);
  free(t.act_off);
  free(t.slot_off);
  free(t.stat_off);
  return st;
}

/* ---- threads ---------------------------------------------------------------------------------------- */

static int threads_enter(const exec_engine *x) {
#ifdef _OPENMP
  int old = omp_get_max_threads();
  if (x->base.threads > 0 && x->base.threads != old) omp_set_num_threads(x->base.threads);
  return old;
#else
  (void)x;
  return 1;
#endif
}

static void threads_leave(const exec_engine *x, int old) {
#ifdef _OPENMP
  if (x->base.threads > 0 && x->base.threads != old) omp_set_num_threads(old);
#else
  (void)x, (void)old;
#endif
}

/* ---- forward ---------------------------------------------------------------------------------------- */

/* folded: the folded pairs run folded (eval mode) */
static tk_status step_fwd(exec_engine *x, int i, int n, tk_bn_mode bn, int folded) {
  tk_model *m = x->base.m;
  step *s = &x->steps[i];
  const tk_layer *l = s->l;
  const int c = l->in.c, hw = l->in.h * l->in.w;
  const size_t count = (size_t)n * s->out_elems;
  switch (l->op) {
  case TK_OP_CONV2D:
  case TK_OP_LINEAR: {
    tk_status st;
    if (folded && s->res_add >= 0) { /* straight into the add's output, with the add's ReLU */
      const step *a = &x->steps[s->res_add];
      st = s->k->v->fwd_folded_res(s->k, s->in[0], a->in[s->res_in], a->out, n, a->relu_fused);
    } else if (folded && s->fold_on) { /* straight into the batchnorm's output, with its ReLU */
      const step *b = &x->steps[s->fold_with];
      st = s->k->v->fwd_folded(s->k, s->in[0], b->out, n, b->relu_fused);
    } else {
      st = s->k->v->fwd(s->k, s->in[0], s->out, n);
    }
    if (st != TK_OK) return tk_fail_prefix(st, "layer %d (%s)", i, l->name);
    break;
  }
  case TK_OP_BATCHNORM: {
    if (folded && s->fold_on) break; /* done by the layer before */
    const float *g = m->tensors[l->weight].data, *b = m->tensors[l->bias].data;
    float *rm = m->tensors[l->mean].data, *rv = m->tensors[l->var].data;
    float *y = s->bn_defer ? NULL : s->out; /* deferred: the add that reads it applies the affine */
    if (bn == TK_BN_TRAIN)
      tk_ops_bn_train_fwd(s->in[0], g, b, rm, rv, l->eps, l->momentum, s->relu_fused, y, s->mean, s->invstd, s->a,
                          s->b, n, c, hw);
    else
      tk_ops_bn_eval_fwd(s->in[0], g, b, rm, rv, l->eps, s->relu_fused, y, s->mean, s->invstd, s->a, s->b, n, c, hw);
    break;
  }
  case TK_OP_RELU:
    if (!s->folded) tk_ops_relu_fwd(s->in[0], s->out, count);
    break;
  case TK_OP_MAXPOOL: tk_ops_maxpool_fwd(&s->pool, s->in[0], s->out, s->argmax, n); break;
  case TK_OP_AVGPOOL: tk_ops_avgpool_fwd(&s->pool, s->in[0], s->out, n); break;
  case TK_OP_GLOBALAVGPOOL: tk_ops_gap_fwd(s->in[0], s->out, n, c, hw); break;
  case TK_OP_ADD: {
    if (folded && s->fused_into >= 0) break; /* written by that layer */
    /* inputs whose batchnorm deferred its affine to here (one folded this time wrote its output) */
    const step *d[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++)
      if (s->defer_in[k] >= 0 && !(folded && x->steps[s->defer_in[k]].fold_on)) d[k] = &x->steps[s->defer_in[k]];
    if (d[0] || d[1])
      tk_ops_add_affine_fwd(d[0] ? d[0]->in[0] : s->in[0], d[0] ? d[0]->a : NULL, d[0] ? d[0]->b : NULL,
                            d[1] ? d[1]->in[0] : s->in[1], d[1] ? d[1]->a : NULL, d[1] ? d[1]->b : NULL,
                            s->relu_fused, s->out, n, c, hw);
    else
      tk_ops_add_fwd(s->in[0], s->in[1], s->relu_fused, s->out, count);
    break;
  }
  case TK_OP_FLATTEN: break; /* a view */
  case TK_OP_SCALE: tk_ops_scale_fwd(s->in[0], m->tensors[l->weight].data, s->out, n, c, hw); break;
  case TK_OP_COUNT: return tk_fail(TK_ERR_INTERNAL, "layer %d (%s): unknown op", i, l->name);
  }
  return TK_OK;
}

static tk_status exec_forward(tk_engine *e, const float *xin, int n, tk_bn_mode bn, float *logits) {
  exec_engine *x = (exec_engine *)e;
  tk_model *m = e->m;
  if (n < 1 || n > e->max_batch)
    return tk_fail(TK_ERR_ARG, "%s engine: batch %d outside 1..%d (max_batch)", e->v->name, n, e->max_batch);
  if (bn != TK_BN_EVAL && bn != TK_BN_TRAIN) return tk_fail(TK_ERR_ARG, "%s engine: bn mode %d unknown", e->v->name, bn);
  for (int i = 0; bn == TK_BN_TRAIN && i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    if (l->op == TK_OP_BATCHNORM && (int64_t)n * l->in.h * l->in.w < 2)
      return tk_fail(TK_ERR_ARG, "layer %d (%s, batchnorm): train mode needs more than 1 value per channel "
                                 "(batch %d of %dx%d maps)", i, l->name, n, l->in.h, l->in.w);
  }
  x->last_n = 0;
  int old = threads_enter(x);
  tk_status st = TK_OK;
  const int folded = bn == TK_BN_EVAL && x->n_folds > 0;
  if (folded && x->fold_stale) st = folds_refresh(x);
  if (bn == TK_BN_TRAIN && x->n_folds) x->fold_stale = 1; /* the running statistics change */
  if (bn == TK_BN_TRAIN) x->gen_values++;
  if (st == TK_OK) tk_ops_normalize_fwd(xin, m->mean, m->std, x->act[0], n, m->in_c, m->in_h * m->in_w);
  for (int i = 0; i < m->n_layers && st == TK_OK; i++) {
    step *s = &x->steps[i];
    if (!x->profile) {
      st = step_fwd(x, i, n, bn, folded);
      continue;
    }
    double t0 = tk_now();
    st = step_fwd(x, i, n, bn, folded);
    s->t_fwd += tk_now() - t0;
    s->n_fwd++;
  }
  threads_leave(x, old);
  if (st != TK_OK) return st;
  memcpy(logits, x->act[m->n_layers], (size_t)n * m->classes * sizeof(float));
  x->last_n = n;
  x->last_bn = bn;
  x->last_folded = folded;
  return TK_OK;
}

/* ---- backward --------------------------------------------------------------------------------------- */

/* Conv/linear step s: its input gradient into din, of the fold's values with dy masked by mask
 * when folded; summed in when din already holds a gradient (G_ACC): by the kernel's store where
 * it can (TK_KCAP_BWD_ACC), else through gtmp and a pass of its own. */
static tk_status kernel_dx(exec_engine *x, const step *s, const float *dy, const float *mask, float *din, int n,
                           int folded) {
  tk_kernel *k = s->k;
  const int acc = s->gmode[0] == G_ACC;
  if (acc && x->fuse_env && (k->caps & TK_KCAP_BWD_ACC) && k->v->bwd_input_acc)
    return k->v->bwd_input_acc(k, dy, mask, din, n, folded);
  float *d = acc ? x->gtmp : din;
  tk_status st = folded ? k->v->bwd_input_folded(k, dy, mask, d, n) : k->v->bwd_input(k, dy, d, n);
  if (st == TK_OK && acc) tk_ops_accumulate(din, x->gtmp, (size_t)n * s->in_elems);
  return st;
}

/* folded: the last forward ran the folded pairs folded (and no parameter gradients are wanted) */
static tk_status step_bwd(exec_engine *x, int i, int n, int want_dx, int param_grads, int folded) {
  tk_model *m = x->base.m;
  step *s = &x->steps[i];
  const tk_layer *l = s->l;
  float **grads = x->base.grads;
  const int c = l->in.c, hw = l->in.h * l->in.w;
  const size_t count = (size_t)n * s->out_elems;
  float *dy = x->slot[s->gout];
  /* input k's gradient buffer, or NULL when it is not wanted (the input image without dx) */
  float *din[2] = {NULL, NULL};
  for (int k = 0; k < l->n_inputs; k++)
    if (s->gin[k] >= 0 && (l->inputs[k] != 0 || want_dx)) din[k] = x->slot[s->gin[k]];
  const int acc0 = s->gmode[0] == G_ACC, acc1 = s->gmode[1] == G_ACC;
  tk_status st = TK_OK;
  switch (l->op) {
  case TK_OP_CONV2D:
  case TK_OP_LINEAR: {
    tk_kernel *k = s->k;
    if (!k->v->bwd_input || !k->v->bwd_weight)
      return tk_fail(TK_ERR_UNSUPPORTED, "layer %d (%s): the engine was built for inference only (no gradient "
                                         "kernels; compile with training = 1)", i, l->name);
    if (folded && s->fold_on) { /* dy is the batchnorm's output gradient, masked by its ReLU in the kernel */
      const step *b = &x->steps[s->fold_with];
      if (din[0]) st = kernel_dx(x, s, dy, b->relu_fused ? b->out : NULL, din[0], n, 1);
      if (st != TK_OK) return tk_fail_prefix(st, "layer %d (%s)", i, l->name);
      break;
    }
    float *dw = param_grads && l->weight >= 0 ? grads[l->weight] : NULL;
    float *db = param_grads && l->bias >= 0 ? grads[l->bias] : NULL;
    if (dw) st = k->v->bwd_weight(k, s->in[0], dy, dw, db, n);
    else if (db) tk_ops_channel_sum(dy, db, n, l->out.c, l->out.h * l->out.w);
    if (st == TK_OK && din[0]) st = kernel_dx(x, s, dy, NULL, din[0], n, 0);
    if (st != TK_OK) return tk_fail_prefix(st, "layer %d (%s)", i, l->name);
    break;
  }
  case TK_OP_BATCHNORM: {
    if (folded && s->fold_on) break; /* the layer before took dy as it is */
    float *dg = param_grads ? grads[l->weight] : NULL, *dbeta = param_grads ? grads[l->bias] : NULL;
    tk_ops_bn_bwd(s->in[0], dy, m->tensors[l->weight].data, s->mean, s->invstd, s->a, s->b, s->relu_fused,
                  x->last_bn == TK_BN_TRAIN, din[0], dg, dbeta, n, c, hw, acc0);
    break;
  }
  case TK_OP_RELU:
    if (!s->folded && din[0]) tk_ops_relu_bwd(s->out, dy, din[0], count, acc0);
    break; /* folded: the producer masks the gradient, which already sits in its buffer */
  case TK_OP_MAXPOOL:
    if (din[0]) tk_ops_maxpool_bwd(&s->pool, dy, s->argmax, din[0], n, acc0);
    break;
  case TK_OP_AVGPOOL:
    if (din[0]) tk_ops_avgpool_bwd(&s->pool, dy, din[0], n, acc0);
    break;
  case TK_OP_GLOBALAVGPOOL:
    if (din[0]) tk_ops_gap_bwd(dy, din[0], n, c, hw, acc0);
    break;
  case TK_OP_ADD:
    tk_ops_add_bwd(s->relu_fused ? s->out : NULL, dy, din[0], acc0, din[1], acc1, count);
    break;
  case TK_OP_FLATTEN:
    if (din[0] && s->gmode[0] != G_INPLACE) {
      if (acc0) tk_ops_accumulate(din[0], dy, count);
      else memcpy(din[0], dy, count * sizeof(float));
    }
    break;
  case TK_OP_SCALE: {
    float *dw = param_grads ? grads[l->weight] : NULL;
    tk_ops_scale_bwd(s->in[0], dy, m->tensors[l->weight].data, din[0], dw, n, c, hw, acc0);
    break;
  }
  case TK_OP_COUNT: return tk_fail(TK_ERR_INTERNAL, "layer %d (%s): unknown op", i, l->name);
  }
  return TK_OK;
}

static tk_status exec_backward(tk_engine *e, const float *dlogits, float *dx, int param_grads) {
  exec_engine *x = (exec_engine *)e;
  tk_model *m = e->m;
  const int n = x->last_n, L = m->n_layers;
  if (n < 1) return tk_fail(TK_ERR_ARG, "%s engine: backward without a forward", e->v->name);
  if (param_grads && !e->grads) return tk_fail(TK_ERR_INTERNAL, "%s engine: no gradient buffers", e->v->name);
  int old = threads_enter(x);
  tk_status st = TK_OK;
  int folded = x->last_folded;
  if (folded && x->fold_stale) st = folds_refresh(x); /* a sync(0) between forward and backward */
  if (folded && param_grads && st == TK_OK) {
    /* parameter gradients need the folded layers' own outputs (the batchnorms' inputs): run
     * the folded pairs again unfolded, then go the unfolded way.  The batchnorms run again
     * too: their backward recomputes the fused ReLU's mask from their input, which must then
     * be the mask of the output the layers after them see (the folded output can differ
     * from the unfolded one in the last bit, and so in the sign of a value near 0). */
    for (int i = 0; i < L && st == TK_OK; i++)
      if (x->steps[i].fold_on) st = step_fwd(x, i, n, TK_BN_EVAL, 0);
    x->last_folded = folded = 0;
  }
  if (param_grads && st == TK_OK)
    for (int t = 0; t < m->n_tensors; t++)
      if (e->grads[t] && x->zero_grad[t]) memset(e->grads[t], 0, (size_t)m->tensors[t].numel * sizeof(float));
  if (st == TK_OK) memcpy(x->slot[x->steps[L - 1].gout], dlogits, (size_t)n * m->classes * sizeof(float));
  for (int i = L - 1; i >= 0 && st == TK_OK; i--) {
    step *s = &x->steps[i];
    if (s->gout < 0) continue;
    if (!x->profile) {
      st = step_bwd(x, i, n, dx != NULL, param_grads, folded);
      continue;
    }
    double t0 = tk_now();
    st = step_bwd(x, i, n, dx != NULL, param_grads, folded);
    s->t_bwd += tk_now() - t0;
    s->n_bwd++;
  }
  if (st == TK_OK && dx) {
    if (x->grad0 >= 0) tk_ops_normalize_bwd(x->slot[x->grad0], m->std, dx, n, m->in_c, m->in_h * m->in_w, 0);
    else memset(dx, 0, (size_t)n * m->in_c * m->in_h * m->in_w * sizeof(float));
  }
  threads_leave(x, old);
  return st;
}

/* ---- sync, destroy, create --------------------------------------------------------------------------- */

static tk_status exec_sync(tk_engine *e, int masks_changed) {
  exec_engine *x = (exec_engine *)e;
  int old = threads_enter(x);
  tk_status st = TK_OK;
  if (masks_changed) { /* the plan depends on the masks: plan and build again */
    kernels_free(x);
    x->last_n = 0;
    if ((st = kernels_make(x)) != TK_OK) goto done;
    size_t need = kernels_scratch(x);
    if (need > x->kscratch_bytes) {
      free(x->kscratch_extra);
      if (!(x->kscratch_extra = tk_alloc_aligned(need))) {
        st = TK_ERR_NOMEM;
        goto done;
      }
      x->kscratch = x->kscratch_extra;
      x->kscratch_bytes = need;
    }
  }
  st = kernels_bind_and_update(x);
  if (masks_changed) folds_bind(x); /* new kernels */
  x->fold_stale = 1;                 /* new values */
  x->gen_values++;
  x->gen_masks += masks_changed != 0;
done:
  threads_leave(x, old);
  return st;
}

static void exec_destroy(tk_engine *e) {
  exec_engine *x = (exec_engine *)e;
  if (!x) return;
  kernels_free(x);
  free(x->steps);
  free(x->act);
  free(x->slot);
  free(x->zero_grad);
  free(x->readers);
  free(x->alias);
  free(x->arena);
  free(x->kscratch_extra);
  tk_engine_free_grads(e);
  free(x);
}

static const tk_engine_vtbl g_compiled_vtbl = {"compiled", exec_forward, exec_backward, exec_sync, exec_destroy};
static const tk_engine_vtbl g_dense_vtbl = {"dense", exec_forward, exec_backward, exec_sync, exec_destroy};

static tk_status exec_create(tk_model *m, int max_batch, const tk_compile_opts *opts, int dense_only,
                             tk_engine **out) {
  *out = NULL;
  if (max_batch < 1) return tk_fail(TK_ERR_ARG, "max_batch: %d must be at least 1", max_batch);
  if (!m->values) return tk_fail(TK_ERR_ARG, "engine: the model has no inferred shapes (run tk_model_infer)");
  exec_engine *x = tk_calloc(1, sizeof *x);
  if (!x) return TK_ERR_NOMEM;
  x->base.v = dense_only ? &g_dense_vtbl : &g_compiled_vtbl;
  x->base.m = m;
  x->base.max_batch = max_batch;
  x->dense_only = dense_only;
  x->n_values = m->n_layers + 1;
  x->grad0 = -1;
  if (opts) {
    x->opts = *opts;
  } else {
    tk_compile_opts_default(&x->opts);
    x->opts.training = 1; /* engines made through tk_engine_create serve attacks and training */
  }
  if (x->opts.batch <= 0) x->opts.batch = max_batch;
#ifdef _OPENMP
  x->base.threads = x->opts.threads > 0 ? x->opts.threads : omp_get_max_threads();
#else
  x->base.threads = 1;
#endif
  x->opts.threads = x->base.threads;
  tk_ops_calibrate(x->base.threads);
  int old = threads_enter(x);
  tk_status st = TK_ERR_NOMEM;
  const char *fe = getenv("TICKET_FOLD_BN");
  x->fold_env = !(fe && !strcmp(fe, "0"));
  const char *fu = getenv("TICKET_FUSE");
  x->fuse_env = !(fu && !strcmp(fu, "0"));
  if (!(x->steps = tk_calloc((size_t)m->n_layers, sizeof(step)))) goto fail;
  for (int i = 0; i < m->n_layers; i++) x->steps[i].l = &m->layers[i];
  if ((st = plan_graph(x)) != TK_OK) goto fail;
  if ((st = kernels_make(x)) != TK_OK) goto fail;
  if ((st = plan_memory(x)) != TK_OK) goto fail;
  if ((st = kernels_bind_and_update(x)) != TK_OK) goto fail;
  folds_bind(x);
  if ((st = tk_engine_alloc_grads(&x->base)) != TK_OK) goto fail;
  threads_leave(x, old);
  *out = &x->base;
  return TK_OK;
fail:
  threads_leave(x, old);
  exec_destroy(&x->base);
  return st;
}

tk_status tk_compiled_engine_create(tk_model *m, int max_batch, const tk_compile_opts *opts, tk_engine **out) {
  return exec_create(m, max_batch, opts, 0, out);
}

tk_status tk_dense_engine_create(tk_model *m, int max_batch, tk_engine **out) {
  if (!tk_dense_available())
    return tk_fail(TK_ERR_UNSUPPORTED, "dense engine: this build has no oneDNN (configured with -DTICKET_DNNL=OFF)");
  return exec_create(m, max_batch, NULL, 1, out);
}

tk_status tk_exec_replicate(const tk_engine *e, int max_batch, int threads, tk_engine **out) {
  *out = NULL;
  const exec_engine *x = as_exec(e);
  if (!x) return tk_fail(TK_ERR_ARG, "replicate: %s engine is not an executor engine", e ? e->v->name : "no");
  if (threads < 1) return tk_fail(TK_ERR_ARG, "replicate: %d threads", threads);
  tk_compile_opts o = x->opts;
  o.batch = max_batch, o.threads = threads;
  return exec_create(e->m, max_batch, &o, x->dense_only, out);
}

int tk_exec_generation(const tk_engine *e, unsigned long *values, unsigned long *masks) {
  const exec_engine *x = as_exec(e);
  if (!x) return 0;
  *values = x->gen_values, *masks = x->gen_masks;
  return 1;
}

/* ---- exec.h --------------------------------------------------------------------------------------- */

int tk_exec_is_exec(const tk_engine *e) { return as_exec(e) != NULL; }

tk_variant tk_exec_layer_variant(const tk_engine *e, int layer) {
  const exec_engine *x = as_exec(e);
  if (!x || layer < 0 || layer >= e->m->n_layers) return TK_VARIANT_NONE;
  return x->steps[layer].k ? x->steps[layer].k->variant : TK_VARIANT_NONE;
}

const char *tk_exec_how(const tk_engine *e) {
  const exec_engine *x = as_exec(e);
  return x ? x->how : "not an executor engine";
}

int tk_exec_bn_folds(const tk_engine *e) {
  const exec_engine *x = as_exec(e);
  return x ? x->n_folds : 0;
}

int tk_exec_res_fused(const tk_engine *e) {
  const exec_engine *x = as_exec(e);
  return x ? x->n_res_fused : 0;
}

size_t tk_exec_arena_bytes(const tk_engine *e) {
  const exec_engine *x = as_exec(e);
  return x ? x->arena_bytes + (x->kscratch_extra ? x->kscratch_bytes : 0) : 0;
}

void tk_exec_profile_enable(tk_engine *e, int on) {
  exec_engine *x = as_exec(e);
  if (!x) return;
  x->profile = on;
  for (int i = 0; i < e->m->n_layers; i++) {
    step *s = &x->steps[i];
    s->t_fwd = s->t_bwd = 0;
    s->n_fwd = s->n_bwd = 0;
  }
}

int tk_exec_profile(const tk_engine *e, tk_exec_layer_time *out, int cap) {
  const exec_engine *x = as_exec(e);
  if (!x) return 0;
  for (int i = 0; i < e->m->n_layers && i < cap; i++) {
    const step *s = &x->steps[i];
    out[i] = (tk_exec_layer_time){s->t_fwd, s->t_bwd, s->n_fwd, s->n_bwd};
  }
  return e->m->n_layers;
}
