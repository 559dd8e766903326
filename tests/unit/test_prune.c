/* test_prune.c -- mask finding: exact counts (layer-wise and global), the kept weights being
 * exactly the largest, ties by position, existing masks respected, random pruning, IMP rounds
 * (20% of the remaining, round half to even, ranking by the trained weights, rewinding), the
 * iterative schedule, and errors for bad requests. */
#include "check.h"

#include "runtime/prune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* conv (8, 3, 3, 3) = 216 -> relu -> flatten (8*4*4 = 128) -> linear (10, 128) = 1280; a
 * batchnorm-free model with two prunable tensors of different size and scale. */
static tk_model *make_model(uint64_t seed, double conv_scale) {
  tk_model *m = tk_model_new("test_prune", 10, 3, 6, 6);
  int64_t sc[4] = {8, 3, 3, 3}, sb[1] = {8}, sl[2] = {10, 128}, slb[1] = {10};
  int cw = tk_model_add_tensor(m, "conv.weight", 4, sc), cb = tk_model_add_tensor(m, "conv.bias", 1, sb);
  int lw = tk_model_add_tensor(m, "fc.weight", 2, sl), lb = tk_model_add_tensor(m, "fc.bias", 1, slb);
  m->tensors[cw].prunable = m->tensors[lw].prunable = true;
  tk_layer l = tk_layer_default(TK_OP_CONV2D, "conv", 0);
  l.kh = l.kw = 3, l.weight = cw, l.bias = cb;
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_RELU, "relu", 1);
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_FLATTEN, "flatten", 2);
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_LINEAR, "fc", 3);
  l.weight = lw, l.bias = lb;
  tk_model_add_layer(m, &l);
  tk_rng r;
  tk_rng_seed(&r, seed);
  for (int t = 0; t < m->n_tensors; t++)
    for (int64_t i = 0; i < m->tensors[t].numel; i++)
      m->tensors[t].data[i] = (float)((tk_rng_uniform(&r) - 0.5) * (t == cw ? conv_scale : 1.0));
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "test model: %s\n", tk_last_error());
    exit(1);
  }
  return m;
}

static int64_t pruned_of(const tk_tensor *t) { return t->numel - tk_tensor_nnz(t); }

/* every kept |w| >= every pruned |w| (of `orig`, the weights before pruning), within the group */
static void check_threshold(const tk_model *m, const tk_model *orig, int global, const char *what) {
  double min_kept = INFINITY, max_pruned = -INFINITY;
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *a = &m->tensors[t];
    if (!a->prunable) continue;
    if (!global) min_kept = INFINITY, max_pruned = -INFINITY;
    for (int64_t i = 0; i < a->numel; i++) {
      double v = fabs(orig->tensors[t].data[i]);
      int kept = !a->mask || a->mask[i];
      if (kept) min_kept = fmin(min_kept, v);
      else max_pruned = fmax(max_pruned, v);
      /* pruned data is exactly zero, kept data untouched */
      if (!kept) CHECK_MSG(a->data[i] == 0.0f, "%s: %s[%lld] pruned but %g", what, a->name, (long long)i, a->data[i]);
      else CHECK_MSG(a->data[i] == orig->tensors[t].data[i], "%s: %s[%lld] kept but changed", what, a->name, (long long)i);
    }
    if (!global) CHECK_MSG(min_kept >= max_pruned, "%s: %s keeps |w| %.6g below a pruned %.6g", what, a->name, min_kept, max_pruned);
  }
  if (global) CHECK_MSG(min_kept >= max_pruned, "%s: keeps |w| %.6g below a pruned %.6g", what, min_kept, max_pruned);
}

static tk_status prune(tk_model *m, const char *method, double s, tk_prune_scope scope, tk_prune_report *rep) {
  tk_prune_opts o;
  tk_prune_opts_default(&o);
  o.method = method;
  o.sparsity = s;
  o.scope = scope;
  return tk_prune(m, &o, rep);
}

