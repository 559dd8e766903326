/* cmd_prune.c -- `ticket prune`: set masks on the prunable tensors of a model (magnitude,
 * random, IMP with rewinding, SynFlow, SNIP) and record the method and sparsity in its
 * provenance. */
#include "cli.h"

#include "runtime/evaluate.h"
#include "runtime/prune.h"

#include <stdlib.h>
#include <string.h>

static const char *const usage_text =
    "usage: ticket prune MODEL --method METHOD --sparsity S [--scope global|layer] -o OUT [options]\n"
    "\n"
    "Sets masks on the prunable tensors of MODEL and writes OUT.  Weights pruned before stay\n"
    "pruned; S is the fraction of all prunable weights pruned afterwards (floor(S*N)).\n"
    "\n"
    "methods:\n"
    "  magnitude   keep the largest |w|; --scope global (default: one threshold over every\n"
    "              prunable tensor) or layer (the same fraction in every tensor, HYDRA's\n"
    "              layer-wise k)\n"
    "  random      keep a uniformly random subset (--seed)\n"
    "  imp         one round of iterative magnitude pruning with rewinding (Double-Win): rank\n"
    "              MODEL's trained weights by |w|, prune --rate (default 0.2) of the weights\n"
    "              still kept (global by default), then reset every tensor to the values in\n"
    "              --rewind CHECKPOINT and apply the mask.  --sparsity instead of --rate\n"
    "              prunes to that level in one round.\n"
    "  synflow     SynFlow (pruning at initialisation, data free): the score of w is\n"
    "              |w * dR/dw|, R the sum of the logits of an all-ones input through the\n"
    "              network with every parameter and statistic replaced by its absolute value;\n"
    "              100 rounds by default, density d^(r/100) after round r (--iterations)\n"
    "  snip        SNIP: the score of w is |w * dL/dw| summed over a prune set (--data, the\n"
    "              first --samples training images, default 10 per class), eval mode\n"
    "\n"
    "options:\n"
    "  --method M          magnitude | random | imp | synflow | snip\n"
    "  --sparsity S        target sparsity in [0, 1] (fractions such as 9/10 accepted)\n"
    "  --scope global|layer\n"
    "  --rewind FILE       imp: the model to rewind the weights to (same tensors)\n"
    "  --rate R            imp: fraction of the kept weights pruned this round (0.2)\n"
    "  --seed S            random: the generator seed (1)\n"
    "  --iterations N      scoring rounds towards the target (exponential schedule; 1,\n"
    "                      synflow 100)\n"
    "  --data SPEC         snip: the data set (see `ticket eval --help`), training split\n"
    "  --samples N         snip: images of the prune set (default 10 x classes)\n"
    "  --engine E          synflow, snip: the engine that computes the gradients: dense\n"
    "                      (default when built), reference or compiled\n"
    "  --progress          a progress line on stderr over the rounds even when it is not a\n"
    "                      terminal (on a terminal it is shown anyway)\n"
    "  -o, --output OUT    the pruned model (written atomically)\n"
    "  --json              print the result as JSON\n";

/* "--opt V" or "--opt=V" */
static const char *opt_value(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) != 0) return NULL;
  if (argv[*i][n] == '=') return argv[*i] + n + 1;
  if (argv[*i][n] != 0) return NULL;
  if (*i + 1 >= argc) return "";
  return argv[++*i];
}

static const char *layer_of(const tk_model *m, int t) {
  for (int l = 0; l < m->n_layers; l++)
    if (m->layers[l].weight == t) return m->layers[l].name;
  return "";
}

