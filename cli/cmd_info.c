/* cmd_info.c -- `ticket info`: what a model file holds.
 *
 * Header lines (arch, input spec with range and normalisation, classes, provenance, training
 * state), then one row per layer: index, name, op, input and output shape, parameters,
 * non-zeros and sparsity of the weight, dense MACs and MACs over the kept weights per image,
 * then totals.  --json prints the same as one JSON object.
 *
 * MODEL is a model file (.tkt), an architecture file (FlatBuffers JSON of the schema, tensors
 * without data read as zeros), or the name of a zoo architecture embedded in the binary.
 */
#include "cli.h"

#include "../compiler/model.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: ticket info MODEL [--json]\n"
          "\n"
          "Prints the layers of a model with their shapes, parameters, non-zeros, sparsity and MACs\n"
          "per image (dense and over the kept weights), and totals; before them the architecture,\n"
          "the input spec (shape, value range, normalisation), classes, provenance and training state.\n"
          "\n"
          "  MODEL    a model file (.tkt), an architecture file (.json, tensors without data read as\n"
          "           zeros), or a zoo architecture name (e.g. lenet)\n"
          "  --json   print everything as one JSON object\n"
          "  --help   this text\n");
}

/* ---- loading ------------------------------------------------------------------------ */

static bool looks_like_json(const char *buf, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r') continue;
    return buf[i] == '{';
  }
  return false;
}

static tk_status load_any(const char *path, tk_model **out) {
  struct stat sb;
  if (stat(path, &sb) != 0 && !strchr(path, '/') && !strchr(path, '.')) {
    char zoo[300];
    snprintf(zoo, sizeof zoo, "models/%s.json", path);
    const tk_embedded_file *f = tk_embedded_find(zoo);
    if (f) return tk_model_from_json(f->data, zoo, out);
  }
  void *data = NULL;
  size_t n = 0;
  tk_status st = tk_read_file(path, (size_t)1 << 31, &data, &n);
  if (st != TK_OK) return st;
  if (looks_like_json(data, n)) st = tk_model_from_json(data, path, out); /* tk_read_file NUL-terminates */
  else st = tk_model_from_buffer(data, n, path, out);
  free(data);
  return st;
}

/* ---- statistics ------------------------------------------------------------------------ */

typedef struct {
  int64_t params, prunable, kept, macs, sparse_macs;
  double sparsity;
} totals;

static totals model_totals(const tk_model *m) {
  totals t = {0, 0, 0, 0, 0, 0.0};
  for (int i = 0; i < m->n_layers; i++) {
    int64_t d, s;
    tk_layer_macs(m, &m->layers[i], &d, &s);
    t.macs += d;
    t.sparse_macs += s;
    t.params += tk_layer_params(m, &m->layers[i]);
  }
  for (int i = 0; i < m->n_tensors; i++) {
    if (!m->tensors[i].prunable) continue;
    t.prunable += m->tensors[i].numel;
    t.kept += tk_tensor_nnz(&m->tensors[i]);
  }
  t.sparsity = tk_model_sparsity(m);
  return t;
}

/* ---- text ------------------------------------------------------------------------------ */

/* Free text from the file on one line: control characters become spaces. */
static void put_text(FILE *f, const char *s) {
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) fputc(*p < 0x20 ? ' ' : *p, f);
}

static void shape_text(char *buf, size_t cap, tk_shape s) { snprintf(buf, cap, "%dx%dx%d", s.c, s.h, s.w); }

static void print_floats(FILE *f, const float *x, int n) {
  fputc('(', f);
  for (int i = 0; i < n; i++) fprintf(f, "%s%.6g", i ? ", " : "", x[i]);
  fputc(')', f);
}

