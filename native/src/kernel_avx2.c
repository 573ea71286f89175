/* AVX2 + FMA kernels on the prepacked "cg16" layout (x86_packed.h), for x86-64 CPUs without AVX-512.
 *
 * avx2_fp32: float activations, weights dequantized in registers, FMA (the scheme of kernel_avx512.c
 * with 8-column vectors: a 64-byte chunk is two halves). Few rows: per-block partial sums scaled at
 * the block's end; many rows: a KC x 16 panel dequantized once per task and a 6 x 16 micro-kernel.
 * avx2_int8: activations quantized to int8 per block, vpmaddubsw + vpmaddwd (x86_int8_256.inc).
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "x86_simd.h"

#define TGT "avx2,fma,f16c"
#define T256 __attribute__((target(TGT)))
#define AI static inline __attribute__((always_inline, target(TGT)))

#define PANEL_MIN_ROWS 6
#define KC 256 /* panel depth: 256 x 16 floats = 16 KiB */
#define MR 6   /* micro-kernel rows */
#define PREFETCH_BLOCKS 4 /* fill_panel: records pulled in ahead */

/* NF4 levels 0-7 (hi = 0) or 8-15 (hi = 1), the tables of nf4_lookup */
AI __m256 nf4_levels(int hi) { return _mm256_loadu_ps(i4o_nf4_codebook() + 8 * hi); }

AI __m256 nf4_lookup(__m256i idx, __m256 cb_lo, __m256 cb_hi) {
  const __m256 lo = _mm256_permutevar8x32_ps(cb_lo, idx); /* uses the low 3 bits */
  const __m256 hi = _mm256_permutevar8x32_ps(cb_hi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))); /* bit 3 -> sign */
}

/* element i of a chunk half (4-bit: i = 0..7, 8-bit: 0..3) for 8 columns, as floats minus the zero point */
AI __m256 dequant(__m256i raw, int i, int kind, __m256 zf, __m256 cb_lo, __m256 cb_hi) {
  if (kind == KIND_INT8)
    return _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(raw, 8 * i), _mm256_set1_epi32(0xFF))), zf);
  const int sh = i < 4 ? 8 * i : 8 * (i - 4) + 4;
  const __m256i v = sh ? _mm256_srli_epi32(raw, sh) : raw;
  if (kind == KIND_NF4) return nf4_lookup(v, cb_lo, cb_hi);
  return _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xF))), zf);
}

/* the zero points of half h of group j in a record, as floats (asym 2: real ones, float32 in the record) */
AI __m256 zero_point(const x86_rec *R, const uint8_t *rec, int64_t j, int h, int kind, int asym) {
  if (asym == 2) return _mm256_load_ps(x86_rec_zpf_f32(R, rec, j) + 8 * h);
  if (asym)
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(x86_rec_zp(R, rec, j) + 8 * h))));
  return _mm256_set1_ps(kind == KIND_INT8 ? 128.0f : 8.0f);
}

/* ---- few rows: R rows x H halves of group g (from half h0), dequantized in registers ---- */

