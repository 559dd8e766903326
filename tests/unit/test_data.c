/* test_data.c -- the data readers (runtime/data.c).
 *
 * 1. Tiny IDX and CIFAR-10/100 files written here (plain, gzip, xz) read back exactly:
 *    pixels = byte / 255, labels, shapes, offset/limit, slices, CIFAR train batches that
 *    exist (1, 2 and 4 of 5) spanning files.
 * 2. Bad files: truncated (plain, gzip, xz), wrong magic, image/label count mismatch,
 *    trailing bytes, label out of range, partial CIFAR record, corrupt gzip, missing file,
 *    offset past the end: each a clean error naming the file and the field.
 * 3. The real data sets when present (Debian's Fashion-MNIST; MNIST and CIFAR-10 from
 *    $TICKET_SHARED_DATA or ../shared/data beside the source tree): counts, label histograms
 *    and published pixel statistics.  Absent data sets are reported and left out (parts 1
 *    and 2 always run, so the test never skips as a whole). */
#include "check.h"

#include "runtime/data.h"

#include <lzma.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char g_root[512];

enum { PLAIN, GZ, XZ };

static void write_file(const char *path, const unsigned char *data, size_t n, int comp) {
  char full[1024];
  snprintf(full, sizeof full, "%s%s", path, comp == GZ ? ".gz" : comp == XZ ? ".xz" : "");
  if (comp == GZ) {
    gzFile g = gzopen(full, "wb");
    if (!g || (n && gzwrite(g, data, (unsigned)n) != (int)n) || gzclose(g) != Z_OK) {
      fprintf(stderr, "cannot write %s\n", full);
      exit(1);
    }
    return;
  }
  unsigned char *buf = (unsigned char *)data;
  size_t len = n;
  if (comp == XZ) {
    size_t cap = n + n / 2 + 1024, pos = 0;
    buf = malloc(cap);
    if (lzma_easy_buffer_encode(6, LZMA_CHECK_CRC64, NULL, data, n, buf, &pos, cap) != LZMA_OK) {
      fprintf(stderr, "xz encode failed\n");
      exit(1);
    }
    len = pos;
  }
  FILE *f = fopen(full, "wb");
  if (!f || fwrite(buf, 1, len, f) != len || fclose(f)) {
    fprintf(stderr, "cannot write %s\n", full);
    exit(1);
  }
  if (buf != data) free(buf);
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

static const char *mkdir_sub(const char *name) {
  static char path[8][1024];
  static int k;
  char *p = path[k++ % 8];
  snprintf(p, 1024, "%s/%s", g_root, name);
  if (mkdir(p, 0755) != 0) {
    perror(p);
    exit(1);
  }
  return p;
}

static void rm_tree(const char *dir) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* IDX pair with n images of rows x cols; pixel (i, k) = (7*i + 13*k) & 255, label i % 10. */
static unsigned char pix(int i, int k) { return (unsigned char)((7 * i + 13 * k) & 255); }

static void write_idx(const char *dir, const char *prefix, int n_img, int n_lab, int rows, int cols,
                      uint32_t img_magic, uint32_t lab_magic, long img_cut, int extra, int comp) {
  size_t D = (size_t)rows * cols, ni = 16 + (size_t)n_img * D + (size_t)extra, nl = 8 + (size_t)n_lab;
  unsigned char *im = calloc(ni, 1), *lb = calloc(nl, 1);
  put32(im, img_magic);
  put32(im + 4, (uint32_t)n_img);
  put32(im + 8, (uint32_t)rows);
  put32(im + 12, (uint32_t)cols);
  for (int i = 0; i < n_img; i++)
    for (size_t k = 0; k < D; k++) im[16 + i * D + k] = pix(i, (int)k);
  put32(lb, lab_magic);
  put32(lb + 4, (uint32_t)n_lab);
  for (int i = 0; i < n_lab; i++) lb[8 + i] = (unsigned char)(i % 10);
  char p[1024];
  snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte", dir, prefix);
  write_file(p, im, img_cut >= 0 ? (size_t)img_cut : ni, comp);
  snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte", dir, prefix);
  write_file(p, lb, nl, comp);
  free(im);
  free(lb);
}

static void check_idx_content(const tk_dataset *d, int first, int n, int rows, int cols) {
  CHECK_MSG(d->n == n && d->c == 1 && d->h == rows && d->w == cols && d->classes == 10,
            "n %d c %d h %d w %d classes %d", d->n, d->c, d->h, d->w, d->classes);
  if (d->n != n) return;
  int bad = 0;
  for (int i = 0; i < n && !bad; i++) {
    if (d->y[i] != (first + i) % 10) {
      CHECK_MSG(0, "label %d: got %d expected %d", i, d->y[i], (first + i) % 10);
      bad = 1;
    }
    for (int k = 0; k < rows * cols && !bad; k++) {
      float want = (float)pix(first + i, k) / 255.0f, got = d->x[(size_t)i * rows * cols + k];
      if (got != want) {
        CHECK_MSG(0, "image %d pixel %d: got %.9g expected %.9g", first + i, k, got, want);
        bad = 1;
      }
    }
  }
}

/* Expects failure with status st and a message containing every given fragment. */
static void expect_error(const char *spec, const char *split, long offset, long limit, tk_status want, ...) {
  tk_dataset *d = (tk_dataset *)0x1;
  tk_status st = tk_data_load(spec, split, offset, limit, &d);
  const char *msg = tk_last_error();
  CHECK_MSG(st == want, "%s %s: status %s, expected %s (%s)", spec, split, tk_status_name(st), tk_status_name(want), msg);
  CHECK_MSG(d == NULL, "%s: output not cleared on failure", spec);
  CHECK_MSG(strchr(msg, '\n') == NULL, "message is not one line: %s", msg);
  va_list ap;
  va_start(ap, want);
  for (const char *frag; (frag = va_arg(ap, const char *));)
    CHECK_MSG(strstr(msg, frag) != NULL, "message '%s' lacks '%s'", msg, frag);
  va_end(ap);
  if (st == TK_OK) tk_dataset_free(d);
  printf("  expected error: %s\n", msg);
}

static char *spec_of(const char *family, const char *dir) {
  static char s[4][1200];
  static int k;
  char *p = s[k++ % 4];
  snprintf(p, 1200, "%s:%s", family, dir);
  return p;
}

static void test_idx_roundtrip(void) {
  static const char *const names[] = {"plain", "gz", "xz"};
  for (int comp = PLAIN; comp <= XZ; comp++) {
    char sub[32];
    snprintf(sub, sizeof sub, "idx_%s", names[comp]);
    const char *dir = mkdir_sub(sub);
    write_idx(dir, "train", 23, 23, 5, 3, 0x803, 0x801, -1, 0, comp);
    write_idx(dir, "t10k", 7, 7, 5, 3, 0x803, 0x801, -1, 0, comp);
    tk_dataset *d = NULL, *s = NULL;
    tk_status st = tk_data_load(spec_of("mnist", dir), "train", 0, 0, &d);
    CHECK_MSG(st == TK_OK, "%s: %s", names[comp], tk_last_error());
    if (st == TK_OK) {
      check_idx_content(d, 0, 23, 5, 3);
      CHECK_MSG(!strcmp(d->name, "mnist/train"), "name %s", d->name);
      st = tk_dataset_slice(d, 4, 9, &s);
      CHECK_MSG(st == TK_OK, "slice: %s", tk_last_error());
      if (st == TK_OK) check_idx_content(s, 4, 9, 5, 3);
      tk_dataset_free(s);
      s = NULL;
      CHECK(tk_dataset_slice(d, 20, 4, &s) == TK_ERR_ARG && s == NULL);
      CHECK(tk_dataset_slice(d, -1, 2, &s) == TK_ERR_ARG && s == NULL);
    }
    tk_dataset_free(d);
    d = NULL;
    st = tk_data_load(spec_of("fashion-mnist", dir), "train", 5, 10, &d);
    CHECK_MSG(st == TK_OK, "%s offset/limit: %s", names[comp], tk_last_error());
    if (st == TK_OK) check_idx_content(d, 5, 10, 5, 3);
    tk_dataset_free(d);
    d = NULL;
    st = tk_data_load(spec_of("mnist", dir), "train", 20, 10, &d); /* limit past the end: clipped */
    CHECK_MSG(st == TK_OK, "%s clipped limit: %s", names[comp], tk_last_error());
    if (st == TK_OK) check_idx_content(d, 20, 3, 5, 3);
    tk_dataset_free(d);
    d = NULL;
    st = tk_data_load(spec_of("mnist", dir), "test", 0, 0, &d);
    CHECK_MSG(st == TK_OK, "%s test: %s", names[comp], tk_last_error());
    if (st == TK_OK) check_idx_content(d, 0, 7, 5, 3);
    tk_dataset_free(d);
    expect_error(spec_of("mnist", dir), "train", 23, 0, TK_ERR_ARG, "offset 23", "past the end", NULL);
  }
}

static void test_idx_errors(void) {
  const char *dir;
  /* truncated: plain, gzip, xz */
  dir = mkdir_sub("trunc_plain");
  write_idx(dir, "t10k", 10, 10, 28, 28, 0x803, 0x801, 1200, 0, PLAIN);
  expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-images-idx3-ubyte:", "truncated",
               "7856 bytes expected", "1200 read", NULL);
  dir = mkdir_sub("trunc_gz");
  write_idx(dir, "t10k", 10, 10, 28, 28, 0x803, 0x801, 1200, 0, GZ);
  expect_error(spec_of("mnist", dir), "test", 0, 5, TK_ERR_FORMAT, "t10k-images-idx3-ubyte.gz:", "truncated",
               "7856 bytes expected", "1200 read", NULL);
  dir = mkdir_sub("trunc_xz");
  write_idx(dir, "t10k", 10, 10, 28, 28, 0x803, 0x801, 3000, 0, XZ);
  expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-images-idx3-ubyte.xz:", "truncated",
               "3000 read", NULL);
  /* a compressed stream cut in the middle (not a short but complete stream) */
  {
    char p[1024], q[1024];
    snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte.gz", dir);
    dir = mkdir_sub("cut_gz");
    write_idx(dir, "t10k", 10, 10, 28, 28, 0x803, 0x801, -1, 0, GZ);
    snprintf(q, sizeof q, "%s/t10k-images-idx3-ubyte.gz", dir);
    struct stat sb;
    stat(q, &sb);
    CHECK(truncate(q, sb.st_size / 2) == 0);
    expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-images-idx3-ubyte.gz:", "truncated",
                 "gzip stream stops early", NULL);
    dir = mkdir_sub("cut_xz");
    write_idx(dir, "t10k", 10, 10, 28, 28, 0x803, 0x801, -1, 0, XZ);
    snprintf(q, sizeof q, "%s/t10k-images-idx3-ubyte.xz", dir);
    stat(q, &sb);
    CHECK(truncate(q, sb.st_size - 20) == 0);
    expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-images-idx3-ubyte.xz:", NULL);
    /* corrupt gzip: flip bytes inside the deflate data */
    dir = mkdir_sub("corrupt_gz");
    write_idx(dir, "t10k", 10, 10, 28, 28, 0x803, 0x801, -1, 0, GZ);
    snprintf(q, sizeof q, "%s/t10k-images-idx3-ubyte.gz", dir);
    FILE *f = fopen(q, "r+b");
    fseek(f, 20, SEEK_SET);
    fwrite("\xff\xff\xff\xff\xff\xff\xff\xff", 1, 8, f);
    fclose(f);
    expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-images-idx3-ubyte.gz:", NULL);
    /* corrupt gzip trailer: the CRC no longer matches */
    dir = mkdir_sub("crc_gz");
    write_idx(dir, "t10k", 10, 10, 28, 28, 0x803, 0x801, -1, 0, GZ);
    snprintf(q, sizeof q, "%s/t10k-images-idx3-ubyte.gz", dir);
    stat(q, &sb);
    f = fopen(q, "r+b");
    fseek(f, sb.st_size - 8, SEEK_SET);
    fputc(0x5a, f);
    fclose(f);
    expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-images-idx3-ubyte.gz:", "corrupt gzip", NULL);
  }
  /* wrong magic (labels where images belong), and in the label file */
  dir = mkdir_sub("magic");
  write_idx(dir, "t10k", 4, 4, 2, 2, 0x801, 0x801, -1, 0, PLAIN);
  expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-images-idx3-ubyte:", "magic", "0x00000801", NULL);
  dir = mkdir_sub("magic_lab");
  write_idx(dir, "t10k", 4, 4, 2, 2, 0x803, 0x803, -1, 0, GZ);
  expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-labels-idx1-ubyte.gz:", "magic", NULL);
  /* counts disagree */
  dir = mkdir_sub("count");
  write_idx(dir, "t10k", 10, 9, 2, 2, 0x803, 0x801, -1, 0, PLAIN);
  expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "count", "10 images", "9 labels", NULL);
  /* trailing bytes after the last image */
  dir = mkdir_sub("long");
  write_idx(dir, "t10k", 3, 3, 2, 2, 0x803, 0x801, -1, 5, GZ);
  expect_error(spec_of("mnist", dir), "test", 0, 1, TK_ERR_FORMAT, "t10k-images-idx3-ubyte.gz:", "length",
               "28 bytes expected", NULL);
  /* missing files */
  dir = mkdir_sub("missing");
  expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_IO, "t10k-images-idx3-ubyte", "missing", NULL);
  write_idx(dir, "train", 3, 3, 2, 2, 0x803, 0x801, -1, 0, PLAIN);
  char p[1024];
  snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte", dir);
  unlink(p);
  expect_error(spec_of("mnist", dir), "train", 0, 0, TK_ERR_IO, "train-labels-idx1-ubyte", "missing", NULL);
  /* label out of range */
  dir = mkdir_sub("label");
  write_idx(dir, "t10k", 3, 3, 2, 2, 0x803, 0x801, -1, 0, PLAIN);
  snprintf(p, sizeof p, "%s/t10k-labels-idx1-ubyte", dir);
  FILE *f = fopen(p, "r+b");
  fseek(f, 9, SEEK_SET);
  fputc(12, f);
  fclose(f);
  expect_error(spec_of("mnist", dir), "test", 0, 0, TK_ERR_FORMAT, "t10k-labels-idx1-ubyte:", "label 12", NULL);
  /* bad specs */
  expect_error("mnist", "test", 0, 0, TK_ERR_ARG, "mnist:DIR", NULL);
  expect_error("imagenet:/x", "test", 0, 0, TK_ERR_ARG, "unknown data set", NULL);
  expect_error(spec_of("mnist", dir), "val", 0, 0, TK_ERR_ARG, "split", NULL);
}

