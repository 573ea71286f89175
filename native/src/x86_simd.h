/*
 * Register-level helpers that the x86 kernels share, per vector width: the output epilogue (column
 * masks, column exponents, bias, store). Included by the kernel files only (each compiles them into
 * its own target: the helpers' targets are subsets of every includer's).
 */
#ifndef I4O_X86_SIMD_H_
#define I4O_X86_SIMD_H_

#include <immintrin.h>

#include "x86_packed.h"

#define X86_AI256 static inline __attribute__((always_inline, target("avx2,fma,f16c")))
#define X86_AI512 static inline __attribute__((always_inline, target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))

/* lanes 0 .. min(left, 8) - 1 set (left may be <= 0: none) */
X86_AI256 __m256i x86_mask8(int64_t left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(left >= 8 ? 8 : left <= 0 ? 0 : (int)left),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

X86_AI512 __mmask16 x86_mask16(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1));
}

/* ---- the fp32 kernels' dequantization of a 64-byte chunk, 16 columns at a time (AVX-512) ---- */

/* the 16-entry table that vpermps maps 4-bit codes through: NF4 levels, codes - 8 (symmetric), or codes */
X86_AI512 __m512 x86_lut512(int kind, int asym) {
  if (kind == KIND_NF4) return _mm512_loadu_ps(i4o_nf4_codebook());
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return asym ? codes : _mm512_sub_ps(codes, _mm512_set1_ps(8.0f));
}

/* The 16 columns' codes of element i of a chunk (4-bit: i = 0..7, 8-bit: i = 0..3) as floats,
 * minus zf for weights with zero points, or the symmetric zero point folded into the table. */
X86_AI512 __m512 x86_dequant512(__m512i raw, int i, int kind, int asym, __m512 lut, __m512 zf) {
  if (kind == KIND_INT8) {
    const __m512i v = _mm512_and_si512(_mm512_srli_epi32(raw, 8 * i), _mm512_set1_epi32(0xFF));
    return _mm512_sub_ps(_mm512_cvtepi32_ps(v), zf);
  }
  const int sh = i < 4 ? 8 * i : 8 * (i - 4) + 4;
  const __m512 v = _mm512_permutexvar_ps(sh ? _mm512_srli_epi32(raw, sh) : raw, lut);
  return asym ? _mm512_sub_ps(v, zf) : v;
}

/* what x86_dequant512 subtracts from the codes of group j in a record: its zero points (integer, or real: asym
 * 2), 128 for 8-bit symmetric weights, 0 where the table holds the values */
X86_AI512 __m512 x86_zero_points512(const x86_rec *rl, const uint8_t *rec, int64_t j, int kind, int asym) {
  if (asym == 2) return _mm512_load_ps(x86_rec_zpf_f32(rl, rec, j));
  if (asym) return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)x86_rec_zp(rl, rec, j))));
  return kind == KIND_INT8 ? _mm512_set1_ps(128.0f) : _mm512_setzero_ps();
}

/* Activation packing of the fp32 panel kernels (x86_panel_a_fill's layout): k = 0..7 of rows 0..3 at a
 * (rows lda apart) into ap[k * mr + 0..3], through a 4 x 8 transpose (8 16-byte stores for 32 values) */
X86_AI256 void x86_panel_a_4x8(float *ap, const float *a, int64_t lda, const int mr) {
  const __m256 r0 = _mm256_loadu_ps(a), r1 = _mm256_loadu_ps(a + lda);
  const __m256 r2 = _mm256_loadu_ps(a + 2 * lda), r3 = _mm256_loadu_ps(a + 3 * lda);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1); /* k 0,1 | 4,5 ; k 2,3 | 6,7 */
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 q[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE), /* k 0 | 4, 1 | 5 */
                       _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)}; /* k 2 | 6, 3 | 7 */
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    _mm_storeu_ps(ap + j * mr, _mm256_castps256_ps128(q[j]));
    _mm_storeu_ps(ap + (4 + j) * mr, _mm256_extractf128_ps(q[j], 1));
  }
}

/* The store of a tile's accumulators: C[m + r][n .. n + min(left, 8)) = acc[r * stride] (+ bias), for
 * r < R. scaled: multiply by cs first (the int8 kernels' column exponents, x86_colscale), as one fused
 * multiply-add with the bias; else add the bias. */
X86_AI256 void x86_store8(const i4o_gemm_ctx *c, int64_t m, int64_t n, int64_t left, const __m256 *acc, const int stride,
                          const int R, const int scaled, const float *cs) {
  const __m256i mk = x86_mask8(left);
  const __m256 bias = c->bias ? _mm256_maskload_ps(c->bias + n, mk) : _mm256_setzero_ps();
  const __m256 s = scaled ? _mm256_load_ps(cs) : _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    _mm256_maskstore_ps(c->C + (m + r) * c->ldc + n, mk,
                        scaled ? _mm256_fmadd_ps(acc[r * stride], s, bias) : _mm256_add_ps(acc[r * stride], bias));
}

/* the same for 16 columns */
X86_AI512 void x86_store16(const i4o_gemm_ctx *c, int64_t m, int64_t n, int64_t left, const __m512 *acc,
                           const int stride, const int R, const int scaled, const float *cs) {
  const __mmask16 mk = x86_mask16(left);
  const __m512 bias = c->bias ? _mm512_maskz_loadu_ps(mk, c->bias + n) : _mm512_setzero_ps();
  const __m512 s = scaled ? _mm512_load_ps(cs) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int r = 0; r < R; r++)
    _mm512_mask_storeu_ps(c->C + (m + r) * c->ldc + n, mk,
                          scaled ? _mm512_fmadd_ps(acc[r * stride], s, bias) : _mm512_add_ps(acc[r * stride], bias));
}

#endif /* I4O_X86_SIMD_H_ */
