/* test_hydra.c -- HYDRA score training (runtime/hydra.h, train.c --prune-scores): the top-k
 * mask against prune.c's layer-wise selection (ties included), the scaled score init against
 * its formula, the model's forms and the straight-through score gradient against direct
 * computations, the optimizer training scores instead of weights, and whole runs: what
 * changes and what must not, and resumption from any step ending bit for bit where an
 * uninterrupted run ends.  (PyTorch comparisons: tests/py/test_hydra_torch.py.) */
#include "check.h"
#include "tiny_cnn.h"

#include "runtime/prune.h"
#include "runtime/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the small model (tiny_cnn.h) with average pooling (max pooling's near-ties would make
 * score gradients fragile), masked at pre_mask when > 0 */
static tk_model *make_model(uint64_t seed, double pre_mask) {
  return tiny_cnn("test_hydra", seed, TK_OP_AVGPOOL, 0, pre_mask);
}

static int mask_at(const tk_tensor *t, int64_t i) { return t->mask ? t->mask[i] != 0 : 1; }

/* ---- 1. the top-k mask equals prune.c's layer-wise selection of |scores| ---------------------- */
static void test_topk_vs_prune(void) {
  const double sps[] = {0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0};
  int compared = 0;
  for (int q = 0; q < 2; q++) /* q = 1: scores on a coarse grid, so that many tie */
    for (size_t k = 0; k < sizeof sps / sizeof *sps; k++) {
      tk_model *m = make_model(3 + k, 0);
      tk_rng r;
      tk_rng_seed(&r, 100 + k);
      float *abs_s[8] = {0};
      for (int t = 0; t < m->n_tensors; t++) {
        tk_tensor *tt = &m->tensors[t];
        if (!tt->prunable) continue;
        tt->scores = malloc((size_t)tt->numel * sizeof(float));
        abs_s[t] = malloc((size_t)tt->numel * sizeof(float));
        for (int64_t i = 0; i < tt->numel; i++) {
          double u = 2 * tk_rng_uniform(&r) - 1;
          tt->scores[i] = (float)(q ? round(u * 4) / 4 : u); /* includes -0 and +0 */
          abs_s[t][i] = fabsf(tt->scores[i]);
        }
      }
      tk_model *want = tk_model_clone(m);
      CHECK_MSG(tk_prune_select(want, abs_s, sps[k], TK_SCOPE_LAYER) == TK_OK, "%s", tk_last_error());
      for (int t = 0; t < m->n_tensors; t++) {
        tk_tensor *tt = &m->tensors[t];
        if (!tt->prunable) continue;
        int64_t n = tt->numel, prune = tk_prune_count(sps[k], n);
        CHECK(prune == (int64_t)floor(sps[k] * (double)n + 1e-6));
        uint8_t *mask = malloc((size_t)n);
        float *work = malloc((size_t)n * sizeof(float));
        CHECK(tk_hydra_topk_mask(tt->scores, n, prune, work, mask) == TK_OK);
        int64_t diff = 0, first = -1, pruned = 0;
        for (int64_t i = 0; i < n; i++) {
          pruned += !mask[i];
          if (mask[i] != mask_at(&want->tensors[t], i)) {
            if (first < 0) first = i;
            diff++;
          }
        }
        CHECK_MSG(diff == 0, "sparsity %g%s %s: %lld positions differ from prune.c (first %lld)", sps[k],
                  q ? " (ties)" : "", tt->name, (long long)diff, (long long)first);
        CHECK(pruned == prune);
        compared++;
        free(mask);
        free(work);
      }
      for (int t = 0; t < 8; t++) free(abs_s[t]);
      tk_model_free(want);
      tk_model_free(m);
    }
  CHECK(compared == 28);
  /* a NaN score is an error, not a silent mask */
  float s[4] = {0.1f, NAN, 0.3f, 0.2f}, w[4];
  uint8_t mk[4];
  CHECK(tk_hydra_topk_mask(s, 4, 2, w, mk) == TK_ERR_ARG);
}

