/* sparse.c -- tk_sparse_build: for every layer the plan gives a generated variant, build the
 * pattern tables from the mask, emit the kernel source, compile it (parallel clang, on-disk
 * cache), load it into one LLJIT, and wrap it as a tk_kernel.  Also the EMPTY kernel of a
 * fully pruned layer (bias only).
 *
 * Threads: the generated functions are single-threaded over a row range; this file owns the
 * OpenMP regions.  With at least as many images as threads each thread takes whole images
 * with its own scratch (no barriers); otherwise the threads split the rows of every image,
 * balanced by non-zero count.  A kernel must not be called concurrently with itself.
 *
 * Folding (compile.h, fold): an eval-mode batchnorm y = scale*z + shift folded into the layer
 * is a second packed value array (wvf, and wvtf in the transposed order) and a folded bias
 * (bf), made by fold() from the model's weights; the folded calls pass them instead of wv /
 * wvt / the bias, with the kargs' relu flag (every forward form stores max(., 0)) and mask
 * pointer (prep_dy / prep_dyb zero dy where the folded output is <= 0): runtime arguments,
 * so no extra code is compiled.  Value-baked kernels have their values compiled in and do
 * not fold (their vtable has no fold entries). */
#include "cache.h"
#include "compile.h"
#include "emit.h"
#include "jit.h"
#include "toolchain.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- the kernel object -------------------------------------------------------------------- */

typedef struct {
  float *xq, *col, *dz, *z, *dwv; /* col: im2col forward input (NULL when not IM2COL) */
  float *xb, *dzb;                /* batch-vectorised grids (vec_batch only) */
  float *zb;                      /* batch-vectorised: partial sums carried between channel chunks */
} scratch_set;

/* The tap copies (im2col's col) of one build's table kernels, shared: the kernels of an engine
 * run one at a time, and each forward rewrites every lane of col it reads before it reads it
 * (prep_col; the lanes past OH*OW, which it does not write, only reach outputs that are
 * dropped).  One buffer per thread set, the largest any kernel needs: the copies of one layer
 * after another stay in L2 instead of each layer's own copies coming from L3 or memory
 * (ResNet-18's eleven im2col layers had 3.7 MB of them at batch 1). */
typedef struct {
  int refs;
  int64_t per;  /* floats per thread set */
  float *buf;   /* threads x per, 64-byte aligned */
} col_pool;

static void col_pool_release(col_pool *p) {
  if (!p || --p->refs > 0) return;
  free(p->buf);
  free(p);
}

/* One image over several threads, or on one.  A call with fewer images than threads splits
 * every image's rows between them: one OpenMP region and two barriers per image.  Where idle
 * threads sleep (OMP_WAIT_POLICY=PASSIVE) each wakes them: about 40 us per region and 18 per
 * barrier on a 2-core EPYC host, against about 1 with libgomp's default spinning -- more than
 * half a small layer's whole forward at batch 1 (resnet18 s=0.9, 2 threads, passive: 3.3 ms
 * against 2.5 on one thread).  So each kernel measures: calls with fewer images than threads
 * alternate between the split and one thread, SPLIT_TRIES of each, and the faster is kept
 * (the fastest call of each: a preempted call is an outlier, not a measure) for the next
 * SPLIT_KEEP such calls, then measured again (a neighbour that took the other core for a
 * while, or came back).  Both compute every output the same way: the results are identical.
 * TICKET_SPLIT=1 always splits, TICKET_SPLIT=0 never (tests, A/B runs). */
enum { SPLIT_TRIES = 4, SPLIT_KEEP = 1024 };
typedef struct {
  double best[2]; /* the fastest call of this round: [0] one thread, [1] split */
  int tries[2];
  int choice; /* -1: measuring; 0: one thread; 1: split */
  int fixed;  /* TICKET_SPLIT set: choice never changes */
  int kept;   /* calls since the choice */
} split_pick;

static void split_init(split_pick *s) {
  const char *e = getenv("TICKET_SPLIT");
  memset(s, 0, sizeof *s);
  s->best[0] = s->best[1] = INFINITY;
  s->fixed = e && *e;
  s->choice = s->fixed ? atoi(e) != 0 : -1;
}

/* this call's way: 1 split, 0 one thread (measuring: the split first, then in turns) */
static int split_mode(const split_pick *s) { return s->choice >= 0 ? s->choice : s->tries[1] <= s->tries[0]; }

static void split_done(split_pick *s, int mode, double seconds) {
  if (s->fixed) return;
  if (s->choice >= 0) {
    if (++s->kept >= SPLIT_KEEP) {
      s->choice = -1, s->kept = 0;
      s->tries[0] = s->tries[1] = 0;
      s->best[0] = s->best[1] = INFINITY;
    }
    return;
  }
  if (seconds < s->best[mode]) s->best[mode] = seconds;
  if (++s->tries[mode] >= SPLIT_TRIES && s->tries[1 - mode] >= SPLIT_TRIES) s->choice = s->best[1] < s->best[0];
}

typedef struct sparse_kernel {
  tk_kernel base;
  tk_geom g;
  tk_tables t;
  int training, threads;
  tk_jit *jit;
  tk_kfn prep_x, prep_dy, prep_col, fwd, fwd_direct, bwd_input, bwd_weight;
  int vb; /* conv passes vectorised over the batch, TK_VB_* bits: lanes are 16 images (conv_batch.c.in) */
  tk_kfn prep_xb, prep_dyb, fwd_b, bwd_input_b, bwd_weight_b;
  /* the batch forms' row pointers per channel chunk (conv_batch.c.in: chunk c of row r starts at
   * rpb[r*nchunks + c]), or the plain tables' rp / rpt when the pass is not chunked */
  int32_t *rpb_f, *rpb_t;
  float *wv, *wvt, *baked; /* packed values; transposed order; values baked into the code */
  float *wvf, *wvtf, *bf;  /* folded values (forward and transposed order), folded bias (O) */
  int folded;              /* wvf/wvtf/bf hold a fold of the current values */
  /* TK_VB_BWD_T: the input gradient is the forward of the transposed layer (transposed_model):
   * kernel tk (layer 0 of model tm, owned), whose packed entry j is this layer's weight element
   * tpos[j]; update() and fold() fill its wv and wvf from this layer's weights */
  struct sparse_kernel *tk;
  tk_model *tm;
  int64_t *tpos;
  int nsets;
  split_pick fsplit, bsplit; /* forward, input gradient: calls of fewer images than threads */
  col_pool *pool; /* col from the build's shared pool (NULL: in the arena) */
  scratch_set *sets;
  float *arena;
} sparse_kernel;

static const tk_layer *klayer(const tk_kernel *k) { return &k->m->layers[k->layer]; }
static const float *kbias(const tk_kernel *k) {
  int b = klayer(k)->bias;
  return b >= 0 ? k->m->tensors[b].data : NULL;
}

static int want_threads(const sparse_kernel *k) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  int t = k->threads > 0 ? k->threads : omp_get_max_threads();
  return t < 1 ? 1 : t > k->nsets ? k->nsets : t;
#else
  (void)k;
  return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/* First row r in [0, rows] whose cumulative cost reaches `target`; cost(r) = nz(r)*a + c. */
