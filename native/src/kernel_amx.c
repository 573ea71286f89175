/* AMX fp32 kernel: the fp32 path's many-row products on AMX-BF16 tiles, with float32 accuracy.
 *
 * A 4-bit integer weight dequantizes to (q - z) * s with q - z an integer in [-15, 15]: exact in bfloat16.
 * A float32 activation a splits exactly into three bfloat16 parts, a = hi + lo + lo2 (hi: a with its low 16
 * bits cleared; lo: the same of a - hi, which is exact; lo2: the rest, at most 8 significant bits). Every
 * product of a part and a code is exact in float32, and TDPBF16PS adds them in float32, so
 *   C[m, n] = sum over blocks b of s[b, n] * (sum over k in b of (hi + lo + lo2)[m, k] * (q - z)[k, n])
 * is a float32 sum of exact products, like the FMA kernels' (a different order; the tests hold every fp32
 * kernel to the same bound against the float64 product). The three parts cost three tile products per
 * tile, which AMX does in 48 cycles for 16 x 16 x 32 multiply-adds (the FMA kernels: 256 cycles at two
 * 16-wide FMAs per cycle). Each block's tile sums are scaled with AVX-512 into a float32 tile in L1, which
 * is added into C once per panel.
 * Exceptions to the split's exactness: activations below ~2^-110 in magnitude (parts in bfloat16's subnormal
 * range, which AMX reads as zero) and float32 subnormals.
 *
 * Layouts (per call): activations in tiles of 16 rows x 32 k, the three parts of a tile 1 KiB apart
 * (prepare_a); weights of 32 columns (two column groups) x KC k expanded per task into bfloat16 tiles in
 * AMX's pair layout (row i of a tile: k = 2i and 2i + 1 of 16 columns), from the packed layout that
 * avx512_fp32 reads (x86_packed.h). A 32 x 32 output tile (four accumulator tiles) sweeps the rows.
 *
 * What AMX cannot take exactly goes to avx512_fp32's code on the same packed weights: fewer than
 * AMX_MIN_ROWS rows (decode), 8-bit and NF4 weights (values not small integers), real zero points, and
 * blocks that are not a multiple of 32. The choice depends on the weight and the call's M only, so every
 * task of a call takes the same path and the threaded driver's result is the serial one bit for bit.
 * Measured on a 16-core Xeon (docs/performance.md, "`--compute fp32` on AMX tiles"): 1.2x-1.6x the FMA
 * kernel's speed on 1-2 threads from M = 16, within the spread on 16 threads.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#include "x86_simd.h"

#define TGT "avx2,fma,f16c,avx512f,avx512bw,avx512vl"
#define TAMX __attribute__((target(TGT)))
#define AI static inline __attribute__((always_inline, target(TGT)))

#define AMX_MIN_ROWS 16
#define SUB 32                /* k per tile */
#define KC 256                /* k per weight panel: 32 columns x 256 k as bfloat16 = 16 KiB (128: slower) */
#define TILE_ELEMS 512        /* bfloat16 values in one 1 KiB tile (16 rows x 64 bytes) */
#define PARTS 3

/* Tile instructions as inline assembly with memory clobbers (the compilers' intrinsics do not tell the
 * optimiser that a tile load reads memory). Tiles 0-3: accumulators (row tile r, column tile c at 2r + c),
 * 4-5: activations of row tiles 0 and 1, 6-7: weights of column tiles 0 and 1. */
