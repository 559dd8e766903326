/* cmd_eval.c -- `ticket eval`: standard accuracy of a model on a data set (overall, per class,
 * confusion counts with --json, mean cross-entropy, images/s). */
#include "cli.h"

#include "runtime/evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void usage(FILE *f) {
  fputs("usage: ticket eval MODEL --data SPEC [options]\n"
        "\n"
        "Standard accuracy (SA) of MODEL on a data set, overall and per class.\n"
        "\n"
        "  --data SPEC        fashion-mnist | fashion-mnist:DIR | mnist:DIR | cifar10:DIR | cifar100:DIR\n"
        "  --split S          test (default) or train\n"
        "  --offset N         skip the first N images\n"
        "  --limit N          use at most N images (default: all)\n"
        "  --batch B          images per forward (default 100)\n"
        "  --engine E         auto (default: the fastest available), compiled, dense or reference\n"
        "  --threads T        OpenMP threads (default: all)\n"
        "  --progress         progress line on stderr even when it is not a terminal\n"
        "  --json             one JSON object on stdout (includes the confusion matrix)\n"
        "  -h, --help         this text\n",
        f);
}


int cmd_eval(int argc, char **argv) {
  const char *cmd = "eval";
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  const char *model_path = NULL, *spec = NULL, *split = "test", *engine_name = "auto";
  long offset = 0, limit = 0, batch = 100, threads = 0;
  bool json = false;
  int progress = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const bool has = i + 1 < argc;
    if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--progress")) progress = 1;
    else if (!strcmp(a, "--data") && has) spec = argv[++i];
    else if (!strcmp(a, "--split") && has) split = argv[++i];
    else if (!strcmp(a, "--engine") && has) engine_name = argv[++i];
    else if (!strcmp(a, "--offset") && has) {
      if (!cli_parse_long(argv[++i], 0, 1L << 30, &offset)) return cli_usage_error(cmd, "--offset: '%s' is not a count", argv[i]);
    } else if (!strcmp(a, "--limit") && has) {
      if (!cli_parse_long(argv[++i], 1, 1L << 30, &limit)) return cli_usage_error(cmd, "--limit: '%s' is not a positive count", argv[i]);
    } else if (!strcmp(a, "--batch") && has) {
      if (!cli_parse_long(argv[++i], 1, 1 << 16, &batch)) return cli_usage_error(cmd, "--batch: '%s' is not in 1..65536", argv[i]);
    } else if (!strcmp(a, "--threads") && has) {
      if (!cli_parse_long(argv[++i], 1, 4096, &threads)) return cli_usage_error(cmd, "--threads: '%s' is not in 1..4096", argv[i]);
    } else if (a[0] == '-' && a[1]) return cli_usage_error(cmd, "unknown option or missing value: %s", a);
    else if (!model_path) model_path = a;
    else return cli_usage_error(cmd, "unexpected argument: %s", a);
  }
  if (!model_path) return cli_usage_error(cmd, "no MODEL given");
  if (!spec) return cli_usage_error(cmd, "no --data given");
  if (strcmp(split, "test") && strcmp(split, "train")) return cli_usage_error(cmd, "--split: '%s' is neither test nor train", split);
  int kind;
  if (!tk_engine_kind_parse(engine_name, &kind))
    return cli_usage_error(cmd, "--engine: '%s' is not auto, compiled, dense or reference", engine_name);
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads((int)threads);
#endif

  tk_model *m = NULL;
  tk_dataset *d = NULL;
  tk_engine *e = NULL;
  tk_eval_stats s;
  memset(&s, 0, sizeof s);
  char note[512];
  double secs = 0;
  int rc = 0;
  tk_status st = tk_model_load(model_path, &m);
  if (st == TK_OK) st = tk_data_load(spec, split, offset, limit, &d);
  if (st == TK_OK) st = tk_eval_check_data(m, d);
  if (st == TK_OK) {
    if (batch > d->n) batch = d->n;
    st = tk_engine_create_best(m, kind, (int)batch, &e, note, sizeof note);
    if (st == TK_OK && note[0]) fprintf(stderr, "ticket eval: note: %s\n", note);
  }
  if (st == TK_OK && threads > 0) e->threads = (int)threads;
  if (st == TK_OK) st = tk_eval_stats_init(&s, m->classes);
  if (st == TK_OK) st = tk_evaluate(e, d, (int)batch, progress, &s, &secs);
  if (st != TK_OK) {
    rc = cli_error(cmd, st);
    goto done;
  }
  const double ips = secs > 0 ? s.n / secs : 0;
  if (json) {
    printf("{\"model\":");
    cli_json_string(stdout, model_path);
    printf(",\"data\":");
    cli_json_string(stdout, d->name);
    printf(",\"offset\":%ld,\"engine\":", offset);
    cli_json_string(stdout, e->v->name);
    printf(",\"batch\":%ld,\"n\":%ld,\"sa\":%.10g,\"loss\":%.10g,\"seconds\":%.6g,\"images_per_s\":%.6g,\"clean\":", batch,
           s.n, tk_eval_stats_accuracy(&s), tk_eval_stats_loss(&s), secs, ips);
    tk_eval_stats_write_json(stdout, &s, 1);
    printf("}\n");
  } else {
    printf("model %s, data %s (%d images from %ld), engine %s, batch %ld\n", model_path, d->name, d->n, offset,
           e->v->name, batch);
    printf("SA %.2f%% (%ld/%ld), loss %.4f\n", 100.0 * tk_eval_stats_accuracy(&s), s.correct, s.n, tk_eval_stats_loss(&s));
    printf("class      n      SA\n");
    for (int k = 0; k < s.classes; k++) {
      if (!s.class_n[k]) continue;
      printf("%5d %6ld %6.2f%%\n", k, s.class_n[k], 100.0 * tk_eval_stats_class_accuracy(&s, k));
    }
    printf("%ld images in %.2f s: %.1f images/s\n", s.n, secs, ips);
  }
done:
  tk_eval_stats_free(&s);
  tk_engine_free(e);
  tk_dataset_free(d);
  tk_model_free(m);
  return rc;
}
