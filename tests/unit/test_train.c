/* test_train.c -- the trainer: the SGD step against hand-computed values, the mask staying
 * exact through many steps of every recipe (momentum and weight decay included), the robust
 * losses' gradients against finite differences, the schedules at given epochs, augmentation
 * against a direct construction, determinism of whole runs, and resumption from any step
 * giving the same weights bit for bit. */
#include "check.h"
#include "tiny_cnn.h"

#include "runtime/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the small model with everything the trainer touches (tiny_cnn.h): normalised input,
 * max pool, conv and linear weights masked at about 50% */
static tk_model *make_model(uint64_t seed) { return tiny_cnn("test_bn", seed, TK_OP_MAXPOOL, 1, 0.5); }

static tk_engine *engine_for(tk_model *m, int batch) {
  tk_engine *e = NULL;
  if (tk_engine_create(m, TK_ENGINE_REFERENCE, batch, &e) != TK_OK) {
    fprintf(stderr, "reference engine: %s\n", tk_last_error());
    exit(1);
  }
  return e;
}

/* ---- 1. SGD against a hand-computed step -------------------------------------------------- */
static void test_sgd_hand(void) {
  /* w = [1, -2, 0.5, 3], mask = [1, 0, 1, 1], lr 0.1, mu 0.9, wd 0.01
   * step 1, g = [0.1, 0.2, -0.3, 0.4]:
   *   d = g + wd w       = [0.11, (pruned), -0.295, 0.43]
   *   buf = d            = [0.11, 0, -0.295, 0.43]
   *   w -= lr d          = [0.989, 0, 0.5295, 2.957]
   * step 2, g = [-0.2, 5.0, 0.1, 0.0]:
   *   d = g + wd w       = [-0.19011, ., 0.105295, 0.02957]
   *   buf = 0.9 buf + d  = [-0.09111, 0, -0.160205, 0.41657]
   *   w -= lr buf        = [0.998111, 0, 0.5455205, 2.915343]
   * Nesterov, step 1 from the same start: d + mu buf = 1.9 d
   *   w -= lr 1.9 d      = [0.9791, 0, 0.55605, 2.9183]  */
  float w[4] = {1, -2, 0.5f, 3}, g1[4] = {0.1f, 0.2f, -0.3f, 0.4f}, g2[4] = {-0.2f, 5.0f, 0.1f, 0.0f};
  float buf[4] = {0, 0, 0, 0};
  uint8_t mask[4] = {1, 0, 1, 1};
  tk_sgd_update(w, g1, buf, mask, 4, 0.1f, 0.9f, 0.01f, 0);
  const float w1[4] = {0.989f, 0, 0.5295f, 2.957f}, b1[4] = {0.11f, 0, -0.295f, 0.43f};
  check_close("sgd step 1 weights", w, w1, 4, 1e-6, 1e-7);
  check_close("sgd step 1 momentum", buf, b1, 4, 1e-6, 1e-7);
  tk_sgd_update(w, g2, buf, mask, 4, 0.1f, 0.9f, 0.01f, 0);
  const float w2[4] = {0.998111f, 0, 0.5455205f, 2.915343f}, b2[4] = {-0.09111f, 0, -0.160205f, 0.41657f};
  check_close("sgd step 2 weights", w, w2, 4, 1e-6, 1e-7);
  check_close("sgd step 2 momentum", buf, b2, 4, 1e-6, 1e-7);
  CHECK(w[1] == 0.0f && !signbit(w[1]) && buf[1] == 0.0f && g2[1] == 0.0f);

  float wn[4] = {1, -2, 0.5f, 3}, gn[4] = {0.1f, 0.2f, -0.3f, 0.4f}, bn[4] = {0, 0, 0, 0};
  tk_sgd_update(wn, gn, bn, mask, 4, 0.1f, 0.9f, 0.01f, 1);
  const float wn1[4] = {0.9791f, 0, 0.55605f, 2.9183f};
  check_close("sgd nesterov step 1 weights", wn, wn1, 4, 1e-6, 1e-7);

  /* plain SGD without momentum buffers: w -= lr (g + wd w) */
  float wp[2] = {2, -1}, gp[2] = {0.5f, -0.25f};
  tk_sgd_update(wp, gp, NULL, NULL, 2, 0.5f, 0, 0.1f, 0);
  const float wp1[2] = {2 - 0.5f * (0.5f + 0.2f), -1 - 0.5f * (-0.25f - 0.1f)};
  check_close("sgd without momentum", wp, wp1, 2, 1e-6, 0);
}

