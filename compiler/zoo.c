/* zoo.c -- the model zoo: architecture files embedded from models/<arch>.json (written by
 * tools/gen_zoo.py), rebuilt for other classes / input sizes, and filled with the reference
 * initialisations of their original code.
 *
 * tk_zoo_create: parse the embedded JSON (tk_model_from_json), reshape, tk_model_infer,
 * tk_model_init_params, provenance.  Reshaping walks the layers once, propagating per-image
 * shapes: a conv whose weight does not match its input channels gets new input channels
 * (only the first conv, when --input changes C), a linear gets the in-features of its input
 * (the first linear after the flatten), the last layer (a linear) gets `classes` outputs, and
 * BatchNorm / scale tensors follow the channels they see.  The Python twin of this walk is
 * tk.zoo_reshape in tools/tkt.py (used by the PyTorch bridge without a `ticket` binary);
 * tests/py/test_zoo_torch.py checks that both agree.
 *
 * Initialisation rules (compiler/model.h tk_init; fan_in / fan_out as torch.nn.init computes
 * them: dim 1 resp. dim 0 times the receptive field):
 *   KaimingNormalFanOut(Relu)  N(0, sqrt(2 / fan_out))
 *   KaimingNormalFanIn         N(0, sqrt(2 / fan_in))
 *   Normal001                  N(0, 0.01)
 *   TorchDefault               U(-1/sqrt(fan_in), 1/sqrt(fan_in))  (kaiming_uniform, a = sqrt(5))
 *   TorchDefaultBias           U(-1/sqrt(init_fan_in), ...), init_fan_in = fan_in of the layer's weight
 *   Zeros, Ones; None keeps the data.
 * Every tensor draws from its own generator, seeded by the seed and a hash of the tensor's
 * name: a model is a pure function of (arch, classes, input, seed), and changing the classes
 * changes only the tensors whose shape changes.
 */
#include "zoo.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ZOO_MAX_ARCHS 64

/* ---- the list of architectures (from the embedded files) --------------------------------- */

static const char *g_names[ZOO_MAX_ARCHS + 1];
static char g_name_buf[ZOO_MAX_ARCHS][64];
static pthread_once_t g_names_once = PTHREAD_ONCE_INIT;

static void collect_names(void) {
  int n = 0;
  for (const tk_embedded_file *f = tk_embedded; f->path && n < ZOO_MAX_ARCHS; f++) {
    const char *p = f->path;
    size_t len = strlen(p);
    if (strncmp(p, "models/", 7) != 0 || len < 13 || strcmp(p + len - 5, ".json") != 0) continue;
    size_t nl = len - 7 - 5;
    if (nl == 0 || nl >= sizeof g_name_buf[0] || strchr(p + 7, '/')) continue;
    memcpy(g_name_buf[n], p + 7, nl);
    g_name_buf[n][nl] = 0;
    g_names[n] = g_name_buf[n];
    n++;
  }
  /* sorted, so listings do not depend on the build's file order */
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && strcmp(g_names[j - 1], g_names[j]) > 0; j--) {
      const char *t = g_names[j];
      g_names[j] = g_names[j - 1];
      g_names[j - 1] = t;
    }
  g_names[n] = NULL;
}

const char *const *tk_zoo_names(void) {
  pthread_once(&g_names_once, collect_names);
  return g_names;
}

/* ---- reshaping ------------------------------------------------------------------------------ */

/* AdaptiveAvgPool2d((oh, ow)) sitting before the layer named `before` (HYDRA's VGG): the
 * identity on oh x ow maps, an average pool of (h/oh) x (w/ow) on maps that are multiples,
 * and not expressible with a fixed-window pool otherwise (refused). */
static const struct {
  const char *arch, *before;
  int oh, ow;
} g_adaptive[] = {{"vgg16_bn", "flatten", 2, 2}};

