/*
 * ONNX Runtime glue for com.int4onnx::MatMulInt4 (the only file that sees ORT types).
 *
 * Inputs and attributes: the schema in int4onnx.h (I4O_IN_* slots, I4O_ATTR_* names; docs/format.md
 * describes them). Output 0: Y [..., N] (type of A).
 * Every problem is returned as an ORT status naming the node; nothing here aborts.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "kernels.h"
#include "onnxruntime_c_api.h"

#if defined(_WIN32)
#define I4O_EXPORT __declspec(dllexport)
#else
#define I4O_EXPORT __attribute__((visibility("default")))
#endif

static const OrtApi *g_ort;


typedef struct op_variant {
  OrtCustomOp op; /* first member: callbacks receive &variant.op */
  ONNXTensorElementDataType a_type, scale_type;
} op_variant;

typedef struct op_kernel {
  int64_t K, N, bits, block_size;
  int quant_type, compute;
  int has_zp, has_bias, has_sscale, has_zscale;
  ONNXTensorElementDataType a_type;
  char name[160];
  i4o_prepared *prep; /* constant weights, prepared at session start; NULL = prepare per call */
  void *pool;         /* the library's own threads (i4o_set_threads), or NULL: ONNX Runtime's pool */
  int32_t trace_node;  /* the node's number in a trace (i4o_trace_record.node) */
} op_kernel;

static atomic_int g_kernels; /* kernels created: the next trace_node */

/* ---- status helpers ---- */

static OrtStatus *fail(OrtErrorCode code, const char *node, const char *fmt, ...) {
  char msg[768];
  int off = snprintf(msg, sizeof(msg), "MatMulInt4 node '%s': ", node ? node : "?");
  if (off < 0) off = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + off, sizeof(msg) - (size_t)off, fmt, ap);
  va_end(ap);
  return g_ort->CreateStatus(code, msg);
}

#define TRY(expr)                       \
  do {                                  \
    OrtStatus *st_ = (expr);            \
    if (st_) return st_;                \
  } while (0)

static void shape_str(const int64_t *d, size_t n, char *out, size_t len) {
  size_t off = 0;
  off += (size_t)snprintf(out + off, len - off, "[");
  for (size_t i = 0; i < n && off < len; i++)
    off += (size_t)snprintf(out + off, len - off, i ? ", %lld" : "%lld", (long long)d[i]);
  if (off < len) snprintf(out + off, len - off, "]");
}

static const char *type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "another type";
  }
}

/* Element type and shape of a tensor value (shape truncated to 8 dims for messages; n is the true rank). */
typedef struct tensor_info {
  ONNXTensorElementDataType type;
  size_t rank;
  int64_t dims[8];
  int64_t count; /* -1 if it overflows */
} tensor_info;

/* the tensor's type, rank, element count and first 8 dimensions; all of them into `all_dims` (room for 64)
 * where it is not NULL, and then a rank above 64 is left to the caller (count -1, dimensions unread) */
static OrtStatus *get_info_dims(const OrtValue *v, tensor_info *ti, int64_t *all_dims) {
  OrtTensorTypeAndShapeInfo *info = NULL;
  TRY(g_ort->GetTensorTypeAndShape(v, &info));
  OrtStatus *st = g_ort->GetTensorElementType(info, &ti->type);
  if (!st) st = g_ort->GetDimensionsCount(info, &ti->rank);
  int64_t local[64], *dims = all_dims ? all_dims : local;
  if (!st && ti->rank > 64) {
    g_ort->ReleaseTensorTypeAndShapeInfo(info);
    if (!all_dims) return g_ort->CreateStatus(ORT_INVALID_ARGUMENT, "tensor rank above 64");
    ti->count = -1; /* the caller names the tensor in its own message */
    return NULL;
  }
  if (!st) st = g_ort->GetDimensions(info, dims, ti->rank);
  g_ort->ReleaseTensorTypeAndShapeInfo(info);
  if (st) return st;
  ti->count = 1;
  for (size_t i = 0; i < ti->rank; i++) {
    if (i < 8) ti->dims[i] = dims[i];
    if (dims[i] < 0 || (dims[i] && ti->count > INT64_MAX / dims[i])) ti->count = -1;
    else if (ti->count >= 0) ti->count *= dims[i];
  }
  for (size_t i = 0; i < ti->rank; i++)
    if (dims[i] == 0) ti->count = 0; /* zero elements, whatever the other dimensions */
  return NULL;
}

static OrtStatus *get_info(const OrtValue *v, tensor_info *ti) { return get_info_dims(v, ti, NULL); }

/* An optional input given as a zero-element tensor counts as absent. Converters use this instead of
 * an empty input name in the middle of the input list, which crashes shape inference in ONNX Runtime
 * releases before 1.22. */
static int is_empty(const OrtValue *v) {
  tensor_info ti;
  OrtStatus *st = get_info(v, &ti);
  if (st) {
    g_ort->ReleaseStatus(st);
    return 0;
  }
  return ti.count == 0;
}

