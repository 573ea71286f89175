/* AVX-512 VNNI int8 kernel: codes as unsigned bytes times int8 activations with vpdpbusd.
 * Block dot products are exact int32; the float epilogue repeats the scalar reference's
 * operations in the same order, so results match scalar_int8 bit for bit. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define VNNI_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
#define ROWS 4

/* 32 codes starting at p as unsigned bytes in element order (bits 4: 16 bytes, bits 8: 32 bytes). */
VNNI_TARGET static inline __m256i load32_codes(const uint8_t *p, int bits) {
  if (bits == 8) return _mm256_loadu_si256((const __m256i *)p);
  const __m128i b = _mm_loadu_si128((const __m128i *)p);
  const __m128i m = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  return _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
}

/* 16 codes starting at p, zero-extended to 256 bits. */
VNNI_TARGET static inline __m256i load16_codes(const uint8_t *p, int bits) {
  __m128i v;
  if (bits == 8) {
    v = _mm_loadu_si128((const __m128i *)p);
  } else {
    const __m128i b = _mm_loadl_epi64((const __m128i *)p);
    const __m128i m = _mm_set1_epi8(0x0F);
    v = _mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
  }
  return _mm256_zextsi128_si256(v);
}

VNNI_TARGET static inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

/* acc += codes . q, codes unsigned (int) or NF4 indices mapped through the int8 codebook. */
VNNI_TARGET static inline __m256i dot_step(__m256i acc, __m256i codes, __m256i q, int is_nf4, __m256i lut) {
  if (!is_nf4) return _mm256_dpbusd_epi32(acc, codes, q);
  const __m256i wv = _mm256_shuffle_epi8(lut, codes);
  return _mm256_dpbusd_epi32(acc, _mm256_abs_epi8(wv), _mm256_sign_epi8(q, wv));
}

VNNI_TARGET static void vnni_int8_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const i4o_qa_view qa = i4o_qa_map(w, c->M, (void *)c->a_ws);
  const int is_nf4 = w->quant_type == I4O_QUANT_NF4;
  const __m128i lut128 = _mm_loadu_si128((const __m128i *)i4o_nf4_i8());
  const __m256i lut = _mm256_set_m128i(lut128, lut128);
  const int64_t bs = w->block_size, nb = w->n_blocks;
  const int64_t bytes32 = w->bits == 8 ? 32 : 16;
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t *col = w->data + n * nb * w->blob_bytes;
    for (int64_t mb = m0; mb < m1; mb += ROWS) {
      const int rows = (int)(m1 - mb < ROWS ? m1 - mb : ROWS);
      float facc[ROWS] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t b = 0; b < nb; b++) {
        __m256i acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_si256();
        const uint8_t *p = col + b * w->blob_bytes;
        int64_t i = 0;
        for (; i + 32 <= bs; i += 32, p += bytes32) {
          const __m256i codes = load32_codes(p, w->bits);
          for (int r = 0; r < rows; r++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qa.q + (mb + r) * qa.ldq + b * bs + i));
            acc[r] = dot_step(acc[r], codes, q, is_nf4, lut);
          }
        }
        if (i < bs) { /* block sizes that are an odd multiple of 16 */
          const __m256i codes = load16_codes(p, w->bits);
          for (int r = 0; r < rows; r++) {
            const __m256i q = _mm256_zextsi128_si256(
                _mm_loadu_si128((const __m128i *)(qa.q + (mb + r) * qa.ldq + b * bs + i)));
            acc[r] = dot_step(acc[r], codes, q, is_nf4, lut);
          }
        }
        float sw = w->scales[n * nb + b];
        if (is_nf4) sw *= (1.0f / 127.0f);
        const int zp = i4o_zero_point(w, n, b);
        for (int r = 0; r < rows; r++) {
          int32_t dot = hsum_epi32(acc[r]);
          if (!is_nf4) dot -= zp * qa.sum[(mb + r) * nb + b];
          facc[r] += (float)dot * (qa.scale[(mb + r) * nb + b] * sw);
        }
      }
      for (int r = 0; r < rows; r++) c->C[(mb + r) * c->ldc + n] = facc[r] + (c->bias ? c->bias[n] : 0.0f);
    }
  }
}

const i4o_kernel i4o_kernel_avx512vnni_int8 = {
    .name = "avx512vnni_int8", .isa = "avx512vnni", .compute = I4O_COMPUTE_INT8,
    .a_bytes = i4o_qa_bytes, .prepare_a = i4o_qa_prepare,
    .gemm = vnni_int8_gemm, .n_tile = 1, .m_tile = 1,
};
#endif
