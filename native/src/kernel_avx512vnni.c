/* AVX-512 VNNI int8 kernel on the prepacked "cg16" layout (x86_packed.h).
 *
 * Activations are quantized per row and block (x86_avx512_qa_prepare, the rounding of
 * i4o_qa_prepare), weights stay 4-bit in memory and are split into nibbles in registers. Each
 * 32-bit lane of a vector is one weight column, so vpdpbusd (unsigned codes x signed activations,
 * 4 products per lane) accumulates 16 columns at once with the activation bytes broadcast: no
 * horizontal sums. Per block: exact int32 dot, minus zero point x sum(q) (the zero-point
 * correction), then one float multiply-add with scale_a * scale_w (scales stored as float16 with a
 * column exponent, exact after i4o_prepare's rounding). A tile is R rows x G groups of 16 columns;
 * M = 1 uses 1 x 4 (a supergroup: one sequential stream), larger M 4 x 2, smaller tiles at edges.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "x86_simd.h"

#define T512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define AI static inline __attribute__((always_inline, target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

/* ---- activations: per-block int8 quantization, vectorised; bit-identical to i4o_qa_prepare
 * on blocks of finite values with a finite 127 / amax (with a NaN or an infinity, or only subnormals, the
 * conversion gives -127 for a NaN or infinite product where the reference gives 0 or +-127; the block's
 * scale is then NaN, infinite or subnormal: tests/native/test_int8_extremes.py) ---- */

/* max of floats, or (add) the sum of int32 lanes carried in float vectors */
AI __m512 qa_combine(__m512 a, __m512 b, const int add) {
  if (add) return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  return _mm512_max_ps(a, b);
}

/* Lane j of the result: the 16 lanes of x[j] combined (a 4-level transpose-reduce: 15 combines and 30
 * shuffles for 16 blocks instead of a 4-step reduction each) */
AI __m512 qa_tree(const __m512 x[16], const int add) {
  __m512 w[8], y[4], z[2];
  for (int p = 0; p < 8; p++) /* quarters 0-1: x[2p] halved, 2-3: x[2p + 1] halved */
    w[p] = qa_combine(_mm512_shuffle_f32x4(x[2 * p], x[2 * p + 1], 0x44),
                      _mm512_shuffle_f32x4(x[2 * p], x[2 * p + 1], 0xEE), add);
  for (int p = 0; p < 4; p++) /* quarter i: x[4p + i] in 4 lanes */
    y[p] = qa_combine(_mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], 0x88),
                      _mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], 0xDD), add);
  for (int p = 0; p < 2; p++) /* quarter i: x[8p + i] in lanes 0-1, x[8p + 4 + i] in lanes 2-3 */
    z[p] = qa_combine(_mm512_shuffle_ps(y[2 * p], y[2 * p + 1], 0x44),
                      _mm512_shuffle_ps(y[2 * p], y[2 * p + 1], 0xEE), add);
  /* quarter i, lane e: x[4e + i]; then back to lane j = x[j] */
  const __m512 t = qa_combine(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD), add);
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), t);
}

/* 16 whole blocks of 16 * V activations (row a, codes q, block scales and sums at sc / sm): the same
 * values as the block-at-a-time loop below, with the 16 blocks' reductions done together */