/* ---- weights: validate ORT tensors and build the kernel's view ---- */

typedef struct weight_inputs {
  const OrtValue *b, *scales, *zp, *sscale, *zscale;
} weight_inputs;

/* A float32 super-scale input ([N] or [1]) of int8 codes: its data and step (1 per column, 0 one for all). */
static OrtStatus *read_super_scale(const op_kernel *k, const OrtValue *v, const char *what, const float **out,
                                   size_t *step) {
  tensor_info ti;
  void *p = NULL;
  TRY(get_info(v, &ti));
  if (ti.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || (ti.count != k->N && ti.count != 1) || ti.rank > 2)
    return fail(ORT_INVALID_ARGUMENT, k->name, "%s must be float32 [N=%lld] or [1] (got %s, %lld elements)", what,
                (long long)k->N, type_name(ti.type), (long long)ti.count);
  *step = ti.count == k->N ? 1 : 0;
  TRY(g_ort->GetTensorMutableData((OrtValue *)v, &p));
  *out = (const float *)p;
  return NULL;
}

/* A per-block input (scales, real zero points): [N, n_blocks], or flat with N * n_blocks elements. */
static OrtStatus *check_per_block(const op_kernel *k, const tensor_info *ti, const char *what) {
  const int64_t nb = i4o_n_blocks(k->K, k->block_size);
  if (ti->count == k->N * nb && ti->rank <= 2 && (ti->rank < 2 || (ti->dims[0] == k->N && ti->dims[1] == nb)))
    return NULL;
  char s[128];
  shape_str(ti->dims, ti->rank < 8 ? ti->rank : 8, s, sizeof(s));
  return fail(ORT_INVALID_ARGUMENT, k->name, "%s have shape %s, expected [%lld, %lld] (one per block)", what, s,
              (long long)k->N, (long long)nb);
}

/* Real zero points [N, n_blocks] (float32 for float A, float16, or int8 codes times zero_points_scale),
 * widened to float32 into a new array *out (the caller frees it). */
static OrtStatus *read_real_zero_points(const op_kernel *k, const OrtValue *zp, const tensor_info *ti,
                                        const OrtValue *zscale, float **out) {
  const int64_t nb = i4o_n_blocks(k->K, k->block_size);
  const ONNXTensorElementDataType t = ti->type;
  if (t != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 && t != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 &&
      !(t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && k->a_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT))
    return fail(ORT_INVALID_ARGUMENT, k->name,
                "zero_points must be uint8 (integer, packed), or %s, float16 or int8 (real) (got %s)",
                type_name(k->a_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? k->a_type : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16),
                type_name(t));
  char what[48];
  snprintf(what, sizeof(what), "real zero_points (%s)", type_name(t));
  TRY(check_per_block(k, ti, what));
  const float *zs = NULL;
  size_t zs_step = 0;
  if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) {
    if (!zscale) return fail(ORT_INVALID_ARGUMENT, k->name, "int8 zero_points need input %d (%s, float [N] or [1])",
                             I4O_IN_ZERO_POINTS_SCALE, i4o_op_input_name(I4O_IN_ZERO_POINTS_SCALE));
    TRY(read_super_scale(k, zscale, i4o_op_input_name(I4O_IN_ZERO_POINTS_SCALE), &zs, &zs_step));
  } else if (zscale) {
    return fail(ORT_INVALID_ARGUMENT, k->name, "zero_points_scale given but zero_points are not int8");
  }
  void *p = NULL;
  TRY(g_ort->GetTensorMutableData((OrtValue *)zp, &p));
  const size_t n = (size_t)(k->N * nb);
  float *z = (float *)malloc(n * sizeof(float));
  if (!z) return fail(ORT_FAIL, k->name, "out of memory for %zu zero points", n);
  if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) i4o_half_to_float_n((const uint16_t *)p, z, (int64_t)n);
  else if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) memcpy(z, p, n * sizeof(float));
  else
    for (size_t i = 0; i < n; i++) z[i] = (float)((const int8_t *)p)[i] * zs[zs_step * (i / (size_t)nb)];
  *out = z;
  return NULL;
}

