/* emit.c -- code generation for the sparse kernels: the code buffer, template expansion,
 * hashing, layer geometry, pattern tables and the per-layer kernel source.
 *
 * Nothing here exits or prints: errors go into the tk_codebuf (or tk_fail for the table and
 * geometry builders) and the caller decides.  See emit.h for the layouts and the contract. */
#include "emit.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- code buffer ------------------------------------------------------------------------ */

void tk_cb_init(tk_codebuf *cb) { memset(cb, 0, sizeof *cb); }

void tk_cb_free(tk_codebuf *cb) {
  free(cb->buf);
  memset(cb, 0, sizeof *cb);
}

void tk_cb_fail(tk_codebuf *cb, tk_status st, const char *fmt, ...) {
  if (cb->err != TK_OK) return;
  cb->err = st;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cb->msg, sizeof cb->msg, fmt, ap);
  va_end(ap);
}

void tk_cb_put(tk_codebuf *cb, const char *s, size_t n) {
  if (cb->err != TK_OK) return;
  if (cb->len + n + 1 > cb->cap) {
    size_t cap = cb->cap ? cb->cap : 4096;
    while (cap < cb->len + n + 1) cap *= 2;
    char *b = realloc(cb->buf, cap);
    if (!b) {
      tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory growing a code buffer to %zu bytes", cap);
      return;
    }
    cb->buf = b;
    cb->cap = cap;
  }
  memcpy(cb->buf + cb->len, s, n);
  cb->len += n;
  cb->buf[cb->len] = 0;
}

void tk_cb_puts(tk_codebuf *cb, const char *s) { tk_cb_put(cb, s, strlen(s)); }

void tk_cb_printf(tk_codebuf *cb, const char *fmt, ...) {
  if (cb->err != TK_OK) return;
  char small[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) {
    tk_cb_fail(cb, TK_ERR_INTERNAL, "bad format string in the emitter");
    return;
  }
  if ((size_t)n < sizeof small) {
    tk_cb_put(cb, small, (size_t)n);
    return;
  }
  char *big = malloc((size_t)n + 1);
  if (!big) {
    tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory formatting %d bytes", n);
    return;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  tk_cb_put(cb, big, (size_t)n);
  free(big);
}

tk_status tk_cb_status(const tk_codebuf *cb) {
  if (cb->err == TK_OK) return TK_OK;
  return tk_fail(cb->err, "%s", cb->msg);
}

/* ---- templates -------------------------------------------------------------------------- */

const char *tk_template_text(const char *name, size_t *len) {
  char path[256];
  snprintf(path, sizeof path, "templates/%s", name);
  const tk_embedded_file *f = tk_embedded_find(path);
  if (!f) return NULL;
  if (len) *len = f->size;
  return f->data;
}

#define TK_MAX_TPARAMS 64

void tk_template_expand(tk_codebuf *cb, const char *name, const tk_tparam *params, int n_params) {
  size_t len;
  const char *text = tk_template_text(name, &len);
  if (!text) {
    tk_cb_fail(cb, TK_ERR_INTERNAL, "template %s: not embedded in this build", name);
    return;
  }
  /* pass 1: declarations */
  const char *decl[TK_MAX_TPARAMS];
  size_t decl_len[TK_MAX_TPARAMS];
  int n_decl = 0;
  for (const char *p = text; p < text + len;) {
    const char *eol = memchr(p, '\n', (size_t)(text + len - p));
    if (!eol) eol = text + len;
    if (eol - p > 10 && !strncmp(p, "//@param ", 9)) {
      const char *s = p + 9, *e = s;
      while (e < eol && *e != ' ') e++;
      if (n_decl == TK_MAX_TPARAMS) {
        tk_cb_fail(cb, TK_ERR_INTERNAL, "template %s: more than %d parameters", name, TK_MAX_TPARAMS);
        return;
      }
      decl[n_decl] = s;
      decl_len[n_decl++] = (size_t)(e - s);
    }
    p = eol + 1;
  }
  /* every given parameter is declared, every declared one is given */
  for (int k = 0; k < n_params; k++) {
    int found = 0;
    for (int d = 0; d < n_decl && !found; d++)
      found = strlen(params[k].name) == decl_len[d] && !strncmp(params[k].name, decl[d], decl_len[d]);
    if (!found) {
      tk_cb_fail(cb, TK_ERR_INTERNAL, "template %s: parameter %s is given but not declared", name, params[k].name);
      return;
    }
  }
  for (int d = 0; d < n_decl; d++) {
    int found = 0;
    for (int k = 0; k < n_params && !found; k++)
      found = strlen(params[k].name) == decl_len[d] && !strncmp(params[k].name, decl[d], decl_len[d]);
    if (!found) {
      tk_cb_fail(cb, TK_ERR_INTERNAL, "template %s: parameter %.*s is declared but not given", name,
                 (int)decl_len[d], decl[d]);
      return;
    }
  }
  /* pass 2: copy with substitution, dropping //@ lines */
  int line = 1;
  for (const char *p = text; p < text + len; line++) {
    const char *eol = memchr(p, '\n', (size_t)(text + len - p));
    const char *end = eol ? eol + 1 : text + len;
    if (end - p >= 3 && !strncmp(p, "//@", 3)) {
      p = end;
      continue;
    }
    const char *q = p;
    while (q < end) {
      const char *d = q;
      while (d + 1 < end && !(d[0] == '$' && d[1] == '{')) d++;
      if (d + 1 >= end) {
        tk_cb_put(cb, q, (size_t)(end - q));
        break;
      }
      tk_cb_put(cb, q, (size_t)(d - q));
      const char *nm = d + 2, *ne = nm;
      while (ne < end && *ne != '}') ne++;
      if (ne >= end) {
        tk_cb_fail(cb, TK_ERR_INTERNAL, "template %s line %d: unterminated ${", name, line);
        return;
      }
      const tk_tparam *hit = NULL;
      for (int k = 0; k < n_params && !hit; k++)
        if (strlen(params[k].name) == (size_t)(ne - nm) && !strncmp(params[k].name, nm, (size_t)(ne - nm))) hit = &params[k];
      int declared = 0;
      for (int k = 0; k < n_decl && !declared; k++)
        declared = decl_len[k] == (size_t)(ne - nm) && !strncmp(decl[k], nm, decl_len[k]);
      if (!hit || !declared) {
        tk_cb_fail(cb, TK_ERR_INTERNAL, "template %s line %d: parameter %.*s is not declared", name, line,
                   (int)(ne - nm), nm);
        return;
      }
      tk_cb_puts(cb, hit->value);
      q = ne + 1;
    }
    p = end;
  }
}

/* Version number from a template's `//@version N` line (0 when absent). */
static int template_version(const char *name) {
  size_t len;
  const char *t = tk_template_text(name, &len);
  if (!t) return 0;
  const char *v = strstr(t, "//@version ");
  return v ? atoi(v + 11) : 0;
}

/* ---- hashing ------------------------------------------------------------------------------ */

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void tk_hash_init(tk_hash *h, uint64_t seed) {
  h->a = 0x243F6A8885A308D3ull ^ seed;
  h->b = 0x13198A2E03707344ull ^ mix64(seed + 1);
  h->n = 0;
}

static inline void hash_word(tk_hash *h, uint64_t w) {
  h->a = rotl64((h->a ^ w) * 0x9E3779B97F4A7C15ull, 29) * 0xC2B2AE3D27D4EB4Full;
  h->b = rotl64(h->b + w * 0x165667B19E3779F9ull, 31) ^ (h->b >> 17);
  h->b *= 0xD6E8FEB86659FD93ull;
}

void tk_hash_update(tk_hash *h, const void *p, size_t n) {
  const unsigned char *s = p;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, s + i, 8);
    hash_word(h, w);
  }
  if (i < n) {
    uint64_t w = 0;
    memcpy(&w, s + i, n - i);
    hash_word(h, w ^ ((uint64_t)(n - i) << 56));
  }
  h->n += n;
}

void tk_hash_final(const tk_hash *h, uint64_t out[2]) {
  out[0] = mix64(h->a ^ mix64(h->n));
  out[1] = mix64(h->b + 0x7FB5D329728EA185ull * (h->n + 1)) ^ out[0];
}

