/* test_ops.c -- the fast ops of runtime/ops.c called directly, for what the engine comparisons
 * of test_exec.c (against the reference engine, to a tolerance) cannot see.
 *
 * Batchnorm backward with a fused ReLU: tk_ops_bn_bwd recomputes the ReLU's mask as
 * x * save_a + save_b > 0 instead of reading the forward's output y.  That mask must be the
 * one the forward applied, bit for bit, so the backward with relu = 1 must equal, bit for bit,
 * the backward with relu = 0 on dy masked by the forward's actual output (y > 0 ? dy : 0),
 * the formula the op used before.  Checked in train and eval mode (the eval one both on its
 * own scaling path and with dgamma/dbeta, the blocked path), acc on and off, on shapes that
 * cover odd map sizes, several channel blocks, 1x1 maps and the threaded loops, with data
 * made to sit on the mask's edge: inputs where x * a + b is exactly 0 or a few ulps either
 * side of it (x set to -b/a and its float neighbours, iterated in train mode, where a and b
 * follow the batch), a channel with gamma = beta = 0 (every value exactly 0), signed zeros,
 * negative gammas, NaN in x (which poisons its channel in train mode) and NaN in dy.  The
 * backward is also checked against a naive double formula, masked by y, to 1e-5.
 *
 * A batchnorm's output pass fused into the add that reads it (tk_ops_add_affine_fwd, exec.c's
 * deferred batchnorms): relu?(a0*x0 + b0 + a1*x1 + b1), either affine or both, must equal bit
 * for bit the batchnorms' outputs added by tk_ops_add_fwd, in place too, on the same edge
 * data; and a batchnorm forward without an output (y NULL) must save the same statistics.
 *
 * The size below which the ops run on one thread is measured per engine (tk_ops_calibrate: an
 * OpenMP region costs ~1 us where idle threads spin, ~40 where they sleep); results must be
 * the same bits whichever side of it a loop falls.
 */
#include "check.h"

#include "runtime/ops.h"
#include "runtime/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static tk_rng g_rng;

static double uniform(double lo, double hi) { return lo + (hi - lo) * tk_rng_uniform(&g_rng); }

/* Bit-for-bit equality (two NaNs count as equal); reports the first differing element. */
static void check_same(const char *what, const float *got, const float *want, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t g, w;
    memcpy(&g, &got[i], 4);
    memcpy(&w, &want[i], 4);
    if (g == w || (isnan(got[i]) && isnan(want[i]))) continue;
    size_t bad = 0;
    for (size_t j = i; j < n; j++) bad += memcmp(&got[j], &want[j], 4) && !(isnan(got[j]) && isnan(want[j]));
    fprintf(stderr, "%s: %zu of %zu elements differ in their bits; first [%zu]: got %.9g (0x%08x) expected %.9g "
                    "(0x%08x)\n", what, bad, n, i, got[i], g, want[i], w);
    check_failures++;
    return;
  }
}

typedef struct {
  int n, c, hw;
} bn_shape;

/* odd map, several channels per block, two blocks, threaded (n*c*hw > 16384), 1x1 maps */
static const bn_shape g_shapes[] = {{3, 5, 7}, {4, 3, 69}, {2, 40, 16}, {2, 130, 9}, {8, 24, 256}, {16, 70, 1}};

typedef struct {
  int n, c, hw;
  size_t count;
  float *x, *y, *dy, *dym, *dx0;           /* (N, C, HW); dym: dy masked by y > 0; dx0: acc's start */
  float *gamma, *beta, *rm, *rv;           /* (C) */
  float *mean, *invstd, *a, *b;            /* (C): what the forward saved */
  unsigned char *special;                  /* (N, C, HW): 1, 2, 3: put at -b/a, one ulp above, below */
} bn_case;