static int split_rows(const int32_t *rp, int rows, int stride, double a, double c, double target) {
  int lo = 0, hi = rows;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    double cost = (double)rp[(int64_t)mid * stride] * a + (double)mid * c;
    if (cost < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static void row_range(const int32_t *rp, int rows, int stride, double a, double c, int t, int T, int *r0, int *r1) {
  double total = (double)rp[(int64_t)rows * stride] * a + (double)rows * c;
  *r0 = t == 0 ? 0 : split_rows(rp, rows, stride, a, c, total * t / T);
  *r1 = t == T - 1 ? rows : split_rows(rp, rows, stride, a, c, total * (t + 1) / T);
}

/* row_range over the output channels, by their non-zeros: rpc per chunk, or with a
 * chunk-major table (CM) rp, whose counts are still per output channel */
static void out_rows(const sparse_kernel *k, double a, double c, int t, int T, int *r0, int *r1) {
  if (k->g.CM) row_range(k->t.rp, k->g.O, 1, a, c, t, T, r0, r1);
  else row_range(k->t.rpc, k->g.O, k->g.NCH, a, c, t, T, r0, r1);
}

static tk_status check_n(const tk_kernel *k, int n) {
  if (n < 1 || n > k->max_batch)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): batch %d outside 1..%d", k->layer, klayer(k)->name, n, k->max_batch);
  return TK_OK;
}

/* ---- conv2d ------------------------------------------------------------------------------ */

/* The forward's input: the grid (prep_x into xq) or the tap or shifted copies (prep_col into
 * col); x taken as 0 where mask <= 0 when mask is not NULL (x's layout).  Nothing with XL: the
 * forward copies each band itself (fwd_args). */
static void fwd_prep(const sparse_kernel *k, const scratch_set *s, const float *x, const float *mask, int c0,
                     int c1) {
  if (k->g.XL) return;
  const int col = k->g.IM2COL || k->g.XS;
  tk_kargs a = {.src = x, .dst = col ? s->col : s->xq, .mask = mask, .buf = s->xq}; /* im2col: via the grid */
  (col ? k->prep_col : k->prep_x)(&a, c0, c1);
}

/* The values, bias and epilogue of one forward call: the layer's own, or a fold's; res: NULL,
 * or added to the output before the ReLU (y's layout for the whole batch; may be y: dx summed
 * into) -- table forms only (TK_KCAP_*). */
typedef struct {
  const float *w, *bias;
  int relu;
  const float *res;
} fwd_vals;

/* res_i: the residual of this call's outputs y (fv->res at y's image), or NULL; x, mask: this
 * image's input and mask (fwd_prep's), read by the forward itself with XL (band by band into
 * the calling thread's col; with prefetches when the call has n > 1 images) */
static tk_kargs fwd_args(const sparse_kernel *k, const scratch_set *in, const scratch_set *mine, const float *x,
                         const float *mask, float *y, const float *res_i, const fwd_vals *fv, int n) {
  tk_kargs f = {.src = k->g.IM2COL || k->g.XS ? in->col : in->xq, .dst = y, .w = fv->w, .rp = k->t.rpc,
                .off = k->t.offc, .bias = fv->bias, .z = mine->z, .relu = fv->relu, .res = res_i};
  if (k->g.XL) f.src = x, f.mask = mask, f.buf = mine->col, f.hint = n > 1;
  f.pf = n == 1; /* the table's only pass in this call (n > 1: it stays in L2 for the next images) */
  return f;
}

/* One image of a call of n, one thread: prep and all rows. */
static void conv_fwd_image(sparse_kernel *k, const scratch_set *s, const float *x, const float *mask, float *y,
                           const float *res_i, const fwd_vals *fv, int n) {
  fwd_prep(k, s, x, mask, 0, k->g.I);
  tk_kargs f = fwd_args(k, s, s, x, mask, y, res_i, fv, n);
  k->fwd(&f, 0, k->g.O);
}

/* ---- conv2d vectorised over the batch: blocks of 16 images, whole blocks per thread ---------- */

static int batch_threads(const sparse_kernel *k, int nblk) {
  int T = want_threads(k);
  return T > nblk ? nblk : T;
}

/* One pass of a batch-vectorised kernel over n images, blocks of 16 whole per thread: `prep`
 * moves rows [0, prep_rows) of a block of src (image stride ss) into the thread's grid (xb, or
 * dzb when from_dy; masked by `mask`, src's layout, when not NULL), then `run` computes rows
 * [0, rows) into dst (image stride ds), plus res (dst's layout) when not NULL, relu'd when
 * `relu`. */
static void batch_pass(sparse_kernel *k, int n, int from_dy, const float *src, const float *mask, int64_t ss,
                       int prep_rows, tk_kfn prep, float *dst, const float *res, int64_t ds, int rows, tk_kfn run,
                       const float *w, const int32_t *rp, const int32_t *off, const float *bias, int relu) {
  int nblk = (n + 15) / 16, T = batch_threads(k, nblk);
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (T > 1)
#endif
  {
    int t = T > 1 ? thread_id() : 0;
    float *grid = from_dy ? k->sets[t].dzb : k->sets[t].xb;
    for (int b = nblk * t / T; b < nblk * (t + 1) / T; b++) {
      int nb = n - b * 16 < 16 ? n - b * 16 : 16;
      tk_kargs a = {.src = src + b * 16 * ss, .dst = grid, .nb = nb, .mask = mask ? mask + b * 16 * ss : NULL};
      prep(&a, 0, prep_rows);
      tk_kargs f = {.src = grid, .dst = dst + b * 16 * ds, .w = w, .rp = rp, .off = off, .bias = bias,
                    .z = k->sets[t].zb, .nb = nb, .relu = relu, .res = res ? res + b * 16 * ds : NULL};
      run(&f, 0, rows);
    }
  }
}

static void conv_fwd_b(sparse_kernel *k, const float *x, const float *mask, float *y, int n, const fwd_vals *fv) {
  const tk_geom *g = &k->g;
  int64_t xs = (int64_t)g->I * g->H * g->W, ys = (int64_t)g->O * g->OH * g->OW;
  batch_pass(k, n, 0, x, mask, xs, g->I, k->prep_xb, y, fv->res, ys, g->O, k->fwd_b, fv->w, k->rpb_f, k->t.off,
             fv->bias, fv->relu);
}

/* dx = the input gradient, plus dx's old values when acc */
static void conv_bwd_input_b(sparse_kernel *k, const float *dy, const float *mask, float *dx, int acc, int n,
                             const float *wt) {
  const tk_geom *g = &k->g;
  int64_t xs = (int64_t)g->I * g->H * g->W, ys = (int64_t)g->O * g->OH * g->OW;
  batch_pass(k, n, 1, dy, mask, ys, g->O, k->prep_dyb, dx, acc ? dx : NULL, xs, g->I, k->bwd_input_b, wt, k->rpb_t,
             k->t.offt, NULL, 0);
}

/* the packed weight gradient summed over the images into sets[0].dwv */
static void conv_bwd_weight_b(sparse_kernel *k, const float *x, const float *dy, int n) {
  const tk_geom *g = &k->g;
  int64_t xs = (int64_t)g->I * g->H * g->W, ys = (int64_t)g->O * g->OH * g->OW, nnz = k->t.nnz;
  int nblk = (n + 15) / 16, T = batch_threads(k, nblk);
  for (int t = 0; t < T; t++) memset(k->sets[t].dwv, 0, (size_t)(nnz ? nnz : 1) * sizeof(float));
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (T > 1)
#endif
  {
    int t = T > 1 ? thread_id() : 0;
    for (int b = nblk * t / T; b < nblk * (t + 1) / T; b++) {
      int nb = n - b * 16 < 16 ? n - b * 16 : 16;
      tk_kargs a = {.src = x + b * 16 * xs, .dst = k->sets[t].xb, .nb = nb};
      k->prep_xb(&a, 0, g->I);
      tk_kargs d = {.src = dy + b * 16 * ys, .dst = k->sets[t].dzb, .nb = nb};
      k->prep_dyb(&d, 0, g->O);
      tk_kargs c = {.src = k->sets[t].xb, .src2 = k->sets[t].dzb, .dst = k->sets[t].dwv, .rp = k->t.rp,
                    .off = k->t.off, .nb = nb};
      k->bwd_weight_b(&c, 0, g->O);
    }
  }
  for (int t = 1; t < T; t++)
    for (int64_t j = 0; j < nnz; j++) k->sets[0].dwv[j] += k->sets[t].dwv[j];
}

/* mask: NULL, or x is taken as 0 where mask <= 0 (x's layout; the transposed layer's forward) */
static void conv_run_fwd(sparse_kernel *k, const float *x, const float *mask, float *y, int n, const fwd_vals *fv) {
  if (k->vb & TK_VB_FWD) {
    conv_fwd_b(k, x, mask, y, n, fv);
    return;
  }
  const tk_geom *g = &k->g;
  int64_t xs = (int64_t)g->I * g->H * g->W, ys = (int64_t)g->O * g->OH * g->OW;
#define MASK_AT(i) (mask ? mask + (i) * xs : NULL)
#define RES_AT(i) (fv->res ? fv->res + (i) * ys : NULL)
  int T = want_threads(k);
  const int split = T > 1 && n < T ? split_mode(&k->fsplit) : 1;
  if (T == 1 || !split) {
    const double t0 = T > 1 ? tk_now() : 0.0; /* one thread by choice: timed for split_pick */
    for (int i = 0; i < n; i++) conv_fwd_image(k, &k->sets[0], x + i * xs, MASK_AT(i), y + i * ys, RES_AT(i), fv, n);
    if (T > 1) split_done(&k->fsplit, 0, tk_now() - t0);
    return;
  }
#ifdef _OPENMP
  if (n >= T) {
#pragma omp parallel num_threads(T)
    {
      int t = thread_id(), nt = omp_get_num_threads();
      for (int i = n * t / nt; i < n * (t + 1) / nt; i++)
        conv_fwd_image(k, &k->sets[t], x + i * xs, MASK_AT(i), y + i * ys, RES_AT(i), fv, n);
    }
    return;
  }
  const double t0 = tk_now();
#pragma omp parallel num_threads(T)
  {
    int t = thread_id(), nt = omp_get_num_threads(), r0, r1;
    out_rows(k, (double)g->FPZ, (double)g->OH * g->OW, t, nt, &r0, &r1);
    for (int i = 0; i < n; i++) {
      fwd_prep(k, &k->sets[0], x + i * xs, MASK_AT(i), g->I * t / nt, g->I * (t + 1) / nt);
#pragma omp barrier
      tk_kargs f = fwd_args(k, &k->sets[0], &k->sets[t], x + i * xs, MASK_AT(i), y + i * ys, RES_AT(i), fv, n);
      k->fwd(&f, r0, r1);
#pragma omp barrier
    }
  }
  split_done(&k->fsplit, 1, tk_now() - t0);
#endif
#undef MASK_AT
#undef RES_AT
}

static tk_status conv_fwd(tk_kernel *kb, const float *x, float *y, int n) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st) return st;
  fwd_vals fv = {k->baked ? k->baked : k->wv, kbias(kb), 0, NULL};
  conv_run_fwd(k, x, NULL, y, n, &fv);
  return TK_OK;
}

