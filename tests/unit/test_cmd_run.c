/* test_cmd_run.c -- `ticket run` end to end: the command's outputs against the reference
 * engine called in-process on the same model and batch, and its answers to bad input.
 *
 * A small model (normalised input, masked conv with bias, BatchNorm, relu, maxpool, flatten,
 * linear) is saved with tk_model_save; the `ticket` binary (TICKET_BIN) runs it:
 *   - logits equal the in-process forward exactly; the JSON loss equals tk_softmax_xent;
 *     the input gradient and every parameter gradient (read back from the --param-grads
 *     model, whose masks are dropped and whose running statistics are kept) match to 1e-6
 *     of the array's largest element (1e-5 for parameter gradients summed over chunks);
 *   - eval mode split into chunks (--batch 2) gives the same logits and gradients;
 *   - --bn train gives train-mode logits and gradients, and --save-model writes the running
 *     statistics the in-process train-mode forward produced;
 *   - bad input (wrong shape, dtype, Fortran order, labels of the wrong length or range,
 *     missing files, contradictory options) gives one error line naming the file or option
 *     and the documented exit code (2 usage, 3 I/O, 4 format/shape).
 * Skipped (exit 77) when TICKET_BIN is not set.
 */
#include "check.h"

#include "runtime/engine.h"
#include "runtime/npy.h"

#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[256];
static const char *g_bin;
static char g_out[8192], g_err[8192];

static const char *path_of(const char *name) {
  static char buf[8][512];
  static int k;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
  return buf[k];
}

static void slurp(const char *path, char *buf, size_t cap) {
  buf[0] = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return;
  size_t n = fread(buf, 1, cap - 1, f);
  buf[n] = 0;
  fclose(f);
}

/* Runs `ticket run ARGS` in the temporary directory; stdout/stderr land in g_out/g_err. */
static int run(const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "cd '%s' && '%s' run %s > out.txt 2> err.txt", g_dir, g_bin, args);
  int rc = system(cmd);
  slurp(path_of("out.txt"), g_out, sizeof g_out);
  slurp(path_of("err.txt"), g_err, sizeof g_err);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Expects exit code `code` and one line on stderr containing each of the words. */
static void expect_error(const char *args, int code, const char *word1, const char *word2) {
  int rc = run(args);
  size_t len = strlen(g_err);
  int lines = 0;
  for (size_t i = 0; i < len; i++) lines += g_err[i] == '\n';
  CHECK_MSG(rc == code, "ticket run %s: exit %d, expected %d (stderr: %s)", args, rc, code, g_err);
  CHECK_MSG(lines == 1, "ticket run %s: %d lines on stderr, expected one: %s", args, lines, g_err);
  CHECK_MSG(strstr(g_err, word1) && (!word2 || strstr(g_err, word2)), "ticket run %s: stderr '%s' should name '%s'%s%s",
            args, g_err, word1, word2 ? " and " : "", word2 ? word2 : "");
}

static double json_number(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\": ", key);
  const char *p = strstr(json, pat);
  if (!p) return NAN;
  return strtod(p + strlen(pat), NULL);
}

/* int64 labels as np.save writes them */
static void write_labels(const char *name, const int *y, int n) {
  char dict[128];
  int len = snprintf(dict, sizeof dict, "{'descr': '<i8', 'fortran_order': False, 'shape': (%d,), }", n);
  size_t hlen = (size_t)len + 1;
  hlen += (64 - (10 + hlen) % 64) % 64;
  FILE *f = fopen(path_of(name), "wb");
  TK_ASSERT(f);
  unsigned char hdr[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)hlen, (unsigned char)(hlen >> 8)};
  fwrite(hdr, 1, 10, f);
  fputs(dict, f);
  for (size_t k = (size_t)len + 1; k < hlen; k++) fputc(' ', f);
  fputc('\n', f);
  for (int i = 0; i < n; i++) {
    int64_t v = y[i];
    fwrite(&v, 8, 1, f);
  }
  fclose(f);
}

static int tensor(tk_model *m, tk_rng *r, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d,
                  double mean, double sd) {
  int64_t s[4] = {a, b, c, d};
  int t = tk_model_add_tensor(m, name, ndim, s);
  TK_ASSERT(t >= 0);
  for (int64_t i = 0; i < m->tensors[t].numel; i++) m->tensors[t].data[i] = (float)(mean + sd * tk_rng_normal(r));
  return t;
}

