/* cmd_bench.c -- `ticket bench`: latency and throughput of the compiled engine, side by side
 * with the dense oneDNN engine (and PyTorch) in the same run.
 *
 * Method (DESIGN.md section 8): both engines are created for the same batch and thread
 * count, then iterations alternate between them (compiled, dense, compiled, ...) so that
 * drifting clocks and neighbours hit both alike; each iteration is timed on its own, the
 * first --warmup of each are dropped, and the report gives mean, median, p90, p99, min and
 * max latency, images/s (batch x iterations / summed time) and the ratio of medians.
 * --vs torch exports the network (graph.json + weights.bin in a temporary directory), runs
 * bench/torch_bench.py under /usr/bin/python3 with the same batch and threads and
 * OMP_WAIT_POLICY=PASSIVE, checks its logits against ours and prints its numbers beside ours.
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
#include "../runtime/dense.h"
#include "../runtime/exec.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static void usage(FILE *f) {
  fprintf(f,
          "usage: ticket bench MODEL [--batch N] [--threads T] [--iters K] [--warmup W]\n"
          "                    [--vs dense|torch|dense,torch|none] [--mode infer|pgd|train]\n"
          "                    [--random-mask S] [--seed S] [--force VARIANT] [--layers]\n"
          "                    [--compile-stats] [--torch-dir DIR] [--json]\n"
          "\n"
          "Times the compiled engine on random inputs, alternating iterations with the dense\n"
          "oneDNN engine (and with --vs torch, PyTorch 1.13 on the same network), and prints\n"
          "latency (mean, median, p90, p99, min, max), images/s and the ratio of medians.\n"
          "\n"
          "  MODEL              a model file (.tkt) or a zoo architecture name (e.g. resnet18)\n"
          "  --batch N          images per call (default 1)\n"
          "  --threads T        OpenMP threads of every engine, and torch.set_num_threads (default:\n"
          "                     OMP_NUM_THREADS or all cores)\n"
          "  --iters K          timed iterations per engine (default 50; 10 for pgd and train)\n"
          "  --warmup W         untimed iterations first (default 5; 2 for pgd and train)\n"
          "  --vs WHAT          baselines: dense (default), torch, dense,torch or none\n"
          "  --mode M           infer (eval forward, default), pgd (PGD-10 evaluation: images/s of\n"
          "                     10 forward+input-gradient steps and a final forward) or train (one\n"
          "                     PGD-10 training step: attack, forward, backward, SGD, sync)\n"
          "  --random-mask S    first prune every prunable tensor uniformly at random to sparsity S\n"
          "  --seed S           seed of the zoo initialisation, the masks and the inputs (default 1)\n"
          "  --force VARIANT    every conv/linear of the compiled engine on one kernel variant\n"
          "                     (dense, reference, sparse-table, sparse-unrolled, value-baked)\n"
          "  --layers           also a per-layer profile of both engines (a separate pass)\n"
          "  --compile-stats    build the compiled engine twice from a fresh cache: cold and warm\n"
          "                     build times and the bytes of generated objects\n"
          "  --torch-dir DIR    keep the network given to PyTorch (graph.json, weights.bin, x.bin,\n"
          "                     logits.bin) in DIR, to rerun bench/torch_bench.py by hand\n"
          "  --json             print one JSON object (one line)\n"
          "\n"
          "PyTorch runs with OMP_WAIT_POLICY=PASSIVE.  On a busy machine run ticket under it too\n"
          "(OMP_WAIT_POLICY=PASSIVE ticket bench ...): spinning OpenMP threads lose time slices at\n"
          "every barrier.  The policy in effect and the load average are reported.\n");
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
  float *logits, *dlogits, *g, *xadv;
  double *t;   /* per timed iteration */
  int nt;
  double create_s;
} runner;

