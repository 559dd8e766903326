/* test_load.c -- the model file: save/load round trip (bit-exact), JSON architecture files.
 *
 * The fixture (load_fixture.h) covers every op with tensors, masks whose last byte is partly
 * padding, scores, a negative zero, provenance and a training state.  It is written, read back
 * and compared field by field and bit by bit; writing the loaded model again must give the
 * same bytes.  A JSON architecture exercises the defaults of absent fields and the parser's
 * error messages.
 */
#include "check.h"
#include "load_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool same_str(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

static bool same_bits(const void *a, const void *b, size_t n) {
  if (!a || !b) return a == b;
  return memcmp(a, b, n) == 0;
}

static void compare_tensor(const char *ctx, const tk_tensor *a, const tk_tensor *b, bool data_only) {
  CHECK_MSG(same_str(a->name, b->name), "%s: name %s vs %s", ctx, a->name, b->name);
  CHECK_MSG(a->ndim == b->ndim && a->numel == b->numel, "%s %s: ndim/numel", ctx, a->name);
  for (int d = 0; d < 4; d++) CHECK_MSG(a->shape[d] == b->shape[d], "%s %s: shape[%d]", ctx, a->name, d);
  if (a->numel != b->numel) return;
  size_t n = (size_t)a->numel;
  if (!same_bits(a->data, b->data, n * sizeof(float))) {
    check_close(a->name, b->data, a->data, n, 0, 0); /* reports the worst element */
    CHECK_MSG(false, "%s %s: data differs bitwise", ctx, a->name);
  }
  CHECK_MSG(a->prunable == b->prunable && a->trainable == b->trainable, "%s %s: flags", ctx, a->name);
  if (data_only) return;
  CHECK_MSG(same_bits(a->mask, b->mask, n), "%s %s: mask differs", ctx, a->name);
  CHECK_MSG(same_bits(a->scores, b->scores, n * sizeof(float)), "%s %s: scores differ", ctx, a->name);
  CHECK_MSG(a->init == b->init && a->init_fan_in == b->init_fan_in, "%s %s: init rule", ctx, a->name);
}

static void compare_metrics(const char *ctx, const tk_metric *a, int na, const tk_metric *b, int nb) {
  CHECK_MSG(na == nb, "%s: %d vs %d metrics", ctx, na, nb);
  for (int i = 0; i < na && i < nb; i++) {
    CHECK_MSG(same_str(a[i].name, b[i].name), "%s[%d]: name", ctx, i);
    CHECK_MSG(same_bits(&a[i].value, &b[i].value, sizeof(double)), "%s[%d]: value %.17g vs %.17g", ctx, i,
              a[i].value, b[i].value);
  }
}