/* the folded calls: a fold must be installed */
static tk_status check_folded(const sparse_kernel *k) {
  if (!k->folded)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): folded call without a fold (call fold() after update())", k->base.layer,
                   klayer(&k->base)->name);
  return TK_OK;
}

static tk_status conv_fwd_folded(tk_kernel *kb, const float *x, float *y, int n, int relu) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st || (st = check_folded(k))) return st;
  fwd_vals fv = {k->wvf, k->bf, relu != 0, NULL};
  conv_run_fwd(k, x, NULL, y, n, &fv);
  return TK_OK;
}

/* mask: NULL, or dy is taken as 0 where mask <= 0 (dy's layout) */
static void conv_bwdi_image(sparse_kernel *k, const scratch_set *s, const float *dy, const float *mask, float *dx,
                            const float *wt, int n) {
  const tk_geom *g = &k->g;
  tk_kargs a = {.src = dy, .dst = s->dz, .mask = mask};
  k->prep_dy(&a, 0, g->O);
  tk_kargs b = {.src = s->dz, .dst = dx, .w = wt, .rp = k->t.rpt, .off = k->t.offt, .z = s->z, .pf = n == 1};
  k->bwd_input(&b, 0, g->I);
}

/* acc: dx += the input gradient (the batch form only: TK_KCAP_BWD_ACC) */
static void conv_run_bwd_input(sparse_kernel *k, const float *dy, const float *mask, float *dx, int acc, int n,
                               const float *wt) {
  if (k->vb & TK_VB_BWD_INPUT) {
    conv_bwd_input_b(k, dy, mask, dx, acc, n, wt);
    return;
  }
  TK_ASSERT(!acc);
  const tk_geom *g = &k->g;
  int64_t xs = (int64_t)g->I * g->H * g->W, ys = (int64_t)g->O * g->OH * g->OW;
  int T = want_threads(k);
#define MASK_AT(i) (mask ? mask + (i) * ys : NULL)
  const int split = T > 1 && n < T ? split_mode(&k->bsplit) : 1;
  if (T == 1 || !split) {
    const double t0 = T > 1 ? tk_now() : 0.0; /* one thread by choice: timed for split_pick */
    for (int i = 0; i < n; i++) conv_bwdi_image(k, &k->sets[0], dy + i * ys, MASK_AT(i), dx + i * xs, wt, n);
    if (T > 1) split_done(&k->bsplit, 0, tk_now() - t0);
    return;
  }
#ifdef _OPENMP
  if (n >= T) {
#pragma omp parallel num_threads(T)
    {
      int t = thread_id(), nt = omp_get_num_threads();
      for (int i = n * t / nt; i < n * (t + 1) / nt; i++)
        conv_bwdi_image(k, &k->sets[t], dy + i * ys, MASK_AT(i), dx + i * xs, wt, n);
    }
    return;
  }
  const double t0 = tk_now();
#pragma omp parallel num_threads(T)
  {
    int t = thread_id(), nt = omp_get_num_threads(), r0, r1;
    row_range(k->t.rpt, g->I, g->NPH, (double)g->PZB, (double)g->H * g->W, t, nt, &r0, &r1);
    for (int i = 0; i < n; i++) {
      tk_kargs a = {.src = dy + i * ys, .dst = k->sets[0].dz, .mask = MASK_AT(i)};
      k->prep_dy(&a, g->O * t / nt, g->O * (t + 1) / nt);
#pragma omp barrier
      tk_kargs b = {.src = k->sets[0].dz, .dst = dx + i * xs, .w = wt, .rp = k->t.rpt, .off = k->t.offt,
                    .z = k->sets[t].z, .pf = n == 1};
      k->bwd_input(&b, r0, r1);
#pragma omp barrier
    }
  }
  split_done(&k->bsplit, 1, tk_now() - t0);
#endif
#undef MASK_AT
}

static tk_status check_training(const tk_kernel *kb) {
  if (!((const sparse_kernel *)kb)->training)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): kernel built without gradients (plan with training)", kb->layer,
                   klayer(kb)->name);
  return TK_OK;
}

/* dx (+= when acc) the input gradient of the layer's own values, or of the fold's with dy masked
 * by mask: the transposed layer's forward (TK_VB_BWD_T) or the layer's own input gradient */
static void conv_input_grad(sparse_kernel *k, const float *dy, const float *mask, float *dx, int acc, int n,
                            int folded) {
  if (k->tk) {
    fwd_vals fv = {folded ? k->tk->wvf : k->tk->wv, NULL, 0, acc ? dx : NULL};
    conv_run_fwd(k->tk, dy, mask, dx, n, &fv);
  } else {
    conv_run_bwd_input(k, dy, mask, dx, acc, n, folded ? k->wvtf : k->wvt);
  }
}

static tk_status conv_bwd_input(tk_kernel *kb, const float *dy, float *dx, int n) {
  tk_status st = check_n(kb, n);
  if (st || (st = check_training(kb))) return st;
  conv_input_grad((sparse_kernel *)kb, dy, NULL, dx, 0, n, 0);
  return TK_OK;
}

static tk_status conv_bwd_input_folded(tk_kernel *kb, const float *dy, const float *relu_y, float *dx, int n) {
  tk_status st = check_n(kb, n);
  if (st || (st = check_training(kb)) || (st = check_folded((sparse_kernel *)kb))) return st;
  conv_input_grad((sparse_kernel *)kb, dy, relu_y, dx, 0, n, 1);
  return TK_OK;
}

static tk_status check_cap(const tk_kernel *kb, unsigned cap) {
  if (!(kb->caps & cap))
    return tk_fail(TK_ERR_INTERNAL, "layer %d (%s): kernel without the %s fusion", kb->layer, klayer(kb)->name,
                   cap == TK_KCAP_FWD_RES ? "residual-add" : "summed input gradient");
  return TK_OK;
}

static tk_status conv_fwd_folded_res(tk_kernel *kb, const float *x, const float *res, float *y, int n, int relu) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st || (st = check_folded(k)) || (st = check_cap(kb, TK_KCAP_FWD_RES))) return st;
  fwd_vals fv = {k->wvf, k->bf, relu != 0, res};
  conv_run_fwd(k, x, NULL, y, n, &fv);
  return TK_OK;
}

static tk_status conv_bwd_input_acc(tk_kernel *kb, const float *dy, const float *relu_y, float *dx, int n,
                                    int folded) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st || (st = check_training(kb)) || (folded && (st = check_folded(k))) || (st = check_cap(kb, TK_KCAP_BWD_ACC)))
    return st;
  conv_input_grad(k, dy, relu_y, dx, 1, n, folded);
  return TK_OK;
}

/* The optional calls a table kernel supports: a residual in the forward's store, and the input
 * gradient summed into dx (through the transposed layer's forward, or the batch form) -- where
 * that measured faster than a pass of its own.  The per-image forms read the residual a channel
 * row of one image at a time: in resnet18 at batch 128 (ticket bench --layers, TICKET_FUSE=1 / 0
 * alternating, ms per call) the rows-form forwards with the add took 29.3 vs 27.3 + 5.3 (32x32)
 * and 24.5 vs 24.8 + 2.6 (16x16), the transposed 32x32 input gradient 26.7 vs 30.3.  The batch
 * forms read it as 64-byte pieces of 16 images a whole image apart, which the prefetchers do
 * not follow; with a software prefetch one block ahead (tk_prefetch_block) their summed input
 * gradient gains on input maps up to 16x16 (TICKET_RES_BATCH=1 / 0 alternating: 8x8 16.3 vs
 * 17.9 and 18.3 vs 19.5, stride 2 to 4x4 11.8 vs 13.6 and 12.6 vs 14.4, 16x16 about even) but
 * not on 32x32 (stride 2: 19.0 vs 18.4 and 20.7 vs 19.0), and their forward with the add is
 * even within the noise (8x8: 18.3 vs 18.7, 20.8 vs 20.1), so it keeps the add's own pass.
 * TICKET_RES_BATCH=1 gives every batch form both (A/B runs; the kernel tests check every form). */
static unsigned conv_caps(const sparse_kernel *k) {
  if (k->g.linear || k->base.variant != TK_VARIANT_SPARSE_TABLE) return 0;
  const char *e = getenv("TICKET_RES_BATCH");
  const int batch_too = e && !strcmp(e, "1");
  unsigned caps = 0;
  if (batch_too || !(k->vb & TK_VB_FWD)) caps |= TK_KCAP_FWD_RES;
  const sparse_kernel *t = k->tk;
  if (k->training && ((t && t->base.variant == TK_VARIANT_SPARSE_TABLE && (batch_too || !(t->vb & TK_VB_FWD))) ||
                      ((k->vb & TK_VB_BWD_INPUT) && (batch_too || (int64_t)k->g.H * k->g.W <= 256))))
    caps |= TK_KCAP_BWD_ACC;
  return caps;
}