int cmd_prune(int argc, char **argv) {
  const char *cmd = "prune";
  if (cli_wants_help(argc, argv)) {
    fputs(usage_text, stdout);
    return 0;
  }
  const char *model_path = NULL, *out = NULL, *rewind_path = NULL, *data_spec = NULL;
  int json = 0;
  long samples = 0;
  tk_prune_opts o;
  tk_prune_opts_default(&o);
  o.method = NULL;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if ((v = opt_value(argc, argv, &i, "--method"))) {
      if (!*v) return cli_usage_error(cmd, "--method needs a value");
      o.method = v;
    } else if ((v = opt_value(argc, argv, &i, "--sparsity"))) {
      if (!tk_parse_fraction(v, &o.sparsity) || o.sparsity < 0 || o.sparsity > 1)
        return cli_usage_error(cmd, "--sparsity: '%s' is not a number in [0, 1]", v);
    } else if ((v = opt_value(argc, argv, &i, "--scope"))) {
      if (strcmp(v, "global") == 0) o.scope = TK_SCOPE_GLOBAL;
      else if (strcmp(v, "layer") == 0) o.scope = TK_SCOPE_LAYER;
      else return cli_usage_error(cmd, "--scope: '%s' is not global or layer", v);
    } else if ((v = opt_value(argc, argv, &i, "--rewind"))) {
      if (!*v) return cli_usage_error(cmd, "--rewind needs a file");
      rewind_path = v;
    } else if ((v = opt_value(argc, argv, &i, "--rate"))) {
      if (!tk_parse_fraction(v, &o.rate) || !(o.rate > 0 && o.rate <= 1))
        return cli_usage_error(cmd, "--rate: '%s' is not a number in (0, 1]", v);
    } else if ((v = opt_value(argc, argv, &i, "--seed"))) {
      char *end;
      o.seed = strtoull(v, &end, 10);
      if (!*v || *end) return cli_usage_error(cmd, "--seed: '%s' is not a non-negative integer", v);
    } else if ((v = opt_value(argc, argv, &i, "--iterations"))) {
      char *end;
      long k = strtol(v, &end, 10);
      if (!*v || *end || k < 1 || k > 100000) return cli_usage_error(cmd, "--iterations: '%s' is not in 1..100000", v);
      o.iterations = (int)k;
    } else if ((v = opt_value(argc, argv, &i, "--data"))) {
      if (!*v) return cli_usage_error(cmd, "--data needs a data set");
      data_spec = v;
    } else if ((v = opt_value(argc, argv, &i, "--samples"))) {
      char *end;
      samples = strtol(v, &end, 10);
      if (!*v || *end || samples < 1 || samples > 100000000)
        return cli_usage_error(cmd, "--samples: '%s' is not a positive integer", v);
    } else if ((v = opt_value(argc, argv, &i, "--engine"))) {
      int kind;
      if (!tk_engine_kind_parse(v, &kind))
        return cli_usage_error(cmd, "--engine: '%s' is not auto, compiled, dense or reference", v);
      o.engine_kind = kind;
    } else if ((v = opt_value(argc, argv, &i, "--output")) || (v = opt_value(argc, argv, &i, "-o"))) {
      if (!*v) return cli_usage_error(cmd, "-o needs a file");
      out = v;
    } else if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (strcmp(argv[i], "--progress") == 0) {
      o.progress = 1;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return cli_usage_error(cmd, "unknown option '%s'", argv[i]);
    } else if (!model_path) {
      model_path = argv[i];
    } else {
      return cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
    }
  }
  if (!model_path) return cli_usage_error(cmd, "MODEL is missing");
  if (!o.method) return cli_usage_error(cmd, "--method is missing");
  if (!out) return cli_usage_error(cmd, "-o OUT is missing");
  const tk_prune_method *meth = tk_prune_find(o.method);
  if (!meth) {
    char names[256] = "";
    for (const tk_prune_method *p = tk_prune_methods(); p->name; p++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? ", " : "", p->name);
    return cli_usage_error(cmd, "--method: unknown method '%s' (known: %s)", o.method, names);
  }
  if (o.sparsity < 0 && !meth->needs_rewind) return cli_usage_error(cmd, "--sparsity is missing");
  if (meth->needs_rewind && !rewind_path) return cli_usage_error(cmd, "--rewind is missing (method %s)", meth->name);
  if (rewind_path && !meth->needs_rewind)
    return cli_usage_error(cmd, "--rewind applies to imp only, not %s", meth->name);
  const int wants_data = strcmp(meth->name, "snip") == 0;
  if (wants_data && !data_spec) return cli_usage_error(cmd, "--data is missing (method %s needs a prune set)", meth->name);
  if (!wants_data && (data_spec || samples)) return cli_usage_error(cmd, "--data and --samples apply to snip only");

  tk_model *m = NULL, *rw = NULL;
  tk_status st = tk_model_load(model_path, &m);
  if (st == TK_OK) st = tk_model_infer(m);
  if (st != TK_OK) {
    tk_model_free(m);
    return cli_error(cmd, st);
  }
  if (rewind_path) {
    if ((st = tk_model_load(rewind_path, &rw)) != TK_OK) {
      tk_model_free(m);
      return cli_error(cmd, st);
    }
    o.rewind = rw;
  }
  tk_dataset *data = NULL;
  if (data_spec) {
    if ((st = tk_data_load(data_spec, "train", 0, samples ? samples : 10L * m->classes, &data)) != TK_OK) {
      tk_model_free(m);
      tk_model_free(rw);
      return cli_error(cmd, st);
    }
    o.data = data;
  }
  tk_prune_report rep;
  memset(&rep, 0, sizeof rep);
  st = tk_prune(m, &o, &rep);
  tk_dataset_free(data);
  if (st == TK_OK) st = tk_model_save(m, out);
  if (st != TK_OK) {
    free(rep.tensors);
    tk_model_free(m);
    tk_model_free(rw);
    return cli_error(cmd, st);
  }
  if (json) {
    printf("{\"command\":\"prune\",\"model\":");
    cli_json_string(stdout, model_path);
    printf(",\"out\":");
    cli_json_string(stdout, out);
    printf(",\"method\":");
    cli_json_string(stdout, meth->name);
    printf(",\"scope\":\"%s\",\"rewind\":", o.scope == TK_SCOPE_GLOBAL ? "global" : "layer");
    if (rewind_path) cli_json_string(stdout, rewind_path);
    else printf("null");
    printf(",\"total\":%lld,\"kept_before\":%lld,\"kept\":%lld,\"sparsity_before\":%.9g,\"sparsity\":%.9g,\"tensors\":[",
           (long long)rep.total, (long long)rep.kept_before, (long long)rep.kept_after, rep.sparsity_before,
           rep.sparsity_after);
    for (int k = 0; k < rep.n; k++) {
      const tk_prune_tensor_report *r = &rep.tensors[k];
      printf("%s{\"name\":", k ? "," : "");
      cli_json_string(stdout, m->tensors[r->tensor].name);
      printf(",\"layer\":");
      cli_json_string(stdout, layer_of(m, r->tensor));
      printf(",\"numel\":%lld,\"kept_before\":%lld,\"kept\":%lld,\"sparsity\":%.9g}", (long long)r->numel,
             (long long)r->kept_before, (long long)r->kept_after, 1.0 - (double)r->kept_after / (double)r->numel);
    }
    printf("]}\n");
  } else {
    printf("%s -> %s: %s (%s%s), sparsity %.4f -> %.4f, kept %lld of %lld prunable weights\n", model_path, out,
           meth->name, o.scope == TK_SCOPE_GLOBAL ? "global" : "layer-wise", rewind_path ? ", rewound" : "",
           rep.sparsity_before, rep.sparsity_after, (long long)rep.kept_after, (long long)rep.total);
    printf("  %-32s %12s %12s %9s\n", "tensor", "numel", "kept", "sparsity");
    for (int k = 0; k < rep.n; k++) {
      const tk_prune_tensor_report *r = &rep.tensors[k];
      printf("  %-32s %12lld %12lld %9.4f\n", m->tensors[r->tensor].name, (long long)r->numel, (long long)r->kept_after,
             1.0 - (double)r->kept_after / (double)r->numel);
    }
  }
  free(rep.tensors);
  tk_model_free(m);
  tk_model_free(rw);
  return 0;
}
