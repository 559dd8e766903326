/* test_npy.c -- .npy reading and writing (runtime/npy.c).
 *
 *  1. float32 round trips of several shapes (0-d, 1-d, 4-d, a zero-size dimension), with the
 *     data aligned to 64 bytes as numpy writes it.
 *  2. Hand-built files of every accepted dtype (float64, int8..int64, uint8..uint64, bool,
 *     big-endian, format version 2.0), read with the expected values.
 *  3. Bad files: each is refused with a status other than TK_OK and a one-line message
 *     naming the file and the field (magic, version, header, dtype, fortran_order, shape,
 *     data), never a crash.
 *  4. 3000 randomly mutated or truncated files: each is read consistently or refused with a
 *     message naming the file.
 *  5. When Debian's python3 with numpy is there: numpy reads what we write and we read what
 *     numpy writes (np.save of float32/float64/int64/uint8 arrays, a Fortran-ordered array).
 */
#include "check.h"

#include "runtime/npy.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

static char g_dir[256];

static const char *path_of(const char *name) {
  static char buf[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
  return buf[k];
}

/* Writes a .npy file with the given header dict (padded as numpy does) and raw data. */
static void write_raw(const char *name, int major, const char *dict, const void *data, size_t n) {
  FILE *f = fopen(path_of(name), "wb");
  TK_ASSERT(f);
  size_t pre = major == 1 ? 10 : 12, hlen = strlen(dict) + 1;
  hlen += (64 - (pre + hlen) % 64) % 64;
  unsigned char hdr[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', (unsigned char)major, 0};
  if (major == 1) {
    hdr[8] = (unsigned char)hlen, hdr[9] = (unsigned char)(hlen >> 8);
  } else {
    for (int b = 0; b < 4; b++) hdr[8 + b] = (unsigned char)(hlen >> (8 * b));
  }
  fwrite(hdr, 1, pre, f);
  fputs(dict, f);
  for (size_t k = strlen(dict) + 1; k < hlen; k++) fputc(' ', f);
  fputc('\n', f);
  if (n) fwrite(data, 1, n, f);
  fclose(f);
}

static void write_bytes(const char *name, const void *data, size_t n) {
  FILE *f = fopen(path_of(name), "wb");
  TK_ASSERT(f);
  if (n) fwrite(data, 1, n, f);
  fclose(f);
}

static size_t file_size(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fclose(f);
  return (size_t)n;
}

/* ---- 1. round trips ---------------------------------------------------------------------- */

static void round_trips(void) {
  struct { int ndim; int64_t shape[4]; } cases[] = {{0, {0}}, {1, {7}}, {2, {3, 5}}, {4, {2, 3, 4, 5}}, {2, {0, 3}}};
  for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
    size_t numel = 1;
    for (int d = 0; d < cases[ci].ndim; d++) numel *= (size_t)cases[ci].shape[d];
    float *a = malloc((numel ? numel : 1) * sizeof(float));
    for (size_t i = 0; i < numel; i++) a[i] = (float)(i * 0.37 - 3.0) * (i % 3 ? 1.0f : -1.0f);
    if (numel > 2) a[1] = -0.0f, a[2] = INFINITY;
    const char *p = path_of("rt.npy");
    CHECK(tk_npy_write_f32(p, cases[ci].ndim, cases[ci].shape, a) == TK_OK);
    size_t sz = file_size(p);
    CHECK_MSG(sz >= numel * 4 && (sz - numel * 4) % 64 == 0, "case %zu: data does not start at a multiple of 64 "
              "(file %zu bytes, data %zu)", ci, sz, numel * 4);
    int ndim = -1;
    int64_t shape[8];
    float *b = NULL;
    tk_status st = tk_npy_read_f32(p, &ndim, shape, &b);
    CHECK_MSG(st == TK_OK, "case %zu: %s", ci, tk_last_error());
    if (st == TK_OK) {
      CHECK(ndim == cases[ci].ndim);
      for (int d = 0; d < ndim; d++) CHECK(shape[d] == cases[ci].shape[d]);
      CHECK_MSG(numel == 0 || memcmp(a, b, numel * sizeof(float)) == 0, "case %zu: data differ", ci);
    }
    free(a);
    free(b);
  }
}

/* ---- 2. accepted dtypes ------------------------------------------------------------------- */

static void dtypes(void) {
  int ndim;
  int64_t shape[8];
  float *f = NULL;
  int *iv = NULL;
  {
    double d[3] = {1.5, -2.25, 1e-3};
    write_raw("f8.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", d, sizeof d);
    CHECK(tk_npy_read_f32(path_of("f8.npy"), &ndim, shape, &f) == TK_OK && ndim == 1 && shape[0] == 3);
    float want[3] = {1.5f, -2.25f, 1e-3f};
    if (f) check_close("float64 converted", f, want, 3, 0, 0);
    free(f), f = NULL;
  }
  {
    /* big-endian float32 1.0, -2.0 */
    unsigned char be[8] = {0x3f, 0x80, 0, 0, 0xc0, 0, 0, 0};
    write_raw("be.npy", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 2), }", be, sizeof be);
    CHECK(tk_npy_read_f32(path_of("be.npy"), &ndim, shape, &f) == TK_OK && ndim == 2 && shape[1] == 2);
    float want[2] = {1.0f, -2.0f};
    if (f) check_close("big-endian float32", f, want, 2, 0, 0);
    free(f), f = NULL;
  }
  {
    float v[2] = {4.0f, 5.0f};
    write_raw("v2.npy", 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", v, sizeof v);
    CHECK(tk_npy_read_f32(path_of("v2.npy"), &ndim, shape, &f) == TK_OK && ndim == 1);
    if (f) check_close("format version 2.0", f, v, 2, 0, 0);
    free(f), f = NULL;
  }
  struct { const char *descr; int size; int64_t vals[3]; } ints[] = {
      {"|i1", 1, {-128, 5, 127}},       {"|u1", 1, {0, 200, 255}},          {"<i2", 2, {-30000, 7, 30000}},
      {"<u2", 2, {0, 40000, 65535}},     {"<i4", 4, {-2147483647 - 1, 0, 2147483647}},
      {"<i8", 8, {-5, 9, 2147483647}},  {"<u8", 8, {0, 1, 123456789}},       {"|b1", 1, {1, 0, 1}},
      {">i4", 4, {-7, 65536, 3}},
  };
  for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
    unsigned char raw[24];
    for (int e = 0; e < 3; e++) {
      uint64_t u = (uint64_t)ints[k].vals[e];
      for (int b = 0; b < ints[k].size; b++) {
        int shift = ints[k].descr[0] == '>' ? 8 * (ints[k].size - 1 - b) : 8 * b;
        raw[e * ints[k].size + b] = (unsigned char)(u >> shift);
      }
    }
    char dict[128];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (3,), }", ints[k].descr);
    write_raw("int.npy", 1, dict, raw, (size_t)(3 * ints[k].size));
    tk_status st = tk_npy_read_int(path_of("int.npy"), &ndim, shape, &iv);
    CHECK_MSG(st == TK_OK, "%s: %s", ints[k].descr, tk_last_error());
    for (int e = 0; st == TK_OK && e < 3; e++)
      CHECK_MSG(iv[e] == ints[k].vals[e], "%s element %d: got %d expected %lld", ints[k].descr, e, iv[e],
                (long long)ints[k].vals[e]);
    free(iv), iv = NULL;
  }
}

