/* cmd_plan.c -- `ticket plan`: the compiler's per-layer kernel choices and why.
 *
 * One row per conv2d / linear layer: index, name, weight shape, output map, sparsity,
 * non-zeros, the chosen variant, the vectorised dimension, the estimated (or, with --tune,
 * measured) time per call of the sparse and the dense kernel, and the one-line reason.
 * --json prints the same as one JSON object.
 */
#include "cli.h"

#include "../compiler/compile.h"
#include "../compiler/zoo.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: ticket plan MODEL [--batch N] [--threads T] [--tune] [--training] [--force VARIANT]\n"
          "                   [--random-mask S] [--cache DIR] [--json]\n"
          "\n"
          "Shows which kernel the compiler picks for every conv2d and linear layer, with the\n"
          "estimated time per call of the sparse and dense kernels and a one-line reason.\n"
          "\n"
          "  MODEL               a model file (.tkt), an architecture file (.json), or a zoo name\n"
          "  --batch N           plan for batches of N images (default 1)\n"
          "  --threads T         plan for T threads (default: all)\n"
          "  --tune              build the candidates and time them instead of trusting the cost model\n"
          "  --training          also plan the gradient kernels (no value baking)\n"
          "  --force VARIANT     every layer on one variant: dense, sparse-table, sparse-unrolled,\n"
          "                      value-baked, reference\n"
          "  --random-mask S     prune every prunable weight uniformly at random to sparsity S first\n"
          "                      (to explore plans without a pruned model file; as in ticket bench;\n"
          "                      --random-sparsity S is the same)\n"
          "  --cache DIR         object cache for --tune (default $TICKET_CACHE or ~/.cache/ticket)\n"
          "  --json              print the plan as one JSON object\n"
          "  --help              this text\n"
          "\n"
          "Column vec: what the sparse-table kernel's vectors run over, per pass: \"spatial\" (the\n"
          "flattened output positions), \"batch\" (16 images per vector, every planned pass), or\n"
          "\"batch:\" and the passes on the batch: f forward, i input gradient, w weight gradient.\n"
          "\"+t\" (training): the input gradient runs as the forward of the transposed layer (its\n"
          "own kernel, on the forward's vectors).\n");
}

static bool looks_like_json(const char *buf, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r') continue;
    return buf[i] == '{';
  }
  return false;
}

static tk_status load_model(const char *path, tk_model **out) {
  struct stat sb;
  if (stat(path, &sb) != 0 && !strchr(path, '/') && !strchr(path, '.')) {
    for (const char *const *z = tk_zoo_names(); z && *z; z++)
      if (!strcmp(*z, path)) return tk_zoo_create(path, 0, 0, 0, 0, 1, out);
  }
  void *data = NULL;
  size_t n = 0;
  tk_status st = tk_read_file(path, (size_t)1 << 31, &data, &n);
  if (st != TK_OK) return st;
  if (looks_like_json(data, n)) st = tk_model_from_json(data, path, out);
  else st = tk_model_from_buffer(data, n, path, out);
  free(data);
  return st;
}

static tk_status random_prune(tk_model *m, double s) {
  tk_rng r;
  tk_rng_seed(&r, 1);
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    uint8_t *mask = tk_malloc((size_t)tt->numel);
    if (!mask) return TK_ERR_NOMEM;
    for (int64_t k = 0; k < tt->numel; k++) mask[k] = tk_rng_uniform(&r) >= s && (!tt->mask || tt->mask[k]);
    tk_status st = tk_tensor_set_mask(tt, mask);
    free(mask);
    if (st != TK_OK) return st;
  }
  return TK_OK;
}

static int parse_variant(const char *s) {
  for (int v = TK_VARIANT_REFERENCE; v < TK_VARIANT_COUNT; v++)
    if (!strcmp(s, tk_variant_name((tk_variant)v))) return v;
  return -1;
}

static void json_num(FILE *f, double v) {
  if (isfinite(v)) fprintf(f, "%.3f", v);
  else fputs("null", f);
}