AI void small_tile(const i4o_gemm_ctx *c, const x86_pk *L, int64_t m, int64_t g, int h0, int64_t ncols, const int R,
                   const int H, const int kind, const int asym) {
  const i4o_wdesc *w = c->w;
  const int64_t K = w->K, bs = L->bs, nb = L->nb, j = g % X86_SG;
  const x86_rec rl = x86_sg_rec(L, g);
  const int per_chunk = kind == KIND_INT8 ? 4 : 8;
  const __m256 cb_lo = nf4_levels(0), cb_hi = nf4_levels(1);
  __m256 facc[4][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int h = 0; h < H; h++) facc[r][h] = _mm256_setzero_ps();
  const float *a0 = c->A + m * c->lda;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *rec = x86_record(c->packed, L, g, b);
    const uint8_t *pc = x86_rec_codes(&rl, rec, j) + 32 * h0;
    __m256 bacc[4][2], bacc2[2], zf[2];
#pragma GCC unroll 8
    for (int h = 0; h < H; h++) {
      zf[h] = zero_point(&rl, rec, j, h0 + h, kind, asym);
      bacc2[h] = _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) bacc[r][h] = _mm256_setzero_ps();
    }
    const int64_t kb = b * bs;
    for (int64_t t = 0; t * per_chunk < bs && kb + t * per_chunk < K; t++) {
      __m256i raw[2];
#pragma GCC unroll 8
      for (int h = 0; h < H; h++) raw[h] = _mm256_load_si256((const __m256i *)(pc + t * X86_CHUNK + 32 * h));
      const float *ak = a0 + kb + t * per_chunk;
      if (kb + (t + 1) * per_chunk <= K) {
#pragma GCC unroll 8
        for (int i = 0; i < per_chunk; i++)
#pragma GCC unroll 8
          for (int h = 0; h < H; h++) {
            const __m256 wv = dequant(raw[h], i, kind, zf[h], cb_lo, cb_hi);
            if (R == 1) { /* one row: two chains per half */
              if (i & 1) bacc2[h] = _mm256_fmadd_ps(_mm256_set1_ps(ak[i]), wv, bacc2[h]);
              else bacc[0][h] = _mm256_fmadd_ps(_mm256_set1_ps(ak[i]), wv, bacc[0][h]);
            } else {
#pragma GCC unroll 8
              for (int r = 0; r < R; r++)
                bacc[r][h] = _mm256_fmadd_ps(_mm256_set1_ps(ak[r * c->lda + i]), wv, bacc[r][h]);
            }
          }
      } else { /* the chunk that crosses K: never read activations at or past K */
        for (int i = 0; i < per_chunk && kb + t * per_chunk + i < K; i++)
#pragma GCC unroll 8
          for (int h = 0; h < H; h++) {
            const __m256 wv = dequant(raw[h], i, kind, zf[h], cb_lo, cb_hi);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
              bacc[r][h] = _mm256_fmadd_ps(_mm256_set1_ps(ak[r * c->lda + i]), wv, bacc[r][h]);
          }
      }
    }
#pragma GCC unroll 8
    for (int h = 0; h < H; h++) {
      const __m256 s = _mm256_load_ps(x86_rec_scales_f32(&rl, rec, j) + 8 * (h0 + h));
      if (R == 1) bacc[0][h] = _mm256_add_ps(bacc[0][h], bacc2[h]);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) facc[r][h] = _mm256_fmadd_ps(bacc[r][h], s, facc[r][h]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < H; h++) {
    const int64_t left = ncols - 8 * h;
    if (left <= 0) break;
    x86_store8(c, m, 16 * g + 8 * (h0 + h), left, &facc[0][h], 2, R, 0, NULL);
  }
}

#define SMALL_FN(R, H)                                                                                            \
  T256 static void small_##R##x##H(const i4o_gemm_ctx *c, const x86_pk *L, int64_t m, int64_t g, int h0,          \
                                   int64_t ncols, int kind, int asym) {                                           \
    X86_SPECIALISE_RZ(kind, asym, small_tile, c, L, m, g, h0, ncols, R, H);                                          \
  }
SMALL_FN(1, 2)
SMALL_FN(1, 1)
SMALL_FN(2, 1)
SMALL_FN(3, 1)
SMALL_FN(4, 1)

typedef void (*small_fn)(const i4o_gemm_ctx *, const x86_pk *, int64_t, int64_t, int, int64_t, int, int);

/* ---- many rows: dequantized panel + 6 x 16 micro-kernel ---- */