AI void qa_group16(const float *a, int8_t *q, float *sc, int32_t *sm, int32_t zmul, const int V) { /* V = 1, 2, 4 */
  const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
  __m512 mx[16];
  uint32_t nan = 0; /* vmaxps drops NaNs: a block with one gets a NaN scale */
#pragma GCC unroll 16
  for (int j = 0; j < 16; j++) {
    __mmask16 un = 0;
    mx[j] = _mm512_setzero_ps();
    for (int i = 0; i < V; i++) {
      const __m512 x = _mm512_loadu_ps(a + (j * V + i) * 16);
      un |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      mx[j] = _mm512_max_ps(mx[j], _mm512_abs_ps(x));
    }
    nan |= (uint32_t)(un != 0) << j;
  }
  const __m512 amax = _mm512_mask_mov_ps(qa_tree(mx, 0), (__mmask16)nan, _mm512_set1_ps(NAN));
  const __mmask16 pos = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ);
  float inv[16];
  _mm512_storeu_ps(inv, _mm512_maskz_div_ps(pos, _mm512_set1_ps(127.0f), amax));
  _mm512_storeu_ps(sc, _mm512_div_ps(amax, _mm512_set1_ps(127.0f)));
  __m512 sum[16]; /* int32 lanes */
  __m512i r[4];    /* 64 codes, packed to bytes together */
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
#pragma GCC unroll 16
  for (int j = 0; j < 16; j++) {
    const __m512 vinv = _mm512_set1_ps(inv[j]);
    __m512i sj = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int i = 0; i < V; i++) {
      const int c = (j * V + i) & 3;
      r[c] = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(a + (j * V + i) * 16), vinv)); /* RNE */
      r[c] = _mm512_min_epi32(_mm512_max_epi32(r[c], nlim), lim);
      sj = _mm512_add_epi32(sj, r[c]);
      if (c == 3) { /* in range already: the saturating packs are exact; they interleave 128-bit lanes */
        const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(r[0], r[1]), _mm512_packs_epi32(r[2], r[3]));
        _mm512_storeu_si512(q + (j * V + i - 3) * 16, _mm512_permutexvar_epi32(order, b));
      }
    }
    sum[j] = _mm512_castsi512_ps(sj);
  }
  _mm512_storeu_si512(sm, _mm512_mullo_epi32(_mm512_castps_si512(qa_tree(sum, 1)), _mm512_set1_epi32(zmul)));
}

T512 static void qa_prepare(const i4o_wdesc *w, const float *A, int64_t lda, int64_t M, int64_t m0, int64_t m1,
                            void *ws) {
  const i4o_qa_view v = i4o_qa_map(w, M, ws);
  const int64_t K = w->K, bs = w->block_size;
  const int32_t zmul = w->zp || w->zpf ? 1 : x86_sym_zp(w);
  const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
  /* blocks of 16, 32 or 64 go 16 at a time while 16 whole blocks are left */
  const int64_t full = K / bs, groups = bs == 16 || bs == 32 || bs == 64 ? full / 16 : 0;
  for (int64_t m = m0; m < m1; m++) {
    const float *a = A + m * lda;
    int8_t *q = v.q + m * v.ldq;
    for (int64_t g = 0; g < groups; g++) {
      const int64_t k0 = g * 16 * bs, b0 = m * v.nb + g * 16;
      if (bs == 16) qa_group16(a + k0, q + k0, v.scale + b0, v.sum + b0, zmul, 1);
      else if (bs == 32) qa_group16(a + k0, q + k0, v.scale + b0, v.sum + b0, zmul, 2);
      else qa_group16(a + k0, q + k0, v.scale + b0, v.sum + b0, zmul, 4);
    }
    for (int64_t b = groups * 16; b < w->n_blocks; b++) {
      const int64_t k0 = b * bs, kn = k0 + bs <= K ? bs : K - k0;
      __m512 mx = _mm512_setzero_ps();
      __mmask16 nan = 0; /* vmaxps drops NaNs: track them, a NaN makes the block's scale NaN */
      for (int64_t i = 0; i < kn; i += 16) {
        const __mmask16 mk = kn - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (kn - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(mk, a + k0 + i);
        nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        mx = _mm512_max_ps(mx, _mm512_abs_ps(x));
      }
      const float amax = nan ? NAN : _mm512_reduce_max_ps(mx);
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const __m512 vinv = _mm512_set1_ps(inv);
      __m512i sum = _mm512_setzero_si512();
      int64_t i = 0;
      for (; i < kn; i += 16) {
        const __mmask16 mk = kn - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (kn - i)) - 1);
        __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, a + k0 + i), vinv)); /* RNE */
        r = _mm512_min_epi32(_mm512_max_epi32(r, nlim), lim);
        sum = _mm512_add_epi32(sum, r);
        _mm_storeu_si128((__m128i *)(q + k0 + i), _mm512_cvtsepi32_epi8(r));
      }
      for (; i < bs; i += 16) _mm_storeu_si128((__m128i *)(q + k0 + i), _mm_setzero_si128());
      v.scale[m * v.nb + b] = amax / 127.0f;
      v.sum[m * v.nb + b] = zmul * _mm512_reduce_add_epi32(sum);
    }
    memset(q + w->n_blocks * bs, 0, (size_t)(v.ldq - w->n_blocks * bs));
  }
}

/* ---- micro-kernel ---- */