/* ---- 2. the mask stays exact through many steps of every recipe ------------------------------ */
static int masked_exact(const tk_model *m, const tk_sgd *s, const char *what) {
  int ok = 1;
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (!tt->mask) continue;
    for (int64_t i = 0; i < tt->numel; i++) {
      if (tt->mask[i]) continue;
      if (tt->data[i] != 0.0f || signbit(tt->data[i]) || (s->buf[t] && s->buf[t][i] != 0.0f)) {
        fprintf(stderr, "%s: %s[%lld] pruned but weight %.9g momentum %.9g\n", what, tt->name, (long long)i,
                tt->data[i], s->buf[t] ? s->buf[t][i] : 0.0f);
        check_failures++;
        ok = 0;
        break;
      }
    }
  }
  return ok;
}

static void test_mask_every_mode(void) {
  tk_model *base = make_model(11);
  tk_dataset *d = tiny_data(64, 3);
  const int B = 16, D = TINY_IC * TINY_IH * TINY_IW;
  for (int variant = 0; variant < TK_TRAIN_MODE_COUNT + 1; variant++) {
    tk_train_opts o;
    tk_train_opts_default(&o);
    o.mode = variant < TK_TRAIN_MODE_COUNT ? (tk_train_mode)variant : TK_TRAIN_PGD;
    o.attack_bn = variant < TK_TRAIN_MODE_COUNT ? TK_BN_EVAL : TK_BN_TRAIN; /* the last: pgd with train-mode BN */
    o.batch = B;
    o.sgd.lr = 0.05;
    o.sgd.momentum = 0.9;
    o.sgd.wd = 0.05; /* large, so a leak would show */
    o.sgd.nesterov = variant % 2;
    o.eps = 0.1;
    o.alpha = 0.04;
    o.steps = 3;
    CHECK(tk_train_opts_check(&o) == TK_OK);
    tk_model *m = tk_model_clone(base);
    tk_engine *e = engine_for(m, B);
    tk_trainer *t = NULL;
    tk_status st = tk_trainer_create(e, &o, &t);
    CHECK_MSG(st == TK_OK, "trainer %s: %s", tk_train_mode_name(o.mode), tk_last_error());
    if (st != TK_OK) {
      tk_engine_free(e);
      tk_model_free(m);
      continue;
    }
    tk_rng rng;
    tk_rng_seed(&rng, 5);
    double first = 0, last = 0;
    for (int step = 0; step < 40; step++) {
      int s0 = (step * B) % d->n;
      tk_step_stats ss;
      st = tk_trainer_step(t, d->x + (size_t)s0 * D, d->y + s0, B, NULL, 0.05, &rng, &ss);
      if (st != TK_OK) {
        CHECK_MSG(st == TK_OK, "step %d of %s: %s", step, tk_train_mode_name(o.mode), tk_last_error());
        break;
      }
      CHECK(ss.n == B && ss.correct >= 0 && ss.correct <= B && isfinite(ss.loss));
      if (step < 4) first += ss.loss;
      if (step >= 36) last += ss.loss;
    }
    char what[64];
    snprintf(what, sizeof what, "mode %s%s", tk_train_mode_name(o.mode), variant == TK_TRAIN_MODE_COUNT ? " (bn train)" : "");
    masked_exact(m, tk_trainer_sgd(t), what);
    CHECK_MSG(tk_sgd_check_mask(tk_trainer_sgd(t)) == TK_OK, "%s: %s", what, tk_last_error());
    /* not vacuous: the kept weights moved, the momenta are alive, the loss went down */
    int64_t kept = 0, moved = 0;
    for (int k = 0; k < m->n_tensors; k++) {
      const tk_tensor *a = &m->tensors[k], *b0 = &base->tensors[k];
      if (!a->prunable) continue;
      for (int64_t i = 0; i < a->numel; i++)
        if (a->mask[i]) kept++, moved += a->data[i] != b0->data[i];
    }
    CHECK_MSG(moved > kept * 9 / 10, "%s: only %lld of %lld kept weights changed", what, (long long)moved, (long long)kept);
    CHECK_MSG(last < first, "%s: loss did not decrease (%.4f -> %.4f over 4 steps)", what, first / 4, last / 4);
    /* running statistics moved (BatchNorm in train mode for the training forward) */
    CHECK_MSG(m->tensors[4].data[0] != base->tensors[4].data[0], "%s: running mean unchanged", what);
    if (o.mode != TK_TRAIN_ST) CHECK(tk_trainer_last_adv(t) != NULL);
    tk_trainer_free(t);
    tk_engine_free(e);
    tk_model_free(m);
  }
  /* the epoch check catches a violation */
  {
    tk_model *m = tk_model_clone(base);
    tk_engine *e = engine_for(m, 4);
    tk_train_opts o;
    tk_train_opts_default(&o);
    o.batch = 4;
    tk_trainer *t = NULL;
    CHECK(tk_trainer_create(e, &o, &t) == TK_OK);
    int64_t i = 0;
    while (m->tensors[0].mask[i]) i++;
    m->tensors[0].data[i] = 1e-30f;
    CHECK(tk_sgd_check_mask(tk_trainer_sgd(t)) == TK_ERR_INTERNAL);
    CHECK(strstr(tk_last_error(), "conv.weight") != NULL);
    tk_trainer_free(t);
    tk_engine_free(e);
    tk_model_free(m);
  }
  tk_model_free(base);
  tiny_data_free(d);
}

