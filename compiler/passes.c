/* passes.c -- frozen-inference graph passes: BatchNorm folding and relu fusion marks.
 * See passes.h for what each pass does and when it applies.  Passes build new models and
 * never edit their input. */
#include "passes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tk_pass_opts_default(tk_pass_opts *o) {
  o->fold_bn = 1;
  o->fuse = 1;
}

int tk_value_readers(const tk_model *m, int v) {
  int n = v == m->n_layers ? 1 : 0;
  for (int i = 0; i < m->n_layers; i++)
    for (int k = 0; k < m->layers[i].n_inputs; k++) n += m->layers[i].inputs[k] == v;
  return n;
}

/* The conv/linear layer a batchnorm layer can be folded into, or -1. */
static int fold_target(const tk_model *m, int j, int fold) {
  const tk_layer *bn = &m->layers[j];
  if (!fold) return -1;
  if (bn->op != TK_OP_BATCHNORM || bn->n_inputs != 1) return -1;
  int v = bn->inputs[0];
  if (v < 1) return -1; /* the model input */
  const tk_layer *p = &m->layers[v - 1];
  if (p->op != TK_OP_CONV2D && p->op != TK_OP_LINEAR) return -1;
  if (tk_value_readers(m, v) != 1) return -1;
  return v - 1;
}

static int name_taken(const tk_model *a, const tk_model *b, const char *name) {
  return tk_model_find_tensor(a, name) >= 0 || tk_model_find_tensor(b, name) >= 0;
}

/* Copy tensor `src` into `dst`; returns the new index or -1.  Scores are dropped: folded
 * weights are no longer what the scores ranked. */
static int copy_tensor(tk_model *dst, const tk_tensor *src) {
  int t = tk_model_add_tensor(dst, src->name, src->ndim, src->shape);
  if (t < 0) return -1;
  tk_tensor *d = &dst->tensors[t];
  memcpy(d->data, src->data, (size_t)src->numel * sizeof(float));
  d->init = src->init;
  d->init_fan_in = src->init_fan_in;
  d->prunable = src->prunable;
  d->trainable = src->trainable;
  if (src->mask && tk_tensor_set_mask(d, src->mask) != TK_OK) return -1;
  return t;
}

static char *dup_or_null(const char *s) { return s ? tk_strdup(s) : NULL; }

