/* test_attack.c -- PGD / FGSM / TRADES-KL attacks (runtime/attack.c) on a small fixed model
 * (conv 3x3 -> BatchNorm -> ReLU -> maxpool -> linear, 1x8x8 input) built with the
 * compiler/model.h construction API, run by the reference engine.
 *
 * Data: 96 uniform random images; labels are the model's own predictions, with every fifth
 * changed to another class, so SA is 80% and examples have a range of margins.
 *
 * What is checked (attack.h explains why each holds by construction with worst-case tracking):
 *   - eps = 0: x_adv == x and RA == SA exactly;
 *   - RA <= SA for every setting, in BatchNorm eval and train mode;
 *   - steps 0, 1, 2, 5, 10, 20 (same seed): the set of fooled examples only grows;
 *   - restarts 1, 2, 4: the set of fooled examples only grows;
 *   - eps 0 < 0.03 < 0.1 < 0.3 < 1 (alpha = eps/4, 10 steps): RA non-increasing.  Not
 *     guaranteed by construction for PGD, but on a grid this coarse a violation means a bug;
 *   - x_adv is within eps of x (L-inf) and inside [lo, hi], also for a model with range [0.2, 0.8];
 *   - FGSM equals x + eps*sign(dCE/dx) clamped, computed here from the engine's forward and
 *     backward, except at pixels whose gradient is ~0 (sign ambiguity, reported);
 *   - 3-step PGD from a given start (final iterate) equals an independent loop written here,
 *     and so does one TRADES-KL step from a given start;
 *   - a train-mode attack restores the running statistics bitwise (and keeps them changed
 *     with update_bn_stats), and differs from the eval-mode attack;
 *   - bad arguments are clean errors;
 *   - the parallel attack (compiled engine, 2 and 3 threads, chunks of 8 and 40) gives the
 *     serial attack's x_adv and fooled flags bit for bit -- tracking with restarts, the final
 *     iterate with a given start, TRADES-KL -- and its replicas follow the engine's syncs
 *     (new weights, a new mask).  Skipped, saying so, without the JIT. */
#include "check.h"

#include "compiler/compile.h"
#include "compiler/jit.h"
#include "compiler/toolchain.h"
#include "runtime/attack.h"
#include "runtime/exec.h"

#include <math.h>
#include <string.h>

#define N 96
#define C 1
#define H 8
#define W 8
#define D (C * H * W)
#define K 10

static tk_model *build_model(float lo, float hi, uint64_t seed) {
  tk_model *m = tk_model_new("tiny-attack", K, C, H, W);
  int w1 = tk_model_add_tensor(m, "conv1.weight", 4, (int64_t[]){4, C, 3, 3});
  int b1 = tk_model_add_tensor(m, "conv1.bias", 1, (int64_t[]){4});
  int g = tk_model_add_tensor(m, "bn1.weight", 1, (int64_t[]){4});
  int be = tk_model_add_tensor(m, "bn1.bias", 1, (int64_t[]){4});
  int rm = tk_model_add_tensor(m, "bn1.running_mean", 1, (int64_t[]){4});
  int rv = tk_model_add_tensor(m, "bn1.running_var", 1, (int64_t[]){4});
  int w2 = tk_model_add_tensor(m, "fc.weight", 2, (int64_t[]){K, 4 * (H / 2) * (W / 2)});
  int b2 = tk_model_add_tensor(m, "fc.bias", 1, (int64_t[]){K});
  m->tensors[rm].trainable = m->tensors[rv].trainable = false;
  m->lo = lo;
  m->hi = hi;
  tk_rng r;
  tk_rng_seed(&r, seed);
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    for (int64_t k = 0; k < tt->numel; k++) {
      double v = tk_rng_normal(&r);
      tt->data[k] = t == w1 ? (float)(0.6 * v)
                    : t == w2 ? (float)(0.4 * v)
                    : t == g  ? (float)(1.0 + 0.1 * v)
                    : t == rv ? (float)(0.05 + 0.02 * fabs(v))
                    : t == rm ? (float)(0.1 * v)
                              : (float)(0.1 * v);
    }
  }
  tk_layer l = tk_layer_default(TK_OP_CONV2D, "conv1", 0);
  l.kh = l.kw = 3;
  l.ph = l.pw = 1;
  l.weight = w1;
  l.bias = b1;
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_BATCHNORM, "bn1", 1);
  l.weight = g, l.bias = be, l.mean = rm, l.var = rv;
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_RELU, "relu1", 2);
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_MAXPOOL, "pool1", 3);
  l.kh = l.kw = l.sh = l.sw = 2;
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_FLATTEN, "flatten", 4);
  tk_model_add_layer(m, &l);
  l = tk_layer_default(TK_OP_LINEAR, "fc", 5);
  l.weight = w2;
  l.bias = b2;
  tk_model_add_layer(m, &l);
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "model: %s\n", tk_last_error());
    exit(1);
  }
  return m;
}

