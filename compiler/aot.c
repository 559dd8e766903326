/* aot.c -- ahead-of-time artifacts: one standalone C translation unit per model (plus its
 * header, and a main() for executables), and the build of shared objects and executables
 * with the host or a cross C compiler.  See aot.h for the pipeline and the C ABI.
 *
 * The generated code comes from templates/aot_*.c.in (expanded with tk_template_expand,
 * the project's template engine in emit.c) and is self-contained: every helper and table is
 * static, so several artifacts can be linked into one program.  Kernels are the portable
 * ones of templates/aot_prelude.c.in; the JIT's kernels (emit.c) are not reused here because
 * they are per-layer translation units with external symbols and an argument block made for
 * the runtime's thread pool.
 *
 * Sections: names and options / the AOT plan (variants, slots) / emission / the build. */
#include "aot.h"

#include "emit.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- names and options ------------------------------------------------------------------ */

const char *tk_aot_variant_name(tk_aot_variant v) {
  switch (v) {
  case TK_AOT_OP: return "portable-op";
  case TK_AOT_SPARSE_TABLE: return "sparse-table";
  case TK_AOT_DENSE: return "dense-direct";
  case TK_AOT_EMPTY: return "empty";
  case TK_AOT_ALIAS: return "alias";
  }
  return "unknown";
}

void tk_aot_opts_default(tk_aot_opts *o) {
  memset(o, 0, sizeof *o);
  o->emit = TK_AOT_EMIT_C;
  o->static_link = -1;
  tk_pass_opts_default(&o->passes);
}

static int valid_name(const char *s) {
  if (!s || !*s || strlen(s) > 64) return 0;
  if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_')) return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
  return strncmp(s, "tk_", 3) != 0 && strncmp(s, "TK_", 3) != 0;
}

char *tk_aot_name_from_path(const char *path) {
  const char *base = strrchr(path ? path : "", '/');
  base = base ? base + 1 : (path ? path : "");
  size_t n = strcspn(base, ".");
  char *s = tk_malloc(n + 8);
  if (!s) return NULL;
  size_t k = 0;
  if (n == 0 || (base[0] >= '0' && base[0] <= '9')) {
    memcpy(s, "model", 5);
    k = 5;
    if (n) s[k++] = '_';
  }
  for (size_t i = 0; i < n && k < 64; i++) {
    char c = base[i];
    s[k++] = ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') ? c : '_';
  }
  s[k] = 0;
  if (!strncmp(s, "tk_", 3) || !strncmp(s, "TK_", 3)) s[0] = s[0] == 't' ? 'm' : 'M';
  return s;
}

/* ---- small emission helpers -------------------------------------------------------------- */

/* Text safe inside a C comment: no comment terminator, printable ASCII only. */
static void put_comment_text(tk_codebuf *cb, const char *s) {
  for (const char *p = s ? s : ""; *p; p++) {
    char c = (*p >= 32 && *p < 127) ? *p : '?';
    if (c == '*' && p[1] == '/') c = '+';
    if (c == '/' && p[1] == '*') c = '|';
    tk_cb_put(cb, &c, 1);
  }
}

/* A C string literal: quotes, backslashes, '?' (trigraphs) and non-printables escaped. */
static void put_c_string(tk_codebuf *cb, const char *s) {
  tk_cb_put(cb, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\' || *p == '?') {
      char e[2] = {'\\', (char)*p};
      tk_cb_put(cb, e, 2);
    } else if (*p < 32 || *p >= 127) {
      tk_cb_printf(cb, "\\%03o", *p);
    } else {
      tk_cb_put(cb, (const char *)p, 1);
    }
  }
  tk_cb_put(cb, "\"", 1);
}

/* A float literal that converts back to exactly v ("%.9g" round-trips binary32). */
static void put_float(tk_codebuf *cb, float v) {
  char b[48];
  snprintf(b, sizeof b, "%.9g", (double)v);
  if (!strpbrk(b, ".e")) strcat(b, ".0");
  strcat(b, "f");
  tk_cb_puts(cb, b);
}

static void emit_f32_array(tk_codebuf *cb, const char *name, const float *a, int64_t n, const char *what) {
  TK_ASSERT(n >= 1);
  tk_cb_printf(cb, "static const float %s[%" PRId64 "] = { /* %s */", name, n, what);
  for (int64_t i = 0; i < n; i++) {
    tk_cb_puts(cb, i % 8 ? " " : "\n  ");
    put_float(cb, a[i]);
    tk_cb_put(cb, ",", 1);
  }
  tk_cb_puts(cb, "\n};\n");
}

static void emit_i32_array(tk_codebuf *cb, const char *name, const int32_t *a, int64_t n, const char *what) {
  TK_ASSERT(n >= 1);
  tk_cb_printf(cb, "static const int32_t %s[%" PRId64 "] = { /* %s */", name, n, what);
  for (int64_t i = 0; i < n; i++) tk_cb_printf(cb, "%s%" PRId32 ",", i % 16 ? " " : "\n  ", a[i]);
  tk_cb_puts(cb, "\n};\n");
}

/* Line number of the end of a code buffer, counted incrementally (the buffer only grows). */
typedef struct {
  size_t scanned;
  int lines;
} line_counter;

static int count_lines(const tk_codebuf *cb, line_counter *lc) {
  if (lc->lines == 0) lc->lines = 1;
  for (; lc->scanned < cb->len; lc->scanned++) lc->lines += cb->buf[lc->scanned] == '\n';
  return lc->lines;
}

static tk_status check_finite(const tk_model *m, int li, const tk_tensor *t) {
  for (int64_t k = 0; k < t->numel; k++)
    if (!isfinite(t->data[k]))
      return tk_fail(TK_ERR_FORMAT, "layer %d (%s): tensor %s[%" PRId64 "] = %g is not finite", li, m->layers[li].name,
                     t->name, k, (double)t->data[k]);
  return TK_OK;
}

/* ---- the AOT plan -------------------------------------------------------------------------- */

/* Conv geometry over the phase-split padded input (templates/aot_prelude.c.in). */
typedef struct {
  int I, H, W, O, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, G, Ig, Og;
  int direct;     /* 1x1, stride 1, no padding: the taps read x itself */
  int HQ, WQ;     /* one stride phase of the padded input */
  int64_t plane;  /* HQ*WQ */
  int64_t cstride;/* floats per input channel: SH*SW*plane */
  int64_t padimg; /* floats per image of the scratch, with slack */
} conv_geom;

static tk_status conv_geom_make(const tk_model *m, int li, conv_geom *g) {
  const tk_layer *l = &m->layers[li];
  memset(g, 0, sizeof *g);
  g->I = l->in.c, g->H = l->in.h, g->W = l->in.w;
  g->O = l->out.c, g->OH = l->out.h, g->OW = l->out.w;
  g->KH = l->kh, g->KW = l->kw, g->SH = l->sh, g->SW = l->sw, g->PH = l->ph, g->PW = l->pw, g->DH = l->dh,
  g->DW = l->dw, g->G = l->groups;
  g->Ig = g->I / g->G, g->Og = g->O / g->G;
  g->direct = g->KH == 1 && g->KW == 1 && g->SH == 1 && g->SW == 1 && g->PH == 0 && g->PW == 0;
  if (g->direct) {
    g->HQ = g->H, g->WQ = g->W;
    g->plane = g->cstride = (int64_t)g->H * g->W;
    g->padimg = 0;
  } else {
    g->HQ = (g->H + 2 * g->PH + g->SH - 1) / g->SH;
    g->WQ = (g->W + 2 * g->PW + g->SW - 1) / g->SW;
    g->plane = (int64_t)g->HQ * g->WQ;
    g->cstride = (int64_t)g->SH * g->SW * g->plane;
    /* slack: lanes of dropped columns read at most (KW-1)*DW/SW floats past the last plane */
    g->padimg = ((int64_t)g->I * g->cstride + (int64_t)g->KW * g->DW + 64 + 15) / 16 * 16;
  }
  if ((int64_t)g->I * g->cstride + g->plane >= INT32_MAX || (int64_t)g->OH * g->WQ >= INT32_MAX)
    return tk_fail(TK_ERR_UNSUPPORTED, "layer %d (%s): input %dx%dx%d is too large for 32-bit table offsets", li,
                   l->name, g->I, g->H, g->W);
  return TK_OK;
}