void tk_model_hash(const tk_model *m, uint64_t out[2]) {
  tk_hash h;
  tk_hash_init(&h, 0x5469636B6574ull);
  tk_hash_update(&h, &m->in_c, sizeof m->in_c);
  tk_hash_update(&h, &m->in_h, sizeof m->in_h);
  tk_hash_update(&h, &m->in_w, sizeof m->in_w);
  tk_hash_update(&h, &m->classes, sizeof m->classes);
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    int f[] = {(int)l->op, l->inputs[0], l->inputs[1], l->weight, l->bias, l->kh, l->kw, l->sh, l->sw, l->ph, l->pw,
               l->dh, l->dw, l->groups};
    tk_hash_update(&h, f, sizeof f);
  }
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    tk_hash_update(&h, tt->name, strlen(tt->name));
    tk_hash_update(&h, tt->shape, sizeof tt->shape);
    tk_hash_update(&h, tt->data, (size_t)tt->numel * sizeof(float));
    if (tt->mask) tk_hash_update(&h, tt->mask, (size_t)tt->numel);
  }
  tk_hash_final(&h, out);
}

/* ---- non-zeros ----------------------------------------------------------------------------- */

/* 1 in each byte of the word that is not zero */
static inline uint64_t nonzero_bytes(uint64_t w) {
  w |= w >> 4;
  w |= w >> 2;
  w |= w >> 1;
  return w & 0x0101010101010101ull;
}

int64_t tk_weight_nnz(const tk_tensor *t) {
  if (!t->mask) return t->numel;
  int64_t n = 0, i = 0;
  for (; i + 8 <= t->numel; i += 8) {
    uint64_t w;
    memcpy(&w, t->mask + i, 8);
    n += __builtin_popcountll(nonzero_bytes(w));
  }
  for (; i < t->numel; i++) n += t->mask[i] != 0;
  return n;
}

/* ---- geometry ----------------------------------------------------------------------------- */

/* Vectors per block and blocks for nvec vectors: few wasted vectors, few blocks (each block
 * re-reads the row's offsets and values, about 2 vector-slots per non-zero). */
static void choose_blocks(int64_t nvec, int *nv, int *nblk) {
  int64_t best = INT64_MAX;
  for (int v = 8; v >= 1; v--) {
    int64_t b = (nvec + v - 1) / v, cost = b * (v + 2);
    if (cost < best) best = cost, *nv = v, *nblk = (int)b;
  }
}

static int partials(int nv) {
  int p = 8 / nv;
  return p < 1 ? 1 : p;
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* Input channels per chunk of the im2col forward (I: none).  A block's copies of all the input
 * channels (KH*KW*FNV vectors each; 590 KB for 256x256@8) are read from L2 at about 21 bytes a
 * cycle, one line per vector FMA; a chunk's window of about 64 KB stays near L1 while every
 * output channel uses it, with the table chunk-major (CM) so that each chunk's pass reads its
 * part in order.  But each output channel's sums are loaded, reduced and stored once per chunk:
 * chunks only where that leaves at least 12 non-zeros and 48 vector FMAs per output channel and
 * chunk within twice the window.  Measured (bench_layers, one thread, batch 1, TICKET_CHUNK=n
 * against none): 256x256@8 s=0.9 116 against 158 us at 16-32 channels (110 KB: 126, 147 KB:
 * 133), s=0.95 67-73 against 79, s=0.99 (2-4 non-zeros per chunk) 1.15-1.5x slower; 512x512@4
 * (one vector) s=0.9 137 against 167 at 128 channels (74 KB), 1.08x at 32, s=0.95 75 against 85
 * at 128 but 0.96x at 48, s=0.99 0.90x even at 128; 128->256@16 s2 s=0.9 60 against 74 at
 * 16-24, s=0.95 1.05-1.09x at 24-32, 0.99x at 16.  The packed copies (PK) want about 32 KB:
 * 256x256@8 s=0.9 110-112 us at 24-43 channels (23-41 KB), 118 at 64; 64->128@32 s2 67.5 at
 * 16 (55 KB), 73 at 43; chunks still up to 128 KB's worth (64->128@32 s2 s=0.95: 43.8 us at
 * 24 channels against 46.4 without). */
static int im2col_chunk(const tk_geom *g, int64_t nnz) {
  const double window = g->PK ? 32768.0 : 65536.0,
               per_ch = g->PK ? (double)g->KW * g->SH * (g->FNV * 16 + (g->KH - 1) * g->DH / g->SH * g->OW) * 4.0
                              : (double)g->KH * g->KW * g->FNV * 64.0;
  const double nzo = (double)nnz / (g->O > 0 ? g->O : 1), smin = 48.0 / g->FNV > 12.0 ? 48.0 / g->FNV : 12.0;
  double ch_w = floor(window / per_ch), ch_max = floor(131072.0 / per_ch), ch = nzo > 0 ? ceil(smin * g->I / nzo) : g->I;
  if (ch_w < 1) ch_w = 1;
  if (ch < ch_w) ch = ch_w;
  if (ch > (ch_max > ch_w ? ch_max : ch_w) || ch >= g->I) return g->I;
  const int nch = (int)ceil(g->I / ch);
  return (g->I + nch - 1) / nch; /* the chunks balanced */
}

tk_status tk_geom_make(const tk_model *m, int layer, tk_geom *g) {
  return tk_geom_make_variant(m, layer, TK_VARIANT_SPARSE_TABLE, g);
}

int tk_geom_read_phases(const tk_geom *g) {
  if (g->NPH > 64) return g->NPH;
  int phases = 0;
  for (int b = 0; b < g->NPH; b++) phases += (int)((g->PHMASK >> b) & 1);
  return phases;
}

