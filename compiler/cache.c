/* cache.c -- the on-disk object cache (layout and guarantees in cache.h). */
#include "cache.h"
#include "emit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "TKOBJ\0\0\1"
#define HDR 48

static long g_hits, g_misses, g_corrupt, g_writes, g_compiled;

void tk_cache_stats_get(tk_cache_stats *s) {
  s->hits = __atomic_load_n(&g_hits, __ATOMIC_RELAXED);
  s->misses = __atomic_load_n(&g_misses, __ATOMIC_RELAXED);
  s->corrupt = __atomic_load_n(&g_corrupt, __ATOMIC_RELAXED);
  s->writes = __atomic_load_n(&g_writes, __ATOMIC_RELAXED);
  s->compiled = __atomic_load_n(&g_compiled, __ATOMIC_RELAXED);
}

void tk_cache_stats_add_compiled(long n) { __atomic_add_fetch(&g_compiled, n, __ATOMIC_RELAXED); }

static tk_status mkdir_p(const char *dir) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", dir);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return tk_fail(TK_ERR_IO, "cache: cannot create %s: %s", tmp, strerror(errno));
    *p = '/';
  }
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return tk_fail(TK_ERR_IO, "cache: cannot create %s: %s", tmp, strerror(errno));
  struct stat st;
  if (stat(tmp, &st) != 0 || !S_ISDIR(st.st_mode)) return tk_fail(TK_ERR_IO, "cache: %s is not a directory", tmp);
  if (access(tmp, W_OK | X_OK) != 0) return tk_fail(TK_ERR_IO, "cache: %s is not writable", tmp);
  return TK_OK;
}

tk_status tk_cache_open(tk_cache *c, const char *dir, int disabled) {
  memset(c, 0, sizeof *c);
  c->disabled = disabled;
  if (disabled) return TK_OK;
  const char *env = getenv("TICKET_CACHE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  if (dir && *dir) snprintf(c->dir, sizeof c->dir, "%s", dir);
  else if (env && *env) snprintf(c->dir, sizeof c->dir, "%s", env);
  else if (xdg && *xdg) snprintf(c->dir, sizeof c->dir, "%s/ticket", xdg);
  else if (home && *home) snprintf(c->dir, sizeof c->dir, "%s/.cache/ticket", home);
  else return tk_fail(TK_ERR_IO, "cache: no directory (set TICKET_CACHE or HOME)");
  return mkdir_p(c->dir);
}

void tk_cache_entry_path(const tk_cache *c, const uint64_t key[2], char *out, size_t n) {
  snprintf(out, n, "%s/%016" PRIx64 "%016" PRIx64 ".tko", c->dir, key[0], key[1]);
}

static void checksum(const void *p, size_t n, uint64_t out[2]) {
  tk_hash h;
  tk_hash_init(&h, 0xC4EC);
  tk_hash_update(&h, p, n);
  tk_hash_final(&h, out);
}

int tk_cache_get(const tk_cache *c, const uint64_t key[2], void **obj, size_t *n) {
  *obj = NULL;
  *n = 0;
  if (c->disabled) return 0;
  char path[4200];
  tk_cache_entry_path(c, key, path, sizeof path);
  if (access(path, F_OK) != 0) {
    __atomic_add_fetch(&g_misses, 1, __ATOMIC_RELAXED);
    return 0;
  }
  void *data = NULL;
  size_t len = 0;
  int ok = 0;
  if (tk_read_file(path, (size_t)1 << 31, &data, &len) == TK_OK && len >= HDR && !memcmp(data, MAGIC, 8)) {
    uint64_t h[5], sum[2];
    memcpy(h, (char *)data + 8, sizeof h);
    if (h[0] == len - HDR && h[1] == key[0] && h[2] == key[1]) {
      checksum((char *)data + HDR, len - HDR, sum);
      ok = sum[0] == h[3] && sum[1] == h[4];
    }
  }
  if (!ok) {
    /* corrupt or foreign: remove it so that the rebuilt object replaces it */
    free(data);
    unlink(path);
    __atomic_add_fetch(&g_corrupt, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&g_misses, 1, __ATOMIC_RELAXED);
    return 0;
  }
  memmove(data, (char *)data + HDR, len - HDR);
  *obj = data;
  *n = len - HDR;
  __atomic_add_fetch(&g_hits, 1, __ATOMIC_RELAXED);
  return 1;
}

tk_status tk_cache_put(const tk_cache *c, const uint64_t key[2], const void *obj, size_t n) {
  if (c->disabled) return TK_OK;
  char *buf = tk_malloc(HDR + n);
  if (!buf) return TK_ERR_NOMEM;
  uint64_t h[5] = {(uint64_t)n, key[0], key[1], 0, 0};
  checksum(obj, n, h + 3);
  memcpy(buf, MAGIC, 8);
  memcpy(buf + 8, h, sizeof h);
  memcpy(buf + HDR, obj, n);
  char path[4200];
  tk_cache_entry_path(c, key, path, sizeof path);
  tk_status st = tk_write_file_atomic(path, buf, HDR + n);
  free(buf);
  if (st == TK_OK) __atomic_add_fetch(&g_writes, 1, __ATOMIC_RELAXED);
  return st;
}
