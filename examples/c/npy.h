/* Minimal reader and writer of NumPy .npy files (format versions 1.0-3.0, little-endian, C order):
 * the input/output format of int4onnx_run. numpy.save writes what npy_read reads, numpy.load reads
 * what npy_write writes. */
#ifndef INT4ONNX_EXAMPLE_NPY_H_
#define INT4ONNX_EXAMPLE_NPY_H_

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_RANK 16

typedef struct npy_array {
  char descr[8];     /* numpy dtype string, e.g. "<f4", "<i8", "|u1", "|b1" */
  size_t itemsize;
  size_t rank;
  int64_t shape[NPY_MAX_RANK];
  size_t count;      /* product of shape */
  void *data;        /* count * itemsize bytes, owned (free with npy_free) */
} npy_array;

/* 0 on success; otherwise writes a one-line reason into err. */
int npy_read(const char *path, npy_array *out, char *err, size_t err_len);
int npy_write(const char *path, const char *descr, const int64_t *shape, size_t rank, const void *data,
              size_t itemsize, char *err, size_t err_len);
void npy_free(npy_array *a);

#endif
