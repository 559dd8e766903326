/* tiny_cnn.h -- the small model and data the trainer tests share (test_train, test_hydra).
 *
 * input (2, 6, 6) [normalised] -> conv 3x3 pad 1 (4, bias) -> batchnorm -> relu -> pool 2 ->
 * flatten (36) -> linear (5); conv and linear weights prunable, tensors in the order of
 * TINY_*; values from a seeded generator. */
#ifndef TK_TINY_CNN_H
#define TK_TINY_CNN_H

#include "runtime/data.h"
#include "compiler/model.h"

#include <stdint.h>

enum { TINY_IC = 2, TINY_IH = 6, TINY_IW = 6, TINY_NCLS = 5 };
enum { TINY_CW, TINY_CB, TINY_G, TINY_B, TINY_RM, TINY_RV, TINY_FW, TINY_FB };

/* pool: TK_OP_MAXPOOL or TK_OP_AVGPOOL; normalise: per-channel input mean/std; sparsity > 0:
 * random masks on the prunable weights (an entry kept where a uniform draw >= sparsity) */
tk_model *tiny_cnn(const char *name, uint64_t seed, tk_op pool, int normalise, double sparsity);
/* images in [0, 1] whose labels depend on them (so training has something to learn) */
tk_dataset *tiny_data(int n, uint64_t seed);
void tiny_data_free(tk_dataset *d);

#endif
