/* prune.h -- finding masks: score every prunable weight, keep the highest scores.
 *
 * A method is a scorer (larger score = more important) plus the shared machinery here:
 *   1. positions that are already pruned stay pruned (they are pruned first);
 *   2. tk_prune_select keeps the top scores, globally over every prunable tensor or per
 *      tensor (HYDRA's layer-wise k: the same fraction in every layer); ties go by position,
 *      the lower index pruned first, so results are deterministic;
 *   3. an iterative scorer runs `iterations` rounds towards the target with the exponential
 *      schedule of SynFlow's prune_loop (round i of n keeps density d^((i+1)/n));
 *   4. IMP rewinds: after the mask is chosen on the trained weights, every tensor is reset to
 *      the rewind model's values and the mask applied (Double-Win pruning_with_rewind).
 * Counts: a sparsity S over N weights prunes floor(S*N + 1e-6) of them (HYDRA's
 * int((1-k)*numel), robust to decimal fractions); an IMP round prunes round(rate * kept)
 * more, rounding half to even (torch.nn.utils.prune's amount), 20% by default.
 *
 * Methods: magnitude, random, imp, synflow (data free, 100 rounds), snip (a prune set of data).
 * How to add one (HYDRA's learned scores, say): write a tk_prune_score_fn that fills scores[t]
 * for every prunable tensor t of the model as it is (masks applied, pruned data 0), add it to
 * the table in prune.c, and give it a default `iterations`.  Scorers that need data get it
 * through tk_prune_opts; gradient-driven scorers create an engine per round (the mask changed).
 */
#ifndef TK_PRUNE_H
#define TK_PRUNE_H

#include "data.h"
#include "engine.h"

typedef enum { TK_SCOPE_GLOBAL = 0, TK_SCOPE_LAYER } tk_prune_scope;

typedef struct {
  const char *method;       /* a name from tk_prune_methods() */
  double sparsity;          /* target fraction pruned over the prunable weights; < 0 = method default */
  tk_prune_scope scope;
  uint64_t seed;            /* random */
  double rate;              /* imp: fraction of the kept weights pruned in this round (0.2) */
  const tk_model *rewind;   /* imp: the weights to rewind to (same tensors) */
  int iterations;           /* scoring rounds; 0 = the method's default */
  /* for data- or gradient-driven scorers (synflow, snip; not used by magnitude, random, imp): */
  const tk_dataset *data;   /* snip: the prune set */
  int engine_kind;          /* tk_engine_kind of the scoring engine, -1: dense if built, else reference */
  int batch;                /* snip: images per forward/backward (256) */
  int progress;             /* a progress line over the rounds: 1 always, 0 on a terminal, -1 never */
} tk_prune_opts;

void tk_prune_opts_default(tk_prune_opts *o);

/* scores[t] (numel floats) for every prunable tensor t; NULL for the others. */
typedef tk_status (*tk_prune_score_fn)(tk_model *m, const tk_prune_opts *o, int round, float *const *scores);

typedef struct {
  const char *name;
  tk_prune_score_fn score;
  int default_iterations;
  int needs_rewind;
  const char *summary;
} tk_prune_method;

/* The known methods, terminated by name == NULL. */
const tk_prune_method *tk_prune_methods(void);
const tk_prune_method *tk_prune_find(const char *name);

/* Per-tensor outcome (for reports). */
typedef struct {
  int tensor;
  int64_t numel, kept_before, kept_after;
} tk_prune_tensor_report;

typedef struct {
  int n;                           /* prunable tensors */
  tk_prune_tensor_report *tensors; /* free() */
  int64_t total, kept_before, kept_after;
  double sparsity_before, sparsity_after;
} tk_prune_report;

/* Keep the top scores: after the call exactly `target` positions are pruned in each group
 * (the whole model for global, each tensor for layer), where target = floor(S*N + 1e-6) for
 * sparsity S.  Already pruned positions count towards the target.  Writes masks (pruned
 * data becomes 0).  Fails when the target is below the current number of pruned positions. */
tk_status tk_prune_select(tk_model *m, float *const *scores, double sparsity, tk_prune_scope scope);
/* The same with explicit targets: targets[t] per prunable tensor (layer) or targets[0] (global). */
tk_status tk_prune_select_counts(tk_model *m, float *const *scores, const int64_t *targets, tk_prune_scope scope);

/* Runs a method end to end on m: scoring rounds, selection, rewinding, provenance (method,
 * sparsity, notes, created; stale metrics and any TrainState dropped).  rep may be NULL. */
tk_status tk_prune(tk_model *m, const tk_prune_opts *o, tk_prune_report *rep);

/* Weights pruned of n at sparsity S: floor(S*n + 1e-6), clamped to [0, n]. */
int64_t tk_prune_count(double sparsity, int64_t n);
/* The k-th smallest (0-based) of v[0..n); v is reordered.  Linear on average. */
float tk_prune_kth_smallest(float *v, int64_t n, int64_t k);

/* Rounds half to even (Python's round()), for IMP counts. */
int64_t tk_round_half_even(double x);

#endif