tk_status tk_geom_make_variant(const tk_model *m, int layer, tk_variant variant, tk_geom *g) {
  memset(g, 0, sizeof *g);
  if (layer < 0 || layer >= m->n_layers) return tk_fail(TK_ERR_ARG, "layer %d out of range", layer);
  const tk_layer *l = &m->layers[layer];
  if (l->op == TK_OP_LINEAR) {
    g->linear = 1;
    g->I = (int)tk_shape_numel(l->in);
    g->O = l->out.c;
    g->G = 1;
    g->H = g->W = g->OH = g->OW = 1;
    g->KH = g->KW = g->SH = g->SW = g->DH = g->DW = 1;
    g->HQ = 1, g->WQ = 16, g->NPH = 1, g->CS = 16;
    g->NV = g->NBLK = g->NVB = g->NBLKB = 1;
    g->FNV = g->FNBLK = 1, g->FPZ = 16;
    g->CH = g->I, g->NCH = 1;
    g->PZF = g->PZB = 16;
    g->F = 0, g->SZ = 16;
    g->xq_len = (int64_t)g->I * 16;
    g->dz_len = (int64_t)g->O * 16;
    g->z_len = 16;
    g->dx_rows = g->I;
    return TK_OK;
  }
  if (l->op != TK_OP_CONV2D)
    return tk_fail(TK_ERR_ARG, "layer %d (%s): %s has no kernel", layer, l->name, tk_op_name(l->op));
  g->I = l->in.c, g->O = l->out.c, g->G = l->groups;
  g->H = l->in.h, g->W = l->in.w, g->OH = l->out.h, g->OW = l->out.w;
  g->KH = l->kh, g->KW = l->kw, g->SH = l->sh, g->SW = l->sw, g->PH = l->ph, g->PW = l->pw, g->DH = l->dh,
  g->DW = l->dw;
  int64_t hp = (int64_t)g->H + 2 * g->PH, wp = (int64_t)g->W + 2 * g->PW;
  g->HQ = (int)((hp + g->SH - 1) / g->SH);
  g->WQ = (int)((wp + g->SW - 1) / g->SW);
  g->NPH = g->SH * g->SW;
  g->CS = (int64_t)g->HQ * g->WQ;
  if (g->NPH > 64) {
    g->PHMASK = ~0ull;
  } else {
    for (int kh = 0; kh < g->KH; kh++)
      for (int kw = 0; kw < g->KW; kw++) g->PHMASK |= 1ull << ((kh * g->DH % g->SH) * g->SW + kw * g->DW % g->SW);
  }
  choose_blocks(((int64_t)g->OH * g->WQ + 15) / 16, &g->NV, &g->NBLK);
  g->PZF = (int64_t)g->NBLK * g->NV * 16;
  choose_blocks((g->CS + 15) / 16, &g->NVB, &g->NBLKB);
  g->PZB = (int64_t)g->NBLKB * g->NVB * 16;
  int64_t shift_max = (int64_t)((g->KH - 1) * g->DH / g->SH) * g->WQ + (g->KW - 1) * g->DW / g->SW;
  g->F = round_up(shift_max, 16);
  g->SZ = round_up(g->F + (g->PZF > g->PZB ? g->PZF : g->PZB), 16);
  g->xq_len = (int64_t)g->NPH * g->I * g->CS + g->PZF + 16;
  g->dz_len = (int64_t)g->O * g->SZ;
  g->z_len = g->PZF > g->NPH * g->PZB ? g->PZF : g->NPH * g->PZB;
  g->dx_rows = (int64_t)g->I * g->NPH;
  /* input-channel chunks (DESIGN.md 4): im2col by im2col_chunk's rule (after the choice of
   * im2col); the grid forms only when asked (the position-block-outer order alone measured as
   * fast there).  TICKET_CHUNK=<channels> forces a chunk on either, TICKET_CHUNK=0 none (for
   * experiments and tests). */
  const tk_tensor *wt = &m->tensors[l->weight];
  int ch = g->I;
  const char *force_ch = getenv("TICKET_CHUNK");
  if (force_ch && atoi(force_ch) > 0) ch = atoi(force_ch);
  if (g->G > 1 || ch >= g->I) ch = g->I;
  g->CH = ch;
  g->NCH = (g->I + ch - 1) / ch;
  /* im2col for the forward when the vector FMAs it saves (no wasted grid columns) outweigh
   * about twice the extra copying (KH*KW copies of the input instead of one grid) */
  int64_t nnz_all = tk_weight_nnz(wt), kk = (int64_t)g->KH * g->KW;
  g->P16 = round_up((int64_t)g->OH * g->OW, 16);
  int fnv, fnblk;
  choose_blocks(g->P16 / 16, &fnv, &fnblk);
  int64_t fpz = (int64_t)fnv * fnblk * 16;
  double saved = (double)nnz_all * (double)(g->PZF - fpz) / 16.0;
  /* With no partial vector, the column-shifted copies with rows OW wide (PK) hold every tap's
   * row: tap (kh, kw) is copy (kw, kh*DH % SH) from row kh*DH / SH on -- KW*SH copies of OH +
   * (KH-1)*DH/SH rows instead of KH*KW of OH, made from x directly at stride 1, from the grid
   * otherwise (strided: only where every row phase is read).  Rows a multiple of 8 wide, so that
   * every load sits in whole 32-byte halves: on 4x4 maps (a row 16 bytes) the loads of the
   * middle kernel row straddle lines, 512x512@4 s=0.9 174 against 144 us.  TICKET_PK ("0"/"1")
   * overrides where it applies. */
  const char *force_pk = getenv("TICKET_PK");
  const int64_t xhp = g->OH + (int64_t)(g->KH - 1) * g->DH / g->SH;
  const int pk_ok = variant == TK_VARIANT_SPARSE_TABLE && g->G == 1 && g->OW % 8 == 0 &&
                    (int64_t)g->OH * g->OW % 16 == 0 &&
                    (g->SH == 1 || (g->DH == 1 && g->KH >= g->SH && xhp <= g->HQ));
  const int pk = pk_ok && (force_pk && *force_pk ? atoi(force_pk) != 0 : 1);
  const double col_floats = pk ? (double)g->KW * g->SH * g->I * xhp * g->OW : (double)kk * g->I * g->P16;
  /* the grid holds only the phases some tap reads (a strided 1x1: one, whose grid is the tap copy
   * itself: the copy saves nothing and costs a second pass, 256->512@8 1x1 s2 0.76-0.91x) */
  double extra = 2.0 * (col_floats - (double)tk_geom_read_phases(g) * g->I * g->CS) / 16.0;
  const char *force_col = getenv("TICKET_IM2COL"); /* "0"/"1": override, for experiments */
  g->IM2COL = force_col && *force_col ? atoi(force_col) != 0 : saved > extra;
  if (g->IM2COL) {
    g->FNV = fnv, g->FNBLK = fnblk, g->FPZ = fpz;
    g->PK = pk, g->XHP = pk ? (int)xhp : 0;
    g->col_len = (pk ? (int64_t)g->I * g->KW * g->SH * xhp * g->OW : (int64_t)g->I * kk * g->P16) + fpz + 16;
    if (!(force_ch && *force_ch) && variant == TK_VARIANT_SPARSE_TABLE && g->G == 1)
      g->CH = im2col_chunk(g, nnz_all), g->NCH = (g->I + g->CH - 1) / g->CH;
  } else {
    g->FNV = g->NV, g->FNBLK = g->NBLK, g->FPZ = g->PZF;
    g->col_len = 0;
  }
  g->z_len = (int64_t)g->O * g->FPZ > g->NPH * g->PZB ? (int64_t)g->O * g->FPZ : g->NPH * g->PZB;
  /* the grid forward by output rows: RV vectors cover a row's OW outputs, RR rows (RR*RV <= 8
   * accumulators) per block; the choice minimises computed vectors plus two per block */
  g->RV = g->RR = g->RNBLK = 0;
  if (!g->IM2COL && g->NCH == 1 && (g->OW + 15) / 16 <= 8) {
    int rv = (g->OW + 15) / 16;
    int64_t best = INT64_MAX;
    for (int r = 8 / rv; r >= 1; r--) {
      int64_t nb = (g->OH + r - 1) / r, cost = nb * ((int64_t)r * rv + 2);
      if (cost < best) best = cost, g->RR = r, g->RNBLK = (int)nb;
    }
    /* only where it computes less than the flattened grid (narrow maps waste lanes per row):
     * per output channel, FMAs at the mean non-zeros per channel plus two vectors per block,
     * and for the grid the z row and its copy to y */
    double nzo = (double)nnz_all / (g->O > 0 ? g->O : 1);
    double c_rows = nzo * g->RNBLK * g->RR * rv + 2.0 * g->RNBLK;
    double c_grid = nzo * g->NBLK * g->NV + 2.0 * g->NBLK + g->PZF / 16.0 + 2.0 * (g->OH * g->OW) / 16.0;
    const char *force_rows = getenv("TICKET_ROWS"); /* "0"/"1": override, for experiments and tests */
    int use = force_rows && *force_rows ? atoi(force_rows) != 0 : c_rows <= c_grid;
    if (!use) g->RR = g->RNBLK = 0, rv = 0;
    g->RV = rv;
    /* reads reach row RNBLK*RR - 1 of the last channel and 16*RV columns into it */
    int64_t need = !rv ? 0 : (int64_t)g->NPH * g->I * g->CS + (int64_t)g->RNBLK * g->RR * g->WQ + 16 * rv + 16;
    if (need > g->xq_len) g->xq_len = need;
  }
  /* stride 1: the forward on KW column-shifted copies with rows padded to whole vectors, so
   * every load is aligned (DESIGN.md 4), in bands of output rows and input-channel chunks whose
   * window stays in L1.  TICKET_XS ("0"/"1") forces it off/on where it applies; TICKET_XS_RR,
   * TICKET_XS_CH, TICKET_XS_L1 and TICKET_XS_BYTES (bytes) override the band rows, the chunk, the
   * L1 budget and the copies' budget. */
  g->XS = g->XRS = g->XHR = g->XRV = g->XRR = g->XNBLK = g->XL = g->XHL = 0;
  if (variant == TK_VARIANT_SPARSE_TABLE && g->SH == 1 && g->SW == 1 && g->OW >= 1 && g->OH >= 1 &&
      (g->OW + 15) / 16 <= 8) {
    /* bands of up to 8 rows and 16 accumulators, few padding rows, two vectors per band */
    int rv = (g->OW + 15) / 16, rr = 1;
    int64_t best = INT64_MAX;
    for (int r = (16 / rv < 8 ? 16 / rv : 8); r >= 1; r--) {
      int64_t nb = (g->OH + r - 1) / r, cost = nb * ((int64_t)r * rv + 2);
      if (cost < best) best = cost, rr = r;
    }
    const char *e = getenv("TICKET_XS_RR");
    if (e && atoi(e) > 0 && atoi(e) * rv <= 16) rr = atoi(e);
    /* Measured (bench_layers, 1 thread, ResNet-18 shapes): about 2x the rows form on 16x16 and
     * 1.3-1.6x on 32x32 maps at s = 0.9, where the vector FMAs outnumber the extra floats of the KW copies
     * (prep); at s = 0.99 the copies cost more than the FMAs save (0.8x), about even where the
     * two are equal.  On maps narrower than 12 the padding lanes lose to im2col.  In a whole
     * network (ticket bench resnet18, 1 thread) the copies are rewritten every call beside the
     * activations and weights: 64x32x32 (835 KB of copies) gained alone but lost in the model,
     * 128x16x16 (442 KB) won in both, so the copies are kept within about a quarter of L2.
     * Since the copies are whole vectors (tk_copy_run) 64x32x32 wins inside the model at batch
     * 128 (resnet18, 2 threads, PGD --layers, TICKET_XS=1 vs default alternating: its four 3x3
     * convolutions 38-39 vs 41-44 ms per forward + input gradient each) but still loses at
     * batch 1 (inference, 1 thread, --alt TICKET_XS_BYTES=512000: the model 5-6% faster
     * without) and is even at batch 32 -- the choice would need the batch, which the geometry
     * does not have yet.  TICKET_XS_BYTES overrides the budget (bytes of copies per image). */
    int64_t xhr = (int64_t)((g->OH + rr - 1) / rr) * rr + (int64_t)(g->KH - 1) * g->DH;
    double xbytes = (double)g->KW * g->I * xhr * 64.0 * rv;
    double fmas = (double)nnz_all * ((g->OH + rr - 1) / rr) * rr * rv;
    double copies = (double)g->KW * g->I * xhr * 16 * rv - (double)g->I * g->CS;
    const char *force_xs = getenv("TICKET_XS"), *xs_bytes = getenv("TICKET_XS_BYTES");
    const double budget_xs = xs_bytes && atof(xs_bytes) > 0 ? atof(xs_bytes) : 512e3;
    /* Copies larger than the budget are made band by band (XL): the forward copies each band's
     * window of each input-channel chunk into a buffer of its own thread just before every
     * output channel reads it, so they never leave L1 (the whole-image copies of 64x32x32 crowd
     * L2 at batch 1).  The band's KH-1 extra rows are copied again by the next band: (XRR +
     * (KH-1)*DH) / XRR times the floats, which is why copies within the budget stay whole
     * (128x16x16 at s=0.9, one thread: 120 us whole against 137-140 by band at batch 1, 4.3-4.4
     * against 4.7-4.8 ms at batch 32).  64x32x32 at s=0.9 by band against the rows form it had
     * before: 131-134 against 155-158 us at batch 1, 5.0-5.2 against 5.7 ms at batch 32.
     * TICKET_XL=1 makes every shifted-copy forward band by band; TICKET_XL=0 none, and copies
     * over the budget then go back to the other forms (unless TICKET_XS=1 forces them whole). */
    const char *force_xl = getenv("TICKET_XL");
    int local = force_xl && *force_xl ? atoi(force_xl) != 0 : xbytes > budget_xs;
    int use = force_xs && *force_xs ? atoi(force_xs) != 0
                                    : g->OW >= 12 && fmas >= copies && (local || xbytes <= budget_xs);
    if (use) {
      g->XS = 1, g->XRV = rv, g->XRS = 16 * rv, g->XRR = rr;
      g->XNBLK = (g->OH + rr - 1) / rr;
      g->XHR = g->XNBLK * rr + (g->KH - 1) * g->DH;
      g->XL = local, g->XHL = local ? rr + (g->KH - 1) * g->DH : 0;
      /* chunk: the band's window (XRR + (KH-1)*DH rows of every copy) of CH channels */
      double budget = 65536.0;
      e = getenv("TICKET_XS_L1");
      if (e && atof(e) > 0) budget = atof(e);
      double win = (double)(rr + (g->KH - 1) * g->DH) * g->KW * g->XRS * 4.0;
      int xch = (int)(budget / win);
      /* but about 10 non-zeros per output channel and chunk, or the load and store of the
       * sums per chunk cost more than the window's misses */
      double nzo = (double)nnz_all / (g->O > 0 ? g->O : 1);
      if (nzo > 0 && nzo * xch / g->I < 10.0) xch = (int)ceil(10.0 * g->I / nzo);
      e = getenv("TICKET_XS_CH");
      if (e && atoi(e) > 0) xch = atoi(e);
      if (xch < 1) xch = 1;
      if (xch > g->I) xch = g->I;
      g->CH = xch, g->NCH = (g->I + xch - 1) / xch;
      g->IM2COL = g->PK = g->XHP = 0;
      g->RV = g->RR = g->RNBLK = 0;
      g->FNV = rr * rv, g->FNBLK = g->XNBLK, g->FPZ = (int64_t)g->XNBLK * rr * g->XRS;
      g->col_len = (int64_t)g->KW * (g->XL ? (int64_t)g->CH * g->XHL : (int64_t)g->I * g->XHR) * g->XRS + 16;
      int64_t zb = (int64_t)g->O * rr * g->XRS;
      if (zb > g->z_len) g->z_len = zb;
    }
  }
  g->CM = variant == TK_VARIANT_SPARSE_TABLE && g->IM2COL && g->NCH > 1;
  if (g->xq_len > INT32_MAX || g->dz_len > INT32_MAX || g->col_len > INT32_MAX)
    return tk_fail(TK_ERR_UNSUPPORTED, "layer %d (%s): scratch of %lld floats exceeds the 32-bit offsets", layer,
                   l->name, (long long)(g->xq_len > g->dz_len ? g->xq_len : g->dz_len));
  return TK_OK;
}