/* ---- 2. the scaled score init -------------------------------------------------------------------- */
static void test_scaled_init(void) {
  tk_model *m = make_model(5, 0);
  memset(m->tensors[TINY_FW].data, 0, (size_t)m->tensors[TINY_FW].numel * sizeof(float)); /* all zero: scores 0 */
  int n = -1;
  CHECK(tk_hydra_scaled_score_init(m, 0, &n) == TK_OK && n == 2);
  const tk_tensor *c = &m->tensors[TINY_CW];
  double mx = 0;
  for (int64_t i = 0; i < c->numel; i++) mx = fmax(mx, fabs(c->data[i]));
  float *want = malloc((size_t)c->numel * sizeof(float));
  for (int64_t i = 0; i < c->numel; i++) want[i] = (float)(sqrt(6.0 / (TINY_IC * 9)) * c->data[i] / mx);
  check_close("scaled init conv.weight", c->scores, want, (size_t)c->numel, 1e-6, 0);
  free(want);
  int zeros = 1;
  for (int64_t i = 0; i < m->tensors[TINY_FW].numel; i++) zeros &= m->tensors[TINY_FW].scores[i] == 0.0f;
  CHECK(zeros);
  CHECK(!m->tensors[TINY_CB].scores && !m->tensors[TINY_G].scores);
  /* only_missing keeps scores that are there */
  m->tensors[TINY_CW].scores[0] = 123.0f;
  free(m->tensors[TINY_FW].scores);
  m->tensors[TINY_FW].scores = NULL;
  CHECK(tk_hydra_scaled_score_init(m, 1, &n) == TK_OK && n == 1);
  CHECK(m->tensors[TINY_CW].scores[0] == 123.0f && m->tensors[TINY_FW].scores);
  tk_model_free(m);
}

/* ---- 3. forms and the straight-through gradient --------------------------------------------------- */
static void test_forms(void) {
  tk_model *m = make_model(7, 0.4); /* masked: pruned weights are 0 and stay 0 */
  tk_model *orig = tk_model_clone(m);
  CHECK(tk_hydra_scaled_score_init(m, 0, NULL) == TK_OK);
  m->tensors[TINY_FW].scores[3] = 0.0f; /* sign(0) = 0 */
  m->tensors[TINY_FW].scores[4] = -m->tensors[TINY_FW].scores[4];
  tk_hydra *h = NULL;
  int cleared = 0;
  CHECK(tk_hydra_create(m, 0.6, &h, &cleared) == TK_OK && cleared == 1);
  if (!h) return;
  int ok_run = 1, ok_ck = 1, ok_pruned = 1, ok_grad = 1;
  float *wg[8] = {0}, *sg[8] = {0};
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    const uint8_t *mk = tk_hydra_mask(h, t);
    int64_t kept = 0;
    for (int64_t i = 0; i < tt->numel; i++) {
      kept += mk[i];
      float want = mk[i] ? orig->tensors[t].data[i] : 0.0f;
      ok_run &= tt->mask == NULL && memcmp(&tt->data[i], &want, sizeof want) == 0;
    }
    CHECK(tt->numel - kept == tk_prune_count(0.6, tt->numel));
    wg[t] = malloc((size_t)tt->numel * sizeof(float));
    sg[t] = malloc((size_t)tt->numel * sizeof(float));
    for (int64_t i = 0; i < tt->numel; i++) wg[t][i] = (float)(0.01 * (double)((i * 7) % 13) - 0.05);
  }
  tk_hydra_score_grads(h, wg, sg);
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    for (int64_t i = 0; i < tt->numel; i++) {
      float s = tt->scores[i], g = wg[t][i] * orig->tensors[t].data[i];
      float want = s > 0 ? g : (s < 0 ? -g : 0.0f);
      ok_grad &= sg[t][i] == want;
    }
    free(wg[t]);
    free(sg[t]);
  }
  tk_hydra_to_checkpoint(h);
  for (int t = 0; t < m->n_tensors; t++)
    ok_ck &= !m->tensors[t].mask &&
             memcmp(m->tensors[t].data, orig->tensors[t].data, (size_t)m->tensors[t].numel * sizeof(float)) == 0;
  CHECK(tk_hydra_to_pruned(h) == TK_OK);
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    for (int64_t i = 0; i < tt->numel; i++)
      ok_pruned &= tt->mask && tt->mask[i] == tk_hydra_mask(h, t)[i] &&
                   (tt->mask[i] ? tt->data[i] == orig->tensors[t].data[i]
                                : (tt->data[i] == 0 && !signbit(tt->data[i])));
  }
  CHECK(fabs(tk_model_sparsity(m) - tk_hydra_achieved(h)) < 1e-12 && fabs(tk_hydra_achieved(h) - 0.6) < 0.02);
  tk_hydra_to_running(h);
  for (int t = 0; t < m->n_tensors; t++) ok_run &= !m->tensors[t].mask;
  CHECK_MSG(ok_run, "running form: data = W_eff, no masks");
  CHECK_MSG(ok_ck, "checkpoint form: data = the original weights, no masks");
  CHECK_MSG(ok_pruned, "pruned form: masks set, kept weights original, pruned +0");
  CHECK_MSG(ok_grad, "score gradient = (g * W) * sign(s)");
  tk_hydra_free(h);
  /* no scores: an error naming the tensor */
  tk_model *bare = make_model(7, 0);
  CHECK(tk_hydra_create(bare, 0.5, &h, NULL) == TK_ERR_ARG && strstr(tk_last_error(), "conv.weight") && !h);
  CHECK(tk_hydra_scaled_score_init(bare, 1, NULL) == TK_OK);
  CHECK(tk_hydra_create(bare, 1.5, &h, NULL) == TK_ERR_ARG && !h);
  tk_model_free(bare);
  tk_model_free(orig);
  tk_model_free(m);
}

