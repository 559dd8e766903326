/* cmd_masks.c -- `ticket masks A B`: compare the masks of two models of the same
 * architecture, per prunable tensor (Jaccard overlap, kept in both, only in A, only in B)
 * and in total. */
#include "cli.h"

#include "compiler/model.h"

#include <stdlib.h>
#include <string.h>

static const char *const usage_text =
    "usage: ticket masks A B [--json]\n"
    "\n"
    "Compares the masks of two models with the same tensors (for instance two pruning methods,\n"
    "or two IMP rounds).  Per prunable tensor and in total: weights kept in A, in B, in both,\n"
    "only in A, only in B, and the Jaccard overlap |A and B| / |A or B| of the kept sets\n"
    "(1 when both keep nothing).  A tensor without a mask keeps everything.\n"
    "\n"
    "options:\n"
    "  --json    print the comparison as JSON\n";

typedef struct {
  int64_t numel, kept_a, kept_b, both, only_a, only_b;
} overlap;

static double jaccard(const overlap *o) {
  int64_t uni = o->both + o->only_a + o->only_b;
  return uni ? (double)o->both / (double)uni : 1.0;
}

static const char *layer_of(const tk_model *m, int t) {
  for (int l = 0; l < m->n_layers; l++)
    if (m->layers[l].weight == t) return m->layers[l].name;
  return "";
}

