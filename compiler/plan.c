/* plan.c -- the per-layer kernel plan: for every conv2d / linear layer choose dense (oneDNN),
 * sparse table-driven, sparse unrolled, value-baked, empty or reference, with a one-line
 * reason.  A cost model calibrated on this machine's measurements (DESIGN.md section 4 and
 * bench/bench_layers.c) decides by default; `tune` builds the candidates and times them.
 *
 * The cost model (per call of n images on T threads; rates per thread):
 *   dense   2*MACs / (R_DENSE * eff) + C_DENSE          eff < 1 for small problems
 *   sparse  2*nnz*lanes / R_SPARSE + prep/epilogue + per-entry table reads + streaming + C_SPARSE
 * where `lanes` counts the positions the kernel really computes (the flattened, padded grid),
 * so small maps pay for their wasted columns.  The constants are at the top.
 */
#include "compile.h"
#include "emit.h"
#include "jit.h"
#include "toolchain.h"
#include "../runtime/dense.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- calibration (1 thread; bench/bench_layers.c on this machine, minimum of repeats) ------
 * oneDNN: 110-140 GF/s on the ResNet-18 CIFAR convolutions.  Table kernel: about 0.42 ns per
 * vector FMA of computed lanes (grid columns included; 76 GF/s) at batch 1 with the
 * activations in cache, plus about 0.2 ns per non-zero per position block (offset and value
 * reads, loop); batches stream their activations through memory, about 0.4 ns per
 * input+output element.  Refitted on the EPYC host at s=0.5 (bench_layers --sparsity 0.5
 * --batch 1 --stat min, after the packed copies): 0.40-0.44 ns per vector FMA on 32x32, 16x16,
 * 8x8 and the stride-2 3x3s, 0.59-0.66 per non-zero for one-vector blocks (4x4 outputs); the
 * old 41 GF/s and 0.25 ns made every ResNet-18 conv at s=0.5-0.6 about 1.5x slower than oneDNN
 * on paper, where all but 256->512 s2 (0.89x) and 4x4 (0.97-1.03x) were 1.13-2.2x faster. */
#define R_DENSE 115e9       /* oneDNN flop/s per core on large convolutions */
#define C_DENSE 1e-6        /* oneDNN per-call overhead (s) */
#define R_SPARSE 76e9       /* table-driven kernel, flop/s of computed lanes */
#define C_SPARSE 0.3e-6     /* per-call overhead (s) */
#define T_ENTRY 0.2e-9      /* per non-zero per position block (s) */
#define T_ENTRY_BATCH 2.0e-9 /* batch-vectorised forward: per non-zero per register block (s) */
#define T_ENTRY_BATCH_FLAT 1.4e-9 /* ... the same without input-channel chunks (s) */
#define T_FMA_BATCH 0.25e-9 /* ... and per vector FMA of it, with its load (s) */
#define T_ELEM 0.25e-9      /* per element of prep (pad, phase split, im2col) and epilogue (s) */
#define T_STREAM 0.4e-9     /* batches: per input + output element per image (s) */
#define T_STREAM_DENSE 0.8e-9 /* oneDNN, batches: the same, layout reorders included.  Batch 128, 1
                               * thread: the first conv (3 -> 64, 32x32) 10.5 ms for 3.9 ms of
                               * flops; 1x1 stride 2 (64 -> 128) 20-29 ms for 4.7 (fit low, so a
                               * doubt goes to oneDNN) */
#define T_ELEM_LINEAR 0.5e-9 /* linear: per element of the transposes into and out of lanes (s) */
#define W_CACHED 8e6        /* a model with more bytes of dense weights than this streams each layer's
                               weights (or table) from memory on every call (about 16 MB of L3 is
                               effective here, shared with activations and scratch) */
#define BW_MEM 15e9         /* ... at this rate (bytes/s).  In vgg16_bn at batch 1, oneDNN's 512x512@2
                               convolutions took 0.90 ms each against 0.20 alone (9.4 MB of weights);
                               our 512x512@4 at s=0.9 219 us with its 1.9 MB table cold (bench_layers
                               --cold) against 137 hot */