/* offset of input channel c (absolute, or within the group for shared tables), tap (ky, kx) */
static int32_t conv_off(const conv_geom *g, int c, int ky, int kx) {
  const int r = ky * g->DH, s = kx * g->DW;
  return (int32_t)(c * g->cstride + ((int64_t)(r % g->SH) * g->SW + s % g->SW) * g->plane + (int64_t)(r / g->SH) * g->WQ +
                   s / g->SW);
}

/* ---- generation ---------------------------------------------------------------------------- */

typedef struct {
  const tk_model *m;     /* after the passes */
  const tk_fusion *fu;
  const tk_aot_opts *o;
  tk_aot_unit *u;
  int *root;             /* per value: the value whose buffer it uses */
  int *slot_of;          /* per value: slot (of its root) */
  int64_t *slot_size;    /* per slot: floats per image */
  int n_slots;
  uint64_t hash[2];
  const tk_model *src;   /* the model as given */
  double sparsity;
} gen;

/* Variant and reason per layer; value roots, liveness and slots. */
static tk_status plan(gen *g) {
  const tk_model *m = g->m;
  tk_aot_unit *u = g->u;
  int nl = m->n_layers;
  for (int i = 0; i < nl; i++) {
    const tk_layer *l = &m->layers[i];
    tk_aot_layer *al = &u->layers[i];
    if (!(al->name = tk_strdup(l->name))) return TK_ERR_NOMEM;
    al->op = l->op;
    al->relu = g->fu->relu_epilogue[i];
    al->slot = -1;
    al->variant = TK_AOT_OP;
    snprintf(al->reason, sizeof al->reason, "portable op");
    if (l->op == TK_OP_CONV2D || l->op == TK_OP_LINEAR) {
      const tk_tensor *w = &m->tensors[l->weight];
      al->numel = w->numel;
      al->nnz = tk_tensor_nnz(w);
      if (al->nnz == 0) {
        al->variant = TK_AOT_EMPTY;
        snprintf(al->reason, sizeof al->reason, "every weight pruned: output = bias");
      } else if (w->mask && al->nnz < al->numel) {
        al->variant = TK_AOT_SPARSE_TABLE;
        snprintf(al->reason, sizeof al->reason, "masked, %.1f%% pruned: only kept weights are stored",
                 100.0 * (1.0 - (double)al->nnz / (double)al->numel));
      } else {
        al->variant = TK_AOT_DENSE;
        snprintf(al->reason, sizeof al->reason, "%s: direct dense loops", w->mask ? "mask keeps every weight" : "no mask");
      }
      tk_status st = check_finite(m, i, w);
      if (st == TK_OK && l->bias >= 0) st = check_finite(m, i, &m->tensors[l->bias]);
      if (st != TK_OK) return st;
    } else if (l->op == TK_OP_FLATTEN) {
      al->variant = TK_AOT_ALIAS;
      snprintf(al->reason, sizeof al->reason, "NCHW is already flat: same data");
    } else if (g->fu->absorbed[i]) {
      al->variant = TK_AOT_ALIAS;
      snprintf(al->reason, sizeof al->reason, "relu done in layer %d's epilogue", l->inputs[0] - 1);
    } else if (l->op == TK_OP_BATCHNORM || l->op == TK_OP_SCALE) {
      int refs[4] = {l->weight, l->bias, l->mean, l->var};
      for (int k = 0; k < 4; k++) {
        tk_status st = refs[k] >= 0 ? check_finite(m, i, &m->tensors[refs[k]]) : TK_OK;
        if (st != TK_OK) return st;
      }
      if (l->op == TK_OP_BATCHNORM) snprintf(al->reason, sizeof al->reason, "batchnorm not folded: per-channel affine");
    }
  }
  /* roots: aliases share their input's buffer */
  int nv = nl + 1;
  int *last = tk_malloc((size_t)nv * sizeof(int));
  int *slot_free = tk_calloc((size_t)nv, sizeof(int));
  if (!last || !slot_free) {
    free(last);
    free(slot_free);
    return TK_ERR_NOMEM;
  }
  g->root[0] = 0;
  for (int i = 0; i < nl; i++)
    g->root[i + 1] = u->layers[i].variant == TK_AOT_ALIAS ? g->root[m->layers[i].inputs[0]] : i + 1;
  for (int v = 0; v < nv; v++) last[v] = v - 1; /* a value nobody reads dies after its producer */
  for (int i = 0; i < nl; i++)
    for (int k = 0; k < m->layers[i].n_inputs; k++) {
      int r = g->root[m->layers[i].inputs[k]];
      if (last[r] < i) last[r] = i;
    }
  last[g->root[nl]] = nl; /* the logits live to the end */
  /* greedy slots: the output takes a free slot before the layer's dead inputs are freed */
  g->n_slots = 0;
  for (int v = 0; v < nv; v++) {
    int i = v - 1; /* producing layer, -1 for the input */
    if (g->root[v] == v) {
      int64_t need = tk_shape_numel(m->values[v]);
      /* the smallest free slot that is big enough, else the largest free one (grown) */
      int best = -1, big = -1;
      for (int s = 0; s < g->n_slots; s++) {
        if (!slot_free[s]) continue;
        if (g->slot_size[s] >= need && (best < 0 || g->slot_size[s] < g->slot_size[best])) best = s;
        if (big < 0 || g->slot_size[s] > g->slot_size[big]) big = s;
      }
      if (best < 0) best = big;
      if (best < 0) {
        best = g->n_slots++;
        g->slot_size[best] = 0;
      }
      if (g->slot_size[best] < need) g->slot_size[best] = need;
      slot_free[best] = 0;
      g->slot_of[v] = best;
    } else {
      g->slot_of[v] = g->slot_of[g->root[v]];
    }
    if (i >= 0 && u->layers[i].variant != TK_AOT_ALIAS) u->layers[i].slot = g->slot_of[v];
    for (int r = 0; r <= v; r++)
      if (g->root[r] == r && last[r] == i && r != v) slot_free[g->slot_of[r]] = 1;
    if (g->root[v] == v && last[v] == i) slot_free[g->slot_of[v]] = 1; /* never read */
  }
  free(last);
  free(slot_free);
  u->n_slots = g->n_slots;
  u->activation_floats = 0;
  for (int s = 0; s < g->n_slots; s++) u->activation_floats += g->slot_size[s];
  return TK_OK;
}

