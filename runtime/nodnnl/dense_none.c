/* dense_none.c -- the dense kernel provider of builds without oneDNN (-DTICKET_DNNL=OFF).
 * Every create fails with TK_ERR_UNSUPPORTED; the compiled engine then uses the reference
 * kernel for layers the plan gives to oneDNN, and the dense engine is unavailable. */
#include "../dense.h"

int tk_dense_available(void) { return 0; }

tk_status tk_kernel_dense_create_ext(const tk_model *m, int layer, int max_batch, int shared_scratch,
                                     tk_kernel **out) {
  (void)m, (void)max_batch, (void)shared_scratch;
  *out = NULL;
  return tk_fail(TK_ERR_UNSUPPORTED, "layer %d: this build has no oneDNN (configured with -DTICKET_DNNL=OFF)", layer);
}

tk_status tk_kernel_dense_create_fold(const tk_model *m, int layer, int max_batch, int shared_scratch, int fold_mode,
                                      tk_kernel **out) {
  (void)fold_mode;
  return tk_kernel_dense_create_ext(m, layer, max_batch, shared_scratch, out);
}

tk_status tk_kernel_dense_create(const tk_model *m, int layer, int max_batch, tk_kernel **out) {
  return tk_kernel_dense_create_ext(m, layer, max_batch, 0, out);
}

size_t tk_kernel_dense_scratch_size(const tk_kernel *k) {
  (void)k;
  return 0;
}

void tk_kernel_dense_set_scratch(tk_kernel *k, void *scratch) { (void)k, (void)scratch; }

const char *tk_kernel_dense_impl(const tk_kernel *k) {
  (void)k;
  return "none";
}
