/* bench_layers.c -- per-layer timing of the generated sparse kernels against oneDNN.
 *
 * For each layer shape (default: the 3x3 and 1x1 convolutions of ResNet-18 on CIFAR, plus
 * its classifier), each sparsity and each batch size: a one-layer model with a uniformly
 * random mask, the generated kernel(s) and the dense oneDNN kernel (runtime/dense.c) built
 * side by side and timed in the same run.  Reports the median time per call, GF/s of
 * non-zero work (2 * kept MACs / time) and the speed-up over oneDNN.
 *
 *   bench_layers [--sparsity 0.9,0.95,0.99] [--batch 1,32] [--threads 1] [--variants table,batch,unchunked,unrolled]
 *                [--bwd] [--shapes resnet18|I,O,H,K,S[;...]] [--min-time 0.2] [--clock wall|cpu]
 *                [--stat median|min] [--alt NAME=VALUE[,...]] [--json]
 * Every kernel of a layer is built first, then each pass is timed with the kernels' samples
 * interleaved (one sample of each in turn), so that a slow minute of a shared machine slows
 * them alike.  Medians by default; --stat min and --clock cpu help further.  --alt builds the
 * table kernel once more under the given environment (TICKET_BATCH_CHUNK=8, TICKET_XS=1, ...)
 * as its own column: an A/B of a setting within one run.
 * With `batch` among the variants, the table kernel is built twice, vectorised over the
 * spatial index (column "table", TICKET_VEC_BATCH=0) and over the batch (column "batch",
 * TICKET_VEC_BATCH=1); otherwise the table column uses the planner's own choice.  `unchunked`
 * adds the batch kernel without channel chunks (TICKET_BATCH_CHUNK=0) as one more column, so
 * the chunked one (its own choice, or TICKET_BATCH_CHUNK from the environment) is compared
 * side by side in the same run.
 *
 * Benchmarks only; the tests never time anything. */
#include "compiler/compile.h"
#include "compiler/emit.h"
#include "runtime/dense.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
  const char *name;
  int linear, I, O, H, K, S;
} shape;

static const shape resnet18[] = {
    {"conv1 3->64 32x32", 0, 3, 64, 32, 3, 1},         {"layer1 64->64 32x32", 0, 64, 64, 32, 3, 1},
    {"layer2.0 64->128 s2", 0, 64, 128, 32, 3, 2},     {"layer2 128->128 16x16", 0, 128, 128, 16, 3, 1},
    {"layer2 short 1x1 s2", 0, 64, 128, 32, 1, 2},     {"layer3.0 128->256 s2", 0, 128, 256, 16, 3, 2},
    {"layer3 256->256 8x8", 0, 256, 256, 8, 3, 1},     {"layer3 short 1x1 s2", 0, 128, 256, 16, 1, 2},
    {"layer4.0 256->512 s2", 0, 256, 512, 8, 3, 2},    {"layer4 512->512 4x4", 0, 512, 512, 4, 3, 1},
    {"layer4 short 1x1 s2", 0, 256, 512, 8, 1, 2},     {"linear 512->10", 1, 512, 10, 1, 1, 1},
};

static tk_model *make_layer(const shape *s, double sparsity, uint64_t seed) {
  tk_model *m = tk_model_new("bench", s->O, s->I, s->H, s->H);
  int64_t ws[4] = {s->O, s->I, s->K, s->K}, bs[1] = {s->O};
  int wi = tk_model_add_tensor(m, s->linear ? "fc.weight" : "conv.weight", s->linear ? 2 : 4, ws);
  int bi = tk_model_add_tensor(m, s->linear ? "fc.bias" : "conv.bias", 1, bs);
  tk_tensor *w = &m->tensors[wi];
  w->prunable = w->trainable = true;
  tk_rng r;
  tk_rng_seed(&r, seed);
  uint8_t *mask = malloc((size_t)w->numel);
  for (int64_t k = 0; k < w->numel; k++) {
    w->data[k] = (float)tk_rng_normal(&r) * 0.05f;
    mask[k] = tk_rng_uniform(&r) >= sparsity;
  }
  if (sparsity > 0) tk_tensor_set_mask(w, mask);
  free(mask);
  tk_layer l = tk_layer_default(s->linear ? TK_OP_LINEAR : TK_OP_CONV2D, s->linear ? "fc" : "conv", 0);
  l.weight = wi, l.bias = bi;
  if (!s->linear) l.kh = l.kw = s->K, l.sh = l.sw = s->S, l.ph = l.pw = s->K / 2;
  tk_model_add_layer(m, &l);
  if (!s->linear) {
    tk_layer gp = tk_layer_default(TK_OP_GLOBALAVGPOOL, "pool", 1);
    tk_model_add_layer(m, &gp);
  }
  if (tk_model_infer(m) != TK_OK) {
    fprintf(stderr, "bench: %s: %s\n", s->name, tk_last_error());
    exit(1);
  }
  return m;
}