static tk_status pgd_attack(runner *r, const float *x, const int *y, int n, tk_bn_mode bn, tk_rng *rng) {
  const tk_model *m = r->m;
  const size_t nx = (size_t)n * m->in_c * m->in_h * m->in_w;
  const float eps = 8.0f / 255.0f, alpha = 2.0f / 255.0f, lo = m->lo, hi = m->hi;
  for (size_t i = 0; i < nx; i++) {
    float v = x[i] + eps * (float)(2.0 * tk_rng_uniform(rng) - 1.0);
    r->xadv[i] = v < lo ? lo : v > hi ? hi : v;
  }
  for (int s = 0; s < 10; s++) {
    tk_status st = tk_engine_forward(r->e, r->xadv, n, bn, r->logits);
    if (st != TK_OK) return st;
    tk_softmax_xent(r->logits, y, n, m->classes, r->dlogits, NULL);
    if ((st = tk_engine_backward(r->e, r->dlogits, r->g, 0)) != TK_OK) return st;
    for (size_t i = 0; i < nx; i++) {
      float v = r->xadv[i] + (r->g[i] > 0 ? alpha : r->g[i] < 0 ? -alpha : 0.0f);
      v = fminf(fmaxf(v, x[i] - eps), x[i] + eps);
      r->xadv[i] = v < lo ? lo : v > hi ? hi : v;
    }
  }
  return TK_OK;
}

static tk_status iteration(runner *r, bench_mode mode, const float *x, const int *y, int n, tk_rng *rng) {
  tk_status st;
  if (mode == MODE_INFER) return tk_engine_forward(r->e, x, n, TK_BN_EVAL, r->logits);
  if (mode == MODE_PGD) {
    if ((st = pgd_attack(r, x, y, n, TK_BN_EVAL, rng)) != TK_OK) return st;
    return tk_engine_forward(r->e, r->xadv, n, TK_BN_EVAL, r->logits);
  }
  if ((st = pgd_attack(r, x, y, n, TK_BN_TRAIN, rng)) != TK_OK) return st;
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
} lat_stats;

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
             "\"max_ms\": %.6g, \"iters\": %d, \"images_per_s\": %.6g}",
          s->mean, s->median, s->p90, s->p99, s->min, s->max, s->iters, s->ips);
}

static void row(const char *name, const lat_stats *s) {
  printf("  %-16s %9.3f %9.3f %9.3f %9.3f %9.3f %10.1f\n", name, s->mean, s->median, s->p90, s->p99, s->min, s->ips);
}

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

