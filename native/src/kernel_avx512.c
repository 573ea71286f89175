/* AVX-512 fp32 kernel on the prepacked "cg16" layout (x86_packed.h): float activations, weights
 * dequantized in registers, FMA.
 *
 * A 32-bit lane of a chunk is one column, so one vector holds one k of 16 columns and the
 * activation is broadcast: no horizontal sums. Codes become floats by a 16-entry table lookup
 * (vpermps reads the low 4 bits of each lane: one shift and one permute per 16 weights; the table
 * holds code - 8, plain codes for weights with zero points, or the NF4 levels).
 *
 * Few rows (M < PANEL_MIN_ROWS): per block, products of unscaled codes accumulate per column and
 * are scaled once at the block's end (R rows x G groups of 16 columns in registers).
 * More rows: a panel of KC x 32 weights is dequantized once into an L1-resident buffer and a
 * 12 x 32 register-blocked micro-kernel (24 accumulators) runs over all rows of the task, which
 * amortises the dequantization over the rows like an ordinary SGEMM.
 */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#include "x86_simd.h"

#define TGT "avx2,fma,f16c,avx512f,avx512bw,avx512vl"
#define T512 __attribute__((target(TGT)))
#define AI static inline __attribute__((always_inline, target(TGT)))

#define PANEL_MIN_ROWS 8
#define PF_DIST 4096 /* bytes ahead of the one-row stream */
#define KC 256 /* panel depth: 256 x 32 floats = 32 KiB (measured: 64 and 128 slower, 512 and 1024 no faster) */
#define MR 12  /* micro-kernel rows */
#define PREFETCH_BLOCKS 4 /* fill_panel: records pulled in ahead */

/* ---- few rows: dequantize in registers ----
 * C[m .. m+R, 16*g0 .. 16*(g0+G)) for G groups of one supergroup, walking each block's record in
 * address order (group by group: one sequential stream). Per block, products of the unscaled codes
 * accumulate per column (in CH independent chains per row, so the FMA latency does not serialise)
 * and are scaled once at the block's end. */
AI void small_tile(const i4o_gemm_ctx *c, const x86_pk *L, int64_t m, int64_t g0, int64_t ncols, const int R,
                   const int G, const int kind, const int asym) {
  const i4o_wdesc *w = c->w;
  const int64_t K = w->K, bs = L->bs, nb = L->nb, lda = c->lda;
  const int per_chunk = kind == KIND_INT8 ? 4 : 8;
  enum { CH = 4 }; /* accumulator chains per row: R * CH accumulators per group */
  const int chains = R == 1 ? 4 : 2;
  const __m512 lut = x86_lut512(kind, asym);
  const int64_t j0 = g0 % X86_SG;
  const x86_rec rl = x86_sg_rec(L, g0);
  const uint8_t *rec = x86_record(c->packed, L, g0, 0);
  __m512 facc[4][4];
#pragma GCC unroll 4
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) facc[r][g] = _mm512_setzero_ps();
  const float *a0 = c->A + m * lda;
  for (int64_t b = 0; b < nb; b++, rec += rl.bytes) {
    const int64_t kb = b * bs;
    const int64_t full = kb + bs <= K ? L->chunks : (K - kb) / per_chunk; /* chunks with every k < K */
    if (R == 1) /* the record's scales and zero points, PF_DIST ahead (the code loads prefetch their own) */
      for (int64_t o = rl.scales_off; o < rl.bytes; o += 64) _mm_prefetch((const char *)(rec + o + PF_DIST), _MM_HINT_T0);
#pragma GCC unroll 4
    for (int g = 0; g < G; g++) {
      const uint8_t *pc = x86_rec_codes(&rl, rec, j0 + g);
      const __m512 zf = x86_zero_points512(&rl, rec, j0 + g, kind, asym);
      __m512 p[4][CH];
#pragma GCC unroll 4
      for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int h = 0; h < CH; h++) p[r][h] = _mm512_setzero_ps();
      for (int64_t t = 0; t < full; t++) {
        const __m512i raw = _mm512_load_si512((const void *)(pc + t * X86_CHUNK));
        if (R == 1) _mm_prefetch((const char *)(pc + t * X86_CHUNK + PF_DIST), _MM_HINT_T0);
        const float *ak = a0 + kb + t * per_chunk;
#pragma GCC unroll 8
        for (int i = 0; i < per_chunk; i++) {
          const __m512 wv = x86_dequant512(raw, i, kind, asym, lut, zf);
#pragma GCC unroll 4
          for (int r = 0; r < R; r++)
            p[r][i % chains] = _mm512_fmadd_ps(_mm512_set1_ps(ak[r * lda + i]), wv, p[r][i % chains]);
        }
      }
      if (full < L->chunks) { /* the chunk that crosses K: never read activations at or past K */
        for (int64_t t = full; t * per_chunk < K - kb; t++) {
          const __m512i raw = _mm512_load_si512((const void *)(pc + t * X86_CHUNK));
#pragma GCC unroll 8
          for (int i = 0; i < per_chunk; i++) {
            const int64_t k = kb + t * per_chunk + i;
            if (k >= K) break;
            const __m512 wv = x86_dequant512(raw, i, kind, asym, lut, zf);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) p[r][0] = _mm512_fmadd_ps(_mm512_set1_ps(a0[r * lda + k]), wv, p[r][0]);
          }
        }
      }
      const __m512 s = _mm512_load_ps(x86_rec_scales_f32(&rl, rec, j0 + g));