/* ---- 3. bad files -------------------------------------------------------------------------- */

/* Expects the read to fail with a message that names the file and contains `field`. */
static void expect_bad(const char *name, const char *field, int as_int) {
  int ndim;
  int64_t shape[8];
  float *f = NULL;
  int *iv = NULL;
  const char *p = path_of(name);
  tk_status st = as_int ? tk_npy_read_int(p, &ndim, shape, &iv) : tk_npy_read_f32(p, &ndim, shape, &f);
  const char *msg = tk_last_error();
  CHECK_MSG(st != TK_OK, "%s: accepted", name);
  CHECK_MSG(st == TK_OK || (strstr(msg, p) && strstr(msg, field) && !strchr(msg, '\n')),
            "%s: message '%s' should name the file and '%s' on one line", name, msg, field);
  CHECK(f == NULL && iv == NULL);
  free(f);
  free(iv);
}

static void bad_files(void) {
  float d[6] = {1, 2, 3, 4, 5, 6};
  write_bytes("empty.npy", "", 0);
  expect_bad("empty.npy", "magic", 0);
  write_bytes("text.npy", "hello, this is not numpy at all", 31);
  expect_bad("text.npy", "magic", 0);
  /* header length says 118 bytes, the file ends after 20 */
  unsigned char trunc[30] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 118, 0, '{', '\'', 'd', 'e', 's', 'c', 'r'};
  write_bytes("trunc_header.npy", trunc, 20);
  expect_bad("trunc_header.npy", "header", 0);
  write_raw("v9.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", d, 8);
  {
    FILE *f = fopen(path_of("v9.npy"), "r+b");
    fseek(f, 6, SEEK_SET);
    fputc(9, f);
    fclose(f);
  }
  expect_bad("v9.npy", "version", 0);
  write_raw("ints_as_float.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", d, 8);
  expect_bad("ints_as_float.npy", "dtype", 0);
  write_raw("float_as_int.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", d, 8);
  expect_bad("float_as_int.npy", "dtype", 1);
  write_raw("complex.npy", 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", d, 8);
  expect_bad("complex.npy", "dtype", 0);
  write_raw("f2.npy", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", d, 4);
  expect_bad("f2.npy", "dtype", 0);
  write_raw("object.npy", 1, "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", d, 16);
  expect_bad("object.npy", "dtype", 0);
  write_raw("fortran.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", d, 24);
  expect_bad("fortran.npy", "fortran_order", 0);
  write_raw("short_data.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", d, 20);
  expect_bad("short_data.npy", "truncated", 0);
  write_raw("long_data.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", d, 24);
  expect_bad("long_data.npy", "data", 0);
  write_raw("no_descr.npy", 1, "{'fortran_order': False, 'shape': (2,), }", d, 8);
  expect_bad("no_descr.npy", "descr", 0);
  write_raw("no_shape.npy", 1, "{'descr': '<f4', 'fortran_order': False, }", d, 8);
  expect_bad("no_shape.npy", "shape", 0);
  write_raw("bad_shape.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", d, 8);
  expect_bad("bad_shape.npy", "shape", 0);
  write_raw("open_shape.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3", d, 0);
  expect_bad("open_shape.npy", "shape", 0);
  write_raw("nine_dims.npy", 1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }", d, 4);
  expect_bad("nine_dims.npy", "shape", 0);
  write_raw("huge_shape.npy", 1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", d, 8);
  expect_bad("huge_shape.npy", "shape", 0);
  write_raw("huge_dim.npy", 1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", d, 8);
  expect_bad("huge_dim.npy", "shape", 0);
  write_raw("not_dict.npy", 1, "['descr', '<f4']", d, 8);
  expect_bad("not_dict.npy", "header", 0);
  int64_t big[2] = {5, (int64_t)1 << 40};
  write_raw("int_range.npy", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", big, sizeof big);
  expect_bad("int_range.npy", "does not fit", 1);
  expect_bad("does_not_exist.npy", "cannot open", 0);
  /* a directory is not a file */
  expect_bad("", "not a regular file", 0);
  /* writing into a missing directory fails cleanly */
  int64_t s1 = 1;
  CHECK(tk_npy_write_f32(path_of("missing/dir/x.npy"), 1, &s1, d) == TK_ERR_IO);
}

/* ---- 4. mutated files ------------------------------------------------------------------- */

/* Random byte edits and truncations of a valid file: every read either succeeds with a shape
 * whose size matches the file, or fails with a message naming the file.  Never a crash (run
 * under the sanitizers with TICKET_SANITIZE). */
static void mutations(void) {
  int64_t shape[2] = {3, 4};
  float a[12];
  for (int i = 0; i < 12; i++) a[i] = (float)i;
  const char *src = path_of("valid.npy"), *dst = path_of("mutant.npy");
  CHECK(tk_npy_write_f32(src, 2, shape, a) == TK_OK);
  unsigned char orig[256];
  FILE *f = fopen(src, "rb");
  size_t n = fread(orig, 1, sizeof orig, f);
  fclose(f);
  tk_rng r;
  tk_rng_seed(&r, 7);
  int accepted = 0, refused = 0;
  for (int it = 0; it < 3000; it++) {
    unsigned char buf[256];
    memcpy(buf, orig, n);
    size_t len = n;
    int edits = 1 + (int)tk_rng_below(&r, 4);
    for (int e = 0; e < edits; e++) {
      /* mostly the header, where the parsing is */
      size_t pos = tk_rng_below(&r, 4) ? (size_t)tk_rng_below(&r, 128) : (size_t)tk_rng_below(&r, n);
      static const char interesting[] = "()',: 0123456789TF<>|fiucb{}\n\x00";
      buf[pos] = tk_rng_below(&r, 2) ? (unsigned char)interesting[tk_rng_below(&r, sizeof interesting - 1)]
                                      : (unsigned char)tk_rng_below(&r, 256);
    }
    if (tk_rng_below(&r, 5) == 0) len = (size_t)tk_rng_below(&r, n + 1);
    unlink(dst); /* a fresh file: ext4 flushes files truncated over old data on close */
    f = fopen(dst, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    int ndim = -1;
    int64_t s[8];
    float *d = NULL;
    tk_status st = tk_npy_read_f32(dst, &ndim, s, &d);
    if (st == TK_OK) {
      accepted++;
      int64_t numel = 1;
      for (int k = 0; k < ndim; k++) numel *= s[k];
      CHECK_MSG(ndim >= 0 && ndim <= 8 && d && numel * 4 <= (int64_t)len, "mutant %d: accepted an inconsistent shape",
                it);
    } else {
      refused++;
      CHECK_MSG(strstr(tk_last_error(), dst) != NULL, "mutant %d: message '%s' does not name the file", it,
                tk_last_error());
      CHECK(d == NULL);
    }
    free(d);
  }
  printf("mutated files: %d accepted, %d refused\n", accepted, refused);
  CHECK(accepted > 0 && refused > 0);
}

/* ---- 5. numpy -------------------------------------------------------------------------------- */

static void numpy_cross_check(void) {
  if (system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
    printf("python3 with numpy not found: numpy cross-check not run\n");
    return;
  }
  /* ours -> numpy */
  int64_t shape[3] = {2, 3, 4};
  float a[24];
  for (int i = 0; i < 24; i++) a[i] = (float)i / 8.0f - 1.0f;
  CHECK(tk_npy_write_f32(path_of("ours.npy"), 3, shape, a) == TK_OK);
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c \"\nimport numpy as np, sys\nd = sys.argv[1]\n"
           "a = np.load(d + '/ours.npy')\n"
           "assert a.dtype == np.float32 and a.shape == (2, 3, 4), (a.dtype, a.shape)\n"
           "assert (a.ravel() == np.arange(24, dtype=np.float32) / 8 - 1).all()\n"
           "np.save(d + '/np_f32.npy', (np.arange(60, dtype=np.float32) * 0.5).reshape(3, 4, 5))\n"
           "np.save(d + '/np_f64.npy', np.linspace(-1, 1, 7))\n"
           "np.save(d + '/np_i64.npy', np.array([3, -1, 9], dtype=np.int64))\n"
           "np.save(d + '/np_u8.npy', np.array([[0, 255], [7, 8]], dtype=np.uint8))\n"
           "np.save(d + '/np_fortran.npy', np.asfortranarray(np.ones((2, 3), np.float32)))\n"
           "np.save(d + '/np_scalar.npy', np.float32(2.5))\n"
           "\" '%s'",
           g_dir);
  int rc = system(cmd);
  CHECK_MSG(rc == 0, "numpy could not read our file or write its own (exit %d)", rc);
  if (rc != 0) return;
  int ndim;
  int64_t s[8];
  float *f = NULL;
  int *iv = NULL;
  CHECK(tk_npy_read_f32(path_of("np_f32.npy"), &ndim, s, &f) == TK_OK && ndim == 3 && s[0] == 3 && s[2] == 5);
  for (int i = 0; f && i < 60; i++) CHECK_MSG(f[i] == i * 0.5f, "np_f32[%d] = %g", i, f[i]);
  free(f), f = NULL;
  CHECK(tk_npy_read_f32(path_of("np_f64.npy"), &ndim, s, &f) == TK_OK && ndim == 1 && s[0] == 7);
  for (int i = 0; f && i < 7; i++) CHECK_MSG(f[i] == (float)(-1.0 + i / 3.0), "np_f64[%d] = %g", i, f[i]);
  free(f), f = NULL;
  CHECK(tk_npy_read_int(path_of("np_i64.npy"), &ndim, s, &iv) == TK_OK && ndim == 1 && s[0] == 3);
  if (iv) CHECK(iv[0] == 3 && iv[1] == -1 && iv[2] == 9);
  free(iv), iv = NULL;
  CHECK(tk_npy_read_int(path_of("np_u8.npy"), &ndim, s, &iv) == TK_OK && ndim == 2);
  if (iv) CHECK(iv[0] == 0 && iv[1] == 255 && iv[2] == 7 && iv[3] == 8);
  free(iv), iv = NULL;
  CHECK(tk_npy_read_f32(path_of("np_scalar.npy"), &ndim, s, &f) == TK_OK && ndim == 0);
  if (f) CHECK(f[0] == 2.5f);
  free(f), f = NULL;
  expect_bad("np_fortran.npy", "fortran_order", 0);
}

int main(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/ticket_test_npy_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) check_skip("cannot create a temporary directory");
  round_trips();
  dtypes();
  bad_files();
  mutations();
  numpy_cross_check();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  return check_done("test_npy");
}
