/* util.h -- small shared helpers: error recording, checked allocation, RNG, atomic files.
 * Internal; not part of the public API. */
#ifndef TK_UTIL_H
#define TK_UTIL_H

#include "ticket.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TK_INTERNAL __attribute__((visibility("hidden")))

/* Record a one-line error message and return `st`.  Messages name file/tensor/field. */
TK_INTERNAL tk_status tk_fail(tk_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current error with "ctx: " (e.g. the file name) and return st. */
TK_INTERNAL tk_status tk_fail_prefix(tk_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Programmer bugs: abort with file and line. */
#define TK_ASSERT(c)                                                                     \
  do {                                                                                   \
    if (!(c)) {                                                                          \
      fprintf(stderr, "%s:%d: internal error: assertion `%s` failed\n", __FILE__, __LINE__, #c); \
      abort();                                                                           \
    }                                                                                    \
  } while (0)

/* Allocation that never returns NULL silently: returns NULL *and* records TK_ERR_NOMEM. */
TK_INTERNAL void *tk_malloc(size_t n);
TK_INTERNAL void *tk_calloc(size_t count, size_t size);
TK_INTERNAL char *tk_strdup(const char *s);
/* 64-byte aligned, zeroed; free with free(). */
TK_INTERNAL void *tk_alloc_aligned(size_t n);

/* Deterministic RNG (xoshiro256**), seeded with splitmix64.  State is 4 x u64 so it can be
 * saved into a checkpoint and restored exactly. */
typedef struct { uint64_t s[4]; } tk_rng;
TK_INTERNAL void tk_rng_seed(tk_rng *r, uint64_t seed);
TK_INTERNAL uint64_t tk_rng_u64(tk_rng *r);
TK_INTERNAL double tk_rng_uniform(tk_rng *r);            /* [0, 1) */
TK_INTERNAL double tk_rng_normal(tk_rng *r);             /* N(0, 1), Box-Muller */
TK_INTERNAL uint64_t tk_rng_below(tk_rng *r, uint64_t n); /* [0, n) */

/* Atomic whole-file write: temporary file in the same directory, fsync, rename. */
TK_INTERNAL tk_status tk_write_file_atomic(const char *path, const void *data, size_t n);
/* Read a whole file (bounded by max_bytes). Caller frees *data. */
TK_INTERNAL tk_status tk_read_file(const char *path, size_t max_bytes, void **data, size_t *n);

/* Parse "0.1", "8/255", "1e-3".  Returns false on garbage. */
TK_INTERNAL bool tk_parse_fraction(const char *s, double *out);

/* Wall clock in seconds (monotonic). */
TK_INTERNAL double tk_now(void);

/* The median of v[0 .. n) (the upper one for even n; INFINITY when n is 0); sorts v. */
TK_INTERNAL double tk_median(double *v, int n);

/* Set the variables of spec "NAME=VALUE[,NAME=VALUE...]" (at most 8) and remember their old
 * values in *saved; tk_env_pop restores them (unset where they were unset).  For A/B runs that
 * build one engine under other TICKET_* settings.  Returns false on a malformed spec (nothing
 * set). */
typedef struct {
  int n;
  char name[8][64];
  char *old[8]; /* NULL: was unset */
} tk_env_saved;
TK_INTERNAL bool tk_env_push(const char *spec, tk_env_saved *saved);
TK_INTERNAL void tk_env_pop(tk_env_saved *saved);



/* Files embedded at build time (schema, zoo architectures, kernel templates), by path
 * relative to the source root, e.g. "models/lenet.json".  NULL when absent. */
typedef struct { const char *path; const char *data; size_t size; } tk_embedded_file;
TK_INTERNAL const tk_embedded_file *tk_embedded_find(const char *path);
extern const tk_embedded_file tk_embedded[]; /* terminated by path == NULL */
#endif