static tk_status resize_tensor(tk_tensor *t, int ndim, const int64_t *shape) {
  bool same = t->ndim == ndim;
  for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
  if (same) return TK_OK;
  int64_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 1 || shape[d] > TK_MAX_DIM)
      return tk_fail(TK_ERR_ARG, "tensor %s: shape[%d] = %lld out of range 1..%d", t->name, d,
                     (long long)shape[d], TK_MAX_DIM);
    numel *= shape[d];
    if (numel > TK_MAX_TENSOR_ELEMS)
      return tk_fail(TK_ERR_ARG, "tensor %s: more than %lld elements", t->name, (long long)TK_MAX_TENSOR_ELEMS);
  }
  float *data = tk_alloc_aligned((size_t)numel * sizeof(float));
  if (!data) return tk_fail_prefix(TK_ERR_NOMEM, "tensor %s", t->name);
  free(t->data);
  free(t->mask);
  free(t->scores);
  t->data = data;
  t->mask = NULL;
  t->scores = NULL;
  t->ndim = ndim;
  for (int d = 0; d < 4; d++) t->shape[d] = d < ndim ? shape[d] : 1;
  t->numel = numel;
  return TK_OK;
}

static int out_size(int in, int k, int s, int p, int d) {
  int64_t o = (int64_t)in + 2 * (int64_t)p - ((int64_t)d * (k - 1) + 1);
  return o < 0 ? 0 : (int)(o / s + 1);
}

/* Insert `l` at index i: later layers move up one, references to values >= i + 1 too. */
static tk_status insert_layer(tk_model *m, int i, const tk_layer *l) {
  if (tk_model_add_layer(m, l) < 0) return TK_ERR_NOMEM; /* appended at the end; rotate it into place */
  tk_layer nl = m->layers[m->n_layers - 1];
  memmove(&m->layers[i + 1], &m->layers[i], (size_t)(m->n_layers - 1 - i) * sizeof *m->layers);
  m->layers[i] = nl;
  for (int j = i + 1; j < m->n_layers; j++)
    for (int k = 0; k < m->layers[j].n_inputs; k++)
      if (m->layers[j].inputs[k] > i) m->layers[j].inputs[k]++;
  return TK_OK;
}

static tk_status tensor_ref(const tk_model *m, const tk_layer *l, int idx, const char *field, tk_tensor **t) {
  if (idx < 0 || idx >= m->n_tensors)
    return tk_fail(TK_ERR_FORMAT, "layer %s: %s: tensor index %d out of range", l->name, field, idx);
  *t = &m->tensors[idx];
  return TK_OK;
}

