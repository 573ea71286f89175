/* NEON int8-compute kernels (docs/format.md, "The int8 compute path"): the weight codes times the int8
 * activations of i4o_qa_prepare, exact in int32 per block, then the float epilogue of scalar_int8 in
 * the same order, so every kernel here equals scalar_int8 bit for bit.
 *
 *   neon_int8     armv7 NEON and every aarch64 CPU (Cortex-A53/A72): smull/smlal + sadalp
 *   neondot_int8  aarch64 with dotprod (Cortex-A55/A76, Neoverse N1): sdot
 *   i8mm_int8     aarch64 with i8mm (Neoverse V1/N2/V2, Cortex-A510/A710/X2): smmla on 2 rows x 2
 *                 columns x 8 k; an odd last row goes through the sdot tile
 *
 * The dotprod and i8mm code carries __attribute__((target)); every file is compiled with the same
 * baseline flags and dispatch.c runs a kernel only where getauxval reports its instructions.
 *
 * Weights become int8 lanes: 4-bit codes as they are (0..15), 8-bit codes minus 128 (xor 0x80), NF4
 * codes through the int8 codebook. The block's integer result is then raw + corr * sum(q), with
 * corr = -zero_point (4-bit), 128 - zero_point (8-bit) or 0 (NF4): the same int32 as the scalar
 * reference's sum(q * code) - zero_point * sum(q).
 *
 * 4-bit blocks are read 32 codes (16 bytes) at a time: the low nibbles are the even elements and the
 * high nibbles the odd ones, and vld2 splits the activations the same way, so no byte shuffles are
 * needed (a dot product does not care about the order of its terms). Blocks that are an odd
 * multiple of 16 finish with one 16-code step.
 */
#include "kernels.h"

#if defined(I4O_ARM_NEON_KERNELS)
#if defined(__arm__) && !defined(__ARM_NEON)
/* armhf's baseline FPU has no NEON: enable it for this file only; dispatch.c runs it only on NEON CPUs */
#pragma GCC target("fpu=neon")
#endif
#include <arm_neon.h>

#define KINLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define DOT_TARGET __attribute__((target("dotprod")))
#define I8MM_TARGET __attribute__((target("dotprod,i8mm")))
#else
#define DOT_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))
#define I8MM_TARGET __attribute__((target("arch=armv8.2-a+dotprod+i8mm")))
#endif

#define NC 4 /* columns per tile */
#if defined(__aarch64__)
#define MAXR 4 /* rows per tile */
#else
#define MAXR 2 /* armv7 has 16 q registers */
#endif

/* ---- loading weights and activations ---- */

#if defined(__aarch64__)
typedef int8x16_t lut_t;
static inline lut_t lut_load(void) { return vld1q_s8(i4o_nf4_i8()); }
KINLINE int8x16_t lut_map(lut_t lut, uint8x16_t idx) { return vqtbl1q_s8(lut, idx); }
#else
typedef int8x8x2_t lut_t;
static inline lut_t lut_load(void) {
  const int8_t *t = i4o_nf4_i8();
  lut_t l;
  l.val[0] = vld1_s8(t);
  l.val[1] = vld1_s8(t + 8);
  return l;
}
KINLINE int8x16_t lut_map(lut_t lut, uint8x16_t idx) {
  return vcombine_s8(vtbl2_s8(lut, vreinterpret_s8_u8(vget_low_u8(idx))),
                     vtbl2_s8(lut, vreinterpret_s8_u8(vget_high_u8(idx))));
}
#endif

/* 32 weights of a column from p as two int8 vectors, in the lane order of load_q32. */
KINLINE void load_w32(const uint8_t *p, int bits, int nf4, lut_t lut, int8x16_t w[2]) {
  if (bits == 8) {
    w[0] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80)));
    w[1] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p + 16), vdupq_n_u8(0x80)));
    return;
  }
  const uint8x16_t b = vld1q_u8(p);
  const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(b, 4); /* even, odd elements */
  w[0] = nf4 ? lut_map(lut, lo) : vreinterpretq_s8_u8(lo);
  w[1] = nf4 ? lut_map(lut, hi) : vreinterpretq_s8_u8(hi);
}