#if !defined(I4O_AMX_EMULATE)
#define TLOAD(t, p) __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(p), "r"((long)64) : "memory")
#define TSTORE(t, p) __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(p), "r"((long)64) : "memory")
#define TZERO(t) __asm__ volatile("tilezero %%tmm" #t ::: "memory")
#define TDP(d, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #d ::: "memory")
#define TCFG(p) __asm__ volatile("ldtilecfg %0" ::"m"(*(p)) : "memory")
#define TSAVECFG(p) __asm__ volatile("sttilecfg %0" : "=m"(*(p))::"memory")
#else /* the tile instructions in C, to check the kernel on a CPU without AMX (tests/native/test_amx_emulated.py) */
static _Thread_local uint32_t emu[8][256];
static float emu_f(uint32_t bits) {
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
#define TLOAD(t, p) memcpy(emu[t], (p), 1024)
#define TSTORE(t, p) memcpy((p), emu[t], 1024)
#define TZERO(t) memset(emu[t], 0, 1024)
#define TDP(d, a, b) emu_dp(d, a, b)
#define TCFG(p) (void)(p)
#define TSAVECFG(p) memset((p), 0, sizeof(*(p)))
static void emu_dp(int d, int a, int b) {
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 16; n++) {
      float acc = emu_f(emu[d][m * 16 + n]);
      for (int k = 0; k < 16; k++) {
        const uint32_t av = emu[a][m * 16 + k], bv = emu[b][k * 16 + n];
        acc += emu_f(av << 16) * emu_f(bv << 16) + emu_f(av & 0xFFFF0000u) * emu_f(bv & 0xFFFF0000u);
      }
      memcpy(&emu[d][m * 16 + n], &acc, 4);
    }
}
#endif

typedef struct amx_cfg {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} amx_cfg;

/* The thread's tile configuration is shared with whatever else runs AMX code on it, and ONNX Runtime's own
 * AMX kernels (MLAS's int8 gemm) load theirs once per thread and then rely on it: so a task saves the
 * configuration it finds, loads its own, and restores the saved one when it is done (a saved palette of 0,
 * nothing configured, restores as released tiles). */
static void tiles_begin(amx_cfg *saved) {
  amx_cfg cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  TSAVECFG(saved);
  TCFG(&cfg);
}
static void tiles_end(const amx_cfg *saved) { TCFG(saved); }

static int use_amx(const i4o_wdesc *w, int64_t M) {
  return M >= AMX_MIN_ROWS && w->bits == 4 && w->quant_type == I4O_QUANT_INT && !w->zpf && w->block_size % SUB == 0;
}

static int64_t n_sub(const i4o_wdesc *w) { return (w->K + SUB - 1) / SUB; }

/* ---- activations: three bfloat16 parts, tile by tile ---- */

static size_t amx_a_bytes(const i4o_wdesc *w, int64_t M) {
  if (!use_amx(w, M)) return i4o_kernel_avx512_fp32.a_bytes(w, M);
  return (size_t)((M + 15) / 16) * (size_t)n_sub(w) * PARTS * TILE_ELEMS * sizeof(uint16_t);
}

/* the parts' tile (row tile mt, k tile s, part p) */
static inline uint16_t *a_tile(const void *ws, const i4o_wdesc *w, int64_t mt, int64_t s, int p) {
  return (uint16_t *)(uintptr_t)ws + ((mt * n_sub(w) + s) * PARTS + p) * TILE_ELEMS;
}

/* 16 activations to their parts' bits (bfloat16 in the low 16 bits of each lane) */
AI void split3(__m512 x, __m256i out[PARTS]) {
  const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
  const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), high));
  /* x - hi is exact; where x == hi (infinities among them) the rest is 0, not inf - inf */
  const __m512 r1 = _mm512_maskz_sub_ps(_mm512_cmp_ps_mask(x, hi, _CMP_NEQ_UQ), x, hi);
  const __m512 lo = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r1), high));
  const __m512 lo2 = _mm512_sub_ps(r1, lo);
  out[0] = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(hi), 16));
  out[1] = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(lo), 16));
  out[2] = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(lo2), 16));
}