static void test_magnitude(void) {
  tk_model *orig = make_model(1, 8.0); /* conv weights 8x larger: global and layer-wise differ */
  /* layer-wise: floor(S * numel) in every tensor (HYDRA's int((1-k) numel)) */
  const double ss[] = {0.0, 0.1, 0.5, 0.9, 0.99, 1.0};
  for (size_t k = 0; k < sizeof ss / sizeof *ss; k++) {
    tk_model *m = tk_model_clone(orig);
    tk_prune_report rep;
    CHECK_MSG(prune(m, "magnitude", ss[k], TK_SCOPE_LAYER, &rep) == TK_OK, "%s", tk_last_error());
    CHECK(pruned_of(&m->tensors[0]) == (int64_t)floor(ss[k] * 216 + 1e-6));
    CHECK(pruned_of(&m->tensors[2]) == (int64_t)floor(ss[k] * 1280 + 1e-6));
    CHECK(pruned_of(&m->tensors[1]) == 0 && !m->tensors[1].mask && !m->tensors[3].mask);
    char what[64];
    snprintf(what, sizeof what, "magnitude layer %.2f", ss[k]);
    check_threshold(m, orig, 0, what);
    CHECK(rep.n == 2 && rep.total == 1496 && rep.kept_before == 1496);
    CHECK(rep.kept_after == 1496 - pruned_of(&m->tensors[0]) - pruned_of(&m->tensors[2]));
    CHECK(m->prov.method && strcmp(m->prov.method, "magnitude") == 0);
    CHECK(fabs(m->prov.sparsity - tk_model_sparsity(m)) < 1e-12);
    CHECK(m->prov.notes && strstr(m->prov.notes, "scope=layer"));
    free(rep.tensors);
    tk_model_free(m);
  }
  /* global: floor(S * N) over both; the large conv weights survive more */
  for (size_t k = 0; k < sizeof ss / sizeof *ss; k++) {
    tk_model *m = tk_model_clone(orig);
    CHECK_MSG(prune(m, "magnitude", ss[k], TK_SCOPE_GLOBAL, NULL) == TK_OK, "%s", tk_last_error());
    CHECK(pruned_of(&m->tensors[0]) + pruned_of(&m->tensors[2]) == (int64_t)floor(ss[k] * 1496 + 1e-6));
    char what[64];
    snprintf(what, sizeof what, "magnitude global %.2f", ss[k]);
    check_threshold(m, orig, 1, what);
    if (ss[k] == 0.5) CHECK(pruned_of(&m->tensors[0]) < 216 / 10 && pruned_of(&m->tensors[2]) > 1280 / 2);
    tk_model_free(m);
  }
  /* pruning more of a pruned model keeps the old mask; asking for less is an error */
  {
    tk_model *m = tk_model_clone(orig);
    CHECK(prune(m, "random", 0.5, TK_SCOPE_GLOBAL, NULL) == TK_OK);
    tk_model *before = tk_model_clone(m);
    CHECK(prune(m, "magnitude", 0.8, TK_SCOPE_GLOBAL, NULL) == TK_OK);
    for (int t = 0; t < m->n_tensors; t++)
      if (m->tensors[t].prunable)
        for (int64_t i = 0; i < m->tensors[t].numel; i++)
          if (!before->tensors[t].mask[i]) CHECK(!m->tensors[t].mask[i]);
    CHECK(pruned_of(&m->tensors[0]) + pruned_of(&m->tensors[2]) == (int64_t)floor(0.8 * 1496 + 1e-6));
    CHECK(prune(m, "magnitude", 0.7, TK_SCOPE_GLOBAL, NULL) == TK_ERR_ARG);
    CHECK(strstr(tk_last_error(), "already") != NULL);
    tk_model_free(before);
    tk_model_free(m);
  }
  /* ties go by position: equal magnitudes prune the lowest indices first */
  {
    tk_model *m = tk_model_clone(orig);
    for (int64_t i = 0; i < 216; i++) m->tensors[0].data[i] = (i % 2 ? 1.0f : -1.0f);
    CHECK(prune(m, "magnitude", 0.25, TK_SCOPE_LAYER, NULL) == TK_OK);
    for (int64_t i = 0; i < 216; i++) CHECK(m->tensors[0].mask[i] == (i >= 54));
    tk_model_free(m);
  }
  tk_model_free(orig);
}