/* Scale factors of the int4 fill without shifts (fill_int4): code i of a 32-bit lane is taken in place,
 * (raw & 0xF << 8i) for the low nibbles and ((raw >> 4) & 0xF << 8(i - 4)) for the high ones, so it
 * converts to q * 2^(8p) with p = i % 4, and the scale and zero point are scaled by 2^-8p and 2^8p.
 * Powers of two change no rounding, so w = (q - z) * s keeps every bit while s * 2^-24 stays a normal
 * float and -8 s cannot overflow: 2^-102 <= |s| <= 2^120, or s = 0 (other blocks, NaN and infinities
 * included, take the shifting fill). */
AI int plain_scales(__m256 s) {
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), s);
  const __m256 in = _mm256_and_ps(_mm256_cmp_ps(a, _mm256_set1_ps(0x1p-102f), _CMP_GE_OQ),
                                  _mm256_cmp_ps(a, _mm256_set1_ps(0x1p120f), _CMP_LE_OQ));
  return _mm256_movemask_ps(_mm256_or_ps(in, _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_EQ_OQ))) == 0xFF;
}

/* 8 consecutive k of one half-chunk (8 columns) into dst[i * 16], int4 codes with integer zero points
 * (zp[p] = z * 2^8p) or none (zp[0] = -8 s) */
AI void fill_int4(__m256i raw, float *dst, const __m256 sp[4], const __m256 zp[4], const int asym) {
  const __m256i hi = _mm256_srli_epi32(raw, 4);
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    const int p = i & 3;
    const __m256 q = _mm256_cvtepi32_ps(_mm256_and_si256(i < 4 ? raw : hi, _mm256_set1_epi32(0xF << (8 * p))));
    /* no zero points: (q - 8) * s = q * s + (-8 s) rounded once (8 s is exact), one FMA */
    const __m256 v = asym ? _mm256_mul_ps(_mm256_sub_ps(q, zp[p]), sp[p]) : _mm256_fmadd_ps(q, sp[p], zp[0]);
    _mm256_store_ps(dst + i * 16, v);
  }
}

/* panel[k][16] = dequantized weights of group g for k in [k0, k0 + kc), block by block (k0 and the block
 * starts are multiples of 16; kc may end inside a block): no division and record lookup per chunk */
AI void fill_panel(const i4o_gemm_ctx *c, const x86_pk *L, int64_t g, int64_t k0, int64_t kc, float *panel,
                   const int kind, const int asym) {
  const int per_chunk = kind == KIND_INT8 ? 4 : 8;
  const __m256 cb_lo = nf4_levels(0), cb_hi = nf4_levels(1);
  const int64_t bs = L->bs, j = g % X86_SG, k1 = k0 + kc;
  const x86_rec rl = x86_sg_rec(L, g);
  for (int64_t b = k0 / bs, kb = b * bs; kb < k1; b++, kb += bs) {
    const uint8_t *rec = x86_record(c->packed, L, g, b);
    const uint8_t *pc = x86_rec_codes(&rl, rec, j);
    if (b + PREFETCH_BLOCKS < L->nb) x86_prefetch_rec(&rl, rec, j, 1, PREFETCH_BLOCKS);
    const int64_t ks = kb > k0 ? kb : k0, ke = kb + bs < k1 ? kb + bs : k1;
    __m256 s[2], zf[2];
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      s[h] = _mm256_load_ps(x86_rec_scales_f32(&rl, rec, j) + 8 * h);
      zf[h] = zero_point(&rl, rec, j, h, kind, asym);
    }
    if (kind == KIND_INT4 && asym < 2 && plain_scales(s[0]) && plain_scales(s[1])) {
      __m256 sp[2][4], zp[2][4];
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
          sp[h][p] = _mm256_mul_ps(s[h], _mm256_set1_ps(1.0f / (float)(1 << (8 * p))));
          zp[h][p] = _mm256_mul_ps(asym ? zf[h] : s[h], _mm256_set1_ps(asym ? (float)(1 << (8 * p)) : -8.0f));
        }
      for (int64_t k = ks; k < ke; k += 8) {
        const uint8_t *chunk = pc + (k - kb) / 8 * X86_CHUNK;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
          fill_int4(_mm256_load_si256((const __m256i *)(chunk + 32 * h)), panel + (k - k0) * 16 + 8 * h, sp[h], zp[h], asym);
      }
      continue;
    }
    for (int64_t k = ks; k < ke; k += per_chunk) {
      const uint8_t *chunk = pc + (k - kb) / per_chunk * X86_CHUNK;
      float *dst = panel + (k - k0) * 16;
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) {
        const __m256i raw = _mm256_load_si256((const __m256i *)(chunk + 32 * h));
#pragma GCC unroll 8
        for (int i = 0; i < per_chunk; i++)
          _mm256_store_ps(dst + i * 16 + 8 * h, _mm256_mul_ps(dequant(raw, i, kind, zf[h], cb_lo, cb_hi), s[h]));
      }
    }
  }
}