/* 32 activations: even/odd elements for 4-bit weights, in order for 8-bit ones. */
KINLINE void load_q32(const int8_t *q, int bits, int8x16_t out[2]) {
  if (bits == 8) {
    out[0] = vld1q_s8(q);
    out[1] = vld1q_s8(q + 16);
  } else {
    const int8x16x2_t d = vld2q_s8(q);
    out[0] = d.val[0];
    out[1] = d.val[1];
  }
}

/* 16 weights in element order (the last step of a block that is an odd multiple of 16). */
KINLINE int8x16_t load_w16(const uint8_t *p, int bits, int nf4, lut_t lut) {
  if (bits == 8) return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80)));
  const uint8x8_t b = vld1_u8(p);
  const uint8x8x2_t z = vzip_u8(vand_u8(b, vdup_n_u8(0x0F)), vshr_n_u8(b, 4));
  const uint8x16_t codes = vcombine_u8(z.val[0], z.val[1]);
  return nf4 ? lut_map(lut, codes) : vreinterpretq_s8_u8(codes);
}

/* [sum(a[0]), sum(a[1]), sum(a[2]), sum(a[3])] */
KINLINE int32x4_t reduce4(const int32x4_t a[4]) {
#if defined(__aarch64__)
  return vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3]));
#else
  const int32x2_t h0 = vadd_s32(vget_low_s32(a[0]), vget_high_s32(a[0]));
  const int32x2_t h1 = vadd_s32(vget_low_s32(a[1]), vget_high_s32(a[1]));
  const int32x2_t h2 = vadd_s32(vget_low_s32(a[2]), vget_high_s32(a[2]));
  const int32x2_t h3 = vadd_s32(vget_low_s32(a[3]), vget_high_s32(a[3]));
  return vcombine_s32(vpadd_s32(h0, h1), vpadd_s32(h2, h3));
#endif
}

/* ---- the float epilogue: facc[r][c] += (float)(dot + corr[c] * sum[r]) * (sa[r] * sw[c]) ---- */

/* Per block and tile: the columns' weight scales and integer corrections, the rows' activation
 * scales and sums. */
typedef struct blk_params {
  float sw[NC];
  int32_t corr[NC];
  int real;     /* real zero points: dot + corr * sum is sum(q * code); then - zf * (float)sum, as scalar_int8 */
  float zf[NC];
  float sa[MAXR];
  int32_t sum[MAXR];
} blk_params;

KINLINE void block_params(const i4o_wdesc *w, const i4o_qa_view *qa, const int64_t *col, int64_t m, int rows,
                          int64_t b, int bits, int nf4, blk_params *p) {
  const int64_t nb = w->n_blocks;
  for (int c = 0; c < NC; c++) {
    float sw = w->scales[col[c] * nb + b];
    if (nf4) sw *= (1.0f / 127.0f); /* as in scalar_int8 */
    p->sw[c] = sw;
    p->corr[c] = nf4 ? 0 : (bits == 8 ? 128 : 0) - (w->zpf ? 0 : i4o_zero_point(w, col[c], b));
    p->zf[c] = w->zpf ? w->zpf[col[c] * nb + b] : 0.0f;
  }
  p->real = w->zpf != NULL;
  for (int r = 0; r < rows; r++) {
    p->sa[r] = qa->scale[(m + r) * nb + b];
    p->sum[r] = qa->sum[(m + r) * nb + b];
  }
}

#if defined(__aarch64__)
/* aarch64 NEON float arithmetic is IEEE (no flush to zero), so the epilogue runs four columns at once. */
typedef struct facc_t {
  float32x4_t v[MAXR];
} facc_t;

KINLINE void facc_zero(facc_t *f) {
  for (int r = 0; r < MAXR; r++) f->v[r] = vdupq_n_f32(0.0f);
}

KINLINE void facc_block(facc_t *f, const int32x4_t *dot, int rows, const blk_params *p) {
  const float32x4_t sw = vld1q_f32(p->sw);
  const int32x4_t corr = vld1q_s32(p->corr);
  const float32x4_t zf = vld1q_f32(p->zf);
  for (int r = 0; r < rows; r++) {
    const int32x4_t d = vmlaq_n_s32(dot[r], corr, p->sum[r]);
    float32x4_t df = vcvtq_f32_s32(d);
    if (p->real) df = vsubq_f32(df, vmulq_n_f32(zf, (float)p->sum[r]));
    f->v[r] = vaddq_f32(f->v[r], vmulq_f32(df, vmulq_n_f32(sw, p->sa[r])));
  }
}

