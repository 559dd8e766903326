/* check.c -- see check.h */
#include "check.h"

#include <math.h>

int check_failures = 0;

bool check_close(const char *what, const float *got, const float *want, size_t n, double rtol, double atol) {
  size_t worst = 0, bad = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < n; i++) {
    double g = got[i], w = want[i], d = fabs(g - w), lim = atol + rtol * fabs(w);
    double excess = (isnan(g) != isnan(w)) ? INFINITY : d - lim;
    if (excess > worst_excess) worst_excess = excess, worst = i;
    if (!(d <= lim) && !(isnan(g) && isnan(w))) bad++;
  }
  if (bad) {
    double g = got[worst], w = want[worst];
    fprintf(stderr, "%s: %zu of %zu elements differ; worst [%zu]: got %.9g expected %.9g (abs %.3g, rel %.3g)\n",
            what, bad, n, worst, g, w, fabs(g - w), fabs(g - w) / fmax(fabs(w), 1e-30));
    check_failures++;
    return false;
  }
  return true;
}

double check_rel_err(const float *got, const float *want, size_t n) {
  double md = 0, mw = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - want[i]);
    if (isnan(d)) return INFINITY;
    if (d > md) md = d;
    if (fabs(want[i]) > mw) mw = fabs(want[i]);
  }
  return md / fmax(mw, 1e-30);
}

int check_done(const char *name) {
  if (check_failures) {
    fprintf(stderr, "%s: %d check(s) FAILED\n", name, check_failures);
    return 1;
  }
  printf("%s: all checks passed\n", name);
  return 0;
}

void check_skip(const char *why) {
  printf("SKIPPED: %s\n", why);
  exit(77);
}