/* 4 activation bytes broadcast to every 32-bit lane (a load with broadcast, no trip through a GPR) */
AI __m512i bcast4(const int8_t *p) {
  return _mm512_castps_si512(_mm512_broadcastss_ps(_mm_load_ss((const float *)(const void *)p)));
}

/* NF4 levels as unsigned int8 codes (offset 128: zero point 128) in every 128-bit lane, for vpshufb */
AI __m512i nf4_lut(int kind) {
  if (kind != KIND_NF4) return _mm512_setzero_si512();
  uint8_t u[16];
  x86_nf4_i8_table(u, 128);
  return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)u));
}

/* the weight scales of group j in a block's record (float16 x 2^-E; NF4's 1/127 applied) */
AI __m512 block_scales(const x86_rec *rl, const uint8_t *rec, int64_t j, int kind) {
  const __m512 sw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)x86_rec_scales_f16(rl, rec, j)));
  return kind == KIND_NF4 ? _mm512_mul_ps(sw, _mm512_set1_ps(1.0f / 127.0f)) : sw;
}

/* the zero points of group j in a block's record (weights with zero points): integer ones as int32
 * lanes, real ones (asym 2, float16 in the record) as float32 bits */
AI __m512i block_zp(const x86_rec *rl, const uint8_t *rec, int64_t j, const int asym) {
  if (asym == 2) return _mm512_castps_si512(_mm512_cvtph_ps(_mm256_load_si256((const __m256i *)x86_rec_zpf_f16(rl, rec, j))));
  return _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)x86_rec_zp(rl, rec, j)));
}

/* block epilogue of a row: acc + (dot - zp * sum(q)) * (scale_a * scale_w), with the row's activation
 * scale sa and sum zs of the block (premultiplied by the shared zero point for weights without zero
 * points, x86_sym_zp). Real zero points (asym 2) as kernel_scalar.c: (float)dot - z * (float)sum(q). */
AI __m512 block_fma(__m512 acc, __m512i dot, __m512 sw, __m512i zpv, float sa_, int32_t zs_, const int asym) {
  const __m512 sa = _mm512_set1_ps(sa_);
  if (asym == 2) {
    const __m512 corr = _mm512_mul_ps(_mm512_castsi512_ps(zpv), _mm512_set1_ps((float)zs_));
    return _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(dot), corr), _mm512_mul_ps(sw, sa), acc);
  }
  const __m512i zs = _mm512_set1_epi32(zs_);
  const __m512i corr = asym ? _mm512_mullo_epi32(zpv, zs) : zs;
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(dot, corr)), _mm512_mul_ps(sw, sa), acc);
}

#define PF_DIST 4096 /* bytes ahead of the few-row stream (measured 2-16 KiB: within noise; none: ~5% slower) */

#define MR8 5 /* rows of a tile (measured at M = 128: 4 rows ~7% slower, 6 no faster) */
/* C[m .. m+R, 16*g0 .. 16*(g0+G)) for all K. ncols = valid columns from 16*g0 (may be < 16*G). */
AI void tile(const i4o_gemm_ctx *c, const x86_pk *L, const i4o_qa_view *qa, int64_t m, int64_t g0, int64_t ncols,
             const int R, const int G, const int kind, const int asym) {
  const __m512i nib = _mm512_set1_epi8(0x0F);
  const __m512i lut = nf4_lut(kind);
  const x86_rec rl = x86_sg_rec(L, g0); /* the tile lies inside one supergroup: one record per block */
  const int64_t j0 = g0 % X86_SG;
  __m512 facc[MR8][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) facc[r][g] = _mm512_setzero_ps();
  const int64_t bs = L->bs, nb = L->nb;
  for (int64_t b = 0; b < nb; b++) {
    __m512i iacc[MR8][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
      for (int g = 0; g < G; g++) iacc[r][g] = _mm512_setzero_si512();
    const uint8_t *rec = x86_record(c->packed, L, g0, b);
    const uint8_t *pc[4];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) pc[g] = x86_rec_codes(&rl, rec, j0 + g);
    const int8_t *pq = qa->q + m * qa->ldq + b * bs;
    if (kind != KIND_INT8) {
      for (int64_t t = 0; t < L->chunks; t++) {
        __m512i lo[4], hi[4];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
          const __m512i raw = _mm512_load_si512((const void *)(pc[g] + t * X86_CHUNK));
          lo[g] = _mm512_and_si512(raw, nib);
          hi[g] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib);
          if (kind == KIND_NF4) {
            lo[g] = _mm512_shuffle_epi8(lut, lo[g]);
            hi[g] = _mm512_shuffle_epi8(lut, hi[g]);
          }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
          const __m512i qa0 = bcast4(pq + r * qa->ldq + 8 * t), qa1 = bcast4(pq + r * qa->ldq + 8 * t + 4);
#pragma GCC unroll 4
          for (int g = 0; g < G; g++) {
            iacc[r][g] = _mm512_dpbusd_epi32(iacc[r][g], lo[g], qa0);
            iacc[r][g] = _mm512_dpbusd_epi32(iacc[r][g], hi[g], qa1);
          }
        }
      }
    } else {
      for (int64_t t = 0; t < L->chunks; t++) {
        __m512i cv[4];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) cv[g] = _mm512_load_si512((const void *)(pc[g] + t * X86_CHUNK));
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
          const __m512i qa0 = bcast4(pq + r * qa->ldq + 4 * t);
#pragma GCC unroll 4
          for (int g = 0; g < G; g++) iacc[r][g] = _mm512_dpbusd_epi32(iacc[r][g], cv[g], qa0);
        }
      }
    }
    __m512 sw[4];
    __m512i zpv[4];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
      sw[g] = block_scales(&rl, rec, j0 + g, kind);
      zpv[g] = asym ? block_zp(&rl, rec, j0 + g, asym) : _mm512_setzero_si512();
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
      for (int g = 0; g < G; g++)
        facc[r][g] = block_fma(facc[r][g], iacc[r][g], sw[g], zpv[g], qa->scale[(m + r) * nb + b], qa->sum[(m + r) * nb + b], asym);
  }
  /* store: undo the column exponents of the scales, add the bias */