/* A copy of m without training state and HYDRA scores, folding batchnorm when `fold`. */
static tk_status rebuild(const tk_model *m, int fold, tk_model **out, tk_pass_stats *stats) {
  *out = NULL;
  TK_ASSERT(m->values != NULL); /* shapes inferred */
  tk_status st = TK_ERR_NOMEM;
  int nl = m->n_layers;
  int *fold_into = tk_malloc((size_t)nl * sizeof(int)); /* conv i -> bn layer folded into it, or -1 */
  int *valmap = tk_malloc((size_t)(nl + 1) * sizeof(int));
  tk_model *d = tk_model_new(m->arch, m->classes, m->in_c, m->in_h, m->in_w);
  if (!fold_into || !valmap || !d) goto fail;
  for (int i = 0; i < nl; i++) fold_into[i] = -1;
  int folded = 0, kept = 0, bias_added = 0;
  for (int j = 0; j < nl; j++) {
    if (m->layers[j].op != TK_OP_BATCHNORM) continue;
    int p = fold_target(m, j, fold);
    if (p >= 0) {
      fold_into[p] = j;
      folded++;
    } else {
      kept++;
    }
  }

  d->format_version = m->format_version;
  d->lo = m->lo;
  d->hi = m->hi;
  if (m->mean) {
    d->mean = tk_malloc((size_t)m->in_c * sizeof(float));
    d->std = tk_malloc((size_t)m->in_c * sizeof(float));
    if (!d->mean || !d->std) goto fail;
    memcpy(d->mean, m->mean, (size_t)m->in_c * sizeof(float));
    memcpy(d->std, m->std, (size_t)m->in_c * sizeof(float));
  }
  d->prov.method = dup_or_null(m->prov.method);
  d->prov.source = dup_or_null(m->prov.source);
  d->prov.created = dup_or_null(m->prov.created);
  d->prov.sparsity = m->prov.sparsity;
  {
    const char *old = m->prov.notes ? m->prov.notes : "";
    size_t len = strlen(old) + 96;
    if (!(d->prov.notes = tk_malloc(len))) goto fail;
    snprintf(d->prov.notes, len, "%s%sfrozen inference: %d batchnorm layer(s) folded", old, old[0] ? "; " : "", folded);
  }
  if (m->prov.n_metrics) {
    d->prov.metrics = tk_calloc((size_t)m->prov.n_metrics, sizeof *d->prov.metrics);
    if (!d->prov.metrics) goto fail;
    d->prov.n_metrics = m->prov.n_metrics;
    for (int k = 0; k < m->prov.n_metrics; k++) {
      d->prov.metrics[k].name = tk_strdup(m->prov.metrics[k].name);
      d->prov.metrics[k].value = m->prov.metrics[k].value;
    }
  }

  valmap[0] = 0;
  for (int i = 0; i < nl; i++) {
    const tk_layer *l = &m->layers[i];
    if (l->op == TK_OP_BATCHNORM && fold_target(m, i, fold) >= 0) {
      valmap[i + 1] = valmap[l->inputs[0]]; /* readers of the bn read the conv instead */
      continue;
    }
    tk_layer nlay = *l;
    for (int k = 0; k < l->n_inputs; k++) nlay.inputs[k] = valmap[l->inputs[k]];
    int *refs[4] = {&nlay.weight, &nlay.bias, &nlay.mean, &nlay.var};
    for (int k = 0; k < 4; k++)
      if (*refs[k] >= 0 && (*refs[k] = copy_tensor(d, &m->tensors[*refs[k]])) < 0) goto fail;
    if (fold_into[i] >= 0) {
      const tk_layer *bn = &m->layers[fold_into[i]];
      const tk_tensor *g = &m->tensors[bn->weight], *be = &m->tensors[bn->bias];
      const tk_tensor *mu = &m->tensors[bn->mean], *var = &m->tensors[bn->var];
      if (nlay.bias < 0) {
        /* a new bias tensor, named after the weight ("conv1.weight" -> "conv1.bias") */
        const char *wn = m->tensors[l->weight].name;
        size_t wl = strlen(wn);
        char *name = tk_malloc(wl + 32);
        if (!name) goto fail;
        if (wl > 7 && strcmp(wn + wl - 7, ".weight") == 0) snprintf(name, wl + 32, "%.*s.bias", (int)(wl - 7), wn);
        else snprintf(name, wl + 32, "%s.bias", wn);
        for (int u = 1; name_taken(m, d, name) && u < 1000; u++) snprintf(name, wl + 32, "%s.folded_bias%d", wn, u);
        int64_t oc = g->numel;
        nlay.bias = tk_model_add_tensor(d, name, 1, &oc);
        free(name);
        if (nlay.bias < 0) goto fail;
        d->tensors[nlay.bias].init = TK_INIT_ZEROS;
        bias_added++;
      }
      tk_tensor *w = &d->tensors[nlay.weight], *b = &d->tensors[nlay.bias];
      int64_t oc = w->shape[0], per = w->numel / oc;
      TK_ASSERT(oc == g->numel && b->numel == oc);
      for (int64_t c = 0; c < oc; c++) {
        double a = (double)g->data[c] / sqrt((double)var->data[c] + (double)bn->eps);
        if (!isfinite(a)) {
          st = tk_fail(TK_ERR_FORMAT, "layer %d (%s, batchnorm): channel %lld scale gamma/sqrt(var+eps) is not finite",
                       fold_into[i], bn->name, (long long)c);
          goto fail;
        }
        float *wc = w->data + c * per;
        const uint8_t *mc = w->mask ? w->mask + c * per : NULL;
        for (int64_t k = 0; k < per; k++) wc[k] = (mc && !mc[k]) ? 0.0f : (float)((double)wc[k] * a);
        b->data[c] = (float)(((double)b->data[c] - (double)mu->data[c]) * a + (double)be->data[c]);
      }
    }
    int k = tk_model_add_layer(d, &nlay);
    if (k < 0) goto fail;
    valmap[i + 1] = k + 1;
  }
  if ((st = tk_model_infer(d)) != TK_OK) {
    tk_fail_prefix(st, "batchnorm folding produced an invalid model (internal)");
    goto fail;
  }
  if (stats) {
    stats->bn_folded = folded;
    stats->bn_kept = kept;
    stats->bias_added = bias_added;
  }
  free(fold_into);
  free(valmap);
  *out = d;
  return TK_OK;
fail:
  free(fold_into);
  free(valmap);
  tk_model_free(d);
  return st == TK_OK ? TK_ERR_NOMEM : st;
}

