/* cmd_run.c -- `ticket run`: logits for a batch in a .npy file, and with labels the loss,
 * the input gradient and the parameter gradients.
 *
 * The batch goes through the engine in one piece when it fits; in eval mode a large batch is
 * split into chunks (--batch, or automatically so that the reference engine's activations
 * stay within about 1 GB) and the gradients of the mean loss are summed over the chunks, so
 * the results equal those of one pass.  Train-mode BatchNorm uses the statistics of the whole
 * batch and therefore never splits it.
 */
#include "cli.h"

#include "../runtime/engine.h"
#include "../runtime/npy.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AUTO_CHUNK_BYTES (1024.0 * 1024.0 * 1024.0)

static void usage(FILE *f) {
  fprintf(f,
          "usage: ticket run MODEL --input X.npy [-o LOGITS.npy] [--labels Y.npy] [--input-grad DX.npy]\n"
          "                  [--param-grads G.tkt] [--bn eval|train] [--save-model OUT.tkt]\n"
          "                  [--engine reference|compiled|dense] [--batch B] [--json]\n"
          "\n"
          "Runs the model on a batch of raw pixels X (n, C, H, W), float32 or float64, whose shape\n"
          "must match the model's input.\n"
          "\n"
          "  --input X.npy         the batch (required)\n"
          "  -o, --output Y.npy    write the logits (n, classes) as float32\n"
          "  --labels Y.npy        integer labels (n): print the mean softmax cross-entropy and the\n"
          "                        accuracy, and allow the gradient outputs below\n"
          "  --input-grad DX.npy   write dL/dX (n, C, H, W) with respect to the raw pixels\n"
          "  --param-grads G.tkt   write a copy of the model whose trainable tensors hold dL/dtensor\n"
          "                        (masks dropped; other tensors keep their data)\n"
          "  --bn eval|train       BatchNorm with running statistics (default) or batch statistics;\n"
          "                        train mode updates the running statistics\n"
          "  --save-model OUT.tkt  write the model after the forward pass\n"
          "  --engine KIND         reference (default), compiled or dense\n"
          "  --batch B             largest chunk sent through the engine at once (eval mode)\n"
          "  --json                print the results as one JSON object\n"
          "\n"
          "L is the mean over the batch of the softmax cross-entropy.\n");
}

/* A JSON number, or null when it is not finite. */
static void json_num(FILE *f, double v) {
  if (isfinite(v)) fprintf(f, "%.17g", v);
  else fputs("null", f);
}

