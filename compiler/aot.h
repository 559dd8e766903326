/* aot.h -- ahead-of-time artifacts: standalone C (NAME.c + NAME.h), shared objects and
 * executables with no dependency beyond libc (and libm), for edge devices.
 *
 * Pipeline (tk_aot_generate keeps it visible in one function):
 *   model (verified, shapes inferred)
 *     -> passes (passes.c: BN folding for frozen inference, relu fusion marks)
 *     -> invariants again (tk_model_infer)
 *     -> AOT plan: per conv/linear layer a kernel variant (sparse-table, dense, empty),
 *        activation slots by liveness, scratch sizes
 *     -> emit C from templates/aot_*.c.in and templates/aot_header.h.in
 *   tk_aot_build then writes the sources and, for `so` and `exe`, runs the C compiler
 *   (host cc, or TRIPLE-gcc for --target) and renames the result into place.
 *
 * The generated C ABI (see templates/aot_header.h.in):
 *   NAME_ctx *NAME_create(int max_batch);
 *   int NAME_run(NAME_ctx *, const float *x, int n, float *logits);   x raw pixels (n,C,H,W)
 *   void NAME_free(NAME_ctx *);    const char *NAME_info(void);
 *   enum { NAME_classes, NAME_input_c, NAME_input_h, NAME_input_w };  NAME_input_shape[3]
 */
#ifndef TK_AOT_H
#define TK_AOT_H

#include "model.h"
#include "passes.h"

#include <stdio.h>

#define TK_AOT_GENERATOR_VERSION 1

typedef enum { TK_AOT_EMIT_C = 0, TK_AOT_EMIT_SO, TK_AOT_EMIT_EXE } tk_aot_emit;

typedef enum {
  TK_AOT_OP = 0,        /* a portable op from the prelude (pool, add, relu, ...) */
  TK_AOT_SPARSE_TABLE,  /* conv/linear over a CSR table of the kept weights */
  TK_AOT_DENSE,         /* conv/linear without pruned weights: direct dense loops */
  TK_AOT_EMPTY,         /* every weight pruned: the output is the bias */
  TK_AOT_ALIAS          /* no code: flatten, or a relu done by its producer */
} tk_aot_variant;

const char *tk_aot_variant_name(tk_aot_variant v);

typedef struct {
  tk_aot_emit emit;
  const char *name;     /* C identifier prefix of the ABI; NULL: "model" */
  const char *source;   /* the model's file name, for provenance and messages; may be NULL */
  const char *target;   /* cross triple (e.g. aarch64-linux-gnu); NULL = host */
  const char *cc;       /* C compiler; NULL: $CC or "cc" on the host, "<target>-gcc" for a target */
  const char *cflags;   /* extra flags, space-separated, appended last */
  int portable;         /* host build without -march=native */
  int openmp;           /* build with -fopenmp (the generated code runs without it too) */
  int static_link;      /* -1 = default (static for a cross executable), 0 no, 1 yes */
  tk_pass_opts passes;
  int verbose;          /* print the compiler command line to stderr */
} tk_aot_opts;

void tk_aot_opts_default(tk_aot_opts *o);

/* What the generator decided for one layer of the model after the passes. */
typedef struct {
  char *name;
  tk_op op;
  tk_aot_variant variant;
  int relu;               /* relu epilogue fused */
  int64_t nnz, numel;     /* weights kept / total (conv and linear) */
  int slot;               /* activation slot of the output, -1 for aliases */
  int line_begin, line_end; /* lines of the layer's code and tables in NAME.c */
  char reason[128];
} tk_aot_layer;

typedef struct {
  char *name;             /* the ABI prefix */
  char *c_src, *h_src, *main_src; /* NAME.c, NAME.h, NAME_main.c (for executables) */
  uint64_t hash;          /* first word of tk_model_hash (emit.h) of the source model */
  tk_pass_stats passes;
  int n_layers;           /* layers of the model after the passes */
  tk_aot_layer *layers;
  int n_slots;
  int64_t activation_floats; /* per image, all slots */
  int64_t pad_floats;        /* per image, conv scratch */
  int64_t table_bytes;       /* static weights and index tables */
  int in_c, in_h, in_w, classes;
} tk_aot_unit;

/* A valid ABI name from a file name: the base name up to its first '.', other characters
 * replaced by '_' ("models/lenet-90.tkt" -> "lenet_90").  Caller frees. */
char *tk_aot_name_from_path(const char *path);

/* Passes, plan and emission; m is not changed.  Errors name the layer. */
tk_status tk_aot_generate(const tk_model *m, const tk_aot_opts *o, tk_aot_unit **out);
void tk_aot_unit_free(tk_aot_unit *u);

/* What tk_aot_build wrote. */
typedef struct {
  int n_files;
  char *files[4];
  char *command;      /* the compiler command line, when one ran */
  char *diagnostics;  /* the compiler's output (warnings; errors on failure), or NULL */
} tk_aot_outputs;

/* Write the artifact of kind o->emit to `out`:
 *   c    out is a directory (existing, or given with a trailing '/'): DIR/NAME.c, DIR/NAME.h;
 *        otherwise a base name: OUT.c and OUT.h (a trailing .c or .h is dropped)
 *   so   out is the shared object; NAME.h is written beside it (same directory)
 *   exe  out is the executable
 * Files appear atomically (temporary file, rename).  A compiler failure returns
 * TK_ERR_COMPILE naming the model and the layer whose code the first error points at;
 * res->diagnostics holds the compiler's output.  A missing compiler is TK_ERR_UNSUPPORTED. */
tk_status tk_aot_build(const tk_aot_unit *u, const tk_aot_opts *o, const char *out, tk_aot_outputs *res);
void tk_aot_outputs_free(tk_aot_outputs *r);

/* The compiler a build with these options would use, or NULL with an error recorded when it
 * is not found in PATH. Caller frees. */
char *tk_aot_find_cc(const tk_aot_opts *o);

/* Per-layer listing (for --dump-plan). */
void tk_aot_dump_plan(FILE *f, const tk_aot_unit *u);

#endif
