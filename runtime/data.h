/* data.h -- data sets: IDX (MNIST, Fashion-MNIST; gzip or plain) and CIFAR-10/100 binary
 * (plain or xz).  Images become float32 in [0, 1], NCHW; labels int.
 *
 * Specs: "fashion-mnist" (Debian's /usr/share/datasets/fashion-mnist), "fashion-mnist:DIR",
 * "mnist:DIR", "cifar10:DIR", "cifar100:DIR".  A missing, truncated or malformed file is a
 * one-line error naming the file and the field. */
#ifndef TK_DATA_H
#define TK_DATA_H

#include "util.h"

typedef struct {
  char *name;      /* e.g. "fashion-mnist/test" */
  int n, c, h, w, classes;
  float *x;        /* (n, c, h, w) in [0, 1] */
  int *y;          /* (n) */
} tk_dataset;

/* split: "train" or "test"; limit <= 0 means all. offset skips the first images. */
tk_status tk_data_load(const char *spec, const char *split, long offset, long limit, tk_dataset **out);
void tk_dataset_free(tk_dataset *d);
/* Images [from, from+count) become a new data set (a validation split, --subset). */
tk_status tk_dataset_slice(const tk_dataset *d, int from, int count, tk_dataset **out);

#endif
