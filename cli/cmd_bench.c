/* cmd_bench.c -- `ticket bench`: latency and throughput of the compiled engine, side by side
 * with the dense oneDNN engine and PyTorch, their iterations interleaved in the same run.
 *
 * Method (DESIGN.md section 8): every engine is created for the same batch and thread count,
 * then iterations take turns: compiled, dense, torch (each of its variants), then dense, torch,
 * compiled, ... (each iteration starts one turn later, so no engine always follows the same
 * one) -- warm-up iterations too -- so that drifting clocks and busy neighbours hit all
 * sides alike (on this shared machine the same configuration moves by 15% between runs minutes
 * apart, which a ratio of two sequential runs would take for a speedup).  Each turn is timed on
 * its own; the first --warmup of each engine are dropped and the report gives mean, median, p90,
 * p99, min and max latency, images/s (batch x iterations / summed time) and the ratio of medians,
 * all computed here from the interleaved turns.
 *
 * PyTorch: --vs torch exports the network (graph.json + weights.bin in a temporary directory)
 * and starts bench/torch_bench.py under /usr/bin/python3 (TICKET_PYTHON overrides) with the same
 * batch and threads and OMP_WAIT_POLICY=PASSIVE, as a worker: it loads the network once, checks
 * its logits against ours on our input batch, says which variants it has (infer: eager and
 * jit+optimize_for_inference; pgd, train: eager), then does one iteration per "run VARIANT"
 * line and answers with the seconds it measured around that iteration alone (pipe latency is
 * not counted).  Every variant takes its own turn in every iteration, and "its faster variant"
 * in the speedup is the one with the lower median of its interleaved turns.  The turns are
 * strictly sequential: we wait for the reply before our next turn, and the worker blocks on its
 * stdin while our engines run.  Before PyTorch's turns we wait (up to 50 ms) until our idle
 * OpenMP threads sleep -- libgomp's default policy spins a few milliseconds after each parallel
 * region -- and count the iterations where they still spun (OMP_WAIT_POLICY=ACTIVE; the report
 * notes it).  A worker that does not start, dies, answers garbage or does not answer in time
 * (600 s to be ready and for the first turn of a variant, then 20x its slowest turn, at least
 * 60 s; TICKET_TORCH_TIMEOUT=S sets all of these) ends the run with one line and a non-zero
 * exit; it is killed and reaped on every path.
 *
 * Modes: infer (eval forward), pgd (PGD-10 evaluation of the batch: 10 forward+input-gradient
 * steps and a final forward), train (one PGD-10 training step: the attack with train-mode
 * BatchNorm, a train-mode forward, backward with parameter gradients, a masked SGD step and
 * the engine's sync).
 *
 * MODEL is a model file or a zoo architecture name (initialised with --seed); --random-mask S
 * first masks every prunable tensor uniformly at random to sparsity S (each tensor keeps
 * exactly round((1-S) * numel) weights), the masks the sweep in bench/sweep.sh uses.
 */
#include "cli.h"

#include "../compiler/compile.h"
#include "../compiler/zoo.h"
#include "../runtime/attack.h"
#include "../runtime/dense.h"
#include "../runtime/exec.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static void usage(FILE *f) {
  fprintf(f,
          "usage: ticket bench MODEL [--batch N] [--threads T] [--iters K] [--warmup W]\n"
          "                    [--vs dense|torch|dense,torch|none] [--mode infer|pgd|train]\n"
          "                    [--random-mask S] [--seed S] [--force VARIANT] [--layers]\n"
          "                    [--alt NAME=VALUE[,...]] [--compile-stats] [--torch-dir DIR] [--json]\n"
          "\n"
          "Times the compiled engine on random inputs, its iterations interleaved with those of the\n"
          "dense oneDNN engine and (--vs torch) of PyTorch 1.13 on the same network: compiled, dense,\n"
          "torch, then dense, torch, compiled, ... (each iteration starts one turn later), one at a\n"
          "time, each timed on its own.  Prints latency (mean, median, p90, p99, min, max), images/s\n"
          "and the ratio of medians.\n"
          "\n"
          "  MODEL              a model file (.tkt) or a zoo architecture name (e.g. resnet18)\n"
          "  --batch N          images per call (default 1)\n"
          "  --threads T        OpenMP threads of every engine, and torch.set_num_threads (default:\n"
          "                     OMP_NUM_THREADS or all cores)\n"
          "  --iters K          timed iterations per engine (default 50; 10 for pgd and train)\n"
          "  --warmup W         untimed iterations first, interleaved the same way (default 5; 2 for\n"
          "                     pgd and train)\n"
          "  --vs WHAT          baselines: dense (default), torch, dense,torch or none\n"
          "  --mode M           infer (eval forward, default), pgd (PGD-10 evaluation: images/s of\n"
          "                     10 forward+input-gradient steps and a final forward) or train (one\n"
          "                     PGD-10 training step: attack, forward, backward, SGD, sync)\n"
          "  --attack-bn B      train mode: the attack's BatchNorm, train (batch statistics, as\n"
          "                     Madry's PGD-AT; default) or eval (running statistics, as HYDRA's\n"
          "                     attacks and ticket train's default: runs as the parallel attack)\n"
          "  --random-mask S    first prune every prunable tensor uniformly at random to sparsity S\n"
          "  --seed S           seed of the zoo initialisation, the masks and the inputs (default 1)\n"
          "  --force VARIANT    every conv/linear of the compiled engine on one kernel variant\n"
          "                     (dense, reference, sparse-table, sparse-unrolled, value-baked)\n"
          "  --layers           also a per-layer profile of our engines (a separate pass)\n"
          "  --alt NAME=VALUE[,NAME=VALUE...]\n"
          "                     one more compiled engine, built with these environment variables set\n"
          "                     (TICKET_* settings read when an engine is planned and compiled, e.g.\n"
          "                     TICKET_BWD_T=0 or TICKET_CLANG_EXTRA=-DTK_NO_NT), its turns interleaved\n"
          "                     with the others: an A/B of two builds of our engine in one run\n"
          "  --compile-stats    build the compiled engine twice from a fresh cache: cold and warm\n"
          "                     build times and the bytes of generated objects\n"
          "  --torch-dir DIR    keep the network given to PyTorch (graph.json, weights.bin, x.bin,\n"
          "                     logits.bin) and its stderr (torch_bench.log) in DIR\n"
          "  --json             print one JSON object (one line)\n"
          "\n"
          "PyTorch (bench/torch_bench.py under /usr/bin/python3, or $TICKET_PYTHON) runs as a worker\n"
          "process that loads the network once and checks its logits against ours, then does one\n"
          "iteration per turn and reports the time it measured around it; with several variants\n"
          "(infer: eager and jit+optimize_for_inference) each takes a turn, and the speedup is over\n"
          "the one with the lower median.  Its replies have a deadline (600 s for loading and a\n"
          "variant's first turn, then 20x its slowest turn, at least 60 s; TICKET_TORCH_TIMEOUT=S\n"
          "sets them all): a worker that cannot start, dies or stalls ends the run with one error.\n"
          "\n"
          "PyTorch runs with OMP_WAIT_POLICY=PASSIVE.  On a busy machine run ticket under it too\n"
          "(OMP_WAIT_POLICY=PASSIVE ticket bench ...): spinning OpenMP threads lose time slices at\n"
          "every barrier.  Before PyTorch's turns ticket waits (up to 50 ms) for its idle threads to\n"
          "sleep; under OMP_WAIT_POLICY=ACTIVE they never do, and the report says so.  The policy in\n"
          "effect and the load average are reported, and for every engine the share of all CPUs' time\n"
          "the hypervisor took (steal, from /proc/stat) during its timed turns: on a shared virtual\n"
          "machine that is noise interleaving cannot remove, and above 5%% the report says so.\n");
}

/* ---- options -------------------------------------------------------------------------------------- */

typedef enum { MODE_INFER, MODE_PGD, MODE_TRAIN } bench_mode;
static const char *const g_mode_names[] = {"infer", "pgd", "train"};

typedef struct {
  const char *model;
  int batch, threads, iters, warmup, seed;
  int vs_dense, vs_torch;
  bench_mode mode;
  double random_mask; /* < 0: none */
  int force;          /* -1 or a tk_variant */
  int layers, compile_stats, json;
  const char *torch_dir; /* keep the PyTorch export here */
  const char *alt;       /* --alt: the environment of a second compiled engine */
  int attack_bn_eval;    /* train mode: the attack in eval-mode BatchNorm */
} bench_opts;