static int argmax(const float *z) {
  int a = 0;
  for (int k = 1; k < K; k++)
    if (z[k] > z[a]) a = k;
  return a;
}

static tk_engine *g_e;
static float g_x[N * D], g_xr[N * D]; /* data in [0, 1]; data in [0.2, 0.8] for the narrow model */
static int g_y[N], g_yr[N];
static float g_logits[N * K];

/* labels: the model's prediction, every fifth shifted by one class */
static int make_labels(tk_engine *e, const float *x, int *y) {
  if (tk_infer(e, x, N, g_logits) != TK_OK) {
    fprintf(stderr, "infer: %s\n", tk_last_error());
    exit(1);
  }
  int correct = 0;
  for (int i = 0; i < N; i++) {
    y[i] = argmax(g_logits + i * K);
    if (i % 5 == 4) y[i] = (y[i] + 1) % K;
    correct += argmax(g_logits + i * K) == y[i];
  }
  return correct;
}

static int clean_correct(tk_engine *e, const float *x, const int *y) {
  tk_infer(e, x, N, g_logits);
  int c = 0;
  for (int i = 0; i < N; i++) c += argmax(g_logits + i * K) == y[i];
  return c;
}

typedef struct {
  int ra;           /* examples not fooled */
  int fooled[N];
  float x_adv[N * D];
} result;

static result g_res[8];

static void attack(tk_engine *e, const tk_attack_opts *o, const float *x, const int *y, uint64_t seed, result *r) {
  tk_attacker *a = NULL;
  tk_status st = tk_attacker_create(e, o, &a);
  tk_rng rng;
  tk_rng_seed(&rng, seed);
  if (st == TK_OK) st = tk_attacker_run(a, x, y, N, &rng, r->x_adv, r->fooled);
  if (st != TK_OK) {
    fprintf(stderr, "attack: %s\n", tk_last_error());
    exit(1);
  }
  tk_attacker_free(a);
  r->ra = 0;
  for (int i = 0; i < N; i++) r->ra += !r->fooled[i];
}

/* x_adv inside the eps-ball around x and inside [lo, hi]; the verdicts agree with an eval forward */
static void check_box(const char *what, tk_engine *e, const float *x, const int *y, const result *r, double eps,
                      int check_verdicts) {
  const float lo = e->m->lo, hi = e->m->hi;
  double worst = 0;
  size_t wi = 0;
  int out = 0;
  for (size_t k = 0; k < (size_t)N * D; k++) {
    double d = fabs((double)r->x_adv[k] - x[k]);
    if (d > worst) worst = d, wi = k;
    out += !(r->x_adv[k] >= lo && r->x_adv[k] <= hi);
  }
  CHECK_MSG(worst <= eps + 1e-6, "%s: |x_adv - x| reaches %.9g at [%zu] (eps %.9g)", what, worst, wi, eps);
  CHECK_MSG(out == 0, "%s: %d values outside [%g, %g]", what, out, lo, hi);
  if (check_verdicts) {
    tk_infer(e, r->x_adv, N, g_logits);
    int disagree = 0, first = -1;
    for (int i = 0; i < N; i++)
      if ((argmax(g_logits + i * K) != y[i]) != r->fooled[i]) disagree++, first = first < 0 ? i : first;
    CHECK_MSG(disagree == 0, "%s: %d verdicts disagree with an eval forward of x_adv (first: example %d)", what, disagree,
              first);
  }
}

static void check_subset(const char *what, const result *a, const result *b) {
  for (int i = 0; i < N; i++)
    if (a->fooled[i] && !b->fooled[i]) {
      CHECK_MSG(0, "%s: example %d fooled by the weaker attack but not by the stronger one", what, i);
      return;
    }
}

/* ---- independent references ---------------------------------------------------------------- */

static float g_grad[N * D], g_dl[N * K], g_ref[N * D], g_delta[N * D], g_xin[N * D];

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* dCE/dx (mean over N) at xin, from the engine; tk_softmax_xent gives dlogits */
static void ce_grad(tk_engine *e, const float *xin, const int *y, float *grad) {
  tk_engine_forward(e, xin, N, TK_BN_EVAL, g_logits);
  tk_softmax_xent(g_logits, y, N, K, g_dl, NULL);
  tk_engine_backward(e, g_dl, grad, 0);
}