static void compare_models(const tk_model *a, const tk_model *b) {
  CHECK(a->format_version == b->format_version);
  CHECK(same_str(a->arch, b->arch));
  CHECK(a->classes == b->classes);
  CHECK(a->in_c == b->in_c && a->in_h == b->in_h && a->in_w == b->in_w);
  CHECK_MSG(same_bits(&a->lo, &b->lo, sizeof(float)) && same_bits(&a->hi, &b->hi, sizeof(float)),
            "range [%g, %g] vs [%g, %g] (bitwise)", a->lo, a->hi, b->lo, b->hi);
  CHECK(same_bits(a->mean, b->mean, (size_t)a->in_c * sizeof(float)));
  CHECK(same_bits(a->std, b->std, (size_t)a->in_c * sizeof(float)));
  CHECK_MSG(a->n_tensors == b->n_tensors, "%d vs %d tensors", a->n_tensors, b->n_tensors);
  for (int i = 0; i < a->n_tensors && i < b->n_tensors; i++) compare_tensor("tensor", &a->tensors[i], &b->tensors[i], false);
  CHECK_MSG(a->n_layers == b->n_layers, "%d vs %d layers", a->n_layers, b->n_layers);
  for (int i = 0; i < a->n_layers && i < b->n_layers; i++) {
    const tk_layer *x = &a->layers[i], *y = &b->layers[i];
    CHECK_MSG(x->op == y->op && same_str(x->name, y->name), "layer %d: op/name", i);
    CHECK_MSG(x->n_inputs == y->n_inputs && x->inputs[0] == y->inputs[0] &&
                  (x->n_inputs < 2 || x->inputs[1] == y->inputs[1]),
              "layer %d: inputs", i);
    CHECK_MSG(x->weight == y->weight && x->bias == y->bias && x->mean == y->mean && x->var == y->var,
              "layer %d: tensor references", i);
    CHECK_MSG(x->kh == y->kh && x->kw == y->kw && x->sh == y->sh && x->sw == y->sw && x->ph == y->ph &&
                  x->pw == y->pw && x->dh == y->dh && x->dw == y->dw && x->groups == y->groups,
              "layer %d: kernel/stride/padding/dilation/groups", i);
    CHECK_MSG(same_bits(&x->eps, &y->eps, sizeof(float)) && same_bits(&x->momentum, &y->momentum, sizeof(float)),
              "layer %d: eps/momentum", i);
    CHECK_MSG(x->out_features == y->out_features, "layer %d: out_features", i);
    CHECK_MSG(x->in.c == y->in.c && x->in.h == y->in.h && x->in.w == y->in.w && x->out.c == y->out.c &&
                  x->out.h == y->out.h && x->out.w == y->out.w,
              "layer %d: inferred shapes", i);
  }
  CHECK(same_str(a->prov.method, b->prov.method));
  CHECK(same_str(a->prov.source, b->prov.source));
  CHECK(same_str(a->prov.created, b->prov.created));
  CHECK(same_str(a->prov.notes, b->prov.notes));
  CHECK(same_bits(&a->prov.sparsity, &b->prov.sparsity, sizeof(double)));
  compare_metrics("provenance metrics", a->prov.metrics, a->prov.n_metrics, b->prov.metrics, b->prov.n_metrics);
  CHECK_MSG((a->train == NULL) == (b->train == NULL), "train state present in one model only");
  if (a->train && b->train) {
    const tk_train_state *x = a->train, *y = b->train;
    CHECK(x->epoch == y->epoch && x->step == y->step);
    CHECK(x->n_rng == y->n_rng && same_bits(x->rng, y->rng, (size_t)x->n_rng * sizeof(uint64_t)));
    CHECK(same_str(x->config, y->config) && same_str(x->log, y->log));
    compare_metrics("best", x->best, x->n_best, y->best, y->n_best);
    CHECK_MSG(x->n_momenta == y->n_momenta, "%d vs %d momenta", x->n_momenta, y->n_momenta);
    for (int i = 0; i < x->n_momenta && i < y->n_momenta; i++)
      compare_tensor("momentum", &x->momenta[i], &y->momenta[i], true);
  }
}