static int parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return 0;
  *out = (int)v;
  return 1;
}

static int variant_by_name(const char *s) {
  for (int v = 1; v < TK_VARIANT_COUNT; v++)
    if (!strcmp(s, tk_variant_name((tk_variant)v))) return v;
  return -1;
}

/* ---- the model ------------------------------------------------------------------------------------ */

static tk_status load_model(const bench_opts *o, tk_model **out) {
  struct stat sb;
  if (stat(o->model, &sb) == 0) return tk_model_load(o->model, out);
  for (const char *const *z = tk_zoo_names(); *z; z++)
    if (!strcmp(*z, o->model)) return tk_zoo_create(o->model, 0, 0, 0, 0, (uint64_t)o->seed, out);
  return tk_fail(TK_ERR_IO, "%s: no such model file or zoo architecture (ticket init --list)", o->model);
}

/* Every prunable tensor keeps exactly round((1-s) numel) weights chosen uniformly at random. */
static tk_status random_masks(tk_model *m, double s, uint64_t seed) {
  tk_rng rng;
  tk_rng_seed(&rng, seed);
  for (int t = 0; t < m->n_tensors; t++) {
    tk_tensor *tt = &m->tensors[t];
    if (!tt->prunable) continue;
    int64_t n = tt->numel, keep = (int64_t)llround((1.0 - s) * (double)n);
    uint32_t *idx = tk_malloc((size_t)n * sizeof(uint32_t));
    uint8_t *mask = tk_calloc((size_t)n, 1);
    if (!idx || !mask) {
      free(idx);
      free(mask);
      return TK_ERR_NOMEM;
    }
    for (int64_t i = 0; i < n; i++) idx[i] = (uint32_t)i;
    for (int64_t i = 0; i < keep; i++) { /* partial Fisher-Yates */
      int64_t j = i + (int64_t)tk_rng_below(&rng, (uint64_t)(n - i));
      uint32_t tmp = idx[i];
      idx[i] = idx[j];
      idx[j] = tmp;
      mask[idx[i]] = 1;
    }
    tk_status st = tk_tensor_set_mask(tt, mask);
    free(idx);
    free(mask);
    if (st != TK_OK) return st;
  }
  free(m->prov.method);
  m->prov.method = tk_strdup("random");
  m->prov.sparsity = tk_model_sparsity(m);
  return TK_OK;
}

/* ---- one iteration of each mode --------------------------------------------------------------------- */

typedef struct {
  tk_engine *e;
  tk_model *m;
  const char *name;
  float *logits, *dlogits, *xadv;
  tk_attacker *atk; /* pgd and train modes */
  double *t;   /* per timed iteration */
  int nt;
  double create_s;
  double steal_j, total_j; /* the machine's steal and total CPU time over the timed turns (jiffies) */
} runner;

/* the BatchNorm mode of the pgd and train modes' attacks */
static tk_bn_mode attack_bn(const bench_opts *o) {
  return o->mode == MODE_PGD || o->attack_bn_eval ? TK_BN_EVAL : TK_BN_TRAIN;
}

/* The attacker of the pgd and train modes: PGD-10, eps 8/255, alpha 2/255, uniform start, the
 * last iterate (no tracking: every example runs every step, as in the PyTorch loop), through
 * the runtime's attacker -- in eval mode the parallel attack of attack.h on an executor engine
 * with 2+ threads (TICKET_ATTACK_CHUNK=0 turns it off, e.g. through --alt); a train step's
 * attack with batch statistics that its forwards update (Madry's PGD-AT), or with
 * --attack-bn eval in eval mode (HYDRA; ticket train's default). */
static tk_status make_attacker(runner *r, const bench_opts *o, int serial) {
  if (o->mode == MODE_INFER) return TK_OK;
  tk_attack_opts ao;
  tk_attack_opts_default(&ao);
  if (serial) ao.chunk = 0;
  ao.steps = 10;
  ao.final_iterate = 1;
  ao.bn = attack_bn(o);
  ao.update_bn_stats = ao.bn == TK_BN_TRAIN;
  return tk_attacker_create(r->e, &ao, &r->atk);
}

static tk_status iteration(runner *r, bench_mode mode, const float *x, const int *y, int n, tk_rng *rng) {
  tk_status st;
  if (mode == MODE_INFER) return tk_engine_forward(r->e, x, n, TK_BN_EVAL, r->logits);
  if ((st = tk_attacker_run(r->atk, x, y, n, rng, r->xadv, NULL)) != TK_OK) return st;
  if (mode == MODE_PGD) return tk_engine_forward(r->e, r->xadv, n, TK_BN_EVAL, r->logits);
  if ((st = tk_engine_forward(r->e, r->xadv, n, TK_BN_TRAIN, r->logits)) != TK_OK) return st;
  tk_softmax_xent(r->logits, y, n, r->m->classes, r->dlogits, NULL);
  if ((st = tk_engine_backward(r->e, r->dlogits, NULL, 1)) != TK_OK) return st;
  for (int t = 0; t < r->m->n_tensors; t++) { /* SGD that keeps the mask exact */
    tk_tensor *tt = &r->m->tensors[t];
    const float *g = r->e->grads[t];
    if (!g) continue;
    for (int64_t i = 0; i < tt->numel; i++)
      if (!tt->mask || tt->mask[i]) tt->data[i] -= 1e-4f * g[i];
  }
  return tk_engine_sync(r->e, 0);
}

/* ---- statistics --------------------------------------------------------------------------------- */

typedef struct {
  double mean, median, p90, p99, min, max, ips;
  int iters;
  double steal; /* fraction of all CPUs' time the hypervisor took during the turns; NaN: unknown */
} lat_stats;

/* Steal and total time of all CPUs so far, in jiffies (/proc/stat's first line: user nice
 * system idle iowait irq softirq steal ...); both 0 where unreadable.  On a shared virtual
 * machine the hypervisor's steal is the noise no interleaving removes: a turn that lost a
 * tenth of the CPUs ran about that much slower. */
typedef struct {
  double steal, total;
} cpu_ticks;

static cpu_ticks read_ticks(void) {
  cpu_ticks c = {0, 0};
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return c;
  unsigned long long v[8] = {0};
  if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
             &v[7]) == 8) {
    for (int i = 0; i < 8; i++) c.total += (double)v[i];
    c.steal = (double)v[7];
  }
  fclose(f);
  return c;
}