/* Compares attack output with a reference, allowing differences only where |grad| was tiny
 * (<= 1e-5 of the batch's largest).  Such differences come from confidently classified
 * examples: the attack rounds the softmax to float32 as PyTorch does (p_y can become exactly
 * 1, dropping the label's term), the reference's tk_softmax_xent works in double, so the
 * signs of those examples' ~1e-8 gradients can differ.  At most 1% of the values may. */
static void compare_adv(const char *what, const float *got, const float *want, const float *tiny_mask) {
  int amb = 0, bad = 0;
  size_t first = 0;
  int ex[N] = {0};
  for (size_t k = 0; k < (size_t)N * D; k++) {
    if (got[k] == want[k]) continue;
    if (tiny_mask[k] != 0) amb++, ex[k / D]++;
    else if (!bad++) first = k;
  }
  CHECK_MSG(bad == 0, "%s: %d of %d values differ, first [%zu]: got %.9g expected %.9g", what, bad, N * D, first,
            got[first], want[first]);
  CHECK_MSG(amb <= N * D / 100, "%s: %d values differ at near-zero gradients (more than 1%%)", what, amb);
  printf("  %s: matches the independent reference (%d values at near-zero gradients differ)\n", what, amb);
  for (int i = 0; i < N; i++)
    if (ex[i]) printf("    of which example %d: %d\n", i, ex[i]);
}

static float g_tiny[N * D];

static void mark_tiny(const float *grad) {
  float mx = 0;
  for (size_t k = 0; k < (size_t)N * D; k++) mx = fmaxf(mx, fabsf(grad[k]));
  for (size_t k = 0; k < (size_t)N * D; k++) g_tiny[k] = fabsf(grad[k]) <= 1e-5f * mx ? 1.0f : g_tiny[k];
}

static void test_fgsm(tk_engine *e) {
  const double eps = 0.1;
  const float lo = e->m->lo, hi = e->m->hi;
  memset(g_tiny, 0, sizeof g_tiny);
  ce_grad(e, g_x, g_y, g_grad);
  mark_tiny(g_grad);
  for (size_t k = 0; k < (size_t)N * D; k++) {
    float s = g_grad[k] > 0 ? 1.0f : g_grad[k] < 0 ? -1.0f : 0.0f;
    g_ref[k] = clampf(g_x[k] + (clampf(g_x[k] + (float)eps * s, lo, hi) - g_x[k]), lo, hi);
  }
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  o.eps = o.alpha = eps;
  o.steps = 1;
  o.start = TK_START_ZERO;
  o.final_iterate = 1;
  attack(e, &o, g_x, g_y, 1, &g_res[0]);
  compare_adv("FGSM (last iterate)", g_res[0].x_adv, g_ref, g_tiny);
  check_box("FGSM", e, g_x, g_y, &g_res[0], eps, 1);
  /* with tracking: clean-misclassified examples keep x, the others get the FGSM point */
  o.final_iterate = 0;
  attack(e, &o, g_x, g_y, 1, &g_res[1]);
  tk_infer(e, g_x, N, g_logits);
  for (int i = 0; i < N; i++)
    if (argmax(g_logits + i * K) != g_y[i]) memcpy(g_ref + i * D, g_x + i * D, D * sizeof(float));
  compare_adv("FGSM (tracking)", g_res[1].x_adv, g_ref, g_tiny);
  CHECK(g_res[1].ra <= g_res[0].ra);
}

/* advertorch's loop, written out: delta += alpha sign(g); clamp to eps; clamp x + delta */
static void test_pgd_reference(tk_engine *e) {
  const float eps = 0.08f, alpha = 0.03f, lo = e->m->lo, hi = e->m->hi;
  const int steps = 3;
  tk_rng r;
  tk_rng_seed(&r, 99);
  static float delta0[N * D];
  for (size_t k = 0; k < (size_t)N * D; k++) delta0[k] = (float)(2 * tk_rng_uniform(&r) - 1) * eps;
  memset(g_tiny, 0, sizeof g_tiny);
  for (size_t k = 0; k < (size_t)N * D; k++) g_delta[k] = clampf(g_x[k] + delta0[k], lo, hi) - g_x[k];
  for (int t = 0; t < steps; t++) {
    for (size_t k = 0; k < (size_t)N * D; k++) g_xin[k] = clampf(g_x[k] + g_delta[k], lo, hi);
    ce_grad(e, g_xin, g_y, g_grad);
    mark_tiny(g_grad);
    for (size_t k = 0; k < (size_t)N * D; k++) {
      float s = g_grad[k] > 0 ? 1.0f : g_grad[k] < 0 ? -1.0f : 0.0f;
      float d = fminf(fmaxf(g_delta[k] + alpha * s, -eps), eps);
      g_delta[k] = clampf(g_x[k] + d, lo, hi) - g_x[k];
    }
  }
  for (size_t k = 0; k < (size_t)N * D; k++) g_ref[k] = clampf(g_x[k] + g_delta[k], lo, hi);
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  o.eps = eps;
  o.alpha = alpha;
  o.steps = steps;
  o.final_iterate = 1;
  tk_attacker *a = NULL;
  CHECK(tk_attacker_create(e, &o, &a) == TK_OK);
  tk_status st = tk_attacker_run_from(a, g_x, g_y, N, delta0, NULL, g_res[2].x_adv, NULL);
  CHECK_MSG(st == TK_OK, "run_from: %s", tk_last_error());
  tk_attacker_free(a);
  compare_adv("PGD-3 from a given start", g_res[2].x_adv, g_ref, g_tiny);
}