/* ---- 3. the robust losses against finite differences --------------------------------------- */
static void test_loss_grads(void) {
  enum { N = 3, K = 6 };
  float z[N * K], za[N * K], dz[N * K], dza[N * K], fz[N * K], fza[N * K];
  int y[N] = {0, 3, 5};
  double work[3 * K];
  tk_rng r;
  tk_rng_seed(&r, 9);
  for (int i = 0; i < N * K; i++) z[i] = (float)(3 * tk_rng_uniform(&r) - 1.5), za[i] = z[i] + (float)(tk_rng_uniform(&r) - 0.5);
  for (int which = 0; which < 2; which++) {
    double (*f)(const float *, const float *, const int *, int, int, double, float *, float *, double *) =
        which ? tk_mart_loss : tk_trades_loss;
    const char *name = which ? "mart" : "trades";
    f(z, za, y, N, K, 6.0, dz, dza, work);
    for (int side = 0; side < 2; side++) {
      float *v = side ? za : z, *got = side ? dza : dz, *want = side ? fza : fz;
      for (int i = 0; i < N * K; i++) {
        float keep = v[i];
        float hp = keep + 1e-2f, hm = keep - 1e-2f;
        v[i] = hp;
        double lp = f(z, za, y, N, K, 6.0, dz, dza, work);
        v[i] = hm;
        double lm = f(z, za, y, N, K, 6.0, dz, dza, work);
        v[i] = keep;
        want[i] = (float)((lp - lm) / ((double)hp - (double)hm));
      }
      f(z, za, y, N, K, 6.0, dz, dza, work); /* restore the analytic gradients */
      char what[64];
      snprintf(what, sizeof what, "%s d/d%s vs finite differences", name, side ? "z_adv" : "z");
      check_close(what, got, want, N * K, 2e-3, 2e-4);
    }
  }
  /* TRADES at x_adv = x: the KL term vanishes and the gradient is CE's */
  float ce[N * K];
  memcpy(za, z, sizeof z);
  double l = tk_trades_loss(z, za, y, N, K, 6.0, dz, dza, work);
  double lce = tk_softmax_xent(z, y, N, K, ce, NULL);
  CHECK(fabs(l - lce) < 1e-9);
  check_close("trades at x_adv = x equals CE", dz, ce, N * K, 1e-6, 1e-8);
}

