/* Scalar reference kernels: the oracle of the kernel tests and the fallback on any CPU. */
#include "kernels.h"

/* fp32 path: dequantize each element and accumulate in float, in K order. */
static void scalar_fp32_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const float *cb = i4o_nf4_codebook();
  for (int64_t m = m0; m < m1; m++) {
    const float *a = c->A + m * c->lda;
    for (int64_t n = n0; n < n1; n++) {
      float acc = 0.0f;
      for (int64_t b = 0; b < w->n_blocks; b++) {
        const float s = w->scales[n * w->n_blocks + b];
        const float z = i4o_zero_point_f(w, n, b); /* integer zero points are exact in float */
        const int64_t k0 = b * w->block_size;
        const int64_t k1 = k0 + w->block_size < w->K ? k0 + w->block_size : w->K;
        for (int64_t k = k0; k < k1; k++) {
          const int code = i4o_code(w, n, k);
          const float v = w->quant_type == I4O_QUANT_NF4 ? cb[code] * s : ((float)code - z) * s;
          acc += a[k] * v;
        }
      }
      c->C[m * c->ldc + n] = acc + (c->bias ? c->bias[n] : 0.0f);
    }
  }
}

/* int8 path: exact int32 dot per block, then acc += dot * (scale_a * scale_w) in block order. Integer zero
 * points are subtracted in int32 (dot - zp * sum_q); a real zero point z (float16 values: i4o_prepare) in
 * float32, as two roundings: ((float)dot - z * (float)sum_q), the order the SIMD kernels follow. */
static void scalar_int8_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const i4o_qa_view qa = i4o_qa_map(w, c->M, (void *)c->a_ws);
  const int8_t *nf4 = i4o_nf4_i8();
  const int is_nf4 = w->quant_type == I4O_QUANT_NF4;
  for (int64_t m = m0; m < m1; m++) {
    const int8_t *q = qa.q + m * qa.ldq;
    for (int64_t n = n0; n < n1; n++) {
      float acc = 0.0f;
      for (int64_t b = 0; b < w->n_blocks; b++) {
        const int64_t k0 = b * w->block_size;
        int32_t dot = 0;
        /* the padded tail of q is zero, so the whole block can be summed */
        for (int64_t k = k0; k < k0 + w->block_size; k++) {
          const int code = i4o_code(w, n, k);
          dot += (int32_t)q[k] * (is_nf4 ? (int32_t)nf4[code] : (int32_t)code);
        }
        float sw = w->scales[n * w->n_blocks + b];
        float dotf;
        if (is_nf4) {
          sw *= (1.0f / 127.0f);
          dotf = (float)dot;
        } else if (w->zpf) {
          const float zs = w->zpf[n * w->n_blocks + b] * (float)qa.sum[m * w->n_blocks + b];
          dotf = (float)dot - zs;
        } else {
          dotf = (float)(dot - i4o_zero_point(w, n, b) * qa.sum[m * w->n_blocks + b]);
        }
        acc += dotf * (qa.scale[m * w->n_blocks + b] * sw);
      }
      c->C[m * c->ldc + n] = acc + (c->bias ? c->bias[n] : 0.0f);
    }
  }
}

const i4o_kernel i4o_kernel_scalar_fp32 = {
    .name = "scalar_fp32", .isa = "scalar", .compute = I4O_COMPUTE_FP32,
    .gemm = scalar_fp32_gemm, .real_zero_points = 1, .n_tile = 1, .m_tile = 1, .tile = {1, 1, 1, 0},
};

const i4o_kernel i4o_kernel_scalar_int8 = {
    .name = "scalar_int8", .isa = "scalar", .compute = I4O_COMPUTE_INT8,
    .a_bytes = i4o_qa_bytes, .prepare_a = i4o_qa_prepare,
    .gemm = scalar_int8_gemm, .real_zero_points = 1, .n_tile = 1, .m_tile = 1, .tile = {1, 1, 1, 0},
};
