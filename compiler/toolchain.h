/* toolchain.h -- the C compiler that turns emitted kernel sources into objects: finding
 * clang-16, its flags, an identity string for cache keys, and compiling many translation
 * units with parallel clang subprocesses (crash-isolated; no OpenMP in generated code). */
#ifndef TK_TOOLCHAIN_H
#define TK_TOOLCHAIN_H

#include "../runtime/util.h"

/* Path of the clang to use: $TICKET_CLANG, else the one found at configure time, else
 * clang-16 / clang on PATH.  NULL (and `why` filled) when none is executable. */
const char *tk_cc_path(char *why, size_t why_len);
/* Flags used for every kernel object (also part of the cache key). */
const char *tk_cc_flags(void);
/* Everything about the toolchain that changes the objects: clang path, size and mtime,
 * flags, and the host CPU (model and feature flags, since the code is -march=native).
 * A short printable string, computed once. */
const char *tk_cc_identity(void);

typedef struct {
  const char *name;   /* for messages, e.g. "layer 3 (layer1.0.conv1)" */
  const char *src;    /* C source */
  size_t src_len;
  void *obj;          /* out: malloc'ed object file bytes */
  size_t obj_len;
} tk_cc_unit;

/* Compile every unit with up to `jobs` clang processes (0 = number of CPUs), each compiling a
 * group of units balanced by source size.  `extra` adds flags (e.g. "-Werror"), may be NULL.
 * On failure: returns TK_ERR_COMPILE with a one-line message naming the first failing unit,
 * and writes clang's diagnostics to stderr. */
tk_status tk_cc_compile(tk_cc_unit *units, int n, int jobs, const char *extra);

#endif
