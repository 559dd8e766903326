/* cache.h -- the on-disk cache of kernel objects.
 *
 * One file per object, <dir>/<32 hex digits of the key>.tko, where the key is a 128-bit hash
 * of everything that affects the code (the emitted body: template text and version, layer
 * shape, the pattern for unrolled code and the values for value-baked code; plus the
 * toolchain identity: clang binary, flags, host CPU).  Entry layout (little-endian):
 *   "TKOBJ\0\0\1" | u64 payload bytes | u64 key[0] | u64 key[1] | u64 checksum[0] | u64 checksum[1] | payload
 * Writes are atomic (temporary file + rename), so concurrent readers and writers (threads
 * or processes) only ever see whole entries; an entry that fails its checks (short, wrong
 * key, checksum) is removed and rebuilt by the caller.  Nothing is ever evicted:
 * delete the directory to reclaim space. */
#ifndef TK_CACHE_H
#define TK_CACHE_H

#include "../runtime/util.h"

typedef struct {
  char dir[4096];
  int disabled;       /* no_cache: lookups miss, writes are skipped */
} tk_cache;

/* dir: explicit directory, or NULL for $TICKET_CACHE, else $XDG_CACHE_HOME/ticket, else
 * ~/.cache/ticket.  Creates it (and parents).  An unusable directory is an error. */
tk_status tk_cache_open(tk_cache *c, const char *dir, int disabled);
/* 1 = hit (*obj malloc'ed), 0 = miss (absent, or corrupt and removed). */
int tk_cache_get(const tk_cache *c, const uint64_t key[2], void **obj, size_t *n);
tk_status tk_cache_put(const tk_cache *c, const uint64_t key[2], const void *obj, size_t n);
void tk_cache_entry_path(const tk_cache *c, const uint64_t key[2], char *out, size_t n);

/* Process-wide counters (for tests and --verbose). */
typedef struct { long hits, misses, corrupt, writes, compiled; } tk_cache_stats;
void tk_cache_stats_get(tk_cache_stats *s);
void tk_cache_stats_add_compiled(long n);

#endif
