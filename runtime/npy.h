/* npy.h -- NumPy .npy files (version 1.0/2.0, little-endian, C order). */
#ifndef TK_NPY_H
#define TK_NPY_H

#include "util.h"

/* Reads float32 or float64 (converted) arrays; *data is malloc'd. ndim <= 8. */
tk_status tk_npy_read_f32(const char *path, int *ndim, int64_t shape[8], float **data);
/* Reads integer arrays (int8..int64, uint8) as int. */
tk_status tk_npy_read_int(const char *path, int *ndim, int64_t shape[8], int **data);
/* Writes float32; atomic. */
tk_status tk_npy_write_f32(const char *path, int ndim, const int64_t *shape, const float *data);

#endif
