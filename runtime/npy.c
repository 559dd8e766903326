/* npy.c -- reading and writing NumPy .npy files (see npy.h).
 *
 * Format (numpy.lib.format): the magic "\x93NUMPY", a major and a minor version byte, the
 * header length (uint16 little-endian in version 1, uint32 in versions 2 and 3), then an
 * ASCII Python dict literal such as
 *     {'descr': '<f4', 'fortran_order': False, 'shape': (8, 3, 32, 32), }
 * padded with spaces and a newline, then the raw array data.
 *
 * Reading trusts nothing: every field is checked, the data size must equal the product of the
 * shape times the item size, and every error is one line naming the file and the field.
 * Big-endian arrays ('>') are byte-swapped; Fortran-ordered arrays are refused.
 */
#include "npy.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c assumes a little-endian host"
#endif

#define NPY_MAX_FILE ((size_t)1 << 36) /* 64 GiB: larger is surely a mistake */
#define NPY_MAX_DIMS 8

typedef enum { NPY_FLOAT, NPY_INT, NPY_UINT, NPY_BOOL } npy_kind;

typedef struct {
  npy_kind kind;
  int itemsize;  /* bytes */
  int swap;      /* stored big-endian */
  char descr[16];
  int ndim;
  int64_t shape[NPY_MAX_DIMS];
  int64_t numel;
  const unsigned char *data; /* into the file buffer */
} npy_header;

/* ---- header parsing --------------------------------------------------------------------- */

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* Finds the value that follows the dict key 'key' (or "key") and its colon. */
static const char *find_key(const char *h, const char *end, const char *key) {
  size_t kl = strlen(key);
  for (const char *p = h; p + kl + 2 <= end; p++) {
    if ((*p == '\'' || *p == '"') && p[kl + 1] == *p && memcmp(p + 1, key, kl) == 0) {
      const char *q = skip_ws(p + kl + 2, end);
      if (q < end && *q == ':') return skip_ws(q + 1, end);
      return NULL;
    }
  }
  return NULL;
}

static tk_status parse_descr(const char *path, const char *v, const char *end, npy_header *hd) {
  if (!v || v >= end || (*v != '\'' && *v != '"'))
    return tk_fail(TK_ERR_FORMAT, "%s: header: 'descr' is missing or not a string", path);
  char q = *v++;
  const char *s = v;
  while (v < end && *v != q) v++;
  if (v >= end) return tk_fail(TK_ERR_FORMAT, "%s: header: 'descr' string is not terminated", path);
  size_t len = (size_t)(v - s);
  if (len < 2 || len >= sizeof hd->descr)
    return tk_fail(TK_ERR_FORMAT, "%s: header: 'descr' %.*s is not a simple dtype", path, (int)(len < 40 ? len : 40), s);
  memcpy(hd->descr, s, len);
  hd->descr[len] = 0;
  char order = hd->descr[0];
  const char *t = hd->descr + 1;
  if (order != '<' && order != '>' && order != '|' && order != '=')
    return tk_fail(TK_ERR_FORMAT, "%s: header: 'descr' %s has no byte-order character", path, hd->descr);
  char *endn;
  long size = strtol(t + 1, &endn, 10);
  if (*endn || size < 1 || size > 8 || (size & (size - 1)))
    return tk_fail(TK_ERR_FORMAT, "%s: header: dtype %s is not supported", path, hd->descr);
  switch (t[0]) {
  case 'f': hd->kind = NPY_FLOAT; break;
  case 'i': hd->kind = NPY_INT; break;
  case 'u': hd->kind = NPY_UINT; break;
  case 'b': hd->kind = NPY_BOOL; break;
  default: return tk_fail(TK_ERR_FORMAT, "%s: header: dtype %s is not supported", path, hd->descr);
  }
  if (hd->kind == NPY_FLOAT && size != 4 && size != 8)
    return tk_fail(TK_ERR_FORMAT, "%s: header: dtype %s is not supported (float32 or float64)", path, hd->descr);
  if (hd->kind == NPY_BOOL && size != 1)
    return tk_fail(TK_ERR_FORMAT, "%s: header: dtype %s is not supported", path, hd->descr);
  hd->itemsize = (int)size;
  hd->swap = order == '>' && size > 1;
  return TK_OK;
}