/* one TRADES step: grad of sum_i KL(p_clean || softmax(f(x_adv))) is q * sum(p) - p per row */
static void test_kl_reference(tk_engine *e) {
  const float eps = 0.1f, alpha = 0.04f, lo = e->m->lo, hi = e->m->hi;
  static float p[N * K], delta0[N * D];
  tk_rng r;
  tk_rng_seed(&r, 5);
  for (size_t k = 0; k < (size_t)N * D; k++) delta0[k] = 0.001f * (float)tk_rng_normal(&r);
  tk_infer(e, g_x, N, g_logits);
  for (int i = 0; i < N; i++) {
    double mx = g_logits[i * K], s = 0;
    for (int k = 1; k < K; k++) mx = fmax(mx, g_logits[i * K + k]);
    for (int k = 0; k < K; k++) s += exp(g_logits[i * K + k] - mx);
    for (int k = 0; k < K; k++) p[i * K + k] = (float)(exp(g_logits[i * K + k] - mx) / s);
  }
  for (size_t k = 0; k < (size_t)N * D; k++) g_xin[k] = clampf(g_x[k] + (clampf(g_x[k] + delta0[k], lo, hi) - g_x[k]), lo, hi);
  tk_engine_forward(e, g_xin, N, TK_BN_EVAL, g_logits);
  for (int i = 0; i < N; i++) {
    double mx = g_logits[i * K], s = 0, sp = 0;
    for (int k = 1; k < K; k++) mx = fmax(mx, g_logits[i * K + k]);
    for (int k = 0; k < K; k++) s += exp(g_logits[i * K + k] - mx), sp += p[i * K + k];
    for (int k = 0; k < K; k++) g_dl[i * K + k] = (float)(exp(g_logits[i * K + k] - mx) / s * sp - p[i * K + k]);
  }
  tk_engine_backward(e, g_dl, g_grad, 0);
  memset(g_tiny, 0, sizeof g_tiny);
  mark_tiny(g_grad);
  for (size_t k = 0; k < (size_t)N * D; k++) {
    float s = g_grad[k] > 0 ? 1.0f : g_grad[k] < 0 ? -1.0f : 0.0f;
    float d0 = clampf(g_x[k] + delta0[k], lo, hi) - g_x[k];
    float d = fminf(fmaxf(d0 + alpha * s, -eps), eps);
    g_ref[k] = clampf(g_x[k] + (clampf(g_x[k] + d, lo, hi) - g_x[k]), lo, hi);
  }
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  o.eps = eps;
  o.alpha = alpha;
  o.steps = 1;
  o.loss = TK_ATTACK_LOSS_KL;
  o.start = TK_START_NORMAL_0001;
  o.final_iterate = 1;
  tk_attacker *a = NULL;
  CHECK(tk_attacker_create(e, &o, &a) == TK_OK);
  tk_status st = tk_attacker_run_from(a, g_x, NULL, N, delta0, NULL, g_res[3].x_adv, NULL);
  CHECK_MSG(st == TK_OK, "KL run_from: %s", tk_last_error());
  compare_adv("TRADES-KL step from a given start", g_res[3].x_adv, g_ref, g_tiny);
  /* without labels, tracking and restarts are refused */
  int fooled[N];
  st = tk_attacker_run_from(a, g_x, NULL, N, delta0, NULL, g_res[3].x_adv, fooled);
  CHECK_MSG(st == TK_ERR_ARG, "KL without labels but with `fooled`: %s", tk_status_name(st));
  tk_attacker_free(a);
  /* a 10-step TRADES attack raises the KL divergence well above its start */
  o.steps = 10;
  o.alpha = 0.01;
  CHECK(tk_attacker_create(e, &o, &a) == TK_OK);
  tk_rng rr;
  tk_rng_seed(&rr, 3);
  CHECK(tk_attacker_run(a, g_x, NULL, N, &rr, g_res[3].x_adv, NULL) == TK_OK);
  tk_attacker_free(a);
  result tmp;
  memcpy(tmp.x_adv, g_res[3].x_adv, sizeof tmp.x_adv);
  memset(tmp.fooled, 0, sizeof tmp.fooled);
  check_box("TRADES-KL 10 steps", e, g_x, g_y, &tmp, o.eps, 0);
  tk_infer(e, g_res[3].x_adv, N, g_logits);
  double kl = 0;
  for (int i = 0; i < N; i++) {
    double mx = g_logits[i * K], s = 0;
    for (int k = 1; k < K; k++) mx = fmax(mx, g_logits[i * K + k]);
    for (int k = 0; k < K; k++) s += exp(g_logits[i * K + k] - mx);
    for (int k = 0; k < K; k++) {
      double lq = g_logits[i * K + k] - mx - log(s);
      if (p[i * K + k] > 0) kl += p[i * K + k] * (log(p[i * K + k]) - lq);
    }
  }
  printf("  TRADES-KL 10 steps, eps %.2f: sum KL(p_clean || p_adv) = %.4f over %d images\n", o.eps, kl, N);
  CHECK_MSG(kl > 0.05 * N, "TRADES-KL: KL only %.4g after 10 steps", kl);
}