static void forward(bn_case *t, int train, int relu) {
  if (train) /* the running statistics are the forward's to update: keep the case's own */
    tk_ops_bn_train_fwd(t->x, t->gamma, t->beta, t->rm, t->rv, 1e-5f, 0.0f, relu, t->y, t->mean, t->invstd, t->a,
                        t->b, t->n, t->c, t->hw);
  else
    tk_ops_bn_eval_fwd(t->x, t->gamma, t->beta, t->rm, t->rv, 1e-5f, relu, t->y, t->mean, t->invstd, t->a, t->b,
                       t->n, t->c, t->hw);
}

/* Random data with the edge cases of the file comment; x's special elements follow a and b. */
static void make_case(bn_case *t, const bn_shape *s, int train) {
  t->n = s->n, t->c = s->c, t->hw = s->hw;
  t->count = (size_t)s->n * s->c * s->hw;
  float **big[] = {&t->x, &t->y, &t->dy, &t->dym, &t->dx0};
  for (size_t k = 0; k < sizeof big / sizeof *big; k++) *big[k] = malloc(t->count * sizeof(float));
  float **small[] = {&t->gamma, &t->beta, &t->rm, &t->rv, &t->mean, &t->invstd, &t->a, &t->b};
  for (size_t k = 0; k < sizeof small / sizeof *small; k++) *small[k] = malloc((size_t)s->c * sizeof(float));
  t->special = calloc(t->count, 1);
  for (int ch = 0; ch < s->c; ch++) {
    t->gamma[ch] = (float)(uniform(0.5, 1.5) * (tk_rng_uniform(&g_rng) < 0.3 ? -1 : 1));
    t->beta[ch] = (float)uniform(-0.5, 0.5);
    t->rm[ch] = (float)uniform(-0.3, 0.3);
    t->rv[ch] = (float)uniform(0.5, 2.0);
  }
  t->gamma[0] = t->beta[0] = 0.0f; /* a = 0, b = +-0: every value exactly 0 */
  for (size_t q = 0; q < t->count; q++) {
    const int ch = (int)(q / s->hw % s->c);
    t->x[q] = (float)(tk_rng_normal(&g_rng) * 0.8 + 0.1 * ch);
    t->dy[q] = (float)tk_rng_normal(&g_rng);
    t->dx0[q] = (float)tk_rng_normal(&g_rng);
    const double u = tk_rng_uniform(&g_rng);
    if (u < 0.15) t->special[q] = 1 + (unsigned char)(tk_rng_u64(&g_rng) % 3);
    else if (u < 0.17) t->x[q] = 0.0f;
    else if (u < 0.19) t->x[q] = -0.0f;
  }
  if (s->c > 2) {
    const size_t q1 = (size_t)1 * s->hw + (size_t)(s->n - 1) * s->c * s->hw; /* channel 1, last image */
    t->x[q1] = NAN;
    t->special[q1] = 0;
    t->dy[2 * (size_t)s->hw] = NAN; /* channel 2, first image */
  }
  /* x -> -b/a moves the batch statistics, and so a and b, in train mode: iterate */
  for (int round = 0; round < (train ? 12 : 1); round++) {
    forward(t, train, 1);
    for (size_t q = 0; q < t->count; q++) {
      const int ch = (int)(q / s->hw % s->c);
      const float a = t->a[ch], b = t->b[ch];
      if (!t->special[q] || a == 0.0f || !isfinite(a) || !isfinite(b)) continue;
      float v = -b / a;
      if (t->special[q] == 2) v = nextafterf(v, INFINITY);
      if (t->special[q] == 3) v = nextafterf(v, -INFINITY);
      t->x[q] = v;
    }
  }
}

static void free_case(bn_case *t) {
  float *all[] = {t->x, t->y, t->dy, t->dym, t->dx0, t->gamma, t->beta, t->rm, t->rv, t->mean, t->invstd, t->a, t->b};
  for (size_t k = 0; k < sizeof all / sizeof *all; k++) free(all[k]);
  free(t->special);
}