#define UNROLL_BUDGET 20000 /* most non-zeros per layer for unrolled / value-baked code */
#define VEC_BATCH_MIN 16    /* conv: images from which the batch-vectorised kernel is used */
#define VEC_BATCH_MAX_MAP 256 /* ... for the gradients on stride-1 output maps of at most this many positions */
#define VEC_BATCH_MAX_SP 0.96 /* ... and on maps up to 4x larger up to this sparsity */
#define VEC_BATCH_MAX_MAP_FWD 64 /* ... for the forward on stride-1 maps of at most this many positions */

const char *tk_variant_name(tk_variant v) {
  switch (v) {
  case TK_VARIANT_NONE: return "none";
  case TK_VARIANT_REFERENCE: return "reference";
  case TK_VARIANT_DENSE: return "dense";
  case TK_VARIANT_SPARSE_TABLE: return "sparse-table";
  case TK_VARIANT_SPARSE_UNROLLED: return "sparse-unrolled";
  case TK_VARIANT_VALUE_BAKED: return "value-baked";
  case TK_VARIANT_EMPTY: return "empty";
  case TK_VARIANT_COUNT: break;
  }
  return "?";
}

void tk_compile_opts_default(tk_compile_opts *o) {
  memset(o, 0, sizeof *o);
  o->force = -1;
}

void tk_plan_free(tk_plan *p) {
  if (!p) return;
  free(p->layers);
  free(p);
}

static int no_fallback(void) {
  const char *e = getenv("TICKET_NO_FALLBACK");
  return e && *e && strcmp(e, "0") != 0;
}

/* ---- the cost model --------------------------------------------------------------------------- */

static double est_dense(const tk_model *m, const tk_layer *l, int n, int T) {
  double dense = (double)m->tensors[l->weight].numel * l->out.h * l->out.w; /* MACs per image */
  double flops = 2.0 * dense * n;
  /* oneDNN is less efficient on small problems (blocking, short loops) */
  double eff = fmax(0.2, pow(fmin(1.0, flops / 2e7), 0.15));
  double stream = n > 1 ? ((double)l->in.c * l->in.h * l->in.w + (double)l->out.c * l->out.h * l->out.w) * n *
                              T_STREAM_DENSE
                        : 0.0;
  return (flops / (R_DENSE * eff) + stream) / T + C_DENSE;
}

/* Seconds per call to read `bytes` of a layer's weights or table from memory, in a model whose
 * dense weights (`model_bytes`) do not stay in cache between calls; 0 in one that fits. */
static double est_stream(double bytes, double model_bytes) {
  return model_bytes > W_CACHED ? bytes / BW_MEM : 0.0;
}

static double est_sparse(const tk_geom *g, int64_t nnz, int n, int T) {
  double lanes, blocks, elems, stream = 0;
  if (g->linear) {
    double nblk = ceil(n / 16.0);
    lanes = n < 4 ? n / 16.0 : 16.0 * nblk; /* a few images: scalar dot products */
    blocks = nblk;
    elems = n < 4 ? 0 : (double)(g->I + g->O) * 16.0 * nblk * (T_ELEM_LINEAR / T_ELEM);
  } else {
    const int phases = tk_geom_read_phases(g);
    double prep = g->XL       ? (double)g->KW * g->I * g->XNBLK * g->XHL * g->XRS
                  : g->XS     ? (double)g->KW * g->I * g->XHR * g->XRS
                  : g->PK     ? (double)g->KW * g->SH * g->I * g->XHP * g->OW + (g->SH > 1 ? (double)phases * g->I * g->CS : 0.0)
                  : g->IM2COL ? (double)g->I * g->KH * g->KW * g->P16 + (double)phases * g->I * g->CS /* via the grid */
                              : (double)phases * g->I * g->CS;
    lanes = (double)g->FPZ * n;
    blocks = (double)g->FNBLK * n;
    elems = (prep + (double)g->O * g->OH * g->OW) * n;
    if (n > 1) stream = ((double)g->I * g->H * g->W + (double)g->O * g->OH * g->OW) * n * T_STREAM;
  }
  double t = 2.0 * (double)nnz * lanes / R_SPARSE + (double)nnz * blocks * T_ENTRY + elems * T_ELEM + stream;
  return t / T + C_SPARSE;
}

