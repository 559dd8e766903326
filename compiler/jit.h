/* jit.h -- loading kernel objects into the process with LLVM's ORC LLJIT (compiler/jit.c, the
 * only file that includes llvm-c).  Symbols the objects need (memset, libm) resolve from the
 * host process.  A tk_jit is reference-counted: every kernel built from it holds a reference
 * and the JIT (with its code) goes away with the last one. */
#ifndef TK_JIT_H
#define TK_JIT_H

#include "../runtime/util.h"

typedef struct tk_jit tk_jit;

/* false (and `why` filled) when this build has no JIT (TICKET_JIT=OFF). */
bool tk_jit_built(char *why, size_t why_len);
tk_status tk_jit_create(tk_jit **out);                 /* refcount 1 */
/* Adds a relocatable object; `what` names it in errors (e.g. the layer). */
tk_status tk_jit_add_object(tk_jit *j, const void *obj, size_t n, const char *what);
/* Address of a symbol defined by the added objects (links them on first use), or NULL with
 * the error recorded.  With TICKET_PERF_MAP=1 in the environment when the JIT was created, each
 * function looked up is also appended to /tmp/perf-<pid>.map ("ADDR SIZE NAME", hex, the size
 * from the object's symbol table), where `perf report` finds the names of JIT code. */
void *tk_jit_lookup(tk_jit *j, const char *symbol);
void tk_jit_retain(tk_jit *j);
void tk_jit_release(tk_jit *j);                        /* frees at zero; NULL is fine */

#endif