static tk_status zoo_reshape(tk_model *m) {
  int adaptive = -1;
  for (size_t a = 0; a < sizeof g_adaptive / sizeof *g_adaptive; a++)
    if (strcmp(m->arch, g_adaptive[a].arch) == 0) adaptive = (int)a;
  tk_layer *lastl = &m->layers[m->n_layers - 1];
  if (lastl->op != TK_OP_LINEAR)
    return tk_fail(TK_ERR_UNSUPPORTED, "%s: the last layer (%s) is %s, not linear: cannot set the classes", m->arch,
                   lastl->name, tk_op_name(lastl->op));
  tk_shape *vals = tk_malloc((size_t)(m->n_layers + 2) * sizeof *vals);
  if (!vals) return TK_ERR_NOMEM;
  vals[0] = (tk_shape){m->in_c, m->in_h, m->in_w};
  tk_status st = TK_OK;
  for (int i = 0; i < m->n_layers && st == TK_OK; i++) {
    tk_layer *l = &m->layers[i];
    for (int k = 0; k < l->n_inputs; k++)
      if (l->inputs[k] < 0 || l->inputs[k] > i) {
        st = tk_fail(TK_ERR_FORMAT, "layer %d (%s): inputs[%d]: value %d is not produced before this layer", i,
                     l->name, k, l->inputs[k]);
        goto done;
      }
    tk_shape in = vals[l->inputs[0]], out = in;
    if (adaptive >= 0 && strcmp(l->name, g_adaptive[adaptive].before) == 0 &&
        (in.h != g_adaptive[adaptive].oh || in.w != g_adaptive[adaptive].ow)) {
      int oh = g_adaptive[adaptive].oh, ow = g_adaptive[adaptive].ow;
      if (in.h % oh || in.w % ow) {
        st = tk_fail(TK_ERR_UNSUPPORTED,
                     "%s: input %dx%d gives a %dx%d map before AdaptiveAvgPool2d((%d, %d)), not a multiple of "
                     "%dx%d (32x32 or 64x64 inputs work)",
                     m->arch, m->in_h, m->in_w, in.h, in.w, oh, ow, oh, ow);
        goto done;
      }
      tk_layer pool = tk_layer_default(TK_OP_AVGPOOL, "avgpool", l->inputs[0]);
      pool.kh = pool.sh = in.h / oh;
      pool.kw = pool.sw = in.w / ow;
      tk_shape *nv = realloc(vals, (size_t)(m->n_layers + 3) * sizeof *vals);
      if (!nv) {
        st = tk_fail(TK_ERR_NOMEM, "out of memory");
        goto done;
      }
      vals = nv;
      if ((st = insert_layer(m, i, &pool)) != TK_OK) goto done;
      m->layers[i + 1].inputs[0] = i + 1; /* the flatten reads the pool */
      i--;                                /* shape the pool next */
      continue;
    }
    tk_tensor *w = NULL;
    switch (l->op) {
    case TK_OP_CONV2D: {
      if ((st = tensor_ref(m, l, l->weight, "weight", &w)) != TK_OK) goto done;
      if (l->groups < 1 || in.c % l->groups) {
        st = tk_fail(TK_ERR_ARG, "%s: layer %s: groups %d does not divide %d input channels", m->arch, l->name,
                     l->groups, in.c);
        goto done;
      }
      int64_t shape[4] = {w->shape[0], in.c / l->groups, w->shape[2], w->shape[3]};
      if ((st = resize_tensor(w, 4, shape)) != TK_OK) goto done;
      out = (tk_shape){(int)w->shape[0], out_size(in.h, l->kh, l->sh, l->ph, l->dh),
                       out_size(in.w, l->kw, l->sw, l->pw, l->dw)};
      break;
    }
    case TK_OP_LINEAR: {
      if ((st = tensor_ref(m, l, l->weight, "weight", &w)) != TK_OK) goto done;
      int64_t of = i == m->n_layers - 1 ? m->classes : w->shape[0];
      int64_t shape[2] = {of, tk_shape_numel(in)};
      if ((st = resize_tensor(w, 2, shape)) != TK_OK) goto done;
      if (l->bias >= 0) {
        tk_tensor *b = NULL;
        if ((st = tensor_ref(m, l, l->bias, "bias", &b)) != TK_OK || (st = resize_tensor(b, 1, &of)) != TK_OK)
          goto done;
      }
      if (l->out_features) l->out_features = (int)of;
      out = (tk_shape){(int)of, 1, 1};
      break;
    }
    case TK_OP_BATCHNORM: {
      int refs[4] = {l->weight, l->bias, l->mean, l->var};
      int64_t c = in.c;
      for (int k = 0; k < 4; k++) {
        tk_tensor *t = NULL;
        if (refs[k] < 0) continue;
        if ((st = tensor_ref(m, l, refs[k], "batchnorm tensor", &t)) != TK_OK || (st = resize_tensor(t, 1, &c)) != TK_OK)
          goto done;
      }
      break;
    }
    case TK_OP_SCALE: {
      int64_t shape[3] = {in.c, 1, 1};
      if ((st = tensor_ref(m, l, l->weight, "weight", &w)) != TK_OK || (st = resize_tensor(w, 3, shape)) != TK_OK)
        goto done;
      break;
    }
    case TK_OP_MAXPOOL:
    case TK_OP_AVGPOOL:
      out.h = out_size(in.h, l->kh, l->sh, l->ph, 1);
      out.w = out_size(in.w, l->kw, l->sw, l->pw, 1);
      break;
    case TK_OP_GLOBALAVGPOOL:
      out = (tk_shape){in.c, 1, 1};
      break;
    case TK_OP_FLATTEN:
      out = (tk_shape){(int)tk_shape_numel(in), 1, 1};
      break;
    default:
      break;
    }
    if (out.h < 1 || out.w < 1) {
      st = tk_fail(TK_ERR_ARG, "%s: input %dx%dx%d is too small: layer %s gets a %dx%d map", m->arch, m->in_c,
                   m->in_h, m->in_w, l->name, in.h, in.w);
      goto done;
    }
    vals[i + 1] = out;
  }
  /* a torch-default bias is bounded by the fan_in of its layer's (possibly resized) weight */
  for (int i = 0; i < m->n_layers; i++) {
    tk_layer *l = &m->layers[i];
    if ((l->op != TK_OP_CONV2D && l->op != TK_OP_LINEAR) || l->bias < 0 || l->weight < 0) continue;
    tk_tensor *b = &m->tensors[l->bias], *w = &m->tensors[l->weight];
    if (b->init == TK_INIT_TORCH_DEFAULT_BIAS) b->init_fan_in = w->numel / w->shape[0];
  }
done:
  free(vals);
  return st;
}

