/* model.h -- the in-memory graph IR shared by the loader, the compiler and the runtime.
 *
 * A model is a list of tensors and a list of layers in execution order.  Value 0 is the
 * input image batch; layer i produces value i+1; the last value is the logits.  Every value
 * has a per-image shape (c, h, w); a flat vector (after flatten or linear) has h = w = 1.
 * Activations at run time are NCHW contiguous: value v of a batch of n is n*c*h*w floats.
 *
 * Conventions (see schema/ticket.fbs):
 *   conv weight (O, I/groups, kh, kw)      linear weight (O, I)
 *   batchnorm weight/bias/mean/var (C)     scale weight (C, 1, 1)
 *   mask: one byte per element (1 = kept), NULL = dense.  Pruned data is exactly zero.
 *
 * How to add an op: add it to TK_OP_LIST below, to the schema enum (same order), to
 * tk_model_infer() in model.c, to the reference engine (runtime/ref/ref.c, forward and
 * backward), and to the fast executor (runtime/exec.c).  Tests pick it up from the list.
 */
#ifndef TK_MODEL_H
#define TK_MODEL_H

#include "../runtime/util.h"
#include "ticket.h"

#include <stdbool.h>
#include <stdint.h>

/* X(enum, name-in-files-and-cli) -- order equals schema Op enum */
#define TK_OP_LIST(X)                 \
  X(TK_OP_CONV2D, "conv2d")           \
  X(TK_OP_LINEAR, "linear")           \
  X(TK_OP_BATCHNORM, "batchnorm")     \
  X(TK_OP_RELU, "relu")               \
  X(TK_OP_MAXPOOL, "maxpool")         \
  X(TK_OP_AVGPOOL, "avgpool")         \
  X(TK_OP_GLOBALAVGPOOL, "globalavgpool") \
  X(TK_OP_ADD, "add")                 \
  X(TK_OP_FLATTEN, "flatten")         \
  X(TK_OP_SCALE, "scale")

typedef enum {
#define X(e, s) e,
  TK_OP_LIST(X)
#undef X
  TK_OP_COUNT
} tk_op;

const char *tk_op_name(tk_op op);

/* tensor init rules; order equals schema Init enum */
typedef enum {
  TK_INIT_NONE = 0, TK_INIT_ZEROS, TK_INIT_ONES, TK_INIT_KAIMING_NORMAL_FAN_OUT,
  TK_INIT_KAIMING_NORMAL_FAN_IN, TK_INIT_NORMAL_001, TK_INIT_TORCH_DEFAULT,
  TK_INIT_TORCH_DEFAULT_BIAS, TK_INIT_KAIMING_NORMAL_FAN_OUT_RELU, TK_INIT_COUNT
} tk_init;

/* Bounds that keep hostile files from asking for absurd memory. */
#define TK_MAX_DIM 65536            /* any single dimension */
#define TK_MAX_TENSOR_ELEMS (1LL << 31) /* elements per tensor */
#define TK_MAX_VALUE_ELEMS (1LL << 28)  /* elements of one activation per image */
#define TK_MAX_LAYERS 4096
#define TK_MAX_TENSORS 16384
#define TK_MAX_NAME 256

typedef struct {
  char *name;
  int ndim;
  int64_t shape[4];
  int64_t numel;
  float *data;    /* numel floats (64-byte aligned), always present after load/init */
  uint8_t *mask;  /* numel bytes, 1 = kept, NULL = dense */
  float *scores;  /* HYDRA popup scores or NULL */
  tk_init init;
  int64_t init_fan_in;
  bool prunable, trainable;
} tk_tensor;

typedef struct { int c, h, w; } tk_shape;

static inline int64_t tk_shape_numel(tk_shape s) { return (int64_t)s.c * s.h * s.w; }