/* CIFAR record r: label (r * 3) % classes (fine), coarse r % 20, pixel k = (r + 5k) & 255 */
static void write_cifar(const char *path, int first, int n, int classes, long cut, int comp) {
  const int lb = classes == 10 ? 1 : 2;
  const size_t rec = (size_t)lb + 3072;
  unsigned char *b = calloc((size_t)n * rec + 1, 1);
  for (int r = 0; r < n; r++) {
    unsigned char *p = b + r * rec;
    int g = first + r;
    if (lb == 2) p[0] = (unsigned char)(g % 20);
    p[lb - 1] = (unsigned char)((g * 3) % classes);
    for (int k = 0; k < 3072; k++) p[lb + k] = (unsigned char)((g + 5 * k) & 255);
  }
  write_file(path, b, cut >= 0 ? (size_t)cut : (size_t)n * rec, comp);
  free(b);
}

static void check_cifar_content(const tk_dataset *d, int first, int n, int classes) {
  CHECK_MSG(d->n == n && d->c == 3 && d->h == 32 && d->w == 32 && d->classes == classes, "n %d c %d h %d w %d classes %d",
            d->n, d->c, d->h, d->w, d->classes);
  if (d->n != n) return;
  for (int i = 0; i < n; i++) {
    int g = first + i;
    if (d->y[i] != (g * 3) % classes) {
      CHECK_MSG(0, "record %d: label %d expected %d", g, d->y[i], (g * 3) % classes);
      return;
    }
    for (int k = 0; k < 3072; k++) {
      float want = (float)((g + 5 * k) & 255) / 255.0f;
      if (d->x[(size_t)i * 3072 + k] != want) {
        CHECK_MSG(0, "record %d pixel %d: got %.9g expected %.9g", g, k, d->x[(size_t)i * 3072 + k], want);
        return;
      }
    }
  }
}

