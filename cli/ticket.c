/* ticket.c -- the `ticket` command: dispatch to subcommands (cli/cmd_*.c). */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name, *summary;
  int (*fn)(int, char **);
} command;

static const command g_commands[] = {
#define X(n, s) {#n, s, cmd_##n},
    TK_COMMANDS(X)
#undef X
};

static void usage(FILE *f) {
  fprintf(f, "ticket %s -- a compiler and runtime for pruned, adversarially robust CNNs\n\n"
             "usage: ticket <command> [options]   (ticket <command> --help for each)\n\n",
          TICKET_VERSION);
  for (size_t i = 0; i < sizeof g_commands / sizeof *g_commands; i++)
    if (g_commands[i].fn) fprintf(f, "  %-9s %s\n", g_commands[i].name, g_commands[i].summary);
}

int cli_exit_code(tk_status st) {
  switch (st) {
  case TK_OK: return 0;
  case TK_ERR_ARG: return 2;
  case TK_ERR_IO: return 3;
  case TK_ERR_FORMAT:
  case TK_ERR_SHAPE: return 4;
  default: return 1;
  }
}

int cli_error(const char *cmd, tk_status st) {
  fprintf(stderr, "ticket %s: error: %s\n", cmd, tk_last_error());
  return cli_exit_code(st);
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "ticket %s: error: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (see ticket %s --help)\n", cmd);
  return 2;
}

bool cli_wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return true;
  return false;
}

bool cli_parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

bool cli_parse_u64(const char *s, uint64_t *out) {
  char *end;
  if (!*s || *s == '-') return false;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || *end) return false;
  *out = v;
  return true;
}

void cli_json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
    else if (*p == '\n') fputs("\\n", f);
    else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
    else fputc(*p, f);
  }
  fputc('"', f);
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("ticket %s\n", TICKET_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof g_commands / sizeof *g_commands; i++)
    if (!strcmp(argv[1], g_commands[i].name) && g_commands[i].fn) return g_commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "ticket: error: unknown command '%s' (see ticket --help)\n", argv[1]);
  return 2;
}