/* ---- 4. schedules ---------------------------------------------------------------------------- */
static void test_schedules(void) {
  tk_lr_schedule s = {.kind = TK_SCHED_STEP, .lr = 0.1, .epochs = 100, .gamma = 0.1};
  tk_lr_default_milestones(&s);
  CHECK(s.n_milestones == 2 && s.milestones[0] == 50 && s.milestones[1] == 75);
  /* torch MultiStepLR([50, 75]): epochs 1..50 at lr, 51..75 at lr/10, 76..100 at lr/100 */
  CHECK(fabs(tk_lr_at(&s, 1, 0, 10) - 0.1) < 1e-15);
  CHECK(fabs(tk_lr_at(&s, 50, 9, 10) - 0.1) < 1e-15);
  CHECK(fabs(tk_lr_at(&s, 51, 0, 10) - 0.01) < 1e-15);
  CHECK(fabs(tk_lr_at(&s, 75, 0, 10) - 0.01) < 1e-15);
  CHECK(fabs(tk_lr_at(&s, 76, 0, 10) - 0.001) < 1e-15);
  CHECK(fabs(tk_lr_at(&s, 100, 0, 10) - 0.001) < 1e-15);
  tk_lr_schedule mart = {.kind = TK_SCHED_STEP, .lr = 0.01, .epochs = 120, .gamma = 0.1, .n_milestones = 3,
                         .milestones = {75, 90, 100}};
  CHECK(fabs(tk_lr_at(&mart, 91, 0, 1) - 1e-4) < 1e-15 && fabs(tk_lr_at(&mart, 101, 0, 1) - 1e-5) < 1e-15);
  tk_lr_schedule two = {.kind = TK_SCHED_STEP, .lr = 1, .epochs = 3, .gamma = 0.1};
  tk_lr_default_milestones(&two); /* 3/2 = 1, 9/4 = 2 */
  CHECK(two.n_milestones == 2 && two.milestones[0] == 1 && two.milestones[1] == 2);
  /* HYDRA cosine: lr * 0.5 * (1 + cos((e-1)/E pi)) */
  tk_lr_schedule c = {.kind = TK_SCHED_COSINE, .lr = 0.1, .epochs = 100};
  CHECK(fabs(tk_lr_at(&c, 1, 5, 10) - 0.1) < 1e-15);
  CHECK(fabs(tk_lr_at(&c, 51, 0, 10) - 0.05) < 1e-15);
  CHECK(fabs(tk_lr_at(&c, 100, 0, 10) - 0.1 * 0.5 * (1 + cos(0.99 * M_PI))) < 1e-15);
  CHECK(fabs(tk_lr_at(&c, 26, 0, 10) - 0.1 * 0.5 * (1 + cos(0.25 * M_PI))) < 1e-15);
  /* fast AT cyclic, 15 epochs, peak 0.2 at epoch 6 (= 2*15//5), t = epoch-1 + (iter+1)/iters */
  tk_lr_schedule y = {.kind = TK_SCHED_CYCLIC, .lr = 0.2, .epochs = 15};
  CHECK(fabs(tk_lr_at(&y, 1, 0, 100) - 0.2 * 0.01 / 6) < 1e-15);
  CHECK(fabs(tk_lr_at(&y, 6, 99, 100) - 0.2) < 1e-15);
  CHECK(fabs(tk_lr_at(&y, 7, 49, 100) - 0.2 * (15 - 6.5) / 9) < 1e-15);
  CHECK(fabs(tk_lr_at(&y, 15, 99, 100)) < 1e-15);
  CHECK(fabs(tk_lr_at(&y, 3, 49, 100) - 0.2 * 2.5 / 6) < 1e-15);
  tk_lr_schedule k = {.kind = TK_SCHED_CONSTANT, .lr = 0.03, .epochs = 5};
  CHECK(tk_lr_at(&k, 1, 0, 3) == 0.03 && tk_lr_at(&k, 5, 2, 3) == 0.03);
}

/* ---- 5. augmentation against a direct construction ------------------------------------------- */
static void test_augment(void) {
  enum { N = 6, C = 3, H = 5, W = 7, P = 2 };
  float x[N * C * H * W], want[N * C * H * W], tmp[C * H * W];
  for (int i = 0; i < N * C * H * W; i++) x[i] = (float)(i + 1);
  tk_rng r1, r2;
  tk_rng_seed(&r1, 4);
  r2 = r1;
  for (int i = 0; i < N; i++) {
    int top = (int)tk_rng_below(&r2, 2 * P + 1), left = (int)tk_rng_below(&r2, 2 * P + 1);
    int flip = tk_rng_uniform(&r2) < 0.5;
    /* pad with zeros, crop at (top, left), then mirror */
    float padded[C][H + 2 * P][W + 2 * P];
    memset(padded, 0, sizeof padded);
    for (int c = 0; c < C; c++)
      for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) padded[c][h + P][w + P] = x[((i * C + c) * H + h) * W + w];
    for (int c = 0; c < C; c++)
      for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) {
          int sw = flip ? W - 1 - w : w;
          want[((i * C + c) * H + h) * W + w] = padded[c][top + h][left + sw];
        }
  }
  tk_augment_batch(x, N, C, H, W, P, 1, &r1, tmp);
  check_close("crop + flip", x, want, N * C * H * W, 0, 0);
  CHECK(memcmp(&r1, &r2, sizeof r1) == 0); /* the same draws in the same order */
}