/* ---- 4. the optimizer training scores ------------------------------------------------------------- */
static void test_sgd_scores(void) {
  tk_model *m = make_model(9, 0.5);
  CHECK(tk_hydra_scaled_score_init(m, 0, NULL) == TK_OK);
  tk_model *orig = tk_model_clone(m);
  uint8_t target[8] = {0};
  target[TINY_CW] = TK_SGD_SCORES;
  target[TINY_G] = TK_SGD_DATA;
  tk_sgd_opts so = {.lr = 0.1, .momentum = 0.9, .wd = 0.01, .nesterov = 0};
  tk_sgd *s = NULL;
  CHECK(tk_sgd_create_targets(m, &so, target, &s) == TK_OK);
  if (!s) return;
  float *g[8] = {0};
  for (int t = 0; t < m->n_tensors; t++) {
    g[t] = malloc((size_t)m->tensors[t].numel * sizeof(float));
    for (int64_t i = 0; i < m->tensors[t].numel; i++) g[t][i] = (float)(0.1 * sin((double)(i + 3 * t)));
  }
  float *g0 = malloc((size_t)m->tensors[TINY_CW].numel * sizeof(float));
  memcpy(g0, g[TINY_CW], (size_t)m->tensors[TINY_CW].numel * sizeof(float));
  tk_sgd_step(s, g, 0.1);
  /* first step: buf = g + wd s; s -= lr buf, at every position (pruned ones too) */
  const tk_tensor *c = &m->tensors[TINY_CW];
  float *want = malloc((size_t)c->numel * sizeof(float));
  for (int64_t i = 0; i < c->numel; i++) {
    float sc = orig->tensors[TINY_CW].scores[i];
    want[i] = sc - 0.1f * (g0[i] + 0.01f * sc);
  }
  check_close("scores after one step", c->scores, want, (size_t)c->numel, 0, 0);
  CHECK(memcmp(c->data, orig->tensors[TINY_CW].data, (size_t)c->numel * sizeof(float)) == 0);
  CHECK(memcmp(m->tensors[TINY_FW].data, orig->tensors[TINY_FW].data, (size_t)m->tensors[TINY_FW].numel * sizeof(float)) == 0);
  CHECK(memcmp(m->tensors[TINY_FW].scores, orig->tensors[TINY_FW].scores,
               (size_t)m->tensors[TINY_FW].numel * sizeof(float)) == 0);
  CHECK(m->tensors[TINY_G].data[0] != orig->tensors[TINY_G].data[0]);
  CHECK(tk_sgd_check_mask(s) == TK_OK); /* the scores' momentum at pruned positions is fine */
  CHECK(tk_sgd_save(s, m) == TK_OK && m->train->n_momenta == 2);
  tk_sgd *s2 = NULL;
  CHECK(tk_sgd_create_targets(m, &so, target, &s2) == TK_OK && tk_sgd_load(s2, m->train) == TK_OK);
  if (s2) {
    CHECK(memcmp(s2->buf[TINY_CW], s->buf[TINY_CW], (size_t)c->numel * sizeof(float)) == 0);
    tk_sgd_free(s2);
  }
  /* scores to train must be there; data to train must be trainable */
  target[TINY_FB] = TK_SGD_SCORES;
  CHECK(tk_sgd_create_targets(m, &so, target, &s2) == TK_ERR_ARG && !s2);
  target[TINY_FB] = TK_SGD_SKIP;
  target[TINY_RM] = TK_SGD_DATA;
  CHECK(tk_sgd_create_targets(m, &so, target, &s2) == TK_ERR_ARG && !s2);
  for (int t = 0; t < 8; t++) free(g[t]);
  free(g0);
  free(want);
  tk_sgd_free(s);
  tk_model_free(orig);
  tk_model_free(m);
}

