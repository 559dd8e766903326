/* evaluate.c -- the batch evaluation loop (SA, RA, per-class accuracy, confusion counts,
 * images/s) and the progress line; see evaluate.h. */
#include "evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- statistics ------------------------------------------------------------------------------ */

tk_status tk_eval_stats_init(tk_eval_stats *s, int classes) {
  memset(s, 0, sizeof *s);
  if (classes < 1) return tk_fail(TK_ERR_ARG, "evaluate: %d classes", classes);
  s->classes = classes;
  s->class_n = tk_calloc((size_t)classes, sizeof(long));
  s->class_correct = tk_calloc((size_t)classes, sizeof(long));
  s->confusion = tk_calloc((size_t)classes * (size_t)classes, sizeof(long));
  if (!s->class_n || !s->class_correct || !s->confusion) {
    tk_eval_stats_free(s);
    return TK_ERR_NOMEM;
  }
  return TK_OK;
}

void tk_eval_stats_free(tk_eval_stats *s) {
  free(s->class_n);
  free(s->class_correct);
  free(s->confusion);
  memset(s, 0, sizeof *s);
}

void tk_eval_stats_reset(tk_eval_stats *s) {
  const size_t K = (size_t)s->classes;
  s->n = s->correct = 0;
  s->loss_sum = 0;
  memset(s->class_n, 0, K * sizeof(long));
  memset(s->class_correct, 0, K * sizeof(long));
  memset(s->confusion, 0, K * K * sizeof(long));
}

void tk_eval_stats_add(tk_eval_stats *s, const float *logits, const int *y, int n) {
  const int K = s->classes;
  for (int i = 0; i < n; i++) {
    const float *z = logits + (size_t)i * K;
    int arg = 0;
    for (int k = 1; k < K; k++)
      if (z[k] > z[arg]) arg = k;
    const double mx = z[arg];
    double sum = 0;
    for (int k = 0; k < K; k++) sum += exp((double)z[k] - mx);
    const int t = y[i];
    s->loss_sum += mx + log(sum) - (double)z[t];
    s->n++;
    s->class_n[t]++;
    s->confusion[(size_t)t * K + arg]++;
    if (arg == t) {
      s->correct++;
      s->class_correct[t]++;
    }
  }
}

double tk_eval_stats_accuracy(const tk_eval_stats *s) { return s->n ? (double)s->correct / (double)s->n : 0.0; }

double tk_eval_stats_class_accuracy(const tk_eval_stats *s, int k) {
  return s->class_n[k] ? (double)s->class_correct[k] / (double)s->class_n[k] : NAN;
}

double tk_eval_stats_loss(const tk_eval_stats *s) { return s->n ? s->loss_sum / (double)s->n : 0.0; }

static void json_number(FILE *f, double v) {
  if (isfinite(v)) fprintf(f, "%.10g", v);
  else fputs("null", f);
}

void tk_eval_stats_write_json(FILE *f, const tk_eval_stats *s, int with_confusion) {
  fprintf(f, "{\"n\":%ld,\"correct\":%ld,\"accuracy\":", s->n, s->correct);
  json_number(f, tk_eval_stats_accuracy(s));
  fputs(",\"loss\":", f);
  json_number(f, tk_eval_stats_loss(s));
  fputs(",\"per_class\":[", f);
  for (int k = 0; k < s->classes; k++) {
    fprintf(f, "%s{\"n\":%ld,\"correct\":%ld,\"accuracy\":", k ? "," : "", s->class_n[k], s->class_correct[k]);
    json_number(f, tk_eval_stats_class_accuracy(s, k));
    fputc('}', f);
  }
  fputc(']', f);
  if (with_confusion) {
    fputs(",\"confusion\":[", f);
    for (int t = 0; t < s->classes; t++) {
      fputs(t ? ",[" : "[", f);
      for (int k = 0; k < s->classes; k++) fprintf(f, "%s%ld", k ? "," : "", s->confusion[(size_t)t * s->classes + k]);
      fputc(']', f);
    }
    fputc(']', f);
  }
  fputc('}', f);
}

