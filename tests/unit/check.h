/* check.h -- a tiny test harness: checks exit non-zero and report the worst element. */
#ifndef TK_CHECK_H
#define TK_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

extern int check_failures;

#define CHECK(c)                                                                 \
  do {                                                                           \
    if (!(c)) {                                                                  \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);     \
      check_failures++;                                                          \
    }                                                                            \
  } while (0)

#define CHECK_MSG(c, ...)                                                        \
  do {                                                                           \
    if (!(c)) {                                                                  \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #c);     \
      fprintf(stderr, __VA_ARGS__);                                              \
      fputc('\n', stderr);                                                       \
      check_failures++;                                                          \
    }                                                                            \
  } while (0)

/* Compare got against want elementwise: |got-want| <= atol + rtol*|want|.  On failure prints
 * the worst element (index, got, expected, relative error) under `what`; returns true if ok.
 * Also reports the max relative error through *worst_rel when not NULL. */
bool check_close(const char *what, const float *got, const float *want, size_t n, double rtol, double atol);
/* Relative error of whole arrays: max|got-want| / max(max|want|, tiny). */
double check_rel_err(const float *got, const float *want, size_t n);
/* Exit status for main(): prints a summary line. */
int check_done(const char *name);
/* Skip the whole test (exit 77, which ctest reports as skipped) with a reason. */
void check_skip(const char *why) __attribute__((noreturn));

#endif
