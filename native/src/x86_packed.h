/*
 * The in-memory weight layout of the x86 SIMD kernels ("cg16"), built at session start from the
 * portable layout (kernels' pack hook); it never reaches a file.
 *
 * Columns are taken 16 at a time (a column group; N is padded to a multiple of 16 with columns whose
 * scales are 0). For group g and block b the codes of the 16 columns are stored in 64-byte chunks:
 *   4-bit: chunk t covers k = b*bs + 8t ... +7; byte 4j+i of the chunk (column 16g+j, i = 0..3) holds
 *          the code of k = 8t+i in its low nibble and of k = 8t+4+i in its high nibble;
 *   8-bit: chunk t covers k = b*bs + 4t ... +3; byte 4j+i holds the code of k = 4t+i.
 * So a 32-bit lane j of a chunk is one column, and after splitting nibbles each lane holds 4
 * consecutive k of that column: the operand order of vpdpbusd. The fp32 kernels read the same
 * chunks and pick nibble (8i or 8i+4 bits up) of every lane for one k (16 columns in a vector).
 * A 256-bit kernel uses each chunk as two halves (columns 16g..16g+7 and 16g+8..16g+15).
 *
 * Arrays (each 64-byte aligned), for G groups and nb blocks:
 *   codes  [G][nb][chunks(bs)][64]
 *   scales float [G][nb][16]   (the int8 kernels store scale/127 for NF4)
 *   zp     uint8 [G][nb][16]   (only for weights with zero points)
 */
#ifndef I4O_X86_PACKED_H_
#define I4O_X86_PACKED_H_

#include "kernels.h"

typedef struct x86_pk {
  int64_t G, nb, bs;
  int64_t chunks;        /* 64-byte chunks per (group, block) */
  int64_t block_bytes;   /* chunks * 64 */
  size_t scales_off, zp_off, total;
} x86_pk;

static inline int64_t x86_align64(int64_t x) { return (x + 63) & ~(int64_t)63; }

static inline x86_pk x86_pk_layout(const i4o_wdesc *w) {
  x86_pk L;
  L.G = (w->N + 15) / 16;
  L.nb = w->n_blocks;
  L.bs = w->block_size;
  L.chunks = w->bits == 4 ? w->block_size / 8 : w->block_size / 4;
  L.block_bytes = L.chunks * 64;
  const int64_t codes = L.G * L.nb * L.block_bytes;
  L.scales_off = (size_t)x86_align64(codes);
  L.zp_off = L.scales_off + (size_t)x86_align64(L.G * L.nb * 16 * (int64_t)sizeof(float));
  L.total = L.zp_off + (w->zp ? (size_t)x86_align64(L.G * L.nb * 16) : 0);
  return L;
}

static inline const uint8_t *x86_codes(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  return (const uint8_t *)packed + (g * L->nb + b) * L->block_bytes;
}
static inline const float *x86_scales(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  return (const float *)((const uint8_t *)packed + L->scales_off) + (g * L->nb + b) * 16;
}
static inline const uint8_t *x86_zp(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  return (const uint8_t *)packed + L->zp_off + (g * L->nb + b) * 16;
}

/* pack hooks (x86_pack.c): scales as they are, or (int8 kernels) NF4 scales divided by 127 */
I4O_HIDDEN size_t i4o_x86_packed_bytes(const i4o_wdesc *w);
I4O_HIDDEN void i4o_x86_pack_fp32(const i4o_wdesc *w, void *dst);
I4O_HIDDEN void i4o_x86_pack_int8(const i4o_wdesc *w, void *dst);

/* ---- activations of the x86 int8 kernels ----
 * q [M][ldq] int8 as in i4o_qa_prepare (same rounding, zero past K), then per row and block:
 * sa [M][nb] float = amax/127, and zs [M][nb] int32 = zp * sum(q) for weights without zero points
 * (zp = 8 for 4-bit, 128 for 8-bit and NF4 whose codes run through a table offset by 128), or sum(q)
 * for weights with zero points (the kernel multiplies by each column's zero point). */
typedef struct x86_qa {
  int8_t *q;
  float *sa;
  int32_t *zs;
  int64_t ldq, nb;
} x86_qa;

static inline int64_t x86_qa_ldq(const i4o_wdesc *w) { return x86_align64(w->n_blocks * w->block_size); }

static inline size_t x86_qa_bytes(const i4o_wdesc *w, int64_t M) {
  return (size_t)(M * x86_qa_ldq(w)) + (size_t)(M * w->n_blocks) * 8 + 128;
}

static inline x86_qa x86_qa_map(const i4o_wdesc *w, int64_t M, const void *ws) {
  x86_qa v;
  v.ldq = x86_qa_ldq(w);
  v.nb = w->n_blocks;
  v.q = (int8_t *)ws;
  v.sa = (float *)(v.q + M * v.ldq);
  v.zs = (int32_t *)(v.sa + M * v.nb);
  return v;
}

/* The constant zero point of weights without a zero-point tensor, as the int8 kernels see codes. */
static inline int32_t x86_sym_zp(const i4o_wdesc *w) {
  return (w->bits == 8 || w->quant_type == I4O_QUANT_NF4) ? 128 : 8;
}

#endif /* I4O_X86_PACKED_H_ */