#pragma GCC unroll 4
      for (int r = 0; r < R; r++) {
        const __m512 sum = chains == 4 ? _mm512_add_ps(_mm512_add_ps(p[r][0], p[r][1]), _mm512_add_ps(p[r][2], p[r][3]))
                                       : _mm512_add_ps(p[r][0], p[r][1]);
        facc[r][g] = _mm512_fmadd_ps(sum, s, facc[r][g]);
      }
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; g++) {
    const int64_t left = ncols - 16 * g;
    if (left <= 0) break;
    x86_store16(c, m, 16 * (g0 + g), left, &facc[0][g], 4, R, 0, NULL);
  }
}

#define SMALL_FN(R, G)                                                                                            \
  T512 static void small_##R##x##G(const i4o_gemm_ctx *c, const x86_pk *L, int64_t m, int64_t g0, int64_t ncols,  \
                                   int kind, int asym) {                                                          \
    X86_SPECIALISE_RZ(kind, asym, small_tile, c, L, m, g0, ncols, R, G);                                             \
  }

SMALL_FN(1, 1)
SMALL_FN(1, 2)
SMALL_FN(1, 3)
SMALL_FN(1, 4)
SMALL_FN(2, 1)
SMALL_FN(2, 4)
SMALL_FN(3, 1)
SMALL_FN(3, 4)
SMALL_FN(4, 1)
SMALL_FN(4, 4)

typedef void (*small_fn)(const i4o_gemm_ctx *, const x86_pk *, int64_t, int64_t, int64_t, int, int);

/* ---- many rows: dequantized panel + register-blocked micro-kernel ---- */

/* panel[k][16 * G] = dequantized weights of groups g0 .. g0+G-1 for k in [k0, k0 + kc) */
AI void fill_panel(const i4o_gemm_ctx *c, const x86_pk *L, int64_t g0, int64_t k0, int64_t kc, float *panel,
                   const int G, const int kind, const int asym) {
  const int per_chunk = kind == KIND_INT8 ? 4 : 8;
  const __m512 lut = x86_lut512(kind, asym);
  const int64_t bs = L->bs, j0 = g0 % X86_SG, k1 = k0 + kc;
  const x86_rec rl = x86_sg_rec(L, g0);
  /* block by block (k0 and the block starts are multiples of 16; kc may end inside a block) */
  for (int64_t b = k0 / bs, kb = b * bs; kb < k1; b++, kb += bs) {
    const uint8_t *rec = x86_record(c->packed, L, g0, b);
    if (b + PREFETCH_BLOCKS < L->nb) x86_prefetch_rec(&rl, rec, j0, G, PREFETCH_BLOCKS);
    const int64_t ks = kb > k0 ? kb : k0, ke = kb + bs < k1 ? kb + bs : k1;
#pragma GCC unroll 2
    for (int g = 0; g < G; g++) {
      const uint8_t *pc = x86_rec_codes(&rl, rec, j0 + g);
      const __m512 s = _mm512_load_ps(x86_rec_scales_f32(&rl, rec, j0 + g));
      const __m512 zf = x86_zero_points512(&rl, rec, j0 + g, kind, asym);
      for (int64_t k = ks; k < ke; k += per_chunk) {
        const __m512i raw = _mm512_load_si512((const void *)(pc + (k - kb) / per_chunk * X86_CHUNK));
        float *dst = panel + (k - k0) * 16 * G + 16 * g;
#pragma GCC unroll 8
        for (int i = 0; i < per_chunk; i++)
          _mm512_store_ps(dst + i * 16 * G, _mm512_mul_ps(x86_dequant512(raw, i, kind, asym, lut, zf), s));
      }
    }
  }
}

/* Activations for the panel path, packed once per call (x86_panel_a_bytes) */
static size_t panel_a_bytes(const i4o_wdesc *w, int64_t M) {
  return M < PANEL_MIN_ROWS ? 64 : x86_panel_a_bytes(M, w->K, MR);
}