static void print_text(FILE *f, const char *path, const tk_model *m) {
  fprintf(f, "model       %s (format %u)\n", path, m->format_version);
  fprintf(f, "arch        ");
  put_text(f, m->arch[0] ? m->arch : "(unnamed)");
  fprintf(f, ", %d classes\n", m->classes);
  fprintf(f, "input       %dx%dx%d, range [%g, %g], ", m->in_c, m->in_h, m->in_w, m->lo, m->hi);
  if (m->mean) {
    fprintf(f, "normalised in the model: mean ");
    print_floats(f, m->mean, m->in_c);
    fprintf(f, " std ");
    print_floats(f, m->std, m->in_c);
    fputc('\n', f);
  } else {
    fprintf(f, "no normalisation\n");
  }
  const tk_provenance *p = &m->prov;
  if (p->method || p->source || p->created || p->n_metrics || p->sparsity != 0) {
    fprintf(f, "provenance  method ");
    put_text(f, p->method ? p->method : "-");
    fprintf(f, ", sparsity %.4f", p->sparsity);
    if (p->created) fprintf(f, ", created "), put_text(f, p->created);
    if (p->n_metrics) {
      fprintf(f, ", metrics");
      for (int i = 0; i < p->n_metrics; i++) {
        fputc(' ', f);
        put_text(f, p->metrics[i].name);
        fprintf(f, "=%.6g", p->metrics[i].value);
      }
    }
    fputc('\n', f);
    if (p->source) fprintf(f, "source      "), put_text(f, p->source), fputc('\n', f);
    if (p->notes) fprintf(f, "notes       "), put_text(f, p->notes), fputc('\n', f);
  }
  if (m->train) {
    const tk_train_state *t = m->train;
    fprintf(f, "train state epoch %d, step %" PRId64 ", %d momenta, %d rng words", t->epoch, t->step, t->n_momenta,
            t->n_rng);
    for (int i = 0; i < t->n_best; i++) {
      fprintf(f, "%s", i ? " " : ", best ");
      put_text(f, t->best[i].name);
      fprintf(f, "=%.6g", t->best[i].value);
    }
    fputc('\n', f);
  }
  fputc('\n', f);

  int nw = 4;
  for (int i = 0; i < m->n_layers; i++) {
    int len = (int)strlen(m->layers[i].name);
    if (len > nw) nw = len;
  }
  fprintf(f, "%5s  %-*s  %-13s  %-14s  %-14s  %11s  %11s  %8s  %12s  %12s\n", "#", nw, "name", "op", "input",
          "output", "params", "nonzeros", "sparsity", "MACs(M)", "sp.MACs(M)");
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    char in[48], out[48], nnz[24] = "-", sp[16] = "-", md[24] = "-", ms[24] = "-";
    shape_text(in, sizeof in, l->in);
    shape_text(out, sizeof out, l->out);
    if (l->weight >= 0) {
      const tk_tensor *w = &m->tensors[l->weight];
      int64_t k = tk_tensor_nnz(w);
      snprintf(nnz, sizeof nnz, "%" PRId64, k);
      snprintf(sp, sizeof sp, "%.4f", 1.0 - (double)k / (double)w->numel);
    }
    int64_t d, s;
    tk_layer_macs(m, l, &d, &s);
    if (l->op == TK_OP_CONV2D || l->op == TK_OP_LINEAR) {
      snprintf(md, sizeof md, "%.3f", (double)d / 1e6);
      snprintf(ms, sizeof ms, "%.3f", (double)s / 1e6);
    }
    fprintf(f, "%5d  %-*s  %-13s  %-14s  %-14s  %11" PRId64 "  %11s  %8s  %12s  %12s\n", i, nw, l->name,
            tk_op_name(l->op), in, out, tk_layer_params(m, l), nnz, sp, md, ms);
  }
  totals t = model_totals(m);
  fprintf(f, "\ntotal       %" PRId64 " parameters, %" PRId64 " prunable, %" PRId64 " kept (sparsity %.4f)\n", t.params,
          t.prunable, t.kept, t.sparsity);
  fprintf(f, "MACs/image  %.3f M dense, %.3f M over non-zeros", (double)t.macs / 1e6, (double)t.sparse_macs / 1e6);
  if (t.sparse_macs > 0) fprintf(f, " (%.2fx fewer)", (double)t.macs / (double)t.sparse_macs);
  fputc('\n', f);
}

/* ---- JSON ------------------------------------------------------------------------------ */

static void json_num(FILE *f, double v) {
  if (isfinite(v)) fprintf(f, "%.17g", v);
  else fputs("null", f);
}

static void json_str_or_null(FILE *f, const char *s) {
  if (s) cli_json_string(f, s);
  else fputs("null", f);
}

/* A float32 with the fewest digits that read back as the same float (0.4914, not
 * 0.49140000343322754). */
static void json_float(FILE *f, float x) {
  if (!isfinite(x)) {
    fputs("null", f);
    return;
  }
  char buf[32];
  for (int p = 6; p <= 9; p++) {
    snprintf(buf, sizeof buf, "%.*g", p, (double)x);
    if (strtof(buf, NULL) == x) break;
  }
  fputs(buf, f);
}

static void json_floats(FILE *f, const float *x, int n) {
  if (!x) {
    fputs("null", f);
    return;
  }
  fputc('[', f);
  for (int i = 0; i < n; i++) {
    if (i) fputs(", ", f);
    json_float(f, x[i]);
  }
  fputc(']', f);
}

static void json_shape(FILE *f, tk_shape s) { fprintf(f, "[%d, %d, %d]", s.c, s.h, s.w); }

static void json_metrics(FILE *f, const tk_metric *ms, int n) {
  fputc('{', f);
  for (int i = 0; i < n; i++) {
    if (i) fputs(", ", f);
    cli_json_string(f, ms[i].name);
    fputs(": ", f);
    json_num(f, ms[i].value);
  }
  fputc('}', f);
}