static void test_cifar(void) {
  const char *dir = mkdir_sub("cifar10");
  char p[1024];
  /* train batches 1 (plain, 3 records), 2 (xz, 2), 4 (gz, 4); 3 and 5 absent */
  snprintf(p, sizeof p, "%s/data_batch_1.bin", dir);
  write_cifar(p, 0, 3, 10, -1, PLAIN);
  snprintf(p, sizeof p, "%s/data_batch_2.bin", dir);
  write_cifar(p, 3, 2, 10, -1, XZ);
  snprintf(p, sizeof p, "%s/data_batch_4.bin", dir);
  write_cifar(p, 5, 4, 10, -1, GZ);
  snprintf(p, sizeof p, "%s/test_batch.bin", dir);
  write_cifar(p, 100, 6, 10, -1, XZ);
  tk_dataset *d = NULL;
  tk_status st = tk_data_load(spec_of("cifar10", dir), "train", 0, 0, &d);
  CHECK_MSG(st == TK_OK, "cifar10 train: %s", tk_last_error());
  if (st == TK_OK) {
    check_cifar_content(d, 0, 9, 10);
    CHECK_MSG(strstr(d->name, "3 of 5 batches") && strstr(d->name, "9 images"), "name '%s' does not say how many", d->name);
    printf("  loaded %s\n", d->name);
  }
  tk_dataset_free(d);
  d = NULL;
  st = tk_data_load(spec_of("cifar10", dir), "train", 2, 5, &d); /* spans all three files */
  CHECK_MSG(st == TK_OK, "cifar10 train offset: %s", tk_last_error());
  if (st == TK_OK) check_cifar_content(d, 2, 5, 10);
  tk_dataset_free(d);
  d = NULL;
  st = tk_data_load(spec_of("cifar10", dir), "test", 1, 0, &d);
  CHECK_MSG(st == TK_OK, "cifar10 test: %s", tk_last_error());
  if (st == TK_OK) check_cifar_content(d, 101, 5, 10);
  tk_dataset_free(d);
  d = NULL;
  expect_error(spec_of("cifar10", dir), "train", 9, 0, TK_ERR_ARG, "offset 9", "past the end", NULL);

  /* the official archive's subdirectory is found too */
  const char *dir2 = mkdir_sub("cifar10_sub");
  snprintf(p, sizeof p, "%s/cifar-10-batches-bin", dir2);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/cifar-10-batches-bin/test_batch.bin", dir2);
  write_cifar(p, 0, 2, 10, -1, GZ);
  st = tk_data_load(spec_of("cifar10", dir2), "test", 0, 0, &d);
  CHECK_MSG(st == TK_OK, "cifar10 subdirectory: %s", tk_last_error());
  if (st == TK_OK) check_cifar_content(d, 0, 2, 10);
  tk_dataset_free(d);
  d = NULL;
  expect_error(spec_of("cifar10", dir2), "train", 0, 0, TK_ERR_IO, "data_batch_1..5.bin", "missing", NULL);

  /* CIFAR-100: fine labels */
  const char *dir3 = mkdir_sub("cifar100");
  snprintf(p, sizeof p, "%s/train.bin", dir3);
  write_cifar(p, 0, 40, 100, -1, PLAIN);
  snprintf(p, sizeof p, "%s/test.bin", dir3);
  write_cifar(p, 7, 3, 100, -1, GZ);
  st = tk_data_load(spec_of("cifar100", dir3), "train", 0, 0, &d);
  CHECK_MSG(st == TK_OK, "cifar100 train: %s", tk_last_error());
  if (st == TK_OK) check_cifar_content(d, 0, 40, 100);
  tk_dataset_free(d);
  d = NULL;
  st = tk_data_load(spec_of("cifar100", dir3), "test", 0, 2, &d);
  CHECK_MSG(st == TK_OK, "cifar100 test: %s", tk_last_error());
  if (st == TK_OK) check_cifar_content(d, 7, 2, 100);
  tk_dataset_free(d);

  /* partial record, bad label, empty file, truncated xz */
  const char *dir4 = mkdir_sub("cifar_bad");
  snprintf(p, sizeof p, "%s/test_batch.bin", dir4);
  write_cifar(p, 0, 3, 10, 3073 * 2 + 100, PLAIN);
  expect_error(spec_of("cifar10", dir4), "test", 0, 1, TK_ERR_FORMAT, "test_batch.bin:", "truncated", "record 2",
               "100 of 3073 bytes", NULL);
  write_cifar(p, 0, 3, 100, -1, PLAIN); /* CIFAR-100 records read as CIFAR-10: length and labels disagree */
  expect_error(spec_of("cifar10", dir4), "test", 0, 0, TK_ERR_FORMAT, "test_batch.bin:", NULL);
  write_cifar(p, 0, 0, 10, -1, PLAIN);
  expect_error(spec_of("cifar10", dir4), "test", 0, 0, TK_ERR_FORMAT, "test_batch.bin:", "no records", NULL);
  unlink(p);
  write_cifar(p, 0, 3, 10, 3073 * 2 + 100, XZ);
  expect_error(spec_of("cifar10", dir4), "test", 0, 0, TK_ERR_FORMAT, "test_batch.bin.xz:", "truncated", NULL);
  snprintf(p, sizeof p, "%s/train.bin", dir4);
  write_cifar(p, 0, 2, 100, -1, PLAIN);
  FILE *f = fopen(p, "r+b");
  fseek(f, 3074 + 1, SEEK_SET);
  fputc(150, f); /* fine label 150 */
  fclose(f);
  expect_error(spec_of("cifar100", dir4), "train", 0, 0, TK_ERR_FORMAT, "train.bin:", "label", "record 1", NULL);
}

