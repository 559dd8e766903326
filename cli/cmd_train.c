/* cmd_train.c -- `ticket train`: standard and adversarial training on any engine, with the
 * mask kept exact, validation, best models, checkpoints, exact resumption and a clean stop on
 * SIGINT/SIGTERM; with --prune-scores, HYDRA's pruning step (the scores trained instead of the
 * weights).  The loop itself is runtime/train.c. */
#include "cli.h"

#include "runtime/evaluate.h"
#include "runtime/npy.h"
#include "runtime/train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const usage_text =
    "usage: ticket train MODEL --data SPEC --mode MODE -o OUT.tkt [options]\n"
    "\n"
    "Trains MODEL on the train split of SPEC and writes OUT.tkt.  Pruned weights stay exactly\n"
    "zero (checked after every epoch).  After every epoch: accuracy (SA) and PGD robust\n"
    "accuracy (RA) on the validation images, OUT.best_sa.tkt / OUT.best_ra.tkt for the best\n"
    "epochs, and a checkpoint from which --resume continues bit for bit (same thread count).\n"
    "SIGINT/SIGTERM finish the current step, save the checkpoint and exit.\n"
    "\n"
    "modes:\n"
    "  st        cross-entropy on clean images\n"
    "  pgd       PGD adversarial training (Madry): CE on PGD-K examples from a uniform start\n"
    "  fgsm-rs   fast adversarial training: uniform start, one step of --alpha (1.25 eps)\n"
    "  trades    CE(f(x)) + beta KL(f(x) || f(x_adv)) (HYDRA's trades_loss; beta 6)\n"
    "  mart      MART (Wang et al. 2020; beta 6)\n"
    "\n"
    "HYDRA pruning (score optimisation, the step between pretraining and fine-tuning):\n"
    "  --prune-scores       train the scores of every prunable tensor, not the weights, on the\n"
    "                       loss of --mode: steps run on W*m, m = the top (1-S) of |scores| per\n"
    "                       layer; scores get (dL/dW_eff * W) sign(s); weights and biases stay\n"
    "                       fixed, BatchNorm affine trains unless --freeze-bn.  Runs dense, as\n"
    "                       HYDRA's (dL/dW_eff is needed where m = 0).  OUT: the masked weights\n"
    "                       and their scores; fine-tune it with a plain `ticket train OUT ...`\n"
    "  --sparsity S         fraction pruned in every layer (required)\n"
    "  --scaled-score-init  start from s = sqrt(6/fan_in) W / max|W| (the layer-wise magnitude\n"
    "                       mask); tensors without scores always start so\n"
    "  --freeze-bn          keep the BatchNorm affine parameters fixed too\n"
    "\n"
    "data:\n"
    "  --data SPEC          fashion-mnist | fashion-mnist:DIR | mnist:DIR | cifar10:DIR | cifar100:DIR\n"
    "  --limit N            use the first N training images\n"
    "  --val N              hold out the last N of them for validation (0: no validation)\n"
    "  --subset F           train on the first fraction F of the rest (Double-Win's 0.01 / 0.1)\n"
    "  --augment LIST       none (default) or crop[:PAD],flip (random crop, pad 4; horizontal flip)\n"
    "optimisation:\n"
    "  --epochs E (1)  --batch B (128)  --lr LR (0.1)  --momentum M (0.9)  --nesterov\n"
    "  --wd WD (5e-4; --prune-scores: 1e-4, HYDRA's, on the scores too)\n"
    "  --schedule step|cosine|cyclic|constant (cosine)\n"
    "                       step: x0.1 at 50% and 75% of the epochs, or at --milestones A,B,...\n"
    "                       cosine: lr/2 (1 + cos((e-1)/E pi)) per epoch (HYDRA)\n"
    "                       cyclic: 0 -> lr -> 0 linearly over all steps, peak at 2E/5 (fast AT)\n"
    "  --seed S (1)\n"
    "attack (pixel units; fractions such as 8/255 accepted):\n"
    "  --eps E (8/255)  --alpha A (eps/4; fgsm-rs: 1.25 eps)  --steps K (10)  --beta B (6)\n"
    "  --attack-bn eval|train   BatchNorm mode of the training attack (eval; train as Double-Win)\n"
    "  --val-steps K        PGD steps of the validation attack (10; 0 skips RA)\n"
    "  --val-alpha A        step of the validation attack (--alpha, or eps/4 for st and fgsm-rs)\n"
    "running:\n"
    "  --engine auto|reference|compiled|dense   (auto: compiled, dense, reference in that\n"
    "                       order; with --prune-scores dense, reference)\n"
    "  --threads T          OpenMP threads\n"
    "  --checkpoint-dir DIR where OUT's checkpoint (NAME.ckpt.tkt) goes (default: beside OUT)\n"
    "  --resume             continue from the checkpoint when there is one\n"
    "  --log-csv FILE       per-epoch log as CSV\n"
    "  --json               print a summary as JSON on stdout\n"
    "testing hooks:\n"
    "  --init-delta FILE.npy   (N, C, H, W) attack starts indexed by training image, instead of\n"
    "                          random starts\n"
    "  --dump-adv FILE.npy  write each training image's last adversarial example (by index)\n"
    "  --max-steps N        stop after N steps of this invocation as if interrupted\n";

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { g_stop = sig; }