static void test_random(void) {
  tk_model *orig = make_model(2, 1.0);
  tk_prune_opts o;
  tk_prune_opts_default(&o);
  o.method = "random";
  o.sparsity = 0.7;
  o.seed = 5;
  tk_model *a = tk_model_clone(orig), *b = tk_model_clone(orig), *c = tk_model_clone(orig);
  CHECK(tk_prune(a, &o, NULL) == TK_OK && tk_prune(b, &o, NULL) == TK_OK);
  o.seed = 6;
  CHECK(tk_prune(c, &o, NULL) == TK_OK);
  CHECK(pruned_of(&a->tensors[0]) + pruned_of(&a->tensors[2]) == 1047);
  CHECK(memcmp(a->tensors[2].mask, b->tensors[2].mask, 1280) == 0);
  CHECK(memcmp(a->tensors[2].mask, c->tensors[2].mask, 1280) != 0);
  /* global random prunes each tensor at about the same rate (binomial: 216 draws, sd ~ 0.03) */
  double s0 = pruned_of(&a->tensors[0]) / 216.0, s2 = pruned_of(&a->tensors[2]) / 1280.0;
  CHECK_MSG(fabs(s0 - 0.7) < 0.12 && fabs(s2 - 0.7) < 0.05, "random global: per-tensor sparsity %.3f %.3f", s0, s2);
  /* not magnitude: some pruned weights are larger than some kept ones */
  double min_kept = INFINITY, max_pruned = 0;
  for (int64_t i = 0; i < 1280; i++) {
    double v = fabs(orig->tensors[2].data[i]);
    if (a->tensors[2].mask[i]) min_kept = fmin(min_kept, v);
    else max_pruned = fmax(max_pruned, v);
  }
  CHECK(max_pruned > min_kept);
  tk_model_free(a);
  tk_model_free(b);
  tk_model_free(c);
  tk_model_free(orig);
}

static void test_imp(void) {
  CHECK(tk_round_half_even(0.5) == 0 && tk_round_half_even(1.5) == 2 && tk_round_half_even(2.5) == 2 &&
        tk_round_half_even(2.4) == 2 && tk_round_half_even(2.6) == 3 && tk_round_half_even(299.2) == 299);
  tk_model *init = make_model(3, 1.0);    /* the checkpoint to rewind to */
  tk_model *trained = make_model(4, 1.0); /* "trained" weights: an unrelated ranking */
  tk_prune_opts o;
  tk_prune_opts_default(&o);
  o.method = "imp";
  o.rewind = init;
  /* rounds: each prunes round(0.2 * kept) more, globally; density 0.8^n up to rounding */
  int64_t kept = 1496;
  tk_model *m = tk_model_clone(trained);
  for (int round = 1; round <= 6; round++) {
    tk_model *ranked = tk_model_clone(m); /* the weights the round ranks */
    tk_prune_report rep;
    CHECK_MSG(tk_prune(m, &o, &rep) == TK_OK, "imp round %d: %s", round, tk_last_error());
    int64_t want = kept - tk_round_half_even(0.2 * (double)kept);
    CHECK_MSG(rep.kept_after == want && rep.kept_before == kept, "imp round %d: kept %lld, expected %lld", round,
              (long long)rep.kept_after, (long long)want);
    kept = want;
    /* the mask ranks the weights of this round's model; the values are the rewind point's */
    double min_kept = INFINITY, max_new_pruned = 0;
    for (int t = 0; t < m->n_tensors; t++) {
      const tk_tensor *a = &m->tensors[t];
      for (int64_t i = 0; i < a->numel; i++) {
        int k = !a->mask || a->mask[i];
        CHECK(a->data[i] == (k ? init->tensors[t].data[i] : 0.0f));
        if (!a->prunable) continue;
        int was = !ranked->tensors[t].mask || ranked->tensors[t].mask[i];
        if (k) min_kept = fmin(min_kept, fabs(ranked->tensors[t].data[i]));
        else if (was) max_new_pruned = fmax(max_new_pruned, fabs(ranked->tensors[t].data[i]));
        if (!was) CHECK(!k); /* once pruned, always pruned */
      }
    }
    CHECK_MSG(min_kept >= max_new_pruned, "imp round %d: ranked by the wrong weights", round);
    CHECK(strcmp(m->prov.method, "imp") == 0 && strstr(m->prov.notes, "rewound"));
    free(rep.tensors);
    tk_model_free(ranked);
    /* "train" again: new values for the kept weights, so the next round ranks fresh ones */
    tk_rng r;
    tk_rng_seed(&r, 100 + round);
    for (int t = 0; t < m->n_tensors; t++)
      for (int64_t i = 0; i < m->tensors[t].numel; i++) m->tensors[t].data[i] += (float)(tk_rng_uniform(&r) - 0.5);
    for (int t = 0; t < m->n_tensors; t++) tk_tensor_apply_mask(&m->tensors[t]);
  }
  /* 1496 -> 1197 -> 958 -> 766 -> 613 -> 490 -> 392 (0.8^6 = 0.262) */
  CHECK(kept == 392);
  tk_model_free(m);
  /* an explicit sparsity prunes to it in one round */
  m = tk_model_clone(trained);
  o.sparsity = 0.9;
  CHECK(tk_prune(m, &o, NULL) == TK_OK);
  CHECK(pruned_of(&m->tensors[0]) + pruned_of(&m->tensors[2]) == 1346);
  tk_model_free(m);
  /* layer scope: 20% of each tensor */
  m = tk_model_clone(trained);
  o.sparsity = -1;
  o.scope = TK_SCOPE_LAYER;
  CHECK(tk_prune(m, &o, NULL) == TK_OK);
  CHECK(pruned_of(&m->tensors[0]) == 43 && pruned_of(&m->tensors[2]) == 256);
  tk_model_free(m);
  /* imp without a rewind point, or with another architecture */
  m = tk_model_clone(trained);
  o.rewind = NULL;
  CHECK(tk_prune(m, &o, NULL) == TK_ERR_ARG && strstr(tk_last_error(), "--rewind"));
  tk_model *other = tk_model_new("other", 10, 3, 6, 6);
  int64_t s1[1] = {5};
  tk_model_add_tensor(other, "x", 1, s1);
  o.rewind = other;
  CHECK(tk_prune(m, &o, NULL) == TK_ERR_SHAPE && strstr(tk_last_error(), "--rewind"));
  tk_model_free(other);
  tk_model_free(m);
  tk_model_free(init);
  tk_model_free(trained);
}