/* ---- the real data sets ------------------------------------------------------------------------- */

static int g_real = 0;

static void histogram_and_mean(const tk_dataset *d, long *hist, double *chan_mean) {
  memset(hist, 0, (size_t)d->classes * sizeof(long));
  for (int i = 0; i < d->n; i++) hist[d->y[i]]++;
  const size_t HW = (size_t)d->h * d->w;
  for (int c = 0; c < d->c; c++) {
    double s = 0;
    for (int i = 0; i < d->n; i++) {
      const float *x = d->x + ((size_t)i * d->c + c) * HW;
      for (size_t k = 0; k < HW; k++) s += x[k];
    }
    chan_mean[c] = s / ((double)d->n * HW);
  }
}

static void check_real(const char *spec, const char *split, int n, const long *hist, const double *mean, double mean_tol) {
  tk_dataset *d = NULL;
  tk_status st = tk_data_load(spec, split, 0, 0, &d);
  CHECK_MSG(st == TK_OK, "%s %s: %s", spec, split, tk_last_error());
  if (st != TK_OK) return;
  g_real++;
  long h[100];
  double m[3];
  histogram_and_mean(d, h, m);
  CHECK_MSG(d->n == n, "%s %s: %d images, expected %d", spec, split, d->n, n);
  for (int k = 0; k < d->classes && hist; k++)
    CHECK_MSG(h[k] == hist[k], "%s %s: class %d has %ld images, expected %ld", spec, split, k, h[k], hist[k]);
  for (int c = 0; c < d->c; c++)
    CHECK_MSG(fabs(m[c] - mean[c]) <= mean_tol, "%s %s: channel %d mean %.5f, published %.4f", spec, split, c, m[c], mean[c]);
  printf("  %s: %d images, channel means", d->name, d->n);
  for (int c = 0; c < d->c; c++) printf(" %.4f", m[c]);
  printf("\n");
  tk_dataset_free(d);
}