static tk_model *build(tk_rng *r) {
  tk_model *m = tk_model_new("run-test", 5, 2, 6, 6);
  m->mean = malloc(2 * sizeof(float)), m->std = malloc(2 * sizeof(float));
  m->mean[0] = 0.4f, m->mean[1] = 0.5f, m->std[0] = 0.2f, m->std[1] = 0.3f;
  tk_layer c = tk_layer_default(TK_OP_CONV2D, "conv", 0);
  c.kh = c.kw = 3, c.ph = c.pw = 1;
  c.weight = tensor(m, r, "conv.weight", 4, 4, 2, 3, 3, 0, 0.4);
  c.bias = tensor(m, r, "conv.bias", 1, 4, 1, 1, 1, 0, 0.1);
  m->tensors[c.weight].prunable = true;
  uint8_t mask[72];
  for (int i = 0; i < 72; i++) mask[i] = (uint8_t)(tk_rng_uniform(r) < 0.6);
  tk_tensor_set_mask(&m->tensors[c.weight], mask);
  tk_model_add_layer(m, &c);
  tk_layer b = tk_layer_default(TK_OP_BATCHNORM, "bn", 1);
  b.weight = tensor(m, r, "bn.weight", 1, 4, 1, 1, 1, 1, 0.2);
  b.bias = tensor(m, r, "bn.bias", 1, 4, 1, 1, 1, 0, 0.2);
  b.mean = tensor(m, r, "bn.running_mean", 1, 4, 1, 1, 1, 0, 0.2);
  b.var = tensor(m, r, "bn.running_var", 1, 4, 1, 1, 1, 1, 0);
  m->tensors[b.mean].trainable = m->tensors[b.var].trainable = false;
  tk_model_add_layer(m, &b);
  tk_layer re = tk_layer_default(TK_OP_RELU, "relu", 2);
  tk_model_add_layer(m, &re);
  tk_layer p = tk_layer_default(TK_OP_MAXPOOL, "pool", 3);
  p.kh = p.kw = 2, p.sh = p.sw = 2;
  tk_model_add_layer(m, &p);
  tk_layer f = tk_layer_default(TK_OP_FLATTEN, "flat", 4);
  tk_model_add_layer(m, &f);
  tk_layer fc = tk_layer_default(TK_OP_LINEAR, "fc", 5);
  fc.weight = tensor(m, r, "fc.weight", 2, 5, 36, 1, 1, 0, 0.2);
  fc.bias = tensor(m, r, "fc.bias", 1, 5, 1, 1, 1, 0, 0.1);
  tk_model_add_layer(m, &fc);
  TK_ASSERT(tk_model_infer(m) == TK_OK);
  return m;
}

typedef struct {
  float logits[5 * 5], dx[5 * 72];
  double loss;
  tk_model *after; /* the model after the forward (running statistics) */
  float *grads[16];
} expected;

static void reference(const tk_model *saved, const float *x, const int *y, int n, tk_bn_mode bn, expected *ex) {
  ex->after = tk_model_clone(saved);
  tk_engine *e = NULL;
  TK_ASSERT(tk_ref_engine_create(ex->after, n, &e) == TK_OK);
  TK_ASSERT(tk_engine_forward(e, x, n, bn, ex->logits) == TK_OK);
  float dl[25];
  ex->loss = tk_softmax_xent(ex->logits, y, n, saved->classes, dl, NULL);
  TK_ASSERT(tk_engine_backward(e, dl, ex->dx, 1) == TK_OK);
  for (int t = 0; t < saved->n_tensors && t < 16; t++) {
    ex->grads[t] = NULL;
    if (!e->grads[t]) continue;
    ex->grads[t] = malloc((size_t)saved->tensors[t].numel * sizeof(float));
    memcpy(ex->grads[t], e->grads[t], (size_t)saved->tensors[t].numel * sizeof(float));
  }
  tk_engine_free(e);
}

static void free_expected(const tk_model *m, expected *ex) {
  for (int t = 0; t < m->n_tensors && t < 16; t++) free(ex->grads[t]);
  tk_model_free(ex->after);
}

static void compare_npy(const char *what, const char *file, const float *want, size_t n, double tol) {
  int ndim;
  int64_t shape[8];
  float *got = NULL;
  tk_status st = tk_npy_read_f32(path_of(file), &ndim, shape, &got);
  CHECK_MSG(st == TK_OK, "%s: %s", what, tk_last_error());
  if (st != TK_OK) return;
  size_t numel = 1;
  for (int d = 0; d < ndim; d++) numel *= (size_t)shape[d];
  CHECK_MSG(numel == n, "%s: %zu elements, expected %zu", what, numel, n);
  double mx = 0;
  for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(want[i]));
  if (numel == n) check_close(what, got, want, n, tol, tol * mx); /* relative to the largest element */
  free(got);
}

/* The --param-grads model: trainable tensors hold the gradients, masks are dropped, other
 * tensors keep the data of `data_model`. */
