/* cli.h -- shared pieces of the `ticket` command: the subcommand list and small helpers.
 *
 * How to add a subcommand: add X(name, "one-line summary") to TK_COMMANDS and write
 * `int cmd_<name>(int argc, char **argv)` in cli/cmd_<name>.c.  argv[0] is the subcommand
 * name; `--help` must print usage and return 0.  Errors: print one line through cli_error()
 * and return a non-zero exit code (cli_exit_code()).
 */
#ifndef TK_CLI_H
#define TK_CLI_H

#include "ticket.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define TK_COMMANDS(X)                                                         \
  X(init, "create a zoo model with the reference initialisation")             \
  X(info, "layers, shapes, parameters, non-zeros, sparsity and MACs")        \
  X(run, "logits (and input gradient) for a batch in a .npy file")           \
  X(eval, "standard accuracy on a data set")                                 \
  X(attack, "robust accuracy under PGD / FGSM")                              \
  X(train, "standard or adversarial training that keeps the mask exact")     \
  X(prune, "find a mask: synflow, magnitude, imp, hydra, random, snip")      \
  X(masks, "compare the masks of two models")                                \
  X(plan, "per-layer kernel choices of the compiler, and why")               \
  X(compile, "ahead-of-time C, shared object or executable")                 \
  X(bench, "latency and throughput, side by side with dense")

#define X(name, summary) int cmd_##name(int argc, char **argv);
TK_COMMANDS(X)
#undef X

/* "ticket CMD: error: <message>" on stderr; returns the exit code for the status. */
int cli_error(const char *cmd, tk_status st);
/* Same with a message of the caller's (usage errors): returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cli_exit_code(tk_status st);
/* true when argv has -h or --help */
bool cli_wants_help(int argc, char **argv);
/* Decimal integer in [lo, hi], the whole string; false otherwise (nothing written). */
bool cli_parse_long(const char *s, long lo, long hi, long *out);
/* Non-negative integer (decimal, or 0x hex), the whole string. */
bool cli_parse_u64(const char *s, uint64_t *out);
/* Write a JSON string literal (quoted, escaped). */
void cli_json_string(FILE *f, const char *s);

#endif