static bool dir_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static void test_real(void) {
  /* Fashion-MNIST (Debian dataset-fashion-mnist): 6000 / 1000 per class; published train mean 0.2860 */
  if (dir_exists("/usr/share/datasets/fashion-mnist")) {
    long h[10];
    for (int k = 0; k < 10; k++) h[k] = 6000;
    check_real("fashion-mnist", "train", 60000, h, (double[]){0.2860}, 6e-5);
    for (int k = 0; k < 10; k++) h[k] = 1000;
    check_real("fashion-mnist", "test", 10000, h, (double[]){0.2868}, 6e-5);
  } else {
    printf("  fashion-mnist absent (apt-get install dataset-fashion-mnist): skipped\n");
  }
  char shared[1024];
  const char *env = getenv("TICKET_SHARED_DATA");
  const char *src = getenv("TICKET_SOURCE_DIR");
  if (env && *env) snprintf(shared, sizeof shared, "%s", env);
  else snprintf(shared, sizeof shared, "%s/../shared/data", src && *src ? src : TICKET_SOURCE_DIR);
  char dir[1200], spec[1300];
  /* MNIST: the canonical per-class counts; published means 0.1307 (train) and 0.1325 (test) */
  snprintf(dir, sizeof dir, "%s/mnist", shared);
  if (dir_exists(dir)) {
    static const long test_hist[10] = {980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009};
    static const long train_hist[10] = {5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949};
    snprintf(spec, sizeof spec, "mnist:%s", dir);
    check_real(spec, "test", 10000, test_hist, (double[]){0.1325}, 6e-5);
    check_real(spec, "train", 60000, train_hist, (double[]){0.1307}, 6e-5);
  } else {
    printf("  %s absent: MNIST checks skipped\n", dir);
  }
  /* CIFAR-10 (shared subset): test 1000 per class, means (0.4942, 0.4851, 0.4504) from its README;
   * train: the 2 batches present, 2000 per class */
  snprintf(dir, sizeof dir, "%s/cifar10", shared);
  if (dir_exists(dir)) {
    long h[10];
    snprintf(spec, sizeof spec, "cifar10:%s", dir);
    for (int k = 0; k < 10; k++) h[k] = 1000;
    check_real(spec, "test", 10000, h, (double[]){0.4942, 0.4851, 0.4504}, 6e-5);
    tk_dataset *d = NULL;
    tk_status st = tk_data_load(spec, "train", 0, 0, &d);
    CHECK_MSG(st == TK_OK, "%s train: %s", spec, tk_last_error());
    if (st == TK_OK) {
      long hh[10];
      double m[3];
      histogram_and_mean(d, hh, m);
      printf("  %s: %d images, channel means %.4f %.4f %.4f\n", d->name, d->n, m[0], m[1], m[2]);
      CHECK_MSG(d->n % 10000 == 0 && d->n >= 10000, "cifar10 train: %d images", d->n);
      for (int k = 0; k < 10; k++) CHECK_MSG(hh[k] == d->n / 10, "cifar10 train: class %d has %ld", k, hh[k]);
      g_real++;
    }
    tk_dataset_free(d);
  } else {
    printf("  %s absent: CIFAR-10 checks skipped\n", dir);
  }
}

int main(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(g_root, sizeof g_root, "%s/tk_test_data_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_root)) {
    perror("mkdtemp");
    return 1;
  }
  printf("synthetic IDX files\n");
  test_idx_roundtrip();
  test_idx_errors();
  printf("synthetic CIFAR files\n");
  test_cifar();
  rm_tree(g_root);
  printf("real data sets\n");
  test_real();
  printf("  %d real data sets checked\n", g_real);
  return check_done("test_data");
}
