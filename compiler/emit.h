/* emit.h -- code generation for the sparse kernels: layer geometry, pattern tables, template
 * expansion into a code buffer, and the per-layer kernel source.
 *
 * The emitter never exits and never prints: every function writes into a tk_codebuf that
 * records the first error (status + one-line message); later appends are no-ops, and the
 * caller checks cb->err once at the end (STYLE.md 4).
 *
 * A layer's kernel source (one C translation unit, compiled by clang without OpenMP) defines,
 * for a symbol prefix P (a hash of everything that affects the code, see tk_emit_layer):
 *   P_prep_x(a, c0, c1)      raw input image -> padded, stride-phase-split scratch, masked
 *                            like prep_dy (the transposed layer's forward, sparse.c) (channels)
 *   P_prep_dy(a, o0, o1)     output gradient -> zero-margined scratch, masked by
 *                            a->mask > 0 when a->mask is set (a folded ReLU)     (channels)
 *   P_fwd(a, o0, o1)         y = conv(x, W*M) + b, relu'd when a->relu            (out channels)
 *   P_bwd_input(a, i0, i1)   dx = conv_transpose(dy, W*M)                          (in channels)
 *   P_bwd_weight(a, o0, o1)  dwv[j] += sum dy * x over the packed non-zeros j       (out channels)
 *   P_fwd_u, P_bwd_input_u   the unrolled / value-baked forms (those variants only)
 * each `void f(const tk_kargs *a, int r0, int r1)`, single-threaded over the row range
 * [r0, r1).  Linear layers use the same functions over a block of up to 16 images.
 */
#ifndef TK_EMIT_H
#define TK_EMIT_H

#include "compile.h"

#include <stddef.h>
#include <stdint.h>

/* ---- the argument block shared by the host and the generated code ---------------------
 * One X-macro list so the struct text emitted into every kernel and the host's struct are
 * the same by construction.  X(type, name, comment) */
#define TK_KARGS_FIELDS(X)                                                                  \
  X(const float *, src, "prep: raw image; fwd/bwd_weight: x scratch; bwd_input: dy scratch") \
  X(const float *, src2, "bwd_weight: dy scratch")                                           \
  X(float *, dst, "prep: scratch; fwd: y image; bwd_input: dx image; bwd_weight: dw packed")  \
  X(const float *, w, "packed values (forward order, or transposed order for bwd_input)")    \
  X(const int32_t *, rp, "CSR row pointers")                                                 \
  X(const int32_t *, off, "CSR element offsets into the source scratch")                     \
  X(const float *, bias, "bias (O) or NULL")                                                 \
  X(float *, z, "per-thread scratch row(s)")                                                 \
  X(int, nb, "linear: images in this block (1..16)")                                         \
  X(const float *, mask, "conv preps: NULL, or the source is taken as 0 where mask <= 0 (its layout)") \
  X(int, relu, "fwd: 1 = max(., 0) at the final store (NaN passes)")                            \
  X(const float *, res, "fwd, bwd_input_b: NULL, or added to every output before the ReLU (dst's layout; may be dst)") \
  X(float *, buf, "fwd with band-local shifted copies (XL): the thread's window; im2col's prep_col: the grid") \
  X(int, hint, "fwd with XL: 1 = prefetch the next window's input rows (src is not in L2)") \
  X(int, pf, "fwd, bwd_input: 1 = prefetch the table ahead (one image per call: the table is not in L2)")

typedef struct {
#define X(t, n, c) t n;
  TK_KARGS_FIELDS(X)
#undef X
} tk_kargs;

typedef void (*tk_kfn)(const tk_kargs *a, int r0, int r1);

/* ---- code buffer ------------------------------------------------------------------------ */
typedef struct {
  char *buf;
  size_t len, cap;
  tk_status err;      /* first error, TK_OK while none */
  char msg[512];      /* its one-line message */
} tk_codebuf;