/* clean accuracy as the attack judges it: in train mode with batch statistics (running
 * statistics saved and restored around the forward) */
static int clean_correct_mode(tk_engine *e, const float *x, const int *y, tk_bn_mode bn) {
  if (bn == TK_BN_EVAL) return clean_correct(e, x, y);
  tk_model *m = e->m;
  static float save[4096];
  size_t off = 0;
  for (int t = 0; t < m->n_tensors; t++)
    if (!m->tensors[t].trainable) memcpy(save + off, m->tensors[t].data, (size_t)m->tensors[t].numel * 4), off += (size_t)m->tensors[t].numel;
  tk_engine_forward(e, x, N, TK_BN_TRAIN, g_logits);
  off = 0;
  for (int t = 0; t < m->n_tensors; t++)
    if (!m->tensors[t].trainable) memcpy(m->tensors[t].data, save + off, (size_t)m->tensors[t].numel * 4), off += (size_t)m->tensors[t].numel;
  tk_engine_sync(e, 0);
  int c = 0;
  for (int i = 0; i < N; i++) c += argmax(g_logits + i * K) == y[i];
  return c;
}

static void test_invariants(tk_engine *e, const char *mode_name, tk_bn_mode bn) {
  const int sa = clean_correct_mode(e, g_x, g_y, bn);
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  o.bn = bn;
  printf("%s: SA %d/%d (as the attack judges it)\n", mode_name, sa, N);
  /* eps = 0 */
  o.eps = 0;
  o.alpha = 0.05;
  attack(e, &o, g_x, g_y, 7, &g_res[0]);
  CHECK_MSG(g_res[0].ra == sa, "%s eps 0: RA %d != SA %d", mode_name, g_res[0].ra, sa);
  CHECK_MSG(!memcmp(g_res[0].x_adv, g_x, sizeof g_x), "eps 0: x_adv differs from x");
  if (bn == TK_BN_EVAL) check_box("eps 0", e, g_x, g_y, &g_res[0], 0, 1);
  /* eps grid */
  static const double eps_grid[] = {0, 0.03, 0.1, 0.3, 1.0};
  int prev = N + 1;
  printf("  eps  ");
  for (int k = 0; k < 5; k++) {
    o.eps = eps_grid[k];
    o.alpha = o.eps / 4;
    o.steps = 10;
    attack(e, &o, g_x, g_y, 11, &g_res[1]);
    printf(" %.2f:%d", o.eps, g_res[1].ra);
    char what[64];
    snprintf(what, sizeof what, "%s eps %.2f", mode_name, o.eps);
    check_box(what, e, g_x, g_y, &g_res[1], o.eps, bn == TK_BN_EVAL);
    CHECK_MSG(g_res[1].ra <= prev, "%s: RA %d rose above %d at eps %.2f", mode_name, g_res[1].ra, prev, o.eps);
    CHECK_MSG(g_res[1].ra <= sa, "%s: RA %d > SA %d", what, g_res[1].ra, sa);
    prev = g_res[1].ra;
  }
  printf("\n");
  /* steps: fooled sets nested */
  static const int step_grid[] = {0, 1, 2, 5, 10, 20};
  o.eps = 0.1;
  o.alpha = 0.02;
  printf("  steps");
  for (int k = 0; k < 6; k++) {
    o.steps = step_grid[k];
    attack(e, &o, g_x, g_y, 13, &g_res[2 + k % 2]);
    printf(" %d:%d", o.steps, g_res[2 + k % 2].ra);
    if (k) {
      char what[64];
      snprintf(what, sizeof what, "%s steps %d -> %d", mode_name, step_grid[k - 1], step_grid[k]);
      check_subset(what, &g_res[2 + (k - 1) % 2], &g_res[2 + k % 2]);
    }
  }
  printf("\n");
  /* restarts: fooled sets nested */
  o.steps = 3;
  o.eps = 0.06;
  o.alpha = 0.02;
  printf("  restarts");
  for (int r = 1, k = 0; r <= 4; r *= 2, k++) {
    o.restarts = r;
    attack(e, &o, g_x, g_y, 17, &g_res[4 + k % 2]);
    printf(" %d:%d", r, g_res[4 + k % 2].ra);
    if (k) check_subset("restarts", &g_res[4 + (k - 1) % 2], &g_res[4 + k % 2]);
  }
  printf("\n");
}

