/* .npy reader/writer for int4onnx_run (see npy.h). Format: the magic "\x93NUMPY", a major and minor
 * version byte, a little-endian header length (2 bytes in version 1, 4 in versions 2 and 3), then a
 * Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with spaces
 * and a newline, then the raw data. */
#include "npy.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t len, const char *path, const char *what) {
  snprintf(err, len, "%s: %s", path, what);
  return -1;
}

static size_t itemsize_of(const char *descr) {
  static const struct {
    const char *descr;
    size_t size;
  } kTypes[] = {{"<f4", 4}, {"<f8", 8}, {"<f2", 2}, {"<i8", 8}, {"<i4", 4}, {"<i2", 2}, {"|i1", 1},
                {"<u8", 8}, {"<u4", 4}, {"<u2", 2}, {"|u1", 1}, {"|b1", 1}};
  for (size_t i = 0; i < sizeof(kTypes) / sizeof(kTypes[0]); i++)
    if (strcmp(descr, kTypes[i].descr) == 0) return kTypes[i].size;
  return 0;
}

/* The value after 'key': in the header dict, or NULL. */
static const char *dict_value(const char *hdr, const char *key) {
  char pat[32];
  snprintf(pat, sizeof(pat), "'%s'", key);
  const char *p = strstr(hdr, pat);
  if (!p) return NULL;
  p = strchr(p + strlen(pat), ':');
  if (!p) return NULL;
  p++;
  while (*p == ' ') p++;
  return p;
}

int npy_read(const char *path, npy_array *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, err_len, "%s: %s", path, strerror(errno));
    return -1;
  }
  unsigned char pre[12];
  char *hdr = NULL;
  int rc = -1;
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
    fail(err, err_len, path, "not a .npy file (bad magic)");
    goto done;
  }
  size_t hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
  if (pre[6] >= 2) { /* versions 2 and 3: 4-byte header length */
    if (fread(pre + 10, 1, 2, f) != 2) {
      fail(err, err_len, path, "truncated header");
      goto done;
    }
    hlen |= ((size_t)pre[10] << 16) | ((size_t)pre[11] << 24);
  }
  if (hlen == 0 || hlen > (1u << 20)) {
    fail(err, err_len, path, "implausible header length");
    goto done;
  }
  hdr = (char *)malloc(hlen + 1);
  if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
    fail(err, err_len, path, "truncated header");
    goto done;
  }
  hdr[hlen] = '\0';
  const char *d = dict_value(hdr, "descr"), *fo = dict_value(hdr, "fortran_order"), *sh = dict_value(hdr, "shape");
  if (!d || !fo || !sh || *d != '\'' || *sh != '(') {
    fail(err, err_len, path, "header lacks descr, fortran_order or shape");
    goto done;
  }
  size_t n = 0;
  for (d++; *d && *d != '\'' && n + 1 < sizeof(out->descr); d++) out->descr[n++] = *d;
  out->descr[n] = '\0';
  out->itemsize = itemsize_of(out->descr);
  if (!out->itemsize) {
    snprintf(err, err_len, "%s: unsupported dtype '%s' (little-endian bool, int, uint or float)", path, out->descr);
    goto done;
  }
  if (strncmp(fo, "False", 5) != 0) {
    fail(err, err_len, path, "Fortran-order arrays are not supported (save a C-contiguous array)");
    goto done;
  }
  out->count = 1;
  for (const char *p = sh + 1; *p && *p != ')';) {
    while (*p == ' ' || *p == ',') p++;
    if (*p == ')') break;
    if (!isdigit((unsigned char)*p) || out->rank == NPY_MAX_RANK) {
      fail(err, err_len, path, "bad shape in header");
      goto done;
    }
    char *end;
    const long long v = strtoll(p, &end, 10);
    out->shape[out->rank++] = v;
    out->count *= (size_t)v;
    p = end;
  }
  const size_t bytes = out->count * out->itemsize;
  out->data = malloc(bytes ? bytes : 1);
  if (!out->data) {
    fail(err, err_len, path, "out of memory");
    goto done;
  }
  if (fread(out->data, 1, bytes, f) != bytes) {
    fail(err, err_len, path, "file shorter than its shape says");
    goto done;
  }
  rc = 0;
done:
  free(hdr);
  fclose(f);
  if (rc) npy_free(out);
  return rc;
}

int npy_write(const char *path, const char *descr, const int64_t *shape, size_t rank, const void *data,
              size_t itemsize, char *err, size_t err_len) {
  char dict[512];
  int off = snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
  size_t count = 1;
  for (size_t i = 0; i < rank && off > 0 && (size_t)off < sizeof(dict); i++) {
    off += snprintf(dict + off, sizeof(dict) - (size_t)off, "%lld,%s", (long long)shape[i], i + 1 < rank ? " " : "");
    count *= (size_t)shape[i];
  }
  if (off < 0 || (size_t)off + 8 >= sizeof(dict)) return fail(err, err_len, path, "shape too long for the header");
  off += snprintf(dict + off, sizeof(dict) - (size_t)off, "), }");
  /* version 1.0: magic (6) + version (2) + length (2) + dict, padded with spaces to a multiple of 64, then '\n' */
  size_t total = 10 + (size_t)off + 1;
  const size_t pad = (64 - total % 64) % 64;
  const size_t hlen = (size_t)off + pad + 1;
  FILE *f = fopen(path, "wb");
  if (!f) {
    snprintf(err, err_len, "%s: %s", path, strerror(errno));
    return -1;
  }
  const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xFF),
                                 (unsigned char)(hlen >> 8)};
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)off, f) == (size_t)off;
  for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  ok = ok && fwrite(data, 1, count * itemsize, f) == count * itemsize;
  if (fclose(f) != 0) ok = 0;
  if (!ok) {
    remove(path);
    return fail(err, err_len, path, "write failed");
  }
  return 0;
}

void npy_free(npy_array *a) {
  free(a->data);
  a->data = NULL;
}