/* The provenance comment that starts every emitted file. */
static void provenance(gen *g, tk_codebuf *cb, const char *file, const char *what) {
  const tk_model *m = g->m, *src = g->src;
  const tk_aot_unit *u = g->u;
  tk_cb_puts(cb, "/* ");
  put_comment_text(cb, file);
  tk_cb_printf(cb, " -- %s.\n * Generated by ticket %s (AOT generator %d); do not edit, regenerate with `ticket compile`.\n *\n",
               what, TICKET_VERSION, TK_AOT_GENERATOR_VERSION);
  tk_cb_puts(cb, " * model     ");
  put_comment_text(cb, src->arch && src->arch[0] ? src->arch : "(unnamed)");
  if (g->o->source) {
    tk_cb_puts(cb, " from ");
    put_comment_text(cb, g->o->source);
  }
  tk_cb_printf(cb, "\n * hash      %016" PRIx64 "%016" PRIx64 " (structure, shapes, masks and values)\n", g->hash[0],
               g->hash[1]);
  tk_cb_printf(cb, " * input     %dx%dx%d raw pixels in [%g, %g]", m->in_c, m->in_h, m->in_w, (double)m->lo,
               (double)m->hi);
  if (m->mean) {
    tk_cb_puts(cb, ", normalised in the model: mean");
    for (int c = 0; c < m->in_c && c < 8; c++) tk_cb_printf(cb, " %g", (double)m->mean[c]);
    tk_cb_puts(cb, ", std");
    for (int c = 0; c < m->in_c && c < 8; c++) tk_cb_printf(cb, " %g", (double)m->std[c]);
  }
  tk_cb_printf(cb, "\n * classes   %d\n", m->classes);
  tk_cb_printf(cb, " * sparsity  %.2f%% of the prunable weights pruned", 100.0 * g->sparsity);
  if (src->prov.method) {
    tk_cb_puts(cb, " (method: ");
    put_comment_text(cb, src->prov.method);
    tk_cb_puts(cb, ")");
  }
  tk_cb_printf(cb, "\n * passes    %d batchnorm folded into conv/linear, %d kept; %d relu fused into epilogues\n",
               u->passes.bn_folded, u->passes.bn_kept, u->passes.relu_fused);
  tk_cb_printf(cb, " * memory    %" PRId64 " activation + %" PRId64 " scratch floats per image (%d slots); %" PRId64
                   " bytes of tables\n",
               u->activation_floats, u->pad_floats, u->n_slots, u->table_bytes);
  tk_cb_puts(cb, " * build     cc -std=c11 -O2 NAME.c -lm  (C11, libc and libm only; GCC/clang vector extensions when\n"
                 " *           available; -fopenmp optional; -ffp-contract=off for bit-identical results across targets)\n");
  tk_cb_puts(cb, " * layers    index name: op shape -> variant, kept/total weights\n");
  for (int i = 0; i < u->n_layers; i++) {
    const tk_aot_layer *al = &u->layers[i];
    const tk_layer *l = &m->layers[i];
    tk_cb_printf(cb, " *   %3d ", i);
    put_comment_text(cb, al->name);
    tk_cb_printf(cb, ": %s %dx%dx%d->%dx%dx%d -> %s", tk_op_name(l->op), l->in.c, l->in.h, l->in.w, l->out.c, l->out.h,
                 l->out.w, tk_aot_variant_name(al->variant));
    if (al->numel)
      tk_cb_printf(cb, ", %" PRId64 "/%" PRId64 " (%.1f%% pruned)", al->nnz, al->numel,
                   100.0 * (1.0 - (double)al->nnz / (double)al->numel));
    if (al->relu) tk_cb_puts(cb, " +relu");
    tk_cb_puts(cb, "\n");
  }
  tk_cb_puts(cb, " */\n");
}

static char *cb_take(tk_codebuf *cb) {
  char *s = cb->buf;
  if (!s) s = tk_strdup("");
  cb->buf = NULL;
  cb->len = cb->cap = 0;
  return s;
}

/* one parameter table for a template */
typedef struct {
  tk_tparam p[32];
  char val[32][160];
  int n;
} tparams;

static void tp_set(tparams *t, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void tp_set(tparams *t, const char *name, const char *fmt, ...) {
  TK_ASSERT(t->n < 32);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->val[t->n], sizeof t->val[t->n], fmt, ap);
  va_end(ap);
  t->p[t->n].name = name;
  t->p[t->n].value = t->val[t->n];
  t->n++;
}

/* A layer name usable inside a comment and a template value. */
static void safe_name(char *dst, size_t n, const char *s) {
  size_t k = 0;
  for (const char *p = s ? s : ""; *p && k + 1 < n; p++) {
    char c = (*p >= 32 && *p < 127) ? *p : '?';
    if ((c == '*' && p[1] == '/') || (c == '/' && p[1] == '*')) c = '_';
    dst[k++] = c;
  }
  dst[k] = 0;
}

/* Tables and function of conv layer i. */
static void emit_conv(gen *g, tk_codebuf *cb, int i) {
  const tk_model *m = g->m;
  const tk_layer *l = &m->layers[i];
  tk_aot_layer *al = &g->u->layers[i];
  const tk_tensor *w = &m->tensors[l->weight];
  conv_geom cg;
  if (conv_geom_make(m, i, &cg) != TK_OK) {
    tk_cb_fail(cb, TK_ERR_UNSUPPORTED, "%s", tk_last_error());
    return;
  }
  if (!cg.direct && cg.padimg > g->u->pad_floats) g->u->pad_floats = cg.padimg;
  char tab[32], nm[128], what[160];
  snprintf(tab, sizeof tab, "tk_l%d", i);
  safe_name(nm, sizeof nm, l->name);
  const int64_t KN = (int64_t)cg.Ig * cg.KH * cg.KW;
  float *bias = tk_calloc((size_t)cg.O, sizeof(float));
  if (!bias) {
    tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
    return;
  }
  if (l->bias >= 0) memcpy(bias, m->tensors[l->bias].data, (size_t)cg.O * sizeof(float));
  char name[64];
  snprintf(name, sizeof name, "%s_b", tab);
  snprintf(what, sizeof what, "bias (%d)", cg.O);
  emit_f32_array(cb, name, bias, cg.O, what);
  g->u->table_bytes += (int64_t)cg.O * 4;
  free(bias);
  if (al->variant == TK_AOT_EMPTY) return; /* the run body fills the bias */

  tparams tp = {.n = 0};
  tp_set(&tp, "FN", "tk_layer%d", i);
  tp_set(&tp, "L", "%d", i);
  tp_set(&tp, "LNAME", "%s", nm);
  tp_set(&tp, "I", "%d", cg.I);
  tp_set(&tp, "H", "%d", cg.H);
  tp_set(&tp, "W", "%d", cg.W);
  tp_set(&tp, "O", "%d", cg.O);
  tp_set(&tp, "OH", "%d", cg.OH);
  tp_set(&tp, "OW", "%d", cg.OW);
  tp_set(&tp, "WQ", "%d", cg.WQ);
  tp_set(&tp, "TAB", "%s", tab);
  tp_set(&tp, "RELU", "%d", al->relu);
  if (cg.direct) {
    tp_set(&tp, "PADSTEP", "/* 1x1, stride 1, no padding: the taps read x directly */");
    tp_set(&tp, "PBASE", "x + (size_t)b * %" PRId64, (int64_t)cg.I * cg.H * cg.W);
  } else {
    tp_set(&tp, "PADSTEP", "tk_pad_phases(x, pad, n, %d, %d, %d, %d, %d, %d, %d, %d, %d, %" PRId64 ");", cg.I, cg.H, cg.W,
           cg.PH, cg.PW, cg.SH, cg.SW, cg.HQ, cg.WQ, cg.padimg);
    tp_set(&tp, "PBASE", "pad + (size_t)b * %" PRId64, cg.padimg);
  }
  tp_set(&tp, "DESC", "conv2d %d->%d k%dx%d s%dx%d p%dx%d d%dx%d g%d, %s, %" PRId64 "/%" PRId64 " weights%s", cg.I, cg.O, cg.KH, cg.KW, cg.SH, cg.SW, cg.PH, cg.PW, cg.DH, cg.DW, cg.G,
         tk_aot_variant_name(al->variant), al->nnz, al->numel, al->relu ? ", relu epilogue" : "");

  if (al->variant == TK_AOT_SPARSE_TABLE) {
    int32_t *rp = tk_malloc((size_t)(cg.O + 1) * sizeof(int32_t));
    int32_t *off = tk_malloc((size_t)al->nnz * sizeof(int32_t));
    float *vals = tk_malloc((size_t)al->nnz * sizeof(float));
    if (!rp || !off || !vals) {
      free(rp), free(off), free(vals);
      tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
      return;
    }
    int64_t k = 0;
    rp[0] = 0;
    for (int o = 0; o < cg.O; o++) {
      const int gi = o / cg.Og;
      for (int c = 0; c < cg.Ig; c++)
        for (int ky = 0; ky < cg.KH; ky++)
          for (int kx = 0; kx < cg.KW; kx++) {
            int64_t e = (((int64_t)o * cg.Ig + c) * cg.KH + ky) * cg.KW + kx;
            if (!w->mask[e]) continue;
            off[k] = conv_off(&cg, gi * cg.Ig + c, ky, kx);
            vals[k++] = w->data[e];
          }
      rp[o + 1] = (int32_t)k;
    }
    TK_ASSERT(k == al->nnz);
    snprintf(name, sizeof name, "%s_rowptr", tab);
    snprintf(what, sizeof what, "output channel o: entries rowptr[o] .. rowptr[o+1]");
    emit_i32_array(cb, name, rp, cg.O + 1, what);
    snprintf(name, sizeof name, "%s_off", tab);
    snprintf(what, sizeof what, "offset of (input channel, ky, kx) in the padded phase-split input");
    emit_i32_array(cb, name, off, al->nnz, what);
    snprintf(name, sizeof name, "%s_w", tab);
    snprintf(what, sizeof what, "kept weights of %s", w->name);
    emit_f32_array(cb, name, vals, al->nnz, what);
    g->u->table_bytes += (int64_t)(cg.O + 1) * 4 + al->nnz * 8;
    free(rp), free(off), free(vals);
    tk_template_expand(cb, "aot_conv_sparse.c.in", tp.p, tp.n);
  } else {
    int32_t *off = tk_malloc((size_t)KN * sizeof(int32_t));
    if (!off) {
      tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
      return;
    }
    int64_t k = 0;
    for (int c = 0; c < cg.Ig; c++)
      for (int ky = 0; ky < cg.KH; ky++)
        for (int kx = 0; kx < cg.KW; kx++) off[k++] = conv_off(&cg, c, ky, kx);
    snprintf(name, sizeof name, "%s_off", tab);
    snprintf(what, sizeof what, "offset of (channel within the group, ky, kx) in the padded phase-split input");
    emit_i32_array(cb, name, off, KN, what);
    snprintf(name, sizeof name, "%s_w", tab);
    snprintf(what, sizeof what, "%s (O, I/groups, KH, KW)", w->name);
    emit_f32_array(cb, name, w->data, w->numel, what);
    g->u->table_bytes += KN * 4 + w->numel * 4;
    free(off);
    tp_set(&tp, "KN", "%" PRId64, KN);
    tp_set(&tp, "OG", "%d", cg.Og);
    tp_set(&tp, "GSTRIDE", "%" PRId64, (int64_t)cg.Ig * cg.cstride);
    tk_template_expand(cb, "aot_conv_dense.c.in", tp.p, tp.n);
  }
}