/* ---- tables ------------------------------------------------------------------------------- */

void tk_tables_free(tk_tables *t) {
  free(t->pos);
  if (t->rpc != t->rp) free(t->rpc);
  if (t->offc != t->off) free(t->offc);
  free(t->rp);
  free(t->off);
  free(t->rpt);
  free(t->offt);
  free(t->perm);
  memset(t, 0, sizeof *t);
}

int32_t *tk_chunk_rows(const int32_t *rp, const int32_t *off, int rows, int64_t per_ch, int nch, int ch) {
  const int nchunks = (nch + ch - 1) / ch;
  int32_t *out = tk_malloc(((size_t)rows * nchunks + 1) * sizeof *out);
  if (!out) return NULL;
  for (int r = 0; r < rows; r++) {
    int32_t j = rp[r];
    for (int c = 0; c < nchunks; c++) {
      out[(int64_t)r * nchunks + c] = j;
      while (j < rp[r + 1] && (int)(off[j] / per_ch % nch) < (c + 1) * ch) j++;
    }
  }
  out[(int64_t)rows * nchunks] = rp[rows];
  return out;
}

/* Reorders the packed entries (pos, off, offc and trow, toff when set) chunk by chunk: chunk c's
 * entries of output channels 0 .. O-1, then chunk c + 1's.  On entry t->rpc holds the o-major
 * row pointers per chunk (tk_chunk_rows); on return the chunk-major ones, row c*O + o.  -1 when
 * out of memory (the tables as they were). */
static int chunk_major(const tk_geom *g, tk_tables *t, int32_t *trow, int32_t *toff) {
  const int64_t nnz = t->nnz, rows = (int64_t)g->O * g->NCH;
  int32_t *rpc = tk_malloc((size_t)(rows + 1) * sizeof *rpc), *src = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *src);
  int64_t *pos = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *pos);
  int32_t *i32 = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *i32);
  if (!rpc || !src || !pos || !i32) {
    free(rpc), free(src), free(pos), free(i32);
    return -1;
  }
  int32_t q = 0; /* new index; src[q]: the entry's index in the o-major order */
  for (int c = 0; c < g->NCH; c++)
    for (int o = 0; o < g->O; o++) {
      rpc[(int64_t)c * g->O + o] = q;
      for (int32_t j = t->rpc[(int64_t)o * g->NCH + c]; j < t->rpc[(int64_t)o * g->NCH + c + 1]; j++) src[q++] = j;
    }
  rpc[rows] = q;
  TK_ASSERT(q == nnz);
  for (int64_t k = 0; k < nnz; k++) pos[k] = t->pos[src[k]];
  free(t->pos);
  t->pos = pos;
  int32_t *arrays[] = {t->off, t->offc != t->off ? t->offc : NULL, trow, toff};
  for (size_t a = 0; a < sizeof arrays / sizeof *arrays; a++) {
    if (!arrays[a]) continue;
    for (int64_t k = 0; k < nnz; k++) i32[k] = arrays[a][src[k]];
    memcpy(arrays[a], i32, (size_t)nnz * sizeof *i32);
  }
  free(t->rpc);
  t->rpc = rpc;
  free(src);
  free(i32);
  return 0;
}