TAMX static void amx_prepare_a(const i4o_wdesc *w, const float *A, int64_t lda, int64_t M, int64_t m0, int64_t m1,
                               void *ws) {
  if (!use_amx(w, M)) {
    i4o_kernel_avx512_fp32.prepare_a(w, A, lda, M, m0, m1, ws);
    return;
  }
  const int64_t K = w->K, ns = n_sub(w);
  const int64_t end = m1 == M ? (M + 15) / 16 * 16 : m1; /* m0, m1 < M: multiples of 16 (m_tile 48) */
  for (int64_t m = m0; m < end; m++) {
    const float *a = A + m * lda;
    for (int64_t s = 0; s < ns; s++) {
      __m256i part[2][PARTS];
#pragma GCC unroll 2
      for (int h = 0; h < 2; h++) {
        const int64_t k = s * SUB + 16 * h;
        const __m512 x = m < M ? _mm512_maskz_loadu_ps(x86_mask16(K - k), a + k) : _mm512_setzero_ps();
        split3(x, part[h]);
      }
#pragma GCC unroll 3
      for (int p = 0; p < PARTS; p++) {
        uint16_t *row = a_tile(ws, w, m / 16, s, p) + (m % 16) * 32;
        _mm256_store_si256((__m256i *)row, part[0][p]);
        _mm256_store_si256((__m256i *)(row + 16), part[1][p]);
      }
    }
  }
}

/* ---- weights: 32 columns x KC k as bfloat16 tiles ---- */

/* Tile (k tile s - s0, column tile g) of panel bp: the codes of groups g0, g0 + 1 for k tiles [s0, s1), as
 * q - z in bfloat16; row i of a tile holds k = 2i, 2i + 1 of each column as one 32-bit lane. */
AI void fill_b(const i4o_gemm_ctx *c, const x86_pk *L, int64_t g0, const int G, int64_t s0, int64_t s1,
               uint16_t *bp, const int asym) {
  const __m512 lut = x86_lut512(KIND_INT4, asym);
  const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
  const x86_rec rl = x86_sg_rec(L, g0);
  const int64_t j0 = g0 % X86_SG;
  for (int64_t s = s0; s < s1; s++) {
    const int64_t k = s * SUB, b = k / L->bs, t0 = (k - b * L->bs) / 8;
    const uint8_t *rec = x86_record(c->packed, L, g0, b);
#pragma GCC unroll 2
    for (int g = 0; g < G; g++) {
      const uint8_t *pc = x86_rec_codes(&rl, rec, j0 + g) + t0 * X86_CHUNK;
      const __m512 zf = x86_zero_points512(&rl, rec, j0 + g, KIND_INT4, asym);
      uint16_t *dst = bp + ((s - s0) * 2 + g) * TILE_ELEMS;
#pragma GCC unroll 4
      for (int t = 0; t < SUB / 8; t++) {
        const __m512i raw = _mm512_load_si512((const void *)(pc + t * X86_CHUNK));
        __m512i v[8]; /* element i of the chunk: k = 8t + i (low nibbles 0-3, high nibbles 4-7) */
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) /* a small integer: its float32's top half is its bfloat16 */
          v[i] = _mm512_castps_si512(x86_dequant512(raw, i, KIND_INT4, asym, lut, zf));
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
          _mm512_store_si512((void *)(dst + (4 * t + u) * 32),
                             _mm512_or_si512(_mm512_srli_epi32(v[2 * u], 16), _mm512_and_si512(v[2 * u + 1], high)));
      }
    }
  }
}

/* The R x G accumulator tiles saved in acc, block b's part: out[t] += acc[t] * (the block's scales of the
 * tile's 16 columns), rows of all 16 (rows past M hold zeros) */
