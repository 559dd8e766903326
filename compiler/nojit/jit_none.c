/* jit_none.c -- the JIT interface of a build without LLVM (TICKET_JIT=OFF): every call says
 * so, and the planner falls back to the dense and reference kernels. */
#include "../jit.h"

bool tk_jit_built(char *why, size_t why_len) {
  if (why) snprintf(why, why_len, "this build has no JIT (configured with TICKET_JIT=OFF)");
  return false;
}

tk_status tk_jit_create(tk_jit **out) {
  *out = NULL;
  return tk_fail(TK_ERR_UNSUPPORTED, "this build has no JIT (configured with TICKET_JIT=OFF)");
}

tk_status tk_jit_add_object(tk_jit *j, const void *obj, size_t n, const char *what) {
  (void)j, (void)obj, (void)n;
  return tk_fail(TK_ERR_UNSUPPORTED, "%s: this build has no JIT", what);
}

void *tk_jit_lookup(tk_jit *j, const char *symbol) {
  (void)j;
  tk_fail(TK_ERR_UNSUPPORTED, "%s: this build has no JIT", symbol);
  return NULL;
}

void tk_jit_retain(tk_jit *j) { (void)j; }
void tk_jit_release(tk_jit *j) { (void)j; }