static const char *opt_value(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) != 0) return NULL;
  if (argv[*i][n] == '=') return argv[*i] + n + 1;
  if (argv[*i][n] != 0) return NULL;
  if (*i + 1 >= argc) return "";
  return argv[++*i];
}


/* path of OUT without a trailing ".tkt", plus suffix */
static char *with_suffix(const char *out, const char *suffix) {
  size_t n = strlen(out);
  if (n > 4 && strcmp(out + n - 4, ".tkt") == 0) n -= 4;
  char *p = malloc(n + strlen(suffix) + 1);
  if (!p) return NULL;
  memcpy(p, out, n);
  strcpy(p + n, suffix);
  return p;
}

static char *checkpoint_path(const char *out, const char *dir) {
  char *base = with_suffix(out, ".ckpt.tkt");
  if (!base || !dir) return base;
  const char *slash = strrchr(base, '/');
  const char *name = slash ? slash + 1 : base;
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  free(base);
  return p;
}

/* The checkpoint must be of MODEL: same tensors, same masks (score training: masks come from
 * the scores, and its checkpoints have none). */
static tk_status same_structure(const tk_model *a, const char *pa, const tk_model *b, const char *pb, int masks) {
  if (a->n_tensors != b->n_tensors || a->n_layers != b->n_layers)
    return tk_fail(TK_ERR_ARG, "%s: not a checkpoint of %s (%d tensors / %d layers vs %d / %d)", pb, pa, b->n_tensors,
                   b->n_layers, a->n_tensors, a->n_layers);
  for (int t = 0; t < a->n_tensors; t++) {
    const tk_tensor *x = &a->tensors[t], *y = &b->tensors[t];
    if (strcmp(x->name, y->name) != 0 || x->numel != y->numel)
      return tk_fail(TK_ERR_ARG, "%s: not a checkpoint of %s (tensor %s vs %s)", pb, pa, y->name, x->name);
    if (masks &&
        ((x->mask == NULL) != (y->mask == NULL) || (x->mask && memcmp(x->mask, y->mask, (size_t)x->numel) != 0)))
      return tk_fail(TK_ERR_ARG, "%s: the mask of %s differs from %s's; not a checkpoint of this model", pb, x->name, pa);
  }
  return TK_OK;
}