#pragma GCC unroll 4
  for (int g = 0; g < G; g++) {
    const int64_t left = ncols - 16 * g;
    if (left <= 0) break;
    x86_store16(c, m, 16 * (g0 + g), left, &facc[0][g], 4, R, 1, x86_colscale(c->packed, L, g0 + g));
  }
}

/* Few rows of activations (decode, small batches): C[m .. m+R, 16*g0 .. 16*(g0+G)) with G groups of one
 * supergroup, walking the records in address order (one sequential stream). CH = chunks per block
 * when known at compile time (0: any). Low nibbles are masked in place; high nibbles are used as
 * 16 x code (masked, not shifted) and their accumulator is divided by 16 at the end of the block
 * (exact: a multiple of 16). */
AI void row_tile(const i4o_gemm_ctx *c, const x86_pk *L, const i4o_qa_view *qa, int64_t m, int64_t g0, int64_t ncols,
                 const int R, const int G, const int kind, const int asym, const int CH) {
  const __m512i nib = _mm512_set1_epi8(0x0F), nib_hi = _mm512_set1_epi8((char)0xF0);
  const __m512i lut = nf4_lut(kind);
  const int64_t chunks = CH ? CH : L->chunks, nb = L->nb, j0 = g0 % X86_SG, ldq = qa->ldq;
  const x86_rec rl = x86_sg_rec(L, g0);
  const uint8_t *rec = x86_record(c->packed, L, g0, 0);
  const int8_t *pq = qa->q + m * ldq;
  __m512 facc[4][4];
#pragma GCC unroll 4
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) facc[r][g] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++, rec += rl.bytes, pq += L->bs) {
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
      const uint8_t *pc = x86_rec_codes(&rl, rec, j0 + g);
      __m512i a0[4], a1[4];
#pragma GCC unroll 4
      for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_si512();
      if (kind == KIND_INT8) {
#pragma GCC unroll 16
        for (int64_t t = 0; t < chunks; t += 2) {
          if (R == 1) _mm_prefetch((const char *)(pc + t * X86_CHUNK + PF_DIST), _MM_HINT_T0);
          const __m512i c0 = _mm512_load_si512((const void *)(pc + t * X86_CHUNK));
          const __m512i c1 = _mm512_load_si512((const void *)(pc + (t + 1) * X86_CHUNK));
#pragma GCC unroll 4
          for (int r = 0; r < R; r++) {
            a0[r] = _mm512_dpbusd_epi32(a0[r], c0, bcast4(pq + r * ldq + 4 * t));
            a1[r] = _mm512_dpbusd_epi32(a1[r], c1, bcast4(pq + r * ldq + 4 * t + 4));
          }
        }
      } else {
#pragma GCC unroll 16
        for (int64_t t = 0; t < chunks; t++) {
          const __m512i raw = _mm512_load_si512((const void *)(pc + t * X86_CHUNK));
          if (R == 1) _mm_prefetch((const char *)(pc + t * X86_CHUNK + PF_DIST), _MM_HINT_T0);
          __m512i lo = _mm512_and_si512(raw, nib), hi;
          if (kind == KIND_NF4) {
            lo = _mm512_shuffle_epi8(lut, lo);
            hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib));
          } else {
            hi = _mm512_and_si512(raw, nib_hi); /* 16 x code */
          }
#pragma GCC unroll 4
          for (int r = 0; r < R; r++) {
            a0[r] = _mm512_dpbusd_epi32(a0[r], lo, bcast4(pq + r * ldq + 8 * t));
            a1[r] = _mm512_dpbusd_epi32(a1[r], hi, bcast4(pq + r * ldq + 8 * t + 4));
          }
        }
      }
      const __m512 sw = block_scales(&rl, rec, j0 + g, kind);
      const __m512i zpv = asym ? block_zp(&rl, rec, j0 + g, asym) : _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int r = 0; r < R; r++) {
        const __m512i dot = _mm512_add_epi32(a0[r], kind == KIND_INT4 ? _mm512_srai_epi32(a1[r], 4) : a1[r]);
        facc[r][g] = block_fma(facc[r][g], dot, sw, zpv, qa->scale[(m + r) * nb + b], qa->sum[(m + r) * nb + b], asym);
      }
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; g++) {
    const int64_t left = ncols - 16 * g;
    if (left <= 0) break;
    x86_store16(c, m, 16 * (g0 + g), left, &facc[0][g], 4, R, 1, x86_colscale(c->packed, L, g0 + g));
  }
}

