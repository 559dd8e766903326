/* fuzz_load.c -- libFuzzer target for the model loader (compiler/load.cc).
 *
 * Input starting with '{' goes through the JSON architecture parser, anything else through
 * tk_model_from_buffer.  Properties checked beyond "no crash, no sanitizer report":
 *   - a failure returns no model and records one line that starts with the file name;
 *   - a model that loads saves again, and the saved buffer loads again.
 * Built and run by tests/fuzz/run.sh; make_seeds.c writes the starting corpus.
 */
#include "compiler/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *why, const char *msg) {
  fprintf(stderr, "fuzz_load: %s: %s\n", why, msg);
  abort();
}

static void check_message(const char *what) {
  const char *e = tk_last_error();
  size_t n = strlen(what);
  if (strncmp(e, what, n) != 0 || e[n] != ':' || strchr(e, '\n')) die("badly formed error message", e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tk_model *m = NULL;
  tk_status st;
  const char *what;
  if (size > 0 && data[0] == '{') {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    what = "fuzz.json";
    st = tk_model_from_json(text, what, &m);
    free(text);
  } else {
    what = "fuzz.tkt";
    st = tk_model_from_buffer(data, size, what, &m);
  }
  if (st != TK_OK) {
    if (m) die("model returned with an error", tk_last_error());
    if (st != TK_ERR_NOMEM) check_message(what);
    return 0;
  }
  void *buf = NULL;
  size_t n = 0;
  tk_model *again = NULL;
  if (tk_model_to_buffer(m, &buf, &n) != TK_OK) die("a loaded model does not save", tk_last_error());
  if (tk_model_from_buffer(buf, n, "again", &again) != TK_OK) die("a saved model does not load", tk_last_error());
  tk_model_free(again);
  free(buf);
  tk_model_free(m);
  return 0;
}