/* Adds image i's weight gradient into s->dwv. */
static void conv_bwdw_image(sparse_kernel *k, const scratch_set *s, const float *x, const float *dy) {
  const tk_geom *g = &k->g;
  tk_kargs a = {.src = x, .dst = s->xq};
  k->prep_x(&a, 0, g->I);
  tk_kargs b = {.src = dy, .dst = s->dz};
  k->prep_dy(&b, 0, g->O);
  tk_kargs c = {.src = s->xq, .src2 = s->dz, .dst = s->dwv, .rp = k->t.rpc, .off = k->t.off};
  k->bwd_weight(&c, 0, g->O);
}

/* dw (numel) from the packed sums; db = sum of dy over images and positions */
static void finish_bwd_weight(sparse_kernel *k, const float *dwv, const float *dy, float *dw, float *db, int n,
                              int64_t per_o) {
  const tk_tensor *wt = &k->base.m->tensors[klayer(&k->base)->weight];
  memset(dw, 0, (size_t)wt->numel * sizeof *dw);
  for (int64_t j = 0; j < k->t.nnz; j++) dw[k->t.pos[j]] = dwv[j];
  if (!db) return;
  const tk_geom *g = &k->g;
  for (int o = 0; o < g->O; o++) {
    double s = 0;
    for (int i = 0; i < n; i++) {
      const float *d = dy + ((int64_t)i * g->O + o) * per_o;
      for (int64_t p = 0; p < per_o; p++) s += d[p];
    }
    db[o] = (float)s;
  }
}

static tk_status conv_bwd_weight(tk_kernel *kb, const float *x, const float *dy, float *dw, float *db, int n) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st) return st;
  if (!k->training)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): kernel built without gradients (plan with training)", kb->layer,
                   klayer(kb)->name);
  const tk_geom *g = &k->g;
  int64_t xs = (int64_t)g->I * g->H * g->W, ys = (int64_t)g->O * g->OH * g->OW;
  if (k->vb & TK_VB_BWD_WEIGHT) {
    conv_bwd_weight_b(k, x, dy, n);
    finish_bwd_weight(k, k->sets[0].dwv, dy, dw, db, n, (int64_t)g->OH * g->OW);
    return TK_OK;
  }
  int64_t nnz = k->t.nnz;
  int T = want_threads(k);
  for (int t = 0; t < T; t++) memset(k->sets[t].dwv, 0, (size_t)(nnz ? nnz : 1) * sizeof(float));
  if (T == 1) {
    for (int i = 0; i < n; i++) conv_bwdw_image(k, &k->sets[0], x + i * xs, dy + i * ys);
  }
#ifdef _OPENMP
  else if (n >= T) {
#pragma omp parallel num_threads(T)
    {
      int t = thread_id(), nt = omp_get_num_threads();
      for (int i = n * t / nt; i < n * (t + 1) / nt; i++) conv_bwdw_image(k, &k->sets[t], x + i * xs, dy + i * ys);
    }
    for (int t = 1; t < T; t++)
      for (int64_t j = 0; j < nnz; j++) k->sets[0].dwv[j] += k->sets[t].dwv[j];
  } else {
#pragma omp parallel num_threads(T)
    {
      int t = thread_id(), nt = omp_get_num_threads(), r0, r1;
      out_rows(k, (double)g->PZF, 0.0, t, nt, &r0, &r1);
      for (int i = 0; i < n; i++) {
        tk_kargs a = {.src = x + i * xs, .dst = k->sets[0].xq};
        k->prep_x(&a, g->I * t / nt, g->I * (t + 1) / nt);
        tk_kargs b = {.src = dy + i * ys, .dst = k->sets[0].dz};
        k->prep_dy(&b, g->O * t / nt, g->O * (t + 1) / nt);
#pragma omp barrier
        tk_kargs c = {.src = k->sets[0].xq, .src2 = k->sets[0].dz, .dst = k->sets[0].dwv, .rp = k->t.rpc,
                      .off = k->t.off};
        k->bwd_weight(&c, r0, r1);
#pragma omp barrier
      }
    }
  }
#endif
  finish_bwd_weight(k, k->sets[0].dwv, dy, dw, db, n, (int64_t)g->OH * g->OW);
  return TK_OK;
}

/* ---- linear: blocks of 16 images -------------------------------------------------------------- */

static void lin_run_fwd(sparse_kernel *k, const float *x, float *y, int n, const fwd_vals *fv) {
  const tk_geom *g = &k->g;
  int nblk = (n + 15) / 16, T = want_threads(k);
  if (T > nblk) T = nblk;
  if (n < 4) { /* a few images: sparse dot products straight from x, no transpose */
    tk_kargs d = {.src = x, .dst = y, .w = fv->w, .rp = k->t.rp, .off = k->t.off, .bias = fv->bias, .nb = n,
                  .relu = fv->relu};
    k->fwd_direct(&d, 0, g->O);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (T > 1)
#endif
  {
    int t = thread_id(), nt = T > 1 ? T : 1;
    for (int b = nblk * t / nt; b < nblk * (t + 1) / nt; b++) {
      int nb = n - b * 16 < 16 ? n - b * 16 : 16;
      tk_kargs a = {.src = x + (int64_t)b * 16 * g->I, .dst = k->sets[t].xq, .nb = nb};
      k->prep_x(&a, 0, g->I);
      tk_kargs f = {.src = k->sets[t].xq, .dst = y + (int64_t)b * 16 * g->O, .w = fv->w, .rp = k->t.rp,
                    .off = k->t.off, .bias = fv->bias, .z = k->sets[t].z, .nb = nb, .relu = fv->relu};
      k->fwd(&f, 0, g->O);
    }
  }
}

static tk_status lin_fwd(tk_kernel *kb, const float *x, float *y, int n) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st) return st;
  fwd_vals fv = {k->wv, kbias(kb), 0, NULL};
  lin_run_fwd(k, x, y, n, &fv);
  return TK_OK;
}

static tk_status lin_fwd_folded(tk_kernel *kb, const float *x, float *y, int n, int relu) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st || (st = check_folded(k))) return st;
  fwd_vals fv = {k->wvf, k->bf, relu != 0, NULL};
  lin_run_fwd(k, x, y, n, &fv);
  return TK_OK;
}

static void lin_run_bwd_input(sparse_kernel *k, const float *dy, const float *mask, float *dx, int n,
                              const float *wt) {
  const tk_geom *g = &k->g;
  int nblk = (n + 15) / 16, T = want_threads(k);
  if (T > nblk) T = nblk;
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (T > 1)
#endif
  {
    int t = thread_id(), nt = T > 1 ? T : 1;
    for (int b = nblk * t / nt; b < nblk * (t + 1) / nt; b++) {
      int nb = n - b * 16 < 16 ? n - b * 16 : 16;
      tk_kargs a = {.src = dy + (int64_t)b * 16 * g->O, .dst = k->sets[t].dz, .nb = nb,
                    .mask = mask ? mask + (int64_t)b * 16 * g->O : NULL};
      k->prep_dy(&a, 0, g->O);
      tk_kargs f = {.src = k->sets[t].dz, .dst = dx + (int64_t)b * 16 * g->I, .w = wt, .rp = k->t.rpt,
                    .off = k->t.offt, .z = k->sets[t].z, .nb = nb};
      k->bwd_input(&f, 0, g->I);
    }
  }
}

static tk_status lin_bwd_input(tk_kernel *kb, const float *dy, float *dx, int n) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st || (st = check_training(kb))) return st;
  lin_run_bwd_input(k, dy, NULL, dx, n, k->wvt);
  return TK_OK;
}

static tk_status lin_bwd_input_folded(tk_kernel *kb, const float *dy, const float *relu_y, float *dx, int n) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st || (st = check_training(kb)) || (st = check_folded(k))) return st;
  lin_run_bwd_input(k, dy, relu_y, dx, n, k->wvtf);
  return TK_OK;
}

static tk_status lin_bwd_weight(tk_kernel *kb, const float *x, const float *dy, float *dw, float *db, int n) {
  sparse_kernel *k = (sparse_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st) return st;
  if (!k->training)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): kernel built without gradients (plan with training)", kb->layer,
                   klayer(kb)->name);
  const tk_geom *g = &k->g;
  int64_t nnz = k->t.nnz;
  int nblk = (n + 15) / 16, T = want_threads(k);
  if (T > nblk) T = nblk;
  for (int t = 0; t < T; t++) memset(k->sets[t].dwv, 0, (size_t)(nnz ? nnz : 1) * sizeof(float));