KINLINE void facc_store(const facc_t *f, int rows, int ncols, const float *bias, const int64_t *col, float *C,
                        int64_t ldc) {
  float b4[NC] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (bias)
    for (int c = 0; c < NC; c++) b4[c] = bias[col[c]];
  const float32x4_t vb = vld1q_f32(b4);
  for (int r = 0; r < rows; r++) {
    float out[NC];
    vst1q_f32(out, vaddq_f32(f->v[r], vb));
    for (int c = 0; c < ncols; c++) C[r * ldc + col[c]] = out[c];
  }
}
#else
/* armv7 NEON flushes denormals to zero; the float epilogue stays in VFP (IEEE) arithmetic. */
typedef struct facc_t {
  float v[MAXR][NC];
} facc_t;

KINLINE void facc_zero(facc_t *f) {
  for (int r = 0; r < MAXR; r++)
    for (int c = 0; c < NC; c++) f->v[r][c] = 0.0f;
}

KINLINE void facc_block(facc_t *f, const int32x4_t *dot, int rows, const blk_params *p) {
  for (int r = 0; r < rows; r++) {
    int32_t d[NC];
    vst1q_s32(d, dot[r]);
    for (int c = 0; c < NC; c++) {
      const int32_t v = (int32_t)((uint32_t)d[c] + (uint32_t)p->corr[c] * (uint32_t)p->sum[r]);
      float vf = (float)v;
      if (p->real) vf -= p->zf[c] * (float)p->sum[r];
      f->v[r][c] += vf * (p->sa[r] * p->sw[c]);
    }
  }
}

KINLINE void facc_store(const facc_t *f, int rows, int ncols, const float *bias, const int64_t *col, float *C,
                        int64_t ldc) {
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < ncols; c++) C[r * ldc + col[c]] = f->v[r][c] + (bias ? bias[col[c]] : 0.0f);
}
#endif

/* ---- the dot-product kernels share one template (tile, rows and driver), instantiated per target;
 * i8mm (below) brings its own tile ---- */

KINLINE int32x4_t acc_mull(int32x4_t acc, int8x16_t q, int8x16_t w) {
  /* two products of |q| <= 127 and |w| <= 128 fit int16 */
  int16x8_t p = vmull_s8(vget_low_s8(q), vget_low_s8(w));
  p = vmlal_s8(p, vget_high_s8(q), vget_high_s8(w));
  return vpadalq_s16(acc, p);
}

#define TILE_PREFIX neon
#define TILE_TARGET
#define TILE_ACC(acc, q, w) acc_mull((acc), (q), (w))
#if defined(__aarch64__)
#define MULL_ROWS 2 /* the int16 products need registers of their own */
#else
#define MULL_ROWS 1 /* armv7: 16 q registers */
#endif
#define TILE_ROWS MULL_ROWS
#include "neon_int8_tile.h"

#if defined(__aarch64__)
#define TILE_PREFIX neondot
#define TILE_TARGET DOT_TARGET
#define TILE_ACC(acc, q, w) vdotq_s32((acc), (q), (w))
#define TILE_ROWS 4
#include "neon_int8_tile.h"
#endif

const i4o_kernel i4o_kernel_neon_int8 = {
    .name = "neon_int8", .isa = "neon", .compute = I4O_COMPUTE_INT8,
    .a_bytes = i4o_qa_bytes, .prepare_a = i4o_qa_prepare,
    .gemm = neon_int8_gemm, .real_zero_points = 1, .n_tile = NC, .m_tile = 1, .tile = {MULL_ROWS, NC, 32, 0}, /* 32 codes a step */
};

#if defined(__aarch64__)
const i4o_kernel i4o_kernel_neondot_int8 = {
    .name = "neondot_int8", .isa = "neondot", .compute = I4O_COMPUTE_INT8,
    .a_bytes = i4o_qa_bytes, .prepare_a = i4o_qa_prepare,
    .gemm = neondot_int8_gemm, .real_zero_points = 1, .n_tile = NC, .m_tile = 1, .tile = {4, NC, 32, 0},
};

/* ---- i8mm: smmla multiplies a 2x8 block of two activation rows by an 8x2 block of two weight
 * columns into [r0c0, r0c1, r1c0, r1c1]; tiles of 2 or 4 rows by 4 columns ---- */

#define ZIP1(a, b) vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)))
#define ZIP2(a, b) vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)))