/* The same for a conv whose forward runs vectorised over the batch (conv_batch.c.in): every
 * lane is a real output (16 images of one position), where the spatial form computes whole
 * padded rows (on a 2x2 map with padding 1, 4 of its 16 lanes are outputs).  Each non-zero
 * costs, per register block of NA positions, an entry cost (its broadcast and bookkeeping; with
 * input-channel chunks also the chunk boundaries and carried sums: T_ENTRY_BATCH, else
 * T_ENTRY_BATCH_FLAT) plus NA vector FMAs with their loads; prep and store are 16x16 transposes
 * of every input cell and output element.  Fitted to bench_layers, batch 128, 1 thread,
 * forward, ms (model):
 *   chunked    512x4x4 (NA 16)  s=0.9 29-33 (27.0)  0.8 64.3 (53.7)  0.7 74.5 (80.4)
 *              256x8x8 (NA 16)  s=0.9 25-34 (27.3)  0.8 61.3 (54.0)  0.7 73.7 (80.6)
 *   unchunked  512x2x2 (NA 4)   s=0.9 8.3-8.6 (9.2) 0.95 5.0 (4.6)   0.99 1.3 (0.9)
 *              512x4x4 (NA 16)  s=0.9 27.8 (24.6)   0.8 48.4 (47.5)  0.95 15.9 (13.2)  (unchunked since)
 * against oneDNN's 24-32 (2x2) and 81-95 ms (4x4, 8x8).  Refitted on the EPYC host (the
 * batch kernels had become about 2x faster than the fit above; the model then kept 8x8 and 4x4
 * on oneDNN at batch 32, s=0.6, where the batch form was 1.57x and 1.20x faster), ms (model):
 *   chunked    256x8x8  b128 s=0.9 14.5 (14.4)  0.6 45.5 (48.0)   b32 0.9 3.70 (3.6)  0.6 11.6 (12.1)
 *              512x4x4  b128 s=0.9 14.5 (12.2)  0.6 46.7 (46.7)   b32 0.9 4.03 (3.1)  0.6 12.8 (11.8)
 *   unchunked  512x2x2  b128 s=0.9 5.03 (4.7)   0.6 16.8 (18.4)
 * Without this the 2x2 maps of vgg16_bn
 * went to oneDNN on the spatial form's estimate, while the batch form measured 1.95x faster
 * than oneDNN there at s=0.9 even chunked (input gradient 11.3 vs 21.6 ms, weight gradient
 * 18.9 vs 104), 3.7x unchunked. */
static double est_sparse_batch(const tk_geom *g, int64_t nnz, int n, int T) {
  const int phases = tk_geom_read_phases(g);
  tk_batch_geom bg;
  tk_batch_geom_make(g, nnz, &bg);
  const double nblk = ceil(n / 16.0), pos = (double)g->OH * g->OW, na = (double)bg.QR * bg.QB;
  double blocks = ceil(pos / na) * nblk;
  double elems = ((double)phases * g->I * g->CS + (double)g->O * pos) * 16.0 * nblk;
  double stream = ((double)g->I * g->H * g->W + (double)g->O * pos) * n * T_STREAM;
  const double entry = bg.FCH < g->I ? T_ENTRY_BATCH : T_ENTRY_BATCH_FLAT;
  double t = (double)nnz * blocks * (entry + na * T_FMA_BATCH) + elems * T_ELEM + stream;
  return t / T + C_SPARSE;
}

/* ---- tuning: build the candidates and time them ---------------------------------------------- */

/* Median seconds per call of fwd (+ bwd_input + bwd_weight when training). */
static double time_kernel(tk_kernel *k, const tk_layer *l, const tk_model *m, int n, int training, float *x, float *y,
                          float *dx, float *dw, float *db) {
  (void)l;
  double v[15];
  int reps = 0;
  double start = tk_now();
  for (int r = 0; r < 16; r++) {
    double t0 = tk_now();
    if (k->v->fwd(k, x, y, n) != TK_OK) return INFINITY;
    if (training) {
      if (k->v->bwd_input(k, y, dx, n) != TK_OK) return INFINITY;
      if (k->v->bwd_weight(k, x, y, dw, db, n) != TK_OK) return INFINITY;
    }
    double t = tk_now() - t0;
    if (r > 0) v[reps++] = t; /* the first call warms caches and pages */
    if (reps >= 3 && tk_now() - start > 0.05) break;
  }
  (void)m;
  return tk_median(v, reps);
}