int cmd_masks(int argc, char **argv) {
  const char *cmd = "masks";
  if (cli_wants_help(argc, argv)) {
    fputs(usage_text, stdout);
    return 0;
  }
  const char *pa = NULL, *pb = NULL;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) json = 1;
    else if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error(cmd, "unknown option '%s'", argv[i]);
    else if (!pa) pa = argv[i];
    else if (!pb) pb = argv[i];
    else return cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
  }
  if (!pa || !pb) return cli_usage_error(cmd, "two models are needed");
  tk_model *a = NULL, *b = NULL;
  tk_status st = tk_model_load(pa, &a);
  if (st == TK_OK) st = tk_model_load(pb, &b);
  if (st != TK_OK) {
    tk_model_free(a);
    return cli_error(cmd, st);
  }
  /* the tensors compared: prunable (or masked) in either model, matched by name */
  int *ib = tk_calloc((size_t)(a->n_tensors ? a->n_tensors : 1), sizeof(int));
  overlap *ov = tk_calloc((size_t)(a->n_tensors ? a->n_tensors : 1), sizeof *ov);
  if (!ib || !ov) {
    free(ib);
    free(ov);
    tk_model_free(a);
    tk_model_free(b);
    return cli_error(cmd, TK_ERR_NOMEM);
  }
  int rc = 0;
  for (int t = 0; t < a->n_tensors; t++) {
    const tk_tensor *ta = &a->tensors[t];
    int k = tk_model_find_tensor(b, ta->name);
    ib[t] = -1;
    int wanted = ta->prunable || ta->mask || (k >= 0 && (b->tensors[k].prunable || b->tensors[k].mask));
    if (!wanted) continue;
    if (k < 0) {
      fprintf(stderr, "ticket masks: error: %s: no tensor %s (it is in %s)\n", pb, ta->name, pa);
      rc = 4;
      break;
    }
    const tk_tensor *tb = &b->tensors[k];
    if (tb->numel != ta->numel || tb->ndim != ta->ndim || memcmp(tb->shape, ta->shape, sizeof ta->shape) != 0) {
      fprintf(stderr, "ticket masks: error: tensor %s: shapes differ between %s and %s\n", ta->name, pa, pb);
      rc = 4;
      break;
    }
    ib[t] = k;
    overlap *o = &ov[t];
    o->numel = ta->numel;
    for (int64_t i = 0; i < ta->numel; i++) {
      int ka = !ta->mask || ta->mask[i], kb = !tb->mask || tb->mask[i];
      o->kept_a += ka;
      o->kept_b += kb;
      o->both += ka && kb;
      o->only_a += ka && !kb;
      o->only_b += kb && !ka;
    }
  }
  for (int t = 0; rc == 0 && t < b->n_tensors; t++) {
    const tk_tensor *tb = &b->tensors[t];
    if ((tb->prunable || tb->mask) && tk_model_find_tensor(a, tb->name) < 0) {
      fprintf(stderr, "ticket masks: error: %s: no tensor %s (it is in %s)\n", pa, tb->name, pb);
      rc = 4;
    }
  }
  if (rc == 0) {
    overlap tot = {0};
    int n = 0;
    for (int t = 0; t < a->n_tensors; t++) {
      if (ib[t] < 0) continue;
      n++;
      tot.numel += ov[t].numel;
      tot.kept_a += ov[t].kept_a;
      tot.kept_b += ov[t].kept_b;
      tot.both += ov[t].both;
      tot.only_a += ov[t].only_a;
      tot.only_b += ov[t].only_b;
    }
    if (json) {
      printf("{\"command\":\"masks\",\"a\":");
      cli_json_string(stdout, pa);
      printf(",\"b\":");
      cli_json_string(stdout, pb);
      printf(",\"tensors\":[");
      int first = 1;
      for (int t = 0; t < a->n_tensors; t++) {
        if (ib[t] < 0) continue;
        const overlap *o = &ov[t];
        printf("%s{\"name\":", first ? "" : ",");
        first = 0;
        cli_json_string(stdout, a->tensors[t].name);
        printf(",\"layer\":");
        cli_json_string(stdout, layer_of(a, t));
        printf(",\"numel\":%lld,\"kept_a\":%lld,\"kept_b\":%lld,\"both\":%lld,\"only_a\":%lld,\"only_b\":%lld,"
               "\"jaccard\":%.9g}",
               (long long)o->numel, (long long)o->kept_a, (long long)o->kept_b, (long long)o->both,
               (long long)o->only_a, (long long)o->only_b, jaccard(o));
      }
      printf("],\"total\":{\"numel\":%lld,\"kept_a\":%lld,\"kept_b\":%lld,\"both\":%lld,\"only_a\":%lld,"
             "\"only_b\":%lld,\"jaccard\":%.9g,\"sparsity_a\":%.9g,\"sparsity_b\":%.9g}}\n",
             (long long)tot.numel, (long long)tot.kept_a, (long long)tot.kept_b, (long long)tot.both,
             (long long)tot.only_a, (long long)tot.only_b, jaccard(&tot),
             tot.numel ? 1.0 - (double)tot.kept_a / (double)tot.numel : 0.0,
             tot.numel ? 1.0 - (double)tot.kept_b / (double)tot.numel : 0.0);
    } else {
      printf("A = %s\nB = %s\n", pa, pb);
      printf("%-24s %-28s %11s %11s %11s %11s %11s %11s %8s\n", "layer", "tensor", "numel", "kept A", "kept B", "both",
             "only A", "only B", "jaccard");
      for (int t = 0; t < a->n_tensors; t++) {
        if (ib[t] < 0) continue;
        const overlap *o = &ov[t];
        printf("%-24s %-28s %11lld %11lld %11lld %11lld %11lld %11lld %8.4f\n", layer_of(a, t), a->tensors[t].name,
               (long long)o->numel, (long long)o->kept_a, (long long)o->kept_b, (long long)o->both,
               (long long)o->only_a, (long long)o->only_b, jaccard(o));
      }
      printf("%-24s %-28s %11lld %11lld %11lld %11lld %11lld %11lld %8.4f\n", "total", "", (long long)tot.numel,
             (long long)tot.kept_a, (long long)tot.kept_b, (long long)tot.both, (long long)tot.only_a,
             (long long)tot.only_b, jaccard(&tot));
      if (!n) printf("(neither model has prunable tensors)\n");
    }
  }
  free(ib);
  free(ov);
  tk_model_free(a);
  tk_model_free(b);
  return rc;
}