/* ---- 5. runs ----------------------------------------------------------------------------------------- */
static void hydra_opts(tk_train_opts *o, tk_train_mode mode, int freeze_bn) {
  tk_train_opts_default(o);
  o->mode = mode;
  o->epochs = 3;
  o->batch = 8;
  o->sgd.lr = 0.2;
  o->sgd.wd = 1e-4;
  o->eps = 0.08;
  o->alpha = 0.03;
  o->steps = 2;
  o->val_alpha = 0.03;
  o->val_steps = 2;
  o->flip = 1;
  o->seed = 4;
  o->prune_scores = 1;
  o->sparsity = 0.8;
  o->freeze_bn = freeze_bn;
}

static tk_status run_on(tk_model *m, const tk_train_opts *o, const tk_dataset *tr, const tk_dataset *va,
                        int max_steps, int resume, tk_run_result *res) {
  tk_engine *e = NULL;
  tk_status st = tk_engine_create(m, TK_ENGINE_REFERENCE, o->batch, &e);
  if (st != TK_OK) return st;
  tk_run_opts r;
  memset(&r, 0, sizeof r);
  r.config = "{\"test\":\"hydra\"}";
  r.max_steps = max_steps;
  r.resume = resume;
  st = tk_train_run(e, tr, va, o, &r, res);
  tk_engine_free(e);
  return st;
}

static int same_model(const tk_model *a, const tk_model *b, const char *what) {
  for (int t = 0; t < a->n_tensors; t++) {
    const tk_tensor *x = &a->tensors[t], *y = &b->tensors[t];
    size_t n = (size_t)x->numel;
    int same = memcmp(x->data, y->data, n * sizeof(float)) == 0 && (!x->mask) == (!y->mask) &&
               (!x->mask || memcmp(x->mask, y->mask, n) == 0) && (!x->scores) == (!y->scores) &&
               (!x->scores || memcmp(x->scores, y->scores, n * sizeof(float)) == 0);
    if (!same) {
      fprintf(stderr, "%s: tensor %s differs\n", what, x->name);
      return 0;
    }
  }
  return 1;
}