/* Tables and function of linear layer i. */
static void emit_linear(gen *g, tk_codebuf *cb, int i) {
  const tk_model *m = g->m;
  const tk_layer *l = &m->layers[i];
  tk_aot_layer *al = &g->u->layers[i];
  const tk_tensor *w = &m->tensors[l->weight];
  const int O = l->out.c;
  const int64_t I = tk_shape_numel(l->in);
  char tab[32], nm[128], name[64], what[160];
  snprintf(tab, sizeof tab, "tk_l%d", i);
  safe_name(nm, sizeof nm, l->name);
  float *bias = tk_calloc((size_t)O, sizeof(float));
  if (!bias) {
    tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
    return;
  }
  if (l->bias >= 0) memcpy(bias, m->tensors[l->bias].data, (size_t)O * sizeof(float));
  snprintf(name, sizeof name, "%s_b", tab);
  snprintf(what, sizeof what, "bias (%d)", O);
  emit_f32_array(cb, name, bias, O, what);
  g->u->table_bytes += (int64_t)O * 4;
  free(bias);
  if (al->variant == TK_AOT_EMPTY) return;

  tparams tp = {.n = 0};
  tp_set(&tp, "FN", "tk_layer%d", i);
  tp_set(&tp, "L", "%d", i);
  tp_set(&tp, "LNAME", "%s", nm);
  tp_set(&tp, "I", "%" PRId64, I);
  tp_set(&tp, "O", "%d", O);
  tp_set(&tp, "TAB", "%s", tab);
  tp_set(&tp, "RELU", "%d", al->relu);
  tp_set(&tp, "DESC", "linear %" PRId64 "->%d, %s, %" PRId64 "/%" PRId64 " weights%s", I, O,
         tk_aot_variant_name(al->variant), al->nnz, al->numel, al->relu ? ", relu epilogue" : "");
  if (al->variant == TK_AOT_SPARSE_TABLE) {
    int32_t *rp = tk_malloc((size_t)(O + 1) * sizeof(int32_t));
    int32_t *col = tk_malloc((size_t)al->nnz * sizeof(int32_t));
    float *vals = tk_malloc((size_t)al->nnz * sizeof(float));
    if (!rp || !col || !vals) {
      free(rp), free(col), free(vals);
      tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
      return;
    }
    int64_t k = 0;
    rp[0] = 0;
    for (int o = 0; o < O; o++) {
      for (int64_t c = 0; c < I; c++) {
        int64_t e = (int64_t)o * I + c;
        if (!w->mask[e]) continue;
        col[k] = (int32_t)c;
        vals[k++] = w->data[e];
      }
      rp[o + 1] = (int32_t)k;
    }
    snprintf(name, sizeof name, "%s_rowptr", tab);
    emit_i32_array(cb, name, rp, O + 1, "output row o: entries rowptr[o] .. rowptr[o+1]");
    snprintf(name, sizeof name, "%s_col", tab);
    emit_i32_array(cb, name, col, al->nnz, "input feature of each kept weight");
    snprintf(name, sizeof name, "%s_w", tab);
    snprintf(what, sizeof what, "kept weights of %s", w->name);
    emit_f32_array(cb, name, vals, al->nnz, what);
    g->u->table_bytes += (int64_t)(O + 1) * 4 + al->nnz * 8;
    free(rp), free(col), free(vals);
    tk_template_expand(cb, "aot_linear_sparse.c.in", tp.p, tp.n);
  } else {
    float *wt = tk_malloc((size_t)w->numel * sizeof(float));
    if (!wt) {
      tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
      return;
    }
    for (int o = 0; o < O; o++)
      for (int64_t c = 0; c < I; c++) wt[c * O + o] = w->data[(int64_t)o * I + c];
    snprintf(name, sizeof name, "%s_wt", tab);
    snprintf(what, sizeof what, "%s transposed: (I, O)", w->name);
    emit_f32_array(cb, name, wt, w->numel, what);
    g->u->table_bytes += w->numel * 4;
    free(wt);
    tk_template_expand(cb, "aot_linear_dense.c.in", tp.p, tp.n);
  }
}

