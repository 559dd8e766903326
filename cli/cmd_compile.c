/* cmd_compile.c -- `ticket compile`: ahead-of-time artifacts (standalone C, shared object,
 * executable) for a model file.  The work is in compiler/aot.c; this file parses options,
 * runs the stages (load, passes + plan + emit, build) and reports. */
#include "cli.h"

#include "../compiler/aot.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: ticket compile MODEL --emit c|so|exe -o OUT [options]\n"
          "\n"
          "Ahead-of-time artifacts with no dependency beyond libc and libm: BatchNorm folded into\n"
          "the preceding conv/linear, relu fused, pruned weights left out (sparse layers become\n"
          "tables of the kept weights), input normalisation included.\n"
          "\n"
          "  --emit c           NAME.c + NAME.h: the C ABI NAME_create / NAME_run / NAME_free\n"
          "                     (-o DIR/ writes DIR/NAME.c and DIR/NAME.h; -o BASE writes BASE.c, BASE.h)\n"
          "  --emit so          a shared object OUT, and NAME.h beside it\n"
          "  --emit exe         an executable OUT: OUT INPUT.npy [LOGITS.npy], prints the arg-max per image\n"
          "  -o, --output OUT   where to write (files appear atomically)\n"
          "  --name NAME        ABI prefix (default: from OUT for --emit c BASE, else from MODEL)\n"
          "  --target TRIPLE    cross-build with TRIPLE-gcc (e.g. aarch64-linux-gnu; executables link\n"
          "                     statically, so `qemu-aarch64 OUT` runs them)\n"
          "  --portable         no -march=native for a host build\n"
          "  --openmp           build with -fopenmp (parallel over images and output channels)\n"
          "  --cc CC            the C compiler (default: $CC or cc; TRIPLE-gcc with --target)\n"
          "  --cflags FLAGS     extra compiler flags, appended (e.g. \"-ffp-contract=off\" for results\n"
          "                     that are bit-identical across targets)\n"
          "  --static, --no-static  link the executable statically or not (default: static when cross)\n"
          "  --no-fold-bn       keep BatchNorm layers as per-channel affine ops\n"
          "  --no-fuse          keep relu as separate passes\n"
          "  --dump-passes      print the model after the passes (stderr)\n"
          "  --dump-plan        print the per-layer kernel variants and activation slots (stderr)\n"
          "  --json             print the result as JSON\n"
          "  -v, --verbose      print the compiler command line\n");
}

static const char *arg_value(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) return NULL;
  return argv[++*i];
}

static void json_layers(FILE *f, const tk_aot_unit *u) {
  fprintf(f, "[");
  for (int i = 0; i < u->n_layers; i++) {
    const tk_aot_layer *al = &u->layers[i];
    fprintf(f, "%s{\"index\": %d, \"name\": ", i ? ", " : "", i);
    cli_json_string(f, al->name);
    fprintf(f, ", \"op\": \"%s\", \"variant\": \"%s\", \"nnz\": %" PRId64 ", \"numel\": %" PRId64
               ", \"relu\": %s, \"slot\": %d, \"reason\": ",
            tk_op_name(al->op), tk_aot_variant_name(al->variant), al->nnz, al->numel, al->relu ? "true" : "false",
            al->slot);
    cli_json_string(f, al->reason);
    fprintf(f, "}");
  }
  fprintf(f, "]");
}

int cmd_compile(int argc, char **argv) {
  const char *cmd = "compile";
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  tk_aot_opts o;
  tk_aot_opts_default(&o);
  const char *model_path = NULL, *out = NULL, *emit = "c";
  int json = 0, dump_passes = 0, dump_plan = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = NULL;
#define NEEDS_VALUE()                                                        \
  do {                                                                       \
    if (!(v = arg_value(argc, argv, &i))) return cli_usage_error(cmd, "%s needs a value", a); \
  } while (0)
    if (!strcmp(a, "--emit")) { NEEDS_VALUE(); emit = v; }
    else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { NEEDS_VALUE(); out = v; }
    else if (!strcmp(a, "--name")) { NEEDS_VALUE(); o.name = v; }
    else if (!strcmp(a, "--target")) { NEEDS_VALUE(); o.target = v; }
    else if (!strcmp(a, "--cc")) { NEEDS_VALUE(); o.cc = v; }
    else if (!strcmp(a, "--cflags")) { NEEDS_VALUE(); o.cflags = v; }
    else if (!strcmp(a, "--portable")) o.portable = 1;
    else if (!strcmp(a, "--openmp")) o.openmp = 1;
    else if (!strcmp(a, "--static")) o.static_link = 1;
    else if (!strcmp(a, "--no-static")) o.static_link = 0;
    else if (!strcmp(a, "--no-fold-bn")) o.passes.fold_bn = 0;
    else if (!strcmp(a, "--no-fuse")) o.passes.fuse = 0;
    else if (!strcmp(a, "--dump-passes")) dump_passes = 1;
    else if (!strcmp(a, "--dump-plan")) dump_plan = 1;
    else if (!strcmp(a, "--json")) json = 1;
    else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) o.verbose = 1;
    else if (a[0] == '-' && a[1]) return cli_usage_error(cmd, "unknown option %s", a);
    else if (!model_path) model_path = a;
    else return cli_usage_error(cmd, "unexpected argument %s (one MODEL)", a);
