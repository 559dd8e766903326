/* util.c -- error recording, checked allocation, RNG, atomic files. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- errors ------------------------------------------------------------------------ */

static _Thread_local char g_err[1024];

const char *tk_last_error(void) { return g_err[0] ? g_err : "no error recorded"; }

const char *tk_status_name(tk_status s) {
  switch (s) {
  case TK_OK: return "ok";
  case TK_ERR_IO: return "io error";
  case TK_ERR_FORMAT: return "bad format";
  case TK_ERR_SHAPE: return "shape mismatch";
  case TK_ERR_ARG: return "bad argument";
  case TK_ERR_NOMEM: return "out of memory";
  case TK_ERR_COMPILE: return "compile error";
  case TK_ERR_UNSUPPORTED: return "unsupported";
  case TK_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

tk_status tk_fail(tk_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return st;
}

tk_status tk_fail_prefix(tk_status st, const char *fmt, ...) {
  char pre[256], old[sizeof g_err - 300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  size_t keep = strnlen(g_err, sizeof old - 1);
  memcpy(old, g_err, keep);
  old[keep] = 0;
  snprintf(g_err, sizeof g_err, "%.255s: %.700s", pre, old);
  return st;
}

/* ---- allocation -------------------------------------------------------------------- */

void *tk_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) tk_fail(TK_ERR_NOMEM, "out of memory allocating %zu bytes", n);
  return p;
}

void *tk_calloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) tk_fail(TK_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", count, size);
  return p;
}

char *tk_strdup(const char *s) {
  size_t n = strlen(s ? s : "") + 1;
  char *p = tk_malloc(n);
  if (p) memcpy(p, s ? s : "", n);
  return p;
}

void *tk_alloc_aligned(size_t n) {
  size_t r = (n + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, r ? r : 64);
  if (!p) {
    tk_fail(TK_ERR_NOMEM, "out of memory allocating %zu bytes", n);
    return NULL;
  }
  memset(p, 0, r ? r : 64);
  return p;
}

/* ---- RNG --------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void tk_rng_seed(tk_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tk_rng_u64(tk_rng *r) {
  uint64_t *s = r->s;
  uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return res;
}

double tk_rng_uniform(tk_rng *r) { return (double)(tk_rng_u64(r) >> 11) * 0x1.0p-53; }

double tk_rng_normal(tk_rng *r) {
  double u1 = tk_rng_uniform(r), u2 = tk_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t tk_rng_below(tk_rng *r, uint64_t n) {
  if (n == 0) return 0;
  uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
  do x = tk_rng_u64(r);
  while (x >= lim);
  return x % n;
}

/* ---- files ------------------------------------------------------------------------- */

tk_status tk_write_file_atomic(const char *path, const void *data, size_t n) {
  size_t len = strlen(path);
  char *tmp = tk_malloc(len + 32);
  if (!tmp) return TK_ERR_NOMEM;
  snprintf(tmp, len + 32, "%s.tmp.%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    tk_status st = tk_fail(TK_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    free(tmp);
    return st;
  }
  const char *p = data;
  size_t left = n;
  while (left) {
    ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      tk_status st = tk_fail(TK_ERR_IO, "%s: write failed: %s", path, strerror(errno));
      close(fd);
      unlink(tmp);
      free(tmp);
      return st;
    }
    p += w;
    left -= (size_t)w;
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    tk_status st = tk_fail(TK_ERR_IO, "%s: fsync/close failed: %s", path, strerror(errno));
    unlink(tmp);
    free(tmp);
    return st;
  }
  if (rename(tmp, path) != 0) {
    tk_status st = tk_fail(TK_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    unlink(tmp);
    free(tmp);
    return st;
  }
  free(tmp);
  return TK_OK;
}

tk_status tk_read_file(const char *path, size_t max_bytes, void **data, size_t *n) {
  *data = NULL;
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return tk_fail(TK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat stt;
  if (fstat(fileno(f), &stt) != 0 || !S_ISREG(stt.st_mode)) {
    fclose(f);
    return tk_fail(TK_ERR_IO, "%s: not a regular file", path);
  }
  if ((uint64_t)stt.st_size > max_bytes) {
    fclose(f);
    return tk_fail(TK_ERR_FORMAT, "%s: file is %lld bytes, more than the limit of %zu", path,
                   (long long)stt.st_size, max_bytes);
  }
  size_t sz = (size_t)stt.st_size;
  char *buf = tk_malloc(sz + 1);
  if (!buf) {
    fclose(f);
    return TK_ERR_NOMEM;
  }
  size_t got = fread(buf, 1, sz, f);
  fclose(f);
  if (got != sz) {
    free(buf);
    return tk_fail(TK_ERR_IO, "%s: short read (%zu of %zu bytes)", path, got, sz);
  }
  buf[sz] = 0;
  *data = buf;
  *n = sz;
  return TK_OK;
}

bool tk_parse_fraction(const char *s, double *out) {
  if (!s || !*s) return false;
  char *end;
  errno = 0;
  double a = strtod(s, &end);
  if (end == s || errno) return false;
  if (*end == '/') {
    const char *q = end + 1;
    double b = strtod(q, &end);
    if (end == q || b == 0) return false;
    a /= b;
  }
  if (*end) return false;
  if (!isfinite(a)) return false;
  *out = a;
  return true;
}

double tk_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double tk_median(double *v, int n) {
  for (int a = 1; a < n; a++)
    for (int b = a; b > 0 && v[b] < v[b - 1]; b--) {
      const double t = v[b];
      v[b] = v[b - 1], v[b - 1] = t;
    }
  return n ? v[n / 2] : INFINITY;
}

const tk_embedded_file *tk_embedded_find(const char *path) {
  for (const tk_embedded_file *f = tk_embedded; f->path; f++)
    if (strcmp(f->path, path) == 0) return f;
  return NULL;
}

/* ---- environment overrides (A/B runs) ------------------------------------------------------------ */

bool tk_env_push(const char *spec, tk_env_saved *saved) {
  saved->n = 0;
  /* check the whole spec before setting anything */
  int count = 0;
  for (const char *p = spec; p && *p;) {
    const char *end = strchr(p, ','), *eq = strchr(p, '=');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (!eq || eq >= p + len || eq == p || (size_t)(eq - p) >= sizeof saved->name[0] || ++count > 8) return false;
    p = end ? end + 1 : p + len;
  }
  if (!count) return false;
  for (const char *p = spec; *p;) {
    const char *end = strchr(p, ','), *eq = strchr(p, '=');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    int k = saved->n++;
    memcpy(saved->name[k], p, (size_t)(eq - p));
    saved->name[k][eq - p] = 0;
    const char *old = getenv(saved->name[k]);
    saved->old[k] = old ? strdup(old) : NULL;
    char *value = strndup(eq + 1, len - (size_t)(eq - p) - 1);
    if (value) setenv(saved->name[k], value, 1);
    free(value);
    p = end ? end + 1 : p + len;
  }
  return true;
}

void tk_env_pop(tk_env_saved *saved) {
  for (int k = saved->n - 1; k >= 0; k--) {
    if (saved->old[k]) setenv(saved->name[k], saved->old[k], 1);
    else unsetenv(saved->name[k]);
    free(saved->old[k]);
    saved->old[k] = NULL;
  }
  saved->n = 0;
}