AI void block_epilogue(const x86_pk *L, const void *packed, const float (*acc)[256], float (*out)[256], int64_t b,
                       int64_t g0, const int R, const int G) {
  const x86_rec rl = x86_sg_rec(L, g0);
  const uint8_t *rec = x86_record(packed, L, g0, b);
#pragma GCC unroll 2
  for (int g = 0; g < G; g++) {
    const __m512 s = _mm512_load_ps(x86_rec_scales_f32(&rl, rec, g0 % X86_SG + g));
#pragma GCC unroll 2
    for (int r = 0; r < R; r++) {
      const int t = 2 * r + g;
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++)
        _mm512_store_ps(out[t] + 16 * i, _mm512_fmadd_ps(_mm512_load_ps(acc[t] + 16 * i), s, _mm512_load_ps(out[t] + 16 * i)));
    }
  }
}

/* The output tile of R row tiles (rows m ..) x G column tiles (groups g0 ..) over k tiles [s0, s1): per
 * block (or the part of one in this panel) the tile products accumulate in tiles, which are saved; the
 * saved block is scaled into a float32 tile in L1 while the next block's tile products run (its loads then
 * never wait for tile stores just issued); C (rows 4 KiB apart, which would evict each other from L1) is
 * written once per panel. */
AI void out_tile(const i4o_gemm_ctx *c, const x86_pk *L, const uint16_t *bp, int64_t m, int64_t m1, int64_t g0,
                 int64_t n1, int64_t s0, int64_t s1, const int R, const int G) {
  float acc[2][4][256] __attribute__((aligned(64)));
  float out[4][256] __attribute__((aligned(64)));
  const int64_t per_block = L->bs / SUB;
  /* addresses in locals: the tile instructions' memory clobbers would make the compiler reload w->K and
   * a_ws and redo a_tile's arithmetic before every tile load */
  const uint16_t *a0 = a_tile(c->a_ws, c->w, m / 16, s0, 0), *wt = bp;
  const int64_t a_row_tile = n_sub(c->w) * PARTS * TILE_ELEMS; /* from row tile m / 16 to the next */
  int64_t left = per_block - s0 % per_block;                    /* k tiles to the end of the block */
  int cur = 0;
  int64_t pend_b = -1;
  memset(out, 0, sizeof(out));
  TZERO(0);
  TZERO(1);
  TZERO(2);
  TZERO(3);
  for (int64_t s = s0; s < s1; s++, a0 += PARTS * TILE_ELEMS, wt += 2 * TILE_ELEMS) {
    TLOAD(6, wt);
    if (G == 2) TLOAD(7, wt + TILE_ELEMS);
#pragma GCC unroll 3
    for (int p = 0; p < PARTS; p++) {
      TLOAD(4, a0 + p * TILE_ELEMS);
      if (R == 2) TLOAD(5, a0 + a_row_tile + p * TILE_ELEMS);
      TDP(0, 4, 6);
      if (G == 2) TDP(1, 4, 7);
      if (R == 2) TDP(2, 5, 6);
      if (R == 2 && G == 2) TDP(3, 5, 7);
    }
    if (--left && s + 1 < s1) continue; /* the block goes on in this panel */
    left = per_block;
    TSTORE(0, acc[cur][0]);
    TZERO(0);
    if (G == 2) {
      TSTORE(1, acc[cur][1]);
      TZERO(1);
    }
    if (R == 2) {
      TSTORE(2, acc[cur][2]);
      TZERO(2);
    }
    if (R == 2 && G == 2) {
      TSTORE(3, acc[cur][3]);
      TZERO(3);
    }
    if (pend_b >= 0) block_epilogue(L, c->packed, (const float (*)[256])acc[cur ^ 1], out, pend_b, g0, R, G);
    pend_b = s / per_block;
    cur ^= 1;
  }
  block_epilogue(L, c->packed, (const float (*)[256])acc[cur ^ 1], out, pend_b, g0, R, G);
  /* C (+)= out (+ bias on the first panel) */
#pragma GCC unroll 2
  for (int g = 0; g < G; g++) {
    const int64_t n = 16 * (g0 + g);
    const __mmask16 mk = x86_mask16(n1 - n);
    const __m512 bias = s0 == 0 && c->bias ? _mm512_maskz_loadu_ps(mk, c->bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int r = 0; r < R; r++) {
      const int64_t mr = m + 16 * r, rows = m1 - mr < 16 ? m1 - mr : 16;
      for (int64_t i = 0; i < rows; i++) {
        float *cp = c->C + (mr + i) * c->ldc + n;
        const __m512 base = s0 == 0 ? bias : _mm512_maskz_loadu_ps(mk, cp);
        _mm512_mask_storeu_ps(cp, mk, _mm512_add_ps(_mm512_load_ps(out[2 * r + g] + 16 * i), base));
      }
    }
  }
}