static void add_ticks(double *steal, double *total, cpu_ticks a, cpu_ticks b) {
  *steal += b.steal - a.steal;
  *total += b.total - a.total;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static lat_stats summarise(const double *t, int n, int batch) {
  lat_stats s = {0};
  double *c = malloc((size_t)n * sizeof *c), sum = 0;
  if (!c || n < 1) {
    free(c);
    return s;
  }
  memcpy(c, t, (size_t)n * sizeof *c);
  qsort(c, (size_t)n, sizeof *c, cmp_double);
  for (int i = 0; i < n; i++) sum += c[i];
  int i90 = (int)ceil(0.90 * n) - 1, i99 = (int)ceil(0.99 * n) - 1;
  s.mean = sum / n * 1e3;
  s.median = (c[(n - 1) / 2] + c[n / 2]) / 2 * 1e3;
  s.p90 = c[i90 < 0 ? 0 : i90] * 1e3;
  s.p99 = c[i99 < 0 ? 0 : i99] * 1e3;
  s.min = c[0] * 1e3;
  s.max = c[n - 1] * 1e3;
  s.ips = batch * n / sum;
  s.iters = n;
  free(c);
  return s;
}

static void json_stats(FILE *f, const lat_stats *s) {
  fprintf(f, "{\"mean_ms\": %.6g, \"median_ms\": %.6g, \"p90_ms\": %.6g, \"p99_ms\": %.6g, \"min_ms\": %.6g, "
             "\"max_ms\": %.6g, \"iters\": %d, \"images_per_s\": %.6g, \"steal\": ",
          s->mean, s->median, s->p90, s->p99, s->min, s->max, s->iters, s->ips);
  if (isfinite(s->steal)) fprintf(f, "%.4f}", s->steal);
  else fprintf(f, "null}");
}

static void row(const char *name, const lat_stats *s) {
  printf("  %-16s %9.3f %9.3f %9.3f %9.3f %9.3f %10.1f", name, s->mean, s->median, s->p90, s->p99, s->min, s->ips);
  if (isfinite(s->steal)) printf(" %6.1f%%\n", 100 * s->steal);
  else printf(" %7s\n", "-");
}

/* the steal fraction of accumulated jiffies; NaN under 100 jiffies (about half a second of
 * two CPUs), where the 10 ms tick makes the fraction meaningless */
static double steal_of(double steal_j, double total_j) { return total_j >= 100 ? steal_j / total_j : NAN; }

/* ---- the PyTorch baseline ------------------------------------------------------------------------------ */

/* graph.json + weights.bin (see bench/torch_bench.py) */
static tk_status export_graph(const tk_model *m, const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/graph.json", dir);
  FILE *f = fopen(path, "w");
  if (!f) return tk_fail(TK_ERR_IO, "%s: %s", path, strerror(errno));
  fprintf(f, "{\"input\": [%d, %d, %d], \"classes\": %d, \"min\": %.9g, \"max\": %.9g", m->in_c, m->in_h, m->in_w,
          m->classes, m->lo, m->hi);
  for (int k = 0; k < 2; k++) {
    const float *v = k ? m->std : m->mean;
    fprintf(f, ", \"%s\": ", k ? "std" : "mean");
    if (!v) {
      fputs("null", f);
      continue;
    }
    for (int c = 0; c < m->in_c; c++) fprintf(f, "%s%.9g", c ? ", " : "[", v[c]);
    fputc(']', f);
  }
  fputs(", \"tensors\": [", f);
  size_t off = 0;
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    fprintf(f, "%s{\"name\": ", t ? ", " : "");
    cli_json_string(f, tt->name);
    fputs(", \"shape\": [", f);
    for (int d = 0; d < tt->ndim; d++) fprintf(f, "%s%lld", d ? ", " : "", (long long)tt->shape[d]);
    fprintf(f, "], \"offset\": %zu, \"trainable\": %s}", off, tt->trainable ? "true" : "false");
    off += (size_t)tt->numel * sizeof(float);
  }
  fputs("], \"layers\": [", f);
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    fprintf(f, "%s{\"name\": ", i ? ", " : "");
    cli_json_string(f, l->name);
    fprintf(f, ", \"op\": \"%s\", \"inputs\": [%d", tk_op_name(l->op), l->inputs[0]);
    if (l->n_inputs > 1) fprintf(f, ", %d", l->inputs[1]);
    fprintf(f, "], \"kernel\": [%d, %d], \"stride\": [%d, %d], \"padding\": [%d, %d], \"dilation\": [%d, %d], "
               "\"groups\": %d, \"eps\": %.9g, \"momentum\": %.9g",
            l->kh, l->kw, l->sh, l->sw, l->ph, l->pw, l->dh, l->dw, l->groups, l->eps, l->momentum);
    const int refs[4] = {l->weight, l->bias, l->mean, l->var};
    static const char *const keys[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int k = 0; k < 4; k++) {
      fprintf(f, ", \"%s\": ", keys[k]);
      if (refs[k] >= 0) cli_json_string(f, m->tensors[refs[k]].name);
      else fputs("null", f);
    }
    fputc('}', f);
  }
  fputs("]}\n", f);
  if (fclose(f) != 0) return tk_fail(TK_ERR_IO, "%s: write failed", path);
  snprintf(path, sizeof path, "%s/weights.bin", dir);
  if (!(f = fopen(path, "wb"))) return tk_fail(TK_ERR_IO, "%s: %s", path, strerror(errno));
  for (int t = 0; t < m->n_tensors; t++) {
    const tk_tensor *tt = &m->tensors[t];
    if (fwrite(tt->data, sizeof(float), (size_t)tt->numel, f) != (size_t)tt->numel) {
      fclose(f);
      return tk_fail(TK_ERR_IO, "%s: short write", path);
    }
  }
  if (fclose(f) != 0) return tk_fail(TK_ERR_IO, "%s: write failed", path);
  return TK_OK;
}

static tk_status write_raw(const char *path, const float *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return tk_fail(TK_ERR_IO, "%s: %s", path, strerror(errno));
  size_t w = fwrite(p, sizeof(float), n, f);
  if (fclose(f) != 0 || w != n) return tk_fail(TK_ERR_IO, "%s: short write", path);
  return TK_OK;
}

static const char *source_dir(void) {
  const char *s = getenv("TICKET_SOURCE_DIR");
  return s && *s ? s : TICKET_SOURCE_DIR;
}

static long long dir_bytes(const char *dir, int *files) {
  DIR *d = opendir(dir);
  long long total = 0;
  *files = 0;
  if (!d) return 0;
  struct dirent *de;
  char p[4400];
  struct stat sb;
  while ((de = readdir(d))) {
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) total += sb.st_size, (*files)++;
  }
  closedir(d);
  return total;
}

/* ---- the PyTorch worker ------------------------------------------------------------------------------- */

/* bench/torch_bench.py runs as a child process that loads the network once and then does one
 * iteration per command, so that its turns interleave with ours (protocol: its header comment).
 * Only one side works at a time: we write "run V" and block until the reply; it blocks on its
 * stdin while our engines run.  Every read has a deadline, so a dead, mute or hung worker ends
 * the benchmark with one line (and the worker killed and reaped), never a hang. */

#define TORCH_MAX_VARIANTS 4
#define TORCH_READY_S 600.0     /* import torch, load the network, trace, check: generous */
#define TORCH_FIRST_TURN_S 600.0 /* the first turn of a variant (lazy initialisation, jit profiling) */
#define TORCH_TURN_FLOOR_S 60.0 /* later turns: max(this, 20 x the slowest earlier turn of the variant) */

extern char **environ;

typedef struct {
  pid_t pid;      /* > 0 while it runs */
  int to, from;   /* its stdin (our commands), its stdout (its replies); -1 when closed */
  char who[4400]; /* "INTERPRETER SCRIPT", for messages */
  char dir[4096], log[4200]; /* the exported network; its stderr */
  int keep_dir;
  double timeout_s; /* TICKET_TORCH_TIMEOUT, else 0: the defaults above */
  char rbuf[16384]; /* bytes read, not yet a whole line */
  size_t rlen;
  char *hello; /* its ready line: a JSON object */
  int nvar;
  char var[TORCH_MAX_VARIANTS][16];
  double *t[TORCH_MAX_VARIANTS]; /* seconds per timed turn */
  int nt[TORCH_MAX_VARIANTS], turns[TORCH_MAX_VARIANTS];
  double slowest[TORCH_MAX_VARIANTS];
  int sigpipe_saved;
  struct sigaction old_sigpipe;
} torch_worker;

static void rm_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  char p[4400];
  while ((de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
      snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
      unlink(p);
    }
  closedir(d);
  rmdir(dir);
}

static tk_status make_tmpdir(char *buf, size_t cap, const char *what) {
  const char *tmp = getenv("TMPDIR");
  snprintf(buf, cap, "%s/ticket-bench-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", what);
  if (!mkdtemp(buf)) return tk_fail(TK_ERR_IO, "%s: %s", buf, strerror(errno));
  return TK_OK;
}

/* "key": number after the first occurrence of "section" in the JSON text */
static double json_get(const char *json, const char *section, const char *key) {
  const char *p = section ? strstr(json, section) : json;
  if (!p) return NAN;
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\": ", key);
  const char *q = strstr(p, pat);
  return q ? strtod(q + strlen(pat), NULL) : NAN;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Waits up to grace_s for the worker to exit, then kills it (its whole process group: it leads
 * one, so anything it started goes too); reaps it either way.  Returns the waitpid status, or -1
 * if there was no worker. */