static void json_path(FILE *f, const char *key, const char *path, int last) {
  fprintf(f, "\"%s\": ", key);
  if (path) cli_json_string(f, path);
  else fputs("null", f);
  fputs(last ? "" : ", ", f);
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t len = (size_t)snprintf(buf, cap, "(");
  for (int d = 0; d < ndim && len < cap; d++)
    len += (size_t)snprintf(buf + len, cap - len, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (len < cap) snprintf(buf + len, cap - len, ndim == 1 ? ",)" : ")"); /* Python's (n,) */
}

/* Bytes of activations per image the reference engine keeps (values, their gradients, scratch). */
static double ref_bytes_per_image(const tk_model *m) {
  double total = 0, largest = 0;
  for (int v = 0; v <= m->n_layers; v++) {
    double e = (double)tk_shape_numel(m->values[v]);
    total += 2 * e;
    if (e > largest) largest = e;
  }
  return (total + largest) * sizeof(float);
}

typedef struct {
  const char *model, *input, *output, *labels, *input_grad, *param_grads, *save_model;
  tk_bn_mode bn;
  tk_engine_kind engine;
  const char *engine_name;
  long batch; /* 0 = automatic */
  int json;
} run_args;

static int parse_args(int argc, char **argv, run_args *a) {
  memset(a, 0, sizeof *a);
  a->bn = TK_BN_EVAL;
  a->engine = TK_ENGINE_REFERENCE;
  a->engine_name = "reference";
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--json")) {
      a->json = 1;
      continue;
    }
    if (arg[0] != '-' || !arg[1]) {
      if (a->model) return cli_usage_error("run", "more than one model given ('%s' and '%s')", a->model, arg);
      a->model = arg;
      continue;
    }
    /* options with a value: "--opt VALUE" or "--opt=VALUE" */
    static const char *const names[] = {"--input", "-o", "--output", "--labels", "--input-grad",
                                        "--param-grads", "--bn", "--save-model", "--engine", "--batch"};
    const char *val = NULL;
    int which = -1;
    for (int k = 0; k < (int)(sizeof names / sizeof *names); k++) {
      size_t len = strlen(names[k]);
      if (!strcmp(arg, names[k])) {
        if (i + 1 >= argc) return cli_usage_error("run", "%s needs a value", arg);
        val = argv[++i];
        which = k;
        break;
      }
      if (!strncmp(arg, names[k], len) && arg[len] == '=') {
        val = arg + len + 1;
        which = k;
        break;
      }
    }
    if (which < 0) return cli_usage_error("run", "unknown option '%s'", arg);
    if (!*val) return cli_usage_error("run", "%s: empty value", names[which]);
    switch (which) {
    case 0: a->input = val; break;
    case 1:
    case 2: a->output = val; break;
    case 3: a->labels = val; break;
    case 4: a->input_grad = val; break;
    case 5: a->param_grads = val; break;
    case 6:
      if (!strcmp(val, "eval")) a->bn = TK_BN_EVAL;
      else if (!strcmp(val, "train")) a->bn = TK_BN_TRAIN;
      else return cli_usage_error("run", "--bn: '%s' is neither eval nor train", val);
      break;
    case 7: a->save_model = val; break;
    case 8:
      if (!strcmp(val, "reference")) a->engine = TK_ENGINE_REFERENCE;
      else if (!strcmp(val, "compiled")) a->engine = TK_ENGINE_COMPILED;
      else if (!strcmp(val, "dense")) a->engine = TK_ENGINE_DENSE;
      else return cli_usage_error("run", "--engine: '%s' is not reference, compiled or dense", val);
      a->engine_name = val;
      break;
    case 9: {
      char *end;
      a->batch = strtol(val, &end, 10);
      if (*end || a->batch < 1 || a->batch > INT_MAX)
        return cli_usage_error("run", "--batch: '%s' is not a positive integer", val);
      break;
    }
    }
  }
  if (!a->model) return cli_usage_error("run", "no model given");
  if (!a->input) return cli_usage_error("run", "--input X.npy is required");
  if ((a->input_grad || a->param_grads) && !a->labels)
    return cli_usage_error("run", "--input-grad and --param-grads need --labels (the gradient of the loss)");
  return 0;
}