/* ---- 6. runs: determinism and resumption ----------------------------------------------------- */
static void run_opts(tk_train_opts *o, tk_train_mode mode, uint64_t seed) {
  tk_train_opts_default(o);
  o->mode = mode;
  o->epochs = 3;
  o->batch = 8;
  o->sgd.lr = 0.05;
  o->sgd.wd = 5e-3;
  o->sched.kind = TK_SCHED_COSINE;
  o->eps = 0.08;
  o->alpha = 0.03;
  o->steps = 2;
  o->val_alpha = 0.03;
  o->val_steps = 2;
  o->crop_pad = 1;
  o->flip = 1;
  o->seed = seed;
}

/* trains a clone of base; max_steps > 0 interrupts; returns the trained clone */
static tk_model *run(const tk_model *base, const tk_train_opts *o, const tk_dataset *tr, const tk_dataset *va,
                     int max_steps, int resume, tk_run_result *res) {
  tk_model *m = tk_model_clone(base);
  tk_engine *e = engine_for(m, o->batch);
  tk_run_opts r;
  memset(&r, 0, sizeof r);
  r.config = "{\"test\":\"train\"}";
  r.max_steps = max_steps;
  r.resume = resume;
  tk_status st = tk_train_run(e, tr, va, o, &r, res);
  CHECK_MSG(st == TK_OK, "run: %s", tk_last_error());
  tk_engine_free(e);
  return m;
}

static int same_weights(const tk_model *a, const tk_model *b, const char *what) {
  for (int t = 0; t < a->n_tensors; t++)
    if (memcmp(a->tensors[t].data, b->tensors[t].data, (size_t)a->tensors[t].numel * sizeof(float)) != 0) {
      int64_t i = 0;
      while (a->tensors[t].data[i] == b->tensors[t].data[i]) i++;
      fprintf(stderr, "%s: tensor %s differs first at [%lld]: %.9g vs %.9g\n", what, a->tensors[t].name,
              (long long)i, a->tensors[t].data[i], b->tensors[t].data[i]);
      return 0;
    }
  return 1;
}

static void test_runs(void) {
  tk_model *base = make_model(21);
  tk_dataset *all = tiny_data(50, 8), *tr = NULL, *va = NULL;
  CHECK(tk_dataset_slice(all, 0, 42, &tr) == TK_OK && tk_dataset_slice(all, 42, 8, &va) == TK_OK);
  /* 42 images, batch 8: 5 full batches and a trailing batch of 2 -> 6 steps per epoch */
  for (int mode = 0; mode < TK_TRAIN_MODE_COUNT; mode++) {
    if (mode != TK_TRAIN_PGD && mode != TK_TRAIN_TRADES && mode != TK_TRAIN_ST) continue;
    tk_train_opts o;
    run_opts(&o, (tk_train_mode)mode, 7);
    tk_run_result ra, rb, rc;
    tk_model *a = run(base, &o, tr, va, 0, 0, &ra);
    tk_model *b = run(base, &o, tr, va, 0, 0, &rb);
    char what[96];
    snprintf(what, sizeof what, "%s: two runs with the same seed", tk_train_mode_name(o.mode));
    CHECK_MSG(same_weights(a, b, what), "%s differ", what);
    CHECK(ra.steps == 18 && ra.epochs_done == 3 && !ra.interrupted);
    CHECK(ra.val_sa >= 0 && ra.val_sa <= 1 && ra.val_ra >= 0 && ra.val_ra <= ra.val_sa);
    CHECK(ra.best_sa >= ra.val_sa && ra.best_sa_epoch >= 1 && ra.best_sa_epoch <= 3);
    CHECK(ra.log && strstr(ra.log, "\"epoch\":3") != NULL);
    CHECK(ra.log && rb.log && strcmp(ra.log, rb.log) == 0);
    run_opts(&o, (tk_train_mode)mode, 8);
    tk_model *c = run(base, &o, tr, va, 0, 0, &rc);
    CHECK_MSG(memcmp(a->tensors[0].data, c->tensors[0].data, (size_t)a->tensors[0].numel * sizeof(float)) != 0,
              "%s: another seed gives the same weights", tk_train_mode_name(o.mode));
    free(rb.log);
    free(rc.log);
    tk_model_free(b);
    tk_model_free(c);

    /* interrupted after k steps (mid-epoch, at the end of an epoch, several times) and resumed */
    run_opts(&o, (tk_train_mode)mode, 7);
    const int stops[][3] = {{3, 0, 0}, {6, 0, 0}, {1, 7, 5}, {12, 0, 0}, {17, 0, 0}};
    for (size_t s = 0; s < sizeof stops / sizeof *stops; s++) {
      tk_run_result rr;
      tk_model *cur = tk_model_clone(base);
      int interrupted = 0;
      for (int k = 0; k < 3 && stops[s][k]; k++) {
        tk_model *next = run(cur, &o, tr, va, stops[s][k], 1, &rr);
        interrupted += rr.interrupted;
        free(rr.log);
        tk_model_free(cur);
        cur = next;
        CHECK(tk_train_state_resumable(cur));
      }
      tk_model *fin = run(cur, &o, tr, va, 0, 1, &rr);
      snprintf(what, sizeof what, "%s: resumed after %d,%d,%d steps", tk_train_mode_name(o.mode), stops[s][0],
               stops[s][1], stops[s][2]);
      CHECK_MSG(interrupted >= 1, "%s: never interrupted", what);
      CHECK_MSG(rr.resumed_epoch >= 0 && rr.steps == 18, "%s: resumed_epoch %d steps %lld", what, rr.resumed_epoch,
                (long long)rr.steps);
      CHECK_MSG(same_weights(a, fin, what), "%s: weights differ from the uninterrupted run", what);
      CHECK_MSG(rr.log && ra.log && strcmp(rr.log, ra.log) == 0, "%s: the epoch log differs:\n%s---\n%s", what,
                rr.log ? rr.log : "", ra.log ? ra.log : "");
      free(rr.log);
      tk_model_free(cur);
      tk_model_free(fin);
    }
    /* a checkpoint refuses other settings */
    {
      tk_run_result rr;
      tk_model *half = run(base, &o, tr, va, 4, 1, &rr);
      free(rr.log);
      tk_train_opts o2 = o;
      o2.sgd.lr = 0.04;
      tk_engine *e = engine_for(half, o.batch);
      tk_run_opts r;
      memset(&r, 0, sizeof r);
      r.config = "{\"test\":\"other\"}";
      r.resume = 1;
      CHECK(tk_train_run(e, tr, va, &o2, &r, &rr) == TK_ERR_ARG);
      CHECK(strstr(tk_last_error(), "test: \"train\" vs \"other\"") != NULL);
      tk_engine_free(e);
      tk_model_free(half);
    }
    free(ra.log);
    tk_model_free(a);
  }
  tk_dataset_free(tr);
  tk_dataset_free(va);
  tiny_data_free(all);
  tk_model_free(base);
}