void tk_cb_init(tk_codebuf *cb);
void tk_cb_free(tk_codebuf *cb);
void tk_cb_put(tk_codebuf *cb, const char *s, size_t n);
void tk_cb_puts(tk_codebuf *cb, const char *s);
void tk_cb_printf(tk_codebuf *cb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Record an error (the first one wins). */
void tk_cb_fail(tk_codebuf *cb, tk_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Copy the buffer's error into tk_fail() and return its status (TK_OK when none). */
tk_status tk_cb_status(const tk_codebuf *cb);

/* ---- templates -------------------------------------------------------------------------- */
typedef struct { const char *name, *value; } tk_tparam;
/* Expand templates/<name> (embedded at build time) with ${NAME} substitution.  A template
 * declares its parameters at the top with `//@param NAME what`; using an undeclared one,
 * leaving a declared one unset, or passing an unknown one is an error naming the template,
 * the line and the parameter.  `//@` lines are not copied to the output. */
void tk_template_expand(tk_codebuf *cb, const char *name, const tk_tparam *params, int n_params);
/* Text of an embedded template, or NULL. */
const char *tk_template_text(const char *name, size_t *len);

/* ---- geometry ------------------------------------------------------------------------------
 * Conv: the input is zero-padded and split into stride phases:
 *   xq[((a*SW + b)*I + i)*CS + r*WQ + c] = xpad[i][r*SH + a][c*SW + b]
 * so that tap (kh, kw) of every output (oh, ow) reads xq at the flattened index
 *   oh*WQ + ow + off,  off = ((kh*DH % SH)*SW + kw*DW % SW)*I*CS + i*CS + (kh*DH/SH)*WQ + kw*DW/SW,
 * and a kernel row is an axpy over the flattened index p = oh*WQ + ow (columns ow >= OW
 * are computed and dropped).  The output gradient is laid out on the same grid with a zero
 * front margin F: dz[o*SZ + F + oh*WQ + ow], zero elsewhere.
 * Linear: a block of up to 16 images is the "spatial" axis: xq[i*16 + lane], dz[o*16 + lane]. */
typedef struct {
  int linear;
  int I, O, G;                /* channels and groups */
  int H, W, OH, OW;
  int KH, KW, SH, SW, PH, PW, DH, DW;
  int HQ, WQ, NPH;            /* phase grid, NPH = SH*SW */
  uint64_t PHMASK;            /* bit a*SW+b: some tap reads phase (a, b) (all set beyond 64 phases) */
  int64_t CS;                 /* channel stride of xq */
  int NV, NBLK;               /* forward: vectors per block, blocks; PZF = NBLK*NV*16 */
  int CH, NCH;                /* forward: input channels per chunk, chunks (NCH*CH >= I) */
  int CM;                     /* the forward's table is chunk-major (im2col with NCH > 1, table variant):
                                 row c*O + o of rpc is output channel o's entries in chunk c, and the
                                 packed order (pos, off, offc, the values) is chunk by chunk */
  int IM2COL;                 /* forward reads tap copies col[(i*KH*KW + t)*P16 + oh*OW + ow]
                                 instead of the grid (small maps: no wasted columns, aligned) */
  int64_t P16, col_len;       /* im2col: OH*OW rounded up to 16; floats of col per image */
  int PK, XHP;                /* im2col as column-shifted copies with rows OW wide (PK = 1; OW a multiple
                                 of 8, OH*OW of 16): col[(((i*KW + kw)*SH + a)*XHP + r)*OW + ow] =
                                 xpad[i][r*SH + a][ow*SW + kw*DW], XHP = OH + (KH-1)*DH/SH rows; tap
                                 (kh, kw) of output p is float (kh*DH/SH)*OW + p of copy (kw,
                                 kh*DH % SH), read as an im2col row */
  int FNV, FNBLK;             /* the forward's blocks: NV/NBLK on the grid, or over P16 */
  int64_t FPZ;                /* FNBLK*FNV*16 */
  int RV, RR, RNBLK;          /* table forward on the grid with one chunk (RV > 0): by whole output rows,
                                 RV vectors per row (16*RV >= OW), RR rows per block, RNBLK blocks;
                                 sums go from registers to y (no dropped columns, no z) */
  int XS, XRS, XHR, XRV, XRR, XNBLK; /* stride-1 forward on KW column-shifted copies (XS = 1): col holds
                                 col[((kw*I + i)*XHR + r)*XRS + c] = xpad[i][r][c + kw*DW], rows of XRS
                                 floats (OW rounded up to 16, XRV vectors), XHR rows per channel;
                                 bands of XRR output rows (XNBLK bands) over NCH input-channel chunks */
  int XL, XHL;                /* XS made band by band (XL = 1): the forward itself copies each band's window
                                 of each chunk into the thread's col, col[((kw*CH + i%CH)*XHL + rl)*XRS + c]
                                 = xpad[i][b*XRR + rl][c + kw*DW], XHL = XRR + (KH-1)*DH rows; no prep */
  int64_t PZF;
  int NVB, NBLKB;             /* input gradient: per phase, PZB = NBLKB*NVB*16 */
  int64_t PZB;
  int64_t F, SZ;              /* dz: front margin and channel stride */
  int64_t xq_len, dz_len, z_len; /* floats per image (linear: per 16-image block); z_len is
                                    per thread: O*PZF for the forward grid */
  int64_t dx_rows;            /* rows of the transposed table: I*NPH (linear: I) */
} tk_geom;

/* Kept elements of a weight (its mask's non-zero bytes, or numel): tk_tensor_nnz, 8 bytes
 * at a time. */
int64_t tk_weight_nnz(const tk_tensor *t);

/* Fills g for conv2d/linear layer `layer`; errors name the layer. */
tk_status tk_geom_make(const tk_model *m, int layer, tk_geom *g);
/* The same for a given variant: the shifted-copy forward (XS) is a table-variant form only
 * (the unrolled and value-baked code reads the grid or im2col); tk_geom_make is the table's. */
tk_status tk_geom_make_variant(const tk_model *m, int layer, tk_variant variant, tk_geom *g);
/* stride phases of the input that some tap reads (the phase grids prep_x writes) */
int tk_geom_read_phases(const tk_geom *g);

/* Pattern tables built from the mask (all of the weight when it has none).
 * Packed index j follows the weight's own element order (o, i, kh, kw) -- or, when g->CM,
 * that order chunk by chunk of CH input channels (all output channels' entries of chunk 0,
 * then chunk 1, ...), so that a forward pass over one chunk reads its part of the table in one
 * run; pos[j] is the position in the weight tensor, w[j] = data[pos[j]] either way. */
typedef struct {
  int64_t nnz;
  int64_t *pos;               /* nnz: element index in the weight */
  int32_t *rp, *off;          /* forward CSR: O+1, nnz (grid offsets: weight gradient, grid forward);
                                 with CM rp[o] only counts the entries of the channels before o */
  int32_t *offc;              /* forward offsets into col (== off unless IM2COL or XS) */
  int32_t *rpc;               /* forward CSR split by input-channel chunk: O*NCH+1, row o*NCH + c
                                 (c*O + o when CM); == rp when NCH = 1 */
  int32_t *rpt, *offt, *perm; /* transposed CSR: dx_rows+1, nnz, nnz (wt[k] = w[perm[k]]) */
} tk_tables;

tk_status tk_tables_build(const tk_model *m, int layer, const tk_geom *g, int transposed, tk_tables *t);
/* Row pointers by channel chunk, for tables whose rows hold their entries in channel order
 * (channel of entry j: off[j] / per_ch % nch): out[r*nchunks + c] is row r's first entry of
 * channel >= c*ch, out[rows*nchunks] = rp[rows], nchunks = ceil(nch / ch).  The per-image
 * forward's rpc (chunks of CH input channels) and the batch forms' chunked forward and input
 * gradient (sparse.c) use it; NULL when out of memory.  Caller frees. */
int32_t *tk_chunk_rows(const int32_t *rp, const int32_t *off, int rows, int64_t per_ch, int nch, int ch);
void tk_tables_free(tk_tables *t);

/* ---- the batch-vectorised conv (conv_batch.c.in) --------------------------------------------
 * Register blocks, row bands and channel chunks of fwd_b / bwd_input_b / bwd_weight_b.
 * Chunking (DESIGN.md 4): fwd_b walks register block -> chunk of FCH input channels -> output
 * channel -> that chunk's non-zeros, so the chunk's window of xb stays in L1 while every output
 * channel uses it; each output channel's partial sums of the block are carried between chunks
 * in per-thread scratch (`carry` floats).  bwd_input_b (stride 1) is the same over chunks of
 * BCH output channels of dzb.  FCH >= I / BCH >= O: no chunking.  (Chunks inside the weight
 * gradient's bands measured no clear gain at 16-32 channels, s=0.9/0.95, and lost on 4x4 maps:
 * not done.)  The tables are unchanged: a row's non-zeros are already in channel order, so the
 * host passes row pointers per chunk (tk_chunk_rows; no reordering, update() repacks as
 * before). */
typedef struct {
  int QB, QR;                 /* forward: output columns (divides OW, <= 16) by rows (divides OH) per block */
  int IB, IR;                 /* input gradient, stride 1: input columns by rows per block */
  int XB;                     /* input gradient, stride 2: input columns per block (0: W odd) */
  int WR;                     /* weight gradient: output rows per band */
  int FCH, BCH;               /* input channels per forward chunk, output channels per input-gradient chunk */
  int64_t carry;              /* floats of per-thread carry scratch for chunking either pass
                                 (whether or not this layer's passes chunk) */
} tk_batch_geom;

/* Fills bg for a conv layer with `nnz` kept weights.  TICKET_BATCH_CHUNK=<channels> forces
 * the chunk of both passes (0: no chunking), for experiments and tests. */
void tk_batch_geom_make(const tk_geom *g, int64_t nnz, tk_batch_geom *bg);

/* ---- the layer source ---------------------------------------------------------------------- */
typedef struct {
  tk_variant variant;         /* SPARSE_TABLE, SPARSE_UNROLLED or VALUE_BAKED */
  int training;               /* emit the input-gradient unrolled form too */
  int vec_batch;              /* conv, table variant: also emit the batch-vectorised functions
                                 (conv_batch.c.in: P_prep_xb, P_prep_dyb, P_fwd_b, P_bwd_input_b,
                                 P_bwd_weight_b; lanes are 16 images) */
  int static_tables;          /* AOT: also emit the tables (and values) as static const data:
                                 P_rp, P_off, P_rpt, P_offt, P_perm, P_w (int32/float arrays) */
  const char *model_hash;     /* for the provenance header; NULL = "-" */
} tk_emit_opts;

/* Writes the layer's full kernel source into cb: provenance header, `#define TK_FN`, body.
 * The symbol prefix is "tk_k" + the 16-hex-digit key (the hash of the body, which contains
 * everything that affects the code: template text, shape constants, the pattern for unrolled
 * code, the values for value-baked code).  *key receives that hash (may be NULL).
 * `t` must hold the transposed table when eo->training or the variant is unrolled. */
void tk_emit_layer(tk_codebuf *cb, const tk_model *m, int layer, const tk_geom *g, const tk_tables *t,
                   const tk_emit_opts *eo, uint64_t key[2]);
/* Just the body and its key (what the cache is keyed on); the caller frees body with tk_cb_free. */
void tk_emit_body(tk_codebuf *body, const tk_model *m, int layer, const tk_geom *g, const tk_tables *t,
                  const tk_emit_opts *eo, uint64_t key[2]);
/* Non-zeros per unrolled straight-line function. */
#define TK_UNROLL_CHUNK 96

/* ---- hashing (cache keys, model hash): 128-bit, two independent 64-bit lanes ---------------- */
typedef struct { uint64_t a, b; uint64_t n; } tk_hash;
void tk_hash_init(tk_hash *h, uint64_t seed);
void tk_hash_update(tk_hash *h, const void *p, size_t n);
void tk_hash_final(const tk_hash *h, uint64_t out[2]);
/* Hash of a model's structure, tensor shapes, masks and values (provenance). */
void tk_model_hash(const tk_model *m, uint64_t out[2]);

#endif