/* row kernels: INT4 with the chunk count fixed for block sizes 16 .. 128, the rest generic */
#define ROW_FN(R, G, CH)                                                                                            \
  T512 static void row_##R##_##G##_##CH(const i4o_gemm_ctx *c, const x86_pk *L, const i4o_qa_view *qa, int64_t m,        \
                                        int64_t g0, int64_t ncols, int kind, int asym) {                            \
    if (kind == KIND_INT4) {                                                                                        \
      if (asym == 2) row_tile(c, L, qa, m, g0, ncols, R, G, KIND_INT4, 2, CH);                                      \
      else if (asym) row_tile(c, L, qa, m, g0, ncols, R, G, KIND_INT4, 1, CH);                                      \
      else row_tile(c, L, qa, m, g0, ncols, R, G, KIND_INT4, 0, CH);                                                \
    } else if (CH == 0) {                                                                                           \
      if (kind == KIND_NF4) row_tile(c, L, qa, m, g0, ncols, R, G, KIND_NF4, 0, 0);                                 \
      else if (asym == 2) row_tile(c, L, qa, m, g0, ncols, R, G, KIND_INT8, 2, 0);                                  \
      else if (asym) row_tile(c, L, qa, m, g0, ncols, R, G, KIND_INT8, 1, 0);                                       \
      else row_tile(c, L, qa, m, g0, ncols, R, G, KIND_INT8, 0, 0);                                                 \
    }                                                                                                               \
  }
#define ROW_FNS(R, G) ROW_FN(R, G, 0) ROW_FN(R, G, 2) ROW_FN(R, G, 4) ROW_FN(R, G, 8) ROW_FN(R, G, 16)
ROW_FNS(1, 1)
ROW_FNS(1, 2)
ROW_FNS(1, 3)
ROW_FNS(1, 4)
ROW_FNS(2, 4)
ROW_FNS(3, 4)
ROW_FNS(4, 4)

typedef void (*row_fn)(const i4o_gemm_ctx *, const x86_pk *, const i4o_qa_view *, int64_t, int64_t, int64_t, int, int);
#define ROW_SET(R, G) {row_##R##_##G##_0, row_##R##_##G##_2, row_##R##_##G##_4, row_##R##_##G##_8, row_##R##_##G##_16}
static const row_fn kRow1[4][5] = {ROW_SET(1, 1), ROW_SET(1, 2), ROW_SET(1, 3), ROW_SET(1, 4)}; /* one row, G groups */
static const row_fn kRowsFull[4][5] = {ROW_SET(1, 4), ROW_SET(2, 4), ROW_SET(3, 4), ROW_SET(4, 4)}; /* R rows, 4 groups */