/* dx, dgamma, dbeta in double from the forward's saved statistics, g = dy masked by y > 0 */
static void naive_bwd(const bn_case *t, int train, int relu, int acc, double *dx, double *dg, double *db) {
  const int hw = t->hw, c = t->c;
  const double cnt = (double)t->n * hw;
  for (int ch = 0; ch < c; ch++) {
    double sg = 0.0, sgx = 0.0;
    for (int i = 0; i < t->n; i++)
      for (int k = 0; k < hw; k++) {
        const size_t q = ((size_t)i * c + ch) * hw + k;
        const double g = relu && !(t->y[q] > 0.0f) ? 0.0 : t->dy[q];
        sg += g;
        sgx += g * ((double)t->x[q] - t->mean[ch]) * t->invstd[ch];
      }
    dg[ch] = sgx, db[ch] = sg;
    for (int i = 0; i < t->n; i++)
      for (int k = 0; k < hw; k++) {
        const size_t q = ((size_t)i * c + ch) * hw + k;
        const double g = relu && !(t->y[q] > 0.0f) ? 0.0 : t->dy[q];
        const double xh = ((double)t->x[q] - t->mean[ch]) * t->invstd[ch];
        const double k0 = (double)t->gamma[ch] * t->invstd[ch];
        dx[q] = (acc ? t->dx0[q] : 0.0) + (train ? k0 * (g - sg / cnt - xh * sgx / cnt) : k0 * g);
      }
  }
}

/* Relative error against the naive formula over the finite channels (NaN ones must be NaN in
 * both); the largest magnitude of each array sets its scale. */
static void check_naive(const char *what, const float *got, const double *want, size_t n) {
  double md = 0.0, mw = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(want[i]) || isnan(got[i])) {
      if (isnan(want[i]) != isnan(got[i])) md = INFINITY, worst = i;
      continue;
    }
    if (fabs(got[i] - want[i]) > md) md = fabs(got[i] - want[i]), worst = i;
    if (fabs(want[i]) > mw) mw = fabs(want[i]);
  }
  if (md > 1e-5 * fmax(mw, 1e-30)) {
    fprintf(stderr, "%s: worst [%zu]: got %.9g expected %.9g (rel to max %.3g)\n", what, worst, got[worst],
            want[worst], md / fmax(mw, 1e-30));
    check_failures++;
  }
}