static void test_bn_modes(tk_engine *e) {
  tk_model *m = e->m;
  const int rm = tk_model_find_tensor(m, "bn1.running_mean"), rv = tk_model_find_tensor(m, "bn1.running_var");
  float mean0[4], var0[4];
  memcpy(mean0, m->tensors[rm].data, sizeof mean0);
  memcpy(var0, m->tensors[rv].data, sizeof var0);
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  o.eps = 0.1;
  o.alpha = 0.025;
  o.bn = TK_BN_TRAIN;
  attack(e, &o, g_x, g_y, 21, &g_res[0]);
  CHECK_MSG(!memcmp(mean0, m->tensors[rm].data, sizeof mean0) && !memcmp(var0, m->tensors[rv].data, sizeof var0),
            "a train-mode attack changed the running statistics");
  o.bn = TK_BN_EVAL;
  attack(e, &o, g_x, g_y, 21, &g_res[1]);
  CHECK_MSG(memcmp(g_res[0].x_adv, g_res[1].x_adv, sizeof g_x) != 0, "train- and eval-mode attacks gave the same x_adv");
  o.bn = TK_BN_TRAIN;
  o.update_bn_stats = 1;
  attack(e, &o, g_x, g_y, 21, &g_res[2]);
  CHECK_MSG(!memcmp(g_res[0].x_adv, g_res[2].x_adv, sizeof g_x), "update_bn_stats changed the attack itself");
  CHECK_MSG(memcmp(mean0, m->tensors[rm].data, sizeof mean0) != 0, "update_bn_stats: running mean unchanged");
  memcpy(m->tensors[rm].data, mean0, sizeof mean0);
  memcpy(m->tensors[rv].data, var0, sizeof var0);
  tk_engine_sync(e, 0);
}

static void test_errors(tk_engine *e) {
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  tk_attacker *a = NULL;
  o.eps = -1;
  CHECK(tk_attacker_create(e, &o, &a) == TK_ERR_ARG && a == NULL);
  tk_attack_opts_default(&o);
  o.restarts = 0;
  CHECK(tk_attacker_create(e, &o, &a) == TK_ERR_ARG && a == NULL);
  tk_attack_opts_default(&o);
  CHECK(tk_attacker_create(e, &o, &a) == TK_OK);
  tk_rng r;
  tk_rng_seed(&r, 1);
  CHECK(tk_attacker_run(a, g_x, g_y, N + 1, &r, g_res[0].x_adv, NULL) == TK_ERR_ARG);
  CHECK(tk_attacker_run(a, g_x, NULL, N, &r, g_res[0].x_adv, NULL) == TK_ERR_ARG);
  CHECK(tk_attacker_run(a, g_x, g_y, N, NULL, g_res[0].x_adv, NULL) == TK_ERR_ARG);
  int bad[N];
  memcpy(bad, g_y, sizeof bad);
  bad[3] = K;
  CHECK(tk_attacker_run(a, g_x, bad, N, &r, g_res[0].x_adv, NULL) == TK_ERR_ARG);
  printf("  last error: %s\n", tk_last_error());
  tk_attacker_free(a);
}

/* One attack on the engine alone (chunk 0) and in parallel with chunks of `chunk`: x_adv and
 * fooled must agree bit for bit (the replicas plan as the engine does here: every layer forced
 * onto the sparse table kernels, whose per-image arithmetic does not depend on the batch). */