static tk_status parse_shape(const char *path, const char *v, const char *end, npy_header *hd) {
  if (!v || v >= end || *v != '(') return tk_fail(TK_ERR_FORMAT, "%s: header: 'shape' is missing or not a tuple", path);
  v++;
  hd->ndim = 0;
  hd->numel = 1;
  for (;;) {
    v = skip_ws(v, end);
    if (v >= end) return tk_fail(TK_ERR_FORMAT, "%s: header: 'shape' tuple is not terminated", path);
    if (*v == ')') break;
    if (!isdigit((unsigned char)*v)) return tk_fail(TK_ERR_FORMAT, "%s: header: 'shape' has a non-integer entry", path);
    int64_t d = 0;
    while (v < end && isdigit((unsigned char)*v)) {
      if (d > (INT64_MAX - 9) / 10) return tk_fail(TK_ERR_FORMAT, "%s: header: 'shape' entry is too large", path);
      d = d * 10 + (*v++ - '0');
    }
    while (v < end && (*v == 'L' || *v == 'l')) v++; /* Python 2 longs */
    if (hd->ndim == NPY_MAX_DIMS)
      return tk_fail(TK_ERR_FORMAT, "%s: header: 'shape' has more than %d dimensions", path, NPY_MAX_DIMS);
    hd->shape[hd->ndim++] = d;
    if (d && hd->numel > INT64_MAX / d) return tk_fail(TK_ERR_FORMAT, "%s: header: 'shape' is too large", path);
    hd->numel *= d;
    v = skip_ws(v, end);
    if (v < end && *v == ',') v++;
    else if (v < end && *v != ')') return tk_fail(TK_ERR_FORMAT, "%s: header: 'shape' is malformed", path);
  }
  return TK_OK;
}

/* Parses the whole file buffer into hd (data points into buf). */
static tk_status parse(const char *path, const unsigned char *buf, size_t n, npy_header *hd) {
  memset(hd, 0, sizeof *hd);
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (n < 10 || memcmp(buf, magic, 6) != 0)
    return tk_fail(TK_ERR_FORMAT, "%s: magic: not a .npy file (%zu bytes, no \\x93NUMPY signature)", path, n);
  int major = buf[6];
  size_t hlen, hstart;
  if (major == 1) {
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) return tk_fail(TK_ERR_FORMAT, "%s: header: truncated (file is %zu bytes)", path, n);
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
    hstart = 12;
  } else {
    return tk_fail(TK_ERR_FORMAT, "%s: version: .npy format version %d.%d is not supported", path, major, buf[7]);
  }
  if (hlen > n - hstart)
    return tk_fail(TK_ERR_FORMAT, "%s: header: truncated (header length %zu, only %zu bytes follow)", path, hlen,
                   n - hstart);
  const char *h = (const char *)buf + hstart, *end = h + hlen;
  const char *p = skip_ws(h, end);
  if (p >= end || *p != '{') return tk_fail(TK_ERR_FORMAT, "%s: header: not a dict literal", path);
  for (const char *c = h; c < end; c++)
    if (*c == 0) return tk_fail(TK_ERR_FORMAT, "%s: header: contains a NUL byte", path);
  tk_status st = parse_descr(path, find_key(h, end, "descr"), end, hd);
  if (st != TK_OK) return st;
  const char *fo = find_key(h, end, "fortran_order");
  if (!fo) return tk_fail(TK_ERR_FORMAT, "%s: header: 'fortran_order' is missing", path);
  if ((size_t)(end - fo) >= 4 && memcmp(fo, "True", 4) == 0)
    return tk_fail(TK_ERR_FORMAT, "%s: fortran_order: Fortran-ordered arrays are not supported "
                                  "(save a C-ordered array, e.g. np.ascontiguousarray)", path);
  if ((size_t)(end - fo) < 5 || memcmp(fo, "False", 5) != 0)
    return tk_fail(TK_ERR_FORMAT, "%s: header: 'fortran_order' is neither True nor False", path);
  if ((st = parse_shape(path, find_key(h, end, "shape"), end, hd)) != TK_OK) return st;
  size_t have = n - hstart - hlen;
  if (hd->numel > (int64_t)(NPY_MAX_FILE / (size_t)hd->itemsize))
    return tk_fail(TK_ERR_FORMAT, "%s: shape: %lld elements is too many", path, (long long)hd->numel);
  size_t want = (size_t)hd->numel * (size_t)hd->itemsize;
  if (have < want)
    return tk_fail(TK_ERR_FORMAT, "%s: data: truncated (%zu bytes, the shape and dtype %s need %zu)", path, have,
                   hd->descr, want);
  if (have > want)
    return tk_fail(TK_ERR_FORMAT, "%s: data: %zu bytes, the shape and dtype %s need %zu (trailing garbage)", path,
                   have, hd->descr, want);
  hd->data = buf + hstart + hlen;
  return TK_OK;
}

/* Element i as raw little-endian bytes in out[0..itemsize), itemsize <= 8 (parse() checks;
 * the bound is restated so that the compiler sees it too). */
static void load_elem(const npy_header *hd, int64_t i, unsigned char out[8]) {
  const int n = hd->itemsize < 8 ? hd->itemsize : 8;
  const unsigned char *s = hd->data + (size_t)i * (size_t)hd->itemsize;
  for (int b = 0; b < n; b++) out[b] = hd->swap ? s[n - 1 - b] : s[b];
}

static tk_status read_file_header(const char *path, void **buf, npy_header *hd) {
  size_t n;
  tk_status st = tk_read_file(path, NPY_MAX_FILE, buf, &n);
  if (st != TK_OK) return st;
  if ((st = parse(path, *buf, n, hd)) != TK_OK) {
    free(*buf);
    *buf = NULL;
  }
  return st;
}

static void copy_shape(const npy_header *hd, int *ndim, int64_t shape[8]) {
  *ndim = hd->ndim;
  for (int d = 0; d < 8; d++) shape[d] = d < hd->ndim ? hd->shape[d] : 0;
}