static void test_round_trip(const char *dir) {
  tk_model *a = fixture_model();
  CHECK_MSG(a != NULL, "fixture: %s", tk_last_error());
  if (!a) return;
  /* the mask really zeroed the fixture's pruned weights, and kept the padded-byte element */
  const tk_tensor *w1 = &a->tensors[0];
  CHECK(w1->mask && w1->mask[w1->numel - 1] == 1);
  int64_t kept = tk_tensor_nnz(w1);
  CHECK_MSG(kept > 0 && kept < w1->numel, "fixture mask keeps %lld of %lld", (long long)kept, (long long)w1->numel);

  char path[512];
  snprintf(path, sizeof path, "%s/fixture.tkt", dir);
  tk_status st = tk_model_save(a, path);
  CHECK_MSG(st == TK_OK, "save: %s", tk_last_error());
  tk_model *b = NULL;
  st = tk_model_load(path, &b);
  CHECK_MSG(st == TK_OK, "load: %s", tk_last_error());
  if (b) {
    compare_models(a, b);
    /* the in-memory buffer path agrees with the file, and saving again gives the same bytes */
    void *b1 = NULL, *b2 = NULL;
    size_t n1 = 0, n2 = 0;
    CHECK(tk_model_to_buffer(a, &b1, &n1) == TK_OK);
    CHECK(tk_model_to_buffer(b, &b2, &n2) == TK_OK);
    CHECK_MSG(n1 == n2 && b1 && b2 && memcmp(b1, b2, n1) == 0, "re-saved model differs (%zu vs %zu bytes)", n1, n2);
    /* a buffer at an odd address loads the same */
    unsigned char *odd = malloc(n1 + 1);
    memcpy(odd + 1, b1, n1);
    tk_model *c = NULL;
    st = tk_model_from_buffer(odd + 1, n1, "odd", &c);
    CHECK_MSG(st == TK_OK, "misaligned buffer: %s", tk_last_error());
    if (c) compare_models(a, c);
    tk_model_free(c);
    free(odd);
    /* a clone saved gives the same bytes too */
    tk_model *d = tk_model_clone(b);
    void *b3 = NULL;
    size_t n3 = 0;
    CHECK(d && tk_model_to_buffer(d, &b3, &n3) == TK_OK && n3 == n1 && memcmp(b1, b3, n1) == 0);
    tk_model_free(d);
    free(b1);
    free(b2);
    free(b3);
  }
  /* the model without training state and provenance round-trips as well */
  tk_model *e = tk_model_clone(a);
  if (e) {
    tk_model *holder = tk_model_new("x", 1, 1, 1, 1); /* frees the train state with the model */
    holder->train = e->train;
    e->train = NULL;
    tk_model_free(holder);
    free(e->prov.method), free(e->prov.source), free(e->prov.created), free(e->prov.notes);
    for (int i = 0; i < e->prov.n_metrics; i++) free(e->prov.metrics[i].name);
    free(e->prov.metrics);
    memset(&e->prov, 0, sizeof e->prov);
    void *buf = NULL;
    size_t n = 0;
    tk_model *f = NULL;
    CHECK(tk_model_to_buffer(e, &buf, &n) == TK_OK);
    CHECK_MSG(tk_model_from_buffer(buf, n, "bare", &f) == TK_OK, "bare: %s", tk_last_error());
    if (f) {
      compare_models(e, f);
      CHECK(f->train == NULL && f->prov.method == NULL && f->prov.n_metrics == 0);
    }
    tk_model_free(f);
    free(buf);
  }
  tk_model_free(e);
  /* pruned data is zero after loading even when the writer left values there */
  if (b) {
    tk_tensor *t = &b->tensors[0];
    int64_t p = -1;
    for (int64_t i = 0; i < t->numel && p < 0; i++)
      if (!t->mask[i]) p = i;
    CHECK(p >= 0);
    if (p >= 0) {
      CHECK(t->data[p] == 0.0f);
      t->data[p] = 7.0f; /* the writer stores data as is */
      void *buf = NULL;
      size_t n = 0;
      tk_model *g = NULL;
      CHECK(tk_model_to_buffer(b, &buf, &n) == TK_OK);
      CHECK(tk_model_from_buffer(buf, n, "dirty", &g) == TK_OK);
      CHECK_MSG(g && g->tensors[0].data[p] == 0.0f, "pruned element %lld not zeroed on load", (long long)p);
      tk_model_free(g);
      free(buf);
    }
  }
  /* saving refuses a model the reader would refuse */
  if (b) {
    b->tensors[3].data[1] = 0.0f / 0.0f;
    char bad[512];
    snprintf(bad, sizeof bad, "%s/nan.tkt", dir);
    st = tk_model_save(b, bad);
    CHECK_MSG(st != TK_OK && strstr(tk_last_error(), "bn1.bias") && strstr(tk_last_error(), "NaN"),
              "save of a NaN model: %s", tk_last_error());
    CHECK(access(bad, F_OK) != 0);
  }
  tk_model_free(a);
  tk_model_free(b);
  unlink(path);
}