int cmd_plan(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  const char *path = NULL;
  int json = 0;
  double rs = -1;
  tk_compile_opts o;
  tk_compile_opts_default(&o);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    char *end = NULL;
    if (!strcmp(a, "--json")) {
      json = 1;
    } else if (!strcmp(a, "--tune")) {
      o.tune = 1;
    } else if (!strcmp(a, "--training")) {
      o.training = 1;
    } else if (!strcmp(a, "--batch") || !strcmp(a, "--threads")) {
      if (!v) return cli_usage_error("plan", "%s needs a value", a);
      long x = strtol(v, &end, 10);
      if (*end || x < 1 || x > 65536) return cli_usage_error("plan", "%s: '%s' is not a count in 1..65536", a, v);
      if (a[2] == 'b') o.batch = (int)x;
      else o.threads = (int)x;
      i++;
    } else if (!strcmp(a, "--force")) {
      if (!v) return cli_usage_error("plan", "--force needs a variant");
      int f = parse_variant(v);
      if (f < 0 || f == TK_VARIANT_EMPTY)
        return cli_usage_error("plan", "--force: unknown variant '%s' (dense, sparse-table, sparse-unrolled, "
                                       "value-baked, reference)", v);
      o.force = f;
      i++;
    } else if (!strcmp(a, "--random-mask") || !strcmp(a, "--random-sparsity")) { /* bench's name, and the old one */
      if (!v || !tk_parse_fraction(v, &rs) || !(rs >= 0 && rs <= 1))
        return cli_usage_error("plan", "%s needs a fraction in [0, 1]", a);
      i++;
    } else if (!strcmp(a, "--cache")) {
      if (!v) return cli_usage_error("plan", "--cache needs a directory");
      o.cache_dir = v;
      i++;
    } else if (a[0] == '-' && a[1]) {
      return cli_usage_error("plan", "unknown option %s", a);
    } else if (path) {
      return cli_usage_error("plan", "more than one MODEL (%s and %s)", path, a);
    } else {
      path = a;
    }
  }
  if (!path) return cli_usage_error("plan", "no MODEL given");
  if (o.batch == 0) o.batch = 1;
  tk_model *m = NULL;
  tk_status st = load_model(path, &m);
  if (st == TK_OK && rs >= 0) st = random_prune(m, rs);
  if (st == TK_OK) st = tk_model_infer(m);
  if (st != TK_OK) {
    tk_model_free(m);
    return cli_error("plan", st);
  }
  tk_plan *p = NULL;
  if ((st = tk_plan_make(m, &o, &p)) != TK_OK) {
    tk_model_free(m);
    return cli_error("plan", st);
  }
  FILE *f = stdout;
  double tot_s = 0, tot_d = 0;
  int counts[TK_VARIANT_COUNT] = {0};
  if (json) {
    fprintf(f, "{\"model\": ");
    cli_json_string(f, path);
    fprintf(f, ", \"batch\": %d, \"threads\": %d, \"tuned\": %s, \"training\": %s, \"layers\": [", p->batch,
            p->threads, o.tune ? "true" : "false", o.training ? "true" : "false");
  } else {
    fprintf(f, "plan for %s: batch %d, %d thread(s)%s%s\n\n", path, p->batch, p->threads, o.tune ? ", tuned" : "",
            o.training ? ", training" : "");
    fprintf(f, "%4s  %-24s %-16s %-9s %8s %9s  %-15s %-8s %10s %10s  %s\n", "#", "layer", "weight", "out", "sparsity",
            "nnz", "variant", "vec", "sparse us", "dense us", "reason");
  }
  int first = 1;
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    const tk_layer_plan *lp = &p->layers[i];
    if (lp->variant == TK_VARIANT_NONE) continue;
    const tk_tensor *w = &m->tensors[l->weight];
    int64_t nnz = tk_tensor_nnz(w);
    double sp = w->numel ? 1.0 - (double)nnz / (double)w->numel : 0;
    char ws[64] = "", os[32];
    for (int d = 0; d < w->ndim; d++)
      snprintf(ws + strlen(ws), sizeof ws - strlen(ws), "%s%lld", d ? "x" : "", (long long)w->shape[d]);
    snprintf(os, sizeof os, "%dx%dx%d", l->out.c, l->out.h, l->out.w);
    char vec[16];
    const int all = o.training ? TK_VB_ALL : TK_VB_FWD, vb = lp->vec_batch & all;
    if (!vb || vb == all) snprintf(vec, sizeof vec, "%s", vb ? "batch" : "spatial");
    else snprintf(vec, sizeof vec, "batch:%s%s%s", vb & TK_VB_FWD ? "f" : "", vb & TK_VB_BWD_INPUT ? "i" : "",
                  vb & TK_VB_BWD_WEIGHT ? "w" : "");
    if (o.training && (lp->vec_batch & TK_VB_BWD_T)) /* the input gradient as the transposed layer's forward */
      snprintf(vec + strlen(vec), sizeof vec - strlen(vec), "+t");
    double chosen = lp->variant == TK_VARIANT_DENSE ? lp->est_dense_us : lp->est_sparse_us;
    if (isfinite(chosen)) tot_s += chosen;
    if (isfinite(lp->est_dense_us)) tot_d += lp->est_dense_us;
    counts[lp->variant]++;
    if (json) {
      fprintf(f, "%s\n  {\"index\": %d, \"name\": ", first ? "" : ",", i);
      cli_json_string(f, l->name);
      fprintf(f, ", \"op\": \"%s\", \"weight\": \"%s\", \"out\": \"%s\", \"sparsity\": %.6f, \"nnz\": %lld, "
                 "\"variant\": \"%s\", \"vec\": \"%s\", \"est_sparse_us\": ",
              tk_op_name(l->op), ws, os, sp, (long long)nnz, tk_variant_name(lp->variant), vec);
      json_num(f, lp->est_sparse_us);
      fprintf(f, ", \"est_dense_us\": ");
      json_num(f, lp->est_dense_us);
      fprintf(f, ", \"reason\": ");
      cli_json_string(f, lp->reason);
      fputc('}', f);
    } else {
      fprintf(f, "%4d  %-24.24s %-16s %-9s %8.4f %9lld  %-15s %-8s %10.1f %10.1f  %s\n", i, l->name, ws, os, sp,
              (long long)nnz, tk_variant_name(lp->variant), vec, lp->est_sparse_us, lp->est_dense_us, lp->reason);
    }
    first = 0;
  }
  if (json) {
    fprintf(f, "\n], \"total_chosen_us\": %.3f, \"total_dense_us\": %.3f, \"counts\": {", tot_s, tot_d);
    int c1 = 1;
    for (int v = TK_VARIANT_REFERENCE; v < TK_VARIANT_COUNT; v++)
      if (counts[v]) fprintf(f, "%s\"%s\": %d", c1 ? "" : ", ", tk_variant_name((tk_variant)v), counts[v]), c1 = 0;
    fprintf(f, "}}\n");
  } else {
    fprintf(f, "\ntotal per call: %.1f us as planned, %.1f us all dense (%.2fx)%s\n", tot_s, tot_d,
            tot_s > 0 ? tot_d / tot_s : 0.0, o.tune ? " (measured)" : " (cost model)");
  }
  tk_plan_free(p);
  tk_model_free(m);
  return 0;
}