#define OUT_FN(R, G)                                                                                              \
  TAMX static void out_##R##x##G(const i4o_gemm_ctx *c, const x86_pk *L, const uint16_t *bp, int64_t m, int64_t m1, \
                                 int64_t g0, int64_t n1, int64_t s0, int64_t s1) {                                 \
    out_tile(c, L, bp, m, m1, g0, n1, s0, s1, R, G);                                                               \
  }
OUT_FN(1, 1)
OUT_FN(1, 2)
OUT_FN(2, 1)
OUT_FN(2, 2)

#define FILL_FN(G)                                                                                              \
  TAMX static void fill_##G(const i4o_gemm_ctx *c, const x86_pk *L, int64_t g0, int64_t s0, int64_t s1,         \
                            uint16_t *bp, int asym) {                                                           \
    if (asym) fill_b(c, L, g0, G, s0, s1, bp, 1);                                                               \
    else fill_b(c, L, g0, G, s0, s1, bp, 0);                                                                    \
  }
FILL_FN(1)
FILL_FN(2)

static void amx_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  if (!use_amx(w, c->M)) {
    i4o_kernel_avx512_fp32.gemm(c, m0, m1, n0, n1);
    return;
  }
  typedef void (*out_fn)(const i4o_gemm_ctx *, const x86_pk *, const uint16_t *, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t);
  static const out_fn kOut[2][2] = {{out_1x1, out_1x2}, {out_2x1, out_2x2}};
  uint16_t bp[KC / SUB * 2 * TILE_ELEMS] __attribute__((aligned(64)));
  const x86_pk L = x86_pk_layout(w, 0);
  const int asym = x86_asym(w);
  const int64_t ns = n_sub(w), g_begin = n0 / 16, g_end = (n1 + 15) / 16;
  amx_cfg saved;
  tiles_begin(&saved);
  for (int64_t s0 = 0; s0 < ns; s0 += KC / SUB) {
    const int64_t s1 = s0 + KC / SUB < ns ? s0 + KC / SUB : ns;
    for (int64_t g = g_begin; g < g_end; g += 2) {
      const int G = g + 2 <= g_end ? 2 : 1;
      (G == 2 ? fill_2 : fill_1)(c, &L, g, s0, s1, bp, asym);
      for (int64_t m = m0; m < m1; m += 32) kOut[m1 - m > 16][G - 1](c, &L, bp, m, m1, g, n1, s0, s1);
    }
  }
  tiles_end(&saved);
}

const i4o_kernel i4o_kernel_amx_fp32 = {
    .name = "amx_fp32", .isa = "amx", .compute = I4O_COMPUTE_FP32,
    .packed_bytes = i4o_x86_packed_bytes_fp32, .pack = i4o_x86_pack_fp32, /* avx512_fp32's layout */
    .a_bytes = amx_a_bytes, .prepare_a = amx_prepare_a,
    /* tasks: whole supergroups; rows in multiples of 48, of both AMX's row tiles and avx512_fp32's (12) */
    .gemm = amx_gemm, .real_zero_points = 1, .n_tile = 64, .m_tile = 48, .a_elem_bytes = PARTS * 2,
    .tile = {16, 32, SUB, KC}, /* 16-row tiles, 32-column panels of KC k */
};
#endif
