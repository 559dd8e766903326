/* ticket.h -- the public C API of Ticket.
 *
 * Opaque handles, one status enum, create/free pairs.  Everything else is internal.
 * Activations are float32 NCHW (batch, channels, height, width), contiguous; logits are
 * (batch, classes).  Inputs are raw pixels in the model's value range: the model applies
 * its own normalisation.
 *
 * A failing call returns a status other than TK_OK and records a one-line message
 * (naming the file, tensor, layer or field) that tk_last_error() returns.
 */
#ifndef TICKET_H
#define TICKET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TK_API __attribute__((visibility("default")))
#else
#define TK_API
#endif

typedef enum {
  TK_OK = 0,
  TK_ERR_IO,        /* file missing, unreadable, short write */
  TK_ERR_FORMAT,    /* corrupt or hostile file: verifier or semantic check failed */
  TK_ERR_SHAPE,     /* shapes disagree */
  TK_ERR_ARG,       /* bad argument from the caller */
  TK_ERR_NOMEM,     /* allocation failed or size absurd */
  TK_ERR_COMPILE,   /* code generation or toolchain failure */
  TK_ERR_UNSUPPORTED,
  TK_ERR_INTERNAL
} tk_status;

typedef struct tk_model tk_model;   /* a network, its tensors and masks */
typedef struct tk_engine tk_engine; /* something that runs a model: reference or compiled */

TK_API const char *tk_status_name(tk_status s);
TK_API const char *tk_last_error(void);

/* Model files */
TK_API tk_status tk_model_load(const char *path, tk_model **out);
TK_API tk_status tk_model_save(const tk_model *m, const char *path); /* atomic */
TK_API void tk_model_free(tk_model *m);
TK_API int tk_model_classes(const tk_model *m);
TK_API void tk_model_input_shape(const tk_model *m, int *c, int *h, int *w);

/* Engines.  `max_batch` bounds every later call; all memory is allocated here. */
typedef enum { TK_ENGINE_REFERENCE = 0, TK_ENGINE_COMPILED = 1, TK_ENGINE_DENSE = 2 } tk_engine_kind;
TK_API tk_status tk_engine_create(tk_model *m, tk_engine_kind kind, int max_batch, tk_engine **out);
TK_API void tk_engine_free(tk_engine *e);
/* logits (n, classes) for x (n, C, H, W); BatchNorm in eval mode. */
TK_API tk_status tk_infer(tk_engine *e, const float *x, int n, float *logits);

#ifdef __cplusplus
}
#endif
#endif