static void test_runs(void) {
  tk_dataset *all = tiny_data(44, 8), *tr = NULL, *va = NULL;
  CHECK(tk_dataset_slice(all, 0, 36, &tr) == TK_OK && tk_dataset_slice(all, 36, 8, &va) == TK_OK);
  tk_model *base = make_model(21, 0);
  const tk_train_mode modes[2] = {TK_TRAIN_PGD, TK_TRAIN_TRADES};
  for (int k = 0; k < 2; k++) {
    tk_train_opts o;
    hydra_opts(&o, modes[k], k == 1);
    tk_run_result res;
    tk_model *full = tk_model_clone(base);
    tk_status st = run_on(full, &o, tr, va, 0, 0, &res);
    CHECK_MSG(st == TK_OK, "%s run: %s", tk_train_mode_name(o.mode), tk_last_error());
    free(res.log);
    CHECK(res.scores_init == 2 && !res.interrupted && res.epochs_done == 3);
    /* what changed and what did not */
    for (int t = 0; t < base->n_tensors; t++) {
      const tk_tensor *a = &base->tensors[t], *b = &full->tensors[t];
      size_t bytes = (size_t)a->numel * sizeof(float);
      if (b->prunable) {
        int ok = b->mask != NULL && b->scores != NULL;
        int64_t pruned = 0;
        for (int64_t i = 0; ok && i < b->numel; i++) {
          pruned += !b->mask[i];
          ok &= b->mask[i] ? b->data[i] == a->data[i] : (b->data[i] == 0 && !signbit(b->data[i]));
        }
        CHECK_MSG(ok && pruned == tk_prune_count(0.8, b->numel), "%s: %s is not W with the mask applied",
                  tk_train_mode_name(o.mode), b->name);
      } else if (t == TINY_CB || t == TINY_FB || (o.freeze_bn && (t == TINY_G || t == TINY_B))) {
        CHECK_MSG(memcmp(a->data, b->data, bytes) == 0, "%s: %s changed", tk_train_mode_name(o.mode), b->name);
      } else {
        CHECK_MSG(memcmp(a->data, b->data, bytes) != 0, "%s: %s did not change", tk_train_mode_name(o.mode), b->name);
      }
    }
    CHECK(full->prov.method && strcmp(full->prov.method, "hydra") == 0);
    /* the first mask (scaled init) is layer-wise magnitude pruning; training moved it */
    tk_model *lwm = tk_model_clone(base);
    tk_prune_opts po;
    tk_prune_opts_default(&po);
    po.method = "magnitude";
    po.sparsity = 0.8;
    po.scope = TK_SCOPE_LAYER;
    CHECK(tk_prune(lwm, &po, NULL) == TK_OK);
    int moved = 0;
    for (int64_t i = 0; i < lwm->tensors[TINY_FW].numel; i++)
      moved += mask_at(&lwm->tensors[TINY_FW], i) != mask_at(&full->tensors[TINY_FW], i);
    CHECK_MSG(moved > 0, "%s: the mask never moved from layer-wise magnitude", tk_train_mode_name(o.mode));
    tk_model_free(lwm);
    /* interrupted at any step, resumed (in memory: the model is left as the checkpoint) */
    const int stops[3] = {1, 5, 9};
    for (int si = 0; si < 3; si++) {
      tk_model *part = tk_model_clone(base);
      CHECK(run_on(part, &o, tr, va, stops[si], 0, &res) == TK_OK && res.interrupted);
      free(res.log);
      int ck_ok = 1;
      for (int t = 0; t < part->n_tensors; t++)
        if (part->tensors[t].prunable)
          ck_ok &= !part->tensors[t].mask && memcmp(part->tensors[t].data, base->tensors[t].data,
                                                    (size_t)part->tensors[t].numel * sizeof(float)) == 0;
      CHECK_MSG(ck_ok, "after a stop the model holds the dense weights");
      st = run_on(part, &o, tr, va, 0, 1, &res);
      CHECK_MSG(st == TK_OK && res.resumed_epoch >= 0, "resume: %s", tk_last_error());
      free(res.log);
      char what[64];
      snprintf(what, sizeof what, "%s stopped at %d", tk_train_mode_name(o.mode), stops[si]);
      CHECK(same_model(full, part, what));
      tk_model_free(part);
    }
    /* a plain run on the pruned result (fine-tuning) trains the weights with the mask fixed */
    tk_train_opts plain;
    tk_train_opts_default(&plain);
    plain.batch = 8;
    plain.sgd.lr = 0.05;
    plain.val_steps = 0;
    tk_model *tuned = tk_model_clone(full);
    CHECK_MSG(run_on(tuned, &plain, tr, va, 0, 0, &res) == TK_OK, "fine-tune: %s", tk_last_error());
    free(res.log);
    int ft_ok = 1;
    for (int t = 0; t < full->n_tensors; t++) {
      const tk_tensor *a = &full->tensors[t], *b = &tuned->tensors[t];
      if (!a->prunable) continue;
      ft_ok &= memcmp(a->mask, b->mask, (size_t)a->numel) == 0 &&
               memcmp(a->scores, b->scores, (size_t)a->numel * sizeof(float)) == 0 &&
               memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) != 0;
    }
    CHECK_MSG(ft_ok, "fine-tuning keeps masks and scores and moves the weights");
    tk_model_free(tuned);
    tk_model_free(full);
  }
  /* option checks */
  tk_train_opts o;
  hydra_opts(&o, TK_TRAIN_ST, 0);
  o.sparsity = -1;
  CHECK(tk_train_opts_check(&o) == TK_ERR_ARG && strstr(tk_last_error(), "--sparsity"));
  o.sparsity = 1.01;
  CHECK(tk_train_opts_check(&o) == TK_ERR_ARG && strstr(tk_last_error(), "--sparsity"));
  o.sparsity = NAN;
  CHECK(tk_train_opts_check(&o) == TK_ERR_ARG);
  tk_train_opts_default(&o);
  o.freeze_bn = 1;
  CHECK(tk_train_opts_check(&o) == TK_ERR_ARG && strstr(tk_last_error(), "--prune-scores"));
  tk_model_free(base);
  tk_dataset_free(tr);
  tk_dataset_free(va);
  tiny_data_free(all);
}

int main(void) {
  test_topk_vs_prune();
  test_scaled_init();
  test_forms();
  test_sgd_scores();
  test_runs();
  return check_done("test_hydra");
}