static void parallel_case(tk_engine *e, const char *what, const tk_attack_opts *base, int chunk, int with_start) {
  static float delta0[N * D];
  tk_rng r;
  tk_rng_seed(&r, 5);
  for (size_t k = 0; k < (size_t)N * D; k++) delta0[k] = (float)(2 * tk_rng_uniform(&r) - 1) * (float)base->eps;
  const int *y = base->loss == TK_ATTACK_LOSS_KL ? NULL : g_y;
  for (int par = 0; par < 2; par++) {
    tk_attack_opts o = *base;
    o.chunk = par ? chunk : 0;
    tk_attacker *a = NULL;
    tk_status st = tk_attacker_create(e, &o, &a);
    CHECK_MSG(st == TK_OK, "%s: create: %s", what, tk_last_error());
    if (st != TK_OK) return;
    tk_rng rng;
    tk_rng_seed(&rng, 77);
    int *fooled = y ? g_res[4 + par].fooled : NULL;
    memset(g_res[4 + par].fooled, 0, sizeof g_res[4 + par].fooled);
    st = with_start ? tk_attacker_run_from(a, g_x, y, N, delta0, &rng, g_res[4 + par].x_adv, fooled)
                    : tk_attacker_run(a, g_x, y, N, &rng, g_res[4 + par].x_adv, fooled);
    CHECK_MSG(st == TK_OK, "%s: run: %s", what, tk_last_error());
    tk_attacker_free(a);
  }
  int nx = 0, nf = 0, nfooled = 0;
  for (size_t k = 0; k < (size_t)N * D; k++) nx += memcmp(&g_res[4].x_adv[k], &g_res[5].x_adv[k], sizeof(float)) != 0;
  for (int i = 0; i < N; i++) nf += g_res[4].fooled[i] != g_res[5].fooled[i], nfooled += g_res[4].fooled[i];
  CHECK_MSG(nx == 0 && nf == 0, "%s: parallel vs serial: %d of %d pixels and %d of %d fooled flags differ", what, nx,
            N * D, nf, N);
  printf("  %-58s fooled %2d of %d, %s\n", what, nfooled, N, nx || nf ? "DIFFERENT" : "identical");
}

/* the compiled engine of these checks: every layer on the sparse table kernels, gradients */
static tk_engine *parallel_engine(tk_model *m, int threads) {
  tk_compile_opts co;
  tk_compile_opts_default(&co);
  co.threads = threads;
  co.training = 1;
  co.force = TK_VARIANT_SPARSE_TABLE;
  tk_engine *e = NULL;
  tk_status st = tk_compiled_engine_create(m, N, &co, &e);
  CHECK_MSG(st == TK_OK, "compiled engine: %s", tk_last_error());
  return st == TK_OK ? e : NULL;
}