static void bn_bwd_mask(void) {
  int edge_pos = 0, edge_neg = 0;
  for (size_t si = 0; si < sizeof g_shapes / sizeof *g_shapes; si++) {
    const bn_shape *s = &g_shapes[si];
    for (int train = 0; train <= 1; train++) {
      bn_case t;
      make_case(&t, s, train);
      const size_t cnt = t.count;
      float *dx_new = malloc(cnt * sizeof(float)), *dx_old = malloc(cnt * sizeof(float));
      float *par = malloc(4 * (size_t)s->c * sizeof(float)); /* dgamma, dbeta: new, old */
      double *ndx = malloc(cnt * sizeof(double)), *ndg = malloc((size_t)s->c * sizeof(double)),
             *ndb = malloc((size_t)s->c * sizeof(double));
      for (int relu = 0; relu <= 1; relu++) {
        forward(&t, train, relu);
        for (size_t q = 0; q < cnt; q++) t.dym[q] = relu && !(t.y[q] > 0.0f) ? 0.0f : t.dy[q];
        for (size_t q = 0; relu && q < cnt; q++) { /* x * a + b exactly, within a few ulps of b of 0 */
          const int ch = (int)(q / s->hw % s->c);
          const double v = (double)t.x[q] * t.a[ch] + t.b[ch];
          if (!t.special[q] || !(fabs(v) <= 1e-6 * fabs(t.b[ch]))) continue;
          if (v > 0.0) edge_pos++;
          else edge_neg++;
        }
        /* params: 0 none (eval mode's scaling path), 1 dgamma and dbeta (eval: the blocked path) */
        for (int params = 0; params <= 1; params++)
          for (int acc = 0; acc <= 1; acc++) {
            char what[160];
            snprintf(what, sizeof what, "bn_bwd %dx%dx%d %s relu %d acc %d params %d", s->n, s->c, s->hw,
                     train ? "train" : "eval", relu, acc, params);
            float *dg_new = params ? par : NULL, *db_new = params ? par + s->c : NULL;
            float *dg_old = params ? par + 2 * s->c : NULL, *db_old = params ? par + 3 * s->c : NULL;
            memcpy(dx_new, t.dx0, cnt * sizeof(float));
            memcpy(dx_old, t.dx0, cnt * sizeof(float));
            /* relu off: save_a and save_b must not be read */
            tk_ops_bn_bwd(t.x, t.dy, t.gamma, t.mean, t.invstd, relu ? t.a : NULL, relu ? t.b : NULL, relu, train,
                          dx_new, dg_new, db_new, s->n, s->c, s->hw, acc);
            tk_ops_bn_bwd(t.x, t.dym, t.gamma, t.mean, t.invstd, NULL, NULL, 0, train, dx_old, dg_old, db_old, s->n,
                          s->c, s->hw, acc);
            check_same(what, dx_new, dx_old, cnt);
            if (params) {
              check_same(what, dg_new, dg_old, (size_t)s->c);
              check_same(what, db_new, db_old, (size_t)s->c);
            }
            naive_bwd(&t, train, relu, acc, ndx, ndg, ndb);
            check_naive(what, dx_new, ndx, cnt);
            if (params) {
              check_naive(what, dg_new, ndg, (size_t)s->c);
              check_naive(what, db_new, ndb, (size_t)s->c);
            }
          }
      }
      free(dx_new), free(dx_old), free(par), free(ndx), free(ndg), free(ndb);
      free_case(&t);
    }
  }
  /* the data must reach the mask's edge, or the test proves nothing */
  printf("bn_bwd_mask: %d inputs with x * a + b in (0, 1e-6 |b|], %d in [-1e-6 |b|, 0]\n", edge_pos, edge_neg);
  CHECK(edge_pos > 100 && edge_neg > 100);
}