/* Tables of the other ops with parameters (unfolded batchnorm, scale). */
static void emit_op_tables(gen *g, tk_codebuf *cb, int i) {
  const tk_model *m = g->m;
  const tk_layer *l = &m->layers[i];
  char name[64], what[160];
  if (l->op == TK_OP_BATCHNORM && !g->fu->absorbed[i]) {
    int C = l->in.c;
    float *a = tk_malloc((size_t)C * sizeof(float)), *s = tk_malloc((size_t)C * sizeof(float));
    if (!a || !s) {
      free(a), free(s);
      tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
      return;
    }
    const float *gm = m->tensors[l->weight].data, *be = m->tensors[l->bias].data;
    const float *mu = m->tensors[l->mean].data, *var = m->tensors[l->var].data;
    for (int c = 0; c < C; c++) {
      double sc = (double)gm[c] / sqrt((double)var[c] + (double)l->eps);
      a[c] = (float)sc;
      s[c] = (float)((double)be[c] - (double)mu[c] * sc);
    }
    snprintf(name, sizeof name, "tk_l%d_a", i);
    snprintf(what, sizeof what, "layer %d batchnorm: gamma / sqrt(running_var + eps)", i);
    emit_f32_array(cb, name, a, C, what);
    snprintf(name, sizeof name, "tk_l%d_s", i);
    snprintf(what, sizeof what, "layer %d batchnorm: beta - running_mean * a", i);
    emit_f32_array(cb, name, s, C, what);
    g->u->table_bytes += (int64_t)C * 8;
    free(a), free(s);
  } else if (l->op == TK_OP_SCALE) {
    snprintf(name, sizeof name, "tk_l%d_w", i);
    snprintf(what, sizeof what, "layer %d per-channel scale", i);
    emit_f32_array(cb, name, m->tensors[l->weight].data, l->in.c, what);
    g->u->table_bytes += (int64_t)l->in.c * 4;
  }
}

/* The statements of NAME_run: value pointers and one call per layer. */
static void emit_run_body(gen *g, tk_codebuf *cb) {
  const tk_model *m = g->m;
  const int nl = m->n_layers;
  unsigned char *used = tk_calloc((size_t)nl + 1, 1);
  if (!used) {
    tk_cb_fail(cb, TK_ERR_NOMEM, "out of memory");
    return;
  }
  const int64_t in_numel = tk_shape_numel(m->values[0]);
  tk_cb_printf(cb, "  float *const v0 = ctx->slot[%d]; /* (n, %d, %d, %d) the input%s */\n", g->slot_of[0], m->in_c,
               m->in_h, m->in_w, m->mean ? ", normalised" : "");
  if (m->mean)
    tk_cb_printf(cb, "  tk_normalise(x, v0, n, %d, %d, tk_in_mean, tk_in_std);\n", m->in_c, m->in_h * m->in_w);
  else
    tk_cb_printf(cb, "  memcpy(v0, x, (size_t)n * %" PRId64 " * sizeof(float));\n", in_numel);
  for (int i = 0; i < nl; i++) {
    const tk_layer *l = &m->layers[i];
    const tk_aot_layer *al = &g->u->layers[i];
    const tk_shape o = l->out, in = l->in;
    const int v = i + 1, a = l->inputs[0], b = l->n_inputs > 1 ? l->inputs[1] : -1;
    const int64_t out_numel = tk_shape_numel(o);
    tk_cb_printf(cb, "  /* layer %d (", i);
    put_comment_text(cb, l->name);
    tk_cb_printf(cb, "): %s, %s%s */\n", tk_op_name(l->op), tk_aot_variant_name(al->variant), al->relu ? " +relu" : "");
    if (al->variant == TK_AOT_ALIAS) {
      tk_cb_printf(cb, "  float *const v%d = v%d; /* (n, %d, %d, %d) same data */\n", v, a, o.c, o.h, o.w);
      used[a] = 1;
      continue;
    }
    tk_cb_printf(cb, "  float *const v%d = ctx->slot[%d]; /* (n, %d, %d, %d) */\n", v, g->slot_of[v], o.c, o.h, o.w);
    used[v] = used[a] = 1;
    if (b >= 0) used[b] = 1;
    switch (l->op) {
    case TK_OP_CONV2D:
      if (al->variant == TK_AOT_EMPTY)
        tk_cb_printf(cb, "  tk_fill_bias(v%d, n, %d, %d, tk_l%d_b, %d);\n", v, o.c, o.h * o.w, i, al->relu);
      else
        tk_cb_printf(cb, "  tk_layer%d(v%d, v%d, n, ctx->pad);\n", i, a, v);
      break;
    case TK_OP_LINEAR:
      if (al->variant == TK_AOT_EMPTY) tk_cb_printf(cb, "  tk_fill_bias(v%d, n, %d, 1, tk_l%d_b, %d);\n", v, o.c, i, al->relu);
      else tk_cb_printf(cb, "  tk_layer%d(v%d, v%d, n);\n", i, a, v);
      break;
    case TK_OP_BATCHNORM:
      tk_cb_printf(cb, "  tk_affine(v%d, v%d, n, %d, %d, tk_l%d_a, tk_l%d_s, %d);\n", a, v, in.c, in.h * in.w, i, i,
                   al->relu);
      break;
    case TK_OP_RELU:
      tk_cb_printf(cb, "  tk_relu(v%d, v%d, (size_t)n * %" PRId64 ");\n", a, v, out_numel);
      break;
    case TK_OP_MAXPOOL:
    case TK_OP_AVGPOOL:
      tk_cb_printf(cb, "  tk_%s(v%d, v%d, n, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d);\n",
                   l->op == TK_OP_MAXPOOL ? "maxpool" : "avgpool", a, v, in.c, in.h, in.w, o.h, o.w, l->kh, l->kw, l->sh,
                   l->sw, l->ph, l->pw);
      break;
    case TK_OP_GLOBALAVGPOOL:
      tk_cb_printf(cb, "  tk_global_avgpool(v%d, v%d, n, %d, %d);\n", a, v, in.c, in.h * in.w);
      break;
    case TK_OP_ADD:
      tk_cb_printf(cb, "  tk_add(v%d, v%d, v%d, (size_t)n * %" PRId64 ", %d);\n", a, b, v, out_numel, al->relu);
      break;
    case TK_OP_SCALE:
      tk_cb_printf(cb, "  tk_scale(v%d, v%d, n, %d, %d, tk_l%d_w, %d);\n", a, v, in.c, in.h * in.w, i, al->relu);
      break;
    case TK_OP_FLATTEN:
    case TK_OP_COUNT:
      tk_cb_fail(cb, TK_ERR_INTERNAL, "layer %d (%s): op %s reached the emitter unplanned", i, l->name,
                 tk_op_name(l->op));
      break;
    }
  }
  used[nl] = 1;
  tk_cb_printf(cb, "  memcpy(logits, v%d, (size_t)n * %d * sizeof(float));\n", nl, m->classes);
  for (int v = 0; v <= nl; v++)
    if (!used[v]) tk_cb_printf(cb, "  (void)v%d; /* not read */\n", v);
  free(used);
}

void tk_aot_unit_free(tk_aot_unit *u) {
  if (!u) return;
  for (int i = 0; i < u->n_layers; i++) free(u->layers ? u->layers[i].name : NULL);
  free(u->layers);
  free(u->name);
  free(u->c_src);
  free(u->h_src);
  free(u->main_src);
  free(u);
}

/* Region of NAME.c a diagnostic line falls in. */
static void record_lines(tk_aot_layer *al, const tk_codebuf *cb, line_counter *lc, int begin) {
  al->line_begin = begin;
  al->line_end = count_lines(cb, lc);
}