/* ---- progress ---------------------------------------------------------------------------------- */

void tk_progress_start(tk_progress *p, const char *what, long total, int mode) {
  memset(p, 0, sizeof *p);
  p->what = what;
  p->unit = "images";
  p->total = total;
  p->tty = isatty(STDERR_FILENO);
  p->on = mode > 0 || (mode == 0 && p->tty);
  p->t0 = p->last = tk_now();
}

void tk_progress_update(tk_progress *p, long done, const char *extra) {
  if (!p->on) return;
  const double now = tk_now(), el = now - p->t0;
  if (el < 1.0 || now - p->last < (p->tty ? 0.5 : 10.0)) return;
  p->last = now;
  const double rate = done / el, eta = rate > 0 ? (p->total - done) / rate : 0;
  fprintf(stderr, "%s%s %ld/%ld (%.0f%%) %.1f %s/s, %.0f s left%s%s%s", p->tty ? "\r\033[K" : "", p->what, done,
          p->total, p->total ? 100.0 * done / p->total : 0.0, rate, p->unit, eta, extra ? ", " : "", extra ? extra : "",
          p->tty ? "" : "\n");
  fflush(stderr);
  p->printed = 1;
}

void tk_progress_end(tk_progress *p) {
  if (p->on && p->printed && p->tty) fputs("\r\033[K", stderr);
  p->printed = 0;
}

/* ---- loops --------------------------------------------------------------------------------------- */

tk_status tk_eval_check_data(const tk_model *m, const tk_dataset *d) {
  if (d->c != m->in_c || d->h != m->in_h || d->w != m->in_w)
    return tk_fail(TK_ERR_SHAPE, "%s: images are %dx%dx%d but the model takes %dx%dx%d", d->name, d->c, d->h, d->w,
                   m->in_c, m->in_h, m->in_w);
  for (int i = 0; i < d->n; i++)
    if (d->y[i] < 0 || d->y[i] >= m->classes)
      return tk_fail(TK_ERR_SHAPE, "%s: label %d of image %d is not one of the model's %d classes", d->name, d->y[i], i,
                     m->classes);
  return TK_OK;
}

static tk_status check_batch(tk_engine *e, const tk_dataset *d, int batch) {
  if (batch < 1 || batch > e->max_batch)
    return tk_fail(TK_ERR_ARG, "batch: %d outside 1..%d (the engine's max_batch)", batch, e->max_batch);
  if (d->n < 1) return tk_fail(TK_ERR_ARG, "%s: no images", d->name);
  return tk_eval_check_data(e->m, d);
}

tk_status tk_evaluate(tk_engine *e, const tk_dataset *d, int batch, int progress, tk_eval_stats *clean,
                      double *seconds) {
  tk_status st = check_batch(e, d, batch);
  if (st != TK_OK) return st;
  const size_t D = (size_t)d->c * d->h * d->w, K = (size_t)e->m->classes;
  float *logits = tk_alloc_aligned((size_t)batch * K * sizeof(float));
  if (!logits) return TK_ERR_NOMEM;
  tk_progress p;
  tk_progress_start(&p, "eval", d->n, progress);
  const double t0 = tk_now();
  for (int off = 0; off < d->n; off += batch) {
    const int nb = d->n - off < batch ? d->n - off : batch;
    if ((st = tk_infer(e, d->x + off * D, nb, logits)) != TK_OK) break;
    tk_eval_stats_add(clean, logits, d->y + off, nb);
    char extra[64];
    snprintf(extra, sizeof extra, "SA %.2f%%", 100.0 * tk_eval_stats_accuracy(clean));
    tk_progress_update(&p, off + nb, extra);
  }
  if (seconds) *seconds = tk_now() - t0;
  tk_progress_end(&p);
  free(logits);
  return st;
}