int cmd_train(int argc, char **argv) {
  const char *cmd = "train";
  if (cli_wants_help(argc, argv)) {
    fputs(usage_text, stdout);
    return 0;
  }
  tk_train_opts o;
  tk_train_opts_default(&o);
  const char *model_path = NULL, *data = NULL, *out = NULL, *ckdir = NULL, *log_csv = NULL, *engine_kind = "auto";
  const char *init_delta_path = NULL, *augment = "none", *dump_adv = NULL;
  int json = 0, resume = 0, mode_set = 0, alpha_set = 0, val_alpha_set = 0, val_steps_set = 0, wd_set = 0;
  long limit = 0, val_n = 0, threads = 0, max_steps = 0;
  double subset = 1.0;
  for (int i = 1; i < argc; i++) {
    const char *v;
    long k;
    double d;
#define NEED(name)                                                          \
  if (!*v) return cli_usage_error(cmd, "%s needs a value", name)
    if ((v = opt_value(argc, argv, &i, "--data"))) {
      NEED("--data");
      data = v;
    } else if ((v = opt_value(argc, argv, &i, "--mode"))) {
      NEED("--mode");
      if (!tk_train_mode_parse(v, &o.mode))
        return cli_usage_error(cmd, "--mode: '%s' is not st, pgd, fgsm-rs, trades or mart", v);
      mode_set = 1;
    } else if ((v = opt_value(argc, argv, &i, "--output")) || (v = opt_value(argc, argv, &i, "-o"))) {
      NEED("-o");
      out = v;
    } else if ((v = opt_value(argc, argv, &i, "--epochs"))) {
      if (!cli_parse_long(v, 1, 100000, &k)) return cli_usage_error(cmd, "--epochs: '%s' is not in 1..100000", v);
      o.epochs = (int)k;
    } else if ((v = opt_value(argc, argv, &i, "--batch"))) {
      if (!cli_parse_long(v, 2, 65536, &k)) return cli_usage_error(cmd, "--batch: '%s' is not in 2..65536", v);
      o.batch = (int)k;
    } else if ((v = opt_value(argc, argv, &i, "--lr"))) {
      if (!tk_parse_fraction(v, &o.sgd.lr) || o.sgd.lr < 0) return cli_usage_error(cmd, "--lr: '%s' is not a number >= 0", v);
    } else if ((v = opt_value(argc, argv, &i, "--momentum"))) {
      if (!tk_parse_fraction(v, &o.sgd.momentum) || o.sgd.momentum < 0 || o.sgd.momentum >= 1)
        return cli_usage_error(cmd, "--momentum: '%s' is not in [0, 1)", v);
    } else if (strcmp(argv[i], "--nesterov") == 0) {
      o.sgd.nesterov = 1;
    } else if ((v = opt_value(argc, argv, &i, "--wd"))) {
      if (!tk_parse_fraction(v, &o.sgd.wd) || o.sgd.wd < 0) return cli_usage_error(cmd, "--wd: '%s' is not a number >= 0", v);
      wd_set = 1;
    } else if ((v = opt_value(argc, argv, &i, "--schedule"))) {
      if (!tk_schedule_parse(v, &o.sched.kind))
        return cli_usage_error(cmd, "--schedule: '%s' is not step, cosine, cyclic or constant", v);
    } else if ((v = opt_value(argc, argv, &i, "--milestones"))) {
      NEED("--milestones");
      o.sched.n_milestones = 0;
      for (const char *p = v; *p;) {
        char *end;
        long mlt = strtol(p, &end, 10);
        if (end == p || mlt < 1 || mlt > 100000 || o.sched.n_milestones >= TK_MAX_MILESTONES || (*end && *end != ','))
          return cli_usage_error(cmd, "--milestones: '%s' is not a list of up to %d epochs", v, TK_MAX_MILESTONES);
        o.sched.milestones[o.sched.n_milestones++] = (int)mlt;
        p = *end ? end + 1 : end;
      }
    } else if ((v = opt_value(argc, argv, &i, "--eps"))) {
      if (!tk_parse_fraction(v, &o.eps) || o.eps < 0) return cli_usage_error(cmd, "--eps: '%s' is not a number >= 0", v);
    } else if ((v = opt_value(argc, argv, &i, "--alpha"))) {
      if (!tk_parse_fraction(v, &o.alpha) || o.alpha < 0) return cli_usage_error(cmd, "--alpha: '%s' is not a number >= 0", v);
      alpha_set = 1;
    } else if ((v = opt_value(argc, argv, &i, "--steps"))) {
      if (!cli_parse_long(v, 1, 10000, &k)) return cli_usage_error(cmd, "--steps: '%s' is not in 1..10000", v);
      o.steps = (int)k;
    } else if ((v = opt_value(argc, argv, &i, "--beta"))) {
      if (!tk_parse_fraction(v, &o.beta) || o.beta < 0) return cli_usage_error(cmd, "--beta: '%s' is not a number >= 0", v);
    } else if ((v = opt_value(argc, argv, &i, "--attack-bn"))) {
      if (strcmp(v, "eval") == 0) o.attack_bn = TK_BN_EVAL;
      else if (strcmp(v, "train") == 0) o.attack_bn = TK_BN_TRAIN;
      else return cli_usage_error(cmd, "--attack-bn: '%s' is not eval or train", v);
    } else if ((v = opt_value(argc, argv, &i, "--augment"))) {
      NEED("--augment");
      augment = v;
    } else if ((v = opt_value(argc, argv, &i, "--val-steps"))) {
      if (!cli_parse_long(v, 0, 10000, &k)) return cli_usage_error(cmd, "--val-steps: '%s' is not in 0..10000", v);
      o.val_steps = (int)k;
      val_steps_set = 1;
    } else if ((v = opt_value(argc, argv, &i, "--val-alpha"))) {
      if (!tk_parse_fraction(v, &o.val_alpha) || o.val_alpha < 0)
        return cli_usage_error(cmd, "--val-alpha: '%s' is not a number >= 0", v);
      val_alpha_set = 1;
    } else if ((v = opt_value(argc, argv, &i, "--val"))) {
      if (!cli_parse_long(v, 0, 100000000, &val_n)) return cli_usage_error(cmd, "--val: '%s' is not a count >= 0", v);
    } else if ((v = opt_value(argc, argv, &i, "--subset"))) {
      if (!tk_parse_fraction(v, &d) || !(d > 0 && d <= 1)) return cli_usage_error(cmd, "--subset: '%s' is not in (0, 1]", v);
      subset = d;
    } else if ((v = opt_value(argc, argv, &i, "--limit"))) {
      if (!cli_parse_long(v, 1, 100000000, &limit)) return cli_usage_error(cmd, "--limit: '%s' is not a count >= 1", v);
    } else if ((v = opt_value(argc, argv, &i, "--seed"))) {
      char *end;
      errno = 0;
      o.seed = strtoull(v, &end, 10);
      if (!*v || *end || errno || *v == '-') return cli_usage_error(cmd, "--seed: '%s' is not a non-negative integer", v);
    } else if ((v = opt_value(argc, argv, &i, "--engine"))) {
      NEED("--engine");
      engine_kind = v;
    } else if ((v = opt_value(argc, argv, &i, "--threads"))) {
      if (!cli_parse_long(v, 1, 1024, &threads)) return cli_usage_error(cmd, "--threads: '%s' is not in 1..1024", v);
    } else if ((v = opt_value(argc, argv, &i, "--checkpoint-dir"))) {
      NEED("--checkpoint-dir");
      ckdir = v;
    } else if ((v = opt_value(argc, argv, &i, "--log-csv"))) {
      NEED("--log-csv");
      log_csv = v;
    } else if ((v = opt_value(argc, argv, &i, "--init-delta"))) {
      NEED("--init-delta");
      init_delta_path = v;
    } else if ((v = opt_value(argc, argv, &i, "--dump-adv"))) {
      NEED("--dump-adv");
      dump_adv = v;
    } else if ((v = opt_value(argc, argv, &i, "--max-steps"))) {
      if (!cli_parse_long(v, 1, 1000000000, &max_steps)) return cli_usage_error(cmd, "--max-steps: '%s' is not a count >= 1", v);
    } else if (strcmp(argv[i], "--prune-scores") == 0) {
      o.prune_scores = 1;
    } else if ((v = opt_value(argc, argv, &i, "--sparsity"))) {
      if (!tk_parse_fraction(v, &o.sparsity) || !(o.sparsity >= 0 && o.sparsity <= 1))
        return cli_usage_error(cmd, "--sparsity: '%s' is not in [0, 1]", v);
    } else if (strcmp(argv[i], "--scaled-score-init") == 0) {
      o.scaled_score_init = 1;
    } else if (strcmp(argv[i], "--freeze-bn") == 0) {
      o.freeze_bn = 1;
    } else if (strcmp(argv[i], "--resume") == 0) {
      resume = 1;
    } else if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return cli_usage_error(cmd, "unknown option '%s'", argv[i]);
    } else if (!model_path) {
      model_path = argv[i];
    } else {
      return cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
    }
#undef NEED
  }
  if (!model_path) return cli_usage_error(cmd, "MODEL is missing");
  if (!data) return cli_usage_error(cmd, "--data SPEC is missing");
  if (!mode_set) return cli_usage_error(cmd, "--mode is missing (st, pgd, fgsm-rs, trades or mart)");
  if (!out) return cli_usage_error(cmd, "-o OUT is missing");
  int engine_kind_id;
  if (!tk_engine_kind_parse(engine_kind, &engine_kind_id))
    return cli_usage_error(cmd, "--engine: '%s' is not auto, reference, compiled or dense", engine_kind);
  /* augmentation */
  if (strcmp(augment, "none") != 0) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", augment);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
      if (strcmp(tok, "flip") == 0) o.flip = 1;
      else if (strcmp(tok, "crop") == 0) o.crop_pad = 4;
      else if (strncmp(tok, "crop:", 5) == 0) {
        long k;
        if (!cli_parse_long(tok + 5, 1, 64, &k)) return cli_usage_error(cmd, "--augment: '%s': padding must be 1..64", tok);
        o.crop_pad = (int)k;
      } else
        return cli_usage_error(cmd, "--augment: '%s' is not crop, crop:PAD, flip or none", tok);
    }
  }
  /* attack step defaults */
  if (!alpha_set) o.alpha = o.mode == TK_TRAIN_FGSM_RS ? 1.25 * o.eps : o.eps / 4;
  if (!val_alpha_set)
    o.val_alpha = (o.mode == TK_TRAIN_PGD || o.mode == TK_TRAIN_TRADES || o.mode == TK_TRAIN_MART) ? o.alpha : o.eps / 4;
  if (!val_steps_set && (o.mode == TK_TRAIN_PGD || o.mode == TK_TRAIN_TRADES || o.mode == TK_TRAIN_MART))
    o.val_steps = o.steps;
  if (o.prune_scores && !wd_set) o.sgd.wd = 1e-4; /* HYDRA's weight decay */
  tk_status st = tk_train_opts_check(&o);
  if (st != TK_OK) return cli_usage_error(cmd, "%s", tk_last_error());

  /* paths */
  char *ckpt = checkpoint_path(out, ckdir), *best_sa = with_suffix(out, ".best_sa.tkt"),
       *best_ra = with_suffix(out, ".best_ra.tkt");
  tk_model *m = NULL, *ck = NULL;
  tk_dataset *all = NULL, *train = NULL, *val = NULL;
  tk_engine *e = NULL;
  float *delta = NULL, *adv = NULL;
  char *config = NULL;
  tk_run_result res;
  memset(&res, 0, sizeof res);
  const char *engine_used = "?";
  int rc = 0;
  if (!ckpt || !best_sa || !best_ra) {
    rc = cli_error(cmd, tk_fail(TK_ERR_NOMEM, "out of memory"));
    goto done;
  }

  if (ckdir && mkdir(ckdir, 0755) != 0 && errno != EEXIST) {
    rc = cli_error(cmd, tk_fail(TK_ERR_IO, "--checkpoint-dir: cannot create %s: %s", ckdir, strerror(errno)));
    goto done;
  }

  /* the model: MODEL, or its checkpoint with --resume */
  if ((st = tk_model_load(model_path, &m)) != TK_OK || (st = tk_model_infer(m)) != TK_OK) {
    rc = cli_error(cmd, st);
    goto done;
  }
  if (resume) {
    if (access(ckpt, F_OK) == 0) {
      if ((st = tk_model_load(ckpt, &ck)) != TK_OK || (st = tk_model_infer(ck)) != TK_OK ||
          (st = same_structure(m, model_path, ck, ckpt, !o.prune_scores)) != TK_OK) {
        rc = cli_error(cmd, st);
        goto done;
      }
      if (!tk_train_state_resumable(ck)) {
        rc = cli_error(cmd, tk_fail(TK_ERR_FORMAT, "%s: train_state: no generator state; not a checkpoint", ckpt));
        goto done;
      }
      fprintf(stderr, "ticket train: resuming from %s (epoch %d done, step %lld)\n", ckpt, ck->train->epoch,
              (long long)ck->train->step);
      tk_model_free(m);
      m = ck;
      ck = NULL;
    } else {
      fprintf(stderr, "ticket train: no checkpoint at %s; starting from the beginning\n", ckpt);
    }
  }

  /* data: the first `limit` training images; the last `val` of them validate; --subset takes
   * a prefix of the rest */
  if ((st = tk_data_load(data, "train", 0, limit, &all)) != TK_OK) {
    rc = cli_error(cmd, st);
    goto done;
  }
  if (val_n >= all->n - 1) {
    rc = cli_usage_error(cmd, "--val: %ld of %d images leaves fewer than 2 to train on", val_n, all->n);
    goto done;
  }
  int n_rest = all->n - (int)val_n;
  int n_train = (int)floor(subset * n_rest + 1e-9);
  if (n_train < 2) {
    rc = cli_usage_error(cmd, "--subset: %g of %d images leaves fewer than 2 to train on", subset, n_rest);
    goto done;
  }
  if ((st = tk_dataset_slice(all, 0, n_train, &train)) != TK_OK ||
      (val_n > 0 && (st = tk_dataset_slice(all, n_rest, (int)val_n, &val)) != TK_OK)) {
    rc = cli_error(cmd, st);
    goto done;
  }
  tk_dataset_free(all);
  all = NULL;

  if (init_delta_path) {
    int nd;
    int64_t sh[8];
    if ((st = tk_npy_read_f32(init_delta_path, &nd, sh, &delta)) != TK_OK) {
      rc = cli_error(cmd, st);
      goto done;
    }
    if (nd != 4 || sh[0] < n_train || sh[1] != m->in_c || sh[2] != m->in_h || sh[3] != m->in_w) {
      rc = cli_error(cmd, tk_fail(TK_ERR_SHAPE,
                                  "%s: shape: expected (>=%d, %d, %d, %d) attack starts, one per training image",
                                  init_delta_path, n_train, m->in_c, m->in_h, m->in_w));
      goto done;
    }
  }

  if (dump_adv) {
    if (o.mode == TK_TRAIN_ST) {
      rc = cli_usage_error(cmd, "--dump-adv: mode st makes no adversarial examples");
      goto done;
    }
    if (!(adv = calloc((size_t)n_train * m->in_c * m->in_h * m->in_w, sizeof(float)))) {
      rc = cli_error(cmd, tk_fail(TK_ERR_NOMEM, "--dump-adv: out of memory"));
      goto done;
    }
  }