tk_status tk_tables_build(const tk_model *m, int layer, const tk_geom *g, int transposed, tk_tables *t) {
  memset(t, 0, sizeof *t);
  const tk_layer *l = &m->layers[layer];
  const tk_tensor *wt = &m->tensors[l->weight];
  const uint8_t *mask = wt->mask;
  int64_t nnz = tk_weight_nnz(wt);
  if (nnz > INT32_MAX) return tk_fail(TK_ERR_UNSUPPORTED, "layer %d (%s): %lld non-zeros exceed the 32-bit tables", layer, l->name, (long long)nnz);
  t->nnz = nnz;
  t->pos = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *t->pos);
  t->rp = tk_malloc((size_t)(g->O + 1) * sizeof *t->rp);
  t->off = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *t->off);
  if (!t->pos || !t->rp || !t->off) goto nomem;
  /* per packed entry: forward offset, and the transposed row and offset */
  int32_t *trow = NULL, *toff = NULL;
  if (transposed) {
    trow = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *trow);
    toff = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *toff);
    if (!trow || !toff) {
      free(trow);
      free(toff);
      goto nomem;
    }
  }
  int64_t j = 0;
  if (g->linear) {
    for (int o = 0; o < g->O; o++) {
      t->rp[o] = (int32_t)j;
      for (int i = 0; i < g->I; i++) {
        int64_t p = (int64_t)o * g->I + i;
        if (mask && !mask[p]) continue;
        t->pos[j] = p;
        t->off[j] = i * 16;
        if (transposed) trow[j] = i, toff[j] = o * 16;
        j++;
      }
    }
  } else {
    /* walk the weight in its own order (o, il, kh, kw), skipping 8 pruned entries at a time;
     * per kept entry the tap's phase and shift come from a small table */
    const int ig = g->I / g->G, og = g->O / g->G, kk = g->KH * g->KW;
    int32_t *tap_ph = tk_malloc((size_t)kk * sizeof *tap_ph), *tap_sh = tk_malloc((size_t)kk * sizeof *tap_sh);
    if (!tap_ph || !tap_sh) {
      free(tap_ph);
      free(tap_sh);
      free(trow);
      free(toff);
      goto nomem;
    }
    for (int kh = 0; kh < g->KH; kh++)
      for (int kw = 0; kw < g->KW; kw++) {
        int th = kh * g->DH, tw = kw * g->DW;
        tap_ph[kh * g->KW + kw] = (th % g->SH) * g->SW + tw % g->SW;
        tap_sh[kh * g->KW + kw] = (int32_t)((int64_t)(th / g->SH) * g->WQ + tw / g->SW);
      }
    const uint32_t numel = (uint32_t)((int64_t)g->O * ig * kk), per_o = (uint32_t)ig * (uint32_t)kk;
    const uint32_t ukk = (uint32_t)kk;
    int o_next = 0;
    /* 8 mask bytes at a time; the kept ones are visited through the bits of their bytes */
    for (uint32_t base = 0; base < numel; base += 8) {
      uint64_t bits;
      if (!mask) {
        bits = numel - base >= 8 ? 0x0101010101010101ull : (1ull << (8 * (numel - base))) - 1;
        bits &= 0x0101010101010101ull;
      } else if (numel - base >= 8) {
        uint64_t w;
        memcpy(&w, mask + base, 8);
        bits = nonzero_bytes(w);
      } else {
        bits = 0;
        for (uint32_t k = 0; k < numel - base; k++) bits |= (uint64_t)(mask[base + k] != 0) << (8 * k);
      }
      while (bits) {
        uint32_t p = base + (uint32_t)(__builtin_ctzll(bits) >> 3);
        bits &= bits - 1;
        uint32_t o = p / per_o, rest = p - o * per_o, il = rest / ukk, tap = rest - il * ukk;
        while (o_next <= (int)o) t->rp[o_next++] = (int32_t)j;
        int i = ((int)o / og) * ig + (int)il, ph = tap_ph[tap];
        t->pos[j] = p;
        t->off[j] = (int32_t)(((int64_t)ph * g->I + i) * g->CS + tap_sh[tap]);
        if (transposed) {
          trow[j] = i * g->NPH + ph;
          toff[j] = (int32_t)((int64_t)o * g->SZ + g->F - tap_sh[tap]);
        }
        j++;
      }
    }
    while (o_next <= g->O - 1) t->rp[o_next++] = (int32_t)j;
    free(tap_ph);
    free(tap_sh);
  }
  t->rp[g->O] = (int32_t)j;
  TK_ASSERT(j == nnz);
  if (g->IM2COL || g->XS) {
    t->offc = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *t->offc);
    if (!t->offc) {
      free(trow);
      free(toff);
      goto nomem;
    }
    int ig = g->I / g->G, kk = g->KH * g->KW;
    for (int64_t q = 0; q < nnz; q++) {
      int64_t p = t->pos[q];
      int o = (int)(p / ((int64_t)ig * kk)), il = (int)((p / kk) % ig), tap = (int)(p % kk);
      int i = (o / (g->O / g->G)) * ig + il;
      if (g->XL)
        t->offc[q] = (int32_t)((((int64_t)(tap % g->KW) * g->CH + i % g->CH) * g->XHL + (int64_t)(tap / g->KW) * g->DH) *
                               g->XRS);
      else if (g->XS)
        t->offc[q] = (int32_t)((((int64_t)(tap % g->KW) * g->I + i) * g->XHR + (int64_t)(tap / g->KW) * g->DH) * g->XRS);
      else if (g->PK) {
        const int64_t kh = tap / g->KW, kw = tap % g->KW;
        t->offc[q] = (int32_t)(((((int64_t)i * g->KW + kw) * g->SH + kh * g->DH % g->SH) * g->XHP + kh * g->DH / g->SH) * g->OW);
      }
      else
        t->offc[q] = (int32_t)(((int64_t)i * kk + tap) * g->P16);
    }
  } else {
    t->offc = t->off;
  }
  if (g->NCH == 1) {
    t->rpc = t->rp;
  } else {
    /* entries of a row are in input-channel order (off / CS % I is the channel) */
    t->rpc = tk_chunk_rows(t->rp, t->off, g->O, g->CS, g->I, g->CH);
    if (!t->rpc || (g->CM && chunk_major(g, t, trow, toff))) {
      free(trow);
      free(toff);
      goto nomem;
    }
  }
  if (transposed) {
    int64_t rows = g->dx_rows;
    t->rpt = tk_calloc((size_t)rows + 1, sizeof *t->rpt);
    t->offt = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *t->offt);
    t->perm = tk_malloc((size_t)(nnz ? nnz : 1) * sizeof *t->perm);
    if (!t->rpt || !t->offt || !t->perm) {
      free(trow);
      free(toff);
      goto nomem;
    }
    for (int64_t k = 0; k < nnz; k++) t->rpt[trow[k] + 1]++;
    for (int64_t r = 0; r < rows; r++) t->rpt[r + 1] += t->rpt[r];
    int32_t *fill = tk_malloc((size_t)rows * sizeof *fill + 1);
    if (!fill) {
      free(trow);
      free(toff);
      goto nomem;
    }
    memcpy(fill, t->rpt, (size_t)rows * sizeof *fill);
    for (int64_t k = 0; k < nnz; k++) {
      int32_t d = fill[trow[k]]++;
      t->offt[d] = toff[k];
      t->perm[d] = (int32_t)k;
    }
    free(fill);
    free(trow);
    free(toff);
  }
  return TK_OK;
nomem:
  tk_tables_free(t);
  return tk_fail(TK_ERR_NOMEM, "layer %d (%s): out of memory building the pattern tables", layer, l->name);
}

/* ---- the batch-vectorised conv's blocking ---------------------------------------------------- */

