/* test_passes.c -- the frozen-inference passes (compiler/passes.c): BatchNorm folding gives
 * the same logits as the unfolded model on the reference engine (relative error <= 1e-5),
 * keeps masks exact, folds only where it is valid, and the fusion marks are right. */
#include "check.h"
#include "compiler/passes.h"
#include "runtime/engine.h"
#include "test_aot_models.h"

#include <math.h>
#include <string.h>

#define TOL 1e-5

/* max|got-want| / max|want| <= tol, else report the worst element */
static void expect_close(const char *what, const float *got, const float *want, size_t n, double tol) {
  double rel = check_rel_err(got, want, n), mw = 0;
  for (size_t i = 0; i < n; i++) mw = fmax(mw, fabs(want[i]));
  printf("  %-44s relative error %.3g\n", what, rel);
  if (!(rel <= tol)) {
    fprintf(stderr, "%s: relative error %.3g exceeds %.1g\n", what, rel, tol);
    if (check_close(what, got, want, n, 0.0, tol * mw)) check_failures++; /* NaN-free but still over */
  }
}

static int count_op(const tk_model *m, tk_op op) {
  int n = 0;
  for (int i = 0; i < m->n_layers; i++) n += m->layers[i].op == op;
  return n;
}

/* Masked tensors of `src` keep exactly their mask in `dst`, and pruned data is +0.0. */
static void expect_masks_kept(const tk_model *src, const tk_model *dst) {
  for (int t = 0; t < src->n_tensors; t++) {
    const tk_tensor *a = &src->tensors[t];
    if (!a->mask) continue;
    int u = tk_model_find_tensor(dst, a->name);
    CHECK_MSG(u >= 0, "tensor %s missing after the passes", a->name);
    if (u < 0) continue;
    const tk_tensor *b = &dst->tensors[u];
    CHECK_MSG(b->mask != NULL, "tensor %s lost its mask", a->name);
    if (!b->mask) continue;
    int64_t diff = 0, nonzero = 0;
    for (int64_t k = 0; k < a->numel; k++) {
      diff += a->mask[k] != b->mask[k];
      uint32_t bits;
      memcpy(&bits, &b->data[k], 4);
      if (!b->mask[k] && bits != 0) nonzero++;
    }
    CHECK_MSG(diff == 0, "tensor %s: %lld mask entries changed", a->name, (long long)diff);
    CHECK_MSG(nonzero == 0, "tensor %s: %lld pruned entries are not +0.0", a->name, (long long)nonzero);
  }
}

/* Folded vs unfolded logits on the reference engine. */
static void compare_logits(const char *what, tk_model *a, tk_model *b, int n, double tol, int bitwise) {
  float *x = tm_input(a, n, 7);
  float *ya = tm_reference(a, x, n), *yb = tm_reference(b, x, n);
  CHECK(x && ya && yb);
  if (x && ya && yb) {
    size_t cnt = (size_t)n * a->classes;
    if (bitwise) {
      CHECK_MSG(memcmp(ya, yb, cnt * sizeof(float)) == 0, "%s: logits differ from the unchanged model", what);
      printf("  %-44s bit-identical\n", what);
    } else {
      expect_close(what, yb, ya, cnt, tol);
    }
  }
  free(x);
  free(ya);
  free(yb);
}

static void test_ops_model(void) {
  printf("ops model (every op; 3 foldable batchnorms, 1 not)\n");
  tk_model *m = ops_model(11, 0.5);
  CHECK(m != NULL);
  if (!m) return;
  tk_pass_opts o;
  tk_pass_opts_default(&o);
  tk_model *f = NULL;
  tk_fusion *fu = NULL;
  tk_pass_stats st;
  CHECK(tk_passes_run(m, &o, &f, &fu, &st) == TK_OK);
  if (!f) {
    tk_model_free(m);
    return;
  }
  CHECK_MSG(st.bn_folded == 3 && st.bn_kept == 1 && st.bias_added == 1 && st.relu_fused == 3,
            "stats: folded %d kept %d bias added %d fused %d (expected 3 1 1 3)", st.bn_folded, st.bn_kept,
            st.bias_added, st.relu_fused);
  CHECK(f->n_layers == m->n_layers - 3);
  CHECK(count_op(f, TK_OP_BATCHNORM) == 1);
  /* the kept batchnorm reads the add, and its relu is fused into it */
  int bn = -1;
  for (int i = 0; i < f->n_layers; i++)
    if (f->layers[i].op == TK_OP_BATCHNORM) bn = i;
  CHECK(bn >= 0 && f->layers[f->layers[bn].inputs[0] - 1].op == TK_OP_ADD && fu->relu_epilogue[bn]);
  /* fused: relu1 into c1, relu3 into bn3, relu5 into add3; relu4 (after a pool) not */
  int c1 = tk_model_find_tensor(f, "c1.weight"), relu4 = -1;
  for (int i = 0; i < f->n_layers; i++)
    if (!strcmp(f->layers[i].name, "relu4")) relu4 = i;
  CHECK(relu4 >= 0 && !fu->absorbed[relu4]);
  CHECK(fu->relu_epilogue[0] && f->layers[0].weight == c1 && fu->absorbed[1]);
  /* c1 had no bias: folding added c1.bias */
  CHECK(tk_model_find_tensor(f, "c1.bias") >= 0 && f->layers[0].bias == tk_model_find_tensor(f, "c1.bias"));
  CHECK(tk_model_find_tensor(f, "bn1.running_mean") < 0 && tk_model_find_tensor(f, "bn3.running_mean") >= 0);
  expect_masks_kept(m, f);
  compare_logits("ops: folded vs unfolded (reference)", m, f, 4, TOL, 0);

  /* folding disabled: the same model, bit for bit */
  tk_model *g = NULL;
  tk_fusion *gu = NULL;
  o.fold_bn = 0;
  CHECK(tk_passes_run(m, &o, &g, &gu, &st) == TK_OK);
  if (g) {
    CHECK(st.bn_folded == 0 && st.bn_kept == 4 && g->n_layers == m->n_layers);
    compare_logits("ops: --no-fold-bn copy", m, g, 3, 0, 1);
  }
  /* idempotent: folding the folded model changes nothing */
  tk_model *h = NULL;
  o.fold_bn = 1;
  CHECK(tk_passes_run(f, &o, &h, NULL, &st) == TK_OK);
  if (h) {
    CHECK(st.bn_folded == 0 && h->n_layers == f->n_layers && h->n_tensors == f->n_tensors);
    for (int t = 0; t < f->n_tensors && t < h->n_tensors; t++)
      CHECK_MSG(!memcmp(f->tensors[t].data, h->tensors[t].data, (size_t)f->tensors[t].numel * 4),
                "tensor %s changed on a second run", f->tensors[t].name);
  }
  /* the dump lists the fused relus */
  FILE *tf = tmpfile();
  if (tf) {
    tk_passes_dump(tf, f, fu, &st);
    rewind(tf);
    char buf[8192];
    size_t nr = fread(buf, 1, sizeof buf - 1, tf);
    buf[nr] = 0;
    CHECK(strstr(buf, "+relu") && strstr(buf, "(done by layer 0)"));
    fclose(tf);
  }
  tk_model_free(h);
  tk_model_free(g);
  tk_fusion_free(gu);
  tk_fusion_free(fu);
  tk_model_free(f);
  tk_model_free(m);
}