/* Wall clock, or (--clock cpu, single thread only) the calling thread's CPU time, which a
 * busy machine disturbs much less. */
static int g_cpu_clock, g_use_min;
/* --cold MB: before every timed call, untimed, write a buffer of that size, so that the call
 * finds its tables, values and scratch where a network leaves them (L3 or memory) rather than
 * hot from its previous repetition; samples are then single calls */
static float *g_cold;
static size_t g_cold_n;
static void evict(void) {
  for (size_t i = 0; i < g_cold_n; i += 16) g_cold[i] += 1.0f;
}
static double now(void) {
  if (!g_cpu_clock) return tk_now();
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* what: 0 forward, 1 input gradient, 2 weight gradient */
static tk_status call(tk_kernel *k, int what, const float *x, float *y, const float *dy, float *dx, float *dw, float *db,
                      int n) {
  return what == 0 ? k->v->fwd(k, x, y, n) : what == 1 ? k->v->bwd_input(k, dy, dx, n) : k->v->bwd_weight(k, x, dy, dw, db, n);
}

/* Seconds per call of each of the nk kernels (NULL: skipped, NaN), their samples interleaved:
 * one sample of each in turn, so a slow minute of a shared machine slows all of them alike.
 * Each sample is `per` calls (per kernel, so that a sample takes at least ~1 ms); at least 7
 * rounds and min_time seconds per kernel, at most 64 rounds.  Median (or --stat min). */
#define MAXK 6
static void time_interleaved(tk_kernel **ks, int nk, int what, const float *x, float *y, const float *dy, float *dx,
                             float *dw, float *db, int n, double min_time, double *out) {
  static double samples[MAXK][64];
  int per[MAXK], live = 0;
  for (int i = 0; i < nk; i++) {
    out[i] = NAN, per[i] = 0;
    if (!ks[i]) continue;
    for (per[i] = 1;; per[i] *= 2) {
      double t0 = now();
      for (int r = 0; r < per[i]; r++)
        if (call(ks[i], what, x, y, dy, dx, dw, db, n) != TK_OK) {
          fprintf(stderr, "bench: %s\n", tk_last_error());
          per[i] = 0;
          break;
        }
      if (!per[i] || g_cold || now() - t0 > 1e-3 || per[i] >= 1 << 16) break;
    }
    live += per[i] > 0;
  }
  if (!live) return;
  double start = now();
  int ns = 0;
  while (ns < 64 && (ns < 7 || now() - start < min_time * live)) {
    for (int i = 0; i < nk; i++) {
      if (!per[i]) continue;
      if (g_cold) evict();
      double t0 = now();
      for (int r = 0; r < per[i]; r++) call(ks[i], what, x, y, dy, dx, dw, db, n);
      samples[i][ns] = (now() - t0) / per[i];
    }
    ns++;
  }
  for (int i = 0; i < nk; i++) {
    if (!per[i]) continue;
    qsort(samples[i], (size_t)ns, sizeof samples[i][0], cmp_d);
    out[i] = g_use_min ? samples[i][0] : (samples[i][(ns - 1) / 2] + samples[i][ns / 2]) / 2;
  }
}

static int parse_list(const char *s, double *out, int max) {
  int n = 0;
  while (s && *s && n < max) {
    char *end;
    out[n++] = strtod(s, &end);
    if (end == s) return -1;
    s = *end == ',' ? end + 1 : end;
  }
  return n;
}

int main(int argc, char **argv) {
  double sp[16] = {0.9, 0.95, 0.99}, bt[16] = {1, 32};
  int nsp = 3, nbt = 2, threads = 1, json = 0, bwd = 0, do_unrolled = 0, do_table = 1, do_batch = 0, do_nc = 0;
  double min_time = 0.2;
  const char *alt = NULL; /* --alt: environment of one more table-kernel column */
  const shape *shapes = resnet18;
  int nshapes = (int)(sizeof resnet18 / sizeof *resnet18);
  shape custom[32];
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      printf("usage: bench_layers [--sparsity 0.9,0.95,0.99] [--batch 1,32] [--threads 1]\n"
             "                    [--variants table,batch,unchunked,unrolled] [--bwd] [--shapes resnet18|I,O,H,K,S[;...]]\n"
             "                    [--min-time SECONDS] [--clock wall|cpu] [--stat median|min]\n"
             "                    [--alt NAME=VALUE[,NAME=VALUE...]] [--cold MB] [--json]\n"
             "Per-layer medians of the generated kernels and oneDNN, GF/s of non-zero work; the kernels'\n"
             "samples interleaved.  --alt adds the table kernel built under that environment as a column\n"
             "(an A/B of a TICKET_* setting within one run).  --cold MB writes an MB-sized buffer before\n"
             "each timed call (one call per sample): tables and scratch then come from L3 or memory,\n"
             "as inside a network, instead of hot from the previous repetition.\n");
      return 0;
    } else if (!strcmp(a, "--sparsity") && v) {
      nsp = parse_list(v, sp, 16), i++;
    } else if (!strcmp(a, "--batch") && v) {
      nbt = parse_list(v, bt, 16), i++;
    } else if (!strcmp(a, "--threads") && v) {
      threads = atoi(v), i++;
    } else if (!strcmp(a, "--min-time") && v) {
      min_time = atof(v), i++;
    } else if (!strcmp(a, "--variants") && v) {
      do_table = strstr(v, "table") != NULL, do_unrolled = strstr(v, "unrolled") != NULL, i++;
      do_batch = strstr(v, "batch") != NULL, do_nc = strstr(v, "unchunked") != NULL;
    } else if (!strcmp(a, "--clock") && v) {
      g_cpu_clock = !strcmp(v, "cpu"), i++;
    } else if (!strcmp(a, "--cold") && v) {
      const double mb = atof(v);
      g_cold_n = mb > 0 && mb <= 65536 ? (size_t)(mb * (1 << 20) / sizeof(float)) : 0, i++;
      if (!g_cold_n || !(g_cold = calloc(g_cold_n, sizeof(float)))) {
        fprintf(stderr, "bench_layers: --cold: '%s' is not a size in MB that can be allocated\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--stat") && v) {
      g_use_min = !strcmp(v, "min"), i++;
    } else if (!strcmp(a, "--alt") && v) {
      tk_env_saved probe = {0};
      if (!tk_env_push(v, &probe)) {
        fprintf(stderr, "bench_layers: --alt: '%s' is not NAME=VALUE[,NAME=VALUE...]\n", v);
        return 2;
      }
      tk_env_pop(&probe);
      alt = v, i++;
    } else if (!strcmp(a, "--bwd")) {
      bwd = 1;
    } else if (!strcmp(a, "--json")) {
      json = 1;
    } else if (!strcmp(a, "--shapes") && v) {
      i++;
      if (strcmp(v, "resnet18") != 0) {
        nshapes = 0;
        for (const char *p = v; *p && nshapes < 32;) {
          shape *s = &custom[nshapes];
          if (sscanf(p, "%d,%d,%d,%d,%d", &s->I, &s->O, &s->H, &s->K, &s->S) != 5) {
            fprintf(stderr, "bench_layers: --shapes: expected I,O,H,K,S[;...], got %s\n", p);
            return 2;
          }
          s->linear = 0;
          char *nm = malloc(64);
          snprintf(nm, 64, "%d->%d %dx%d k%d s%d", s->I, s->O, s->H, s->H, s->K, s->S);
          s->name = nm;
          nshapes++;
          const char *semi = strchr(p, ';');
          if (!semi) break;
          p = semi + 1;
        }
        shapes = custom;
      }
    } else {
      fprintf(stderr, "bench_layers: unknown argument %s (see --help)\n", a);
      return 2;
    }
  }
  if (g_cpu_clock && threads != 1) {
    fprintf(stderr, "bench_layers: --clock cpu measures one thread; use it with --threads 1\n");
    return 2;
  }
  if (nsp < 1 || nbt < 1 || threads < 1) {
    fprintf(stderr, "bench_layers: bad --sparsity, --batch or --threads\n");
    return 2;
  }
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  if (json) printf("{\"threads\": %d, \"results\": [\n", threads);
  else
    printf("%-24s %5s %5s %8s | %10s %8s | %10s %8s %6s%s%s%s%s\n", "layer", "spars", "batch", "nnz", "dense us", "GF/s",
           "table us", "nzGF/s", "x", do_batch ? " | batch us   nzGF/s      x" : "",
           do_unrolled ? " | unroll us  nzGF/s      x" : "", do_nc ? " | unchnk us  nzGF/s      x" : "",
           alt ? " |   alt us   nzGF/s      x" : "");
  int first = 1;
  for (int si = 0; si < nshapes; si++)
    for (int pi = 0; pi < nsp; pi++)
      for (int bi = 0; bi < nbt; bi++) {
        const shape *s = &shapes[si];
        int n = (int)bt[bi];
        tk_model *m = make_layer(s, sp[pi], 1000 + si);
        const tk_layer *l = &m->layers[0];
        int64_t dmacs, smacs;
        tk_layer_macs(m, l, &dmacs, &smacs);
        int64_t nnz = tk_tensor_nnz(&m->tensors[l->weight]);
        int64_t xs = tk_shape_numel(l->in) * n, ys = tk_shape_numel(l->out) * n;
        float *x = tk_alloc_aligned((size_t)xs * 4), *dx = tk_alloc_aligned((size_t)xs * 4);
        float *y = tk_alloc_aligned((size_t)ys * 4), *dy = tk_alloc_aligned((size_t)ys * 4);
        float *dw = tk_alloc_aligned((size_t)m->tensors[l->weight].numel * 4), *db = tk_alloc_aligned((size_t)s->O * 4);
        tk_rng r;
        tk_rng_seed(&r, 5);
        for (int64_t q = 0; q < xs; q++) x[q] = (float)tk_rng_uniform(&r);
        for (int64_t q = 0; q < ys; q++) dy[q] = (float)tk_rng_normal(&r);
        /* every kernel of the layer first, then each pass timed with their samples interleaved:
         * 0 oneDNN, 1 table, 2 unrolled, 3 table vectorised over the batch, 4 the same without
         * chunks, 5 the table kernel under the --alt environment */
        tk_kernel *ks[MAXK] = {NULL};
        tk_plan *plans[MAXK] = {NULL};
        if (tk_dense_available() && tk_kernel_dense_create(m, 0, n, &ks[0]) != TK_OK) ks[0] = NULL;
        const tk_variant vs[MAXK] = {TK_VARIANT_DENSE, TK_VARIANT_SPARSE_TABLE, TK_VARIANT_SPARSE_UNROLLED,
                                     TK_VARIANT_SPARSE_TABLE, TK_VARIANT_SPARSE_TABLE, TK_VARIANT_SPARSE_TABLE};
        const char *chunk_env = getenv("TICKET_BATCH_CHUNK");
        char chunk_keep[32] = "";
        if (chunk_env) snprintf(chunk_keep, sizeof chunk_keep, "%s", chunk_env);
        for (int vi = 1; vi < MAXK; vi++) {
          if ((vi == 1 && !do_table) || (vi == 2 && (!do_unrolled || s->linear)) || (vi == 3 && (!do_batch || s->linear)) ||
              (vi == 4 && (!do_nc || s->linear)) || (vi == 5 && !alt))
            continue;
          if (do_batch && vi < 5) setenv("TICKET_VEC_BATCH", vi >= 3 ? "1" : "0", 1);
          if (vi == 4) setenv("TICKET_BATCH_CHUNK", "0", 1);
          tk_env_saved alt_saved = {0};
          if (vi == 5) tk_env_push(alt, &alt_saved);
          tk_compile_opts o;
          tk_compile_opts_default(&o);
          o.batch = n, o.threads = threads, o.training = bwd, o.force = vs[vi];
          tk_kernel *kk[2] = {NULL, NULL};
          if (tk_plan_make(m, &o, &plans[vi]) != TK_OK || tk_sparse_build(m, plans[vi], &o, n, kk) != TK_OK || !kk[0])
            fprintf(stderr, "bench: %s: %s\n", s->name, tk_last_error());
          ks[vi] = kk[0];
          if (vi == 5) tk_env_pop(&alt_saved);
          if (chunk_env) setenv("TICKET_BATCH_CHUNK", chunk_keep, 1);
          else unsetenv("TICKET_BATCH_CHUNK");
          if (do_batch) unsetenv("TICKET_VEC_BATCH");
        }
        double tim[3][MAXK];
        for (int w = 0; w < (bwd ? 3 : 1); w++) time_interleaved(ks, MAXK, w, x, y, dy, dx, dw, db, n, min_time, tim[w]);
        for (int vi = 0; vi < MAXK; vi++) {
          if (ks[vi]) ks[vi]->v->destroy(ks[vi]);
          tk_plan_free(plans[vi]);
        }
        double td[3], tt[3], tu[3], tb[3], tn[3], ta[3];
        for (int w = 0; w < 3; w++)
          td[w] = tim[w][0], tt[w] = tim[w][1], tu[w] = tim[w][2], tb[w] = tim[w][3], tn[w] = tim[w][4],
          ta[w] = tim[w][5];
        double nzf = 2.0 * (double)smacs * n, df = 2.0 * (double)dmacs * n;
        static const char *const what[3] = {"fwd", "bwd_input", "bwd_weight"};
        for (int w = 0; w < (bwd ? 3 : 1); w++) {
          if (json) {
            printf("%s  {\"layer\": \"%s\", \"pass\": \"%s\", \"sparsity\": %.4f, \"batch\": %d, \"nnz\": %lld, "
                   "\"dense_us\": %.3f, \"table_us\": %.3f, \"unrolled_us\": %.3f, \"batch_us\": %.3f, "
                   "\"table_nz_gflops\": %.2f, \"batch_nz_gflops\": %.2f, \"dense_gflops\": %.2f, "
                   "\"speedup_table\": %.3f, \"speedup_unrolled\": %.3f, \"speedup_batch\": %.3f, "
                   "\"unchunked_us\": %.3f, \"speedup_unchunked\": %.3f, \"alt_us\": %.3f, \"speedup_alt\": %.3f}",
                   first ? "" : ",\n", s->name, what[w], sp[pi], n, (long long)nnz, td[w] * 1e6, tt[w] * 1e6,
                   tu[w] * 1e6, tb[w] * 1e6, nzf / tt[w] / 1e9, nzf / tb[w] / 1e9, df / td[w] / 1e9, td[w] / tt[w],
                   td[w] / tu[w], td[w] / tb[w], tn[w] * 1e6, td[w] / tn[w], ta[w] * 1e6, td[w] / ta[w]);
            first = 0;
          } else {
            printf("%-24s %5.3f %5d %8lld | %10.1f %8.1f | %10.1f %8.1f %6.2f", w ? what[w] : s->name, sp[pi], n,
                   (long long)nnz, td[w] * 1e6, df / td[w] / 1e9, tt[w] * 1e6, nzf / tt[w] / 1e9, td[w] / tt[w]);
            if (do_batch) printf(" | %10.1f %8.1f %6.2f", tb[w] * 1e6, nzf / tb[w] / 1e9, td[w] / tb[w]);
            if (do_unrolled) printf(" | %10.1f %8.1f %6.2f", tu[w] * 1e6, nzf / tu[w] / 1e9, td[w] / tu[w]);
            if (do_nc) printf(" | %10.1f %8.1f %6.2f", tn[w] * 1e6, nzf / tn[w] / 1e9, td[w] / tn[w]);
            if (alt) printf(" | %10.1f %8.1f %6.2f", ta[w] * 1e6, nzf / ta[w] / 1e9, td[w] / ta[w]);
            printf("\n");
          }
          fflush(stdout);
        }
        free(x), free(dx), free(y), free(dy), free(dw), free(db);
        tk_model_free(m);
      }
  if (json) printf("\n]}\n");
  return 0;
}