static int worker_reap(torch_worker *w, double grace_s) {
  int status = -1;
  if (w->pid <= 0) return -1;
  double end = tk_now() + grace_s;
  for (;;) {
    pid_t r = waitpid(w->pid, &status, WNOHANG);
    if (r == w->pid || (r < 0 && errno != EINTR)) break;
    if (r == 0 && tk_now() >= end) {
      if (w->pid > 1) kill(-w->pid, SIGKILL);
      kill(w->pid, SIGKILL);
      while (waitpid(w->pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    if (r == 0) {
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  w->pid = 0;
  close_fd(&w->to);
  close_fd(&w->from);
  return status;
}

/* The last non-empty line the worker wrote on stderr, control characters replaced, cut short. */
static void last_log_line(const char *log, char *out, size_t cap) {
  char buf[4096];
  out[0] = 0;
  FILE *f = fopen(log, "rb");
  if (!f) return;
  long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (size > (long)sizeof buf - 1) fseek(f, size - (long)sizeof buf + 1, SEEK_SET);
  else rewind(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
  buf[n] = 0;
  char *s = buf + n;
  while (s > buf && s[-1] != '\n') s--;
  size_t len = strlen(s) < cap - 1 ? strlen(s) : cap - 1;
  memcpy(out, s, len);
  out[len] = 0;
  for (char *p = out; *p; p++)
    if ((unsigned char)*p < 0x20) *p = ' ';
}

/* Records "WHO: MESSAGE; its last message: ..." after killing and reaping the worker. */
static tk_status worker_fail(torch_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static tk_status worker_fail(torch_worker *w, const char *fmt, ...) {
  char msg[512], last[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  worker_reap(w, 0);
  last_log_line(w->log, last, sizeof last);
  return tk_fail(TK_ERR_IO, "%s: %s%s%s", w->who, msg, last[0] ? "; its last message: " : "", last);
}

/* The worker closed its stdout: it exited (or is about to); say how. */
static tk_status worker_died(torch_worker *w, const char *when) {
  int status = worker_reap(w, 5.0);
  if (status >= 0 && WIFSIGNALED(status))
    return worker_fail(w, "the PyTorch worker was killed by signal %d %s", WTERMSIG(status), when);
  int code = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return worker_fail(w, "the PyTorch worker exited with status %d %s", code, when);
}

/* One line from the worker (without its newline) into *line, within timeout_s seconds. */
static tk_status worker_line(torch_worker *w, double timeout_s, const char *when, char *line, size_t cap) {
  const double end = tk_now() + timeout_s;
  for (;;) {
    char *nl = memchr(w->rbuf, '\n', w->rlen);
    if (nl) {
      size_t n = (size_t)(nl - w->rbuf);
      snprintf(line, cap, "%.*s", (int)n, w->rbuf);
      w->rlen -= n + 1;
      memmove(w->rbuf, nl + 1, w->rlen);
      return TK_OK;
    }
    if (w->rlen >= sizeof w->rbuf - 1) return worker_fail(w, "a line of more than %zu bytes %s", sizeof w->rbuf, when);
    double left = end - tk_now();
    if (left <= 0) return worker_fail(w, "no answer within %.0f s %s (killed)", timeout_s, when);
    struct pollfd p = {.fd = w->from, .events = POLLIN};
    int k = poll(&p, 1, left > 1e6 ? 1000000000 : (int)ceil(left * 1e3));
    if (k < 0 && errno != EINTR) return worker_fail(w, "poll: %s", strerror(errno));
    if (k <= 0) continue;
    ssize_t r = read(w->from, w->rbuf + w->rlen, sizeof w->rbuf - 1 - w->rlen);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) return worker_fail(w, "read: %s", strerror(errno));
    if (r == 0) return worker_died(w, when);
    w->rlen += (size_t)r;
  }
}

static tk_status worker_send(torch_worker *w, const char *cmd, const char *when) {
  size_t n = strlen(cmd), off = 0;
  while (off < n) {
    ssize_t r = write(w->to, cmd + off, n - off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EPIPE) return worker_died(w, when);
    if (r < 0) return worker_fail(w, "write: %s", strerror(errno));
    off += (size_t)r;
  }
  return TK_OK;
}

/* Exports the network, starts the worker and waits for its ready line.  logits: ours on x, for
 * its check. */
static tk_status worker_start(torch_worker *w, const bench_opts *o, const tk_model *m, const float *x,
                              const float *logits) {
  char script[4096], xp[4200], lp[4200], b[16], t[16];
  tk_status st;
  const char *py = getenv("TICKET_PYTHON"), *to = getenv("TICKET_TORCH_TIMEOUT");
  py = py && *py ? py : "/usr/bin/python3";
  if (to && *to) {
    char *end;
    w->timeout_s = strtod(to, &end);
    if (*end || !(w->timeout_s > 0))
      return tk_fail(TK_ERR_ARG, "TICKET_TORCH_TIMEOUT: '%s' is not a number of seconds", to);
  }
  if (o->torch_dir) {
    snprintf(w->dir, sizeof w->dir, "%s", o->torch_dir);
    if (mkdir(w->dir, 0777) != 0 && errno != EEXIST) return tk_fail(TK_ERR_IO, "%s: %s", w->dir, strerror(errno));
    w->keep_dir = 1;
  } else if ((st = make_tmpdir(w->dir, sizeof w->dir, "torch")) != TK_OK) {
    return st;
  }
  snprintf(xp, sizeof xp, "%s/x.bin", w->dir);
  snprintf(lp, sizeof lp, "%s/logits.bin", w->dir);
  snprintf(w->log, sizeof w->log, "%s/torch_bench.log", w->dir);
  snprintf(script, sizeof script, "%s/bench/torch_bench.py", source_dir());
  snprintf(w->who, sizeof w->who, "%s %s", py, script);
  if ((st = export_graph(m, w->dir)) != TK_OK ||
      (st = write_raw(xp, x, (size_t)o->batch * m->in_c * m->in_h * m->in_w)) != TK_OK ||
      (st = write_raw(lp, logits, (size_t)o->batch * m->classes)) != TK_OK)
    return st;
  snprintf(b, sizeof b, "%d", o->batch);
  snprintf(t, sizeof t, "%d", o->threads);
  char *argv[] = {(char *)py, script, w->dir, "--batch", b, "--threads", t, "--mode", (char *)g_mode_names[o->mode],
                  "--attack-bn", o->attack_bn_eval ? "eval" : "train", "--check", xp, lp, NULL};

  /* its environment: ours with OMP_WAIT_POLICY=PASSIVE */
  int ne = 0;
  while (environ[ne]) ne++;
  char **envp = tk_malloc((size_t)(ne + 2) * sizeof *envp);
  if (!envp) return TK_ERR_NOMEM;
  int k = 0;
  for (int i = 0; i < ne; i++)
    if (strncmp(environ[i], "OMP_WAIT_POLICY=", 16)) envp[k++] = environ[i];
  envp[k++] = "OMP_WAIT_POLICY=PASSIVE";
  envp[k] = NULL;

  /* in: our commands -> its stdin; out: its stdout -> our replies; neither end leaks into it */
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err = 0;
  if (pipe(in) != 0 || pipe(out) != 0) err = errno;
  for (int i = 0; i < 2 && !err; i++)
    if (fcntl(in[i], F_SETFD, FD_CLOEXEC) != 0 || fcntl(out[i], F_SETFD, FD_CLOEXEC) != 0) err = errno;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t sa;
  if (!err && !(err = posix_spawn_file_actions_init(&fa))) {
    if (!(err = posix_spawnattr_init(&sa))) {
      if (!(err = posix_spawn_file_actions_adddup2(&fa, in[0], 0)) &&
          !(err = posix_spawn_file_actions_adddup2(&fa, out[1], 1)) &&
          !(err = posix_spawn_file_actions_addopen(&fa, 2, w->log, O_WRONLY | O_CREAT | O_TRUNC, 0644)) &&
          !(err = posix_spawnattr_setflags(&sa, POSIX_SPAWN_SETPGROUP)) && !(err = posix_spawnattr_setpgroup(&sa, 0)))
        err = posix_spawn(&w->pid, py, &fa, &sa, argv, envp);
      posix_spawnattr_destroy(&sa);
    }
    posix_spawn_file_actions_destroy(&fa);
    if (err) w->pid = 0;
  }
  free(envp);
  close_fd(&in[0]);
  close_fd(&out[1]);
  w->to = in[1];
  w->from = out[0];
  if (err) {
    close_fd(&w->to);
    close_fd(&w->from);
    return tk_fail(TK_ERR_IO, "%s: cannot start the PyTorch worker: %s%s", py, strerror(err),
                   getenv("TICKET_PYTHON") ? " (TICKET_PYTHON)" : "");
  }
  /* a worker that dies makes our writes fail with EPIPE instead of killing us */
  struct sigaction ign = {.sa_handler = SIG_IGN};
  sigemptyset(&ign.sa_mask);
  w->sigpipe_saved = sigaction(SIGPIPE, &ign, &w->old_sigpipe) == 0;

  char line[sizeof w->rbuf];
  const double ready_s = w->timeout_s > 0 ? w->timeout_s : TORCH_READY_S;
  if ((st = worker_line(w, ready_s, "before it was ready", line, sizeof line)) != TK_OK) return st;
  size_t n = strlen(line);
  const char *vs = strstr(line, "\"variants\": [");
  if (n < 2 || line[0] != '{' || line[n - 1] != '}' || !vs)
    return worker_fail(w, "its ready line is not the JSON object with \"variants\" expected: '%.80s'", line);
  /* the variants: ["eager", "jit"] */
  for (const char *p = vs + strlen("\"variants\": ["); *p != ']'; p++) {
    size_t len = *p == '"' ? strcspn(p + 1, "\"") : 0;
    if (*p == ',' || *p == ' ') continue;
    if (!len || len >= sizeof w->var[0] || p[len + 1] != '"' || w->nvar == TORCH_MAX_VARIANTS)
      return worker_fail(w, "its ready line has a bad \"variants\" list: '%.80s'", vs);
    memcpy(w->var[w->nvar], p + 1, len);
    w->var[w->nvar][len] = 0;
    for (const char *c = w->var[w->nvar]; *c; c++)
      if (!(isalnum((unsigned char)*c) || *c == '_'))
        return worker_fail(w, "its ready line has a bad variant name '%s'", w->var[w->nvar]);
    w->nvar++;
    p += len + 1;
  }
  if (!w->nvar) return worker_fail(w, "its ready line lists no variants");
  if (!(w->hello = tk_strdup(line))) return TK_ERR_NOMEM;
  for (int v = 0; v < w->nvar; v++)
    if (!(w->t[v] = tk_calloc((size_t)o->iters, sizeof(double)))) return TK_ERR_NOMEM;
  return TK_OK;
}

/* One turn: variant v does one iteration; *dt is its time, measured by the worker around the
 * iteration only. */
static tk_status worker_turn(torch_worker *w, int v, double *dt) {
  char cmd[48], when[64], line[256], *end;
  snprintf(cmd, sizeof cmd, "run %s\n", w->var[v]);
  snprintf(when, sizeof when, "on 'run %s' (its turn %d)", w->var[v], w->turns[v] + 1);
  double lim = w->turns[v] ? fmax(TORCH_TURN_FLOOR_S, 20 * w->slowest[v]) : TORCH_FIRST_TURN_S;
  if (w->timeout_s > 0) lim = w->timeout_s;
  tk_status st = worker_send(w, cmd, when);
  if (st == TK_OK) st = worker_line(w, lim, when, line, sizeof line);
  if (st != TK_OK) return st;
  *dt = strtod(line, &end);
  if (end == line || *end || !isfinite(*dt) || *dt <= 0)
    return worker_fail(w, "replied '%.60s' %s, not a time in seconds", line, when);
  w->turns[v]++;
  if (*dt > w->slowest[v]) w->slowest[v] = *dt;
  return TK_OK;
}

/* Ends the worker (quit, then a kill if it lingers 5 s; kill_now: a kill at once), restores
 * SIGPIPE, passes on what it wrote to stderr when it ran through, and removes the export unless
 * --torch-dir keeps it. */
static void worker_stop(torch_worker *w, int kill_now) {
  int ran = w->pid > 0 && !kill_now;
  if (ran) { /* no error recorded here: a failed write only means it is gone already */
    ssize_t r = write(w->to, "quit\n", 5);
    (void)r;
    close_fd(&w->to);
  }
  worker_reap(w, ran ? 5.0 : 0.0);
  close_fd(&w->to);
  close_fd(&w->from);
  if (w->sigpipe_saved) sigaction(SIGPIPE, &w->old_sigpipe, NULL);
  w->sigpipe_saved = 0;
  if (ran && w->log[0]) { /* warnings of a worker that ran through (an error has its own line) */
    FILE *f = fopen(w->log, "rb");
    char buf[4096];
    size_t n;
    while (f && (n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stderr);
    if (f) fclose(f);
  }
  if (w->dir[0] && !w->keep_dir) rm_dir(w->dir);
  w->dir[0] = 0;
  free(w->hello);
  w->hello = NULL;
  for (int v = 0; v < TORCH_MAX_VARIANTS; v++) {
    free(w->t[v]);
    w->t[v] = NULL;
  }
}

/* "torch eager", "torch jit+ofi": a variant's name in the reports */
static const char *torch_row_name(const char *var) {
  static char buf[TORCH_MAX_VARIANTS][32];
  static int next;
  if (!strcmp(var, "eager")) return "torch eager";
  if (!strcmp(var, "jit")) return "torch jit+ofi";
  char *b = buf[next++ % TORCH_MAX_VARIANTS];
  snprintf(b, sizeof buf[0], "torch %s", var);
  return b;
}

/* Number of this process's threads other than the calling (main) one that are running or
 * runnable ('R' in /proc/self/task/TID/stat): idle OpenMP threads that spin instead of sleeping. */
static int busy_threads(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return 0;
  int busy = 0;
  struct dirent *de;
  char path[300], buf[512];
  const long self = (long)getpid(); /* the main thread's id */
  while ((de = readdir(d))) {
    if (de->d_name[0] < '0' || de->d_name[0] > '9' || strtol(de->d_name, NULL, 10) == self) continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/stat", de->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *paren = strrchr(buf, ')'); /* "TID (COMM) STATE ..." */
    if (paren && paren[1] == ' ' && paren[2] == 'R') busy++;
  }
  closedir(d);
  return busy;
}

/* Waits until our idle OpenMP threads have stopped spinning, for at most limit_s (libgomp's
 * default policy spins a few milliseconds after a parallel region, then sleeps; PASSIVE sleeps at
 * once; ACTIVE spins on).  Returns 0 if some were still spinning.  Must run on the main thread. */
static int quiesce(double limit_s) {
  const double end = tk_now() + limit_s;
  for (;;) {
    if (!busy_threads()) return 1;
    if (tk_now() >= end) return 0;
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, NULL);
  }
}

/* ---- the command ----------------------------------------------------------------------------------------- */

static void runner_free(runner *r) {
  tk_attacker_free(r->atk);
  tk_engine_free(r->e);
  tk_model_free(r->m);
  free(r->logits);
  free(r->dlogits);
  free(r->xadv);
  free(r->t);
}

static tk_status runner_alloc(runner *r, const tk_model *m, int batch, int iters) {
  size_t nx = (size_t)batch * m->in_c * m->in_h * m->in_w, nl = (size_t)batch * m->classes;
  r->logits = tk_malloc(nl * sizeof(float));
  r->dlogits = tk_malloc(nl * sizeof(float));
  r->xadv = tk_malloc(nx * sizeof(float));
  r->t = tk_calloc((size_t)iters, sizeof(double));
  return r->logits && r->dlogits && r->xadv && r->t ? TK_OK : TK_ERR_NOMEM;
}

static tk_status make_compiled(const bench_opts *o, tk_model *m, const char *cache_dir, tk_engine **e) {
  tk_compile_opts co;
  tk_compile_opts_default(&co);
  co.batch = o->batch;
  co.threads = o->threads;
  co.training = o->mode != MODE_INFER;
  co.force = o->force;
  co.cache_dir = cache_dir;
  return tk_compiled_engine_create(m, o->batch, &co, e);
}

int cmd_bench(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  bench_opts o = {.batch = 1, .iters = -1, .warmup = -1, .seed = 1, .vs_dense = 1, .random_mask = -1, .force = -1};
#ifdef _OPENMP
  o.threads = omp_get_max_threads();
#else
  o.threads = 1;
#endif
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE() \
  if (!v) return cli_usage_error("bench", "%s needs a value", a); \
  i++
    if (!strcmp(a, "--json")) o.json = 1;
    else if (!strcmp(a, "--layers")) o.layers = 1;
    else if (!strcmp(a, "--compile-stats")) o.compile_stats = 1;
    else if (!strcmp(a, "--batch")) {
      NEED_VALUE();
      if (!parse_int(v, 1, 1 << 16, &o.batch)) return cli_usage_error("bench", "--batch: '%s' is not 1..65536", v);
    } else if (!strcmp(a, "--threads")) {
      NEED_VALUE();
      if (!parse_int(v, 1, 1024, &o.threads)) return cli_usage_error("bench", "--threads: '%s' is not 1..1024", v);
    } else if (!strcmp(a, "--iters")) {
      NEED_VALUE();
      if (!parse_int(v, 1, 1000000, &o.iters)) return cli_usage_error("bench", "--iters: '%s' is not 1..1000000", v);
    } else if (!strcmp(a, "--warmup")) {
      NEED_VALUE();
      if (!parse_int(v, 0, 1000000, &o.warmup)) return cli_usage_error("bench", "--warmup: '%s' is not 0..1000000", v);
    } else if (!strcmp(a, "--seed")) {
      NEED_VALUE();
      if (!parse_int(v, 0, 1 << 30, &o.seed)) return cli_usage_error("bench", "--seed: '%s' is not a seed", v);
    } else if (!strcmp(a, "--vs")) {
      NEED_VALUE();
      if (!strcmp(v, "dense")) o.vs_dense = 1, o.vs_torch = 0;
      else if (!strcmp(v, "torch")) o.vs_dense = 0, o.vs_torch = 1;
      else if (!strcmp(v, "dense,torch") || !strcmp(v, "torch,dense")) o.vs_dense = o.vs_torch = 1;
      else if (!strcmp(v, "none")) o.vs_dense = o.vs_torch = 0;
      else return cli_usage_error("bench", "--vs: '%s' is not dense, torch, dense,torch or none", v);
    } else if (!strcmp(a, "--mode")) {
      NEED_VALUE();
      if (!strcmp(v, "infer")) o.mode = MODE_INFER;
      else if (!strcmp(v, "pgd")) o.mode = MODE_PGD;
      else if (!strcmp(v, "train")) o.mode = MODE_TRAIN;
      else return cli_usage_error("bench", "--mode: '%s' is not infer, pgd or train", v);
    } else if (!strcmp(a, "--attack-bn")) {
      NEED_VALUE();
      if (!strcmp(v, "eval")) o.attack_bn_eval = 1;
      else if (!strcmp(v, "train")) o.attack_bn_eval = 0;
      else return cli_usage_error("bench", "--attack-bn: '%s' is not eval or train", v);
    } else if (!strcmp(a, "--random-mask")) {
      NEED_VALUE();
      if (!tk_parse_fraction(v, &o.random_mask) || !(o.random_mask >= 0 && o.random_mask <= 1))
        return cli_usage_error("bench", "--random-mask: '%s' is not a sparsity in [0, 1]", v);
    } else if (!strcmp(a, "--torch-dir")) {
      NEED_VALUE();
      o.torch_dir = v;
    } else if (!strcmp(a, "--alt")) {
      NEED_VALUE();
      tk_env_saved probe;
      if (!tk_env_push(v, &probe)) return cli_usage_error("bench", "--alt: '%s' is not NAME=VALUE[,NAME=VALUE...]", v);
      tk_env_pop(&probe);
      o.alt = v;
    } else if (!strcmp(a, "--force")) {
      NEED_VALUE();
      if ((o.force = variant_by_name(v)) < 0) return cli_usage_error("bench", "--force: '%s' is not a kernel variant", v);
    } else if (a[0] == '-') {
      return cli_usage_error("bench", "unknown option %s", a);
    } else if (!o.model) {
      o.model = a;
    } else {
      return cli_usage_error("bench", "one MODEL only ('%s' and '%s')", o.model, a);
    }
#undef NEED_VALUE
  }
  if (!o.model) return cli_usage_error("bench", "MODEL missing");
  if (o.iters < 0) o.iters = o.mode == MODE_INFER ? 50 : 10;
  if (o.warmup < 0) o.warmup = o.mode == MODE_INFER ? 5 : 2;
  if (o.vs_dense && !tk_dense_available()) return cli_usage_error("bench", "--vs dense: this build has no oneDNN");
  if (o.mode == MODE_TRAIN && o.batch < 2)
    return cli_usage_error("bench", "--mode train needs --batch 2 or more (train-mode BatchNorm)");
#ifdef _OPENMP
  omp_set_num_threads(o.threads);
#endif

  tk_model *base = NULL;
  runner rc = {.name = "compiled"}, rd = {.name = "dense"}, ra = {.name = "alt"};
  float *x = NULL;
  int *y = NULL;
  torch_worker tw = {.to = -1, .from = -1};
  int spinning = 0;          /* iterations whose PyTorch turns began with our idle threads spinning */
  char *torch_hello = NULL; /* the worker's ready line */
  char cache[4096] = "";
  double cold_s = NAN, warm_s = NAN;
  long long code_bytes = -1;
  int code_files = 0;
  tk_exec_layer_time *pc = NULL, *pd = NULL;
  /* the conditions of the measurement: how idle OpenMP threads wait, and how busy the machine is */
  const char *wait_policy = getenv("OMP_WAIT_POLICY") && *getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "default";
  const int active = !strcasecmp(wait_policy, "ACTIVE"); /* idle threads spin on */
  double load1 = -1;
  FILE *la = fopen("/proc/loadavg", "r");
  if (la) {
    if (fscanf(la, "%lf", &load1) != 1) load1 = -1;
    fclose(la);
  }
  tk_status st = load_model(&o, &base);
  if (st != TK_OK) goto fail;
  if (o.random_mask >= 0 && (st = random_masks(base, o.random_mask, (uint64_t)o.seed + 17)) != TK_OK) goto fail;

  /* engines, each on its own copy of the model (training steps change the weights) */
  if (!(rc.m = tk_model_clone(base)) || (o.vs_dense && !(rd.m = tk_model_clone(base))) ||
      (o.alt && !(ra.m = tk_model_clone(base)))) {
    st = TK_ERR_NOMEM;
    goto fail;
  }
  if (o.compile_stats) {
    if ((st = make_tmpdir(cache, sizeof cache, "cache")) != TK_OK) goto fail;
    double t0 = tk_now();
    if ((st = make_compiled(&o, rc.m, cache, &rc.e)) != TK_OK) goto fail;
    cold_s = tk_now() - t0;
    code_bytes = dir_bytes(cache, &code_files);
    tk_engine_free(rc.e);
    rc.e = NULL;
    t0 = tk_now();
    if ((st = make_compiled(&o, rc.m, cache, &rc.e)) != TK_OK || (st = make_attacker(&rc, &o, 0)) != TK_OK) goto fail;
    warm_s = rc.create_s = tk_now() - t0;
  } else {
    double t0 = tk_now();
    if ((st = make_compiled(&o, rc.m, NULL, &rc.e)) != TK_OK || (st = make_attacker(&rc, &o, 0)) != TK_OK) goto fail;
    rc.create_s = tk_now() - t0;
  }
  if (o.vs_dense) {
    double t0 = tk_now();
    if ((st = tk_dense_engine_create(rd.m, o.batch, &rd.e)) != TK_OK || (st = make_attacker(&rd, &o, 0)) != TK_OK)
      goto fail;
    rd.create_s = tk_now() - t0;
  }
  if (o.alt) { /* the same build under the --alt environment (its own objects: the cache keys differ where the code does) */
    tk_env_saved saved;
    tk_env_push(o.alt, &saved);
    double t0 = tk_now();
    st = make_compiled(&o, ra.m, NULL, &ra.e);
    if (st == TK_OK) st = make_attacker(&ra, &o, 0);
    ra.create_s = tk_now() - t0;
    tk_env_pop(&saved);
    if (st != TK_OK) goto fail;
  }
  if ((st = runner_alloc(&rc, base, o.batch, o.iters)) != TK_OK) goto fail;
  if (o.vs_dense && (st = runner_alloc(&rd, base, o.batch, o.iters)) != TK_OK) goto fail;
  if (o.alt && (st = runner_alloc(&ra, base, o.batch, o.iters)) != TK_OK) goto fail;

  /* inputs */
  size_t nx = (size_t)o.batch * base->in_c * base->in_h * base->in_w;
  x = tk_malloc(nx * sizeof(float));
  y = tk_malloc((size_t)o.batch * sizeof(int));
  if (!x || !y) {
    st = TK_ERR_NOMEM;
    goto fail;
  }
  tk_rng rng;
  tk_rng_seed(&rng, (uint64_t)o.seed);
  for (size_t i = 0; i < nx; i++) x[i] = base->lo + (base->hi - base->lo) * (float)tk_rng_uniform(&rng);
  for (int i = 0; i < o.batch; i++) y[i] = (int)tk_rng_below(&rng, (uint64_t)base->classes);

  /* PyTorch: our logits on x for its check (one eval forward of each engine, untimed), then
   * the worker, which loads the network once and waits for its turns */
  if (o.vs_torch) {
    if ((st = tk_engine_forward(rc.e, x, o.batch, TK_BN_EVAL, rc.logits)) != TK_OK) goto fail;
    if (o.vs_dense && (st = tk_engine_forward(rd.e, x, o.batch, TK_BN_EVAL, rd.logits)) != TK_OK) goto fail;
    if ((st = worker_start(&tw, &o, base, x, rc.logits)) != TK_OK) goto fail;
  }

  /* the turns of every iteration, warm-up included: compiled, dense, then each PyTorch variant,
   * rotated (below); one engine at a time, each turn timed on its own */
  runner *rs[3] = {&rc, NULL, NULL};
  int nours = 1;
  if (o.vs_dense) rs[nours++] = &rd;
  if (o.alt) rs[nours++] = &ra;
  tk_rng arng[3];
  for (int k = 0; k < 3; k++) tk_rng_seed(&arng[k], 99);
  double spin_wait = 0.05; /* how long to wait for our threads to fall asleep before PyTorch's turn */
  double tsteal[TORCH_MAX_VARIANTS] = {0}, ttotal[TORCH_MAX_VARIANTS] = {0}; /* PyTorch's turns' jiffies */
  /* the turns of an iteration: our engines, then PyTorch's variants; iteration `it` starts at
   * turn it % nturns (a rotation), so that no engine always comes first after PyTorch's
   * memory-hungry turn (in a fixed order, two engines running the same oneDNN kernels differed
   * by 3-9%).  With two turns each follows the other equally often; with three the predecessors
   * are uneven (the first follows the third two times in three), but an order shuffled anew
   * every iteration measured the same (an --alt engine identical to the compiled one: 0.98-1.00
   * either way; bench/README.md) */
  const int nturns = nours + tw.nvar;
  int prev_ours = 0; /* the turn before was one of ours */
  for (int it = 0; it < o.warmup + o.iters; it++) {
    for (int q = 0; q < nturns; q++) {
      const int item = (q + it) % nturns;
      if (item < nours) {
        runner *r = rs[item];
        cpu_ticks c0 = read_ticks();
        double t0 = tk_now();
        if ((st = iteration(r, o.mode, x, y, o.batch, &arng[item])) != TK_OK) goto fail;
        double dt = tk_now() - t0;
        if (it >= o.warmup) r->t[r->nt++] = dt, add_ticks(&r->steal_j, &r->total_j, c0, read_ticks());
        prev_ours = 1;
        continue;
      }
      const int v = item - nours;
      if (prev_ours && o.threads > 1 && !quiesce(spin_wait)) {
        spinning++;
        if (active) spin_wait = 0; /* they will spin on: count, do not wait again */
      }
      prev_ours = 0;
      double dt;
      cpu_ticks c0 = read_ticks();
      if ((st = worker_turn(&tw, v, &dt)) != TK_OK) goto fail;
      if (it >= o.warmup) tw.t[v][tw.nt[v]++] = dt, add_ticks(&tsteal[v], &ttotal[v], c0, read_ticks());
    }
  }
  lat_stats st_torch[TORCH_MAX_VARIANTS] = {{0}};
  int torch_fast = -1; /* PyTorch's faster variant: the lower median */
  for (int v = 0; v < tw.nvar; v++) {
    st_torch[v] = summarise(tw.t[v], tw.nt[v], o.batch);
    st_torch[v].steal = steal_of(tsteal[v], ttotal[v]);
    if (torch_fast < 0 || st_torch[v].median < st_torch[torch_fast].median) torch_fast = v;
  }
  torch_hello = tw.hello; /* kept past worker_stop for the report */
  tw.hello = NULL;
  worker_stop(&tw, 0);
  lat_stats sc = summarise(rc.t, rc.nt, o.batch), sd = {0}, sa = {0};
  sc.steal = steal_of(rc.steal_j, rc.total_j);
  if (o.vs_dense) sd = summarise(rd.t, rd.nt, o.batch), sd.steal = steal_of(rd.steal_j, rd.total_j);
  if (o.alt) sa = summarise(ra.t, ra.nt, o.batch), sa.steal = steal_of(ra.steal_j, ra.total_j);
  double steal_max = isfinite(sc.steal) ? sc.steal : 0;
  if (o.vs_dense && isfinite(sd.steal) && sd.steal > steal_max) steal_max = sd.steal;
  if (o.alt && isfinite(sa.steal) && sa.steal > steal_max) steal_max = sa.steal;
  for (int v = 0; v < tw.nvar; v++)
    if (isfinite(st_torch[v].steal) && st_torch[v].steal > steal_max) steal_max = st_torch[v].steal;

  /* per-layer profile: a separate pass, so that timing the layers does not touch the numbers above;
   * the attacks there run on the engine alone (a parallel attack's replicas are not profiled) */
  const int L = base->n_layers, kprof = o.iters < 5 ? o.iters : (o.iters + 1) / 2;
  if (o.layers) {
    pc = tk_calloc((size_t)L, sizeof *pc);
    pd = tk_calloc((size_t)L, sizeof *pd);
    if (!pc || !pd) {
      st = TK_ERR_NOMEM;
      goto fail;
    }
    for (int k = 0; k < 2; k++) {
      runner *r = k ? (o.vs_dense ? &rd : NULL) : &rc;
      if (!r) continue;
      tk_attacker *timed = r->atk;
      r->atk = NULL;
      if ((st = make_attacker(r, &o, 1)) != TK_OK) {
        r->atk = timed;
        goto fail;
      }
      tk_exec_profile_enable(r->e, 1);
      for (int it = 0; it < kprof && st == TK_OK; it++) st = iteration(r, o.mode, x, y, o.batch, &arng[k]);
      tk_exec_profile(r->e, k ? pd : pc, L);
      tk_exec_profile_enable(r->e, 0);
      tk_attacker_free(r->atk);
      r->atk = timed;
      if (st != TK_OK) goto fail;
    }
  }

  double torch_best = torch_fast >= 0 ? st_torch[torch_fast].median : NAN;
  double torch_check = torch_hello ? json_get(torch_hello, "\"check\"", "max_rel_diff") : NAN;
  double torch_tol = torch_hello ? json_get(torch_hello, "\"check\"", "tolerance") : NAN;
  int torch_passed = torch_hello && strstr(torch_hello, "\"passed\": true") != NULL;
  /* the order of the turns, for both reports */
  char turns[256] = "\"compiled\"";
  if (o.vs_dense) strcat(turns, ", \"dense\"");
  if (o.alt) strcat(turns, ", \"alt\"");
  for (int v = 0; v < (torch_hello ? tw.nvar : 0); v++)
    snprintf(turns + strlen(turns), sizeof turns - strlen(turns), ", \"%s\"", torch_row_name(tw.var[v]));

  int count[TK_VARIANT_COUNT] = {0};
  for (int i = 0; i < L; i++) count[tk_exec_layer_variant(rc.e, i)]++;
  const char *mname = strrchr(o.model, '/') ? strrchr(o.model, '/') + 1 : o.model;

  if (o.json) {
    printf("{\"model\": ");
    cli_json_string(stdout, mname);
    printf(", \"arch\": ");
    cli_json_string(stdout, base->arch);
    printf(", \"mode\": \"%s\", \"attack_bn\": \"%s\", \"batch\": %d, \"threads\": %d, \"iters\": %d, \"warmup\": %d, "
           "\"sparsity\": %.6g, \"omp_wait_policy\": ",
           g_mode_names[o.mode], o.mode == MODE_INFER ? "none" : attack_bn(&o) == TK_BN_EVAL ? "eval" : "train",
           o.batch, o.threads, o.iters, o.warmup, tk_model_sparsity(base));
    cli_json_string(stdout, wait_policy);
    printf(", \"load_average\": %.2f, \"interleaved\": true, \"rotated\": true, \"turns\": [%s], \"random_mask\": ", load1, turns);
    if (o.random_mask >= 0) printf("%.6g", o.random_mask);
    else printf("null");
    printf(", \"compiled\": {\"create_s\": %.6g, \"arena_bytes\": %zu, \"plan\": ", rc.create_s,
           tk_exec_arena_bytes(rc.e));
    cli_json_string(stdout, tk_exec_how(rc.e));
    printf(", \"variants\": {");
    for (int v = 1, first = 1; v < TK_VARIANT_COUNT; v++)
      if (count[v]) printf("%s\"%s\": %d", first ? "" : ", ", tk_variant_name((tk_variant)v), count[v]), first = 0;
    printf("}, \"latency\": ");
    json_stats(stdout, &sc);
    printf("}, \"dense\": ");
    if (o.vs_dense) {
      printf("{\"create_s\": %.6g, \"arena_bytes\": %zu, \"latency\": ", rd.create_s, tk_exec_arena_bytes(rd.e));
      json_stats(stdout, &sd);
      printf("}, \"speedup_vs_dense\": %.6g", sd.median / sc.median);
    } else {
      printf("null, \"speedup_vs_dense\": null");
    }
    printf(", \"alt\": ");
    if (o.alt) {
      printf("{\"env\": ");
      cli_json_string(stdout, o.alt);
      printf(", \"create_s\": %.6g, \"plan\": ", ra.create_s);
      cli_json_string(stdout, tk_exec_how(ra.e));
      printf(", \"latency\": ");
      json_stats(stdout, &sa);
      printf("}, \"alt_over_compiled\": %.6g", sa.median / sc.median);
    } else {
      printf("null, \"alt_over_compiled\": null");
    }
    printf(", \"compile\": ");
    if (o.compile_stats)
      printf("{\"cold_s\": %.6g, \"warm_s\": %.6g, \"code_bytes\": %lld, \"objects\": %d}", cold_s, warm_s, code_bytes,
             code_files);
    else
      printf("null");
    printf(", \"torch\": ");
    if (torch_hello) { /* its ready line, and the statistics of each variant's interleaved turns */
      printf("%.*s", (int)strlen(torch_hello) - 1, torch_hello);
      static const char *const always[2] = {"eager", "jit"}; /* present, null when not run */
      for (int k = 0; k < 2; k++) {
        int v = 0;
        while (v < tw.nvar && strcmp(tw.var[v], always[k])) v++;
        printf(", \"%s\": ", always[k]);
        if (v < tw.nvar) json_stats(stdout, &st_torch[v]);
        else printf("null");
      }
      for (int v = 0; v < tw.nvar; v++)
        if (strcmp(tw.var[v], "eager") && strcmp(tw.var[v], "jit")) {
          printf(", \"%s\": ", tw.var[v]);
          json_stats(stdout, &st_torch[v]);
        }
      printf("}, \"spinning_before_torch\": %d", spinning);
    } else {
      printf("null, \"spinning_before_torch\": null");
    }
    if (isfinite(torch_best)) printf(", \"speedup_vs_torch\": %.6g", torch_best / sc.median);
    else printf(", \"speedup_vs_torch\": null");
    printf(", \"layers\": ");
    if (o.layers) {
      printf("[");
      for (int i = 0; i < L; i++) {
        const tk_layer *l = &base->layers[i];
        int64_t md, ms;
        tk_layer_macs(base, l, &md, &ms);
        printf("%s{\"layer\": %d, \"name\": ", i ? ", " : "", i);
        cli_json_string(stdout, l->name);
        printf(", \"op\": \"%s\", \"variant\": \"%s\", \"macs\": %lld, \"macs_kept\": %lld", tk_op_name(l->op),
               tk_variant_name(tk_exec_layer_variant(rc.e, i)), (long long)md, (long long)ms);
        double cf = pc[i].fwd_calls ? pc[i].fwd_s / pc[i].fwd_calls * 1e3 : 0;
        double cb = pc[i].bwd_calls ? pc[i].bwd_s / pc[i].bwd_calls * 1e3 : 0;
        printf(", \"compiled_fwd_ms\": %.6g, \"compiled_bwd_ms\": %.6g", cf, cb);
        if (o.vs_dense) {
          double df = pd[i].fwd_calls ? pd[i].fwd_s / pd[i].fwd_calls * 1e3 : 0;
          double db = pd[i].bwd_calls ? pd[i].bwd_s / pd[i].bwd_calls * 1e3 : 0;
          printf(", \"dense_fwd_ms\": %.6g, \"dense_bwd_ms\": %.6g", df, db);
        }
        printf("}");
      }
      printf("]");
    } else {
      printf("null");
    }
    printf("}\n");
  } else {
    printf("ticket bench: %s (%s), sparsity %.3f, batch %d, %d thread%s, mode %s%s: %d iterations after %d warm-up, "
           "turns interleaved and rotated\n",
           mname, base->arch, tk_model_sparsity(base), o.batch, o.threads, o.threads == 1 ? "" : "s",
           g_mode_names[o.mode], o.mode != MODE_TRAIN ? "" : o.attack_bn_eval ? " (attack in eval mode)" : " (attack in train mode)",
           o.iters, o.warmup);
    printf("OMP_WAIT_POLICY %s, load average %.2f at the start\n", wait_policy, load1);
    printf("compiled engine: %s; built in %.2f s\n", tk_exec_how(rc.e), rc.create_s);
    if (o.compile_stats)
      printf("compile: cold %.2f s, warm (cache hit) %.2f s, %d objects, %lld bytes of generated code\n", cold_s,
             warm_s, code_files, code_bytes);
    printf("\n  %-16s %9s %9s %9s %9s %9s %10s %7s\n", o.mode == MODE_INFER ? "latency (ms)" : "per batch (ms)",
           "mean", "median", "p90", "p99", "min", "images/s", "steal");
    row("compiled", &sc);
    if (o.vs_dense) row("dense (oneDNN)", &sd);
    if (o.alt) row("alt", &sa);
    for (int v = 0; torch_hello && v < tw.nvar; v++) row(torch_row_name(tw.var[v]), &st_torch[v]);
    printf("\n");
    if (o.vs_dense) printf("speedup over dense (ratio of medians): %.2fx\n", sd.median / sc.median);
    if (o.alt)
      printf("alt (%s; built in %.2f s) over compiled (ratio of medians): %.3f\n", o.alt, ra.create_s,
             sa.median / sc.median);
    if (isfinite(torch_best))
      printf("speedup over PyTorch (its faster variant, %s): %.2fx   (PyTorch logits vs ours: max rel diff %.2g)\n",
             torch_row_name(tw.var[torch_fast]), torch_best / sc.median, torch_check);
    if (torch_hello && !torch_passed && isfinite(torch_check))
      printf("WARNING: PyTorch's logits differ from ours by more than its tolerance %.2g: not the same network?\n",
             torch_tol);
    else if (torch_hello && !torch_passed)
      printf("WARNING: PyTorch did not check its logits against ours\n");
    if (torch_hello && spinning)
      printf("note: OMP_WAIT_POLICY %s: our idle OpenMP threads were still spinning when PyTorch's turn began in %d of "
             "%d iterations and took cores from it; run under OMP_WAIT_POLICY=PASSIVE for a fair comparison\n",
             wait_policy, spinning, o.warmup + o.iters);
    else if (torch_hello && active)
      printf("note: OMP_WAIT_POLICY ACTIVE, but no idle OpenMP thread of ours was spinning when PyTorch's turns began\n");
    if (steal_max >= 0.05)
      printf("note: the hypervisor took up to %.0f%% of the CPUs during the turns (column steal; machine-wide): those "
             "turns ran slower by about that much, and unevenly\n",
             100 * steal_max);
    if (o.layers) {
      printf("\nper layer (ms per call, %d calls; a ReLU fused into the layer before it, and in eval mode a "
             "batchnorm folded into its conv/linear, show 0%s):\n",
             kprof, o.mode == MODE_INFER ? "" : "; the attacks on the engine alone, not in parallel");
      printf("  %3s %-24s %-13s %-15s %10s %10s %8s", "#", "name", "op", "variant", "fwd", o.vs_dense ? "dense" : "",
             o.vs_dense ? "speedup" : "");
      if (o.mode != MODE_INFER) printf(" %10s %10s", "bwd", o.vs_dense ? "dense bwd" : "");
      printf("\n");
      for (int i = 0; i < L; i++) {
        const tk_layer *l = &base->layers[i];
        double cf = pc[i].fwd_calls ? pc[i].fwd_s / pc[i].fwd_calls * 1e3 : 0;
        double df = pd[i].fwd_calls ? pd[i].fwd_s / pd[i].fwd_calls * 1e3 : 0;
        printf("  %3d %-24.24s %-13s %-15s %10.4f", i, l->name, tk_op_name(l->op),
               tk_variant_name(tk_exec_layer_variant(rc.e, i)), cf);
        if (o.vs_dense) printf(" %10.4f %7.2fx", df, cf > 0 ? df / cf : 0.0);
        if (o.mode != MODE_INFER) {
          double cb = pc[i].bwd_calls ? pc[i].bwd_s / pc[i].bwd_calls * 1e3 : 0;
          double db = pd[i].bwd_calls ? pd[i].bwd_s / pd[i].bwd_calls * 1e3 : 0;
          printf(" %10.4f", cb);
          if (o.vs_dense) printf(" %10.4f", db);
        }
        printf("\n");
      }
    }
  }
  st = TK_OK;
fail:
  if (cache[0]) rm_dir(cache);
  runner_free(&rc);
  runner_free(&rd);
  runner_free(&ra);
  tk_model_free(base);
  free(x);
  free(y);
  worker_stop(&tw, 1);
  free(torch_hello);
  free(pc);
  free(pd);
  return st == TK_OK ? 0 : cli_error("bench", st);
}