static tk_status tune(const tk_model *m, const tk_compile_opts *o, tk_plan *p) {
  const int L = m->n_layers, n = p->batch;
  int have_jit = 0;
  char why[256];
  have_jit = tk_jit_built(why, sizeof why) && tk_cc_path(why, sizeof why);
  /* the candidate variants, each built for every layer in one tk_sparse_build call */
  static const tk_variant cands[] = {TK_VARIANT_SPARSE_TABLE, TK_VARIANT_SPARSE_UNROLLED, TK_VARIANT_VALUE_BAKED};
  const int NC = 3;
  tk_kernel **ks[3] = {0};
  tk_plan cp[3];
  memset(cp, 0, sizeof cp);
  tk_status st = TK_OK;
  int64_t max_in = 1, max_out = 1, max_w = 1;
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    if (l->op != TK_OP_CONV2D && l->op != TK_OP_LINEAR) continue;
    int64_t a = tk_shape_numel(l->in), b = tk_shape_numel(l->out), w = m->tensors[l->weight].numel;
    if (a > max_in) max_in = a;
    if (b > max_out) max_out = b;
    if (w > max_w) max_w = w;
  }
  float *x = tk_alloc_aligned((size_t)(max_in * n) * sizeof(float));
  float *dx = tk_alloc_aligned((size_t)(max_in * n) * sizeof(float));
  float *y = tk_alloc_aligned((size_t)(max_out * n) * sizeof(float));
  float *dw = tk_alloc_aligned((size_t)max_w * sizeof(float));
  float *db = tk_alloc_aligned((size_t)max_out * sizeof(float));
  if (!x || !dx || !y || !dw || !db) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  tk_rng rng;
  tk_rng_seed(&rng, 7);
  for (int64_t q = 0; q < max_in * n; q++) x[q] = (float)tk_rng_uniform(&rng);
  for (int c = 0; c < NC && have_jit; c++) {
    if (c > 0 && o->training && cands[c] == TK_VARIANT_VALUE_BAKED) continue;
    cp[c] = *p;
    cp[c].layers = tk_calloc((size_t)L, sizeof *cp[c].layers);
    ks[c] = tk_calloc((size_t)L, sizeof *ks[c]);
    if (!cp[c].layers || !ks[c]) {
      st = TK_ERR_NOMEM;
      goto done;
    }
    int any = 0;
    for (int i = 0; i < L; i++) {
      const tk_layer *l = &m->layers[i];
      tk_variant pv = p->layers[i].variant;
      int cand = pv == TK_VARIANT_SPARSE_TABLE || pv == TK_VARIANT_DENSE;
      if (c > 0) /* unrolled forms: conv only, within the compile budget */
        cand = cand && l->op == TK_OP_CONV2D && tk_weight_nnz(&m->tensors[l->weight]) <= UNROLL_BUDGET;
      if (!cand) continue;
      tk_geom g;
      if (tk_geom_make(m, i, &g) != TK_OK) continue;
      cp[c].layers[i].variant = cands[c];
      any = 1;
    }
    if (!any) continue;
    tk_compile_opts bo = *o;
    if ((st = tk_sparse_build(m, &cp[c], &bo, n, ks[c])) != TK_OK) goto done;
  }
  for (int i = 0; i < L; i++) {
    const tk_layer *l = &m->layers[i];
    tk_layer_plan *lp = &p->layers[i];
    if (lp->variant != TK_VARIANT_SPARSE_TABLE && lp->variant != TK_VARIANT_DENSE) continue;
    double best = INFINITY, t_dense = INFINITY, t_table = INFINITY;
    tk_variant bv = lp->variant;
    if (tk_dense_available()) {
      tk_kernel *dk = NULL;
      if (tk_kernel_dense_create(m, i, n, &dk) == TK_OK) {
        t_dense = time_kernel(dk, l, m, n, o->training, x, y, dx, dw, db);
        dk->v->destroy(dk);
        if (t_dense < best) best = t_dense, bv = TK_VARIANT_DENSE;
      }
    }
    for (int c = 0; c < NC; c++) {
      if (!ks[c] || !ks[c][i]) continue;
      double t = time_kernel(ks[c][i], l, m, n, o->training, x, y, dx, dw, db);
      if (c == 0) t_table = t;
      /* the unrolled forms must win clearly: they cost compile time and code size */
      double need = c == 0 ? 1.0 : 0.9;
      if (t < best * need) best = t, bv = cands[c];
    }
    if (!isfinite(best)) continue; /* nothing could be timed: keep the model's choice */
    lp->variant = bv;
    lp->est_dense_us = t_dense * 1e6;
    lp->est_sparse_us = (bv == TK_VARIANT_DENSE ? t_table : best) * 1e6;
    snprintf(lp->reason, sizeof lp->reason, "tuned: %s fastest (%.1f us; dense %.1f us, table %.1f us)",
             tk_variant_name(bv), best * 1e6, t_dense * 1e6, t_table * 1e6);
  }