/* ---- public functions ------------------------------------------------------------------- */

tk_status tk_npy_read_f32(const char *path, int *ndim, int64_t shape[8], float **data) {
  *data = NULL;
  *ndim = 0;
  void *buf;
  npy_header hd;
  tk_status st = read_file_header(path, &buf, &hd);
  if (st != TK_OK) return st;
  if (hd.kind != NPY_FLOAT) {
    free(buf);
    return tk_fail(TK_ERR_FORMAT, "%s: dtype: %s, expected float32 ('<f4') or float64 ('<f8')", path, hd.descr);
  }
  float *out = tk_malloc((size_t)(hd.numel ? hd.numel : 1) * sizeof(float));
  if (!out) {
    free(buf);
    return TK_ERR_NOMEM;
  }
  for (int64_t i = 0; i < hd.numel; i++) {
    unsigned char b[8] = {0};
    load_elem(&hd, i, b);
    if (hd.itemsize == 4) {
      memcpy(&out[i], b, 4);
    } else {
      double v;
      memcpy(&v, b, 8);
      out[i] = (float)v;
    }
  }
  free(buf);
  copy_shape(&hd, ndim, shape);
  *data = out;
  return TK_OK;
}

tk_status tk_npy_read_int(const char *path, int *ndim, int64_t shape[8], int **data) {
  *data = NULL;
  *ndim = 0;
  void *buf;
  npy_header hd;
  tk_status st = read_file_header(path, &buf, &hd);
  if (st != TK_OK) return st;
  if (hd.kind == NPY_FLOAT) {
    free(buf);
    return tk_fail(TK_ERR_FORMAT, "%s: dtype: %s, expected an integer array (int8..int64, uint8..uint64)", path,
                   hd.descr);
  }
  int *out = tk_malloc((size_t)(hd.numel ? hd.numel : 1) * sizeof(int));
  if (!out) {
    free(buf);
    return TK_ERR_NOMEM;
  }
  for (int64_t i = 0; i < hd.numel; i++) {
    unsigned char b[8] = {0};
    load_elem(&hd, i, b);
    uint64_t u = 0;
    for (int k = hd.itemsize - 1; k >= 0; k--) u = u << 8 | b[k];
    int64_t v;
    if (hd.kind == NPY_INT && hd.itemsize < 8 && (u >> (8 * hd.itemsize - 1)) & 1)
      v = (int64_t)(u | ~(((uint64_t)1 << (8 * hd.itemsize)) - 1)); /* sign-extend */
    else if (hd.kind == NPY_UINT && hd.itemsize == 8 && u > (uint64_t)INT64_MAX)
      v = INT64_MAX;
    else
      v = (int64_t)u;
    if (v < INT_MIN || v > INT_MAX) {
      free(buf);
      free(out);
      return tk_fail(TK_ERR_FORMAT, "%s: data: element %lld = %lld does not fit in an int", path, (long long)i,
                     (long long)v);
    }
    out[i] = (int)v;
  }
  free(buf);
  copy_shape(&hd, ndim, shape);
  *data = out;
  return TK_OK;
}

tk_status tk_npy_write_f32(const char *path, int ndim, const int64_t *shape, const float *data) {
  if (ndim < 0 || ndim > NPY_MAX_DIMS) return tk_fail(TK_ERR_ARG, "%s: %d dimensions (0 to 8 allowed)", path, ndim);
  char dict[512];
  int len = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  int64_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0) return tk_fail(TK_ERR_ARG, "%s: shape[%d] = %lld is negative", path, d, (long long)shape[d]);
    numel *= shape[d];
    len += snprintf(dict + len, sizeof dict - (size_t)len, "%lld,%s", (long long)shape[d],
                    d + 1 < ndim ? " " : "");
  }
  if (ndim > 1) len--; /* (a, b) rather than (a, b,); a 1-tuple keeps its comma: (a,) */
  len += snprintf(dict + len, sizeof dict - (size_t)len, "), }");
  /* pad with spaces so that the data starts at a multiple of 64 bytes; end with '\n' */
  size_t hlen = (size_t)len + 1;
  size_t total_header = 10 + hlen;
  size_t pad = (64 - total_header % 64) % 64;
  hlen += pad;
  size_t nbytes = 10 + hlen + (size_t)numel * sizeof(float);
  unsigned char *out = tk_malloc(nbytes);
  if (!out) return TK_ERR_NOMEM;
  memcpy(out, "\x93NUMPY\x01\x00", 8);
  out[8] = (unsigned char)(hlen & 0xff);
  out[9] = (unsigned char)(hlen >> 8);
  memcpy(out + 10, dict, (size_t)len);
  memset(out + 10 + len, ' ', pad);
  out[10 + hlen - 1] = '\n';
  if (numel) memcpy(out + 10 + hlen, data, (size_t)numel * sizeof(float)); /* x86/aarch64: little-endian */
  tk_status st = tk_write_file_atomic(path, out, nbytes);
  free(out);
  return st;
}
