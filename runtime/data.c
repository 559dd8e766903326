/* data.c -- data set readers: IDX (MNIST, Fashion-MNIST) and CIFAR-10/100 binary records.
 *
 * Files may be plain, gzip (zlib) or xz (liblzma); the compression is recognised by the
 * file's magic bytes, not its name.  Every file is streamed once from start to end: the
 * records asked for (offset, limit) are converted to float32 in [0, 1] (byte / 255, as
 * torchvision's ToTensor does) and the rest are only counted, so a short, long or corrupt
 * file is always noticed, and memory holds only the images returned.
 *
 * Layouts:
 *   IDX images  big-endian u32 magic 0x00000803, count, rows, cols; then count*rows*cols bytes
 *   IDX labels  big-endian u32 magic 0x00000801, count; then count bytes
 *   CIFAR-10    records of 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, row-major)
 *   CIFAR-100   records of 2 label bytes (coarse, fine) + 3072 pixel bytes; the fine label is used
 *
 * Errors are one line naming the file and the field, e.g.
 *   "dir/t10k-images-idx3-ubyte.gz: truncated: 7840016 bytes expected, 1200 read". */
#include "data.h"

#include <errno.h>
#include <lzma.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define DEBIAN_FASHION_MNIST "/usr/share/datasets/fashion-mnist"

/* ---- a byte stream over a plain, gzip or xz file ---------------------------------------- */

enum { COMP_PLAIN, COMP_GZIP, COMP_XZ };

typedef struct {
  const char *path;
  FILE *f;
  int comp;
  z_stream z;
  lzma_stream x;
  int z_init, x_init;
  unsigned char in[1 << 16];
  size_t in_len, in_pos; /* unread input is in[in_pos, in_len) */
  int in_eof;
  int end;               /* the (decompressed) stream has ended */
  int cut;               /* the compressed stream ended before its end marker */
  int64_t total;         /* decompressed bytes delivered so far */
} reader;

static const char *comp_name(int comp) {
  return comp == COMP_GZIP ? "gzip" : comp == COMP_XZ ? "xz" : "plain";
}

static tk_status fill_input(reader *r) {
  if (r->in_pos < r->in_len || r->in_eof) return TK_OK;
  r->in_len = fread(r->in, 1, sizeof r->in, r->f);
  r->in_pos = 0;
  if (r->in_len == 0) {
    if (ferror(r->f)) return tk_fail(TK_ERR_IO, "%s: read error: %s", r->path, strerror(errno));
    r->in_eof = 1;
  }
  return TK_OK;
}