/* An architecture file: no data, sequential inputs left out, conv kernel from the weight,
 * pool stride from the kernel, comments and unquoted keys (FlatBuffers JSON). */
static const char *k_arch =
    "// a small architecture\n"
    "{\n"
    "  arch: \"tiny\", classes: 4,\n"
    "  input: {channels: 2, height: 6, width: 6, mean: [0.5, 0.25], std: [0.5, 2.0], min: -1, max: 1},\n"
    "  tensors: [\n"
    "    {name: \"c.weight\", shape: [3, 2, 3, 3], init: \"KaimingNormalFanOut\", prunable: true,\n"
    "     mask: [255, 255, 255, 255, 255, 255, 7]},\n"
    "    {name: \"c.bias\", shape: [3], init: \"TorchDefaultBias\", init_fan_in: 18},\n"
    "    {name: \"l.weight\", shape: [4, 12], data: [" /* 48 values follow */
    "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,"
    "25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48]}\n"
    "  ],\n"
    "  layers: [\n"
    "    {name: \"c\", op: Conv2d, weight: 0, bias: 1},\n"
    "    {name: \"r\", op: Relu},\n"
    "    {name: \"p\", op: MaxPool, kernel: [2, 2]},\n"
    "    {name: \"f\", op: Flatten},\n"
    "    {name: \"l\", op: Linear, weight: 2}\n"
    "  ],\n"
    "  provenance: {method: \"architecture\"}\n"
    "}\n";