/* every recipe learns the synthetic task (clean and robust validation accuracy) */
static void test_learns(void) {
  tk_model *base = make_model(21);
  tk_dataset *all = tiny_data(50, 8), *tr = NULL, *va = NULL;
  CHECK(tk_dataset_slice(all, 0, 42, &tr) == TK_OK && tk_dataset_slice(all, 42, 8, &va) == TK_OK);
  for (int mode = 0; mode < TK_TRAIN_MODE_COUNT; mode++) {
    tk_train_opts o;
    run_opts(&o, (tk_train_mode)mode, 7);
    o.epochs = 12;
    o.sgd.lr = 0.1;
    o.crop_pad = o.flip = 0;
    tk_run_result r;
    tk_model *m = run(base, &o, tr, va, 0, 0, &r);
    CHECK_MSG(r.val_sa >= 0.75 && r.val_ra >= 0.5 && r.train_acc >= 0.75,
              "%s: did not learn: train acc %.3f, val SA %.3f RA %.3f", tk_train_mode_name(o.mode), r.train_acc,
              r.val_sa, r.val_ra);
    free(r.log);
    tk_model_free(m);
  }
  tk_dataset_free(tr);
  tk_dataset_free(va);
  tiny_data_free(all);
  tk_model_free(base);
}

static void test_config_diff(void) {
  CHECK(tk_config_diff("{\"a\":1,\"b\":\"x,y\"}", "{\"a\":1,\"b\":\"x,y\"}") == NULL);
  char *d = tk_config_diff("{\"a\":1,\"b\":\"x\"}", "{\"a\":1,\"b\":\"z\"}");
  CHECK(d && strcmp(d, "b: \"x\" vs \"z\"") == 0);
  free(d);
  d = tk_config_diff("{\"a\":1}", "{\"a\":1,\"c\":[1,2]}");
  CHECK(d && strncmp(d, "c: (absent)", 11) == 0);
  free(d);
}

int main(void) {
  test_sgd_hand();
  test_loss_grads();
  test_schedules();
  test_augment();
  test_config_diff();
  test_mask_every_mode();
  test_runs();
  test_learns();
  return check_done("test_train");
}