/* Channels per chunk for a pass whose rows average `nzr` non-zeros over `nch` channels and
 * whose window is `cell` bytes per channel: whole 8-channel groups, about 16 non-zeros per
 * row and chunk, the window at most about 80 KB (L1 and its fill from L2 keep up); no chunks
 * (nch) when that leaves fewer than 6 non-zeros per row and chunk, where the carried partial
 * sums cost more than the L2 traffic saved.  bench_layers, batch 128, one thread: 128x16x16,
 * 256x8x8, 512x4x4 at s=0.9/0.95 gained 10-40% this way, 32x32 at s=0.9 about 10%. */
static int batch_chunk(int nch, double nzr, double cell) {
  if (nzr <= 0) return nch;
  int ch = (int)(16.0 * nch / nzr / 8.0 + 0.5) * 8, cap = (int)(81920.0 / cell) / 8 * 8;
  if (ch > cap) ch = cap;
  if (ch < 8) ch = 8;
  if (ch >= nch || nzr * ch / nch < 6.0) return nch;
  return ch;
}

/* A register block of a w x h map: *cols (the largest divisor of w up to 16) by *rows (the
 * largest divisor of h with cols * rows <= 16): one 16x16 transpose stores it. */
static void register_block(int w, int h, int *cols, int *rows) {
  *cols = *rows = 1;
  for (int d = 1; d <= 16 && d <= w; d++)
    if (w % d == 0) *cols = d;
  for (int d = 1; d * *cols <= 16 && d <= h; d++)
    if (h % d == 0) *rows = d;
}

void tk_batch_geom_make(const tk_geom *g, int64_t nnz, tk_batch_geom *bg) {
  memset(bg, 0, sizeof *bg);
  /* forward: QB output columns by QR output rows; input gradient, stride 1: IB by IR inputs */
  register_block(g->OW, g->OH, &bg->QB, &bg->QR);
  register_block(g->W, g->H, &bg->IB, &bg->IR);
  for (int d = 2; d <= 16 && d <= g->W; d += 2) /* stride-2 input gradient: columns per block */
    if (g->W % d == 0) bg->XB = d;
  /* weight gradient: bands of WR output rows (a divisor of OH) whose window of xb (every
   * channel and phase, WR*SH + KH rows) stays within about 512 KB of L2, but at least 32
   * positions per band so the per-band horizontal sums stay cheap */
  bg->WR = 1;
  for (int d = 1; d <= g->OH; d++) {
    if (g->OH % d) continue;
    double win = (double)g->I * g->NPH * (d * g->SH + g->KH) / g->SH * g->WQ * 64.0;
    if (win <= 512e3 || (int64_t)(bg->WR * g->WQ) < 32) bg->WR = d;
    else break;
  }
  /* channel chunks: the forward's window of one register block is about
   * ((QR - 1)*SH + (KH - 1)*DH + 1) x ((QB - 1)*SW + (KW - 1)*DW + 1) input pixels per input
   * channel, the input gradient's (IR + (KH - 1)*DH) x (IB + (KW - 1)*DW) cells of dzb per output
   * channel; the strided input gradient and grouped layers are not chunked */
  bg->FCH = g->I, bg->BCH = g->O;
  /* No chunks for register blocks of fewer than 8 positions: each carry of the partial sums
   * and each chunk boundary then serves only a few FMAs per non-zero.  512x512 2x2 (blocks of
   * 4), batch 128, one thread, chunked vs not: forward 15.9-16.7 vs 8.3-8.6 ms at s=0.9, 8.7 vs
   * 5.0 at 0.95, 2.1 vs 1.3 at 0.99; input gradient 14.5-14.7 vs 9.2-9.5, 7.9 vs 5.4, 2.1 vs 1.5.
   * A stride-1 forward whose one register block is the whole output map (4x4) was once left
   * unchunked too (512x512 4x4 unchunked 20-30% faster) while the kernel walked each row to
   * find its chunks; with the row pointers per chunk passed in (tk_chunk_rows) chunks of
   * 16 win there as well (bench_layers --alt TICKET_BATCH_CHUNK=16, ms unchunked vs chunked:
   * batch 128, 2 threads 15.1 / 17.7 vs 14.4 / 15.6 at s=0.9, 25.9 vs 23.7 at 0.8, 9.6 vs 9.2 at
   * 0.95; batch 128, 1 thread 34.7 vs 31.2; batch 32, 2 threads 4.25 vs 4.01).  8x8 maps keep
   * theirs: 256x8x8 chunked 3-8% faster at 0.9 and 0.95. */
  const int fwd_chunks = bg->QR * bg->QB >= 8, bwd_chunks = g->NPH == 1 && bg->IR * bg->IB >= 8;
  if (g->G == 1) {
    double rows = ((bg->QR - 1) * g->SH + (g->KH - 1) * g->DH + 1.0) / g->SH;
    double cols = ((bg->QB - 1) * g->SW + (g->KW - 1) * g->DW + 1.0) / g->SW;
    if (fwd_chunks)
      bg->FCH = batch_chunk(g->I, (double)nnz / (g->O > 0 ? g->O : 1), g->NPH * rows * cols * 64.0);
    if (bwd_chunks)
      bg->BCH = batch_chunk(g->O, (double)nnz / (g->I > 0 ? g->I : 1),
                            (bg->IR + (g->KH - 1) * g->DH) * (double)(bg->IB + (g->KW - 1) * g->DW) * 64.0);
  }
  const char *force = getenv("TICKET_BATCH_CHUNK"); /* channels per chunk, 0 = none: experiments, tests */
  if (force && *force) {
    int ch = atoi(force);
    bg->FCH = ch > 0 && ch < g->I && g->G == 1 ? ch : g->I;
    bg->BCH = ch > 0 && ch < g->O && g->G == 1 && g->NPH == 1 ? ch : g->O;
  }
  /* sized for chunking both passes whatever was chosen, so the host's scratch never depends on
   * the environment at build time matching that at emission */
  bg->carry = (int64_t)g->O * bg->QR * bg->QB * 16;
  if ((int64_t)g->I * bg->IR * bg->IB * 16 > bg->carry) bg->carry = (int64_t)g->I * bg->IR * bg->IB * 16;
}

/* ---- the layer source --------------------------------------------------------------------- */

#define TK_EMIT_FORMAT 1 /* bump when the emitter's output changes in a way the templates do not show */

static void emit_kargs(tk_codebuf *cb) {
  tk_cb_puts(cb, "typedef struct {\n");
#define X(t, n, c) tk_cb_printf(cb, "  %s %s; /* %s */\n", #t, #n, c);
  TK_KARGS_FIELDS(X)
#undef X
  tk_cb_puts(cb, "} tk_kargs;");
}

typedef struct {
  char names[64][16];
  char values[64][24];
  tk_tparam p[64];
  int n;
} param_set;

static void pset(param_set *s, const char *name, int64_t v) {
  TK_ASSERT(s->n < 64);
  snprintf(s->names[s->n], sizeof s->names[0], "%s", name);
  snprintf(s->values[s->n], sizeof s->values[0], "%lld", (long long)v);
  s->p[s->n].name = s->names[s->n];
  s->p[s->n].value = s->values[s->n];
  s->n++;
}

static void conv_params(param_set *s, const tk_geom *g) {
  pset(s, "I", g->I), pset(s, "O", g->O), pset(s, "H", g->H), pset(s, "W", g->W);
  pset(s, "OH", g->OH), pset(s, "OW", g->OW), pset(s, "SH", g->SH), pset(s, "SW", g->SW);
  pset(s, "PH", g->PH), pset(s, "PW", g->PW), pset(s, "HQ", g->HQ), pset(s, "WQ", g->WQ);
  pset(s, "CS", g->CS), pset(s, "NPH", g->NPH), pset(s, "PHMASK", (int64_t)g->PHMASK), pset(s, "NV", g->NV), pset(s, "NP", partials(g->NV));
  pset(s, "NBLK", g->NBLK), pset(s, "PZF", g->PZF), pset(s, "NCH", g->NCH), pset(s, "CM", g->CM);
  pset(s, "IM2COL", g->IM2COL), pset(s, "PK", g->PK), pset(s, "XHP", g->XHP), pset(s, "P16", g->P16), pset(s, "FNV", g->FNV), pset(s, "FNP", partials(g->FNV));
  pset(s, "FNBLK", g->FNBLK), pset(s, "FPZ", g->FPZ), pset(s, "KH", g->KH), pset(s, "KW", g->KW);
  pset(s, "DH", g->DH), pset(s, "DW", g->DW);
  pset(s, "XS", g->XS), pset(s, "XRS", g->XRS), pset(s, "XHR", g->XHR), pset(s, "XRV", g->XRV);
  pset(s, "XL", g->XL), pset(s, "XHL", g->XHL), pset(s, "CH", g->CH);
  pset(s, "XRR", g->XRR), pset(s, "XNBLK", g->XNBLK), pset(s, "XNP", partials(g->XRR * g->XRV > 0 ? g->XRR * g->XRV : 1));
  pset(s, "RV", g->RV), pset(s, "RR", g->RR), pset(s, "RNBLK", g->RNBLK), pset(s, "RNP", partials(g->RV * g->RR > 0 ? g->RV * g->RR : 1));
  pset(s, "NVB", g->NVB), pset(s, "NPB", partials(g->NVB));
  pset(s, "NBLKB", g->NBLKB), pset(s, "PZB", g->PZB), pset(s, "F", g->F), pset(s, "SZ", g->SZ);
}