/* ---- initialisation ------------------------------------------------------------------------- */

static uint64_t name_hash(const char *s) { /* FNV-1a 64 */
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

static void fans(const tk_tensor *t, int64_t *fan_in, int64_t *fan_out) {
  int64_t rf = 1;
  for (int d = 2; d < t->ndim; d++) rf *= t->shape[d];
  *fan_in = t->ndim >= 2 ? t->shape[1] * rf : 0;
  *fan_out = t->ndim >= 2 ? t->shape[0] * rf : 0;
}

tk_status tk_model_init_params(tk_model *m, uint64_t seed) {
  for (int ti = 0; ti < m->n_tensors; ti++) {
    tk_tensor *t = &m->tensors[ti];
    tk_rng r;
    tk_rng_seed(&r, (seed * 0x9E3779B97F4A7C15ull) ^ name_hash(t->name));
    int64_t fan_in, fan_out;
    fans(t, &fan_in, &fan_out);
    double sd = 0, bound = 0;
    bool normal = false;
    switch (t->init) {
    case TK_INIT_NONE:
      continue;
    case TK_INIT_ZEROS:
    case TK_INIT_ONES:
      for (int64_t i = 0; i < t->numel; i++) t->data[i] = t->init == TK_INIT_ONES ? 1.0f : 0.0f;
      continue;
    case TK_INIT_KAIMING_NORMAL_FAN_OUT:
    case TK_INIT_KAIMING_NORMAL_FAN_OUT_RELU:
    case TK_INIT_KAIMING_NORMAL_FAN_IN: {
      int64_t fan = t->init == TK_INIT_KAIMING_NORMAL_FAN_IN ? fan_in : fan_out;
      if (fan < 1)
        return tk_fail(TK_ERR_FORMAT, "tensor %s: init: kaiming needs a tensor of 2 or more dimensions", t->name);
      sd = sqrt(2.0 / (double)fan);
      normal = true;
      break;
    }
    case TK_INIT_NORMAL_001:
      sd = 0.01;
      normal = true;
      break;
    case TK_INIT_TORCH_DEFAULT:
      if (fan_in < 1)
        return tk_fail(TK_ERR_FORMAT, "tensor %s: init: TorchDefault needs a weight of 2 or more dimensions "
                                      "(biases use TorchDefaultBias)", t->name);
      bound = 1.0 / sqrt((double)fan_in);
      break;
    case TK_INIT_TORCH_DEFAULT_BIAS:
      if (t->init_fan_in < 1)
        return tk_fail(TK_ERR_FORMAT, "tensor %s: init_fan_in: %lld, TorchDefaultBias needs the fan_in of its layer",
                       t->name, (long long)t->init_fan_in);
      bound = 1.0 / sqrt((double)t->init_fan_in);
      break;
    default:
      return tk_fail(TK_ERR_FORMAT, "tensor %s: init: unknown rule %d", t->name, (int)t->init);
    }
    if (normal)
      for (int64_t i = 0; i < t->numel; i++) t->data[i] = (float)(sd * tk_rng_normal(&r));
    else
      for (int64_t i = 0; i < t->numel; i++) t->data[i] = (float)((2.0 * tk_rng_uniform(&r) - 1.0) * bound);
    tk_tensor_apply_mask(t);
  }
  return TK_OK;
}

/* ---- creation ------------------------------------------------------------------------------- */

static tk_status set_provenance(tk_model *m, const char *arch, uint64_t seed) {
  char src[128], created[32], notes[96];
  time_t now = time(NULL);
  struct tm tmv;
  gmtime_r(&now, &tmv);
  strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tmv);
  snprintf(src, sizeof src, "zoo:%s", arch);
  snprintf(notes, sizeof notes, "seed %llu", (unsigned long long)seed);
  char *s[4] = {tk_strdup("init"), tk_strdup(src), tk_strdup(created), tk_strdup(notes)};
  free(m->prov.method);
  free(m->prov.source);
  free(m->prov.created);
  free(m->prov.notes);
  m->prov.method = s[0];
  m->prov.source = s[1];
  m->prov.created = s[2];
  m->prov.notes = s[3];
  m->prov.sparsity = 0.0;
  for (int i = 0; i < m->prov.n_metrics; i++) free(m->prov.metrics[i].name);
  free(m->prov.metrics);
  m->prov.metrics = NULL;
  m->prov.n_metrics = 0;
  for (int i = 0; i < 4; i++)
    if (!s[i]) return TK_ERR_NOMEM;
  return TK_OK;
}