#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads((int)threads);
#endif
  {
    /* engines made through tk_engine_create carry the gradient kernels and the thread count
     * set above; auto takes the fastest this build has */
    char note[512] = "";
    if (o.prune_scores && engine_kind_id < 0) {
      /* score training runs dense: the dense engine, else the reference one */
      st = tk_engine_create(m, TK_ENGINE_DENSE, o.batch, &e);
      if (st != TK_OK) {
        if (st != TK_ERR_UNSUPPORTED)
          snprintf(note, sizeof note, "the dense engine failed (%s); using the reference engine", tk_last_error());
        st = tk_engine_create(m, TK_ENGINE_REFERENCE, o.batch, &e);
      }
    } else {
      st = tk_engine_create_best(m, engine_kind_id, o.batch, &e, note, sizeof note);
    }
    if (st != TK_OK) {
      rc = cli_error(cmd, st);
      goto done;
    }
    if (note[0]) fprintf(stderr, "ticket train: note: %s\n", note);
    engine_used = e->v->name;
  }
  if (threads > 0) e->threads = (int)threads;

  /* the settings that shape the trajectory: a checkpoint only resumes with the same ones */
  {
    char aug[64] = "none";
    if (o.crop_pad || o.flip) {
      int len = 0;
      aug[0] = 0;
      if (o.crop_pad) len = snprintf(aug, sizeof aug, "crop:%d", o.crop_pad);
      if (o.flip) snprintf(aug + len, sizeof aug - (size_t)len, "%sflip", len ? "," : "");
    }
    char ms[256] = "";
    for (int k = 0; k < o.sched.n_milestones; k++)
      snprintf(ms + strlen(ms), sizeof ms - strlen(ms), "%s%d", k ? "," : "", o.sched.milestones[k]);
    size_t cap = 4096 + strlen(data) + (init_delta_path ? strlen(init_delta_path) : 0);
    config = malloc(cap);
    if (!config) {
      rc = cli_error(cmd, tk_fail(TK_ERR_NOMEM, "out of memory"));
      goto done;
    }
    int len = snprintf(config, cap,
                       "{\"data\":\"%s\",\"limit\":%ld,\"val\":%ld,\"subset\":%.17g,\"train_images\":%d,"
                       "\"mode\":\"%s\",\"epochs\":%d,\"batch\":%d,\"lr\":%.17g,\"momentum\":%.17g,"
                       "\"nesterov\":%d,\"wd\":%.17g,\"schedule\":\"%s\",\"milestones\":\"%s\",\"eps\":%.17g,"
                       "\"alpha\":%.17g,\"steps\":%d,\"beta\":%.17g,\"attack_bn\":\"%s\",\"augment\":\"%s\","
                       "\"val_steps\":%d,\"val_alpha\":%.17g,\"seed\":%llu,\"init_delta\":%s%s%s",
                       data, limit, val_n, subset, n_train, tk_train_mode_name(o.mode), o.epochs, o.batch, o.sgd.lr,
                       o.sgd.momentum, o.sgd.nesterov, o.sgd.wd, tk_schedule_name(o.sched.kind), ms, o.eps, o.alpha,
                       o.steps, o.beta, o.attack_bn == TK_BN_TRAIN ? "train" : "eval", aug, o.val_steps, o.val_alpha,
                       (unsigned long long)o.seed, init_delta_path ? "\"" : "",
                       init_delta_path ? init_delta_path : "null", init_delta_path ? "\"" : "");
    /* score training adds its settings (plain runs keep the keys they always had, so their
     * older checkpoints still resume) */
    if (len >= 0 && (size_t)len < cap && o.prune_scores)
      len += snprintf(config + len, cap - (size_t)len,
                      ",\"prune_scores\":1,\"sparsity\":%.17g,\"scaled_score_init\":%d,\"freeze_bn\":%d", o.sparsity,
                      o.scaled_score_init, o.freeze_bn);
    if (len >= 0 && (size_t)len < cap) len += snprintf(config + len, cap - (size_t)len, "}");
    if (len < 0 || (size_t)len >= cap || strpbrk(data, "\"\\") || (init_delta_path && strpbrk(init_delta_path, "\"\\"))) {
      rc = cli_usage_error(cmd, "--data / --init-delta: quotes and backslashes are not supported in paths");
      goto done;
    }
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND; /* a second signal stops at once */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  tk_run_opts r;
  memset(&r, 0, sizeof r);
  r.out = out;
  r.best_sa_out = val ? best_sa : NULL;
  r.best_ra_out = val ? best_ra : NULL;
  r.checkpoint = ckpt;
  r.log_csv = log_csv;
  r.config = config;
  r.init_delta = delta;
  r.adv_out = adv;
  r.progress = 1;
  r.stop = &g_stop;
  r.max_steps = (int)max_steps;
  r.resume = resume;
  fprintf(stderr, "ticket train: %s%s on %d images (%d validation), engine %s, %s, %d epochs of batch %d\n",
          tk_train_mode_name(o.mode), o.prune_scores ? " score training (HYDRA)" : "", train->n, val ? val->n : 0,
          engine_used, tk_schedule_name(o.sched.kind), o.epochs, o.batch);
  st = tk_train_run(e, train, val, &o, &r, &res);
  if (st != TK_OK) {
    rc = cli_error(cmd, st);
    goto done;
  }
  if (adv) {
    int64_t shape[4] = {n_train, m->in_c, m->in_h, m->in_w};
    if ((st = tk_npy_write_f32(dump_adv, 4, shape, adv)) != TK_OK) {
      rc = cli_error(cmd, st);
      goto done;
    }
  }
  if (res.interrupted) {
    fprintf(stderr, "ticket train: stopped after %d epochs and %lld steps; checkpoint saved to %s "
                    "(continue with --resume)\n", res.epochs_done, (long long)res.steps, ckpt);
    rc = g_stop ? 128 + (int)g_stop : 0;
  } else {
    fprintf(stderr, "ticket train: wrote %s (sparsity %.4f%s%s)\n", out, res.sparsity, val ? "; best models " : "",
            val ? best_sa : "");
    if (val) fprintf(stderr, "ticket train: and %s\n", best_ra);
  }
  if (json) {
    printf("{\"command\":\"train\",\"model\":");
    cli_json_string(stdout, model_path);
    printf(",\"out\":");
    if (res.interrupted) printf("null");
    else cli_json_string(stdout, out);
    printf(",\"checkpoint\":");
    cli_json_string(stdout, ckpt);
    printf(",\"best_sa_out\":");
    if (val && res.best_sa >= 0) cli_json_string(stdout, best_sa);
    else printf("null");
    printf(",\"best_ra_out\":");
    if (val && res.best_ra >= 0) cli_json_string(stdout, best_ra);
    else printf("null");
    printf(",\"engine\":\"%s\",\"threads\":%ld,\"mode\":\"%s\",\"epochs\":%d,\"epochs_done\":%d,\"steps\":%lld,"
           "\"interrupted\":%s,\"resumed_epoch\":%d,\"train_images\":%d,\"val_images\":%d,"
           "\"train_loss\":%.9g,\"train_acc\":%.9g,\"val_sa\":%.9g,\"val_ra\":%.9g,\"best_sa\":%.9g,"
           "\"best_sa_epoch\":%d,\"best_ra\":%.9g,\"best_ra_epoch\":%d,\"eps\":%.9g,\"sparsity\":%.9g,"
           "\"mask_ok\":true,\"prune_scores\":%s,\"scores_init\":%d,\"images_per_s\":%.6g,\"seconds\":%.6g,"
           "\"config\":%s,\"log\":[",
           engine_used, threads, tk_train_mode_name(o.mode), o.epochs, res.epochs_done, (long long)res.steps,
           res.interrupted ? "true" : "false", res.resumed_epoch, train->n, val ? val->n : 0, res.train_loss,
           res.train_acc, res.val_sa, res.val_ra, res.best_sa, res.best_sa_epoch, res.best_ra, res.best_ra_epoch,
           o.eps, res.sparsity, o.prune_scores ? "true" : "false", res.scores_init, res.images_per_s, res.seconds,
           config);
    int first = 1;
    for (const char *p = res.log ? res.log : ""; *p;) {
      const char *nl = strchr(p, '\n');
      size_t n = nl ? (size_t)(nl - p) : strlen(p);
      if (n) {
        printf("%s%.*s", first ? "" : ",", (int)n, p);
        first = 0;
      }
      if (!nl) break;
      p = nl + 1;
    }
    printf("]}\n");
  }
done:
  /* the handlers stay until the report is out: a signal after the run has finished (its files
   * written) is ignored, instead of killing the process halfway through its JSON */
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  free(res.log);
  free(config);
  free(delta);
  free(adv);
  tk_engine_free(e);
  tk_model_free(m);
  tk_model_free(ck);
  tk_dataset_free(all);
  tk_dataset_free(train);
  tk_dataset_free(val);
  free(ckpt);
  free(best_sa);
  free(best_ra);
  return rc;
}