static void test_parallel(void) {
  char why[256];
  if (!tk_jit_built(why, sizeof why) || !tk_cc_path(why, sizeof why)) {
    printf("parallel attack: SKIPPED, no compiled engine here (%s)\n", why);
    return;
  }
  printf("parallel attack (compiled engine)\n");
  tk_model *m = build_model(0.0f, 1.0f, 42);
  for (int threads = 2; threads <= 3; threads++) {
    tk_engine *e = parallel_engine(m, threads);
    if (!e) break;
    tk_attack_opts o;
    tk_attack_opts_default(&o);
    o.eps = 0.03;
    o.alpha = 0.01;
    o.restarts = 2;
    char what[128];
    snprintf(what, sizeof what, "%d threads, chunks of 8: tracking, 2 restarts", threads);
    parallel_case(e, what, &o, 8, 0);
    snprintf(what, sizeof what, "%d threads, chunks of 40: tracking, 2 restarts", threads);
    parallel_case(e, what, &o, 40, 0);
    o.restarts = 1;
    o.final_iterate = 1;
    o.steps = 3;
    snprintf(what, sizeof what, "%d threads, chunks of 8: final iterate from a start", threads);
    parallel_case(e, what, &o, 8, 1);
    tk_attack_opts_default(&o);
    o.eps = 0.1;
    o.alpha = 0.025;
    o.steps = 3;
    o.final_iterate = 1;
    o.loss = TK_ATTACK_LOSS_KL;
    o.start = TK_START_NORMAL_0001;
    snprintf(what, sizeof what, "%d threads, chunks of 8: TRADES-KL", threads);
    parallel_case(e, what, &o, 8, 0);
    tk_engine_free(e);
  }
  /* the replicas follow the engine: one attacker kept across new weights and a new mask must
   * agree with a fresh serial attack each time */
  tk_engine *e = parallel_engine(m, 2);
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  o.eps = 0.03;
  o.alpha = 0.01;
  o.chunk = 8;
  tk_attacker *kept = NULL;
  CHECK(e && tk_attacker_create(e, &o, &kept) == TK_OK);
  tk_tensor *fc = &m->tensors[tk_model_find_tensor(m, "fc.weight")];
  tk_tensor *cw = &m->tensors[tk_model_find_tensor(m, "conv1.weight")];
  for (int change = 0; kept && change < 3; change++) {
    if (change == 1) { /* new values */
      for (int64_t k = 0; k < fc->numel; k++) fc->data[k] *= (k % 3) ? 1.5f : -0.5f;
      CHECK(tk_engine_sync(e, 0) == TK_OK);
    } else if (change == 2) { /* a new mask: every third conv weight pruned */
      uint8_t *mask = tk_calloc((size_t)cw->numel, 1);
      for (int64_t k = 0; k < cw->numel; k++) mask[k] = k % 3 != 0;
      CHECK(tk_tensor_set_mask(cw, mask) == TK_OK);
      free(mask);
      CHECK(tk_engine_sync(e, 1) == TK_OK);
    }
    tk_rng rng;
    tk_rng_seed(&rng, 3);
    CHECK(tk_attacker_run(kept, g_x, g_y, N, &rng, g_res[6].x_adv, g_res[6].fooled) == TK_OK);
    o.chunk = 0;
    tk_attacker *serial = NULL;
    CHECK(tk_attacker_create(e, &o, &serial) == TK_OK);
    tk_rng_seed(&rng, 3);
    CHECK(serial && tk_attacker_run(serial, g_x, g_y, N, &rng, g_res[7].x_adv, g_res[7].fooled) == TK_OK);
    tk_attacker_free(serial);
    o.chunk = 8;
    static const char *const what[3] = {"as created", "after new weights (sync)", "after a new mask (sync)"};
    CHECK_MSG(!memcmp(g_res[6].x_adv, g_res[7].x_adv, sizeof g_res[6].x_adv) &&
                  !memcmp(g_res[6].fooled, g_res[7].fooled, sizeof g_res[6].fooled),
              "kept parallel attacker %s: differs from a serial attack", what[change]);
    printf("  kept attacker %-44s checked against a serial attack\n", what[change]);
  }
  tk_attacker_free(kept);
  tk_engine_free(e);
  tk_model_free(m);
}

int main(void) {
  tk_model *m = build_model(0.0f, 1.0f, 42);
  CHECK(tk_engine_create(m, TK_ENGINE_REFERENCE, N, &g_e) == TK_OK);
  if (!g_e) {
    fprintf(stderr, "engine: %s\n", tk_last_error());
    return 1;
  }
  tk_rng r;
  tk_rng_seed(&r, 1234);
  for (size_t k = 0; k < (size_t)N * D; k++) g_x[k] = (float)tk_rng_uniform(&r);
  const int sa = make_labels(g_e, g_x, g_y);
  CHECK_MSG(sa == N - N / 5, "SA %d, expected %d", sa, N - N / 5);

  test_invariants(g_e, "BatchNorm eval", TK_BN_EVAL);
  test_invariants(g_e, "BatchNorm train", TK_BN_TRAIN);
  printf("references\n");
  test_fgsm(g_e);
  test_pgd_reference(g_e);
  test_kl_reference(g_e);
  printf("BatchNorm modes\n");
  test_bn_modes(g_e);
  printf("errors\n");
  test_errors(g_e);
  test_parallel();

  /* a model with pixel range [0.2, 0.8] and data inside it: projections respect the range */
  tk_model *m2 = build_model(0.2f, 0.8f, 43);
  tk_engine *e2 = NULL;
  CHECK(tk_engine_create(m2, TK_ENGINE_REFERENCE, N, &e2) == TK_OK);
  for (size_t k = 0; k < (size_t)N * D; k++) g_xr[k] = 0.2f + 0.6f * (float)tk_rng_uniform(&r);
  make_labels(e2, g_xr, g_yr);
  memcpy(g_x, g_xr, sizeof g_x);
  memcpy(g_y, g_yr, sizeof g_y);
  printf("range [0.2, 0.8]\n");
  test_invariants(e2, "range [0.2, 0.8]", TK_BN_EVAL);
  test_fgsm(e2);
  test_pgd_reference(e2);

  tk_engine_free(e2);
  tk_model_free(m2);
  tk_engine_free(g_e);
  tk_model_free(m);
  return check_done("test_attack");
}