static void test_iterative_and_errors(void) {
  tk_model *orig = make_model(5, 1.0);
  tk_prune_opts o;
  tk_prune_opts_default(&o);
  o.method = "magnitude";
  o.sparsity = 0.95;
  o.iterations = 4; /* rounds at density 0.05^(1/4), ^(2/4), ^(3/4), then the target */
  tk_model *m = tk_model_clone(orig);
  CHECK(tk_prune(m, &o, NULL) == TK_OK);
  CHECK(pruned_of(&m->tensors[0]) + pruned_of(&m->tensors[2]) == (int64_t)floor(0.95 * 1496 + 1e-6));
  check_threshold(m, orig, 1, "iterative magnitude"); /* magnitude is unchanged by rounds */
  CHECK(strstr(m->prov.notes, "iterations=4") != NULL);
  tk_model_free(m);
  m = tk_model_clone(orig);
  o.iterations = 0;
  o.method = "synflow-typo";
  CHECK(tk_prune(m, &o, NULL) == TK_ERR_ARG && strstr(tk_last_error(), "magnitude, random, synflow, snip, imp"));
  o.method = "magnitude";
  o.sparsity = 1.5;
  CHECK(tk_prune(m, &o, NULL) == TK_ERR_ARG && strstr(tk_last_error(), "--sparsity"));
  o.sparsity = -1;
  CHECK(tk_prune(m, &o, NULL) == TK_ERR_ARG && strstr(tk_last_error(), "--sparsity"));
  for (int t = 0; t < m->n_tensors; t++) m->tensors[t].prunable = false;
  o.sparsity = 0.5;
  CHECK(tk_prune(m, &o, NULL) == TK_ERR_ARG && strstr(tk_last_error(), "no prunable tensors"));
  tk_model_free(m);
  /* every prunable tensor gone: a fully pruned model is allowed */
  m = tk_model_clone(orig);
  o.sparsity = 1.0;
  CHECK(tk_prune(m, &o, NULL) == TK_OK && tk_model_sparsity(m) == 1.0);
  tk_model_free(m);
  tk_model_free(orig);
}

/* a large model with many equal scores: selection stays exact and fast */
static void test_many_ties(void) {
  tk_model *m = tk_model_new("big", 10, 1, 1, 1);
  int64_t s[2] = {2000, 1000}, sb[1] = {10}, s2[2] = {10, 2000};
  int w = tk_model_add_tensor(m, "a.weight", 2, s), w2 = tk_model_add_tensor(m, "b.weight", 2, s2);
  (void)sb;
  m->tensors[w].prunable = m->tensors[w2].prunable = true;
  for (int64_t i = 0; i < m->tensors[w].numel; i++) m->tensors[w].data[i] = (float)(i % 7);
  for (int64_t i = 0; i < m->tensors[w2].numel; i++) m->tensors[w2].data[i] = (float)(i % 3);
  float *sc[2] = {m->tensors[w].data, m->tensors[w2].data};
  /* 2,020,000 weights, values 0..6: prune floor(0.6 N) = 1,212,000 */
  CHECK(tk_prune_select(m, sc, 0.6, TK_SCOPE_GLOBAL) == TK_OK);
  int64_t pruned = pruned_of(&m->tensors[w]) + pruned_of(&m->tensors[w2]);
  CHECK_MSG(pruned == 1212000, "pruned %lld", (long long)pruned);
  tk_model_free(m);
}

int main(void) {
  test_magnitude();
  test_random();
  test_imp();
  test_iterative_and_errors();
  test_many_ties();
  return check_done("test_prune");
}
