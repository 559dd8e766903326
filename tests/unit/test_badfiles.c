/* test_badfiles.c -- hostile and broken model files must fail cleanly, with a one-line
 * message that starts with the file name and names the tensor / layer and the field.
 *
 *   - targeted cases, written as FlatBuffers JSON (parsed, then read by the binary loader):
 *     mask size, mask bits past the end, data / scores length, missing data, cyclic graph,
 *     tensor index out of range, tensor used twice, huge / zero / negative dimensions, memory
 *     bombs (huge tensors without data), NaN and infinite weights, newer format version, bad
 *     attribute arrays, input normalisation, training state;
 *   - binary patches of a real file: wrong identifier, NaN found by a marker value;
 *   - files: empty, too short, JSON given as a model, a directory, a missing path;
 *   - truncation of a real file at every offset (each must fail, none may crash);
 *   - random corruption (byte flips, overwritten words): load or fail cleanly, never crash;
 *     a model that loads must save and load again.
 * Run it under -DTICKET_SANITIZE=address,undefined as well: every prefix and every corrupted
 * copy lives in an exactly sized allocation so that an over-read is caught.
 */
#include "check.h"
#include "load_fixture.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------------ */

static bool one_line_from(const char *msg, const char *what) {
  size_t n = strlen(what);
  return strncmp(msg, what, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ' && !strchr(msg, '\n');
}

/* Expects a failure with status `want` whose message starts with `what` and contains every
 * needle (NULL-terminated list). */
static void expect_fail_v(const char *label, tk_status st, tk_model *m, tk_status want, const char *what,
                          const char *const *needles) {
  const char *e = tk_last_error();
  CHECK_MSG(st == want, "%s: status %s, expected %s (%s)", label, tk_status_name(st), tk_status_name(want),
            st == TK_OK ? "loaded" : e);
  CHECK_MSG(st == TK_OK || m == NULL, "%s: a model was returned with an error", label);
  if (st == TK_OK) {
    tk_model_free(m);
    return;
  }
  CHECK_MSG(one_line_from(e, what), "%s: message does not start with '%s: ' on one line: %s", label, what, e);
  for (const char *const *n = needles; *n; n++) CHECK_MSG(strstr(e, *n) != NULL, "%s: message lacks '%s': %s", label, *n, e);
}

#define EXPECT_FAIL(label, st, m, want, what, ...)                          \
  do {                                                                      \
    const char *needles_[] = {__VA_ARGS__, NULL};                           \
    expect_fail_v(label, st, m, want, what, needles_);                      \
  } while (0)

/* ---- targeted cases as JSON ------------------------------------------------------------ */

/* A tiny valid model: 1x4x4 -> conv 3x3 pad 1 (2 out, masked: 18 elements, 3 mask bytes)
 * -> global average pool -> flatten: 2 classes. */
#define D18 "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8"
#define INPUT_OK "input: {channels: 1, height: 4, width: 4}"
#define TW(extra) "{name: \"c.weight\", shape: [2, 1, 3, 3], prunable: true" extra "}"
#define TW_OK TW(", mask: [255, 255, 3], data: [" D18 "]")
#define TB_OK "{name: \"c.bias\", shape: [2], data: [0.5, -0.5]}"
#define LC(extra) "{name: \"c\", op: Conv2d, weight: 0, bias: 1, kernel: [3, 3], padding: [1, 1]" extra "}"
#define LC_OK LC(", inputs: [0]")
#define L_REST "{name: \"g\", op: GlobalAvgPool, inputs: [1]}, {name: \"f\", op: Flatten, inputs: [2]}"

static tk_status from_json(const char *head, const char *tensors, const char *layers, const char *tail,
                           tk_model **m) {
  static char buf[8192];
  snprintf(buf, sizeof buf, "{%s, tensors: [%s], layers: [%s]%s}", head, tensors, layers, tail);
  *m = NULL;
  return tk_model_from_json(buf, "bad.json", m);
}

#define HEAD_OK "classes: 2, " INPUT_OK
#define J(label, head, tensors, layers, tail, ...)                                  \
  do {                                                                              \
    tk_model *m_;                                                                   \
    tk_status st_ = from_json(head, tensors, layers, tail, &m_);                    \
    EXPECT_FAIL(label, st_, m_, TK_ERR_FORMAT, "bad.json", __VA_ARGS__);            \
  } while (0)

static void test_json_cases(void) {
  tk_model *m = NULL;
  tk_status st = from_json(HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST, "", &m);
  CHECK_MSG(st == TK_OK, "the base case must load: %s", tk_last_error());
  if (m) CHECK(m->tensors[0].mask[16] == 1 && m->tensors[0].mask[17] == 1 && tk_tensor_nnz(&m->tensors[0]) == 18);
  tk_model_free(m);

  /* masks */
  J("mask short", HEAD_OK, TW(", mask: [255, 255], data: [" D18 "]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: mask has 2 bytes, expected 3 for 18 elements");
  J("mask long", HEAD_OK, TW(", mask: [255, 255, 3, 0], data: [" D18 "]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight", "mask has 4 bytes");
  J("mask bits past the end", HEAD_OK, TW(", mask: [255, 255, 7], data: [" D18 "]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: mask has bits set past element 17");
  J("mask on a non-prunable tensor", HEAD_OK,
    TW_OK "," "{name: \"c.bias\", shape: [2], data: [0.5, -0.5], mask: [1]}", LC_OK "," L_REST, "",
    "tensor c.bias", "mask", "not prunable");
  /* data, scores */
  J("data short", HEAD_OK, TW(", data: [0.1, 0.2]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: data has 2 floats, expected 18");
  J("data long", HEAD_OK, TW(", data: [" D18 ", 1.9]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: data has 19 floats, expected 18");
  J("data missing", HEAD_OK, TW("") "," TB_OK, LC_OK "," L_REST, "", "tensor c.weight: data: missing");
  J("scores length", HEAD_OK, TW(", data: [" D18 "], scores: [1, 2, 3]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: scores has 3 floats, expected 18");
  J("NaN weight", HEAD_OK, TW(", data: [0.1, nan, " D18 "]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight", "data");
  J("NaN weight", HEAD_OK, TW(", data: [0.1, 0.2, nan,0.4,0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8]") "," TB_OK,
    LC_OK "," L_REST, "", "tensor c.weight: data[2] is NaN");
  J("infinite bias", HEAD_OK, TW_OK "," "{name: \"c.bias\", shape: [2], data: [0.5, -inf]}", LC_OK "," L_REST, "",
    "tensor c.bias: data[1] is infinite");
  J("NaN score", HEAD_OK,
    TW(", data: [" D18 "], scores: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,nan]") "," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: scores[17] is NaN");
  J("init rule unknown", HEAD_OK, TW(", init: 99") "," TB_OK, LC_OK "," L_REST, "", "tensor c.weight: init: unknown rule 99");
  /* shapes */
  J("zero dimension", HEAD_OK, "{name: \"c.weight\", shape: [0, 1, 3, 3], init: Zeros}," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: shape[0] = 0 out of range");
  J("negative dimension", HEAD_OK, "{name: \"c.weight\", shape: [2, -1, 3, 3], init: Zeros}," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: shape[1] = -1 out of range");
  J("huge dimension", HEAD_OK, "{name: \"c.weight\", shape: [1000000000, 1, 3, 3], init: Zeros}," TB_OK,
    LC_OK "," L_REST, "", "tensor c.weight: shape[0] = 1000000000 out of range");
  J("huge product", HEAD_OK, "{name: \"c.weight\", shape: [65536, 65536, 4], init: Zeros}," TB_OK, LC_OK "," L_REST,
    "", "tensor c.weight: shape: more than");
  J("memory bomb without data", HEAD_OK,
    "{name: \"c.weight\", shape: [32768, 65536], init: Zeros}," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight", "without data total more than");
  J("no shape", HEAD_OK, "{name: \"c.weight\", init: Zeros}," TB_OK, LC_OK "," L_REST, "",
    "tensor c.weight: shape: missing");
  J("five dimensions", HEAD_OK, "{name: \"c.weight\", shape: [1, 2, 1, 3, 3], init: Zeros}," TB_OK, LC_OK "," L_REST,
    "", "tensor c.weight: shape: 5 dimensions");
  J("weight shape vs layer", HEAD_OK, "{name: \"c.weight\", shape: [2, 2, 3, 3], init: Zeros}," TB_OK,
    LC_OK "," L_REST, "", "layer 0 (c, conv2d): weight", "2x2x3x3", "2x1x3x3");
  J("input channels huge", "classes: 2, input: {channels: 1000000000, height: 4, width: 4}", TW_OK "," TB_OK,
    LC_OK "," L_REST, "", "input: channels = 1000000000 out of range");
  J("input width zero", "classes: 2, input: {channels: 1, height: 4, width: 0}", TW_OK "," TB_OK, LC_OK "," L_REST,
    "", "input: width = 0");
  J("classes huge", "classes: 1000000000, " INPUT_OK, TW_OK "," TB_OK, LC_OK "," L_REST, "", "classes");
  J("classes disagree", "classes: 3, " INPUT_OK, TW_OK "," TB_OK, LC_OK "," L_REST, "", "classes",
    "expected 3 logits");
  /* graph */
  J("cyclic: reads its own output", HEAD_OK, TW_OK "," TB_OK, LC(", inputs: [1]") "," L_REST, "",
    "layer 0 (c, conv2d): inputs[0]: value 1", "acyclic");
  J("cyclic: reads a later value", HEAD_OK, TW_OK "," TB_OK,
    LC_OK ", {name: \"g\", op: GlobalAvgPool, inputs: [3]}, {name: \"f\", op: Flatten, inputs: [2]}", "",
    "layer 1 (g, globalavgpool): inputs[0]: value 3");
  J("negative input", HEAD_OK, TW_OK "," TB_OK, LC(", inputs: [-1]") "," L_REST, "", "layer 0", "inputs[0]");
  J("three inputs", HEAD_OK, TW_OK "," TB_OK, LC(", inputs: [0, 0, 0]") "," L_REST, "",
    "layer 0 (c, conv2d): inputs: 3 values");
  J("add with one input", HEAD_OK, TW_OK "," TB_OK,
    LC_OK ", {name: \"a\", op: Add, inputs: [1]}, {name: \"g\", op: GlobalAvgPool, inputs: [2]},"
          "{name: \"f\", op: Flatten, inputs: [3]}", "",
    "layer 1 (a, add): inputs: 1 given, 2 expected");
  J("tensor index out of range", HEAD_OK, TW_OK "," TB_OK,
    "{name: \"c\", op: Conv2d, inputs: [0], weight: 7, bias: 1, kernel: [3, 3], padding: [1, 1]}," L_REST, "",
    "layer 0 (c, conv2d): weight: tensor index 7 out of range");
  J("tensor index negative", HEAD_OK, TW_OK "," TB_OK,
    "{name: \"c\", op: Conv2d, inputs: [0], weight: 0, bias: -5, kernel: [3, 3], padding: [1, 1]}," L_REST, "",
    "layer 0 (c, conv2d): bias: tensor index -5");
  J("tensor used twice", HEAD_OK, TW_OK "," TB_OK,
    LC_OK ", {name: \"c2\", op: Conv2d, inputs: [1], weight: 0, kernel: [3, 3], padding: [1, 1]},"
          "{name: \"g\", op: GlobalAvgPool, inputs: [2]}, {name: \"f\", op: Flatten, inputs: [3]}", "",
    "layer 1 (c2, conv2d): weight: tensor c.weight is already used by layer 0");
  J("tensor unused", HEAD_OK, TW_OK "," TB_OK ", {name: \"spare\", shape: [3], data: [1, 2, 3]}", LC_OK "," L_REST, "",
    "tensor spare: not used");
  J("duplicate tensor name", HEAD_OK, TW_OK ", {name: \"c.weight\", shape: [2], data: [0.5, -0.5]}", LC_OK "," L_REST,
    "", "c.weight is used twice");
  J("tensor name with a newline", HEAD_OK, TW_OK ", {name: \"c.\\nbias\", shape: [2], data: [0.5, -0.5]}",
    LC_OK "," L_REST, "", "tensor 1: name contains a control character");
  J("empty tensor name", HEAD_OK, TW_OK ", {name: \"\", shape: [2], data: [0.5, -0.5]}", LC_OK "," L_REST, "",
    "tensor 1: name is empty");
  J("no layers", HEAD_OK, TW_OK "," TB_OK, "", "", "layers: missing");
  J("unknown op", HEAD_OK, TW_OK "," TB_OK, LC_OK ", {name: \"g\", op: 42, inputs: [1]}", "",
    "layer 1 (g): op: unknown op code 42");
  /* attributes */
  J("kernel of three", HEAD_OK, TW_OK "," TB_OK,
    "{name: \"c\", op: Conv2d, inputs: [0], weight: 0, bias: 1, kernel: [3, 3, 3]}," L_REST, "",
    "layer 0 (c, conv2d): kernel: 3 values, expected 2");
  J("stride of one", HEAD_OK, TW_OK "," TB_OK, LC(", inputs: [0], stride: [1]") "," L_REST, "",
    "layer 0 (c, conv2d): stride: 1 values, expected 2");
  J("padding huge", HEAD_OK, TW_OK "," TB_OK,
    "{name: \"c\", op: Conv2d, inputs: [0], weight: 0, bias: 1, padding: [100000, 1]}," L_REST, "",
    "layer 0 (c, conv2d): padding");
  J("stride zero", HEAD_OK, TW_OK "," TB_OK, LC(", inputs: [0], stride: [0, 1]") "," L_REST, "",
    "layer 0 (c, conv2d): stride");
  J("groups zero", HEAD_OK, TW_OK "," TB_OK, LC(", inputs: [0], groups: 0") "," L_REST, "",
    "layer 0 (c, conv2d): groups");
  J("pool without kernel", HEAD_OK, TW_OK "," TB_OK,
    LC_OK ", {name: \"p\", op: MaxPool, inputs: [1]}, {name: \"g\", op: GlobalAvgPool, inputs: [2]},"
          "{name: \"f\", op: Flatten, inputs: [3]}", "",
    "layer 1 (p, maxpool): kernel: missing");
  J("batchnorm eps NaN", HEAD_OK,
    TW_OK "," TB_OK ", {name: \"b.w\", shape: [2], data: [1, 1]}, {name: \"b.b\", shape: [2], data: [0, 0]},"
                    "{name: \"b.m\", shape: [2], data: [0, 0]}, {name: \"b.v\", shape: [2], data: [1, -1]}",
    LC_OK ", {name: \"b\", op: BatchNorm, inputs: [1], weight: 2, bias: 3, running_mean: 4, running_var: 5},"
          "{name: \"g\", op: GlobalAvgPool, inputs: [2]}, {name: \"f\", op: Flatten, inputs: [3]}", "",
    "layer 1 (b, batchnorm): running_var", "negative");
  /* input spec */
  J("mean without std", "classes: 2, input: {channels: 1, height: 4, width: 4, mean: [0.5]}", TW_OK "," TB_OK,
    LC_OK "," L_REST, "", "input: std: missing");
  J("mean length", "classes: 2, input: {channels: 1, height: 4, width: 4, mean: [0.5, 0.5], std: [1]}",
    TW_OK "," TB_OK, LC_OK "," L_REST, "", "input: mean has 2 values, expected 1");
  J("std zero", "classes: 2, input: {channels: 1, height: 4, width: 4, mean: [0.5], std: [0]}", TW_OK "," TB_OK,
    LC_OK "," L_REST, "", "input: std[0] = 0");
  J("empty range", "classes: 2, input: {channels: 1, height: 4, width: 4, min: 1, max: 0}", TW_OK "," TB_OK,
    LC_OK "," L_REST, "", "input", "range");
  J("infinite range", "classes: 2, input: {channels: 1, height: 4, width: 4, max: inf}", TW_OK "," TB_OK,
    LC_OK "," L_REST, "", "input: min/max");
  /* versions */
  J("newer version", "format_version: 2, " HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST, "",
    "format_version 2 is newer than this build reads (1)");
  J("version zero", "format_version: 0, " HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST, "", "format_version 0");
  /* training state */
  J("momentum of an unknown tensor", HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST,
    ", train_state: {momenta: [{name: \"nope\", data: [1]}]}", "train_state: momentum nope: no tensor");
  J("momentum length", HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST,
    ", train_state: {momenta: [{name: \"c.bias\", data: [1, 2, 3]}]}",
    "train_state: momentum c.bias: data has 3 floats, expected 2");
  J("momentum twice", HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST,
    ", train_state: {momenta: [{name: \"c.bias\", data: [1, 2]}, {name: \"c.bias\", data: [1, 2]}]}",
    "train_state: momentum c.bias: given twice");
  J("momentum without data", HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST,
    ", train_state: {momenta: [{name: \"c.bias\"}]}", "train_state: momentum c.bias: data: missing");
  J("momentum NaN", HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST,
    ", train_state: {momenta: [{name: \"c.bias\", data: [1, nan]}]}", "train_state: momentum c.bias: data[1] is NaN");
  J("negative epoch", HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST, ", train_state: {epoch: -1}", "train_state: epoch");
  J("metric name with a newline", HEAD_OK, TW_OK "," TB_OK, LC_OK "," L_REST,
    ", provenance: {metrics: [{name: \"r\\na\", value: 1}]}", "provenance: metrics[0]: name");

  /* parser errors keep the file name and give the line */
  st = tk_model_from_json("{\n classes: 2,\n input: {channels: 1, height: 4, width: 4},\n layers: [{op: Sigmoid}]\n}",
                          "parse.json", &m);
  EXPECT_FAIL("unknown enum name", st, m, TK_ERR_FORMAT, "parse.json", "line 4");
}

/* ---- binary patches and files ---------------------------------------------------------- */

static unsigned char *fixture_buffer(size_t *n) {
  tk_model *m = fixture_model();
  void *buf = NULL;
  CHECK_MSG(m && tk_model_to_buffer(m, &buf, n) == TK_OK, "fixture: %s", tk_last_error());
  tk_model_free(m);
  return buf;
}

static tk_status load_copy(const unsigned char *buf, size_t n, const char *what, tk_model **m) {
  unsigned char *c = malloc(n ? n : 1); /* exactly sized: an over-read is an ASan error */
  memcpy(c, buf, n);
  *m = NULL;
  tk_status st = tk_model_from_buffer(c, n, what, m);
  free(c);
  return st;
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  CHECK_MSG(f != NULL, "cannot create %s", path);
  if (!f) return;
  if (n) CHECK(fwrite(data, 1, n, f) == n);
  fclose(f);
}

static void test_patches_and_files(const char *dir) {
  size_t n = 0;
  unsigned char *buf = fixture_buffer(&n);
  if (!buf) return;
  tk_model *m = NULL;
  CHECK_MSG(load_copy(buf, n, "good.tkt", &m) == TK_OK, "fixture buffer: %s", tk_last_error());
  tk_model_free(m);

  unsigned char *c = malloc(n);
  memcpy(c, buf, n);
  memcpy(c + 4, "TKT2", 4);
  tk_status st = load_copy(c, n, "id.tkt", &m);
  EXPECT_FAIL("wrong identifier", st, m, TK_ERR_FORMAT, "id.tkt",
              "identifier \"TKT2\"", "expected \"TKT1\"");
  memcpy(c + 4, "\x01\n\"z", 4);
  st = load_copy(c, n, "id.tkt", &m);
  EXPECT_FAIL("binary identifier", st, m, TK_ERR_FORMAT, "id.tkt", "\\x01\\x0a\\x22z");

  /* the marker float of fc.weight[0] -> NaN, then +inf */
  memcpy(c, buf, n);
  float magic = FIXTURE_MAGIC, nan_ = 0.0f / 0.0f, inf_ = 1.0f / 0.0f;
  size_t at = n;
  for (size_t i = 0; i + 4 <= n; i++)
    if (!memcmp(c + i, &magic, 4)) at = i;
  CHECK_MSG(at < n, "marker value not found in the file");
  if (at < n) {
    memcpy(c + at, &nan_, 4);
    st = load_copy(c, n, "nan.tkt", &m);
    EXPECT_FAIL("NaN in the file", st, m, TK_ERR_FORMAT, "nan.tkt",
                "tensor fc.weight: data[0] is NaN");
    memcpy(c + at, &inf_, 4);
    st = load_copy(c, n, "inf.tkt", &m);
    EXPECT_FAIL("inf in the file", st, m, TK_ERR_FORMAT, "inf.tkt",
                "tensor fc.weight: data[0] is infinite");
  }
  free(c);

  char path[600];
  snprintf(path, sizeof path, "%s/empty.tkt", dir);
  write_file(path, "", 0);
  st = tk_model_load(path, &m);
  EXPECT_FAIL("empty file", st, m, TK_ERR_FORMAT, path, "empty file");
  unlink(path);
  snprintf(path, sizeof path, "%s/short.tkt", dir);
  write_file(path, buf, 10);
  st = tk_model_load(path, &m);
  EXPECT_FAIL("short file", st, m, TK_ERR_FORMAT, path, "too short");
  unlink(path);
  snprintf(path, sizeof path, "%s/arch.json", dir);
  write_file(path, "  {\"classes\": 2}", 16);
  st = tk_model_load(path, &m);
  EXPECT_FAIL("JSON as a model", st, m, TK_ERR_FORMAT, path, "JSON");
  unlink(path);
  snprintf(path, sizeof path, "%s/truncated.tkt", dir);
  write_file(path, buf, n / 2);
  st = tk_model_load(path, &m);
  EXPECT_FAIL("truncated file", st, m, TK_ERR_FORMAT, path, "damaged file", "does not verify");
  unlink(path);
  snprintf(path, sizeof path, "%s/sub", dir);
  mkdir(path, 0755);
  st = tk_model_load(path, &m);
  EXPECT_FAIL("a directory", st, m, TK_ERR_IO, path, "not a regular file");
  rmdir(path);
  snprintf(path, sizeof path, "%s/missing.tkt", dir);
  st = tk_model_load(path, &m);
  EXPECT_FAIL("missing file", st, m, TK_ERR_IO, path, "cannot open");
  /* a good file through the file path still loads */
  snprintf(path, sizeof path, "%s/good.tkt", dir);
  write_file(path, buf, n);
  CHECK_MSG(tk_model_load(path, &m) == TK_OK, "%s", tk_last_error());
  tk_model_free(m);
  unlink(path);
  free(buf);
}

/* ---- truncation and corruption --------------------------------------------------------- */

static void test_truncation(void) {
  size_t n = 0;
  unsigned char *buf = fixture_buffer(&n);
  if (!buf) return;
  int located = 0;
  for (size_t k = 0; k < n; k++) {
    tk_model *m = NULL;
    tk_status st = load_copy(buf, k, "trunc.tkt", &m);
    if (st == TK_OK) {
      CHECK_MSG(false, "truncated to %zu of %zu bytes: loaded", k, n);
      tk_model_free(m);
      continue;
    }
    CHECK_MSG(st == TK_ERR_FORMAT, "truncated to %zu: status %s", k, tk_status_name(st));
    CHECK_MSG(one_line_from(tk_last_error(), "trunc.tkt"), "truncated to %zu: %s", k, tk_last_error());
    located += strstr(tk_last_error(), "does not verify") != NULL;
  }
  printf("truncation: %zu prefixes of %zu bytes all refused (%d with the damaged part named)\n", n, n, located);
  free(buf);
}

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void test_corruption(void) {
  size_t n = 0;
  unsigned char *buf = fixture_buffer(&n);
  if (!buf) return;
  const char *heavy = getenv("TICKET_HEAVY");
  int iters = heavy && !strcmp(heavy, "1") ? 1000000 : 100000;
  uint64_t s = 0x243F6A8885A308D3ull;
  int loaded = 0, refused = 0;
  unsigned char *c = malloc(n);
  for (int it = 0; it < iters; it++) {
    memcpy(c, buf, n);
    int mode = (int)(rng_next(&s) % 3);
    if (mode == 0) { /* one byte */
      c[rng_next(&s) % n] ^= (unsigned char)(1 + rng_next(&s) % 255);
    } else if (mode == 1) { /* several bytes */
      int k = 2 + (int)(rng_next(&s) % 7);
      for (int j = 0; j < k; j++) c[rng_next(&s) % n] ^= (unsigned char)(1 + rng_next(&s) % 255);
    } else { /* an aligned word (offsets, lengths, vtable entries) set to an awkward value */
      static const uint32_t vals[] = {0, 1, 2, 3, 4, 7, 8, 0x7fffffff, 0x80000000u, 0xffffffffu, 0xfffffffcu, 0x10000};
      size_t w = (rng_next(&s) % (n / 4)) * 4;
      uint32_t v = rng_next(&s) % 2 ? vals[rng_next(&s) % (sizeof vals / sizeof *vals)] : (uint32_t)(rng_next(&s) % (n + 16));
      memcpy(c + w, &v, 4);
    }
    tk_model *m = NULL;
    tk_status st = load_copy(c, n, "flip.tkt", &m);
    if (st == TK_OK) {
      loaded++;
      /* a model that loads is a valid model: it saves and loads again */
      if (loaded % 16 == 0) {
        void *b2 = NULL;
        size_t n2 = 0;
        tk_model *m2 = NULL;
        CHECK_MSG(tk_model_to_buffer(m, &b2, &n2) == TK_OK && tk_model_from_buffer(b2, n2, "again", &m2) == TK_OK,
                  "iteration %d: a loaded model does not save and load again: %s", it, tk_last_error());
        tk_model_free(m2);
        free(b2);
      }
      tk_model_free(m);
    } else {
      refused++;
      CHECK_MSG(m == NULL, "iteration %d: model returned with an error", it);
      CHECK_MSG(st == TK_ERR_FORMAT, "iteration %d: status %s: %s", it, tk_status_name(st), tk_last_error());
      CHECK_MSG(one_line_from(tk_last_error(), "flip.tkt"), "iteration %d: %s", it, tk_last_error());
    }
  }
  printf("corruption: %d corrupted copies, %d loaded, %d refused cleanly\n", iters, loaded, refused);
  CHECK_MSG(refused > iters / 20, "too few corruptions detected (%d of %d)", refused, iters);
  free(c);
  free(buf);
}

int main(void) {
  char dir[] = "/tmp/tk_test_badfiles_XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_json_cases();
  test_patches_and_files(dir);
  test_truncation();
  test_corruption();
  rmdir(dir);
  return check_done("test_badfiles");
}
