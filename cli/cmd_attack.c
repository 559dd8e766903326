/* cmd_attack.c -- `ticket attack`: robust accuracy under L-inf PGD or FGSM (runtime/attack.h),
 * with standard accuracy, per-class SA/RA, mean losses and images/s; optionally saves the
 * adversarial examples as .npy. */
#include "cli.h"

#include "runtime/evaluate.h"
#include "runtime/npy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void usage(FILE *f) {
  fputs("usage: ticket attack MODEL --data SPEC --eps E [options]\n"
        "\n"
        "Robust accuracy (RA) of MODEL under an L-inf attack, with standard accuracy (SA).\n"
        "eps and alpha are in pixel units (the model's value range, usually [0, 1]) and accept\n"
        "fractions such as 8/255.\n"
        "\n"
        "  --data SPEC        fashion-mnist | fashion-mnist:DIR | mnist:DIR | cifar10:DIR | cifar100:DIR\n"
        "  --split S          test (default) or train\n"
        "  --offset N         skip the first N images\n"
        "  --limit N          use at most N images (default: all)\n"
        "  --eps E            radius of the L-inf ball (required)\n"
        "  --alpha A          step size (default eps/4)\n"
        "  --steps K          PGD steps (default 10)\n"
        "  --restarts R       random restarts; an example counts as robust only if it survives all (default 1)\n"
        "  --fgsm             FGSM: one step of size eps from a zero start (no --alpha/--steps)\n"
        "  --bn eval|train    BatchNorm mode of the attack's forwards (default eval; accuracies always use eval)\n"
        "  --last             keep the last PGD iterate per example, as the reference implementations\n"
        "                     do, instead of the first iterate that fools the model\n"
        "  --seed S           seed of the random start (default 0)\n"
        "  --batch B          images per attack batch (default 100)\n"
        "  --engine E         auto (default: the fastest available), compiled, dense or reference\n"
        "  --threads T        OpenMP threads (default: all); with 2 or more and --bn eval each thread\n"
        "                     attacks its own chunks of a batch on its own copy of the engine\n"
        "                     (chunks of up to TICKET_ATTACK_CHUNK images, default 32; 0: off)\n"
        "  --save-adv F.npy   write the adversarial examples, (N, C, H, W) float32\n"
        "  --init-delta F.npy start from x + delta (N, C, H, W) instead of a random start (testing)\n"
        "  --progress         progress line on stderr even when it is not a terminal\n"
        "  --json             one JSON object on stdout\n"
        "  -h, --help         this text\n",
        f);
}