#define PANEL_FN(KIND, ASYM, NAME) \
  T256 static void NAME(const i4o_gemm_ctx *c, const x86_pk *L, int64_t g, int64_t k0, int64_t kc, float *panel) { \
    fill_panel(c, L, g, k0, kc, panel, KIND, ASYM);                                                                 \
  }
PANEL_FN(KIND_INT4, 0, panel_int4)
PANEL_FN(KIND_INT4, 1, panel_int4_asym)
PANEL_FN(KIND_NF4, 0, panel_nf4)
PANEL_FN(KIND_INT8, 0, panel_int8)
PANEL_FN(KIND_INT8, 1, panel_int8_asym)
PANEL_FN(KIND_INT4, 2, panel_int4_real)
PANEL_FN(KIND_INT8, 2, panel_int8_real)

/* activations packed once per call for the panel path (x86_panel_a_bytes) */
static size_t panel_a_bytes(const i4o_wdesc *w, int64_t M) {
  return M < PANEL_MIN_ROWS ? 64 : x86_panel_a_bytes(M, w->K, MR);
}

/* 8 k of a full 6-row tile: rows 0-3 through a 4 x 8 transpose, rows 4-5 as pairs (8-byte stores);
 * 16 stores instead of 48 */
AI void panel_a_fill8(float *ap, const float *a, int64_t lda) {
  x86_panel_a_4x8(ap, a, lda, MR);
  const __m256 r4 = _mm256_loadu_ps(a + 4 * lda), r5 = _mm256_loadu_ps(a + 5 * lda);
  const __m256 p[2] = {_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5)}; /* k 0, 1 | 4, 5 ; 2, 3 | 6, 7 */
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++) /* k 0-3, then 4-7 */
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
      const __m128 pr = h ? _mm256_extractf128_ps(p[j / 2], 1) : _mm256_castps256_ps128(p[j / 2]);
      float *dst = ap + (4 * h + j) * MR + 4;
      if (j % 2) _mm_storeh_pi((__m64 *)(void *)dst, pr);
      else _mm_storel_pi((__m64 *)(void *)dst, pr);
    }
}

T256 static void panel_prepare_a(const i4o_wdesc *w, const float *A, int64_t lda, int64_t M, int64_t m0, int64_t m1,
                                 void *ws) {
  if (M < PANEL_MIN_ROWS) return;
  const int64_t K = w->K;
  for (int64_t m = m0; m < m1; m += MR) { /* m0 is a multiple of MR (m_tile) */
    float *ap = (float *)ws + (m / MR) * K * MR;
    const int rows = (int)(m1 - m < MR ? m1 - m : MR);
    int64_t k = 0;
    if (rows == MR)
      for (; k + 8 <= K; k += 8) panel_a_fill8(ap + k * MR, A + m * lda + k, lda);
    x86_panel_a_fill(ap, A + m * lda, lda, rows, MR, k, K);
  }
}

/* C[m .. m+R, n .. n+16) (+)= packed A @ panel; first = overwrite (plus bias), else accumulate. FULL: all 16
 * columns exist (plain loads and stores: vmaskmovps stores are microcoded on AMD cores). The earlier panels'
 * sum in C is added after the k loop, not loaded into the accumulators before it: the load (from L2, rows
 * 4 KiB apart) then overlaps the FMAs instead of delaying the first ones (M = 512, one thread: ~2.5 %). */