#ifdef _OPENMP
#pragma omp parallel num_threads(T) if (T > 1)
#endif
  {
    int t = thread_id(), nt = T > 1 ? T : 1;
    for (int b = nblk * t / nt; b < nblk * (t + 1) / nt; b++) {
      int nb = n - b * 16 < 16 ? n - b * 16 : 16;
      tk_kargs a = {.src = x + (int64_t)b * 16 * g->I, .dst = k->sets[t].xq, .nb = nb};
      k->prep_x(&a, 0, g->I);
      tk_kargs d = {.src = dy + (int64_t)b * 16 * g->O, .dst = k->sets[t].dz, .nb = nb};
      k->prep_dy(&d, 0, g->O);
      tk_kargs c = {.src = k->sets[t].xq, .src2 = k->sets[t].dz, .dst = k->sets[t].dwv, .rp = k->t.rp,
                    .off = k->t.off, .nb = nb};
      k->bwd_weight(&c, 0, g->O);
    }
  }
  for (int t = 1; t < T; t++)
    for (int64_t j = 0; j < nnz; j++) k->sets[0].dwv[j] += k->sets[t].dwv[j];
  finish_bwd_weight(k, k->sets[0].dwv, dy, dw, db, n, 1);
  return TK_OK;
}

/* ---- shared: values, destroy ---------------------------------------------------------------- */

static tk_status sk_update(tk_kernel *kb) {
  sparse_kernel *k = (sparse_kernel *)kb;
  const tk_tensor *wt = &kb->m->tensors[klayer(kb)->weight];
  if (k->baked) {
    for (int64_t j = 0; j < k->t.nnz; j++)
      if (k->baked[j] != wt->data[k->t.pos[j]])
        return tk_fail(TK_ERR_UNSUPPORTED,
                       "layer %d (%s): weights changed but the value-baked kernel has them compiled in (rebuild, or "
                       "plan without value baking)",
                       kb->layer, klayer(kb)->name);
  }
  for (int64_t j = 0; j < k->t.nnz; j++) k->wv[j] = wt->data[k->t.pos[j]];
  if (k->wvt)
    for (int64_t q = 0; q < k->t.nnz; q++) k->wvt[q] = k->wv[k->t.perm[q]];
  if (k->tk) {
    for (int64_t q = 0; q < k->tk->t.nnz; q++) k->tk->wv[q] = wt->data[k->tpos[q]];
    k->tk->folded = 0;
  }
  k->folded = 0;
  return TK_OK;
}

/* W' = W*scale[o] in the packed orders, b' = b*scale + shift (compile.h) */
static tk_status sk_fold(tk_kernel *kb, const float *scale, const float *shift) {
  sparse_kernel *k = (sparse_kernel *)kb;
  k->folded = 0;
  if (!scale) return TK_OK;
  const tk_tensor *wt = &kb->m->tensors[klayer(kb)->weight];
  const float *bias = kbias(kb);
  const int64_t per_o = wt->numel / k->g.O; /* packed index j -> output channel pos[j] / per_o */
  for (int64_t j = 0; j < k->t.nnz; j++) k->wvf[j] = wt->data[k->t.pos[j]] * scale[k->t.pos[j] / per_o];
  if (k->wvtf)
    for (int64_t q = 0; q < k->t.nnz; q++) k->wvtf[q] = k->wvf[k->t.perm[q]];
  if (k->tk) /* the same products as wvf's, in the transposed layer's order */
    for (int64_t q = 0; q < k->tk->t.nnz; q++) k->tk->wvf[q] = wt->data[k->tpos[q]] * scale[k->tpos[q] / per_o];
  for (int o = 0; o < k->g.O; o++) k->bf[o] = (bias ? bias[o] : 0.0f) * scale[o] + shift[o];
  k->folded = 1;
  return TK_OK;
}

static void sk_destroy(tk_kernel *kb) {
  if (!kb) return;
  sparse_kernel *k = (sparse_kernel *)kb;
  if (k->tk) sk_destroy(&k->tk->base);
  tk_model_free(k->tm);
  free(k->tpos);
  if (k->rpb_f != k->t.rp) free(k->rpb_f);
  if (k->rpb_t != k->t.rpt) free(k->rpb_t);
  tk_tables_free(&k->t);
  free(k->wv);
  free(k->wvt);
  free(k->baked);
  free(k->wvf);
  free(k->wvtf);
  free(k->bf);
  free(k->sets);
  free(k->arena);
  col_pool_release(k->pool);
  tk_jit_release(k->jit);
  free(k);
}

static const tk_kernel_vtbl conv_vtbl = {conv_fwd,   conv_bwd_input,  conv_bwd_weight,      sk_update,
                                         sk_destroy, sk_fold,         conv_fwd_folded,      conv_bwd_input_folded,
                                         conv_fwd_folded_res, conv_bwd_input_acc};
static const tk_kernel_vtbl baked_vtbl = {conv_fwd, conv_bwd_input, conv_bwd_weight, sk_update, sk_destroy,
                                          NULL,     NULL,           NULL,            NULL, NULL}; /* values compiled in: no fold */
static const tk_kernel_vtbl lin_vtbl = {lin_fwd, lin_bwd_input, lin_bwd_weight,       sk_update, sk_destroy,
                                        sk_fold, lin_fwd_folded, lin_bwd_input_folded, NULL,     NULL};

/* ---- the EMPTY kernel: every weight pruned ---------------------------------------------------- */

typedef struct {
  tk_kernel base;
  float *bf;  /* folded bias (O): the folded output is relu?(bf) */
  int folded;
} empty_kernel;

/* y = relu?(b) per output channel (b NULL: 0) */
static void empty_fill(const tk_kernel *k, const float *b, int relu, float *y, int n) {
  const tk_layer *l = klayer(k);
  int64_t per = (int64_t)l->out.h * l->out.w;
  for (int i = 0; i < n; i++)
    for (int o = 0; o < l->out.c; o++) {
      float *yo = y + ((int64_t)i * l->out.c + o) * per, v = b ? b[o] : 0.0f;
      if (relu) v = v <= 0.0f ? 0.0f : v;
      for (int64_t p = 0; p < per; p++) yo[p] = v;
    }
}

static tk_status empty_fwd(tk_kernel *k, const float *x, float *y, int n) {
  (void)x;
  tk_status st = check_n(k, n);
  if (st) return st;
  empty_fill(k, kbias(k), 0, y, n);
  return TK_OK;
}

static tk_status empty_fold(tk_kernel *kb, const float *scale, const float *shift) {
  empty_kernel *k = (empty_kernel *)kb;
  k->folded = 0;
  if (!scale) return TK_OK;
  const float *b = kbias(kb);
  for (int o = 0; o < klayer(kb)->out.c; o++) k->bf[o] = (b ? b[o] : 0.0f) * scale[o] + shift[o];
  k->folded = 1;
  return TK_OK;
}

static tk_status empty_fwd_folded(tk_kernel *kb, const float *x, float *y, int n, int relu) {
  (void)x;
  empty_kernel *k = (empty_kernel *)kb;
  tk_status st = check_n(kb, n);
  if (st) return st;
  if (!k->folded)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): folded call without a fold (call fold() after update())", kb->layer,
                   klayer(kb)->name);
  empty_fill(kb, k->bf, relu, y, n);
  return TK_OK;
}

static tk_status empty_bwd_input(tk_kernel *k, const float *dy, float *dx, int n) {
  (void)dy;
  tk_status st = check_n(k, n);
  if (st) return st;
  memset(dx, 0, (size_t)n * (size_t)tk_shape_numel(klayer(k)->in) * sizeof *dx);
  return TK_OK;
}

static tk_status empty_bwd_weight(tk_kernel *k, const float *x, const float *dy, float *dw, float *db, int n) {
  (void)x;
  tk_status st = check_n(k, n);
  if (st) return st;
  const tk_layer *l = klayer(k);
  memset(dw, 0, (size_t)k->m->tensors[l->weight].numel * sizeof *dw);
  if (db) {
    int64_t per = (int64_t)l->out.h * l->out.w;
    for (int o = 0; o < l->out.c; o++) {
      double s = 0;
      for (int i = 0; i < n; i++)
        for (int64_t p = 0; p < per; p++) s += dy[((int64_t)i * l->out.c + o) * per + p];
      db[o] = (float)s;
    }
  }
  return TK_OK;
}

/* the input gradient is 0 whatever the mask */
static tk_status empty_bwd_input_folded(tk_kernel *k, const float *dy, const float *relu_y, float *dx, int n) {
  (void)relu_y;
  if (!((empty_kernel *)k)->folded)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): folded call without a fold (call fold() after update())", k->layer,
                   klayer(k)->name);
  return empty_bwd_input(k, dy, dx, n);
}

static tk_status empty_update(tk_kernel *k) {
  ((empty_kernel *)k)->folded = 0;
  return TK_OK;
}
static void empty_destroy(tk_kernel *k) {
  if (!k) return;
  free(((empty_kernel *)k)->bf);
  free(k);
}
static const tk_kernel_vtbl empty_vtbl = {empty_fwd,  empty_bwd_input,  empty_bwd_weight,      empty_update, empty_destroy,
                                          empty_fold, empty_fwd_folded, empty_bwd_input_folded, NULL,         NULL};

static tk_status empty_create(const tk_model *m, int layer, int max_batch, tk_kernel **out) {
  const tk_layer *l = &m->layers[layer];
  if (tk_weight_nnz(&m->tensors[l->weight]) != 0)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): planned as empty but has kept weights", layer, l->name);
  empty_kernel *k = tk_calloc(1, sizeof *k);
  if (!k) return TK_ERR_NOMEM;
  k->base = (tk_kernel){&empty_vtbl, TK_VARIANT_EMPTY, m, layer, max_batch, 0};
  if (!(k->bf = tk_calloc((size_t)l->out.c, sizeof(float)))) {
    free(k);
    return TK_ERR_NOMEM;
  }
  *out = &k->base;
  return TK_OK;
}