typedef struct {
  tk_op op;
  char *name;
  int n_inputs;
  int inputs[2];                   /* value ids */
  int weight, bias, mean, var;     /* tensor indices or -1 */
  int kh, kw, sh, sw, ph, pw, dh, dw, groups;
  float eps, momentum;
  int out_features;                /* linear; 0 in files that leave it to the weight */
  /* filled by tk_model_infer(): */
  tk_shape in, out;                /* in = shape of inputs[0] */
} tk_layer;

typedef struct { char *name; double value; } tk_metric;

typedef struct {
  char *method, *source, *created, *notes;
  double sparsity;
  int n_metrics;
  tk_metric *metrics;
} tk_provenance;

typedef struct {
  int epoch;
  int64_t step;
  int n_rng;
  uint64_t *rng;
  int n_momenta;
  tk_tensor *momenta; /* names match model tensors; data only */
  char *config, *log;
  int n_best;
  tk_metric *best;
} tk_train_state;

struct tk_model {
  uint32_t format_version;
  char *arch;
  int classes;
  int in_c, in_h, in_w;
  float *mean, *std; /* in_c each, or NULL: no normalisation */
  float lo, hi;      /* valid pixel range */
  int n_tensors, cap_tensors;
  tk_tensor *tensors;
  int n_layers, cap_layers;
  tk_layer *layers;
  tk_shape *values;  /* n_layers + 1, filled by tk_model_infer() */
  tk_provenance prov;
  tk_train_state *train; /* NULL when absent */
};

/* ---- construction (used by the loader, the zoo, tests) ----------------------------- */
tk_model *tk_model_new(const char *arch, int classes, int c, int h, int w);
/* Adds a tensor with zeroed data; returns its index or -1 (error recorded). */
int tk_model_add_tensor(tk_model *m, const char *name, int ndim, const int64_t *shape);
/* Adds a layer (fields copied; `in`/`out` ignored); returns its index or -1. */
int tk_model_add_layer(tk_model *m, const tk_layer *l);
/* A layer template with defaults: no tensors, stride/dilation/groups 1, eps 1e-5, momentum 0.1. */
tk_layer tk_layer_default(tk_op op, const char *name, int input);
int tk_model_find_tensor(const tk_model *m, const char *name);
tk_model *tk_model_clone(const tk_model *m);   /* deep copy, or NULL */
/* Free everything a training state holds and zero it (the struct itself stays). */
void tk_train_state_clear(tk_train_state *ts);
tk_status tk_tensor_set_mask(tk_tensor *t, const uint8_t *mask); /* copies; NULL clears */
void tk_tensor_apply_mask(tk_tensor *t);        /* zero the pruned data */

/* Shape inference and every invariant (shapes agree, tensors exist and are used by the
 * right kind of layer, masks sized right, inputs refer to earlier values, sizes bounded).
 * Fills layers[i].in/out and values[].  Errors name the layer and the field. */
tk_status tk_model_infer(tk_model *m);

/* ---- statistics --------------------------------------------------------------------- */
int64_t tk_tensor_nnz(const tk_tensor *t); /* kept elements (mask count, or numel) */
/* MACs per image of a layer: dense, and over kept weights. 0 for ops without weights. */
void tk_layer_macs(const tk_model *m, const tk_layer *l, int64_t *dense, int64_t *sparse);
int64_t tk_layer_params(const tk_model *m, const tk_layer *l);
double tk_model_sparsity(const tk_model *m); /* over prunable tensors */

/* ---- files (compiler/load.cc) ------------------------------------------------------- */
/* load = read + Verifier + semantic checks; errors start with the path. */
tk_status tk_model_from_buffer(const void *buf, size_t n, const char *what, tk_model **out);
tk_status tk_model_to_buffer(const tk_model *m, void **buf, size_t *n); /* free() buf */
/* Architecture file (FlatBuffers JSON of the schema, no tensor data). */
tk_status tk_model_from_json(const char *json, const char *what, tk_model **out);

#endif