tk_status tk_pass_fold_bn(const tk_model *m, tk_model **out, tk_pass_stats *stats) {
  return rebuild(m, 1, out, stats);
}

tk_status tk_pass_mark_fusion(const tk_model *m, tk_fusion **out, tk_pass_stats *stats) {
  *out = NULL;
  tk_fusion *f = tk_calloc(1, sizeof *f);
  if (!f) return TK_ERR_NOMEM;
  f->n_layers = m->n_layers;
  f->relu_epilogue = tk_calloc((size_t)(m->n_layers ? m->n_layers : 1), 1);
  f->absorbed = tk_calloc((size_t)(m->n_layers ? m->n_layers : 1), 1);
  if (!f->relu_epilogue || !f->absorbed) {
    tk_fusion_free(f);
    return TK_ERR_NOMEM;
  }
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *r = &m->layers[i];
    if (r->op != TK_OP_RELU) continue;
    int v = r->inputs[0];
    if (v < 1) continue;
    int p = v - 1;
    tk_op pop = m->layers[p].op;
    if (pop != TK_OP_CONV2D && pop != TK_OP_LINEAR && pop != TK_OP_BATCHNORM && pop != TK_OP_ADD &&
        pop != TK_OP_SCALE)
      continue;
    if (f->relu_epilogue[p] || tk_value_readers(m, v) != 1) continue;
    f->relu_epilogue[p] = 1;
    f->absorbed[i] = 1;
    f->n_fused++;
  }
  if (stats) stats->relu_fused = f->n_fused;
  *out = f;
  return TK_OK;
}

void tk_fusion_free(tk_fusion *f) {
  if (!f) return;
  free(f->relu_epilogue);
  free(f->absorbed);
  free(f);
}

tk_status tk_passes_run(const tk_model *m, const tk_pass_opts *o, tk_model **out_model, tk_fusion **out_fusion,
                        tk_pass_stats *stats) {
  tk_pass_opts def;
  if (!o) {
    tk_pass_opts_default(&def);
    o = &def;
  }
  *out_model = NULL;
  if (out_fusion) *out_fusion = NULL;
  tk_pass_stats local;
  memset(&local, 0, sizeof local);
  tk_model *cur = NULL;
  tk_status st;
  /* stage 1: batchnorm folding (or a plain copy); the frozen model keeps no training state */
  if ((st = rebuild(m, o->fold_bn, &cur, &local)) != TK_OK) return st;
  /* stage 2: invariants hold on the new graph */
  if ((st = tk_model_infer(cur)) != TK_OK) {
    tk_model_free(cur);
    return tk_fail_prefix(st, "after the passes");
  }
  /* stage 3: fusion marks */
  if (out_fusion) {
    tk_fusion *fu = NULL;
    if (o->fuse) {
      st = tk_pass_mark_fusion(cur, &fu, &local);
    } else {
      /* empty marks */
      st = tk_pass_mark_fusion(cur, &fu, NULL);
      if (st == TK_OK) {
        memset(fu->relu_epilogue, 0, (size_t)fu->n_layers);
        memset(fu->absorbed, 0, (size_t)fu->n_layers);
        fu->n_fused = 0;
      }
    }
    if (st != TK_OK) {
      tk_model_free(cur);
      return st;
    }
    *out_fusion = fu;
  }
  if (stats) *stats = local;
  *out_model = cur;
  return TK_OK;
}

void tk_passes_dump(FILE *f, const tk_model *m, const tk_fusion *fu, const tk_pass_stats *st) {
  fprintf(f, "after passes: %d layers", m->n_layers);
  if (st)
    fprintf(f, " (%d batchnorm folded, %d kept, %d bias added, %d relu fused)", st->bn_folded, st->bn_kept,
            st->bias_added, st->relu_fused);
  fputc('\n', f);
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    fprintf(f, "  %3d %-24s %-13s", i, l->name, tk_op_name(l->op));
    for (int k = 0; k < l->n_inputs; k++) fprintf(f, "%sv%d", k ? "," : " in ", l->inputs[k]);
    fprintf(f, "  %dx%dx%d -> %dx%dx%d", l->in.c, l->in.h, l->in.w, l->out.c, l->out.h, l->out.w);
    if (fu && fu->relu_epilogue[i]) fprintf(f, "  +relu");
    if (fu && fu->absorbed[i]) fprintf(f, "  (done by layer %d)", l->inputs[0] - 1);
    fputc('\n', f);
  }
}