/* Runs argv with OMP_WAIT_POLICY=PASSIVE, capturing stdout into *out (malloc'd). */
static tk_status run_capture(char *const argv[], char **out) {
  int fd[2];
  *out = NULL;
  if (pipe(fd) != 0) return tk_fail(TK_ERR_IO, "pipe: %s", strerror(errno));
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) return tk_fail(TK_ERR_IO, "fork: %s", strerror(errno));
  if (pid == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv(argv[0], argv);
    fprintf(stderr, "ticket bench: error: %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(fd[1]);
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  ssize_t k;
  while (buf && (k = read(fd[0], buf + len, cap - len - 1)) > 0) {
    len += (size_t)k;
    if (len + 1 == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!buf) return tk_fail(TK_ERR_NOMEM, "out of memory reading %s", argv[1]);
  buf[len] = 0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    free(buf);
    return tk_fail(TK_ERR_IO, "%s failed (exit status %d; its messages are above)", argv[1],
                   WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
  *out = buf;
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

static tk_status make_tmpdir(char *buf, size_t cap, const char *what) {
  const char *tmp = getenv("TMPDIR");
  snprintf(buf, cap, "%s/ticket-bench-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", what);
  if (!mkdtemp(buf)) return tk_fail(TK_ERR_IO, "%s: %s", buf, strerror(errno));
  return TK_OK;
}

static tk_status run_torch(const bench_opts *o, const tk_model *m, const float *x, const float *logits, int n,
                           char **json) {
  char dir[4096], script[4096], xp[4200], lp[4200], b[16], t[16], it[16], wu[16];
  tk_status st = TK_OK;
  if (o->torch_dir) {
    snprintf(dir, sizeof dir, "%s", o->torch_dir);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return tk_fail(TK_ERR_IO, "%s: %s", dir, strerror(errno));
  } else if ((st = make_tmpdir(dir, sizeof dir, "torch")) != TK_OK) {
    return st;
  }
  snprintf(xp, sizeof xp, "%s/x.bin", dir);
  snprintf(lp, sizeof lp, "%s/logits.bin", dir);
  snprintf(script, sizeof script, "%s/bench/torch_bench.py", source_dir());
  if ((st = export_graph(m, dir)) == TK_OK &&
      (st = write_raw(xp, x, (size_t)n * m->in_c * m->in_h * m->in_w)) == TK_OK &&
      (st = write_raw(lp, logits, (size_t)n * m->classes)) == TK_OK) {
    const char *py = getenv("TICKET_PYTHON");
    snprintf(b, sizeof b, "%d", o->batch);
    snprintf(t, sizeof t, "%d", o->threads);
    snprintf(it, sizeof it, "%d", o->iters);
    snprintf(wu, sizeof wu, "%d", o->warmup);
    char *argv[] = {(char *)(py && *py ? py : "/usr/bin/python3"), script, dir, "--batch", b, "--threads", t,
                    "--iters", it, "--warmup", wu, "--mode", (char *)g_mode_names[o->mode], "--check", xp, lp, NULL};
    st = run_capture(argv, json);
  }
  if (!o->torch_dir) rm_dir(dir);
  return st;
}

/* ---- the command ----------------------------------------------------------------------------------------- */

static void runner_free(runner *r) {
  tk_engine_free(r->e);
  tk_model_free(r->m);
  free(r->logits);
  free(r->dlogits);
  free(r->g);
  free(r->xadv);
  free(r->t);
}

static tk_status runner_alloc(runner *r, const tk_model *m, int batch, int iters) {
  size_t nx = (size_t)batch * m->in_c * m->in_h * m->in_w, nl = (size_t)batch * m->classes;
  r->logits = tk_malloc(nl * sizeof(float));
  r->dlogits = tk_malloc(nl * sizeof(float));
  r->g = tk_malloc(nx * sizeof(float));
  r->xadv = tk_malloc(nx * sizeof(float));
  r->t = tk_calloc((size_t)iters, sizeof(double));
  return r->logits && r->dlogits && r->g && r->xadv && r->t ? TK_OK : TK_ERR_NOMEM;
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
    } else if (!strcmp(a, "--random-mask")) {
      NEED_VALUE();
      if (!tk_parse_fraction(v, &o.random_mask) || !(o.random_mask >= 0 && o.random_mask <= 1))
        return cli_usage_error("bench", "--random-mask: '%s' is not a sparsity in [0, 1]", v);
    } else if (!strcmp(a, "--torch-dir")) {
      NEED_VALUE();
      o.torch_dir = v;
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
  runner rc = {.name = "compiled"}, rd = {.name = "dense"};
  float *x = NULL;
  int *y = NULL;
  char *torch_json = NULL, cache[4096] = "";
  double cold_s = NAN, warm_s = NAN;
  long long code_bytes = -1;
  int code_files = 0;
  tk_exec_layer_time *pc = NULL, *pd = NULL;
  /* the conditions of the measurement: how idle OpenMP threads wait, and how busy the machine is */
  const char *wait_policy = getenv("OMP_WAIT_POLICY") && *getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "default";
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
  if (!(rc.m = tk_model_clone(base)) || (o.vs_dense && !(rd.m = tk_model_clone(base)))) {
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
    if ((st = make_compiled(&o, rc.m, cache, &rc.e)) != TK_OK) goto fail;
    warm_s = rc.create_s = tk_now() - t0;
  } else {
    double t0 = tk_now();
    if ((st = make_compiled(&o, rc.m, NULL, &rc.e)) != TK_OK) goto fail;
    rc.create_s = tk_now() - t0;
  }
  if (o.vs_dense) {
    double t0 = tk_now();
    if ((st = tk_dense_engine_create(rd.m, o.batch, &rd.e)) != TK_OK) goto fail;
    rd.create_s = tk_now() - t0;
  }
  if ((st = runner_alloc(&rc, base, o.batch, o.iters)) != TK_OK) goto fail;
  if (o.vs_dense && (st = runner_alloc(&rd, base, o.batch, o.iters)) != TK_OK) goto fail;

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

  /* alternate: compiled, dense, compiled, dense, ... */
  runner *rs[2] = {&rc, o.vs_dense ? &rd : NULL};
  tk_rng arng[2];
  tk_rng_seed(&arng[0], 99);
  tk_rng_seed(&arng[1], 99);
  for (int it = 0; it < o.warmup + o.iters; it++)
    for (int k = 0; k < 2; k++) {
      runner *r = rs[k];
      if (!r) continue;
      double t0 = tk_now();
      if ((st = iteration(r, o.mode, x, y, o.batch, &arng[k])) != TK_OK) goto fail;
      double dt = tk_now() - t0;
      if (it >= o.warmup) r->t[r->nt++] = dt;
    }
  lat_stats sc = summarise(rc.t, rc.nt, o.batch), sd = {0};
  if (o.vs_dense) sd = summarise(rd.t, rd.nt, o.batch);

  /* per-layer profile: a separate pass, so that timing the layers does not touch the numbers above */
  const int L = base->n_layers, kprof = o.iters < 5 ? o.iters : (o.iters + 1) / 2;
  if (o.layers) {
    pc = tk_calloc((size_t)L, sizeof *pc);
    pd = tk_calloc((size_t)L, sizeof *pd);
    if (!pc || !pd) {
      st = TK_ERR_NOMEM;
      goto fail;
    }
    for (int k = 0; k < 2; k++) {
      runner *r = rs[k];
      if (!r) continue;
      tk_exec_profile_enable(r->e, 1);
      for (int it = 0; it < kprof; it++)
        if ((st = iteration(r, o.mode, x, y, o.batch, &arng[k])) != TK_OK) goto fail;
      tk_exec_profile(r->e, k ? pd : pc, L);
      tk_exec_profile_enable(r->e, 0);
    }
  }

  /* PyTorch on the same network, its logits checked against ours */
  if (o.vs_torch) {
    tk_model *chk = tk_model_clone(base);
    tk_engine *ce = NULL;
    float *lg = tk_malloc((size_t)o.batch * base->classes * sizeof(float));
    st = !chk || !lg ? TK_ERR_NOMEM : tk_compiled_engine_create(chk, o.batch, NULL, &ce);
    if (st == TK_OK) st = tk_engine_forward(ce, x, o.batch, TK_BN_EVAL, lg);
    if (st == TK_OK) st = run_torch(&o, base, x, lg, o.batch, &torch_json);
    tk_engine_free(ce);
    tk_model_free(chk);
    free(lg);
    if (st != TK_OK) goto fail;
    if (!strchr(torch_json, '{')) {
      st = tk_fail(TK_ERR_IO, "bench/torch_bench.py printed no JSON");
      goto fail;
    }
  }
  double torch_eager = torch_json ? json_get(torch_json, "\"eager\"", "median_ms") : NAN;
  double torch_jit = torch_json ? json_get(torch_json, "\"jit\"", "median_ms") : NAN;
  double torch_best = isfinite(torch_jit) && (!isfinite(torch_eager) || torch_jit < torch_eager) ? torch_jit : torch_eager;
  double torch_check = torch_json ? json_get(torch_json, "\"check\"", "max_rel_diff") : NAN;

  int count[TK_VARIANT_COUNT] = {0};
  for (int i = 0; i < L; i++) count[tk_exec_layer_variant(rc.e, i)]++;
  const char *mname = strrchr(o.model, '/') ? strrchr(o.model, '/') + 1 : o.model;

  if (o.json) {
    printf("{\"model\": ");
    cli_json_string(stdout, mname);
    printf(", \"arch\": ");
    cli_json_string(stdout, base->arch);
    printf(", \"mode\": \"%s\", \"batch\": %d, \"threads\": %d, \"iters\": %d, \"warmup\": %d, \"sparsity\": %.6g, "
           "\"omp_wait_policy\": ",
           g_mode_names[o.mode], o.batch, o.threads, o.iters, o.warmup, tk_model_sparsity(base));
    cli_json_string(stdout, wait_policy);
    printf(", \"load_average\": %.2f, \"random_mask\": ", load1);
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
    printf(", \"compile\": ");
    if (o.compile_stats)
      printf("{\"cold_s\": %.6g, \"warm_s\": %.6g, \"code_bytes\": %lld, \"objects\": %d}", cold_s, warm_s, code_bytes,
             code_files);
    else
      printf("null");
    printf(", \"torch\": %s", torch_json ? torch_json : "null");
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
    printf("ticket bench: %s (%s), sparsity %.3f, batch %d, %d thread%s, mode %s: %d iterations after %d warm-up, "
           "engines alternating\n",
           mname, base->arch, tk_model_sparsity(base), o.batch, o.threads, o.threads == 1 ? "" : "s",
           g_mode_names[o.mode], o.iters, o.warmup);
    printf("OMP_WAIT_POLICY %s, load average %.2f at the start\n", wait_policy, load1);
    printf("compiled engine: %s; built in %.2f s\n", tk_exec_how(rc.e), rc.create_s);
    if (o.compile_stats)
      printf("compile: cold %.2f s, warm (cache hit) %.2f s, %d objects, %lld bytes of generated code\n", cold_s,
             warm_s, code_files, code_bytes);
    printf("\n  %-16s %9s %9s %9s %9s %9s %10s\n", o.mode == MODE_INFER ? "latency (ms)" : "per batch (ms)", "mean",
           "median", "p90", "p99", "min", "images/s");
    row("compiled", &sc);
    if (o.vs_dense) row("dense (oneDNN)", &sd);
    if (torch_json) {
      const char *secs[2] = {"\"eager\"", "\"jit\""}, *names[2] = {"torch eager", "torch jit+ofi"};
      for (int k = 0; k < 2; k++) {
        lat_stats s = {json_get(torch_json, secs[k], "mean_ms"),   json_get(torch_json, secs[k], "median_ms"),
                       json_get(torch_json, secs[k], "p90_ms"),    json_get(torch_json, secs[k], "p99_ms"),
                       json_get(torch_json, secs[k], "min_ms"),    json_get(torch_json, secs[k], "max_ms"),
                       json_get(torch_json, secs[k], "images_per_s"), 0};
        if (isfinite(s.median)) row(names[k], &s);
      }
    }
    printf("\n");
    if (o.vs_dense) printf("speedup over dense (ratio of medians): %.2fx\n", sd.median / sc.median);
    if (isfinite(torch_best))
      printf("speedup over PyTorch (its faster variant): %.2fx   (PyTorch logits vs ours: max rel diff %.2g)\n",
             torch_best / sc.median, torch_check);
    if (o.layers) {
      printf("\nper layer (ms per call, %d calls; a ReLU fused into the layer before it shows 0):\n", kprof);
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
  tk_model_free(base);
  free(x);
  free(y);
  free(torch_json);
  free(pc);
  free(pd);
  return st == TK_OK ? 0 : cli_error("bench", st);
}