/* ---- building -------------------------------------------------------------------------------- */

/* A layer with the batch forms (vec_batch) keeps its table in o-major order: they find their
 * own chunks in each output channel's run (tk_chunk_rows).  Its per-image im2col forward then
 * runs unchunked (o-major chunks walk the table once per chunk: slower in a network, emit.c). */
static void unchunk(tk_geom *g) {
  if (!g->CM) return;
  g->CM = 0, g->NCH = 1, g->CH = g->I;
}

static int is_generated(tk_variant v) {
  return v == TK_VARIANT_SPARSE_TABLE || v == TK_VARIANT_SPARSE_UNROLLED || v == TK_VARIANT_VALUE_BAKED;
}

typedef struct {
  const tk_model *m;  /* the model, or a transposed layer's own (transposed_model) */
  int layer;
  int parent;         /* -1, or the item whose input gradient this transposed layer's forward is */
  tk_variant variant;
  tk_geom g;
  tk_tables t;
  uint64_t key[2];    /* cache key: body hash + toolchain */
  uint64_t sym;       /* symbol prefix: body hash */
  int unit;           /* index into the unique objects */
  int vb;             /* conv vectorised over the batch */
  int training;       /* gradient functions too (a transposed layer: forward only) */
  tk_model *own_m;    /* a transposed layer: its model and element map, until its parent takes them */
  int64_t *own_map;
} build_item;

typedef struct {
  uint64_t key[2];
  void *obj;
  size_t len;
  int from_cache;
  int item;           /* first item with this key */
} obj_entry;

static int nthreads_default(const tk_compile_opts *o) {
#ifdef _OPENMP
  int t = o && o->threads > 0 ? o->threads : omp_get_max_threads();
#else
  int t = 1;
  (void)o;
#endif
  return t < 1 ? 1 : t;
}

/* A stride-1 conv's input gradient is the forward of its transposed layer: dy (O, OH, OW) ->
 * dx (I, H, W) with weight W'[i][o][a][b] = W[o][i][KH-1-a][KW-1-b] and padding K-1-P, since
 * dx[i][h][w] = sum W[o][i][kh][kw] dy[o][h + P - kh][w + P - kw].  That runs on the
 * forward's forms (the shifted copies above all), which measured faster than the input
 * gradient's own (bench/README.md).  A one-layer model of its own (shapes filled in here:
 * it is not a classifier, so tk_model_infer does not apply); *tpos maps each element of W'
 * to the element of W it holds (numel entries). */
static tk_status transposed_model(const tk_model *m, int layer, tk_model **out, int64_t **tpos) {
  const tk_layer *l = &m->layers[layer];
  const tk_tensor *w = &m->tensors[l->weight];
  const int I = l->in.c, O = l->out.c, KH = l->kh, KW = l->kw;
  *out = NULL, *tpos = NULL;
  tk_model *t = tk_model_new("transposed", 1, O, l->out.h, l->out.w);
  int64_t *map = tk_alloc_aligned((size_t)w->numel * sizeof *map);
  tk_shape *vals = tk_calloc(2, sizeof *vals);
  char name[160];
  snprintf(name, sizeof name, "%.120s^T", w->name);
  const int64_t shape[4] = {I, O, KH, KW};
  int ti = t && map && vals ? tk_model_add_tensor(t, name, 4, shape) : -1;
  uint8_t *mask = ti >= 0 && w->mask ? tk_alloc_aligned((size_t)w->numel) : NULL;
  if (ti < 0 || (w->mask && !mask)) goto nomem;
  tk_tensor *tw = &t->tensors[ti];
  tw->prunable = 1;
  for (int i = 0; i < I; i++)
    for (int o = 0; o < O; o++)
      for (int a = 0; a < KH; a++)
        for (int b = 0; b < KW; b++) {
          int64_t q = (((int64_t)i * O + o) * KH + a) * KW + b;
          int64_t src = (((int64_t)o * I + i) * KH + (KH - 1 - a)) * KW + (KW - 1 - b);
          map[q] = src;
          tw->data[q] = w->data[src];
          if (mask) mask[q] = w->mask[src];
        }
  if (mask && tk_tensor_set_mask(tw, mask) != TK_OK) goto nomem;
  free(mask);
  mask = NULL;
  tk_layer tl = tk_layer_default(TK_OP_CONV2D, l->name, 0);
  tl.weight = ti;
  tl.kh = KH, tl.kw = KW, tl.ph = KH - 1 - l->ph, tl.pw = KW - 1 - l->pw;
  if (tk_model_add_layer(t, &tl) < 0) goto nomem;
  t->layers[0].in = (tk_shape){O, l->out.h, l->out.w};
  t->layers[0].out = l->in;
  vals[0] = t->layers[0].in, vals[1] = t->layers[0].out;
  t->values = vals;
  *out = t, *tpos = map;
  return TK_OK;
nomem:
  free(mask);
  free(map);
  free(vals);
  tk_model_free(t);
  return tk_fail(TK_ERR_NOMEM, "layer %d (%s): out of memory for the transposed layer", layer, l->name);
}

/* Whether layer i runs its input gradient as its transposed layer's forward: planned so
 * (TK_VB_BWD_T, on the table kernel, with gradients) and a conv that can. */
static int wants_transposed(const tk_model *m, const tk_plan *p, const tk_compile_opts *o, int i) {
  return o->training && (p->layers[i].vec_batch & TK_VB_BWD_T) && p->layers[i].variant == TK_VARIANT_SPARSE_TABLE &&
         tk_conv_transposable(&m->layers[i]);
}

/* whether the kernel's col comes from the build's pool: the table variant's im2col (the
 * shifted copies' padding must stay zero; the unrolled forms are left as they were).
 * TICKET_SHARED_COL=0: every kernel its own (A/B runs). */
static int pooled_col(const build_item *it) {
  const char *e = getenv("TICKET_SHARED_COL");
  if (e && *e && !atoi(e)) return 0;
  return !it->g.linear && it->variant == TK_VARIANT_SPARSE_TABLE && it->g.IM2COL && !it->g.XS;
}