#undef NEEDS_VALUE
  }
  if (!model_path) return cli_usage_error(cmd, "no MODEL given");
  if (!out) return cli_usage_error(cmd, "no output given (-o OUT)");
  if (!strcmp(emit, "c")) o.emit = TK_AOT_EMIT_C;
  else if (!strcmp(emit, "so")) o.emit = TK_AOT_EMIT_SO;
  else if (!strcmp(emit, "exe")) o.emit = TK_AOT_EMIT_EXE;
  else return cli_usage_error(cmd, "--emit %s: expected c, so or exe", emit);
  o.source = model_path;

  /* the ABI name: from OUT for `--emit c BASE`, else from the model file */
  char *auto_name = NULL;
  if (!o.name) {
    struct stat sb;
    size_t n = strlen(out);
    int out_is_dir = (stat(out, &sb) == 0 && S_ISDIR(sb.st_mode)) || out[n - 1] == '/';
    auto_name = tk_aot_name_from_path(o.emit == TK_AOT_EMIT_C && !out_is_dir ? out : model_path);
    if (!auto_name) return cli_error(cmd, TK_ERR_NOMEM);
    o.name = auto_name;
  }

  /* stage 1: load and verify */
  tk_model *m = NULL;
  tk_status st = tk_model_load(model_path, &m);
  if (st == TK_OK && !m->values) st = tk_model_infer(m);
  if (st != TK_OK) {
    free(auto_name);
    tk_model_free(m);
    return cli_error(cmd, st);
  }
  /* the passes on their own, for --dump-passes (tk_aot_generate runs them again) */
  if (dump_passes) {
    tk_model *pm = NULL;
    tk_fusion *fu = NULL;
    tk_pass_stats ps;
    if ((st = tk_passes_run(m, &o.passes, &pm, &fu, &ps)) == TK_OK) tk_passes_dump(stderr, pm, fu, &ps);
    tk_fusion_free(fu);
    tk_model_free(pm);
    if (st != TK_OK) {
      free(auto_name);
      tk_model_free(m);
      return cli_error(cmd, st);
    }
  }
  /* stage 2: passes, plan, emit */
  tk_aot_unit *u = NULL;
  if ((st = tk_aot_generate(m, &o, &u)) != TK_OK) {
    free(auto_name);
    tk_model_free(m);
    return cli_error(cmd, st);
  }
  if (dump_plan) tk_aot_dump_plan(stderr, u);
  /* stage 3: write and build */
  tk_aot_outputs res;
  st = tk_aot_build(u, &o, out, &res);
  if (res.diagnostics && *res.diagnostics) {
    fprintf(stderr, "ticket compile: %s:\n%s", st == TK_OK ? "compiler output" : "compiler errors on the generated code",
            res.diagnostics);
    if (res.command) fprintf(stderr, "ticket compile: command: %s\n", res.command);
  }
  int rc = 0;
  if (st != TK_OK) {
    rc = cli_error(cmd, st);
  } else if (json) {
    printf("{\"model\": ");
    cli_json_string(stdout, model_path);
    printf(", \"name\": ");
    cli_json_string(stdout, u->name);
    printf(", \"emit\": \"%s\", \"target\": ", emit);
    cli_json_string(stdout, o.target ? o.target : "host");
    printf(", \"files\": [");
    for (int i = 0; i < res.n_files; i++) {
      printf("%s", i ? ", " : "");
      cli_json_string(stdout, res.files[i]);
    }
    printf("], \"command\": ");
    if (res.command) cli_json_string(stdout, res.command);
    else printf("null");
    printf(", \"hash\": \"%016" PRIx64 "\", \"sparsity\": %.6f, \"classes\": %d, \"input\": [%d, %d, %d]", u->hash,
           tk_model_sparsity(m), u->classes, u->in_c, u->in_h, u->in_w);
    printf(", \"passes\": {\"bn_folded\": %d, \"bn_kept\": %d, \"bias_added\": %d, \"relu_fused\": %d}",
           u->passes.bn_folded, u->passes.bn_kept, u->passes.bias_added, u->passes.relu_fused);
    printf(", \"activation_floats_per_image\": %" PRId64 ", \"scratch_floats_per_image\": %" PRId64
           ", \"table_bytes\": %" PRId64 ", \"layers\": ",
           u->activation_floats, u->pad_floats, u->table_bytes);
    json_layers(stdout, u);
    printf("}\n");
  } else {
    int counts[TK_AOT_ALIAS + 1] = {0};
    for (int i = 0; i < u->n_layers; i++) counts[u->layers[i].variant]++;
    printf("ticket compile: %s:", u->name);
    for (int i = 0; i < res.n_files; i++) printf(" %s", res.files[i]);
    printf("\n  %d layers after passes (%d batchnorm folded, %d relu fused): %d sparse-table, %d dense-direct, "
           "%d empty, %d portable ops; %.2f%% sparse; %" PRId64 " bytes of tables\n",
           u->n_layers, u->passes.bn_folded, u->passes.relu_fused, counts[TK_AOT_SPARSE_TABLE], counts[TK_AOT_DENSE],
           counts[TK_AOT_EMPTY], counts[TK_AOT_OP], 100.0 * tk_model_sparsity(m), u->table_bytes);
  }
  tk_aot_outputs_free(&res);
  tk_aot_unit_free(u);
  tk_model_free(m);
  free(auto_name);
  return rc;
}