static OrtStatus *build_prepared(const op_kernel *k, const weight_inputs *in, i4o_prepared **out) {
  const int64_t nb = i4o_n_blocks(k->K, k->block_size);
  const int64_t blob = i4o_blob_bytes((int)k->bits, k->block_size);
  char s[128];
  tensor_info ti;
  void *p = NULL;

  TRY(get_info(in->b, &ti));
  if (ti.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    return fail(ORT_INVALID_ARGUMENT, k->name, "B must be uint8 (got %s)", type_name(ti.type));
  if (ti.rank != 3 || ti.dims[0] != k->N || ti.dims[1] != nb || ti.dims[2] != blob) {
    shape_str(ti.dims, ti.rank < 8 ? ti.rank : 8, s, sizeof(s));
    return fail(ORT_INVALID_ARGUMENT, k->name, "B has shape %s, expected [%lld, %lld, %lld] for K=%lld N=%lld bits=%lld block_size=%lld",
                s, (long long)k->N, (long long)nb, (long long)blob, (long long)k->K, (long long)k->N,
                (long long)k->bits, (long long)k->block_size);
  }
  TRY(g_ort->GetTensorMutableData((OrtValue *)in->b, &p));
  const uint8_t *data = (const uint8_t *)p;

  TRY(get_info(in->scales, &ti));
  TRY(check_per_block(k, &ti, "scales"));
  const ONNXTensorElementDataType stype = ti.type;
  if (stype != k->a_type && stype != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 && stype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
    return fail(ORT_INVALID_ARGUMENT, k->name, "scales must be %s, float16 or int8 (got %s)", type_name(k->a_type),
                type_name(stype));
  TRY(g_ort->GetTensorMutableData((OrtValue *)in->scales, &p));
  const void *scales_raw = p;

  const float *sscale = NULL;
  size_t sscale_step = 0; /* 1: one super-scale per column, 0: one for the whole tensor */
  const OrtValue *sscale_val = in->sscale && !is_empty(in->sscale) ? in->sscale : NULL;
  if (stype == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) {
    if (!sscale_val) return fail(ORT_INVALID_ARGUMENT, k->name, "int8 scales need input %d (%s, float [N] or [1])",
                                 I4O_IN_SCALES_SCALE, i4o_op_input_name(I4O_IN_SCALES_SCALE));
    TRY(read_super_scale(k, sscale_val, i4o_op_input_name(I4O_IN_SCALES_SCALE), &sscale, &sscale_step));
  } else if (sscale_val) {
    return fail(ORT_INVALID_ARGUMENT, k->name, "scales_scale given but scales are not int8");
  }

  const uint8_t *zp = NULL;
  float *zpf = NULL; /* real zero points widened to float32 once, here (freed once prepared) */
  const OrtValue *zscale_val = in->zscale && !is_empty(in->zscale) ? in->zscale : NULL;
  if (in->zp && !is_empty(in->zp)) {
    if (k->quant_type == I4O_QUANT_NF4) return fail(ORT_INVALID_ARGUMENT, k->name, "nf4 weights take no zero points");
    TRY(get_info(in->zp, &ti));
    if (ti.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
      const int64_t row = i4o_zero_point_row_bytes(nb, (int)k->bits);
      if (ti.count != k->N * row || ti.rank > 2 || (ti.rank == 2 && ti.dims[0] != k->N)) {
        shape_str(ti.dims, ti.rank < 8 ? ti.rank : 8, s, sizeof(s));
        return fail(ORT_INVALID_ARGUMENT, k->name, "zero_points must be uint8 [%lld, %lld] (got %s, shape %s)",
                    (long long)k->N, (long long)row, type_name(ti.type), s);
      }
      if (zscale_val) return fail(ORT_INVALID_ARGUMENT, k->name, "zero_points_scale given but zero_points are not int8");
      TRY(g_ort->GetTensorMutableData((OrtValue *)in->zp, &p));
      zp = (const uint8_t *)p;
    } else {
      TRY(read_real_zero_points(k, in->zp, &ti, zscale_val, &zpf));
    }
  } else if (zscale_val) {
    return fail(ORT_INVALID_ARGUMENT, k->name, "zero_points_scale given but there are no zero_points");
  }

  i4o_weights w = {k->K, k->N, k->block_size, (int)k->bits, k->quant_type, data, NULL, zp, NULL, NULL, 0, zpf};
  float *fs = NULL; /* float16 scales (of float or float16 A) widened to float32 once, here: kernels see float32 */
  if (stype == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8) { /* i4o_prepare expands them */
    w.scales_int8 = (const int8_t *)scales_raw;
    w.scales_scale = sscale;
    w.n_scales_scale = sscale_step ? k->N : 1;
  } else if (stype == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    const size_t n_scales = (size_t)(k->N * nb);
    fs = (float *)malloc(n_scales * sizeof(float));
    if (!fs) {
      free(zpf);
      return fail(ORT_FAIL, k->name, "out of memory for %zu scales", n_scales);
    }
    i4o_half_to_float_n((const uint16_t *)scales_raw, fs, (int64_t)n_scales);
    w.scales = fs;
  } else {
    w.scales = (const float *)scales_raw;
  }
  i4o_wdesc d = i4o_wdesc_make(k->K, k->N, (int)k->bits, k->block_size, k->quant_type);
  d.zpf = zpf;
  char err[256] = "";
  const i4o_kernel *kern = i4o_choose_kernel(k->compute, &d, err, sizeof(err));
  if (!kern) {
    free(fs);
    free(zpf);
    return fail(ORT_FAIL, k->name, "%s", err);
  }
  int rc = i4o_prepare(&w, kern, out);
  free(fs);
  free(zpf);
  if (rc) return fail(ORT_FAIL, k->name, "preparing weights failed (%s)", rc == I4O_E_NOMEM ? "out of memory" : "invalid weights");
  if (k->pool) (*out)->min_task_macs = i4o_min_task_macs(1); /* i4o_prepare set ONNX Runtime's pool's */
  return NULL;
}

/* ---- kernel lifetime ---- */

static int has_input(const OrtKernelInfo *info, size_t n_inputs, size_t i) {
  if (i >= n_inputs) return 0;
  char name[256];
  size_t len = sizeof(name);
  OrtStatus *st = g_ort->KernelInfo_GetInputName(info, i, name, &len);
  if (st) { /* names longer than the buffer still mean "present" */
    g_ort->ReleaseStatus(st);
    return 1;
  }
  return name[0] != '\0';
}

static OrtStatus *read_int_attr(const OrtKernelInfo *info, const op_kernel *k, const char *attr, int64_t *out) {
  OrtStatus *st = g_ort->KernelInfoGetAttribute_int64(info, attr, out);
  if (st) {
    g_ort->ReleaseStatus(st);
    return fail(ORT_INVALID_ARGUMENT, k->name, "required int attribute '%s' is missing or not an int", attr);
  }
  return NULL;
}

/* 1 if the node has attribute `attr` of a numeric type (so it is not the string we want). */
static int has_numeric_attr(const OrtKernelInfo *info, const char *attr) {
  int64_t i;
  float f;
  OrtStatus *st = g_ort->KernelInfoGetAttribute_int64(info, attr, &i);
  if (!st) return 1;
  g_ort->ReleaseStatus(st);
  st = g_ort->KernelInfoGetAttribute_float(info, attr, &f);
  if (!st) return 1;
  g_ort->ReleaseStatus(st);
  return 0;
}

/* Optional string attribute; absent -> def. A value that does not fit `out` is cut short (with
 * "..." at the end) so that it fails the caller's comparison and still shows in the message. */
static OrtStatus *read_str_attr(const OrtKernelInfo *info, const op_kernel *k, const char *attr, char *out,
                                size_t len, const char *def) {
  size_t n = 0;
  OrtStatus *st = g_ort->KernelInfoGetAttribute_string(info, attr, NULL, &n);
  if (st) { /* absent, or not a string */
    g_ort->ReleaseStatus(st);
    if (has_numeric_attr(info, attr))
      return fail(ORT_INVALID_ARGUMENT, k->name, "attribute '%s' must be a string", attr);
    snprintf(out, len, "%s", def);
    return NULL;
  }
  if (n <= len) {
    n = len;
    st = g_ort->KernelInfoGetAttribute_string(info, attr, out, &n);
    if (st) return st;
    out[len - 1] = '\0';
    return NULL;
  }
  char *tmp = (char *)malloc(n);
  if (!tmp) return fail(ORT_FAIL, k->name, "out of memory reading attribute '%s'", attr);
  st = g_ort->KernelInfoGetAttribute_string(info, attr, tmp, &n);
  if (!st) snprintf(out, len, "%.*s...", (int)(len - 4), tmp);
  free(tmp);
  return st;
}

static void ORT_API_CALL kernel_destroy(void *p) {
  op_kernel *k = (op_kernel *)p;
  if (!k) return;
  i4o_prepared_free(k->prep);
  i4o_pool_release(k->pool);
  free(k);
}

static OrtStatus *ORT_API_CALL kernel_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                             void **out) {
  (void)api;
  const op_variant *v = (const op_variant *)op;
  *out = NULL;
  op_kernel *k = (op_kernel *)calloc(1, sizeof(*k));
  if (!k) return g_ort->CreateStatus(ORT_FAIL, "MatMulInt4: out of memory");
  k->a_type = v->a_type;
  k->trace_node = atomic_fetch_add_explicit(&g_kernels, 1, memory_order_relaxed);
  size_t len = sizeof(k->name);
  OrtStatus *st = g_ort->KernelInfo_GetNodeName(info, k->name, &len);
  if (st) { /* longer than the buffer (len now holds the size needed), or no name */
    g_ort->ReleaseStatus(st);
    snprintf(k->name, sizeof(k->name), "<unnamed>");
    char *full = len > sizeof(k->name) ? (char *)malloc(len) : NULL;
    if (full) {
      st = g_ort->KernelInfo_GetNodeName(info, full, &len);
      if (!st) snprintf(k->name, sizeof(k->name), "%.*s...", (int)sizeof(k->name) - 4, full);
      else g_ort->ReleaseStatus(st);
      free(full);
    }
  }
  if (!k->name[0]) snprintf(k->name, sizeof(k->name), "<unnamed>");

#define CHECK(expr)         \
  do {                      \
    st = (expr);            \
    if (st) goto error;     \
  } while (0)
  CHECK(read_int_attr(info, k, i4o_op_attr_name(I4O_ATTR_K), &k->K));
  CHECK(read_int_attr(info, k, i4o_op_attr_name(I4O_ATTR_N), &k->N));
  CHECK(read_int_attr(info, k, i4o_op_attr_name(I4O_ATTR_BITS), &k->bits));
  CHECK(read_int_attr(info, k, i4o_op_attr_name(I4O_ATTR_BLOCK_SIZE), &k->block_size));
  if (k->bits != 4 && k->bits != 8) CHECK(fail(ORT_INVALID_ARGUMENT, k->name, "bits=%lld, expected 4 or 8", (long long)k->bits));
  if (i4o_check_layout(k->K, k->N, (int)k->bits, k->block_size))
    CHECK(fail(ORT_INVALID_ARGUMENT, k->name,
               "invalid K=%lld N=%lld block_size=%lld (K, N in 1..2^31; block_size a multiple of 16 in 16..65536)",
               (long long)k->K, (long long)k->N, (long long)k->block_size));
  char text[32];
  CHECK(read_str_attr(info, k, i4o_op_attr_name(I4O_ATTR_QUANT_TYPE), text, sizeof(text), "int"));
  if (strcmp(text, "int") == 0) k->quant_type = I4O_QUANT_INT;
  else if (strcmp(text, "nf4") == 0) k->quant_type = I4O_QUANT_NF4;
  else CHECK(fail(ORT_INVALID_ARGUMENT, k->name, "quant_type='%s', expected 'int' or 'nf4'", text));
  if (k->quant_type == I4O_QUANT_NF4 && k->bits != 4) CHECK(fail(ORT_INVALID_ARGUMENT, k->name, "nf4 needs bits=4"));
  CHECK(read_str_attr(info, k, i4o_op_attr_name(I4O_ATTR_COMPUTE), text, sizeof(text), "fp32"));
  if (strcmp(text, "fp32") == 0) k->compute = I4O_COMPUTE_FP32;
  else if (strcmp(text, "int8") == 0) k->compute = I4O_COMPUTE_INT8;
  else CHECK(fail(ORT_INVALID_ARGUMENT, k->name, "compute='%s', expected 'fp32' or 'int8'", text));

  size_t n_inputs = 0;
  CHECK(g_ort->KernelInfo_GetInputCount(info, &n_inputs));
  k->has_zp = has_input(info, n_inputs, I4O_IN_ZERO_POINTS);
  k->has_bias = has_input(info, n_inputs, I4O_IN_BIAS);
  k->has_sscale = has_input(info, n_inputs, I4O_IN_SCALES_SCALE);
  k->has_zscale = has_input(info, n_inputs, I4O_IN_ZERO_POINTS_SCALE);

  /* Prepare now if every weight input is a constant initializer. */
  weight_inputs in = {NULL, NULL, NULL, NULL, NULL};
  int all_const = 1, is_const = 0;
  const size_t idx[5] = {I4O_IN_B, I4O_IN_SCALES, I4O_IN_ZERO_POINTS, I4O_IN_SCALES_SCALE, I4O_IN_ZERO_POINTS_SCALE};
  const OrtValue **dst[5] = {&in.b, &in.scales, &in.zp, &in.sscale, &in.zscale};
  for (int i = 0; i < 5; i++) {
    if ((idx[i] == I4O_IN_ZERO_POINTS && !k->has_zp) || (idx[i] == I4O_IN_SCALES_SCALE && !k->has_sscale) ||
        (idx[i] == I4O_IN_ZERO_POINTS_SCALE && !k->has_zscale))
      continue;
    CHECK(g_ort->KernelInfoGetConstantInput_tensor(info, idx[i], &is_const, dst[i]));
    if (!is_const) all_const = 0;
  }
  k->pool = i4o_pool_acquire(); /* before build_prepared: the task size depends on the pool */
  if (all_const) CHECK(build_prepared(k, &in, &k->prep));
  *out = k;
  return NULL;
error:
  kernel_destroy(k);
  return st;
#undef CHECK
}

/* ---- compute ---- */

typedef struct pfor_ctx {
  OrtKernelContext *ctx;
  void *pool; /* the library's own threads, or NULL */
  int32_t call, node, section; /* call < 0: no trace */
} pfor_ctx;

/* a task run under a trace (trace.c): its span on the thread that runs it */
typedef struct traced_section {
  void (*fn)(void *, size_t);
  void *data;
  const pfor_ctx *pc;
  int32_t n;
} traced_section;

static void traced_task(void *p, size_t i) {
  const traced_section *t = (const traced_section *)p;
  const int64_t t0 = i4o_trace_now();
  t->fn(t->data, i);
  i4o_trace_add(t->pc->call, t->pc->node, t->pc->section, (int32_t)i, t->n, t0, i4o_trace_now());
}

static void ort_parallel_for(void *c, void (*fn)(void *, size_t), size_t n, void *data) {
  pfor_ctx *pc = (pfor_ctx *)c;
  traced_section t = {fn, data, pc, (int32_t)n};
  const int64_t t0 = pc->call >= 0 ? i4o_trace_now() : 0;
  if (pc->call >= 0) {
    fn = traced_task;
    data = &t;
  }
  if (n <= 1) {
    if (n) fn(data, 0);
  } else if (!pc->pool || i4o_pool_run(pc->pool, fn, n, data)) {
    OrtStatus *st = g_ort->KernelContext_ParallelFor(pc->ctx, fn, n, 0, data);
    if (st) { /* no thread pool: run inline */
      g_ort->ReleaseStatus(st);
      i4o_serial_for(NULL, fn, n, data);
    }
  }
  if (pc->call >= 0) i4o_trace_add(pc->call, pc->node, pc->section++, -2, (int32_t)n, t0, i4o_trace_now());
}

static OrtStatus *ORT_API_CALL kernel_compute(void *p, OrtKernelContext *ctx) {
  op_kernel *k = (op_kernel *)p;
  const int32_t call = i4o_trace_call();
  const int64_t t_entry = call >= 0 ? i4o_trace_now() : 0;
  const OrtValue *a_val = NULL, *bias_val = NULL;
  OrtStatus *st = NULL;
  tensor_info ti;
  int64_t dims[64];
  char s[128];

  TRY(g_ort->KernelContext_GetInput(ctx, I4O_IN_A, &a_val));
  if (!a_val) return fail(ORT_INVALID_ARGUMENT, k->name, "input A is missing");
  TRY(get_info_dims(a_val, &ti, dims));
  if (ti.type != k->a_type) return fail(ORT_INVALID_ARGUMENT, k->name, "A is %s, this kernel expects %s", type_name(ti.type), type_name(k->a_type));
  if (ti.rank < 1 || ti.rank > 64) return fail(ORT_INVALID_ARGUMENT, k->name, "A must have rank 1..64 (got %zu)", ti.rank);
  if (dims[ti.rank - 1] != k->K) {
    shape_str(dims, ti.rank, s, sizeof(s));
    return fail(ORT_INVALID_ARGUMENT, k->name, "A has shape %s; its last dimension must be K=%lld", s, (long long)k->K);
  }
  if (ti.count < 0) return fail(ORT_INVALID_ARGUMENT, k->name, "A has too many elements");
  const int64_t M = ti.count / k->K;
  if (M > INT64_MAX / k->N) return fail(ORT_INVALID_ARGUMENT, k->name, "output would have too many elements");

  const float *bias = NULL;
  if (k->has_bias) {
    TRY(g_ort->KernelContext_GetInput(ctx, I4O_IN_BIAS, &bias_val));
    if (bias_val && is_empty(bias_val)) bias_val = NULL;
    if (bias_val) {
      tensor_info bi;
      TRY(get_info(bias_val, &bi));
      if (bi.type != k->a_type || bi.count != k->N || bi.rank != 1)
        return fail(ORT_INVALID_ARGUMENT, k->name, "bias must be [N=%lld] of A's type %s (got %s, %lld elements, rank %zu)",
                    (long long)k->N, type_name(k->a_type), type_name(bi.type), (long long)bi.count, bi.rank);
    }
  }

  dims[ti.rank - 1] = k->N;
  OrtValue *y_val = NULL;
  TRY(g_ort->KernelContext_GetOutput(ctx, 0, dims, ti.rank, &y_val));
  if (M == 0) return NULL;

  i4o_prepared *prep = k->prep, *owned = NULL;
  if (!prep) { /* weights are graph inputs or computed: prepare for this call */
    weight_inputs in = {NULL, NULL, NULL, NULL, NULL};
    TRY(g_ort->KernelContext_GetInput(ctx, I4O_IN_B, &in.b));
    TRY(g_ort->KernelContext_GetInput(ctx, I4O_IN_SCALES, &in.scales));
    if (k->has_zp) TRY(g_ort->KernelContext_GetInput(ctx, I4O_IN_ZERO_POINTS, &in.zp));
    if (k->has_sscale) TRY(g_ort->KernelContext_GetInput(ctx, I4O_IN_SCALES_SCALE, &in.sscale));
    if (k->has_zscale) TRY(g_ort->KernelContext_GetInput(ctx, I4O_IN_ZERO_POINTS_SCALE, &in.zscale));
    if (!in.b || !in.scales) return fail(ORT_INVALID_ARGUMENT, k->name, "inputs B and scales are required");
    TRY(build_prepared(k, &in, &owned));
    prep = owned;
  }

  void *a_raw = NULL, *y_raw = NULL, *b_raw = NULL;
  st = g_ort->GetTensorMutableData((OrtValue *)a_val, &a_raw);
  if (!st) st = g_ort->GetTensorMutableData(y_val, &y_raw);
  if (!st && bias_val) st = g_ort->GetTensorMutableData((OrtValue *)bias_val, &b_raw);
  if (st) {
    i4o_prepared_free(owned);
    return st;
  }

  const float *A = (const float *)a_raw;
  float *Y = (float *)y_raw;
  bias = (const float *)b_raw;
  float *a32 = NULL, *y32 = NULL, *b32 = NULL;
  if (k->a_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    a32 = (float *)malloc((size_t)(M * k->K) * sizeof(float));
    y32 = (float *)malloc((size_t)(M * k->N) * sizeof(float));
    b32 = b_raw ? (float *)malloc((size_t)k->N * sizeof(float)) : NULL;
    if (!a32 || !y32 || (b_raw && !b32)) {
      st = fail(ORT_FAIL, k->name, "out of memory converting float16 activations");
      goto done;
    }
    i4o_half_to_float_n((const uint16_t *)a_raw, a32, M * k->K);
    if (b32) i4o_half_to_float_n((const uint16_t *)b_raw, b32, k->N);
    A = a32;
    Y = y32;
    bias = b32;
  }
  pfor_ctx pc = {ctx, k->pool, call, k->trace_node, 0};
  if (i4o_run(prep, A, M, bias, Y, ort_parallel_for, &pc) != I4O_OK) {
    st = fail(ORT_FAIL, k->name, "out of memory for the activation workspace (M=%lld)", (long long)M);
    goto done;
  }
  if (y32)
    i4o_float_to_half_n(y32, (uint16_t *)y_raw, M * k->N);
done:
  free(a32);
  free(y32);
  free(b32);
  i4o_prepared_free(owned);
  if (call >= 0 && !st) i4o_trace_add(call, k->trace_node, -1, -1, (int32_t)(M < INT32_MAX ? M : INT32_MAX), t_entry, i4o_trace_now());
  return st;
}

/* ---- shape inference: Y = A with the last dimension replaced by N ---- */

static OrtStatus *ORT_API_CALL infer_shape(const OrtCustomOp *op, OrtShapeInferContext *ctx) {
  (void)op;
  OrtTensorTypeAndShapeInfo *in_info = NULL; /* owned by ctx: never released here */
  TRY(g_ort->ShapeInferContext_GetInputTypeShape(ctx, I4O_IN_A, &in_info));
  const OrtOpAttr *attr = NULL;
  TRY(g_ort->ShapeInferContext_GetAttribute(ctx, i4o_op_attr_name(I4O_ATTR_N), &attr));
  int64_t N = 0;
  size_t got = 0;
  if (!attr) return g_ort->CreateStatus(ORT_INVALID_ARGUMENT, "MatMulInt4: missing attribute N");
  TRY(g_ort->ReadOpAttr(attr, ORT_OP_ATTR_INT, &N, sizeof(N), &got));
  if (N < 1 || N > ((int64_t)1 << 31))
    return g_ort->CreateStatus(ORT_INVALID_ARGUMENT, "MatMulInt4: attribute N must be in 1..2^31");
  ONNXTensorElementDataType type;
  size_t rank = 0;
  TRY(g_ort->GetTensorElementType(in_info, &type));
  TRY(g_ort->GetDimensionsCount(in_info, &rank));
  if (rank < 1 || rank > 64) return g_ort->CreateStatus(ORT_INVALID_ARGUMENT, "MatMulInt4: A must have rank 1..64");
  int64_t dims[64];
  const char *sym[64];
  TRY(g_ort->GetDimensions(in_info, dims, rank));
  TRY(g_ort->GetSymbolicDimensions(in_info, sym, rank));
  /* ORT writes an unnamed dimension as its integer value, so an unknown one (-1) needs a fresh
   * name to stay unknown: "int4onnx_unk_<n>", unique per process. */
  static unsigned long counter; /* racy increments only risk reusing a name for a different unknown */
  char names[64][32];
  for (size_t i = 0; i + 1 < rank; i++) {
    if (dims[i] < 0 && (!sym[i] || !sym[i][0])) {
      snprintf(names[i], sizeof(names[i]), "int4onnx_unk_%lu", ++counter);
      sym[i] = names[i];
    }
  }
  dims[rank - 1] = N;
  sym[rank - 1] = "";
  OrtTensorTypeAndShapeInfo *out = NULL;
  TRY(g_ort->CreateTensorTypeAndShapeInfo(&out));
  OrtStatus *st = g_ort->SetTensorElementType(out, type);
  if (!st) st = g_ort->SetDimensions(out, dims, rank);
  if (!st) st = g_ort->SetSymbolicDimensions(out, sym, rank);
  if (!st) st = g_ort->ShapeInferContext_SetOutputTypeShape(ctx, 0, out);
  g_ort->ReleaseTensorTypeAndShapeInfo(out);
  return st;
}

/* ---- OrtCustomOp callbacks ---- */

static const char *ORT_API_CALL op_name(const OrtCustomOp *op) { (void)op; return I4O_OP_NAME; }
static const char *ORT_API_CALL op_ep(const OrtCustomOp *op) { (void)op; return NULL; }
static size_t ORT_API_CALL op_n_inputs(const OrtCustomOp *op) { (void)op; return I4O_IN_COUNT; }
static size_t ORT_API_CALL op_n_outputs(const OrtCustomOp *op) { (void)op; return 1; }

static ONNXTensorElementDataType ORT_API_CALL op_input_type(const OrtCustomOp *op, size_t i) {
  const op_variant *v = (const op_variant *)op;
  switch (i) {
    case I4O_IN_A: case I4O_IN_BIAS: return v->a_type;
    case I4O_IN_SCALES: return v->scale_type;
    case I4O_IN_SCALES_SCALE: case I4O_IN_ZERO_POINTS_SCALE: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    /* integer (uint8) or real (float32, float16, int8) zero points: any type here, build_prepared checks it */
    case I4O_IN_ZERO_POINTS: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  }
}

static ONNXTensorElementDataType ORT_API_CALL op_output_type(const OrtCustomOp *op, size_t i) {
  (void)i;
  return ((const op_variant *)op)->a_type;
}

static OrtCustomOpInputOutputCharacteristic ORT_API_CALL op_input_char(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i < I4O_IN_REQUIRED ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

static OrtCustomOpInputOutputCharacteristic ORT_API_CALL op_output_char(const OrtCustomOp *op, size_t i) {
  (void)op; (void)i;
  return INPUT_OUTPUT_REQUIRED;
}

static OrtMemType ORT_API_CALL op_mem_type(const OrtCustomOp *op, size_t i) {
  (void)op; (void)i;
  return OrtMemTypeDefault;
}

static int ORT_API_CALL op_variadic_min(const OrtCustomOp *op) { (void)op; return 1; }
static int ORT_API_CALL op_variadic_homog(const OrtCustomOp *op) { (void)op; return 0; }
static int ORT_API_CALL op_start_version(const OrtCustomOp *op) { (void)op; return I4O_OP_VERSION; }
static int ORT_API_CALL op_end_version(const OrtCustomOp *op) { (void)op; return INT_MAX; }

static void *ORT_API_CALL legacy_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info) {
  void *k = NULL;
  OrtStatus *st = kernel_create(op, api, info, &k);
  if (st) g_ort->ReleaseStatus(st);
  return k;
}

static void ORT_API_CALL legacy_compute(void *k, OrtKernelContext *ctx) {
  OrtStatus *st = k ? kernel_compute(k, ctx) : NULL;
  if (st) g_ort->ReleaseStatus(st);
}

static void init_variant(op_variant *v, ONNXTensorElementDataType a, ONNXTensorElementDataType s) {
  memset(v, 0, sizeof(*v));
  OrtCustomOp *o = &v->op;
  o->version = ORT_API_VERSION;
  o->CreateKernel = legacy_create;
  o->GetName = op_name;
  o->GetExecutionProviderType = op_ep;
  o->GetInputType = op_input_type;
  o->GetInputTypeCount = op_n_inputs;
  o->GetOutputType = op_output_type;
  o->GetOutputTypeCount = op_n_outputs;
  o->KernelCompute = legacy_compute;
  o->KernelDestroy = kernel_destroy;
  o->GetInputCharacteristic = op_input_char;
  o->GetOutputCharacteristic = op_output_char;
  o->GetInputMemoryType = op_mem_type;
  o->GetVariadicInputMinArity = op_variadic_min;
  o->GetVariadicInputHomogeneity = op_variadic_homog;
  o->GetVariadicOutputMinArity = op_variadic_min;
  o->GetVariadicOutputHomogeneity = op_variadic_homog;
  o->CreateKernelV2 = kernel_create;
  o->KernelComputeV2 = kernel_compute;
  o->InferOutputShapeFn = infer_shape;
  o->GetStartVersion = op_start_version;
  o->GetEndVersion = op_end_version;
  v->a_type = a;
  v->scale_type = s;
}

/* One kernel per (activation type, scale type): float/float16 activations, scales of the same type or int8,
 * and float16 scales with float activations (4.5 bits per weight at block 32 for float32 models). */
#define N_VARIANTS 5
static op_variant g_variants[N_VARIANTS];
static OrtCustomOpDomain *g_domain; /* lives for the process, as sessions may outlive their options */

I4O_EXPORT OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *api_base) {
  if (!api_base) return NULL;
  const OrtApi *api = api_base->GetApi(ORT_API_VERSION);
  if (!api) { /* runtime older than the headers we were built with: cannot report through it */
    fprintf(stderr, "int4onnx: this ONNX Runtime does not provide C API version %d\n", ORT_API_VERSION);
    return NULL;
  }
  if (!options) return api->CreateStatus(ORT_INVALID_ARGUMENT, "int4onnx: RegisterCustomOps: session options are NULL");
  g_ort = api;
  if (!g_domain) {
    OrtStatus *st = g_ort->CreateCustomOpDomain(I4O_DOMAIN, &g_domain);
    if (st) return st;
    init_variant(&g_variants[0], ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    init_variant(&g_variants[1], ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8);
    init_variant(&g_variants[2], ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
    init_variant(&g_variants[3], ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8);
    init_variant(&g_variants[4], ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
    for (int i = 0; i < N_VARIANTS; i++) {
      st = g_ort->CustomOpDomain_Add(g_domain, &g_variants[i].op);
      if (st) {
        g_ort->ReleaseCustomOpDomain(g_domain);
        g_domain = NULL;
        return st;
      }
    }
  }
  return g_ort->AddCustomOpDomain(options, g_domain);
}