AI void micro(const i4o_gemm_ctx *c, const float *ap, const float *panel, int64_t m, int64_t n, int64_t ncols,
              int64_t kc, int first, const int R, const int FULL) {
  __m256 acc[MR][2];
  const __m256i mk[2] = {x86_mask8(ncols), x86_mask8(ncols - 8)};
  const int64_t ldc = c->ldc;
  float *cm = c->C + m * ldc + n;
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int h = 0; h < 2; h++) {
      if (!first || !c->bias) acc[r][h] = _mm256_setzero_ps();
      else if (FULL) acc[r][h] = _mm256_loadu_ps(c->bias + n + 8 * h);
      else acc[r][h] = _mm256_maskload_ps(c->bias + n + 8 * h, mk[h]);
    }
  int64_t k = 0;
  if (R <= 3) { /* 2-6 accumulators would wait on the FMA latency: odd k into a second set */
    __m256 acc2[3][2];
#pragma GCC unroll 3
    for (int r = 0; r < R; r++) acc2[r][0] = acc2[r][1] = _mm256_setzero_ps();
    for (; k + 2 <= kc; k += 2) {
      const __m256 w0 = _mm256_load_ps(panel + k * 16), w1 = _mm256_load_ps(panel + k * 16 + 8);
      const __m256 v0 = _mm256_load_ps(panel + k * 16 + 16), v1 = _mm256_load_ps(panel + k * 16 + 24);
#pragma GCC unroll 3
      for (int r = 0; r < R; r++) {
        const __m256 av = _mm256_broadcast_ss(ap + k * MR + r), bv = _mm256_broadcast_ss(ap + k * MR + MR + r);
        acc[r][0] = _mm256_fmadd_ps(av, w0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(av, w1, acc[r][1]);
        acc2[r][0] = _mm256_fmadd_ps(bv, v0, acc2[r][0]);
        acc2[r][1] = _mm256_fmadd_ps(bv, v1, acc2[r][1]);
      }
    }
#pragma GCC unroll 3
    for (int r = 0; r < R; r++) {
      acc[r][0] = _mm256_add_ps(acc[r][0], acc2[r][0]);
      acc[r][1] = _mm256_add_ps(acc[r][1], acc2[r][1]);
    }
  }
  for (; k < kc; k++) {
    const __m256 w0 = _mm256_load_ps(panel + k * 16), w1 = _mm256_load_ps(panel + k * 16 + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
      const __m256 av = _mm256_broadcast_ss(ap + k * MR + r);
      acc[r][0] = _mm256_fmadd_ps(av, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, w1, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int h = 0; h < 2; h++) {
      float *cp = cm + r * ldc + 8 * h;
      __m256 v = acc[r][h];
      if (!first) v = _mm256_add_ps(FULL ? _mm256_loadu_ps(cp) : _mm256_maskload_ps(cp, mk[h]), v);
      if (FULL) _mm256_storeu_ps(cp, v);
      else _mm256_maskstore_ps(cp, mk[h], v);
    }
}

#define MICRO_FN(R)                                                                                             \
  T256 static void micro_##R(const i4o_gemm_ctx *c, const float *ap, const float *panel, int64_t m, int64_t n,  \
                             int64_t ncols, int64_t kc, int first) {                                            \
    if (ncols >= 16) micro(c, ap, panel, m, n, ncols, kc, first, R, 1);                                         \
    else micro(c, ap, panel, m, n, ncols, kc, first, R, 0);                                                     \
  }
MICRO_FN(1)
MICRO_FN(2)
MICRO_FN(3)
MICRO_FN(4)
MICRO_FN(5)
MICRO_FN(6)

typedef void (*micro_fn)(const i4o_gemm_ctx *, const float *, const float *, int64_t, int64_t, int64_t, int64_t, int);
static const micro_fn kMicro[MR + 1] = {NULL, micro_1, micro_2, micro_3, micro_4, micro_5, micro_6};

static void avx2_fp32_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const x86_pk L = x86_pk_layout(w, 0);
  const int kind = x86_kind(w);
  const int asym = x86_asym(w);
  const int64_t g_begin = n0 / 16, g_end = (n1 + 15) / 16; /* n0 is a multiple of n_tile (16) */
  if (c->M < PANEL_MIN_ROWS) { /* prepare_a packed the activations only for the panel path */
    static const small_fn by_rows[5] = {NULL, small_1x1, small_2x1, small_3x1, small_4x1};
    for (int64_t g = g_begin; g < g_end; g++) {
      const int64_t ncols = n1 - 16 * g;
      if (m1 - m0 == 1) {
        small_1x2(c, &L, m0, g, 0, ncols, kind, asym);
        continue;
      }
      for (int h = 0; h < 2 && ncols - 8 * h > 0; h++)
        for (int64_t m = m0; m < m1; m += 4) {
          const int rows = (int)(m1 - m < 4 ? m1 - m : 4);
          by_rows[rows](c, &L, m, g, h, ncols - 8 * h, kind, asym);
        }
    }
    return;
  }
  typedef void (*panel_fn)(const i4o_gemm_ctx *, const x86_pk *, int64_t, int64_t, int64_t, float *);
  static const panel_fn fills[2][3] = {{panel_int4, panel_int4_asym, panel_int4_real},
                                       {panel_int8, panel_int8_asym, panel_int8_real}};
  const panel_fn fill = kind == KIND_NF4 ? panel_nf4 : fills[kind == KIND_INT8][asym];
  float panel[KC * 16] __attribute__((aligned(64)));
  const float *ap_all = (const float *)c->a_ws;
  for (int64_t k0 = 0; k0 < w->K; k0 += KC) {
    const int64_t kc = w->K - k0 < KC ? w->K - k0 : KC;
    for (int64_t g = g_begin; g < g_end; g++) {
      fill(c, &L, g, k0, kc, panel);
      for (int64_t m = m0; m < m1; m += MR) {
        const int rows = (int)(m1 - m < MR ? m1 - m : MR);
        kMicro[rows](c, ap_all + (m / MR) * w->K * MR + k0 * MR, panel, m, 16 * g, n1 - 16 * g, kc, k0 == 0);
      }
    }
  }
}