done:
  for (int c = 0; c < NC; c++) {
    for (int i = 0; ks[c] && i < L; i++)
      if (ks[c][i]) ks[c][i]->v->destroy(ks[c][i]);
    free(ks[c]);
    free(cp[c].layers);
  }
  free(x);
  free(dx);
  free(y);
  free(dw);
  free(db);
  if (st == TK_ERR_NOMEM) tk_fail(TK_ERR_NOMEM, "out of memory while tuning");
  return st;
}

/* ---- the plan --------------------------------------------------------------------------------- */

/* Which passes of a conv on the table kernel run vectorised over the batch (16 images per
 * vector, conv_batch.c.in) rather than over the flattened spatial index: a per-pass choice, as
 * every batch-vectorised kernel also carries the spatial functions.  Only for 16+ images and
 * 16+ input channels (the first conv: the image transposes outweigh the work; 3 -> 64 32x32 at
 * s=0.9, batch 128: spatial 2.2x / 5.8x over oneDNN (fwd / input gradient), batch 1.6x / 3.7x).
 * Measured with bench_layers --variants table,batch [--bwd] --stat min, 1 thread, ResNet-18
 * CIFAR shapes, ms per call, batch 128, spatial vs batch (batch 32 agrees):
 *   forward, stride 1:   64x32x32  s=0.8 46-50 vs 38-41   0.9 27-29 vs 30-34   0.99 9.0-9.5 vs 12-14
 *                        128x16x16 s=0.9 25-26 vs 26-36   0.95 16-22 vs 17-24  0.99 7.1-7.3 vs 9.5-9.8
 *                        256x8x8   s=0.9 29-33 vs 20-22   0.99 6.3-7.3 vs 4.7-6.3;  512x4x4: batch 1.5-2x
 *   input gradient, stride 1 (fwd spatial figures predate the shifted-copy forward):
 *                        512x4x4 26 vs 7.5 nzGF/s, 256x8x8 41 vs 17, 128x16x16 28 vs 17, 64x32x32
 *                        25 vs 19 (s=0.9; 32x32 at s=0.99: 6.6 vs 7.9)
 *   stride 2, s=0.9:     input gradient 3x3 21-31 vs 28-59, 1x1 2.7-11 vs 12-58: spatial, until
 *                        the batch form stored two column phases as whole image rows (XB): then
 *                        3x3 64->128 32x32 43 vs 35, 128->256 16x16 29 vs 20, 256->512 8x8 36 vs
 *                        23 (median, one run), 1x1 11.5 vs 12.1: the batch one for 3x3 on even widths;
 *                        weight gradient 3x3 46 vs 34 (32x32), 59 vs 23 (16x16), 139 vs 22 (8x8);
 *                        1x1 15 vs 16 (32x32), 16.5 vs 3.2 (8x8): batch (the spatial one sums
 *                        each non-zero's few positions per image horizontally)
 * So: the forward on maps up to 8x8 (the shifted-copy spatial forward wins from 16x16 up, the
 * batch one below), the stride-1 input gradient on maps up to 16x16 and 32x32 up to
 * VEC_BATCH_MAX_SP, the stride-2 one of kernels larger than 1x1 on even input widths, the
 * weight gradient wherever the input gradient is, and at stride 2.
 * TICKET_VEC_BATCH overrides (experiments, tests): "0" none, "1" every pass, or letters of
 * the passes: f (forward), i (input gradient), w (weight gradient) -- of the passes the plan
 * has: without training, the forward alone. */