tk_status tk_aot_generate(const tk_model *src, const tk_aot_opts *o, tk_aot_unit **out) {
  *out = NULL;
  tk_aot_opts def;
  if (!o) {
    tk_aot_opts_default(&def);
    o = &def;
  }
  const char *name = o->name ? o->name : "model";
  if (!valid_name(name))
    return tk_fail(TK_ERR_ARG, "name: '%s' is not a C identifier of at most 64 characters (not starting with tk_)", name);
  if (!src->values) return tk_fail(TK_ERR_ARG, "model: shapes not inferred (call tk_model_infer first)");

  gen g;
  memset(&g, 0, sizeof g);
  g.o = o;
  g.src = src;
  g.sparsity = tk_model_sparsity(src);
  tk_model_hash(src, g.hash);
  tk_model *m = NULL;
  tk_fusion *fu = NULL;
  tk_codebuf cb, hb, mb;
  tk_cb_init(&cb);
  tk_cb_init(&hb);
  tk_cb_init(&mb);
  tk_aot_unit *u = tk_calloc(1, sizeof *u);
  tk_status st = TK_ERR_NOMEM;
  if (!u) return TK_ERR_NOMEM;

  /* stage 1: passes (BN folding, relu fusion), then the invariants again */
  tk_pass_stats ps;
  memset(&ps, 0, sizeof ps);
  if ((st = tk_passes_run(src, &o->passes, &m, &fu, &ps)) != TK_OK) goto fail;
  if ((st = tk_model_infer(m)) != TK_OK) goto fail;
  u->passes = ps;
  g.m = m;
  g.fu = fu;
  g.u = u;

  /* stage 2: the AOT plan */
  st = TK_ERR_NOMEM;
  u->n_layers = m->n_layers;
  u->in_c = m->in_c, u->in_h = m->in_h, u->in_w = m->in_w, u->classes = m->classes;
  u->hash = g.hash[0];
  if (!(u->name = tk_strdup(name))) goto fail;
  u->layers = tk_calloc((size_t)m->n_layers, sizeof *u->layers);
  g.root = tk_malloc((size_t)(m->n_layers + 1) * sizeof(int));
  g.slot_of = tk_malloc((size_t)(m->n_layers + 1) * sizeof(int));
  g.slot_size = tk_calloc((size_t)(m->n_layers + 1), sizeof(int64_t));
  if (!u->layers || !g.root || !g.slot_of || !g.slot_size) goto fail;
  if ((st = plan(&g)) != TK_OK) goto fail;
  for (int c = 0; m->mean && c < m->in_c; c++)
    if (!isfinite(m->mean[c]) || !isfinite(m->std[c]) || !(m->std[c] > 0)) {
      st = tk_fail(TK_ERR_FORMAT, "input: normalisation mean/std of channel %d is not usable", c);
      goto fail;
    }

  /* stage 3: emission.  Tables and layer functions first (they fix the scratch size the
   * provenance reports), then the file is assembled: provenance, prelude, body, network. */
  tk_codebuf body;
  tk_cb_init(&body);
  int line0 = 1; /* body lines are shifted by the prelude's length below */
  if (m->mean) {
    emit_f32_array(&body, "tk_in_mean", m->mean, m->in_c, "input normalisation: mean per channel");
    emit_f32_array(&body, "tk_in_std", m->std, m->in_c, "input normalisation: std per channel");
  }
  line_counter blc = {0, 0};
  for (int i = 0; i < m->n_layers && body.err == TK_OK; i++) {
    int begin = count_lines(&body, &blc);
    tk_cb_printf(&body, "\n/* ---- layer %d (", i);
    put_comment_text(&body, m->layers[i].name);
    tk_cb_printf(&body, "): %s, %s ---- */\n", tk_op_name(m->layers[i].op), tk_aot_variant_name(u->layers[i].variant));
    if (m->layers[i].op == TK_OP_CONV2D) emit_conv(&g, &body, i);
    else if (m->layers[i].op == TK_OP_LINEAR) emit_linear(&g, &body, i);
    else emit_op_tables(&g, &body, i);
    record_lines(&u->layers[i], &body, &blc, begin);
  }
  tk_codebuf run;
  tk_cb_init(&run);
  emit_run_body(&g, &run);
  if (body.err != TK_OK || run.err != TK_OK) {
    st = tk_cb_status(body.err != TK_OK ? &body : &run);
    tk_cb_free(&body);
    tk_cb_free(&run);
    goto fail;
  }

  char fname[96], guard[96], slots[4096];
  tparams tp = {.n = 0};
  /* NAME.c */
  tk_codebuf prov;
  tk_cb_init(&prov);
  snprintf(fname, sizeof fname, "%s.c", name);
  provenance(&g, &prov, fname, "standalone inference code");
  tp_set(&tp, "NAME", "%s", name);
  tp.p[tp.n].name = "PROVENANCE";
  tp.p[tp.n++].value = prov.buf ? prov.buf : "";
  tk_template_expand(&cb, "aot_prelude.c.in", tp.p, tp.n);
  line_counter clc = {0, 0};
  line0 = count_lines(&cb, &clc) - 1;
  tk_cb_puts(&cb, "\n/* ==== tables and layers ==== */\n");
  line0 += 2;
  tk_cb_put(&cb, body.buf ? body.buf : "", body.len);
  for (int i = 0; i < m->n_layers; i++) u->layers[i].line_begin += line0, u->layers[i].line_end += line0;
  tk_cb_puts(&cb, "\n");
  {
    size_t k = 0;
    slots[0] = 0;
    for (int s = 0; s < g.n_slots && k + 32 < sizeof slots; s++)
      k += (size_t)snprintf(slots + k, sizeof slots - k, "%s%" PRId64, s ? ", " : "", g.slot_size[s]);
    if (g.n_slots > 0 && k + 32 >= sizeof slots) {
      st = tk_fail(TK_ERR_UNSUPPORTED, "model: too many activation slots (%d)", g.n_slots);
      tk_cb_free(&body), tk_cb_free(&run), tk_cb_free(&prov);
      goto fail;
    }
  }
  tk_codebuf info;
  tk_cb_init(&info);
  {
    char line[512];
    snprintf(line, sizeof line, "%s: model %s, hash %016" PRIx64 "%016" PRIx64 ", %.2f%% sparse, %d classes, input %dx%dx%d; ticket %s AOT generator %d",
             name, src->arch && src->arch[0] ? src->arch : "(unnamed)", g.hash[0], g.hash[1], 100.0 * g.sparsity, m->classes,
             m->in_c, m->in_h, m->in_w, TICKET_VERSION, TK_AOT_GENERATOR_VERSION);
    put_c_string(&info, line);
  }
  tparams tn = {.n = 0};
  tp_set(&tn, "NAME", "%s", name);
  tp_set(&tn, "NSLOTS", "%d", g.n_slots);
  tp_set(&tn, "PAD_FLOATS", "%" PRId64, u->pad_floats);
  tn.p[tn.n].name = "SLOT_FLOATS";
  tn.p[tn.n++].value = slots;
  tn.p[tn.n].name = "RUN_BODY";
  tn.p[tn.n++].value = run.buf ? run.buf : "";
  tn.p[tn.n].name = "INFO";
  tn.p[tn.n++].value = info.buf ? info.buf : "\"\"";
  {
    int64_t biggest = m->classes;
    for (int v = 0; v <= m->n_layers; v++)
      if (tk_shape_numel(m->values[v]) > biggest) biggest = tk_shape_numel(m->values[v]);
    tp_set(&tn, "MAX_BATCH", "%" PRId64, (int64_t)INT32_MAX / biggest);
  }
  tk_template_expand(&cb, "aot_net.c.in", tn.p, tn.n);
  tk_cb_free(&body);
  tk_cb_free(&run);
  tk_cb_free(&info);

  /* NAME.h */
  tk_cb_free(&prov);
  tk_cb_init(&prov);
  snprintf(fname, sizeof fname, "%s.h", name);
  provenance(&g, &prov, fname, "C interface of the standalone inference code");
  snprintf(guard, sizeof guard, "TK_AOT_%s_H", name);
  for (char *p = guard; *p; p++)
    if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
  tparams th = {.n = 0};
  tp_set(&th, "NAME", "%s", name);
  tp_set(&th, "GUARD", "%s", guard);
  tp_set(&th, "C", "%d", m->in_c);
  tp_set(&th, "H", "%d", m->in_h);
  tp_set(&th, "W", "%d", m->in_w);
  tp_set(&th, "CLASSES", "%d", m->classes);
  tp_set(&th, "LO", "%g", (double)m->lo);
  tp_set(&th, "HI", "%g", (double)m->hi);
  th.p[th.n].name = "PROVENANCE";
  th.p[th.n++].value = prov.buf ? prov.buf : "";
  tk_template_expand(&hb, "aot_header.h.in", th.p, th.n);

  /* NAME_main.c */
  tk_cb_free(&prov);
  tk_cb_init(&prov);
  snprintf(fname, sizeof fname, "%s_main.c", name);
  provenance(&g, &prov, fname, "main() of the standalone executable");
  tparams tm = {.n = 0};
  tp_set(&tm, "NAME", "%s", name);
  tm.p[tm.n].name = "PROVENANCE";
  tm.p[tm.n++].value = prov.buf ? prov.buf : "";
  tk_template_expand(&mb, "aot_main.c.in", tm.p, tm.n);
  tk_cb_free(&prov);

  if (cb.err != TK_OK || hb.err != TK_OK || mb.err != TK_OK) {
    st = tk_cb_status(cb.err != TK_OK ? &cb : hb.err != TK_OK ? &hb : &mb);
    goto fail;
  }
  u->c_src = cb_take(&cb);
  u->h_src = cb_take(&hb);
  u->main_src = cb_take(&mb);
  if (!u->c_src || !u->h_src || !u->main_src) {
    st = TK_ERR_NOMEM;
    goto fail;
  }
  free(g.root);
  free(g.slot_of);
  free(g.slot_size);
  tk_fusion_free(fu);
  tk_model_free(m);
  *out = u;
  return TK_OK;
fail:
  free(g.root);
  free(g.slot_of);
  free(g.slot_size);
  tk_cb_free(&cb);
  tk_cb_free(&hb);
  tk_cb_free(&mb);
  tk_fusion_free(fu);
  tk_model_free(m);
  tk_aot_unit_free(u);
  return st == TK_OK ? TK_ERR_INTERNAL : st;
}