static tk_status reader_open(reader *r, const char *path) {
  memset(r, 0, sizeof *r);
  r->path = path;
  r->f = fopen(path, "rb");
  if (!r->f) return tk_fail(TK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(r->f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(r->f);
    r->f = NULL;
    return tk_fail(TK_ERR_IO, "%s: not a regular file", path);
  }
  tk_status st = fill_input(r);
  if (st != TK_OK) return st;
  const unsigned char *m = r->in;
  if (r->in_len >= 2 && m[0] == 0x1f && m[1] == 0x8b) {
    r->comp = COMP_GZIP;
    if (inflateInit2(&r->z, 15 + 16) != Z_OK) return tk_fail(TK_ERR_NOMEM, "%s: cannot start zlib", path);
    r->z_init = 1;
  } else if (r->in_len >= 6 && !memcmp(m, "\xfd" "7zXZ\0", 6)) {
    r->comp = COMP_XZ;
    lzma_stream init = LZMA_STREAM_INIT;
    r->x = init;
    if (lzma_stream_decoder(&r->x, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK)
      return tk_fail(TK_ERR_NOMEM, "%s: cannot start the xz decoder", path);
    r->x_init = 1;
  }
  return TK_OK;
}

static void reader_close(reader *r) {
  if (r->z_init) inflateEnd(&r->z);
  if (r->x_init) lzma_end(&r->x);
  if (r->f) fclose(r->f);
  r->f = NULL;
  r->z_init = r->x_init = 0;
}

/* Reads up to n bytes; *got < n only at the end of the stream.  Corrupt compressed data is
 * an error; a compressed stream that stops early sets r->cut and ends the stream. */
static tk_status reader_read(reader *r, void *buf, size_t n, size_t *got) {
  unsigned char *out = buf;
  size_t done = 0;
  tk_status st;
  while (done < n && !r->end) {
    if ((st = fill_input(r)) != TK_OK) return st;
    size_t avail = r->in_len - r->in_pos;
    if (r->comp == COMP_PLAIN) {
      if (r->in_eof) {
        r->end = 1;
        break;
      }
      size_t k = avail < n - done ? avail : n - done;
      memcpy(out + done, r->in + r->in_pos, k);
      r->in_pos += k;
      done += k;
    } else if (r->comp == COMP_GZIP) {
      if (r->in_eof) { /* input ended inside a member */
        r->end = r->cut = 1;
        break;
      }
      size_t want = n - done < (1u << 30) ? n - done : (1u << 30);
      r->z.next_in = r->in + r->in_pos;
      r->z.avail_in = (uInt)avail;
      r->z.next_out = out + done;
      r->z.avail_out = (uInt)want;
      int zr = inflate(&r->z, Z_NO_FLUSH);
      done += want - r->z.avail_out;
      r->in_pos = r->in_len - r->z.avail_in;
      if (zr == Z_STREAM_END) {
        /* another gzip member may follow; anything else after the end is ignored (as gzip does) */
        if ((st = fill_input(r)) != TK_OK) return st;
        if (!r->in_eof && r->in[r->in_pos] == 0x1f) {
          inflateReset(&r->z);
        } else {
          r->end = 1;
        }
      } else if (zr != Z_OK && zr != Z_BUF_ERROR) {
        return tk_fail(TK_ERR_FORMAT, "%s: corrupt gzip data after %lld bytes: %s", r->path,
                       (long long)(r->total + (int64_t)done), r->z.msg ? r->z.msg : "inflate failed");
      }
    } else {
      size_t want = n - done;
      r->x.next_in = r->in + r->in_pos;
      r->x.avail_in = avail;
      r->x.next_out = out + done;
      r->x.avail_out = want;
      lzma_ret xr = lzma_code(&r->x, r->in_eof ? LZMA_FINISH : LZMA_RUN);
      done += want - r->x.avail_out;
      r->in_pos = r->in_len - r->x.avail_in;
      if (xr == LZMA_STREAM_END) {
        r->end = 1;
      } else if (xr == LZMA_BUF_ERROR && r->in_eof) {
        r->end = r->cut = 1;
      } else if (xr != LZMA_OK) {
        return tk_fail(TK_ERR_FORMAT, "%s: corrupt xz data after %lld bytes (liblzma error %d)", r->path,
                       (long long)(r->total + (int64_t)done), (int)xr);
      }
    }
  }
  r->total += (int64_t)done;
  *got = done;
  return TK_OK;
}

/* Reads exactly n bytes; otherwise "truncated" with the expected and actual totals. */
static tk_status reader_exact(reader *r, void *buf, size_t n, int64_t expected_total) {
  size_t got;
  tk_status st = reader_read(r, buf, n, &got);
  if (st != TK_OK) return st;
  if (got < n)
    return tk_fail(TK_ERR_FORMAT, "%s: truncated: %lld bytes expected, %lld read%s", r->path,
                   (long long)expected_total, (long long)r->total,
                   r->cut ? (r->comp == COMP_GZIP ? " (the gzip stream stops early)" : " (the xz stream stops early)") : "");
  return TK_OK;
}

/* Skips n bytes (reading them). */
static tk_status reader_skip(reader *r, int64_t n, int64_t expected_total) {
  unsigned char tmp[1 << 14];
  while (n > 0) {
    size_t k = n < (int64_t)sizeof tmp ? (size_t)n : sizeof tmp;
    tk_status st = reader_exact(r, tmp, k, expected_total);
    if (st != TK_OK) return st;
    n -= (int64_t)k;
  }
  return TK_OK;
}

/* The stream must end here. */
static tk_status reader_expect_end(reader *r, int64_t expected_total) {
  unsigned char tmp[4096];
  size_t got;
  int64_t extra = 0;
  do {
    tk_status st = reader_read(r, tmp, sizeof tmp, &got);
    if (st != TK_OK) return st;
    extra += (int64_t)got;
  } while (got == sizeof tmp && extra < (1 << 24));
  if (r->cut)
    return tk_fail(TK_ERR_FORMAT, "%s: truncated: the %s stream stops before its end marker (%lld bytes read)",
                   r->path, comp_name(r->comp), (long long)r->total);
  if (extra)
    return tk_fail(TK_ERR_FORMAT, "%s: length: %lld bytes expected, %s%lld found", r->path,
                   (long long)expected_total, r->end ? "" : "at least ", (long long)r->total);
  return TK_OK;
}

/* ---- small helpers ------------------------------------------------------------------------ */

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static bool file_exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

static char *path_join(const char *dir, const char *name, const char *ext) {
  size_t n = strlen(dir) + strlen(name) + strlen(ext) + 2;
  char *p = tk_malloc(n);
  if (p) snprintf(p, n, "%s/%s%s", dir, name, ext);
  return p;
}

/* dir/name, dir/name.gz or dir/name.xz, whichever exists first; NULL if none (no error recorded). */
static char *find_file(const char *dir, const char *name) {
  static const char *const exts[] = {"", ".gz", ".xz"};
  for (size_t i = 0; i < sizeof exts / sizeof *exts; i++) {
    char *p = path_join(dir, name, exts[i]);
    if (!p) return NULL;
    if (file_exists(p)) return p;
    free(p);
  }
  return NULL;
}

static tk_dataset *dataset_new(const char *name, int n, int c, int h, int w, int classes) {
  tk_dataset *d = tk_calloc(1, sizeof *d);
  if (!d) return NULL;
  d->name = tk_strdup(name);
  d->n = n;
  d->c = c;
  d->h = h;
  d->w = w;
  d->classes = classes;
  d->x = tk_malloc((size_t)n * (size_t)(c * h * w) * sizeof(float));
  d->y = tk_calloc((size_t)(n ? n : 1), sizeof(int));
  if (!d->name || !d->x || !d->y) {
    tk_dataset_free(d);
    tk_fail(TK_ERR_NOMEM, "%s: cannot allocate %d images of %dx%dx%d", name, n, c, h, w);
    return NULL;
  }
  return d;
}

void tk_dataset_free(tk_dataset *d) {
  if (!d) return;
  free(d->name);
  free(d->x);
  free(d->y);
  free(d);
}

/* [offset, offset + limit) clipped to [0, total); error if offset is past the end. */
static tk_status select_range(const char *what, long total, long offset, long limit, long *from, long *count) {
  if (offset < 0) return tk_fail(TK_ERR_ARG, "%s: offset %ld is negative", what, offset);
  if (offset >= total)
    return tk_fail(TK_ERR_ARG, "%s: offset %ld is past the end (%ld images)", what, offset, total);
  long left = total - offset;
  *from = offset;
  *count = limit > 0 && limit < left ? limit : left;
  return TK_OK;
}

/* ---- IDX ---------------------------------------------------------------------------------- */

static tk_status load_idx(const char *dir, const char *family, const char *split, long offset, long limit,
                          tk_dataset **out) {
  const char *prefix = !strcmp(split, "train") ? "train" : "t10k";
  char img_name[64], lab_name[64];
  snprintf(img_name, sizeof img_name, "%s-images-idx3-ubyte", prefix);
  snprintf(lab_name, sizeof lab_name, "%s-labels-idx1-ubyte", prefix);
  char *img_path = find_file(dir, img_name), *lab_path = find_file(dir, lab_name);
  tk_status st = TK_OK;
  reader ri, rl;
  memset(&ri, 0, sizeof ri);
  memset(&rl, 0, sizeof rl);
  unsigned char *labels = NULL, *row = NULL;
  tk_dataset *d = NULL;
  if (!img_path || !lab_path) {
    st = tk_fail(TK_ERR_IO, "%s/%s: missing: no such file (also tried .gz and .xz)", dir,
                 !img_path ? img_name : lab_name);
    goto done;
  }
  /* labels: header, then all labels (small) */
  unsigned char h[16];
  if ((st = reader_open(&rl, lab_path)) != TK_OK) goto done;
  if ((st = reader_exact(&rl, h, 8, 8)) != TK_OK) goto done;
  if (be32(h) != 0x00000801) {
    st = tk_fail(TK_ERR_FORMAT, "%s: magic: 0x%08x, expected 0x00000801 (IDX unsigned-byte labels)", lab_path, be32(h));
    goto done;
  }
  uint32_t nl = be32(h + 4);
  if (nl < 1 || nl > (1u << 28)) {
    st = tk_fail(TK_ERR_FORMAT, "%s: count: %u labels out of range 1..%u", lab_path, nl, 1u << 28);
    goto done;
  }
  labels = tk_malloc(nl);
  if (!labels) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  if ((st = reader_exact(&rl, labels, nl, 8 + (int64_t)nl)) != TK_OK) goto done;
  if ((st = reader_expect_end(&rl, 8 + (int64_t)nl)) != TK_OK) goto done;
  /* images: header */
  if ((st = reader_open(&ri, img_path)) != TK_OK) goto done;
  if ((st = reader_exact(&ri, h, 16, 16)) != TK_OK) goto done;
  if (be32(h) != 0x00000803) {
    st = tk_fail(TK_ERR_FORMAT, "%s: magic: 0x%08x, expected 0x00000803 (IDX unsigned-byte images, 3 dimensions)",
                 img_path, be32(h));
    goto done;
  }
  uint32_t ni = be32(h + 4), rows = be32(h + 8), cols = be32(h + 12);
  if (rows < 1 || cols < 1 || rows > 4096 || cols > 4096) {
    st = tk_fail(TK_ERR_FORMAT, "%s: dims: %ux%u images, each side must be 1..4096", img_path, rows, cols);
    goto done;
  }
  if (ni != nl) {
    st = tk_fail(TK_ERR_FORMAT, "%s: count: %u images but %s has %u labels", img_path, ni, lab_path, nl);
    goto done;
  }
  for (uint32_t i = 0; i < nl; i++)
    if (labels[i] > 9) {
      st = tk_fail(TK_ERR_FORMAT, "%s: label %u at index %u outside 0..9", lab_path, labels[i], i);
      goto done;
    }
  const int64_t D = (int64_t)rows * cols, expected = 16 + (int64_t)ni * D;
  long from = 0, count = 0;
  if ((st = select_range(img_path, (long)ni, offset, limit, &from, &count)) != TK_OK) goto done;
  char name[96];
  snprintf(name, sizeof name, "%s/%s", family, split);
  d = dataset_new(name, (int)count, 1, (int)rows, (int)cols, 10);
  row = tk_malloc((size_t)D);
  if (!d || !row) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  if ((st = reader_skip(&ri, (int64_t)from * D, expected)) != TK_OK) goto done;
  for (long i = 0; i < count; i++) {
    if ((st = reader_exact(&ri, row, (size_t)D, expected)) != TK_OK) goto done;
    float *x = d->x + (size_t)i * (size_t)D;
    for (int64_t k = 0; k < D; k++) x[k] = (float)row[k] / 255.0f;
    d->y[i] = labels[from + i];
  }
  if ((st = reader_skip(&ri, ((int64_t)ni - from - count) * D, expected)) != TK_OK) goto done;
  st = reader_expect_end(&ri, expected);
done:
  reader_close(&ri);
  reader_close(&rl);
  free(img_path);
  free(lab_path);
  free(labels);
  free(row);
  if (st != TK_OK) {
    tk_dataset_free(d);
    d = NULL;
  }
  *out = d;
  return st;
}

/* ---- CIFAR -------------------------------------------------------------------------------- */

#define CIFAR_PIXELS 3072

/* Grows d to hold at least n images (CIFAR files carry no count: it follows from the length). */
static tk_status dataset_reserve(tk_dataset *d, long *cap, long n) {
  if (n <= *cap) return TK_OK;
  long nc = *cap ? *cap : 1024;
  while (nc < n) nc *= 2;
  const size_t D = (size_t)d->c * d->h * d->w;
  float *x = realloc(d->x, (size_t)nc * D * sizeof(float));
  if (!x) return tk_fail(TK_ERR_NOMEM, "%s: out of memory for %ld images", d->name, nc);
  d->x = x;
  int *y = realloc(d->y, (size_t)nc * sizeof(int));
  if (!y) return tk_fail(TK_ERR_NOMEM, "%s: out of memory for %ld labels", d->name, nc);
  d->y = y;
  *cap = nc;
  return TK_OK;
}

/* Streams every file once; global record index r; keeps records [offset, offset + limit). */
static tk_status load_cifar(const char *dir, int classes, const char *split, long offset, long limit,
                            tk_dataset **out) {
  const int label_bytes = classes == 10 ? 1 : 2;
  const char *family = classes == 10 ? "cifar10" : "cifar100";
  const size_t rec = (size_t)label_bytes + CIFAR_PIXELS;
  char *paths[5] = {0};
  int n_files = 0;
  tk_status st = TK_OK;
  tk_dataset *d = NULL;
  unsigned char *buf = NULL;
  reader r;
  memset(&r, 0, sizeof r);
  if (offset < 0) return tk_fail(TK_ERR_ARG, "%s: offset %ld is negative", dir, offset);
  /* the files, in the directory or its cifar-10-batches-bin / cifar-100-binary subdirectory */
  const char *sub = classes == 10 ? "cifar-10-batches-bin" : "cifar-100-binary";
  char *subdir = path_join(dir, sub, "");
  if (!subdir) return TK_ERR_NOMEM;
  const char *dirs[2] = {dir, subdir};
  const int train = !strcmp(split, "train");
  for (int di = 0; di < 2 && n_files == 0; di++) {
    if (classes == 10 && train) {
      for (int b = 1; b <= 5; b++) {
        char nm[32];
        snprintf(nm, sizeof nm, "data_batch_%d.bin", b);
        char *p = find_file(dirs[di], nm);
        if (p) paths[n_files++] = p;
      }
    } else {
      char *p = find_file(dirs[di], classes == 10 ? "test_batch.bin" : train ? "train.bin" : "test.bin");
      if (p) paths[n_files++] = p;
    }
  }
  free(subdir);
  if (n_files == 0) {
    st = tk_fail(TK_ERR_IO, "%s/%s: missing: no such file (also tried .gz, .xz and %s/)", dir,
                 classes == 10 ? (train ? "data_batch_1..5.bin" : "test_batch.bin") : (train ? "train.bin" : "test.bin"),
                 sub);
    goto done;
  }
  d = dataset_new(family, 0, 3, 32, 32, classes);
  buf = tk_malloc(rec);
  if (!d || !buf) {
    st = TK_ERR_NOMEM;
    goto done;
  }
  long cap = 0, total = 0, k = 0; /* total: records seen; k: images kept */
  for (int f = 0; f < n_files; f++) {
    if ((st = reader_open(&r, paths[f])) != TK_OK) goto done;
    for (long j = 0;; j++, total++) {
      size_t got;
      if ((st = reader_read(&r, buf, rec, &got)) != TK_OK) goto done;
      if (got < rec) {
        if (r.cut)
          st = tk_fail(TK_ERR_FORMAT, "%s: truncated: the %s stream stops early (%lld bytes read)", paths[f],
                       comp_name(r.comp), (long long)r.total);
        else if (got)
          st = tk_fail(TK_ERR_FORMAT, "%s: truncated: record %ld has %zu of %zu bytes (file length %lld is not "
                       "a multiple of the CIFAR-%s record)", paths[f], j, got, rec, (long long)r.total,
                       label_bytes == 1 ? "10" : "100");
        else if (j == 0)
          st = tk_fail(TK_ERR_FORMAT, "%s: length: the file holds no records", paths[f]);
        if (st != TK_OK) goto done;
        break;
      }
      int label = buf[label_bytes - 1];
      if (label >= classes || (label_bytes == 2 && buf[0] >= 20)) {
        st = tk_fail(TK_ERR_FORMAT, "%s: label: %d%s of record %ld outside 0..%d", paths[f], label,
                     label_bytes == 2 && buf[0] >= 20 ? " (or its coarse label)" : "", j, classes - 1);
        goto done;
      }
      if (total < offset || (limit > 0 && total >= offset + limit)) continue;
      if ((st = dataset_reserve(d, &cap, k + 1)) != TK_OK) goto done;
      d->y[k] = label;
      float *x = d->x + (size_t)k * CIFAR_PIXELS;
      for (int p = 0; p < CIFAR_PIXELS; p++) x[p] = (float)buf[label_bytes + p] / 255.0f;
      k++;
    }
    reader_close(&r);
  }
  if (offset >= total) {
    st = tk_fail(TK_ERR_ARG, "%s: offset %ld is past the end (%ld images)", dir, offset, total);
    goto done;
  }
  d->n = (int)k;
  char name[128];
  if (classes == 10 && train)
    snprintf(name, sizeof name, "%s/train (%d of 5 batches, %ld images)", family, n_files, total);
  else
    snprintf(name, sizeof name, "%s/%s", family, split);
  free(d->name);
  d->name = tk_strdup(name);
  if (!d->name) st = TK_ERR_NOMEM;
done:
  reader_close(&r);
  for (int f = 0; f < n_files; f++) free(paths[f]);
  free(buf);
  if (st != TK_OK) {
    tk_dataset_free(d);
    d = NULL;
  }
  *out = d;
  return st;
}

/* ---- specs ---------------------------------------------------------------------------------- */

tk_status tk_data_load(const char *spec, const char *split, long offset, long limit, tk_dataset **out) {
  *out = NULL;
  if (!spec || !*spec) return tk_fail(TK_ERR_ARG, "data: empty spec (try fashion-mnist, mnist:DIR, cifar10:DIR)");
  if (!split) split = "test";
  if (strcmp(split, "train") && strcmp(split, "test"))
    return tk_fail(TK_ERR_ARG, "split: '%s' is neither train nor test", split);
  const char *colon = strchr(spec, ':');
  size_t fl = colon ? (size_t)(colon - spec) : strlen(spec);
  const char *dir = colon ? colon + 1 : NULL;
  if (dir && !*dir) return tk_fail(TK_ERR_ARG, "data: '%s' names no directory after the colon", spec);
#define IS(s) (fl == strlen(s) && !strncmp(spec, s, fl))
  tk_status st;
  if (IS("fashion-mnist")) {
    st = load_idx(dir ? dir : DEBIAN_FASHION_MNIST, "fashion-mnist", split, offset, limit, out);
  } else if (IS("mnist")) {
    if (!dir) return tk_fail(TK_ERR_ARG, "data: mnist needs a directory: mnist:DIR");
    st = load_idx(dir, "mnist", split, offset, limit, out);
  } else if (IS("cifar10") || IS("cifar100")) {
    if (!dir) return tk_fail(TK_ERR_ARG, "data: %.*s needs a directory: %.*s:DIR", (int)fl, spec, (int)fl, spec);
    st = load_cifar(dir, IS("cifar10") ? 10 : 100, split, offset, limit, out);
  } else {
    return tk_fail(TK_ERR_ARG, "data: unknown data set '%.*s' (fashion-mnist, fashion-mnist:DIR, mnist:DIR, "
                   "cifar10:DIR, cifar100:DIR)", (int)fl, spec);
  }
#undef IS
  return st;
}

tk_status tk_dataset_slice(const tk_dataset *d, int from, int count, tk_dataset **out) {
  *out = NULL;
  if (from < 0 || count < 1 || from > d->n - count)
    return tk_fail(TK_ERR_ARG, "%s: slice [%d, %d) outside the %d images", d->name, from, from + count, d->n);
  char name[512];
  snprintf(name, sizeof name, "%s[%d:%d]", d->name, from, from + count);
  tk_dataset *s = dataset_new(name, count, d->c, d->h, d->w, d->classes);
  if (!s) return TK_ERR_NOMEM;
  size_t D = (size_t)d->c * d->h * d->w;
  memcpy(s->x, d->x + (size_t)from * D, (size_t)count * D * sizeof(float));
  memcpy(s->y, d->y + from, (size_t)count * sizeof(int));
  *out = s;
  return TK_OK;
}