tk_status tk_evaluate_attack(tk_engine *e, tk_attacker *a, const tk_dataset *d, int batch, tk_rng *rng,
                             const float *delta0, int progress, tk_eval_stats *clean, tk_eval_stats *adv,
                             float *x_adv_all, int *fooled_all, double *seconds) {
  tk_status st = check_batch(e, d, batch);
  if (st != TK_OK) return st;
  const size_t D = (size_t)d->c * d->h * d->w, K = (size_t)e->m->classes;
  float *logits = tk_alloc_aligned((size_t)batch * K * sizeof(float));
  float *xb = x_adv_all ? NULL : tk_alloc_aligned((size_t)batch * D * sizeof(float));
  int *fooled = tk_calloc((size_t)batch, sizeof(int));
  if (!logits || (!x_adv_all && !xb) || !fooled) {
    free(logits);
    free(xb);
    free(fooled);
    return TK_ERR_NOMEM;
  }
  tk_progress p;
  tk_progress_start(&p, "attack", d->n, progress);
  const double t0 = tk_now();
  for (int off = 0; off < d->n; off += batch) {
    const int nb = d->n - off < batch ? d->n - off : batch;
    const float *x = d->x + off * D;
    const int *y = d->y + off;
    float *xa = x_adv_all ? x_adv_all + off * D : xb;
    if ((st = tk_infer(e, x, nb, logits)) != TK_OK) break;
    tk_eval_stats_add(clean, logits, y, nb);
    st = delta0 ? tk_attacker_run_from(a, x, y, nb, delta0 + off * D, rng, xa, fooled)
                : tk_attacker_run(a, x, y, nb, rng, xa, fooled);
    if (st != TK_OK) break;
    if (fooled_all) memcpy(fooled_all + off, fooled, (size_t)nb * sizeof(int));
    if ((st = tk_infer(e, xa, nb, logits)) != TK_OK) break;
    tk_eval_stats_add(adv, logits, y, nb);
    char extra[64];
    snprintf(extra, sizeof extra, "SA %.2f%% RA %.2f%%", 100.0 * tk_eval_stats_accuracy(clean),
             100.0 * tk_eval_stats_accuracy(adv));
    tk_progress_update(&p, off + nb, extra);
  }
  if (seconds) *seconds = tk_now() - t0;
  tk_progress_end(&p);
  free(logits);
  free(xb);
  free(fooled);
  return st;
}

/* ---- engines ------------------------------------------------------------------------------------- */

bool tk_engine_kind_parse(const char *s, int *kind) {
  if (!strcmp(s, "reference")) *kind = TK_ENGINE_REFERENCE;
  else if (!strcmp(s, "compiled")) *kind = TK_ENGINE_COMPILED;
  else if (!strcmp(s, "dense")) *kind = TK_ENGINE_DENSE;
  else if (!strcmp(s, "auto")) *kind = -1;
  else return false;
  return true;
}

tk_status tk_engine_create_best(tk_model *m, int kind, int max_batch, tk_engine **out, char *note, size_t note_size) {
  if (note && note_size) note[0] = 0;
  if (kind >= 0) return tk_engine_create(m, (tk_engine_kind)kind, max_batch, out);
  static const tk_engine_kind order[] = {TK_ENGINE_COMPILED, TK_ENGINE_DENSE};
  static const char *const names[] = {"compiled", "dense"};
  for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
    tk_status st = tk_engine_create(m, order[i], max_batch, out);
    if (st == TK_OK) return st;
    if (st != TK_ERR_UNSUPPORTED && note && note_size && !note[0])
      snprintf(note, note_size, "the %s engine failed (%s); using a slower one", names[i], tk_last_error());
  }
  return tk_engine_create(m, TK_ENGINE_REFERENCE, max_batch, out);
}