/* dot[r] = [sum over the block of q[r] * w[c] for c = 0..3], rows = 2 * pairs */
I8MM_TARGET KINLINE void i8mm_tile(const int8_t *const *q, const uint8_t *const *w, int64_t bs, int pairs,
                                   int bits, int nf4, lut_t lut, int32x4_t *dot) {
  int32x4_t acc[MAXR / 2][NC / 2];
  for (int p = 0; p < pairs; p++)
    for (int cp = 0; cp < NC / 2; cp++) acc[p][cp] = vdupq_n_s32(0);
  int64_t i = 0;
  for (; i + 32 <= bs; i += 32) {
    int8x16_t wv[NC][2], B[NC / 2][4];
    for (int c = 0; c < NC; c++) load_w32(w[c] + i * bits / 8, bits, nf4, lut, wv[c]);
    for (int cp = 0; cp < NC / 2; cp++)
      for (int h = 0; h < 2; h++) {
        B[cp][2 * h] = ZIP1(wv[2 * cp][h], wv[2 * cp + 1][h]);
        B[cp][2 * h + 1] = ZIP2(wv[2 * cp][h], wv[2 * cp + 1][h]);
      }
    for (int p = 0; p < pairs; p++) {
      int8x16_t q0[2], q1[2], A[4];
      load_q32(q[2 * p] + i, bits, q0);
      load_q32(q[2 * p + 1] + i, bits, q1);
      for (int h = 0; h < 2; h++) {
        A[2 * h] = ZIP1(q0[h], q1[h]);
        A[2 * h + 1] = ZIP2(q0[h], q1[h]);
      }
      for (int cp = 0; cp < NC / 2; cp++)
        for (int j = 0; j < 4; j++) acc[p][cp] = vmmlaq_s32(acc[p][cp], A[j], B[cp][j]);
    }
  }
  if (i < bs) {
    int8x16_t B[NC / 2][2];
    for (int cp = 0; cp < NC / 2; cp++) {
      const int8x16_t w0 = load_w16(w[2 * cp] + i * bits / 8, bits, nf4, lut);
      const int8x16_t w1 = load_w16(w[2 * cp + 1] + i * bits / 8, bits, nf4, lut);
      B[cp][0] = ZIP1(w0, w1);
      B[cp][1] = ZIP2(w0, w1);
    }
    for (int p = 0; p < pairs; p++) {
      const int8x16_t q0 = vld1q_s8(q[2 * p] + i), q1 = vld1q_s8(q[2 * p + 1] + i);
      const int8x16_t A0 = ZIP1(q0, q1), A1 = ZIP2(q0, q1);
      for (int cp = 0; cp < NC / 2; cp++) {
        acc[p][cp] = vmmlaq_s32(acc[p][cp], A0, B[cp][0]);
        acc[p][cp] = vmmlaq_s32(acc[p][cp], A1, B[cp][1]);
      }
    }
  }
  for (int p = 0; p < pairs; p++) {
    dot[2 * p] = vcombine_s32(vget_low_s32(acc[p][0]), vget_low_s32(acc[p][1]));
    dot[2 * p + 1] = vcombine_s32(vget_high_s32(acc[p][0]), vget_high_s32(acc[p][1]));
  }
}

/* one row: smmla would waste half its work */
I8MM_TARGET KINLINE void i8mm_dot(const int8_t *const *q, const uint8_t *const *w, int64_t bs, int rows, int bits,
                                  int nf4, lut_t lut, int32x4_t *dot) {
  if (rows == 1) neondot_tile(q, w, bs, 1, bits, nf4, lut, dot);
  else i8mm_tile(q, w, bs, rows / 2, bits, nf4, lut, dot);
}

#define TILE_PREFIX i8mm
#define TILE_TARGET I8MM_TARGET
#define TILE_DOT i8mm_dot
#define TILE_ROWS 4
#include "neon_int8_tile.h"

const i4o_kernel i4o_kernel_i8mm_int8 = {
    .name = "i8mm_int8", .isa = "i8mm", .compute = I4O_COMPUTE_INT8,
    .a_bytes = i4o_qa_bytes, .prepare_a = i4o_qa_prepare,
    .gemm = i8mm_int8_gemm, .real_zero_points = 1, .n_tile = NC, .m_tile = 1, .tile = {4, NC, 32, 0},
};
#endif /* __aarch64__ */
#endif /* I4O_ARM_NEON_KERNELS */