static void compare_grads(const char *what, const char *file, const tk_model *data_model, const expected *ex, double tol) {
  tk_model *g = NULL;
  tk_status st = tk_model_load(path_of(file), &g);
  CHECK_MSG(st == TK_OK, "%s: %s", what, tk_last_error());
  if (st != TK_OK) return;
  CHECK(g->n_tensors == data_model->n_tensors);
  for (int t = 0; t < g->n_tensors && t < data_model->n_tensors; t++) {
    const tk_tensor *gt = &g->tensors[t], *mt = &data_model->tensors[t];
    char name[160];
    snprintf(name, sizeof name, "%s: %s", what, gt->name);
    CHECK_MSG(gt->mask == NULL, "%s: mask not dropped", name);
    CHECK(gt->numel == mt->numel);
    if (gt->numel != mt->numel) continue;
    double mx = 0;
    for (int64_t i = 0; ex->grads[t] && i < gt->numel; i++) mx = fmax(mx, fabs(ex->grads[t][i]));
    if (ex->grads[t]) check_close(name, gt->data, ex->grads[t], (size_t)gt->numel, tol, tol * mx);
    else check_close(name, gt->data, mt->data, (size_t)gt->numel, 0, 0);
  }
  tk_model_free(g);
}

int main(void) {
  g_bin = getenv("TICKET_BIN");
  if (!g_bin || !*g_bin || access(g_bin, X_OK) != 0) check_skip("TICKET_BIN (the ticket binary) is not set");
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/ticket_test_run_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) check_skip("cannot create a temporary directory");

  tk_rng r;
  tk_rng_seed(&r, 99);
  tk_model *m = build(&r);
  tk_status st = tk_model_save(m, path_of("m.tkt"));
  CHECK_MSG(st == TK_OK, "tk_model_save: %s", tk_last_error());
  tk_model *saved = NULL;
  if (st == TK_OK && tk_model_load(path_of("m.tkt"), &saved) != TK_OK) CHECK_MSG(0, "tk_model_load: %s", tk_last_error());
  if (!saved) {
    tk_model_free(m);
    return check_done("test_cmd_run");
  }
  const int n = 5;
  float x[5 * 72];
  int y[5] = {0, 4, 2, 2, 1};
  for (int i = 0; i < n * 72; i++) x[i] = (float)tk_rng_uniform(&r);
  int64_t xs[4] = {n, 2, 6, 6};
  CHECK(tk_npy_write_f32(path_of("x.npy"), 4, xs, x) == TK_OK);
  write_labels("y.npy", y, n);

  /* eval, whole batch */
  expected ev;
  reference(saved, x, y, n, TK_BN_EVAL, &ev);
  int rc = run("m.tkt --input x.npy -o lg.npy --labels y.npy --input-grad dx.npy --param-grads g.tkt --json");
  CHECK_MSG(rc == 0, "eval run: exit %d: %s", rc, g_err);
  if (rc == 0) {
    compare_npy("eval logits", "lg.npy", ev.logits, 25, 0);
    compare_npy("eval input gradient", "dx.npy", ev.dx, (size_t)n * 72, 1e-6);
    compare_grads("eval parameter gradients", "g.tkt", saved, &ev, 1e-6);
    double loss = json_number(g_out, "loss");
    CHECK_MSG(loss == ev.loss, "JSON loss %.17g, in-process %.17g", loss, ev.loss);
    CHECK(json_number(g_out, "n") == n && json_number(g_out, "classes") == 5);
  }
  /* eval in chunks of 2: the gradients of the mean loss summed over the chunks */
  rc = run("m.tkt --input x.npy -o lg2.npy --labels y.npy --input-grad dx2.npy --param-grads g2.tkt --batch 2 --json");
  CHECK_MSG(rc == 0, "chunked run: exit %d: %s", rc, g_err);
  if (rc == 0) {
    CHECK(json_number(g_out, "chunk") == 2);
    compare_npy("chunked logits", "lg2.npy", ev.logits, 25, 0);
    compare_npy("chunked input gradient", "dx2.npy", ev.dx, (size_t)n * 72, 1e-6);
    compare_grads("chunked parameter gradients", "g2.tkt", saved, &ev, 1e-5);
    CHECK_MSG(fabs(json_number(g_out, "loss") - ev.loss) <= 1e-12 * ev.loss, "chunked loss %.17g, expected %.17g",
              json_number(g_out, "loss"), ev.loss);
  }
  free_expected(saved, &ev);

  /* train mode: batch statistics, running statistics saved */
  expected tr;
  reference(saved, x, y, n, TK_BN_TRAIN, &tr);
  rc = run("m.tkt --input x.npy -o lgt.npy --labels y.npy --input-grad dxt.npy --param-grads gt.tkt --bn train "
           "--save-model after.tkt");
  CHECK_MSG(rc == 0, "train run: exit %d: %s", rc, g_err);
  if (rc == 0) {
    compare_npy("train logits", "lgt.npy", tr.logits, 25, 0);
    compare_npy("train input gradient", "dxt.npy", tr.dx, (size_t)n * 72, 1e-6);
    compare_grads("train parameter gradients", "gt.tkt", tr.after, &tr, 1e-6);
    tk_model *after = NULL;
    CHECK(tk_model_load(path_of("after.tkt"), &after) == TK_OK);
    for (int t = 0; after && t < after->n_tensors; t++) {
      char name[128];
      snprintf(name, sizeof name, "saved model after train forward: %s", after->tensors[t].name);
      check_close(name, after->tensors[t].data, tr.after->tensors[t].data, (size_t)after->tensors[t].numel, 0, 0);
      CHECK_MSG((after->tensors[t].mask != NULL) == (saved->tensors[t].mask != NULL), "%s: mask lost", name);
    }
    int rm = tk_model_find_tensor(saved, "bn.running_mean");
    CHECK_MSG(after && memcmp(after->tensors[rm].data, saved->tensors[rm].data, 16) != 0,
              "running_mean unchanged by a train-mode forward");
    tk_model_free(after);
  }
  free_expected(saved, &tr);

  /* no labels: logits only, JSON loss null */
  rc = run("m.tkt --input x.npy --json");
  CHECK_MSG(rc == 0 && strstr(g_out, "\"loss\": null"), "no-label run: exit %d: %s%s", rc, g_out, g_err);
  rc = run("--help");
  CHECK_MSG(rc == 0 && strstr(g_out, "usage: ticket run"), "--help: exit %d", rc);

  /* bad input */
  int64_t ws[4] = {n, 2, 6, 7};
  float xw[5 * 84] = {0};
  CHECK(tk_npy_write_f32(path_of("xw.npy"), 4, ws, xw) == TK_OK);
  expect_error("m.tkt --input xw.npy", 4, "xw.npy", "shape");
  int64_t s3[3] = {n, 2, 36};
  CHECK(tk_npy_write_f32(path_of("x3.npy"), 3, s3, x) == TK_OK);
  expect_error("m.tkt --input x3.npy", 4, "x3.npy", "shape");
  write_labels("y4.npy", y, 4);
  expect_error("m.tkt --input x.npy --labels y4.npy", 4, "y4.npy", "shape");
  int ybad[5] = {0, 1, 5, 2, 3};
  write_labels("ybad.npy", ybad, 5);
  expect_error("m.tkt --input x.npy --labels ybad.npy", 4, "ybad.npy", "label[2]");
  expect_error("m.tkt --input x.npy --labels x.npy", 4, "x.npy", "dtype");
  expect_error("m.tkt --input y.npy", 4, "y.npy", "dtype");
  expect_error("m.tkt --input missing.npy", 3, "missing.npy", NULL);
  expect_error("missing.tkt --input x.npy", 3, "missing.tkt", NULL);
  expect_error("x.npy --input x.npy", 4, "x.npy", NULL);
  expect_error("m.tkt --input x.npy --input-grad d.npy", 2, "--labels", NULL);
  expect_error("m.tkt --input x.npy --labels y.npy --bn train --batch 2", 2, "--batch", NULL);
  expect_error("m.tkt --input x.npy --bn sideways", 2, "--bn", NULL);
  expect_error("m.tkt --input x.npy --engine magic", 2, "--engine", NULL);
  expect_error("m.tkt --input x.npy --batch 0", 2, "--batch", NULL);
  expect_error("m.tkt --input x.npy --wat", 2, "--wat", NULL);
  expect_error("m.tkt", 2, "--input", NULL);
  expect_error("m.tkt --input", 2, "--input", NULL);
  expect_error("m.tkt --input x.npy -o nodir/lg.npy", 3, "nodir/lg.npy", NULL);
  {
    /* a Fortran-ordered batch */
    FILE *f = fopen(path_of("xf.npy"), "wb");
    const char *dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (5, 2, 6, 6), }";
    size_t hlen = strlen(dict) + 1;
    hlen += (64 - (10 + hlen) % 64) % 64;
    unsigned char hdr[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)hlen, 0};
    fwrite(hdr, 1, 10, f);
    fputs(dict, f);
    for (size_t k = strlen(dict) + 1; k < hlen; k++) fputc(' ', f);
    fputc('\n', f);
    fwrite(x, sizeof(float), (size_t)n * 72, f);
    fclose(f);
    expect_error("m.tkt --input xf.npy", 4, "xf.npy", "fortran_order");
  }

  tk_model_free(saved);
  tk_model_free(m);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  return check_done("test_cmd_run");
}