void tk_aot_dump_plan(FILE *f, const tk_aot_unit *u) {
  fprintf(f, "aot plan for %s: %d layers, %d activation slots (%" PRId64 " floats per image), scratch %" PRId64
             " floats per image, %" PRId64 " bytes of tables\n",
          u->name, u->n_layers, u->n_slots, u->activation_floats, u->pad_floats, u->table_bytes);
  for (int i = 0; i < u->n_layers; i++) {
    const tk_aot_layer *al = &u->layers[i];
    fprintf(f, "  %3d %-24s %-13s %-13s", i, al->name, tk_op_name(al->op), tk_aot_variant_name(al->variant));
    if (al->numel) fprintf(f, " %9" PRId64 "/%-9" PRId64, al->nnz, al->numel);
    else fprintf(f, " %19s", "");
    fprintf(f, " %-5s slot %-3d  %s\n", al->relu ? "+relu" : "", al->slot, al->reason);
  }
}

/* ---- the build ------------------------------------------------------------------------------ */

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return NULL;
  char *s = tk_malloc((size_t)n + 1);
  if (!s) return NULL;
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

static char *find_in_path(const char *prog) {
  if (strchr(prog, '/')) return access(prog, X_OK) == 0 ? tk_strdup(prog) : NULL;
  const char *path = getenv("PATH");
  if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
  for (const char *p = path; *p;) {
    size_t n = strcspn(p, ":");
    char *cand = str_printf("%.*s/%s", (int)n, n ? p : ".", prog);
    if (cand && access(cand, X_OK) == 0) return cand;
    free(cand);
    p += n;
    if (*p == ':') p++;
  }
  return NULL;
}

char *tk_aot_find_cc(const tk_aot_opts *o) {
  char want[256];
  if (o->cc && *o->cc) snprintf(want, sizeof want, "%s", o->cc);
  else if (o->target && *o->target) snprintf(want, sizeof want, "%s-gcc", o->target);
  else if (getenv("CC") && *getenv("CC")) snprintf(want, sizeof want, "%s", getenv("CC"));
  else snprintf(want, sizeof want, "cc");
  char *p = find_in_path(want);
  if (!p) {
    if (o->target && *o->target && !(o->cc && *o->cc))
      tk_fail(TK_ERR_UNSUPPORTED,
              "target %s: cross compiler %s not found in PATH (on Debian: apt-get install gcc-%s, or pass --cc)",
              o->target, want, o->target);
    else
      tk_fail(TK_ERR_UNSUPPORTED, "C compiler %s not found in PATH (set CC or pass --cc)", want);
  }
  return p;
}

void tk_aot_outputs_free(tk_aot_outputs *r) {
  if (!r) return;
  for (int i = 0; i < r->n_files; i++) free(r->files[i]);
  free(r->command);
  free(r->diagnostics);
  memset(r, 0, sizeof *r);
}

static tk_status add_output(tk_aot_outputs *r, const char *path) {
  TK_ASSERT(r->n_files < 4);
  if (!(r->files[r->n_files] = tk_strdup(path))) return TK_ERR_NOMEM;
  r->n_files++;
  return TK_OK;
}

static int is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* "dir/" part of a path (with the slash), "" when none. */
static char *dir_part(const char *path) {
  const char *s = strrchr(path, '/');
  size_t n = s ? (size_t)(s - path + 1) : 0;
  char *d = tk_malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, path, n);
  d[n] = 0;
  return d;
}

/* The generated-code region (layer) of line `line` of NAME.c, as text. */
static void locate_line(const tk_aot_unit *u, int line, char *buf, size_t n) {
  for (int i = 0; i < u->n_layers; i++)
    if (line >= u->layers[i].line_begin && line < u->layers[i].line_end) {
      snprintf(buf, n, "layer %d (%s, %s)", i, u->layers[i].name, tk_op_name(u->layers[i].op));
      return;
    }
  int first = u->n_layers ? u->layers[0].line_begin : 0;
  snprintf(buf, n, "%s", line < first ? "the kernel prelude" : "the network function");
}

/* First error line of the diagnostics, and where in the generated code it points. */
static void describe_failure(const tk_aot_unit *u, const char *diag, char *where, size_t wn, char *first, size_t fn) {
  snprintf(where, wn, "the generated code");
  snprintf(first, fn, "(no diagnostics)");
  char cfile[96], mfile[96];
  snprintf(cfile, sizeof cfile, "%s.c:", u->name);
  snprintf(mfile, sizeof mfile, "%s_main.c:", u->name);
  int found = 0;
  for (const char *p = diag ? diag : ""; *p;) {
    size_t n = strcspn(p, "\n");
    if (!found && n > 0 && (memmem(p, n, "error", 5) || memmem(p, n, "Error", 5))) {
      snprintf(first, fn, "%.*s", (int)(n < 300 ? n : 300), p);
      found = 1;
      const char *f = memmem(p, n, cfile, strlen(cfile));
      if (f && (f == p || f[-1] == '/')) {
        int line = atoi(f + strlen(cfile));
        if (line > 0) locate_line(u, line, where, wn);
      } else if (memmem(p, n, mfile, strlen(mfile))) {
        snprintf(where, wn, "the executable's main()");
      } else if (!memmem(p, n, ".c:", 3)) {
        snprintf(where, wn, "the link step");
      }
    }
    p += n;
    if (*p) p++;
  }
}

/* Runs argv (argv[0] a full path); output and errors go to log_path. */
static tk_status spawn_wait(char *const argv[], const char *log_path, int *status) {
  posix_spawn_file_actions_t fa;
  if (posix_spawn_file_actions_init(&fa) != 0) return tk_fail(TK_ERR_NOMEM, "cannot set up a subprocess");
  posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return tk_fail(TK_ERR_COMPILE, "cannot run %s: %s", argv[0], strerror(rc));
  while (waitpid(pid, status, 0) < 0)
    if (errno != EINTR) return tk_fail(TK_ERR_COMPILE, "waiting for %s: %s", argv[0], strerror(errno));
  return TK_OK;
}

/* Splits the flags on spaces into argv (modifies s). */
static int split_flags(char *s, char **argv, int max) {
  int n = 0;
  for (char *p = strtok(s, " \t"); p && n < max; p = strtok(NULL, " \t")) argv[n++] = p;
  return n;
}