static void test_json(const char *dir) {
  tk_model *m = NULL;
  tk_status st = tk_model_from_json(k_arch, "tiny.json", &m);
  CHECK_MSG(st == TK_OK, "tiny.json: %s", tk_last_error());
  if (!m) return;
  CHECK(same_str(m->arch, "tiny") && m->classes == 4 && m->in_c == 2 && m->in_h == 6);
  CHECK(m->mean && m->mean[1] == 0.25f && m->std[1] == 2.0f && m->lo == -1.0f && m->hi == 1.0f);
  CHECK(m->n_tensors == 3 && m->n_layers == 5);
  const tk_tensor *w = &m->tensors[0];
  CHECK(w->init == TK_INIT_KAIMING_NORMAL_FAN_OUT && w->prunable && w->mask);
  CHECK(m->tensors[1].init == TK_INIT_TORCH_DEFAULT_BIAS && m->tensors[1].init_fan_in == 18);
  if (w->mask) {
    int64_t kept = tk_tensor_nnz(w);
    CHECK_MSG(kept == 51, "mask keeps %lld, expected 51", (long long)kept);
    CHECK(w->mask[50] == 1 && w->mask[51] == 0 && w->mask[53] == 0);
  }
  float zero = 0;
  for (int64_t i = 0; i < w->numel; i++) CHECK(w->data[i] == zero);
  float want[48];
  for (int i = 0; i < 48; i++) want[i] = (float)(i + 1);
  check_close("l.weight", m->tensors[2].data, want, 48, 0, 0);
  const tk_layer *c = &m->layers[0], *p = &m->layers[2];
  CHECK_MSG(c->kh == 3 && c->kw == 3 && c->sh == 1 && c->ph == 0 && c->dh == 1, "conv attributes from the weight");
  CHECK_MSG(p->kh == 2 && p->sh == 2 && p->sw == 2, "pool stride defaults to the kernel");
  for (int i = 0; i < m->n_layers; i++) CHECK_MSG(m->layers[i].inputs[0] == i, "layer %d reads value %d", i, m->layers[i].inputs[0]);
  CHECK(c->out.c == 3 && c->out.h == 4 && p->out.h == 2 && m->layers[3].out.c == 12);
  CHECK(same_str(m->prov.method, "architecture") && m->train == NULL);

  /* JSON -> binary -> JSON-less load is the same model */
  char path[512];
  snprintf(path, sizeof path, "%s/tiny.tkt", dir);
  CHECK(tk_model_save(m, path) == TK_OK);
  tk_model *b = NULL;
  CHECK_MSG(tk_model_load(path, &b) == TK_OK, "%s", tk_last_error());
  if (b) compare_models(m, b);
  tk_model_free(b);
  unlink(path);
  tk_model_free(m);

  /* parser errors: one line, the file name first, the line number */
  const char *bad_field = "{\n  classes: 4,\n  input: {channels: 2, height: 6, width: 6},\n  colour: 3\n}\n";
  st = tk_model_from_json(bad_field, "bad.json", &m);
  const char *e = tk_last_error();
  CHECK_MSG(st == TK_ERR_FORMAT && m == NULL, "unknown field accepted");
  CHECK_MSG(strncmp(e, "bad.json: ", 10) == 0 && strstr(e, "line 4") && strstr(e, "colour") && !strchr(e, '\n'),
            "message: %s", e);
  const char *bad_syntax = "{\n  classes: 4,\n  input: {channels: 2 height: 6}\n}\n";
  st = tk_model_from_json(bad_syntax, "syntax.json", &m);
  e = tk_last_error();
  CHECK_MSG(st == TK_ERR_FORMAT && strncmp(e, "syntax.json: line 3", 19) == 0 && !strchr(e, '\n'), "message: %s", e);
  const char *no_input = "{ classes: 4, layers: [] }";
  st = tk_model_from_json(no_input, "noinput.json", &m);
  e = tk_last_error();
  CHECK_MSG(st == TK_ERR_FORMAT && strstr(e, "noinput.json: ") == e && strstr(e, "input"), "message: %s", e);
  st = tk_model_from_json("table X { a: int; }", "schema.json", &m);
  CHECK_MSG(st == TK_ERR_FORMAT && strstr(tk_last_error(), "schema.json: "), "schema text accepted: %s", tk_last_error());
  st = tk_model_from_json("", "empty.json", &m);
  CHECK_MSG(st == TK_ERR_FORMAT && strstr(tk_last_error(), "empty.json: "), "empty JSON: %s", tk_last_error());
  /* a semantic error found after parsing names the file, the tensor and the field:
   * 54 elements end at bit 5 of the seventh mask byte; 71 = 0b01000111 sets bit 6 */
  char sem[4096];
  const char *at = strstr(k_arch, "255, 7]");
  snprintf(sem, sizeof sem, "%.*s255, 71]%s", (int)(at - k_arch), k_arch, at + 7);
  st = tk_model_from_json(sem, "sem.json", &m);
  e = tk_last_error();
  CHECK_MSG(st == TK_ERR_FORMAT && strncmp(e, "sem.json: tensor c.weight: mask", 31) == 0 && strstr(e, "past"),
            "message: %s", e);
}

/* Every zoo architecture embedded in the binary parses and passes the checks. */
static void test_embedded_zoo(void) {
  int n = 0;
  for (const tk_embedded_file *f = tk_embedded; f->path; f++) {
    if (strncmp(f->path, "models/", 7) != 0 || !strstr(f->path, ".json")) continue;
    tk_model *m = NULL;
    tk_status st = tk_model_from_json(f->data, f->path, &m);
    CHECK_MSG(st == TK_OK, "%s", tk_last_error());
    if (m) {
      void *buf = NULL;
      size_t len = 0;
      tk_model *b = NULL;
      CHECK(tk_model_to_buffer(m, &buf, &len) == TK_OK);
      CHECK_MSG(tk_model_from_buffer(buf, len, f->path, &b) == TK_OK, "%s", tk_last_error());
      if (b) compare_models(m, b);
      tk_model_free(b);
      free(buf);
    }
    tk_model_free(m);
    n++;
  }
  printf("zoo architectures checked: %d\n", n);
}

int main(void) {
  char dir[] = "/tmp/tk_test_load_XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_round_trip(dir);
  test_json(dir);
  test_embedded_zoo();
  rmdir(dir);
  return check_done("test_load");
}
