/* jit.c -- LLVM-C ORC LLJIT: load relocatable objects produced by clang (toolchain.c) into
 * this process and look up their functions.  The only file of Ticket that includes llvm-c. */
#include "jit.h"

#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct tk_jit {
  LLVMOrcLLJITRef lljit;
  int refs;
  pthread_mutex_t lock;
};

bool tk_jit_built(char *why, size_t why_len) {
  (void)why, (void)why_len;
  return true;
}

static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;
static int g_init_failed;
static void init_llvm(void) {
  g_init_failed = LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter();
}

/* Turns an LLVMErrorRef into tk_fail (consumes it). */
static tk_status llvm_fail(LLVMErrorRef e, const char *what) {
  char *msg = LLVMGetErrorMessage(e);
  tk_status st = tk_fail(TK_ERR_COMPILE, "%s: LLVM ORC: %s", what, msg ? msg : "unknown error");
  LLVMDisposeErrorMessage(msg);
  return st;
}

tk_status tk_jit_create(tk_jit **out) {
  *out = NULL;
  pthread_once(&g_init_once, init_llvm);
  if (g_init_failed) return tk_fail(TK_ERR_UNSUPPORTED, "LLVM: the native target is not available");
  tk_jit *j = tk_calloc(1, sizeof *j);
  if (!j) return TK_ERR_NOMEM;
  LLVMErrorRef e = LLVMOrcCreateLLJIT(&j->lljit, NULL);
  if (e) {
    free(j);
    return llvm_fail(e, "creating the JIT");
  }
  LLVMOrcDefinitionGeneratorRef gen;
  e = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(j->lljit), NULL, NULL);
  if (e) {
    LLVMOrcDisposeLLJIT(j->lljit);
    free(j);
    return llvm_fail(e, "resolving host symbols");
  }
  LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(j->lljit), gen);
  j->refs = 1;
  pthread_mutex_init(&j->lock, NULL);
  *out = j;
  return TK_OK;
}

tk_status tk_jit_add_object(tk_jit *j, const void *obj, size_t n, const char *what) {
  LLVMMemoryBufferRef mb = LLVMCreateMemoryBufferWithMemoryRangeCopy(obj, n, what);
  if (!mb) return tk_fail(TK_ERR_NOMEM, "%s: out of memory copying the object", what);
  pthread_mutex_lock(&j->lock);
  LLVMErrorRef e = LLVMOrcLLJITAddObjectFile(j->lljit, LLVMOrcLLJITGetMainJITDylib(j->lljit), mb);
  pthread_mutex_unlock(&j->lock);
  return e ? llvm_fail(e, what) : TK_OK;
}

void *tk_jit_lookup(tk_jit *j, const char *symbol) {
  LLVMOrcExecutorAddress addr = 0;
  pthread_mutex_lock(&j->lock);
  LLVMErrorRef e = LLVMOrcLLJITLookup(j->lljit, &addr, symbol);
  pthread_mutex_unlock(&j->lock);
  if (e) {
    llvm_fail(e, symbol);
    return NULL;
  }
  if (!addr) tk_fail(TK_ERR_COMPILE, "%s: symbol has address 0", symbol);
  return (void *)(uintptr_t)addr;
}

void tk_jit_retain(tk_jit *j) {
  pthread_mutex_lock(&j->lock);
  j->refs++;
  pthread_mutex_unlock(&j->lock);
}

void tk_jit_release(tk_jit *j) {
  if (!j) return;
  pthread_mutex_lock(&j->lock);
  int left = --j->refs;
  pthread_mutex_unlock(&j->lock);
  if (left) return;
  LLVMErrorRef e = LLVMOrcDisposeLLJIT(j->lljit);
  if (e) LLVMConsumeError(e);
  pthread_mutex_destroy(&j->lock);
  free(j);
}