static void add_affine(void) {
  int cases = 0;
  for (size_t si = 0; si < sizeof g_shapes / sizeof *g_shapes; si++)
    for (int train = 0; train < 2; train++) {
      bn_case t[2];
      make_case(&t[0], &g_shapes[si], train);
      make_case(&t[1], &g_shapes[si], train);
      const bn_shape *sh = &g_shapes[si];
      const size_t cnt = t[0].count, cb = (size_t)sh->c * sizeof(float);
      float *want = malloc(cnt * sizeof(float)), *got = malloc(cnt * sizeof(float));
      float *sv[4] = {malloc(cb), malloc(cb), malloc(cb), malloc(cb)};
      for (int k = 0; k < 2; k++) {
        forward(&t[k], train, 0); /* y: the batchnorm's output, no ReLU */
        /* the same forward without an output saves the same statistics and affine */
        float *keep[4] = {t[k].mean, t[k].invstd, t[k].a, t[k].b};
        for (int q = 0; q < 4; q++) memcpy(sv[q], keep[q], cb), memset(keep[q], 0xff, cb);
        float *y = t[k].y;
        t[k].y = NULL;
        forward(&t[k], train, 0);
        t[k].y = y;
        check_same(train ? "train batchnorm without output: mean" : "eval batchnorm without output: mean", t[k].mean,
                   sv[0], (size_t)sh->c);
        check_same("batchnorm without output: 1/std", t[k].invstd, sv[1], (size_t)sh->c);
        check_same("batchnorm without output: a", t[k].a, sv[2], (size_t)sh->c);
        check_same("batchnorm without output: b", t[k].b, sv[3], (size_t)sh->c);
      }
      for (int relu = 0; relu < 2; relu++) {
        tk_ops_add_fwd(t[0].y, t[1].y, relu, want, cnt);
        for (int which = 1; which < 4; which++) { /* bit 0: input 0's affine, bit 1: input 1's */
          const int f0 = which & 1, f1 = which >> 1 & 1;
          char what[160];
          snprintf(what, sizeof what, "%s add of %s%s%s, relu %d, %dx%dx%d", train ? "train" : "eval",
                   f0 ? "bn(x0)" : "y0", " + ", f1 ? "bn(x1)" : "y1", relu, sh->n, sh->c, sh->hw);
          tk_ops_add_affine_fwd(f0 ? t[0].x : t[0].y, f0 ? t[0].a : NULL, f0 ? t[0].b : NULL, f1 ? t[1].x : t[1].y,
                                f1 ? t[1].a : NULL, f1 ? t[1].b : NULL, relu, got, sh->n, sh->c, sh->hw);
          check_same(what, got, want, cnt);
          /* in place over input 1 */
          memcpy(got, f1 ? t[1].x : t[1].y, cnt * sizeof(float));
          tk_ops_add_affine_fwd(f0 ? t[0].x : t[0].y, f0 ? t[0].a : NULL, f0 ? t[0].b : NULL, got, f1 ? t[1].a : NULL,
                                f1 ? t[1].b : NULL, relu, got, sh->n, sh->c, sh->hw);
          strncat(what, ", in place", sizeof what - strlen(what) - 1);
          check_same(what, got, want, cnt);
          cases++;
        }
      }
      for (int q = 0; q < 4; q++) free(sv[q]);
      free(want), free(got);
      free_case(&t[0]), free_case(&t[1]);
    }
  printf("add_affine: %d cases\n", cases);
  CHECK(cases == (int)(sizeof g_shapes / sizeof *g_shapes) * 2 * 2 * 3);
}

/* The size below which the ops stay on one thread (tk_ops_calibrate: measured, or
 * TICKET_PAR_MIN), and the results, which must not depend on it: batchnorm (train and eval, with
 * its saved statistics) and add on a threaded shape, all serial against all split. */
static void par_min(void) {
  setenv("TICKET_PAR_MIN", "1000", 1);
  tk_ops_calibrate(2);
  CHECK_MSG(tk_ops_par_min() == 1000, "TICKET_PAR_MIN=1000: %ld", tk_ops_par_min());
  unsetenv("TICKET_PAR_MIN");
  tk_ops_calibrate(2);
  CHECK_MSG(tk_ops_par_min() >= 16384, "measured: %ld", tk_ops_par_min());
  const bn_shape sh = {8, 24, 256};
  for (int train = 0; train < 2; train++) {
    bn_case t[2];
    const char *size[2] = {"1", "16777216"};
    tk_rng keep = g_rng;
    for (int k = 0; k < 2; k++) {
      g_rng = keep; /* the same data for both */
      make_case(&t[k], &sh, train);
      setenv("TICKET_PAR_MIN", size[k], 1);
      tk_ops_calibrate(2);
      forward(&t[k], train, 1);
      tk_ops_add_fwd(t[k].x, t[k].y, 1, t[k].dx0, t[k].count);
    }
    check_same(train ? "train batchnorm, serial against split" : "eval batchnorm, serial against split", t[1].y,
               t[0].y, t[0].count);
    check_same("batchnorm mean, serial against split", t[1].mean, t[0].mean, (size_t)sh.c);
    check_same("batchnorm 1/std, serial against split", t[1].invstd, t[0].invstd, (size_t)sh.c);
    check_same("add, serial against split", t[1].dx0, t[0].dx0, t[0].count);
    free_case(&t[0]), free_case(&t[1]);
  }
  unsetenv("TICKET_PAR_MIN");
  tk_ops_calibrate(2);
}

int main(void) {
  tk_rng_seed(&g_rng, 20240611);
  bn_bwd_mask();
  add_affine();
  par_min();
  return check_done("test_ops");
}