#define TILE_FN(R, G)                                                                                                 \
  T512 static void tile_##R##x##G(const i4o_gemm_ctx *c, const x86_pk *L, const i4o_qa_view *qa, int64_t m, int64_t g0,   \
                                  int64_t ncols, int kind, int asym) {                                                \
    X86_SPECIALISE_RZ(kind, asym, tile, c, L, qa, m, g0, ncols, R, G);                                                   \
  }

TILE_FN(1, 2)
TILE_FN(1, 1)
TILE_FN(2, 2)
TILE_FN(3, 2)
TILE_FN(4, 2)
TILE_FN(2, 1)
TILE_FN(3, 1)
TILE_FN(4, 1)
TILE_FN(5, 2)
TILE_FN(5, 1)

typedef void (*tile_fn)(const i4o_gemm_ctx *, const x86_pk *, const i4o_qa_view *, int64_t, int64_t, int64_t, int, int);

static void vnni_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const x86_pk L = x86_pk_layout(w, 1);
  const i4o_qa_view qa = i4o_qa_map(w, c->M, c->a_ws);
  const int kind = x86_kind(w);
  const int asym = x86_asym(w);
  const int64_t g_begin = n0 / 16, g_end = (n1 + 15) / 16; /* n0 is a multiple of n_tile (64) */
  const int ch = kind != KIND_INT4 ? 0 : L.chunks == 2 ? 1 : L.chunks == 4 ? 2 : L.chunks == 8 ? 3 : L.chunks == 16 ? 4 : 0;
  if (m1 - m0 <= 4) { /* few rows: tiles as wide as the supergroups (one sequential stream) */
    const int rows = (int)(m1 - m0);
    for (int64_t g = g_begin; g < g_end;) {
      const int64_t left = X86_SG - g % X86_SG, cnt = g_end - g < left ? g_end - g : left;
      if (rows == 1) {
        kRow1[cnt - 1][ch](c, &L, &qa, m0, g, n1 - 16 * g, kind, asym);
      } else if (cnt == X86_SG) {
        kRowsFull[rows - 1][ch](c, &L, &qa, m0, g, n1 - 16 * g, kind, asym);
      } else { /* a partial supergroup at the end of N */
        static const tile_fn by_rows[5] = {NULL, tile_1x1, tile_2x1, tile_3x1, tile_4x1};
        for (int64_t i = 0; i < cnt; i++) by_rows[rows](c, &L, &qa, m0, g + i, n1 - 16 * (g + i), kind, asym);
      }
      g += cnt;
    }
    return;
  }
  static const tile_fn by_rows2[MR8 + 1] = {NULL, tile_1x2, tile_2x2, tile_3x2, tile_4x2, tile_5x2};
  static const tile_fn by_rows1[MR8 + 1] = {NULL, tile_1x1, tile_2x1, tile_3x1, tile_4x1, tile_5x1};
  for (int64_t g = g_begin; g < g_end; g += 2) {
    const int two = g + 2 <= g_end;
    /* row tiles of up to MR8 rows, balanced (16 rows: 4 x 4, not 5 + 5 + 5 + 1) */
    const int64_t tiles = (m1 - m0 + MR8 - 1) / MR8, base = (m1 - m0) / tiles, extra = (m1 - m0) % tiles;
    for (int64_t i = 0, m = m0; i < tiles; i++) {
      const int rows = (int)(base + (i < extra));
      (two ? by_rows2 : by_rows1)[rows](c, &L, &qa, m, g, n1 - 16 * g, kind, asym);
      m += rows;
    }
  }
}

const i4o_kernel i4o_kernel_avx512vnni_int8 = {
    .name = "avx512vnni_int8", .isa = "avx512vnni", .compute = I4O_COMPUTE_INT8,
    .packed_bytes = i4o_x86_packed_bytes_int8, .pack = i4o_x86_pack_int8,
    .a_bytes = i4o_qa_bytes, .prepare_a = qa_prepare,
    .gemm = vnni_gemm, .real_zero_points = 1, .n_tile = 64, .m_tile = 1, /* tasks cover whole supergroups */
    .tile = {MR8, 16 * X86_SG, 8, 0}, /* up to 4 rows x a supergroup, more rows 5 x 32 */
};
#endif
