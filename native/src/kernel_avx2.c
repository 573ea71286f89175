/* AVX2 + FMA fp32 kernel: dequantize 16 codes at a time in registers, FMA with fp32 activations. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define AVX2_TARGET __attribute__((target("avx2,fma")))
#define ROWS 4 /* activation rows that share one dequantized chunk */

/* 16 codes of column data p (16 elements from element offset 0 of p) as unsigned bytes, in order. */
AVX2_TARGET static inline __m128i load16_codes(const uint8_t *p, int bits) {
  if (bits == 8) return _mm_loadu_si128((const __m128i *)p);
  const __m128i b = _mm_loadl_epi64((const __m128i *)p);
  const __m128i m = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(b, m);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  return _mm_unpacklo_epi8(lo, hi);
}

AVX2_TARGET static inline __m256 nf4_lookup(__m256i idx, __m256 cb_lo, __m256 cb_hi) {
  const __m256 lo = _mm256_permutevar8x32_ps(cb_lo, idx);
  const __m256 hi = _mm256_permutevar8x32_ps(cb_hi, idx);
  const __m256i use_hi = _mm256_slli_epi32(idx, 28); /* bit 3 -> sign bit */
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(use_hi));
}

AVX2_TARGET static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2_TARGET static inline __m256i tail_mask(int64_t count) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), idx);
}

AVX2_TARGET static void avx2_fp32_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const int64_t K = w->K, bs = w->block_size;
  const float *cbp = i4o_nf4_codebook();
  const __m256 cb_lo = _mm256_loadu_ps(cbp), cb_hi = _mm256_loadu_ps(cbp + 8);
  const int is_nf4 = w->quant_type == I4O_QUANT_NF4;
  const int64_t chunk_bytes = w->bits == 8 ? 16 : 8;
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t *col = w->data + n * w->n_blocks * w->blob_bytes;
    for (int64_t mb = m0; mb < m1; mb += ROWS) {
      const int rows = (int)(m1 - mb < ROWS ? m1 - mb : ROWS);
      __m256 acc[ROWS];
      for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();
      for (int64_t b = 0; b < w->n_blocks; b++) {
        const __m256 s = _mm256_set1_ps(w->scales[n * w->n_blocks + b]);
        const __m256 z = _mm256_set1_ps((float)i4o_zero_point(w, n, b));
        const uint8_t *p = col + b * w->blob_bytes;
        for (int64_t k = b * bs; k < (b + 1) * bs && k < K; k += 16, p += chunk_bytes) {
          const __m128i codes = load16_codes(p, w->bits);
          const __m256i i0 = _mm256_cvtepu8_epi32(codes);
          const __m256i i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8));
          __m256 w0, w1;
          if (is_nf4) {
            w0 = _mm256_mul_ps(nf4_lookup(i0, cb_lo, cb_hi), s);
            w1 = _mm256_mul_ps(nf4_lookup(i1, cb_lo, cb_hi), s);
          } else {
            w0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(i0), z), s);
            w1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(i1), z), s);
          }
          if (k + 16 <= K) {
            for (int r = 0; r < rows; r++) {
              const float *a = c->A + (mb + r) * c->lda + k;
              acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a), w0, acc[r]);
              acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a + 8), w1, acc[r]);
            }
          } else { /* K tail: never read activations past K */
            const __m256i mk0 = tail_mask(K - k), mk1 = tail_mask(K - k - 8);
            for (int r = 0; r < rows; r++) {
              const float *a = c->A + (mb + r) * c->lda + k;
              acc[r] = _mm256_fmadd_ps(_mm256_maskload_ps(a, mk0), w0, acc[r]);
              acc[r] = _mm256_fmadd_ps(_mm256_maskload_ps(a + 8, mk1), w1, acc[r]);
            }
          }
        }
      }
      for (int r = 0; r < rows; r++)
        c->C[(mb + r) * c->ldc + n] = hsum(acc[r]) + (c->bias ? c->bias[n] : 0.0f);
    }
  }
}

const i4o_kernel i4o_kernel_avx2_fp32 = {
    .name = "avx2_fp32", .isa = "avx2", .compute = I4O_COMPUTE_FP32,
    .gemm = avx2_fp32_gemm, .n_tile = 1, .m_tile = 1,
};
#endif
