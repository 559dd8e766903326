/* zoo.h -- the model zoo: architecture files under models/ (FlatBuffers JSON of the
 * schema, no tensor data), embedded in the binary, and the reference initialisations. */
#ifndef TK_ZOO_H
#define TK_ZOO_H

#include "model.h"

/* NULL-terminated list of architecture names ("lenet", "resnet18", ...). */
const char *const *tk_zoo_names(void);
/* Builds arch for `classes` classes and input c x h x w (0 = the architecture's default),
 * reshaping the tensors that depend on them, and initialises every tensor with its rule
 * (tk_model_init_params). */
tk_status tk_zoo_create(const char *arch, int classes, int c, int h, int w, uint64_t seed, tk_model **out);
/* Fill every tensor by its init rule with a deterministic generator. */
tk_status tk_model_init_params(tk_model *m, uint64_t seed);

#endif