static tk_status write_text(const char *path, const char *text) {
  return tk_write_file_atomic(path, text, strlen(text));
}

tk_status tk_aot_build(const tk_aot_unit *u, const tk_aot_opts *o, const char *out, tk_aot_outputs *res) {
  memset(res, 0, sizeof *res);
  if (!out || !*out) return tk_fail(TK_ERR_ARG, "output: no path given (-o)");
  tk_status st = TK_OK;
  size_t olen = strlen(out);

  if (o->emit == TK_AOT_EMIT_C) {
    char *cpath, *hpath;
    if (is_dir(out) || out[olen - 1] == '/') {
      if (!is_dir(out) && mkdir(out, 0755) != 0)
        return tk_fail(TK_ERR_IO, "%s: cannot create the directory: %s", out, strerror(errno));
      const char *sep = out[olen - 1] == '/' ? "" : "/";
      cpath = str_printf("%s%s%s.c", out, sep, u->name);
      hpath = str_printf("%s%s%s.h", out, sep, u->name);
    } else {
      size_t n = olen;
      if (n > 2 && (!strcmp(out + n - 2, ".c") || !strcmp(out + n - 2, ".h"))) n -= 2;
      const char *base = strrchr(out, '/');
      base = base ? base + 1 : out;
      size_t bn = (size_t)(out + n - base);
      if (bn != strlen(u->name) || strncmp(base, u->name, bn) != 0)
        return tk_fail(TK_ERR_ARG, "output: %s: the file name must be the ABI name %s (NAME.c includes \"NAME.h\"); "
                                   "use -o DIR/ or --name",
                       out, u->name);
      cpath = str_printf("%.*s.c", (int)n, out);
      hpath = str_printf("%.*s.h", (int)n, out);
    }
    if (!cpath || !hpath) st = TK_ERR_NOMEM;
    if (st == TK_OK) st = write_text(hpath, u->h_src);
    if (st == TK_OK) st = write_text(cpath, u->c_src);
    if (st == TK_OK) st = add_output(res, cpath);
    if (st == TK_OK) st = add_output(res, hpath);
    free(cpath);
    free(hpath);
    return st;
  }

  /* so / exe: sources in a private temporary directory, the compiler writes OUT.tmp.PID
   * beside OUT, and a rename puts it in place. */
  if (is_dir(out)) return tk_fail(TK_ERR_ARG, "output: %s is a directory (give the file to write)", out);
  {
    char *d = dir_part(out);
    if (!d) return TK_ERR_NOMEM;
    int ok = access(*d ? d : ".", W_OK) == 0;
    st = ok ? TK_OK : tk_fail(TK_ERR_IO, "output: %s: cannot write into the directory %s: %s", out, *d ? d : ".",
                              strerror(errno));
    free(d);
    if (st != TK_OK) return st;
  }
  char *cc = tk_aot_find_cc(o);
  if (!cc) return TK_ERR_UNSUPPORTED;
  const char *tmpdir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char *dir = str_printf("%s/ticket-aot-XXXXXX", tmpdir);
  char *cpath = NULL, *hpath = NULL, *mpath = NULL, *log = NULL, *tmp_out = NULL, *flags = NULL, *hdr_out = NULL;
  char *diag = NULL;
  if (!dir) {
    free(cc);
    return TK_ERR_NOMEM;
  }
  if (!mkdtemp(dir)) {
    st = tk_fail(TK_ERR_IO, "%s: cannot create a temporary directory: %s", dir, strerror(errno));
    free(dir);
    free(cc);
    return st;
  }
  cpath = str_printf("%s/%s.c", dir, u->name);
  hpath = str_printf("%s/%s.h", dir, u->name);
  mpath = str_printf("%s/%s_main.c", dir, u->name);
  log = str_printf("%s/cc.log", dir);
  tmp_out = str_printf("%s.tmp.%ld", out, (long)getpid());
  flags = tk_strdup(o->cflags ? o->cflags : "");
  if (!cpath || !hpath || !mpath || !log || !tmp_out || !flags) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  if ((st = write_text(hpath, u->h_src)) != TK_OK || (st = write_text(cpath, u->c_src)) != TK_OK) goto done;
  if (o->emit == TK_AOT_EMIT_EXE && (st = write_text(mpath, u->main_src)) != TK_OK) goto done;
  {
    char *argv[96];
    int n = 0;
    argv[n++] = cc;
    argv[n++] = "-std=c11";
    argv[n++] = "-O3";
    int cross = o->target && *o->target;
    if (!cross && !o->portable) argv[n++] = "-march=native";
    if (o->openmp) argv[n++] = "-fopenmp";
    if (o->emit == TK_AOT_EMIT_SO) {
      argv[n++] = "-shared";
      argv[n++] = "-fPIC";
    } else if (o->static_link == 1 || (o->static_link < 0 && cross)) {
      argv[n++] = "-static";
    }
    n += split_flags(flags, argv + n, 64);
    argv[n++] = "-o";
    argv[n++] = tmp_out;
    argv[n++] = cpath;
    if (o->emit == TK_AOT_EMIT_EXE) argv[n++] = mpath;
    argv[n++] = "-lm";
    argv[n] = NULL;
    size_t clen = 1;
    for (int k = 0; k < n; k++) clen += strlen(argv[k]) + 1;
    if ((res->command = tk_malloc(clen))) {
      res->command[0] = 0;
      for (int k = 0; k < n; k++) {
        if (k) strcat(res->command, " ");
        strcat(res->command, argv[k]);
      }
    }
    if (o->verbose) fprintf(stderr, "ticket compile: %s\n", res->command ? res->command : argv[0]);
    int status = 0;
    if ((st = spawn_wait(argv, log, &status)) != TK_OK) goto done;
    void *d = NULL;
    size_t dn = 0;
    if (tk_read_file(log, 1 << 24, &d, &dn) == TK_OK && d) {
      diag = tk_malloc(dn + 1);
      if (diag) {
        memcpy(diag, d, dn);
        diag[dn] = 0;
      }
      free(d);
    }
    if (diag && !*diag) {
      free(diag);
      diag = NULL;
    }
    res->diagnostics = diag;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      char where[192], first[320];
      describe_failure(u, diag, where, sizeof where, first, sizeof first);
      char how[64];
      if (WIFEXITED(status)) snprintf(how, sizeof how, "exit status %d", WEXITSTATUS(status));
      else snprintf(how, sizeof how, "killed by signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
      st = tk_fail(TK_ERR_COMPILE, "%s failed (%s) on model %s%s%s, in %s: %s", cc, how, u->name,
                   o->source ? " from " : "", o->source ? o->source : "", where, first);
      unlink(tmp_out);
      goto done;
    }
  }
  if (rename(tmp_out, out) != 0) {
    st = tk_fail(TK_ERR_IO, "%s: cannot rename the built file into place: %s", out, strerror(errno));
    unlink(tmp_out);
    goto done;
  }
  if ((st = add_output(res, out)) != TK_OK) goto done;
  if (o->emit == TK_AOT_EMIT_SO) {
    /* the header beside the shared object */
    char *d = dir_part(out);
    hdr_out = d ? str_printf("%s%s.h", d, u->name) : NULL;
    free(d);
    if (!hdr_out) {
      st = TK_ERR_NOMEM;
      goto done;
    }
    if ((st = write_text(hdr_out, u->h_src)) != TK_OK) goto done;
    st = add_output(res, hdr_out);
  }
done:
  if (cpath) unlink(cpath);
  if (hpath) unlink(hpath);
  if (mpath) unlink(mpath);
  if (log) unlink(log);
  rmdir(dir);
  free(dir);
  free(cpath);
  free(hpath);
  free(mpath);
  free(log);
  free(tmp_out);
  free(flags);
  free(hdr_out);
  free(cc);
  return st;
}
