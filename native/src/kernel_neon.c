/* NEON fp32 kernel (aarch64, and armv7 with NEON): dequantize 16 codes in registers, multiply-add. */
#include <string.h>

#include "kernels.h"

#if defined(I4O_ARM_NEON_KERNELS)
#if defined(__arm__) && !defined(__ARM_NEON)
/* armhf's baseline FPU has no NEON: enable it for this file only; dispatch.c runs it only on NEON CPUs */
#pragma GCC target("fpu=neon")
#endif
#include <arm_neon.h>

#define ROWS 4

#if defined(__aarch64__)
#define MLA(acc, a, b) vfmaq_f32((acc), (a), (b))
#else
#define MLA(acc, a, b) vmlaq_f32((acc), (a), (b))
#endif

static inline uint8x16_t load16_codes(const uint8_t *p, int bits) {
  if (bits == 8) return vld1q_u8(p);
  const uint8x8_t b = vld1_u8(p);
  const uint8x8_t lo = vand_u8(b, vdup_n_u8(0x0F));
  const uint8x8_t hi = vshr_n_u8(b, 4);
  const uint8x8x2_t z = vzip_u8(lo, hi);
  return vcombine_u8(z.val[0], z.val[1]);
}

static inline float hsum(float32x4_t v) {
#if defined(__aarch64__)
  return vaddvq_f32(v);
#else
  float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
  return vget_lane_f32(vpadd_f32(s, s), 0);
#endif
}

static void neon_fp32_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const int64_t K = w->K, bs = w->block_size;
  const float *cb = i4o_nf4_codebook();
  const int is_nf4 = w->quant_type == I4O_QUANT_NF4;
  const int64_t chunk_bytes = w->bits == 8 ? 16 : 8;
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t *col = w->data + n * w->n_blocks * w->blob_bytes;
    for (int64_t mb = m0; mb < m1; mb += ROWS) {
      const int rows = (int)(m1 - mb < ROWS ? m1 - mb : ROWS);
      float32x4_t acc[ROWS];
      for (int r = 0; r < ROWS; r++) acc[r] = vdupq_n_f32(0.0f);
      for (int64_t b = 0; b < w->n_blocks; b++) {
        const float s = w->scales[n * w->n_blocks + b];
        const float32x4_t vs = vdupq_n_f32(s);
        const float32x4_t vz = vdupq_n_f32(i4o_zero_point_f(w, n, b)); /* integer or real */
        const uint8_t *p = col + b * w->blob_bytes;
        for (int64_t k = b * bs; k < (b + 1) * bs && k < K; k += 16, p += chunk_bytes) {
          const uint8x16_t codes = load16_codes(p, w->bits);
          float32x4_t wv[4];
          if (is_nf4) {
            uint8_t idx[16];
            vst1q_u8(idx, codes);
            for (int j = 0; j < 4; j++) {
              const float t[4] = {cb[idx[4 * j]], cb[idx[4 * j + 1]], cb[idx[4 * j + 2]], cb[idx[4 * j + 3]]};
              wv[j] = vmulq_f32(vld1q_f32(t), vs);
            }
          } else {
            const uint16x8_t h0 = vmovl_u8(vget_low_u8(codes)), h1 = vmovl_u8(vget_high_u8(codes));
            wv[0] = vmulq_f32(vsubq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(h0))), vz), vs);
            wv[1] = vmulq_f32(vsubq_f32(vcvtq_f32_u32(vmovl_u16(vget_high_u16(h0))), vz), vs);
            wv[2] = vmulq_f32(vsubq_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(h1))), vz), vs);
            wv[3] = vmulq_f32(vsubq_f32(vcvtq_f32_u32(vmovl_u16(vget_high_u16(h1))), vz), vs);
          }
          for (int r = 0; r < rows; r++) {
            const float *a = c->A + (mb + r) * c->lda + k;
            float tail[16];
            if (k + 16 > K) { /* never read activations past K */
              memset(tail, 0, sizeof(tail));
              memcpy(tail, a, (size_t)(K - k) * sizeof(float));
              a = tail;
            }
            for (int j = 0; j < 4; j++) acc[r] = MLA(acc[r], vld1q_f32(a + 4 * j), wv[j]);
          }
        }
      }
      for (int r = 0; r < rows; r++)
        c->C[(mb + r) * c->ldc + n] = hsum(acc[r]) + (c->bias ? c->bias[n] : 0.0f);
    }
  }
}

const i4o_kernel i4o_kernel_neon_fp32 = {
    .name = "neon_fp32", .isa = "neon", .compute = I4O_COMPUTE_FP32,
    .gemm = neon_fp32_gemm, .real_zero_points = 1, .n_tile = 1, .m_tile = 1, .tile = {ROWS, 1, 16, 0},
};
#endif