tk_status tk_zoo_create(const char *arch, int classes, int c, int h, int w, uint64_t seed, tk_model **out) {
  if (!out) return tk_fail(TK_ERR_ARG, "tk_zoo_create: out is NULL");
  *out = NULL;
  if (!arch || !*arch) return tk_fail(TK_ERR_ARG, "no architecture given");
  char path[160], choices[512] = "";
  snprintf(path, sizeof path, "models/%s.json", arch);
  const tk_embedded_file *f = strlen(arch) < 100 && !strchr(arch, '/') ? tk_embedded_find(path) : NULL;
  if (!f) {
    for (const char *const *n = tk_zoo_names(); *n; n++)
      snprintf(choices + strlen(choices), sizeof choices - strlen(choices), "%s%s", n == tk_zoo_names() ? "" : ", ", *n);
    return tk_fail(TK_ERR_ARG, "unknown architecture '%s' (choices: %s)", arch, choices);
  }
  if (classes < 0 || classes > TK_MAX_DIM) return tk_fail(TK_ERR_ARG, "classes: %d out of range 1..%d", classes, TK_MAX_DIM);
  if (c < 0 || h < 0 || w < 0 || c > TK_MAX_DIM || h > TK_MAX_DIM || w > TK_MAX_DIM)
    return tk_fail(TK_ERR_ARG, "input: %dx%dx%d out of range", c, h, w);
  tk_model *m = NULL;
  tk_status st = tk_model_from_json(f->data, path, &m);
  if (st != TK_OK) return st;
  if (m->mean && c && c != m->in_c) {
    st = tk_fail(TK_ERR_UNSUPPORTED, "%s: the architecture normalises its %d input channels; cannot change them to %d",
                 arch, m->in_c, c);
    goto fail;
  }
  if (classes) m->classes = classes;
  if (c) m->in_c = c;
  if (h) m->in_h = h;
  if (w) m->in_w = w;
  if ((st = zoo_reshape(m)) != TK_OK) goto fail;
  if ((st = tk_model_infer(m)) != TK_OK) {
    tk_fail_prefix(st, "%s for %d classes and input %dx%dx%d", arch, m->classes, m->in_c, m->in_h, m->in_w);
    goto fail;
  }
  if ((st = tk_model_init_params(m, seed)) != TK_OK) goto fail;
  if ((st = set_provenance(m, arch, seed)) != TK_OK) goto fail;
  *out = m;
  return TK_OK;
fail:
  tk_model_free(m);
  return st;
}