T512 static void panel_prepare_a(const i4o_wdesc *w, const float *A, int64_t lda, int64_t M, int64_t m0, int64_t m1,
                                 void *ws) {
  if (M < PANEL_MIN_ROWS) return;
  const int64_t K = w->K;
  for (int64_t m = m0; m < m1; m += MR) { /* m0 is a multiple of MR (m_tile) */
    float *ap = (float *)ws + (m / MR) * K * MR;
    const int rows = (int)(m1 - m < MR ? m1 - m : MR);
    const float *a = A + m * lda;
    int64_t k = 0;
    if (rows == MR) /* 8 k at a time, rows in threes of 4 x 8 transposes (24 stores instead of 96) */
      for (; k + 8 <= K; k += 8)
#pragma GCC unroll 3
        for (int r = 0; r < MR; r += 4) x86_panel_a_4x8(ap + k * MR + r, a + r * lda + k, lda, MR);
    x86_panel_a_fill(ap, a, lda, rows, MR, k, K);
  }
}

/* C[m .. m+R, cols] (+)= packed A @ panel; first = overwrite (plus bias), else accumulate (the earlier panels'
 * sum in C added after the k loop, as in kernel_avx2.c's micro) */
AI void micro(const i4o_gemm_ctx *c, const float *ap, const float *panel, int64_t m, int64_t n, int64_t ncols,
              int64_t kc, int first, const int R, const int G) {
  __m512 acc[MR][2];
  __mmask16 mk[2];
#pragma GCC unroll 2
  for (int g = 0; g < G; g++) mk[g] = x86_mask16(ncols - 16 * g);
#pragma GCC unroll 12
  for (int r = 0; r < R; r++)
#pragma GCC unroll 2
    for (int g = 0; g < G; g++) {
      if (first && c->bias) acc[r][g] = _mm512_maskz_loadu_ps(mk[g], c->bias + n + 16 * g);
      else acc[r][g] = _mm512_setzero_ps(); /* C of an earlier panel is added at the end (its load off the FMA chain) */
    }
  for (int64_t k = 0; k < kc; k++) {
    __m512 wv[2];
#pragma GCC unroll 2
    for (int g = 0; g < G; g++) wv[g] = _mm512_load_ps(panel + k * 16 * G + 16 * g);
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
      const __m512 av = _mm512_set1_ps(ap[k * MR + r]);
#pragma GCC unroll 2
      for (int g = 0; g < G; g++) acc[r][g] = _mm512_fmadd_ps(av, wv[g], acc[r][g]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; r++)
#pragma GCC unroll 2
    for (int g = 0; g < G; g++) {
      float *cp = c->C + (m + r) * c->ldc + n + 16 * g;
      _mm512_mask_storeu_ps(cp, mk[g], first ? acc[r][g] : _mm512_add_ps(_mm512_maskz_loadu_ps(mk[g], cp), acc[r][g]));
    }
}

#define MICRO_FN(R, G)                                                                                    \
  T512 static void micro_##R##x##G(const i4o_gemm_ctx *c, const float *ap, const float *panel, int64_t m,   \
                                   int64_t n, int64_t ncols, int64_t kc, int first) {                     \
    micro(c, ap, panel, m, n, ncols, kc, first, R, G);                                                    \
  }
#define MICRO_ROWS(G) \
  MICRO_FN(1, G) MICRO_FN(2, G) MICRO_FN(3, G) MICRO_FN(4, G) MICRO_FN(5, G) MICRO_FN(6, G) \
  MICRO_FN(7, G) MICRO_FN(8, G) MICRO_FN(9, G) MICRO_FN(10, G) MICRO_FN(11, G) MICRO_FN(12, G)
MICRO_ROWS(1)
MICRO_ROWS(2)

typedef void (*micro_fn)(const i4o_gemm_ctx *, const float *, const float *, int64_t, int64_t, int64_t, int64_t,
                         int);
static const micro_fn kMicro[2][MR + 1] = {
    {NULL, micro_1x1, micro_2x1, micro_3x1, micro_4x1, micro_5x1, micro_6x1, micro_7x1, micro_8x1, micro_9x1,
     micro_10x1, micro_11x1, micro_12x1},
    {NULL, micro_1x2, micro_2x2, micro_3x2, micro_4x2, micro_5x2, micro_6x2, micro_7x2, micro_8x2, micro_9x2,
     micro_10x2, micro_11x2, micro_12x2},
};