static void print_json(FILE *f, const char *path, const tk_model *m) {
  fputs("{\"file\": ", f);
  cli_json_string(f, path);
  fprintf(f, ", \"format_version\": %u, \"arch\": ", m->format_version);
  cli_json_string(f, m->arch);
  fprintf(f, ", \"classes\": %d,\n \"input\": {\"channels\": %d, \"height\": %d, \"width\": %d, \"min\": ", m->classes,
          m->in_c, m->in_h, m->in_w);
  json_float(f, m->lo);
  fputs(", \"max\": ", f);
  json_float(f, m->hi);
  fputs(", \"mean\": ", f);
  json_floats(f, m->mean, m->in_c);
  fputs(", \"std\": ", f);
  json_floats(f, m->std, m->in_c);
  const tk_provenance *p = &m->prov;
  fputs("},\n \"provenance\": {\"method\": ", f);
  json_str_or_null(f, p->method);
  fputs(", \"sparsity\": ", f);
  json_num(f, p->sparsity);
  fputs(", \"source\": ", f);
  json_str_or_null(f, p->source);
  fputs(", \"created\": ", f);
  json_str_or_null(f, p->created);
  fputs(", \"notes\": ", f);
  json_str_or_null(f, p->notes);
  fputs(", \"metrics\": ", f);
  json_metrics(f, p->metrics, p->n_metrics);
  fputs("},\n \"train_state\": ", f);
  if (m->train) {
    const tk_train_state *t = m->train;
    fprintf(f, "{\"epoch\": %d, \"step\": %" PRId64 ", \"momenta\": %d, \"rng_words\": %d, \"best\": ", t->epoch,
            t->step, t->n_momenta, t->n_rng);
    json_metrics(f, t->best, t->n_best);
    fputc('}', f);
  } else {
    fputs("null", f);
  }
  fputs(",\n \"layers\": [", f);
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    fprintf(f, "%s\n  {\"index\": %d, \"name\": ", i ? "," : "", i);
    cli_json_string(f, l->name);
    fprintf(f, ", \"op\": \"%s\", \"inputs\": [", tk_op_name(l->op));
    for (int k = 0; k < l->n_inputs; k++) fprintf(f, "%s%d", k ? ", " : "", l->inputs[k]);
    fputs("], \"input\": ", f);
    json_shape(f, l->in);
    fputs(", \"output\": ", f);
    json_shape(f, l->out);
    fprintf(f, ", \"params\": %" PRId64 ", \"weight\": ", tk_layer_params(m, l));
    if (l->weight >= 0) {
      const tk_tensor *w = &m->tensors[l->weight];
      int64_t k = tk_tensor_nnz(w);
      cli_json_string(f, w->name);
      fprintf(f, ", \"weight_elements\": %" PRId64 ", \"nonzeros\": %" PRId64 ", \"sparsity\": ", w->numel, k);
      json_num(f, 1.0 - (double)k / (double)w->numel);
    } else {
      fputs("null, \"weight_elements\": 0, \"nonzeros\": null, \"sparsity\": null", f);
    }
    int64_t d, s;
    tk_layer_macs(m, l, &d, &s);
    fprintf(f, ", \"macs\": %" PRId64 ", \"sparse_macs\": %" PRId64 "}", d, s);
  }
  totals t = model_totals(m);
  fprintf(f,
          "],\n \"totals\": {\"params\": %" PRId64 ", \"prunable\": %" PRId64 ", \"kept\": %" PRId64
          ", \"sparsity\": ",
          t.params, t.prunable, t.kept);
  json_num(f, t.sparsity);
  fprintf(f, ", \"macs\": %" PRId64 ", \"sparse_macs\": %" PRId64 ", \"macs_m\": ", t.macs, t.sparse_macs);
  json_num(f, (double)t.macs / 1e6);
  fputs(", \"sparse_macs_m\": ", f);
  json_num(f, (double)t.sparse_macs / 1e6);
  fputs("}}\n", f);
}

/* ---- the command ----------------------------------------------------------------------- */

int cmd_info(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  const char *path = NULL;
  bool json = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json")) json = true;
    else if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("info", "unknown option '%s'", argv[i]);
    else if (path) return cli_usage_error("info", "more than one MODEL given ('%s' and '%s')", path, argv[i]);
    else path = argv[i];
  }
  if (!path) return cli_usage_error("info", "no MODEL given");
  tk_model *m = NULL;
  tk_status st = load_any(path, &m);
  if (st != TK_OK) return cli_error("info", st);
  if (json) print_json(stdout, path, m);
  else print_text(stdout, path, m);
  tk_model_free(m);
  if (fflush(stdout) != 0) {
    fprintf(stderr, "ticket info: error: cannot write the output\n");
    return 3;
  }
  return 0;
}