static tk_status make_kernel(const tk_model *m, build_item *it, tk_jit *jit, int training, int max_batch, int threads,
                             col_pool *pool, tk_kernel **out) {
  const tk_layer *l = &m->layers[it->layer];
  sparse_kernel *k = tk_calloc(1, sizeof *k);
  if (!k) return TK_ERR_NOMEM;
  const tk_kernel_vtbl *vt = it->g.linear ? &lin_vtbl : it->variant == TK_VARIANT_VALUE_BAKED ? &baked_vtbl : &conv_vtbl;
  k->base = (tk_kernel){vt, it->variant, m, it->layer, max_batch, 0};
  k->g = it->g;
  k->t = it->t;
  memset(&it->t, 0, sizeof it->t); /* owned by the kernel now */
  k->training = training;
  k->threads = threads;
  split_init(&k->fsplit);
  split_init(&k->bsplit);
  k->vb = training ? it->vb : it->vb & TK_VB_FWD; /* no gradient tables without training */
  k->jit = jit;
  tk_jit_retain(jit);
  char name[64];
  int unrolled = it->variant != TK_VARIANT_SPARSE_TABLE;
  struct {
    tk_kfn *dst;
    const char *fn;
  } syms[] = {{&k->prep_x, "prep_x"},
              {&k->prep_dy, "prep_dy"},
              {&k->prep_col, it->g.linear ? NULL : "prep_col"},     /* conv only */
              {&k->fwd_direct, it->g.linear ? "fwd_direct" : NULL}, /* linear only */
              {&k->fwd, unrolled ? "fwd_u" : "fwd"},
              {&k->bwd_input, unrolled && training && it->variant == TK_VARIANT_SPARSE_UNROLLED ? "bwd_input_u" : "bwd_input"},
              {&k->bwd_weight, "bwd_weight"}};
  struct {
    tk_kfn *dst;
    const char *fn;
  } bsyms[] = {{&k->prep_xb, "prep_xb"},
               {&k->prep_dyb, "prep_dyb"},
               {&k->fwd_b, "fwd_b"},
               {&k->bwd_input_b, "bwd_input_b"},
               {&k->bwd_weight_b, "bwd_weight_b"}};
  for (size_t s = 0; s < sizeof bsyms / sizeof *bsyms && k->vb; s++) {
    snprintf(name, sizeof name, "tk_k%016" PRIx64 "_%s", it->sym, bsyms[s].fn);
    void *p = tk_jit_lookup(jit, name);
    if (!p) {
      sk_destroy(&k->base);
      return tk_fail_prefix(TK_ERR_COMPILE, "layer %d (%s)", it->layer, l->name);
    }
    memcpy(bsyms[s].dst, &p, sizeof p);
  }
  for (size_t s = 0; s < sizeof syms / sizeof *syms; s++) {
    if (!syms[s].fn) continue;
    snprintf(name, sizeof name, "tk_k%016" PRIx64 "_%s", it->sym, syms[s].fn);
    void *p = tk_jit_lookup(jit, name);
    if (!p) {
      sk_destroy(&k->base);
      return tk_fail_prefix(TK_ERR_COMPILE, "layer %d (%s)", it->layer, l->name);
    }
    memcpy(syms[s].dst, &p, sizeof p);
  }
  k->base.caps = conv_caps(k);
  int64_t nnz = k->t.nnz, nz1 = nnz ? nnz : 1;
  k->wv = tk_alloc_aligned((size_t)nz1 * sizeof(float));
  if (training) k->wvt = tk_alloc_aligned((size_t)nz1 * sizeof(float));
  if (it->variant == TK_VARIANT_VALUE_BAKED) k->baked = tk_alloc_aligned((size_t)nz1 * sizeof(float));
  const int foldable = it->variant != TK_VARIANT_VALUE_BAKED;
  if (foldable) { /* the fold's arrays, made here so that fold() allocates nothing */
    k->wvf = tk_alloc_aligned((size_t)nz1 * sizeof(float));
    if (training) k->wvtf = tk_alloc_aligned((size_t)nz1 * sizeof(float));
    k->bf = tk_alloc_aligned((size_t)it->g.O * sizeof(float));
  }
  k->nsets = threads;
  k->sets = tk_calloc((size_t)threads, sizeof *k->sets);
  /* one arena: per thread xq, z, and (training) dz, dwv; 64-byte aligned pieces */
  int64_t xq = (it->g.xq_len + 15) / 16 * 16, z = (it->g.z_len + 15) / 16 * 16, col = (it->g.col_len + 15) / 16 * 16;
  if (col && pool && pooled_col(it)) {
    TK_ASSERT(col <= pool->per);
    k->pool = pool, pool->refs++;
    col = 0;
  }
  int64_t dz = training ? (it->g.dz_len + 15) / 16 * 16 : 0, dwv = training ? (nz1 + 15) / 16 * 16 : 0;
  /* batch-vectorised: the grids with 16 images per cell */
  const int vb = k->vb;
  int64_t xb = vb & (TK_VB_FWD | TK_VB_BWD_WEIGHT) ? xq * 16 : 0, zb = 0;
  int64_t dzb = training && (vb & (TK_VB_BWD_INPUT | TK_VB_BWD_WEIGHT)) ? dz * 16 : 0;
  k->rpb_f = k->t.rp, k->rpb_t = k->t.rpt;
  int chunks_ok = 1;
  if (vb & (TK_VB_FWD | TK_VB_BWD_INPUT)) { /* the partial sums carried between channel chunks */
    tk_batch_geom bg;
    tk_batch_geom_make(&it->g, nnz, &bg);
    zb = (bg.carry + 15) / 16 * 16;
    const tk_geom *g = &it->g;
    if ((vb & TK_VB_FWD) && bg.FCH < g->I)
      chunks_ok &= (k->rpb_f = tk_chunk_rows(k->t.rp, k->t.off, g->O, g->CS, g->I, bg.FCH)) != NULL;
    if ((vb & TK_VB_BWD_INPUT) && g->NPH == 1 && bg.BCH < g->O)
      chunks_ok &= (k->rpb_t = tk_chunk_rows(k->t.rpt, k->t.offt, (int)g->dx_rows, g->SZ, g->O, bg.BCH)) != NULL;
  }
  int64_t per = xq + z + dz + dwv + col + xb + dzb + zb;
  k->arena = tk_alloc_aligned((size_t)(per * threads) * sizeof(float));
  if (!k->wv || (training && !k->wvt) || (it->variant == TK_VARIANT_VALUE_BAKED && !k->baked) || !k->sets || !k->arena ||
      (foldable && (!k->wvf || (training && !k->wvtf) || !k->bf)) || !chunks_ok) {
    sk_destroy(&k->base);
    return tk_fail(TK_ERR_NOMEM, "layer %d (%s): out of memory for kernel scratch (%lld floats per thread)", it->layer,
                   l->name, (long long)per);
  }
  for (int t = 0; t < threads; t++) {
    float *b = k->arena + per * t;
    k->sets[t].xq = b;
    k->sets[t].z = b + xq;
    k->sets[t].dz = training ? b + xq + z : NULL;
    k->sets[t].dwv = training ? b + xq + z + dz : NULL;
    k->sets[t].col = k->pool ? k->pool->buf + k->pool->per * t : col ? b + xq + z + dz + dwv : NULL;
    k->sets[t].xb = xb ? b + xq + z + dz + dwv + col : NULL;
    k->sets[t].dzb = dzb ? b + xq + z + dz + dwv + col + xb : NULL;
    k->sets[t].zb = zb ? b + xq + z + dz + dwv + col + xb + dzb : NULL;
  }
  if (k->baked) {
    const tk_tensor *wt = &m->tensors[l->weight];
    for (int64_t j = 0; j < nnz; j++) k->baked[j] = wt->data[k->t.pos[j]];
  }
  sk_update(&k->base);
  *out = &k->base;
  return TK_OK;
}

/* TICKET_DUMP_DIR=DIR: a freshly emitted layer's source (ext ".c") and its object (".o") as
 * DIR/layerNNN[t]_<symbol hash>.ext -- best effort, a debugging aid (bench/README.md, "Inside
 * a kernel"; bench/perf_annotate.py reads them) */
static void dump_file(const build_item *items, const build_item *it, const char *ext, const void *data, size_t len) {
  const char *dump = getenv("TICKET_DUMP_DIR");
  if (!dump || !*dump) return;
  char path[4200];
  snprintf(path, sizeof path, "%s/layer%03d%s_%016" PRIx64 "%s", dump,
           it->parent >= 0 ? items[it->parent].layer : it->layer, it->parent >= 0 ? "t" : "", it->sym, ext);
  tk_write_file_atomic(path, data, len);
}

/* "layer N (name)" of an item, ", transposed" for a transposed layer (compile errors, JIT) */
static void item_name(const build_item *items, int q, const tk_model *m, char *buf, size_t n) {
  const build_item *it = &items[q];
  const int layer = it->parent >= 0 ? items[it->parent].layer : it->layer;
  snprintf(buf, n, "layer %d (%.60s%s)", layer, m->layers[layer].name, it->parent >= 0 ? ", transposed" : "");
}