int cmd_run(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  run_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc;

  tk_model *m = NULL, *gm = NULL;
  tk_engine *e = NULL;
  float *x = NULL, *logits = NULL, *dlogits = NULL, *dx = NULL;
  int *y = NULL;
  double **gsum = NULL;
  int ndim;
  int64_t shape[8];
  tk_status st;
  rc = 1;

  if ((st = tk_model_load(a.model, &m)) != TK_OK) {
    rc = cli_error("run", st);
    goto done;
  }
  const int classes = m->classes;
  if ((st = tk_npy_read_f32(a.input, &ndim, shape, &x)) != TK_OK) {
    rc = cli_error("run", st);
    goto done;
  }
  if (ndim != 4 || shape[0] < 1 || shape[0] > INT_MAX || shape[1] != m->in_c || shape[2] != m->in_h ||
      shape[3] != m->in_w) {
    char got[160];
    shape_str(got, sizeof got, ndim, shape);
    tk_fail(TK_ERR_SHAPE, "%s: shape: %s, but the model takes (n, %d, %d, %d) with n >= 1", a.input, got, m->in_c,
            m->in_h, m->in_w);
    rc = cli_error("run", TK_ERR_SHAPE);
    goto done;
  }
  const int n = (int)shape[0];
  const size_t img = (size_t)m->in_c * m->in_h * m->in_w;
  {
    double lo = INFINITY, hi = -INFINITY;
    size_t nonfinite = 0;
    for (size_t q = 0; q < (size_t)n * img; q++) {
      if (!isfinite(x[q])) nonfinite++;
      else {
        if (x[q] < lo) lo = x[q];
        if (x[q] > hi) hi = x[q];
      }
    }
    if (nonfinite)
      fprintf(stderr, "ticket run: warning: %s: %zu values are not finite\n", a.input, nonfinite);
    if (lo < m->lo - 1e-6 || hi > m->hi + 1e-6)
      fprintf(stderr, "ticket run: warning: %s: values span [%g, %g], outside the model's pixel range [%g, %g] "
                      "(the model expects raw pixels and normalises them itself)\n",
              a.input, lo, hi, m->lo, m->hi);
  }
  if (a.labels) {
    if ((st = tk_npy_read_int(a.labels, &ndim, shape, &y)) != TK_OK) {
      rc = cli_error("run", st);
      goto done;
    }
    if (ndim != 1 || shape[0] != n) {
      char got[160];
      shape_str(got, sizeof got, ndim, shape);
      tk_fail(TK_ERR_SHAPE, "%s: shape: %s, expected (%d,) to match %s", a.labels, got, n, a.input);
      rc = cli_error("run", TK_ERR_SHAPE);
      goto done;
    }
    for (int i = 0; i < n; i++)
      if (y[i] < 0 || y[i] >= classes) {
        tk_fail(TK_ERR_FORMAT, "%s: label[%d] = %d outside 0..%d (%d classes)", a.labels, i, y[i], classes - 1,
                classes);
        rc = cli_error("run", TK_ERR_FORMAT);
        goto done;
      }
  }

  /* chunk size */
  int chunk = n;
  if (a.batch) {
    if (a.bn == TK_BN_TRAIN && a.batch < n) {
      rc = cli_usage_error("run", "--bn train normalises with the statistics of the whole batch of %d; "
                                  "--batch %ld would split it", n, a.batch);
      goto done;
    }
    if (a.batch < n) chunk = (int)a.batch;
  } else if (a.bn == TK_BN_EVAL && a.engine == TK_ENGINE_REFERENCE) {
    double per = ref_bytes_per_image(m);
    double fit = floor(AUTO_CHUNK_BYTES / per);
    if (fit < 1) fit = 1;
    if (fit < chunk) chunk = (int)fit;
  }
  if ((st = tk_engine_create(m, a.engine, chunk, &e)) != TK_OK) {
    tk_fail_prefix(st, "engine %s", a.engine_name);
    rc = cli_error("run", st);
    goto done;
  }
  const int want_grads = a.param_grads != NULL;
  if (want_grads && !e->grads) {
    tk_fail(TK_ERR_UNSUPPORTED, "engine %s: does not provide parameter gradients", a.engine_name);
    rc = cli_error("run", TK_ERR_UNSUPPORTED);
    goto done;
  }
  logits = tk_malloc((size_t)n * classes * sizeof(float));
  if (!logits) goto nomem;
  if (a.labels && !(dlogits = tk_malloc((size_t)chunk * classes * sizeof(float)))) goto nomem;
  if (a.input_grad && !(dx = tk_malloc((size_t)n * img * sizeof(float)))) goto nomem;
  if (want_grads) {
    if (!(gsum = tk_calloc((size_t)m->n_tensors, sizeof *gsum))) goto nomem;
    for (int t = 0; t < m->n_tensors; t++)
      if (e->grads[t] && !(gsum[t] = tk_calloc((size_t)m->tensors[t].numel, sizeof(double)))) goto nomem;
  }

  double loss_sum = 0.0;
  int correct = 0;
  for (int i0 = 0; i0 < n; i0 += chunk) {
    const int nc = n - i0 < chunk ? n - i0 : chunk;
    float *lg = logits + (size_t)i0 * classes;
    if ((st = tk_engine_forward(e, x + (size_t)i0 * img, nc, a.bn, lg)) != TK_OK) {
      rc = cli_error("run", st);
      goto done;
    }
    if (!a.labels) continue;
    int hits = 0;
    const double l = tk_softmax_xent(lg, y + i0, nc, classes, dlogits, &hits);
    loss_sum += l * nc;
    correct += hits;
    if (!a.input_grad && !want_grads) continue;
    /* dlogits is d(mean over the chunk)/dlogits; the loss is the mean over all n */
    for (size_t q = 0; q < (size_t)nc * classes; q++) dlogits[q] = (float)((double)dlogits[q] * nc / n);
    if ((st = tk_engine_backward(e, dlogits, dx ? dx + (size_t)i0 * img : NULL, want_grads)) != TK_OK) {
      rc = cli_error("run", st);
      goto done;
    }
    for (int t = 0; want_grads && t < m->n_tensors; t++)
      if (gsum[t])
        for (int64_t k = 0; k < m->tensors[t].numel; k++) gsum[t][k] += e->grads[t][k];
  }
  const double loss = a.labels ? loss_sum / n : NAN;

  if (a.output) {
    const int64_t ls[2] = {n, classes};
    if ((st = tk_npy_write_f32(a.output, 2, ls, logits)) != TK_OK) {
      rc = cli_error("run", st);
      goto done;
    }
  }
  if (a.input_grad) {
    const int64_t xs[4] = {n, m->in_c, m->in_h, m->in_w};
    if ((st = tk_npy_write_f32(a.input_grad, 4, xs, dx)) != TK_OK) {
      rc = cli_error("run", st);
      goto done;
    }
  }
  if (want_grads) {
    if (!(gm = tk_model_clone(m))) goto nomem;
    for (int t = 0; t < gm->n_tensors; t++) {
      tk_tensor *tt = &gm->tensors[t];
      tk_tensor_set_mask(tt, NULL);
      if (gsum[t])
        for (int64_t k = 0; k < tt->numel; k++) tt->data[k] = (float)gsum[t][k];
    }
    free(gm->prov.method);
    gm->prov.method = tk_strdup("gradients");
    free(gm->prov.notes);
    gm->prov.notes = tk_strdup("trainable tensors hold dL/dtensor, L = mean softmax cross-entropy of `ticket run`");
    if ((st = tk_model_save(gm, a.param_grads)) != TK_OK) {
      rc = cli_error("run", st);
      goto done;
    }
  }
  if (a.save_model && (st = tk_model_save(m, a.save_model)) != TK_OK) {
    rc = cli_error("run", st);
    goto done;
  }

  if (a.json) {
    printf("{\"model\": ");
    cli_json_string(stdout, a.model);
    printf(", \"engine\": ");
    cli_json_string(stdout, a.engine_name);
    printf(", \"bn\": \"%s\", \"n\": %d, \"classes\": %d, \"chunk\": %d, \"loss\": ", a.bn == TK_BN_TRAIN ? "train" : "eval",
           n, classes, chunk);
    if (a.labels) {
      json_num(stdout, loss);
      printf(", \"correct\": %d, \"accuracy\": ", correct);
      json_num(stdout, (double)correct / n);
    } else {
      printf("null, \"correct\": null, \"accuracy\": null");
    }
    printf(", ");
    json_path(stdout, "logits", a.output, 0);
    json_path(stdout, "input_grad", a.input_grad, 0);
    json_path(stdout, "param_grads", a.param_grads, 0);
    json_path(stdout, "saved_model", a.save_model, 1);
    printf("}\n");
  } else {
    printf("%s: %d image%s, %d classes, engine %s, batchnorm %s\n", a.model, n, n == 1 ? "" : "s", classes,
           a.engine_name, a.bn == TK_BN_TRAIN ? "train" : "eval");
    if (a.labels)
      printf("loss %.9g (mean softmax cross-entropy), accuracy %.2f%% (%d/%d)\n", loss, 100.0 * correct / n,
             correct, n);
    if (a.output) printf("logits (%d, %d) -> %s\n", n, classes, a.output);
    if (a.input_grad) printf("input gradient (%d, %d, %d, %d) -> %s\n", n, m->in_c, m->in_h, m->in_w, a.input_grad);
    if (a.param_grads) printf("parameter gradients -> %s\n", a.param_grads);
    if (a.save_model) printf("model -> %s\n", a.save_model);
  }
  rc = 0;
  goto done;
nomem:
  rc = cli_error("run", TK_ERR_NOMEM);
done:
  if (gsum) {
    for (int t = 0; t < m->n_tensors; t++) free(gsum[t]);
    free(gsum);
  }
  tk_engine_free(e);
  tk_model_free(gm);
  tk_model_free(m);
  free(x);
  free(y);
  free(logits);
  free(dlogits);
  free(dx);
  return rc;
}
