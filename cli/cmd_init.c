/* cmd_init.c -- `ticket init`: a zoo architecture (models/<arch>.json, embedded) with the
 * reference initialisation of its original code, written as a model file. */
#include "cli.h"

#include "../compiler/zoo.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: ticket init ARCH -o OUT.tkt [--classes N] [--input C,H,W] [--seed S] [--json]\n"
          "       ticket init --list [--json]\n"
          "\n"
          "Creates a model of a zoo architecture with the initialisation of its original code\n"
          "(deterministic for a seed) and writes it atomically.\n"
          "\n"
          "  ARCH              an architecture of the zoo (see --list)\n"
          "  -o, --output OUT  the model file to write (required)\n"
          "  --classes N       number of classes (default: the architecture's, 10)\n"
          "  --input C,H,W     input channels, height, width (default: the architecture's)\n"
          "  --seed S          seed of the initialisation (default 0)\n"
          "  --list            list the architectures with their default input and sizes\n"
          "  --json            print the result as one JSON object\n");
}


static bool parse_input(const char *s, int *c, int *h, int *w) {
  char buf[64];
  if (strlen(s) >= sizeof buf) return false;
  strcpy(buf, s);
  char *parts[3], *save = NULL, *tok = strtok_r(buf, ",", &save);
  int n = 0;
  for (; tok && n < 3; tok = strtok_r(NULL, ",", &save)) parts[n++] = tok;
  if (n != 3 || tok) return false;
  long v[3];
  for (int i = 0; i < 3; i++)
    if (!cli_parse_long(parts[i], 1, 65536, &v[i])) return false;
  *c = (int)v[0];
  *h = (int)v[1];
  *w = (int)v[2];
  return true;
}

typedef struct {
  int64_t params, prunable, macs;
} model_stats;

static model_stats stats(const tk_model *m) {
  model_stats s = {0, 0, 0};
  for (int t = 0; t < m->n_tensors; t++) {
    if (m->tensors[t].trainable) s.params += m->tensors[t].numel;
    if (m->tensors[t].prunable) s.prunable += m->tensors[t].numel;
  }
  for (int i = 0; i < m->n_layers; i++) {
    int64_t dense, sparse;
    tk_layer_macs(m, &m->layers[i], &dense, &sparse);
    s.macs += dense;
  }
  return s;
}

static int list_archs(bool json) {
  const char *const *names = tk_zoo_names();
  if (json) printf("{\"architectures\": [");
  for (int i = 0; names[i]; i++) {
    char path[160];
    snprintf(path, sizeof path, "models/%s.json", names[i]);
    const tk_embedded_file *f = tk_embedded_find(path);
    tk_model *m = NULL;
    tk_status st = f ? tk_model_from_json(f->data, path, &m) : tk_fail(TK_ERR_INTERNAL, "%s: not embedded", path);
    if (st != TK_OK) {
      if (json) printf("]}\n");
      return cli_error("init", st);
    }
    model_stats s = stats(m);
    if (json) {
      printf("%s{\"arch\": ", i ? ", " : "");
      cli_json_string(stdout, names[i]);
      printf(", \"input\": [%d, %d, %d], \"classes\": %d, \"params\": %" PRId64 ", \"prunable\": %" PRId64
             ", \"macs\": %" PRId64 ", \"source\": ",
             m->in_c, m->in_h, m->in_w, m->classes, s.params, s.prunable, s.macs);
      cli_json_string(stdout, m->prov.source);
      printf("}");
    } else {
      if (i == 0) printf("%-18s %-9s %7s %12s %12s %10s\n", "arch", "input", "classes", "params", "prunable", "MACs");
      char in[32];
      snprintf(in, sizeof in, "%dx%dx%d", m->in_c, m->in_h, m->in_w);
      printf("%-18s %-9s %7d %12" PRId64 " %12" PRId64 " %8.1f M\n", names[i], in, m->classes, s.params,
             s.prunable, (double)s.macs / 1e6);
    }
    tk_model_free(m);
  }
  if (json) printf("]}\n");
  return 0;
}

int cmd_init(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  const char *arch = NULL, *out = NULL;
  long classes = 0;
  int c = 0, h = 0, w = 0;
  uint64_t seed = 0;
  bool json = false, list = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has_val = i + 1 < argc;
    if (!strcmp(a, "--json")) {
      json = true;
    } else if (!strcmp(a, "--list")) {
      list = true;
    } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
      if (!has_val) return cli_usage_error("init", "%s needs a file name", a);
      out = argv[++i];
    } else if (!strcmp(a, "--classes")) {
      if (!has_val || !cli_parse_long(argv[i + 1], 1, 65536, &classes))
        return cli_usage_error("init", "--classes: '%s' is not a number of classes in 1..65536", has_val ? argv[i + 1] : "");
      i++;
    } else if (!strcmp(a, "--input")) {
      if (!has_val || !parse_input(argv[i + 1], &c, &h, &w))
        return cli_usage_error("init", "--input: '%s' is not C,H,W (three positive integers)", has_val ? argv[i + 1] : "");
      i++;
    } else if (!strcmp(a, "--seed")) {
      char *end;
      errno = 0;
      if (!has_val || argv[i + 1][0] == '-' || (seed = strtoull(argv[i + 1], &end, 10), errno || end == argv[i + 1] || *end))
        return cli_usage_error("init", "--seed: '%s' is not a non-negative integer", has_val ? argv[i + 1] : "");
      i++;
    } else if (a[0] == '-' && a[1]) {
      return cli_usage_error("init", "unknown option '%s'", a);
    } else if (!arch) {
      arch = a;
    } else {
      return cli_usage_error("init", "more than one architecture given ('%s' and '%s')", arch, a);
    }
  }
  if (list) return list_archs(json);
  if (!arch) return cli_usage_error("init", "no architecture given (ticket init --list shows them)");
  if (!out) return cli_usage_error("init", "no output file given (-o OUT.tkt)");

  tk_model *m = NULL;
  tk_status st = tk_zoo_create(arch, (int)classes, c, h, w, seed, &m);
  if (st != TK_OK) return cli_error("init", st);
  st = tk_model_save(m, out);
  if (st != TK_OK) {
    tk_model_free(m);
    return cli_error("init", st);
  }
  model_stats s = stats(m);
  if (json) {
    printf("{\"arch\": ");
    cli_json_string(stdout, arch);
    printf(", \"output\": ");
    cli_json_string(stdout, out);
    printf(", \"classes\": %d, \"input\": [%d, %d, %d], \"seed\": %" PRIu64 ", \"tensors\": %d, \"layers\": %d"
           ", \"params\": %" PRId64 ", \"prunable\": %" PRId64 ", \"macs\": %" PRId64 "}\n",
           m->classes, m->in_c, m->in_h, m->in_w, seed, m->n_tensors, m->n_layers, s.params, s.prunable, s.macs);
  } else {
    printf("%s: %s, input %dx%dx%d, %d classes, %" PRId64 " parameters (%" PRId64 " prunable), %.1f M MACs, "
           "seed %" PRIu64 "\n",
           out, arch, m->in_c, m->in_h, m->in_w, m->classes, s.params, s.prunable, (double)s.macs / 1e6, seed);
  }
  tk_model_free(m);
  return 0;
}