static int vec_batch_rule(const tk_layer *l, double sp, int n, int training) {
  const char *e = getenv("TICKET_VEC_BATCH");
  if (e && *e) {
    const int have = training ? TK_VB_ALL : TK_VB_FWD;
    if (!strcmp(e, "0")) return 0;
    if (!strcmp(e, "1")) return have;
    return have & ((strchr(e, 'f') ? TK_VB_FWD : 0) | (strchr(e, 'i') ? TK_VB_BWD_INPUT : 0) |
                   (strchr(e, 'w') ? TK_VB_BWD_WEIGHT : 0));
  }
  if (n < VEC_BATCH_MIN || l->in.c < 16) return 0;
  int64_t map = (int64_t)l->out.h * l->out.w;
  int vb = 0;
  if (l->sh == 1 && l->sw == 1) {
    if (map <= VEC_BATCH_MAX_MAP_FWD) vb |= TK_VB_FWD;
    if (training && (map <= VEC_BATCH_MAX_MAP || (map <= 4 * VEC_BATCH_MAX_MAP && sp <= VEC_BATCH_MAX_SP)))
      vb |= TK_VB_BWD_INPUT | TK_VB_BWD_WEIGHT;
  } else if (training) {
    vb |= TK_VB_BWD_WEIGHT;
    if (l->sh == 2 && l->sw == 2 && l->in.w % 2 == 0 && l->kh * l->kw > 1) vb |= TK_VB_BWD_INPUT;
  }
  return vb;
}

/* The stride-1 input gradient as the forward of the transposed layer (TK_VB_BWD_T, sparse.c),
 * which runs on the forward's forms (the shifted copies above all).  bench_layers --bwd
 * --variants table,batch --stat min --alt TICKET_BWD_T=1 (or =0), s=0.9, ms per call, the
 * layer's own input gradient (spatial / batch) vs the transposed forward:
 *   batch 1, 1 thread:      512x4x4 0.91 vs 0.28   256x8x8 0.49 vs 0.24   (16x16 and 32x32: as the forward)
 *   batch 128, 1 thread:    64x32x32 66 / 54 vs 50    128x16x16 54 / 26.7 vs 27.2
 *   batch 128, 2 threads:   64x32x32 60 / 51 vs 41    128x16x16 64 / 38 vs 39
 *   the same on the Intel host (bench/README.md): 64x32x32 18.1 / 13.5 vs 12.7, 128x16x16
 *                           21.0 / 10.7 vs 11.2, 256x8x8 26.5 / 9.5 vs 9.8, 512x4x4 46.6 / 10.7 vs 10.6
 *   first layer 3->64 32x32: 24 vs 30 (batch 1), 5.7 vs 6.2 (batch 128): its transposed layer
 *                           has 3 output channels for 64 channels of copies
 * So: wherever the input gradient is not on the batch on a map up to 16x16 (where the two tie
 * and the layer's own needs no second kernel), from 16 input channels.
 * TICKET_BWD_T overrides (experiments, tests): "0" never, "1" every stride-1 conv; without it,
 * a forced TICKET_VEC_BATCH means never (its letters say where the input gradient runs). */
int tk_conv_transposable(const tk_layer *l) {
  return l->op == TK_OP_CONV2D && l->sh == 1 && l->sw == 1 && l->dh == 1 && l->dw == 1 && l->groups == 1 &&
         l->ph <= l->kh - 1 && l->pw <= l->kw - 1;
}

static int bwd_transposed(const tk_layer *l, int vb, int training) {
  if (!training || !tk_conv_transposable(l)) return 0;
  const char *e = getenv("TICKET_BWD_T");
  if (e && *e) return strcmp(e, "0") != 0;
  const char *f = getenv("TICKET_VEC_BATCH"); /* passes forced: the input gradient as forced too */
  if (f && *f) return 0;
  return l->in.c >= 16 && !((vb & TK_VB_BWD_INPUT) && (int64_t)l->out.h * l->out.w <= VEC_BATCH_MAX_MAP);
}

static int vec_batch_passes(const tk_layer *l, double sp, int n, int training) {
  int vb = vec_batch_rule(l, sp, n, training);
  if (bwd_transposed(l, vb, training)) vb = (vb & ~TK_VB_BWD_INPUT) | TK_VB_BWD_T;
  return vb;
}