/* Batchnorms that must not be folded: on the input, and after a conv whose output has a
 * second reader.  A training state is dropped. */
static void test_unfoldable(void) {
  printf("unfoldable batchnorms\n");
  tk_rng r;
  tk_rng_seed(&r, 5);
  tk_model *m = tk_model_new("unfoldable", 4, 2, 6, 6);
  tm_bn(m, &r, "bn0", 0, 2);                                /* 0: on the input -> v1 */
  tm_conv(m, &r, "ca", 1, 2, 4, 3, 3, 1, 1, 1, 1, 1, 0);     /* 1 -> v2 */
  tm_bn(m, &r, "bna", 2, 4);                                /* 2: v2 also read by the add -> v3 */
  tm_op(m, TK_OP_ADD, "add", 3, 2);                          /* 3 -> v4 */
  tm_op(m, TK_OP_RELU, "relu", 4, -1);                       /* 4 -> v5 (fused into the add) */
  tm_op(m, TK_OP_FLATTEN, "flatten", 5, -1);                 /* 5 -> v6 */
  tm_linear(m, &r, "fc", 6, 4 * 36, 4);                      /* 6 -> v7 */
  m->train = tk_calloc(1, sizeof *m->train);
  m->train->epoch = 3;
  CHECK(tk_model_infer(m) == TK_OK);
  tk_model *f = NULL;
  tk_fusion *fu = NULL;
  tk_pass_stats st;
  CHECK(tk_passes_run(m, NULL, &f, &fu, &st) == TK_OK);
  if (f) {
    CHECK_MSG(st.bn_folded == 0 && st.bn_kept == 2 && st.relu_fused == 1, "folded %d kept %d fused %d", st.bn_folded,
              st.bn_kept, st.relu_fused);
    CHECK(f->train == NULL);
    CHECK(fu->relu_epilogue[3] && fu->absorbed[4]);
    compare_logits("unfoldable: logits unchanged", m, f, 2, 0, 1);
  }
  CHECK(tk_value_readers(m, 2) == 2 && tk_value_readers(m, 7) == 1 && tk_value_readers(m, 3) == 1);
  tk_fusion_free(fu);
  tk_model_free(f);
  tk_model_free(m);
}

static void test_zoo(const char *arch, double keep, int n) {
  char what[96];
  snprintf(what, sizeof what, "%s (%.0f%% pruned): folded vs unfolded", arch, 100.0 * (1.0 - keep));
  tk_model *m = zoo_model(arch, 3, keep);
  CHECK_MSG(m != NULL, "%s", arch);
  if (!m) return;
  tk_model *f = NULL;
  tk_pass_stats st;
  CHECK(tk_passes_run(m, NULL, &f, NULL, &st) == TK_OK);
  if (f) {
    printf("%s: %d batchnorm folded, %d kept, %d bias added\n", arch, st.bn_folded, st.bn_kept, st.bias_added);
    CHECK(st.bn_folded + st.bn_kept == count_op(m, TK_OP_BATCHNORM));
    CHECK(st.bn_folded > 0);
    expect_masks_kept(m, f);
    compare_logits(what, m, f, n, TOL, 0);
  }
  tk_model_free(f);
  tk_model_free(m);
}

int main(void) {
  test_ops_model();
  test_unfoldable();
  test_zoo("resnet20", 0.1, 2);
  const char *heavy = getenv("TICKET_HEAVY");
  if (heavy && !strcmp(heavy, "1")) {
    test_zoo("vgg16_bn", 1.0, 2);
    test_zoo("wrn_28_4", 0.1, 1);
    test_zoo("resnet18", 0.5, 2);
  }
  return check_done("test_passes");
}