/* Straight-line chunk functions for one table: rows [0, rows), rp/off the CSR, the value of
 * entry k is w[widx[k]] (or the literal vals[widx[k]] when baked).  prefix "uf" or "ub". */
static void emit_chunks(tk_codebuf *cb, const char *prefix, const char *nz_macro, int64_t rows, const int32_t *rp,
                        const int32_t *off, const int32_t *widx, const float *baked, int nv) {
  int np = partials(nv);
  int64_t nfn = 0;
  int64_t *first = malloc((size_t)(rows + 1) * sizeof *first);
  if (!first) {
    tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory emitting unrolled code");
    return;
  }
  for (int64_t r = 0; r < rows; r++) {
    first[r] = nfn;
    for (int64_t k0 = rp[r]; k0 < rp[r + 1]; k0 += TK_UNROLL_CHUNK, nfn++) {
      int64_t k1 = k0 + TK_UNROLL_CHUNK < rp[r + 1] ? k0 + TK_UNROLL_CHUNK : rp[r + 1];
      /* accumulators a<q>_<v>: set 0 starts from z, the other partial sets from zero */
      tk_cb_printf(cb, "static __attribute__((noinline)) void TK_FN(%s_%lld)(const float *s, const float *w, float *z) {\n",
                   prefix, (long long)nfn);
      for (int q = 0; q < np; q++)
        for (int v = 0; v < nv; v++) {
          if (q == 0) tk_cb_printf(cb, "  tk_v16 a0_%d = tk_ld(z + %d);\n", v, 16 * v);
          else tk_cb_printf(cb, "  tk_v16 a%d_%d = (tk_v16){0};\n", q, v);
        }
      for (int64_t k = k0; k < k1; k++) {
        int q = (int)((k - k0) % np);
        int64_t wi = widx ? widx[k] : k;
        if (baked) {
          float v = baked[wi];
          if (!isfinite(v)) {
            tk_cb_fail(cb, TK_ERR_ARG, "value-baked weight %lld is not finite (%g)", (long long)wi, v);
            free(first);
            return;
          }
          tk_cb_printf(cb, "  %sV(%d, %af, %d);\n", nz_macro, q, (double)v, off[k]);
        } else {
          tk_cb_printf(cb, "  %s(%d, %lld, %d);\n", nz_macro, q, (long long)wi, off[k]);
        }
      }
      for (int v = 0; v < nv; v++) {
        tk_cb_printf(cb, "  tk_st(z + %d, a0_%d", 16 * v, v);
        for (int q = 1; q < np; q++) tk_cb_printf(cb, " + a%d_%d", q, v);
        tk_cb_puts(cb, ");\n");
      }
      tk_cb_puts(cb, "  (void)w;\n}\n");
    }
  }
  first[rows] = nfn;
  tk_cb_printf(cb, "static const int32_t TK_FN(%s_first)[%lld] = {", prefix, (long long)rows + 1);
  for (int64_t r = 0; r <= rows; r++) tk_cb_printf(cb, "%s%lld", r == 0 ? "\n  " : r % 16 ? ", " : ",\n  ", (long long)first[r]);
  tk_cb_printf(cb, "};\nstatic const tk_uchunk_fn TK_FN(%s_fn)[%lld] = {", prefix, (long long)(nfn ? nfn : 1));
  if (!nfn) tk_cb_puts(cb, "0");
  for (int64_t f = 0; f < nfn; f++) tk_cb_printf(cb, "%sTK_FN(%s_%lld)", f == 0 ? "\n  " : f % 4 ? ", " : ",\n  ", prefix, (long long)f);
  tk_cb_puts(cb, "};\n");
  free(first);
}

static void emit_i32_array(tk_codebuf *cb, const char *name, const int32_t *a, int64_t n) {
  tk_cb_printf(cb, "const int32_t TK_FN(%s)[%lld] = {", name, (long long)(n ? n : 1));
  if (!n) tk_cb_puts(cb, "0");
  for (int64_t k = 0; k < n; k++) tk_cb_printf(cb, "%s%d", k == 0 ? "\n  " : k % 16 ? ", " : ",\n  ", a[k]);
  tk_cb_puts(cb, "};\n");
}