int cmd_attack(int argc, char **argv) {
  const char *cmd = "attack";
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  const char *model_path = NULL, *spec = NULL, *split = "test", *engine_name = "auto", *save_adv = NULL,
             *init_delta = NULL, *bn_name = "eval";
  long offset = 0, limit = 0, batch = 100, threads = 0, steps = -1, restarts = 1;
  double eps = NAN, alpha = NAN;
  uint64_t seed = 0;
  bool json = false, fgsm = false, last = false;
  int progress = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const bool has = i + 1 < argc;
    if (!strcmp(a, "--json")) json = true;
    else if (!strcmp(a, "--progress")) progress = 1;
    else if (!strcmp(a, "--fgsm")) fgsm = true;
    else if (!strcmp(a, "--last")) last = true;
    else if (!strcmp(a, "--data") && has) spec = argv[++i];
    else if (!strcmp(a, "--split") && has) split = argv[++i];
    else if (!strcmp(a, "--engine") && has) engine_name = argv[++i];
    else if (!strcmp(a, "--bn") && has) bn_name = argv[++i];
    else if (!strcmp(a, "--save-adv") && has) save_adv = argv[++i];
    else if (!strcmp(a, "--init-delta") && has) init_delta = argv[++i];
    else if (!strcmp(a, "--eps") && has) {
      if (!tk_parse_fraction(argv[++i], &eps) || eps < 0) return cli_usage_error(cmd, "--eps: '%s' is not a number >= 0", argv[i]);
    } else if (!strcmp(a, "--alpha") && has) {
      if (!tk_parse_fraction(argv[++i], &alpha) || alpha < 0)
        return cli_usage_error(cmd, "--alpha: '%s' is not a number >= 0", argv[i]);
    } else if (!strcmp(a, "--steps") && has) {
      if (!cli_parse_long(argv[++i], 0, 1000000, &steps)) return cli_usage_error(cmd, "--steps: '%s' is not in 0..1000000", argv[i]);
    } else if (!strcmp(a, "--restarts") && has) {
      if (!cli_parse_long(argv[++i], 1, 100000, &restarts)) return cli_usage_error(cmd, "--restarts: '%s' is not in 1..100000", argv[i]);
    } else if (!strcmp(a, "--seed") && has) {
      if (!cli_parse_u64(argv[++i], &seed)) return cli_usage_error(cmd, "--seed: '%s' is not a non-negative integer", argv[i]);
    } else if (!strcmp(a, "--offset") && has) {
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
  if (isnan(eps)) return cli_usage_error(cmd, "no --eps given");
  if (strcmp(split, "test") && strcmp(split, "train")) return cli_usage_error(cmd, "--split: '%s' is neither test nor train", split);
  int kind;
  if (!tk_engine_kind_parse(engine_name, &kind))
    return cli_usage_error(cmd, "--engine: '%s' is not auto, compiled, dense or reference", engine_name);
  tk_attack_opts o;
  tk_attack_opts_default(&o);
  if (!strcmp(bn_name, "eval")) o.bn = TK_BN_EVAL;
  else if (!strcmp(bn_name, "train")) o.bn = TK_BN_TRAIN;
  else return cli_usage_error(cmd, "--bn: '%s' is neither eval nor train", bn_name);
  if (fgsm) {
    if (!isnan(alpha) || steps >= 0) return cli_usage_error(cmd, "--fgsm takes one step of size eps: drop --alpha and --steps");
    o.start = TK_START_ZERO;
    o.steps = 1;
    o.alpha = eps;
  } else {
    o.steps = steps >= 0 ? (int)steps : 10;
    o.alpha = isnan(alpha) ? eps / 4 : alpha;
  }
  o.eps = eps;
  o.restarts = (int)restarts;
  o.final_iterate = last;
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads((int)threads);
#endif

  tk_model *m = NULL;
  tk_dataset *d = NULL;
  tk_engine *e = NULL;
  tk_attacker *att = NULL;
  tk_eval_stats sc, sa;
  memset(&sc, 0, sizeof sc);
  memset(&sa, 0, sizeof sa);
  float *delta0 = NULL, *x_adv = NULL;
  char note[512];
  double secs = 0;
  int rc = 0;
  tk_status st = tk_model_load(model_path, &m);
  if (st == TK_OK) st = tk_data_load(spec, split, offset, limit, &d);
  if (st == TK_OK) st = tk_eval_check_data(m, d);
  const size_t D = st == TK_OK ? (size_t)d->c * d->h * d->w : 0;
  if (st == TK_OK && init_delta) {
    int nd;
    int64_t sh[8];
    st = tk_npy_read_f32(init_delta, &nd, sh, &delta0);
    if (st == TK_OK && (nd != 4 || sh[0] != d->n || sh[1] != d->c || sh[2] != d->h || sh[3] != d->w)) {
      char got[128] = "";
      for (int k = 0; k < nd && k < 8; k++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", k ? "," : "", (long long)sh[k]);
      st = tk_fail(TK_ERR_SHAPE, "%s: shape: (%s) but the data is (%d,%d,%d,%d)", init_delta, got, d->n, d->c, d->h, d->w);
    }
    for (size_t k = 0; st == TK_OK && k < (size_t)d->n * D; k++)
      if (!isfinite(delta0[k])) st = tk_fail(TK_ERR_FORMAT, "%s: element %zu is not finite", init_delta, k);
  }
  if (st == TK_OK && save_adv && !(x_adv = tk_malloc((size_t)d->n * D * sizeof(float)))) st = TK_ERR_NOMEM;
  if (st == TK_OK) {
    if (batch > d->n) batch = d->n;
    st = tk_engine_create_best(m, kind, (int)batch, &e, note, sizeof note);
    if (st == TK_OK && note[0]) fprintf(stderr, "ticket attack: note: %s\n", note);
  }
  if (st == TK_OK && threads > 0) e->threads = (int)threads;
  if (st == TK_OK) st = tk_attacker_create(e, &o, &att);
  if (st == TK_OK) st = tk_eval_stats_init(&sc, m->classes);
  if (st == TK_OK) st = tk_eval_stats_init(&sa, m->classes);
  tk_rng rng;
  tk_rng_seed(&rng, seed);
  if (st == TK_OK) st = tk_evaluate_attack(e, att, d, (int)batch, &rng, delta0, progress, &sc, &sa, x_adv, NULL, &secs);
  if (st == TK_OK && save_adv) {
    int64_t shape[4] = {d->n, d->c, d->h, d->w};
    st = tk_npy_write_f32(save_adv, 4, shape, x_adv);
  }
  if (st != TK_OK) {
    rc = cli_error(cmd, st);
    goto done;
  }
  const double ips = secs > 0 ? sc.n / secs : 0;
  int chunk = 0;
  const int nw = tk_attacker_workers(att, &chunk);
  const char *start = o.start == TK_START_ZERO ? "zero" : init_delta ? "given" : "uniform";
  char name[32];
  if (fgsm) snprintf(name, sizeof name, "FGSM");
  else snprintf(name, sizeof name, "PGD-%d", o.steps);
  if (json) {
    printf("{\"model\":");
    cli_json_string(stdout, model_path);
    printf(",\"data\":");
    cli_json_string(stdout, d->name);
    printf(",\"offset\":%ld,\"engine\":", offset);
    cli_json_string(stdout, e->v->name);
    printf(",\"attack\":");
    cli_json_string(stdout, name);
    printf(",\"eps\":%.10g,\"alpha\":%.10g,\"steps\":%d,\"restarts\":%d,\"start\":\"%s\",\"bn\":\"%s\","
           "\"tracking\":%s,\"seed\":%llu,\"batch\":%ld,\"n\":%ld,\"sa\":%.10g,\"ra\":%.10g,"
           "\"loss_clean\":%.10g,\"loss_adv\":%.10g,\"seconds\":%.6g,\"images_per_s\":%.6g,",
           o.eps, o.alpha, o.steps, o.restarts, start, bn_name, last ? "false" : "true", (unsigned long long)seed,
           batch, sc.n, tk_eval_stats_accuracy(&sc), tk_eval_stats_accuracy(&sa), tk_eval_stats_loss(&sc),
           tk_eval_stats_loss(&sa), secs, ips);
    printf("\"workers\":%d,\"chunk\":%d,\"clean\":", nw, chunk);
    tk_eval_stats_write_json(stdout, &sc, 0);
    printf(",\"adversarial\":");
    tk_eval_stats_write_json(stdout, &sa, 1);
    if (save_adv) {
      printf(",\"saved\":");
      cli_json_string(stdout, save_adv);
    }
    printf("}\n");
  } else {
    printf("model %s, data %s (%d images from %ld), engine %s, batch %ld", model_path, d->name, d->n, offset,
           e->v->name, batch);
    if (nw) printf(", attacked in parallel: %d threads, chunks of up to %d", nw, chunk);
    printf("\n");
    printf("%s eps %.6g alpha %.6g, %d restart%s, %s start, BatchNorm %s, seed %llu, %s\n", name, o.eps, o.alpha,
           o.restarts, o.restarts == 1 ? "" : "s", start, bn_name, (unsigned long long)seed,
           last ? "last iterate" : "first fooling iterate");
    printf("SA %.2f%% (%ld/%ld)  RA %.2f%% (%ld/%ld)  loss %.4f -> %.4f\n", 100.0 * tk_eval_stats_accuracy(&sc),
           sc.correct, sc.n, 100.0 * tk_eval_stats_accuracy(&sa), sa.correct, sa.n, tk_eval_stats_loss(&sc),
           tk_eval_stats_loss(&sa));
    printf("class      n      SA      RA\n");
    for (int k = 0; k < sc.classes; k++) {
      if (!sc.class_n[k]) continue;
      printf("%5d %6ld %6.2f%% %6.2f%%\n", k, sc.class_n[k], 100.0 * tk_eval_stats_class_accuracy(&sc, k),
             100.0 * tk_eval_stats_class_accuracy(&sa, k));
    }
    printf("%ld images in %.2f s: %.1f images/s\n", sc.n, secs, ips);
    if (save_adv) printf("adversarial examples written to %s\n", save_adv);
  }
done:
  tk_eval_stats_free(&sc);
  tk_eval_stats_free(&sa);
  tk_attacker_free(att);
  tk_engine_free(e);
  tk_dataset_free(d);
  tk_model_free(m);
  free(delta0);
  free(x_adv);
  return rc;
}
