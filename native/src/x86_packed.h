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
 * Groups are gathered 4 at a time into supergroups (64 columns; the last one may have fewer groups).
 * For supergroup s and block b one record holds, contiguously,
 *   codes  [gs][chunks * 64]
 *   scales [gs][16]  float32 (fp32 kernels) or float16 (int8 kernels, see below; NF4 scales are
 *                    divided by 127 in the kernel)
 *   zp     [gs][16]  uint8, only for weights with zero points
 * padded to 64 bytes; records run over b, then s. A row of decode (M = 1) over 64 columns therefore
 * reads one sequential stream.
 *
 * int8 kernels store scale * 2^-E[n] as float16 and keep colscale[n] = 2^E[n] (float [G][16] after
 * the records); i4o_prepare has already rounded the scales to exactly these values
 * (round_scales_int8 in gemm.c), so the int8 path stays bit-exact with its definition.
 */
#ifndef I4O_X86_PACKED_H_
#define I4O_X86_PACKED_H_

#include "kernels.h"

#define X86_SG 4 /* groups per supergroup */

/* The kinds of weights the kernels specialise on: every kernel body is inlined once per kind and
 * zero-point setting, with both as constants. */
enum { KIND_INT4 = 0, KIND_NF4 = 1, KIND_INT8 = 2 };

static inline int x86_kind(const i4o_wdesc *w) {
  return w->bits == 8 ? KIND_INT8 : (w->quant_type == I4O_QUANT_NF4 ? KIND_NF4 : KIND_INT4);
}

/* fn(args..., kind, asym) with kind and asym turned into constants: the five specialisations (NF4
 * weights have no zero points) */
#define X86_SPECIALISE(kind, asym, fn, ...)    \
  do {                                         \
    if ((kind) == KIND_INT4) {                 \
      if (asym) fn(__VA_ARGS__, KIND_INT4, 1); \
      else fn(__VA_ARGS__, KIND_INT4, 0);      \
    } else if ((kind) == KIND_NF4) {           \
      fn(__VA_ARGS__, KIND_NF4, 0);            \
    } else if (asym) {                         \
      fn(__VA_ARGS__, KIND_INT8, 1);           \
    } else {                                   \
      fn(__VA_ARGS__, KIND_INT8, 0);           \
    }                                          \
  } while (0)

typedef struct x86_pk {
  int64_t G, nb, bs;
  int64_t chunks;        /* 64-byte chunks per (group, block) */
  int64_t block_bytes;   /* chunks * 64 */
  int64_t ssize;         /* bytes per scale: 4 (fp32 kernels) or 2 (int8 kernels) */
  int asym;
  int64_t rec, rec_last; /* record bytes of full supergroups and of the last one */
  int64_t gs_last;       /* groups in the last supergroup */
  size_t colscale_off, total;
} x86_pk;

static inline int64_t x86_align64(int64_t x) { return (x + 63) & ~(int64_t)63; }

static inline int64_t x86_rec_bytes(const x86_pk *L, int64_t gs) {
  return x86_align64(gs * L->block_bytes + gs * 16 * L->ssize + (L->asym ? gs * 16 : 0));
}

static inline x86_pk x86_pk_layout(const i4o_wdesc *w, int int8_scales) {
  x86_pk L;
  L.G = (w->N + 15) / 16;
  L.nb = w->n_blocks;
  L.bs = w->block_size;
  L.chunks = w->bits == 4 ? w->block_size / 8 : w->block_size / 4;
  L.block_bytes = L.chunks * 64;
  L.ssize = int8_scales ? 2 : 4;
  L.asym = w->zp != NULL;
  L.gs_last = L.G % X86_SG ? L.G % X86_SG : X86_SG;
  L.rec = x86_rec_bytes(&L, X86_SG);
  L.rec_last = x86_rec_bytes(&L, L.gs_last);
  const int64_t n_sg = (L.G + X86_SG - 1) / X86_SG;
  L.colscale_off = (size_t)((n_sg - 1) * L.nb * L.rec + L.nb * L.rec_last);
  L.total = L.colscale_off + (int8_scales ? (size_t)(L.G * 16 * 4) : 0);
  return L;
}

/* Activations for the fp32 panel kernels, packed once per call in tiles of mr rows, interleaved:
 * ap[(m / mr) * K * mr + k * mr + r] (rows past M are 0). One pointer then walks contiguous memory,
 * where rows of A lie a multiple of 4 KiB apart and would compete for the same L1 sets. */
static inline size_t x86_panel_a_bytes(int64_t M, int64_t K, int64_t mr) {
  return (size_t)((M + mr - 1) / mr * mr) * (size_t)K * sizeof(float);
}
/* k = k0 .. K-1 of the tile at ap whose `rows` rows start at a (rows < mr are filled with 0) */
static inline void x86_panel_a_fill(float *ap, const float *a, int64_t lda, int rows, int mr, int64_t k0, int64_t K) {
  for (int64_t k = k0; k < K; k++)
    for (int r = 0; r < mr; r++) ap[k * mr + r] = r < rows ? a[r * lda + k] : 0.0f;
}

/* groups in the supergroup of group g */
static inline int64_t x86_gs(const x86_pk *L, int64_t g) {
  return g / X86_SG == (L->G - 1) / X86_SG ? L->gs_last : X86_SG;
}
static inline const uint8_t *x86_record(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  const int64_t s = g / X86_SG;
  return (const uint8_t *)packed + s * L->nb * L->rec + b * (x86_gs(L, g) == X86_SG ? L->rec : L->rec_last);
}
static inline const uint8_t *x86_codes(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  return x86_record(packed, L, g, b) + (g % X86_SG) * L->block_bytes;
}
static inline const void *x86_scales(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  return x86_record(packed, L, g, b) + x86_gs(L, g) * L->block_bytes + (g % X86_SG) * 16 * L->ssize;
}
static inline const uint8_t *x86_zp(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  const int64_t gs = x86_gs(L, g);
  return x86_record(packed, L, g, b) + gs * L->block_bytes + gs * 16 * L->ssize + (g % X86_SG) * 16;
}
static inline const float *x86_colscale(const void *packed, const x86_pk *L, int64_t g) {
  return (const float *)((const uint8_t *)packed + L->colscale_off) + g * 16;
}

/* pack hooks (x86_pack.c): fp32 scales as they are, or (int8 kernels) float16 with a column exponent */
I4O_HIDDEN size_t i4o_x86_packed_bytes_fp32(const i4o_wdesc *w);
I4O_HIDDEN size_t i4o_x86_packed_bytes_int8(const i4o_wdesc *w);
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