void tk_emit_body(tk_codebuf *body, const tk_model *m, int layer, const tk_geom *g, const tk_tables *t,
                  const tk_emit_opts *eo, uint64_t key[2]) {
  const tk_layer *l = &m->layers[layer];
  tk_variant v = eo->variant;
  if (v != TK_VARIANT_SPARSE_TABLE && v != TK_VARIANT_SPARSE_UNROLLED && v != TK_VARIANT_VALUE_BAKED) {
    tk_cb_fail(body, TK_ERR_ARG, "layer %d (%s): variant %s is not generated", layer, l->name, tk_variant_name(v));
    return;
  }
  if (v != TK_VARIANT_SPARSE_TABLE && g->linear) {
    tk_cb_fail(body, TK_ERR_UNSUPPORTED, "layer %d (%s): %s code is generated for conv2d only", layer, l->name,
               tk_variant_name(v));
    return;
  }
  int need_t = eo->training || eo->static_tables;
  if (need_t && !t->rpt) {
    tk_cb_fail(body, TK_ERR_INTERNAL, "layer %d (%s): transposed table missing", layer, l->name);
    return;
  }
  tk_codebuf kargs;
  tk_cb_init(&kargs);
  emit_kargs(&kargs);
  if (kargs.err) {
    tk_cb_fail(body, kargs.err, "%s", kargs.msg);
    tk_cb_free(&kargs);
    return;
  }
  tk_tparam cp = {"KARGS", kargs.buf};
  tk_template_expand(body, "common.h.in", &cp, 1);
  tk_cb_free(&kargs);
  param_set ps = {0};
  if (g->linear) {
    pset(&ps, "I", g->I), pset(&ps, "O", g->O);
    tk_template_expand(body, "linear_table.c.in", ps.p, ps.n);
  } else {
    conv_params(&ps, g);
    tk_template_expand(body, "conv_table.c.in", ps.p, ps.n);
    if (eo->vec_batch && v == TK_VARIANT_SPARSE_TABLE) {
      tk_batch_geom bg;
      tk_batch_geom_make(g, t->nnz, &bg);
      param_set bs = {0};
      static const char *const keep[] = {"I", "O", "H", "W", "OH", "OW", "SH", "SW", "PH", "PW", "HQ", "WQ", "CS",
                                         "NPH", "PHMASK", "F", "SZ"};
      for (size_t k = 0; k < sizeof keep / sizeof *keep; k++)
        for (int q = 0; q < ps.n; q++)
          if (!strcmp(ps.p[q].name, keep[k])) pset(&bs, keep[k], strtoll(ps.p[q].value, NULL, 10));
      pset(&bs, "QB", bg.QB), pset(&bs, "QR", bg.QR), pset(&bs, "BB", (g->CS + 7) / 8), pset(&bs, "XB", bg.XB);
      pset(&bs, "IB", bg.IB), pset(&bs, "IR", bg.IR), pset(&bs, "WR", bg.WR);
      pset(&bs, "FCH", bg.FCH), pset(&bs, "BCH", bg.BCH);
      tk_template_expand(body, "conv_batch.c.in", bs.p, bs.n);
    }
  }
  if (v == TK_VARIANT_SPARSE_UNROLLED || v == TK_VARIANT_VALUE_BAKED) {
    const float *baked = NULL;
    float *vals = NULL;
    if (v == TK_VARIANT_VALUE_BAKED) {
      const tk_tensor *wt = &m->tensors[l->weight];
      vals = malloc((size_t)(t->nnz ? t->nnz : 1) * sizeof *vals);
      if (!vals) {
        tk_cb_fail(body, TK_ERR_NOMEM, "out of memory emitting layer %d", layer);
        return;
      }
      for (int64_t k = 0; k < t->nnz; k++) vals[k] = wt->data[t->pos[k]];
      baked = vals;
    }
    tk_codebuf uf, ub;
    tk_cb_init(&uf);
    tk_cb_init(&ub);
    emit_chunks(&uf, "uf", "TK_UF", g->O, t->rp, t->offc, NULL, baked, g->FNV);
    int have_ub = eo->training && v == TK_VARIANT_SPARSE_UNROLLED;
    if (have_ub) emit_chunks(&ub, "ub", "TK_UB", g->dx_rows, t->rpt, t->offt, NULL, NULL, g->NVB); /* host passes wt */
    free(vals);
    if (uf.err || ub.err) {
      tk_cb_fail(body, uf.err ? uf.err : ub.err, "layer %d (%s): %s", layer, l->name, uf.err ? uf.msg : ub.msg);
    } else {
      param_set us = {0};
      static const char *const keep[] = {"H", "W", "OH", "OW", "SH", "SW", "PH", "PW", "WQ", "NPH",
                                         "NVB", "NPB", "NBLKB", "PZB", "IM2COL", "FNV", "FNBLK"};
      for (size_t k = 0; k < sizeof keep / sizeof *keep; k++)
        for (int q = 0; q < ps.n; q++)
          if (!strcmp(ps.p[q].name, keep[k])) pset(&us, keep[k], strtoll(ps.p[q].value, NULL, 10));
      pset(&us, "HAVE_UB", have_ub);
      tk_tparam up[32];
      memcpy(up, us.p, (size_t)us.n * sizeof *up);
      int nup = us.n;
      up[nup++] = (tk_tparam){"UF", uf.buf ? uf.buf : ""};
      up[nup++] = (tk_tparam){"UB", ub.buf ? ub.buf : ""};
      tk_template_expand(body, "conv_unrolled.c.in", up, nup);
    }
    tk_cb_free(&uf);
    tk_cb_free(&ub);
  }
  if (eo->static_tables) {
    const tk_tensor *wt = &m->tensors[l->weight];
    tk_cb_puts(body, "\n/* ---- tables and values (ahead-of-time build) ---- */\n");
    emit_i32_array(body, "rp", t->rp, g->O + 1);
    emit_i32_array(body, "rpc", t->rpc, (int64_t)g->O * g->NCH + 1);
    emit_i32_array(body, "off", t->off, t->nnz);
    emit_i32_array(body, "offc", t->offc, t->nnz);
    emit_i32_array(body, "rpt", t->rpt, g->dx_rows + 1);
    emit_i32_array(body, "offt", t->offt, t->nnz);
    emit_i32_array(body, "perm", t->perm, t->nnz);
    tk_cb_printf(body, "const float TK_FN(w)[%lld] = {", (long long)(t->nnz ? t->nnz : 1));
    if (!t->nnz) tk_cb_puts(body, "0");
    for (int64_t k = 0; k < t->nnz; k++) {
      float x = wt->data[t->pos[k]];
      if (!isfinite(x)) {
        tk_cb_fail(body, TK_ERR_ARG, "layer %d (%s): weight %lld is not finite", layer, l->name, (long long)t->pos[k]);
        break;
      }
      tk_cb_printf(body, "%s%af", k == 0 ? "\n  " : k % 8 ? ", " : ",\n  ", (double)x);
    }
    tk_cb_puts(body, "};\n");
  }
  if (body->err == TK_OK && key) {
    tk_hash h;
    tk_hash_init(&h, TK_EMIT_FORMAT);
    tk_hash_update(&h, body->buf, body->len);
    tk_hash_final(&h, key);
  }
}

/* Provenance text must not close the comment it sits in. */
static void put_comment_safe(tk_codebuf *cb, const char *s) {
  for (const char *p = s ? s : "-"; *p; p++) {
    if (p[0] == '*' && p[1] == '/') tk_cb_puts(cb, "*_");
    else if ((unsigned char)*p < 0x20 || *p == 0x7f) tk_cb_puts(cb, "?");
    else tk_cb_put(cb, p, 1);
  }
}

void tk_emit_layer(tk_codebuf *cb, const tk_model *m, int layer, const tk_geom *g, const tk_tables *t,
                   const tk_emit_opts *eo, uint64_t key[2]) {
  tk_codebuf body;
  tk_cb_init(&body);
  uint64_t k[2] = {0, 0};
  tk_emit_body(&body, m, layer, g, t, eo, k);
  if (body.err) {
    tk_cb_fail(cb, body.err, "%s", body.msg);
    tk_cb_free(&body);
    return;
  }
  const tk_layer *l = &m->layers[layer];
  int64_t numel = m->tensors[l->weight].numel;
  tk_cb_puts(cb, "/* Generated by Ticket " TICKET_VERSION " -- do not edit.\n * model:     ");
  put_comment_safe(cb, eo->model_hash);
  tk_cb_puts(cb, " (");
  put_comment_safe(cb, m->arch);
  tk_cb_printf(cb, ")\n * layer:     %d ", layer);
  put_comment_safe(cb, l->name);
  tk_cb_printf(cb, " (%s)\n * variant:   %s%s\n * templates: common.h.in v%d, %s v%d", tk_op_name(l->op),
               tk_variant_name(eo->variant), eo->training ? " (with gradients)" : "", template_version("common.h.in"),
               g->linear ? "linear_table.c.in" : "conv_table.c.in",
               template_version(g->linear ? "linear_table.c.in" : "conv_table.c.in"));
  if (eo->variant != TK_VARIANT_SPARSE_TABLE)
    tk_cb_printf(cb, ", conv_unrolled.c.in v%d", template_version("conv_unrolled.c.in"));
  if (eo->vec_batch && !g->linear && eo->variant == TK_VARIANT_SPARSE_TABLE)
    tk_cb_printf(cb, ", conv_batch.c.in v%d", template_version("conv_batch.c.in"));
  if (g->linear)
    tk_cb_printf(cb, "\n * params:    I=%d O=%d (16 images per block)", g->I, g->O);
  else
    tk_cb_printf(cb,
                 "\n * params:    I=%d O=%d groups=%d in=%dx%d out=%dx%d kernel=%dx%d stride=%dx%d pad=%dx%d "
                 "dilation=%dx%d\n *            grid=%dx%d phases=%d im2col=%d%s NV=%d NBLK=%d rows=%dx%dx%d shifted=%dx%dx%d%s chunks=%dx%d%s "
                 "NVB=%d NBLKB=%d F=%lld SZ=%lld",
                 g->I, g->O, g->G, g->H, g->W, g->OH, g->OW, g->KH, g->KW, g->SH, g->SW, g->PH, g->PW, g->DH, g->DW,
                 g->HQ, g->WQ, g->NPH, g->IM2COL, g->PK ? " (shifted copies)" : "", g->FNV, g->FNBLK, g->RV, g->RR, g->RNBLK, g->XRV, g->XRR, g->XNBLK, g->XL ? " (by band)" : "", g->NCH, g->CH, g->CM ? " (chunk-major)" : "", g->NVB, g->NBLKB, (long long)g->F,
                 (long long)g->SZ);
  tk_cb_printf(cb, "\n * nnz:       %lld of %lld (sparsity %.4f)\n * key:       %016" PRIx64 "%016" PRIx64 "\n */\n",
               (long long)t->nnz, (long long)numel, numel ? 1.0 - (double)t->nnz / (double)numel : 0.0, k[0], k[1]);
  tk_cb_printf(cb, "#define TK_FN(x) tk_k%016" PRIx64 "_##x\n", k[0]);
  tk_cb_put(cb, body.buf, body.len);
  tk_cb_free(&body);
  if (key) key[0] = k[0], key[1] = k[1];
}