#define PANEL_FN(G)                                                                                             \
  T512 static void panel_##G(const i4o_gemm_ctx *c, const x86_pk *L, int64_t g0, int64_t k0, int64_t kc,        \
                             float *panel, int kind, int asym) {                                                \
    X86_SPECIALISE_RZ(kind, asym, fill_panel, c, L, g0, k0, kc, panel, G);                                         \
  }
PANEL_FN(1)
PANEL_FN(2)

static void avx512_fp32_gemm(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const i4o_wdesc *w = c->w;
  const x86_pk L = x86_pk_layout(w, 0);
  const int kind = x86_kind(w);
  const int asym = x86_asym(w);
  const int64_t g_begin = n0 / 16, g_end = (n1 + 15) / 16; /* n0 is a multiple of n_tile (64) */
  if (m1 - m0 < PANEL_MIN_ROWS) { /* few rows: row tiles of up to 4 (balanced) x whole supergroups */
    static const small_fn one_row[4] = {small_1x1, small_1x2, small_1x3, small_1x4};
    static const small_fn full_sg[4] = {small_1x4, small_2x4, small_3x4, small_4x4};
    static const small_fn one_group[4] = {small_1x1, small_2x1, small_3x1, small_4x1};
    const int64_t tiles = (m1 - m0 + 3) / 4, base = (m1 - m0) / tiles, extra = (m1 - m0) % tiles;
    for (int64_t g = g_begin; g < g_end;) {
      const int64_t left = X86_SG - g % X86_SG, cnt = g_end - g < left ? g_end - g : left;
      for (int64_t i = 0, m = m0; i < tiles; i++) {
        const int rows = (int)(base + (i < extra));
        if (rows == 1) one_row[cnt - 1](c, &L, m, g, n1 - 16 * g, kind, asym);
        else if (cnt == X86_SG) full_sg[rows - 1](c, &L, m, g, n1 - 16 * g, kind, asym);
        else
          for (int64_t j = 0; j < cnt; j++) one_group[rows - 1](c, &L, m, g + j, n1 - 16 * (g + j), kind, asym);
        m += rows;
      }
      g += cnt;
    }
    return;
  }
  /* per K chunk, every column panel of the task is dequantized once, then swept by the micro-kernel
   * over all rows of the task */
  float panel[KC * 32] __attribute__((aligned(64)));
  const float *ap_all = (const float *)c->a_ws;
  for (int64_t k0 = 0; k0 < w->K; k0 += KC) {
    const int64_t kc = w->K - k0 < KC ? w->K - k0 : KC;
    for (int64_t g = g_begin; g < g_end; g += 2) {
      const int G = g + 2 <= g_end ? 2 : 1;
      const int64_t n = 16 * g, ncols = n1 - n;
      (G == 2 ? panel_2 : panel_1)(c, &L, g, k0, kc, panel, kind, asym);
      /* while the micro-kernel runs, bring the next panel's weights towards L2 (their first read,
       * from L3 or memory, otherwise stalls the dequantization) */
      const int64_t gn = g + 2 < g_end ? g + 2 : (k0 + KC < w->K ? g_begin : -1);
      const int64_t kn = g + 2 < g_end ? k0 : k0 + KC;
      if (gn >= 0) {
        const int64_t kne = kn + KC < w->K ? kn + KC : w->K;
        for (int64_t b = kn / L.bs; b * L.bs < kne; b++) {
          const char *r = (const char *)x86_codes(c->packed, &L, gn, b);
          const int64_t bytes = (gn + 2 <= g_end ? 2 : 1) * L.block_bytes;
          for (int64_t o = 0; o < bytes; o += X86_CHUNK) _mm_prefetch(r + o, _MM_HINT_T1);
          _mm_prefetch((const char *)x86_scales(c->packed, &L, gn, b), _MM_HINT_T1);
        }
      }
      for (int64_t m = m0; m < m1; m += MR) {
        const int rows = (int)(m1 - m < MR ? m1 - m : MR);
        kMicro[G - 1][rows](c, ap_all + (m / MR) * w->K * MR + k0 * MR, panel, m, n, ncols, kc, k0 == 0);
      }
    }
  }
}

const i4o_kernel i4o_kernel_avx512_fp32 = {
    .name = "avx512_fp32", .isa = "avx512", .compute = I4O_COMPUTE_FP32,
    .packed_bytes = i4o_x86_packed_bytes_fp32, .pack = i4o_x86_pack_fp32,
    .a_bytes = panel_a_bytes, .prepare_a = panel_prepare_a,
    .gemm = avx512_fp32_gemm, .real_zero_points = 1, .n_tile = 64, .m_tile = MR, /* tasks cover whole supergroups */
    .tile = {MR, 16 * X86_SG, 8, KC}, /* few rows: a supergroup wide; panels: 12 x 32 */
};
#endif