tk_status tk_plan_make(const tk_model *m, const tk_compile_opts *o, tk_plan **out) {
  *out = NULL;
  tk_compile_opts defaults;
  if (!o) {
    tk_compile_opts_default(&defaults);
    o = &defaults;
  }
  if (!m->values) return tk_fail(TK_ERR_ARG, "plan: the model has no inferred shapes (call tk_model_infer)");
  if (o->force >= TK_VARIANT_COUNT || (o->force < 0 && o->force != -1) || o->force == TK_VARIANT_NONE)
    return tk_fail(TK_ERR_ARG, "plan: force = %d is not a kernel variant", o->force);
  if (o->batch < 0 || o->threads < 0) return tk_fail(TK_ERR_ARG, "plan: batch %d / threads %d", o->batch, o->threads);
  tk_plan *p = tk_calloc(1, sizeof *p);
  if (!p) return TK_ERR_NOMEM;
  p->n_layers = m->n_layers;
  p->batch = o->batch > 0 ? o->batch : 1;
#ifdef _OPENMP
  p->threads = o->threads > 0 ? o->threads : omp_get_max_threads();
#else
  p->threads = 1;
#endif
  p->layers = tk_calloc((size_t)(m->n_layers ? m->n_layers : 1), sizeof *p->layers);
  if (!p->layers) {
    free(p);
    return TK_ERR_NOMEM;
  }
  char why[256] = "";
  int have_jit = tk_jit_built(why, sizeof why) && tk_cc_path(why, sizeof why);
  int have_dense = tk_dense_available();
  int strict = no_fallback();
  tk_status st = TK_OK;
  const int n = p->batch, T = p->threads;
  double model_bytes = 0; /* dense weights of the conv and linear layers */
  for (int i = 0; i < m->n_layers; i++)
    if (m->layers[i].op == TK_OP_CONV2D || m->layers[i].op == TK_OP_LINEAR)
      model_bytes += 4.0 * (double)m->tensors[m->layers[i].weight].numel;
  for (int i = 0; i < m->n_layers && st == TK_OK; i++) {
    const tk_layer *l = &m->layers[i];
    tk_layer_plan *lp = &p->layers[i];
    lp->variant = TK_VARIANT_NONE;
    if (l->op != TK_OP_CONV2D && l->op != TK_OP_LINEAR) continue;
    const tk_tensor *w = &m->tensors[l->weight];
    int64_t nnz = tk_weight_nnz(w);
    double sp = w->numel ? 1.0 - (double)nnz / (double)w->numel : 0.0;
    tk_geom g;
    int gen_ok = 0;
    char gen_why[192] = "";
    if (!have_jit) {
      snprintf(gen_why, sizeof gen_why, "%s", why);
    } else if (tk_geom_make(m, i, &g) != TK_OK) {
      snprintf(gen_why, sizeof gen_why, "%s", tk_last_error());
    } else {
      gen_ok = 1;
    }
    lp->vec_batch = l->op == TK_OP_LINEAR ? TK_VB_ALL : 0;
    /* both read their weights once per call: oneDNN 4 bytes per weight, the table 8 per kept one
     * (offset and value) */
    lp->est_dense_us = (est_dense(m, l, n, T) + est_stream(4.0 * (double)w->numel, model_bytes)) * 1e6;
    /* the passes the table kernel would run over the batch; the forward's layout decides which
     * estimate applies */
    const int vb = l->op == TK_OP_CONV2D ? vec_batch_passes(l, sp, n, o->training) : 0;
    lp->est_sparse_us = !gen_ok ? NAN
                                : (((vb & TK_VB_FWD) ? est_sparse_batch(&g, nnz, n, T) : est_sparse(&g, nnz, n, T)) +
                                   est_stream(8.0 * (double)nnz, model_bytes)) *
                                      1e6;
    tk_variant v;
    if (nnz == 0 && (o->force < 0 || o->force == TK_VARIANT_EMPTY || o->force == TK_VARIANT_SPARSE_TABLE)) {
      v = TK_VARIANT_EMPTY;
      snprintf(lp->reason, sizeof lp->reason, "every weight pruned: the output is the bias");
    } else if (o->force >= 0) {
      v = (tk_variant)o->force;
      snprintf(lp->reason, sizeof lp->reason, "forced to %s", tk_variant_name(v));
      if (v == TK_VARIANT_EMPTY && nnz)
        st = tk_fail(TK_ERR_ARG, "plan: layer %d (%s): cannot force empty, %lld weights are kept", i, l->name,
                     (long long)nnz);
      if (v == TK_VARIANT_VALUE_BAKED && o->training)
        st = tk_fail(TK_ERR_ARG, "plan: layer %d (%s): value-baked kernels are for inference only", i, l->name);
      if (v == TK_VARIANT_DENSE && !have_dense)
        st = tk_fail(TK_ERR_UNSUPPORTED, "plan: layer %d (%s): dense forced but this build has no oneDNN", i, l->name);
      if ((v == TK_VARIANT_SPARSE_UNROLLED || v == TK_VARIANT_VALUE_BAKED) && l->op == TK_OP_LINEAR) {
        v = TK_VARIANT_SPARSE_TABLE;
        snprintf(lp->reason, sizeof lp->reason, "forced %s, but linear layers use the table kernel",
                 tk_variant_name((tk_variant)o->force));
      }
      if (v == TK_VARIANT_SPARSE_TABLE || v == TK_VARIANT_SPARSE_UNROLLED || v == TK_VARIANT_VALUE_BAKED) {
        if (!gen_ok) {
          if (strict)
            st = tk_fail(TK_ERR_UNSUPPORTED, "plan: layer %d (%s): no generated kernel (%s) and TICKET_NO_FALLBACK "
                                             "forbids the reference", i, l->name, gen_why);
          v = TK_VARIANT_REFERENCE;
          snprintf(lp->reason, sizeof lp->reason, "forced %s unavailable: %.150s", tk_variant_name((tk_variant)o->force),
                   gen_why);
        }
      }
      if (v == TK_VARIANT_REFERENCE && strict && o->force == TK_VARIANT_REFERENCE)
        st = tk_fail(TK_ERR_ARG, "plan: layer %d (%s): reference forced but TICKET_NO_FALLBACK is set", i, l->name);
    } else if (!gen_ok) {
      if (have_dense) {
        v = TK_VARIANT_DENSE;
        snprintf(lp->reason, sizeof lp->reason, "dense: no generated kernel (%.150s)", gen_why);
      } else if (strict) {
        st = tk_fail(TK_ERR_UNSUPPORTED, "plan: layer %d (%s): no generated or dense kernel (%s) and "
                                         "TICKET_NO_FALLBACK forbids the reference", i, l->name, gen_why);
        v = TK_VARIANT_REFERENCE;
      } else {
        v = TK_VARIANT_REFERENCE;
        snprintf(lp->reason, sizeof lp->reason, "reference: no generated kernel (%.120s) and no oneDNN", gen_why);
      }
    } else if (!have_dense) {
      v = TK_VARIANT_SPARSE_TABLE;
      snprintf(lp->reason, sizeof lp->reason, "sparsity %.3f: sparse table (no oneDNN in this build)", sp);
    } else if (lp->est_sparse_us < lp->est_dense_us) {
      v = TK_VARIANT_SPARSE_TABLE;
      snprintf(lp->reason, sizeof lp->reason, "sparsity %.3f: sparse table est %.1f us < dense %.1f us (%.1fx)", sp,
               lp->est_sparse_us, lp->est_dense_us, lp->est_dense_us / lp->est_sparse_us);
    } else {
      v = TK_VARIANT_DENSE;
      snprintf(lp->reason, sizeof lp->reason, "sparsity %.3f: dense est %.1f us <= sparse table %.1f us", sp,
               lp->est_dense_us, lp->est_sparse_us);
    }
    lp->variant = v;
    if (l->op == TK_OP_CONV2D && v == TK_VARIANT_SPARSE_TABLE) lp->vec_batch = vb;
  }
  if (st == TK_OK && o->tune && o->force < 0) st = tune(m, o, p);
  if (st != TK_OK) {
    tk_plan_free(p);
    return st;
  }
  if (o->verbose)
    for (int i = 0; i < m->n_layers; i++)
      if (p->layers[i].variant != TK_VARIANT_NONE)
        fprintf(stderr, "ticket: plan: layer %d (%s): %s -- %s\n", i, m->layers[i].name,
                tk_variant_name(p->layers[i].variant), p->layers[i].reason);
  *out = p;
  return TK_OK;
}
