/* evaluate.h -- the batch evaluation loop shared by `ticket eval`, `ticket attack` and the
 * validation passes of training: standard accuracy (SA), robust accuracy (RA: accuracy on the
 * attack's adversarial examples), per-class accuracy, confusion counts, mean cross-entropy,
 * images per second, and a progress line on stderr for long jobs.
 *
 * Every accuracy here is measured with BatchNorm in eval mode (tk_infer), whatever mode the
 * attack itself used.  Buffers are allocated once per call, never per batch. */
#ifndef TK_EVALUATE_H
#define TK_EVALUATE_H

#include "attack.h"
#include "data.h"

#include <stdio.h>

typedef struct {
  int classes;
  long n, correct;
  long *class_n, *class_correct; /* (classes) */
  long *confusion;               /* (classes, classes): [true label][predicted] */
  double loss_sum;               /* sum over examples of the softmax cross-entropy */
} tk_eval_stats;

tk_status tk_eval_stats_init(tk_eval_stats *s, int classes);
void tk_eval_stats_free(tk_eval_stats *s);
void tk_eval_stats_reset(tk_eval_stats *s);
/* Adds a batch: logits (n, classes), labels (n). */
void tk_eval_stats_add(tk_eval_stats *s, const float *logits, const int *y, int n);
double tk_eval_stats_accuracy(const tk_eval_stats *s);            /* correct / n, 0 when empty */
double tk_eval_stats_class_accuracy(const tk_eval_stats *s, int k); /* NaN when class k is absent */
double tk_eval_stats_loss(const tk_eval_stats *s);                /* mean cross-entropy */
/* {"n":..,"correct":..,"accuracy":..,"loss":..,"per_class":[{"n":..,"correct":..,"accuracy":..},..]
 *  [,"confusion":[[..],..]]} */
void tk_eval_stats_write_json(FILE *f, const tk_eval_stats *s, int with_confusion);

/* Progress on stderr: shown when `mode` > 0, or when `mode` == 0 and stderr is a terminal;
 * nothing for the first second, then at most twice a second (a rewritten line on a terminal,
 * a line every 10 s otherwise). */
typedef struct {
  const char *what;
  const char *unit; /* what is counted: "images" (set by start; change it after) */
  long total;
  int on, tty, printed;
  double t0, last;
} tk_progress;
void tk_progress_start(tk_progress *p, const char *what, long total, int mode);
void tk_progress_update(tk_progress *p, long done, const char *extra);
void tk_progress_end(tk_progress *p);

/* The data set fits the model: same image shape, labels below the model's classes. */
tk_status tk_eval_check_data(const tk_model *m, const tk_dataset *d);

/* SA over the whole data set in batches of `batch` (<= the engine's max_batch). */
tk_status tk_evaluate(tk_engine *e, const tk_dataset *d, int batch, int progress, tk_eval_stats *clean,
                      double *seconds);

/* Runs attacker `a` over the data set: clean statistics, statistics on the adversarial
 * examples, and optionally every adversarial example (x_adv_all: (d->n, C, H, W)).
 * delta0 (d->n, C, H, W), when given, replaces the random start of the first restart.
 * fooled_all (d->n), when given, receives the attacker's own verdicts. */
tk_status tk_evaluate_attack(tk_engine *e, tk_attacker *a, const tk_dataset *d, int batch, tk_rng *rng,
                             const float *delta0, int progress, tk_eval_stats *clean, tk_eval_stats *adv,
                             float *x_adv_all, int *fooled_all, double *seconds);

/* "reference", "compiled", "dense" -> kind; "auto" -> *kind = -1.  false for anything else. */
bool tk_engine_kind_parse(const char *s, int *kind);
/* Creates the engine of `kind`, or with kind -1 the fastest that this build has (compiled,
 * then dense, then reference); *note receives a one-line reason when a faster one was skipped
 * (empty otherwise). */
tk_status tk_engine_create_best(tk_model *m, int kind, int max_batch, tk_engine **out, char *note, size_t note_size);

#endif