const i4o_kernel i4o_kernel_avx2_fp32 = {
    .name = "avx2_fp32", .isa = "avx2", .compute = I4O_COMPUTE_FP32,
    .packed_bytes = i4o_x86_packed_bytes_fp32, .pack = i4o_x86_pack_fp32,
    .a_bytes = panel_a_bytes, .prepare_a = panel_prepare_a,
    .gemm = avx2_fp32_gemm, .real_zero_points = 1, .n_tile = 16, .m_tile = MR,
    .tile = {MR, 16, 8, KC}, /* 6 x 16 micro-kernel, 8 codes a chunk, KC-deep panels */
};

/* ---- avx2_int8 ---- */
#define I8_TARGET "avx2,fma,f16c"
#define I8_PREFIX avx2i8_
#define I8_SIGNED 1
#define I8_DOT(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#include "x86_int8_256.inc"

const i4o_kernel i4o_kernel_avx2_int8 = {
    .name = "avx2_int8", .isa = "avx2", .compute = I4O_COMPUTE_INT8,
    .packed_bytes = i4o_x86_packed_bytes_int8, .pack = i4o_x86_pack_int8,
    .a_bytes = i4o_qa_bytes, .prepare_a = avx2i8_qa_prepare,
    .gemm = avx2i8_gemm, .real_zero_points = 1, .n_tile = 16, .m_tile = 4, .tile = I8_TILE,
};
#endif