tk_status tk_sparse_build(const tk_model *m, const tk_plan *p, const tk_compile_opts *o, int max_batch,
                          tk_kernel **kernels) {
  tk_compile_opts defaults;
  if (!o) {
    tk_compile_opts_default(&defaults);
    o = &defaults;
  }
  if (!p || p->n_layers != m->n_layers) return tk_fail(TK_ERR_ARG, "tk_sparse_build: plan does not match the model");
  if (max_batch < 1) return tk_fail(TK_ERR_ARG, "tk_sparse_build: max_batch %d must be at least 1", max_batch);
  double t0 = tk_now();
  int threads = nthreads_default(o);
  if (p->threads > 0 && !(o->threads > 0)) threads = p->threads;
  int n_items = 0; /* every generated layer, and the transposed layer of each TK_VB_BWD_T one */
  for (int i = 0; i < m->n_layers; i++)
    n_items += is_generated(p->layers[i].variant) + wants_transposed(m, p, o, i);
  /* EMPTY layers need no toolchain */
  tk_status st = TK_OK;
  tk_kernel **made_k = tk_calloc((size_t)m->n_layers, sizeof *made_k);
  build_item *items = tk_calloc((size_t)(n_items ? n_items : 1), sizeof *items);
  obj_entry *objs = tk_calloc((size_t)(n_items ? n_items : 1), sizeof *objs);
  tk_cc_unit *units = tk_calloc((size_t)(n_items ? n_items : 1), sizeof *units);
  tk_codebuf *srcs = tk_calloc((size_t)(n_items ? n_items : 1), sizeof *srcs);
  char (*unames)[96] = tk_calloc((size_t)(n_items ? n_items : 1), sizeof *unames);
  tk_jit *jit = NULL;
  col_pool *pool = NULL;
  int n_objs = 0, n_units = 0;
  if (!made_k || !items || !objs || !units || !srcs || !unames) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  for (int i = 0; i < m->n_layers; i++)
    if (p->layers[i].variant == TK_VARIANT_EMPTY) {
      if ((st = empty_create(m, i, max_batch, &made_k[i])) != TK_OK) goto done;
    }
  if (n_items) {
    char why[256];
    if (!tk_jit_built(why, sizeof why) || !tk_cc_path(why, sizeof why)) {
      for (int i = 0; i < m->n_layers; i++)
        if (is_generated(p->layers[i].variant)) {
          st = tk_fail(TK_ERR_UNSUPPORTED, "layer %d (%s): needs generated code (%s) but %s", i, m->layers[i].name,
                       tk_variant_name(p->layers[i].variant), why);
          goto done;
        }
    }
    tk_cache cache;
    if ((st = tk_cache_open(&cache, o->cache_dir, o->no_cache)) != TK_OK) goto done;
    const char *ident = tk_cc_identity();
    /* 1. tables, body, keys */
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
      tk_variant v = p->layers[i].variant;
      if (!is_generated(v)) continue;
      build_item *it = &items[n++];
      it->m = m;
      it->layer = i;
      it->parent = -1;
      it->variant = v;
      it->training = o->training;
      if ((st = tk_geom_make_variant(m, i, v, &it->g)) != TK_OK) goto done;
      it->vb = !it->g.linear && v == TK_VARIANT_SPARSE_TABLE ? p->layers[i].vec_batch & TK_VB_ALL : 0;
      if (it->vb) unchunk(&it->g);
      if ((st = tk_tables_build(m, i, &it->g, o->training || v == TK_VARIANT_SPARSE_UNROLLED, &it->t)) != TK_OK)
        goto done;
      if (wants_transposed(m, p, o, i)) {
        build_item *tt = &items[n++];
        tt->parent = n - 2;
        tt->layer = 0;
        tt->variant = TK_VARIANT_SPARSE_TABLE;
        tt->vb = it->vb & TK_VB_FWD; /* stride 1: the same map, so the forward's form */
        if ((st = transposed_model(m, i, &tt->own_m, &tt->own_map)) != TK_OK) goto done;
        tt->m = tt->own_m;
        if ((st = tk_geom_make_variant(tt->m, 0, tt->variant, &tt->g)) == TK_OK && tt->vb) unchunk(&tt->g);
        if (st != TK_OK ||
            (st = tk_tables_build(tt->m, 0, &tt->g, 0, &tt->t)) != TK_OK) {
          tk_fail_prefix(st, "layer %d (%s), transposed", i, m->layers[i].name);
          goto done;
        }
      }
    }
    for (int q = 0; q < n; q++) {
      build_item *it = &items[q];
      tk_emit_opts eo = {.variant = it->variant, .training = it->training, .vec_batch = it->vb};
      tk_codebuf body;
      tk_cb_init(&body);
      uint64_t bk[2];
      tk_emit_body(&body, it->m, it->layer, &it->g, &it->t, &eo, bk);
      st = tk_cb_status(&body);
      tk_cb_free(&body);
      if (st) goto done;
      tk_hash h;
      tk_hash_init(&h, 0x0B1EC7);
      tk_hash_update(&h, bk, sizeof bk);
      tk_hash_update(&h, ident, strlen(ident));
      /* extra clang flags change the object (-D..., -O...): part of the key */
      const char *extra = getenv("TICKET_CLANG_EXTRA");
      if (extra && *extra) tk_hash_update(&h, extra, strlen(extra));
      tk_hash_final(&h, it->key);
      it->sym = bk[0];
      /* same code as an earlier layer: share its object */
      it->unit = -1;
      for (int u = 0; u < n_objs && it->unit < 0; u++)
        if (objs[u].key[0] == it->key[0] && objs[u].key[1] == it->key[1]) it->unit = u;
      if (it->unit < 0) {
        it->unit = n_objs;
        obj_entry *e = &objs[n_objs++];
        e->key[0] = it->key[0], e->key[1] = it->key[1];
        e->item = q;
        e->from_cache = tk_cache_get(&cache, e->key, &e->obj, &e->len);
      }
    }
    /* 2. compile the misses, in parallel */
    char mhash[40] = "";
    for (int q = 0; q < n_objs; q++) {
      if (objs[q].from_cache) continue;
      build_item *it = &items[objs[q].item];
      if (!mhash[0]) {
        uint64_t h[2];
        tk_model_hash(m, h);
        snprintf(mhash, sizeof mhash, "%016" PRIx64 "%016" PRIx64, h[0], h[1]);
      }
      tk_emit_opts eo = {.variant = it->variant, .training = it->training, .vec_batch = it->vb, .model_hash = mhash};
      tk_codebuf *cb = &srcs[n_units];
      tk_cb_init(cb);
      tk_emit_layer(cb, it->m, it->layer, &it->g, &it->t, &eo, NULL);
      if ((st = tk_cb_status(cb)) != TK_OK) goto done;
      item_name(items, objs[q].item, m, unames[n_units], sizeof unames[0]);
      units[n_units] = (tk_cc_unit){unames[n_units], cb->buf, cb->len, NULL, 0};
      dump_file(items, it, ".c", cb->buf, cb->len);
      n_units++;
    }
    double t1 = tk_now();
    if (n_units) {
      if ((st = tk_cc_compile(units, n_units, 0, getenv("TICKET_CLANG_EXTRA"))) != TK_OK) goto done;
      tk_cache_stats_add_compiled(n_units);
      int u = 0;
      for (int q = 0; q < n_objs; q++) {
        if (objs[q].from_cache) continue;
        objs[q].obj = units[u].obj, objs[q].len = units[u].obj_len;
        units[u].obj = NULL;
        u++;
        dump_file(items, &items[objs[q].item], ".o", objs[q].obj, objs[q].len);
        if (tk_cache_put(&cache, objs[q].key, objs[q].obj, objs[q].len) != TK_OK && o->verbose)
          fprintf(stderr, "ticket: warning: %s\n", tk_last_error()); /* a read-only cache still works */
      }
    }
    double t2 = tk_now();
    /* 3. one JIT for all of them */
    if ((st = tk_jit_create(&jit)) != TK_OK) goto done;
    for (int q = 0; q < n_objs; q++) {
      char what[96];
      item_name(items, objs[q].item, m, what, sizeof what);
      if ((st = tk_jit_add_object(jit, objs[q].obj, objs[q].len, what)) != TK_OK) goto done;
    }
    int64_t per = 0;
    for (int q = 0; q < n; q++) {
      int64_t c = (items[q].g.col_len + 15) / 16 * 16;
      if (pooled_col(&items[q]) && c > per) per = c;
    }
    if (per > 0) {
      if (!(pool = tk_calloc(1, sizeof *pool)) || !(pool->buf = tk_alloc_aligned((size_t)(per * threads) * sizeof(float)))) {
        st = tk_fail(TK_ERR_NOMEM, "out of memory for the shared tap copies (%lld floats per thread)", (long long)per);
        goto done;
      }
      pool->refs = 1, pool->per = per;
    }
    for (int q = 0; q < n; q++) {
      build_item *it = &items[q];
      if (it->parent < 0) {
        if ((st = make_kernel(m, it, jit, o->training, max_batch, threads, pool, &made_k[it->layer])) != TK_OK) goto done;
        continue;
      }
      /* a transposed layer: its forward becomes its parent's input gradient */
      tk_kernel *tkb = NULL;
      if ((st = make_kernel(it->m, it, jit, 0, max_batch, threads, pool, &tkb)) != TK_OK) {
        tk_fail_prefix(st, "layer %d (%s), transposed", items[it->parent].layer, m->layers[items[it->parent].layer].name);
        goto done;
      }
      sparse_kernel *pk = (sparse_kernel *)made_k[items[it->parent].layer], *tk = (sparse_kernel *)tkb;
      int64_t nz1 = tk->t.nnz ? tk->t.nnz : 1;
      if (!(pk->tpos = tk_calloc((size_t)nz1, sizeof *pk->tpos))) {
        sk_destroy(tkb);
        st = TK_ERR_NOMEM;
        goto done;
      }
      for (int64_t j = 0; j < tk->t.nnz; j++) pk->tpos[j] = it->own_map[tk->t.pos[j]];
      pk->tk = tk, pk->tm = it->own_m;
      pk->base.caps = conv_caps(pk);
      it->own_m = NULL;
      /* its values replace the transposed order's: update() and fold() no longer repack those */
      free(pk->wvt), free(pk->wvtf);
      pk->wvt = pk->wvtf = NULL;
      sk_update(&pk->base);
    }
    if (o->verbose)
      fprintf(stderr, "ticket: %d generated kernels: %d objects, %d compiled in %.2f s, %d from cache %s; load %.3f s\n",
              n, n_objs, n_units, t2 - t1, n_objs - n_units, cache.disabled ? "(disabled)" : cache.dir,
              tk_now() - t2);
  }
  (void)t0;
done:
  if (st == TK_ERR_NOMEM && !strstr(tk_last_error(), "memory")) tk_fail(TK_ERR_NOMEM, "out of memory building kernels");
  if (st == TK_OK) {
    for (int i = 0; i < m->n_layers; i++)
      if (made_k[i]) kernels[i] = made_k[i];
  } else if (made_k) {
    for (int i = 0; i < m->n_layers; i++)
      if (made_k[i]) made_k[i]->v->destroy(made_k[i]);
  }
  for (int q = 0; items && q < n_items; q++) {
    tk_tables_free(&items[q].t);
    tk_model_free(items[q].own_m);
    free(items[q].own_map);
  }
  for (int q = 0; objs && q < n_objs; q++) free(objs[q].obj);
  for (int u = 0; units && u < n_items; u++) free(units[u].obj);
  for (int u = 0; srcs && u < n_items; u++) tk_cb_free(&srcs[u]);
  tk_jit_release(jit); /* the kernels hold their own references (to the pool too) */
  col_pool_release(pool);
  free(made_k);
  free(items);
  free(objs);
  free(units);
  free(srcs);
  free(unames);
  return st;
}
