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
 *   zp     [gs][16]  uint8, only for weights with zero points; real zero points: float32 (fp32
 *                    kernels) or float16 (int8 kernels: i4o_prepare has rounded them to float16
 *                    values, so the int8 path's definition in kernel_scalar.c sees the same z)
 * padded to 64 bytes; records run over b, then s. A row of decode (M = 1) over 64 columns therefore
 * reads one sequential stream. x86_rec holds a record's offsets (as MLAS's packed-B struct does); the
 * packer and every kernel address the packed weights only through the accessors below.
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
 * weights have no zero points). asym: 0 none, 1 integer zero points, 2 real ones (X86_SPECIALISE_RZ). */
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

/* X86_SPECIALISE plus real zero points (asym = 2: x86_asym), for the kernels that compute them */
#define X86_SPECIALISE_RZ(kind, asym, fn, ...)                                                  \
  do {                                                                                         \
    if ((asym) == 2 && (kind) == KIND_INT4) fn(__VA_ARGS__, KIND_INT4, 2);                      \
    else if ((asym) == 2) fn(__VA_ARGS__, KIND_INT8, 2);                                        \
    else X86_SPECIALISE(kind, asym, fn, __VA_ARGS__);                                           \
  } while (0)

/* 0: no zero points, 1: integer ones, 2: real ones */
static inline int x86_asym(const i4o_wdesc *w) { return w->zpf ? 2 : w->zp != NULL; }

#define X86_CHUNK 64 /* bytes of one chunk: codes of 16 columns x 4 bytes */

/* Where the parts of one record lie (MLAS's packed-B struct in miniature): offsets from the record's
 * start for a supergroup of gs groups. The kernels take this once per supergroup (x86_sg_rec) and
 * address a record only through the accessors below. */
typedef struct x86_rec {
  int64_t gs;          /* groups in the supergroup */
  int64_t bytes;       /* record bytes (64-byte aligned); the records of blocks b, b+1 are this far apart */
  int64_t codes_step;  /* codes [gs][chunks * 64]: bytes of one group's codes */
  int64_t scales_off;  /* scales [gs][16] from here, float32 or float16 ... */
  int64_t scales_step; /* ... 16 * 4 or 16 * 2 bytes per group */
  int64_t zp_off;      /* zero points [gs][16] from here (weights with zero points) ... */
  int64_t zp_step;     /* ... 16 x uint8, or (real zero points) 16 x float16 or float32 bytes per group */
} x86_rec;

typedef struct x86_pk {
  int64_t G, nb, bs;
  int64_t chunks;        /* 64-byte chunks per (group, block) */
  int64_t block_bytes;   /* chunks * 64: one group's codes in a record */
  int64_t ssize;         /* bytes per scale: 4 (fp32 kernels) or 2 (int8 kernels) */
  int64_t zsize;         /* bytes per zero point: 0 (none), 1 (integer), or real: ssize (float32 / float16) */
  int asym;              /* x86_asym(): 0, 1 (integer) or 2 (real) */
  x86_rec full, last;    /* records of full supergroups and of the last one (gs_last groups) */
  int64_t gs_last;       /* groups in the last supergroup */
  size_t colscale_off, total;
} x86_pk;

static inline int64_t x86_align64(int64_t x) { return (x + 63) & ~(int64_t)63; }

static inline x86_rec x86_rec_make(int64_t gs, int64_t block_bytes, int64_t ssize, int64_t zsize) {
  x86_rec r;
  r.gs = gs;
  r.codes_step = block_bytes;
  r.scales_off = gs * block_bytes;
  r.scales_step = 16 * ssize;
  r.zp_off = r.scales_off + gs * r.scales_step;
  r.zp_step = 16 * zsize;
  r.bytes = x86_align64(r.zp_off + gs * r.zp_step);
  return r;
}

static inline x86_pk x86_pk_layout(const i4o_wdesc *w, int int8_scales) {
  x86_pk L;
  L.G = (w->N + 15) / 16;
  L.nb = w->n_blocks;
  L.bs = w->block_size;
  L.chunks = w->bits == 4 ? w->block_size / 8 : w->block_size / 4;
  L.block_bytes = L.chunks * X86_CHUNK;
  L.ssize = int8_scales ? 2 : 4;
  L.asym = x86_asym(w);
  L.zsize = L.asym == 2 ? L.ssize : L.asym;
  L.gs_last = L.G % X86_SG ? L.G % X86_SG : X86_SG;
  L.full = x86_rec_make(X86_SG, L.block_bytes, L.ssize, L.zsize);
  L.last = x86_rec_make(L.gs_last, L.block_bytes, L.ssize, L.zsize);
  const int64_t n_sg = (L.G + X86_SG - 1) / X86_SG;
  L.colscale_off = (size_t)((n_sg - 1) * L.nb * L.full.bytes + L.nb * L.last.bytes);
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

/* ---- accessors: every address inside the packed weights comes from here ---- */

/* the record layout of the supergroup that holds group g */
static inline const x86_rec *x86_sg_rec_of(const x86_pk *L, int64_t g) {
  return g / X86_SG == (L->G - 1) / X86_SG ? &L->last : &L->full;
}
static inline x86_rec x86_sg_rec(const x86_pk *L, int64_t g) { return *x86_sg_rec_of(L, g); }
/* the record of group g's supergroup for block b (the next block's record is R.bytes further) */
static inline const uint8_t *x86_record(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  return (const uint8_t *)packed + g / X86_SG * L->nb * L->full.bytes + b * x86_sg_rec_of(L, g)->bytes;
}
/* in a record: codes of group j of the supergroup (chunk t at + t * X86_CHUNK) */
static inline const uint8_t *x86_rec_codes(const x86_rec *R, const uint8_t *rec, int64_t j) {
  return rec + j * R->codes_step;
}
/* in a record: the 16 scales of group j, float32 (fp32 kernels' layout) or float16 (int8 kernels') */
static inline const float *x86_rec_scales_f32(const x86_rec *R, const uint8_t *rec, int64_t j) {
  return (const float *)(const void *)(rec + R->scales_off + j * R->scales_step);
}
static inline const uint16_t *x86_rec_scales_f16(const x86_rec *R, const uint8_t *rec, int64_t j) {
  return (const uint16_t *)(const void *)(rec + R->scales_off + j * R->scales_step);
}
/* in a record: the 16 zero points of group j: uint8 (integer), or real as float32 (fp32 kernels) or
 * float16 (int8 kernels) */
static inline const uint8_t *x86_rec_zp(const x86_rec *R, const uint8_t *rec, int64_t j) {
  return rec + R->zp_off + j * R->zp_step;
}
static inline const float *x86_rec_zpf_f32(const x86_rec *R, const uint8_t *rec, int64_t j) {
  return (const float *)(const void *)x86_rec_zp(R, rec, j);
}
static inline const uint16_t *x86_rec_zpf_f16(const x86_rec *R, const uint8_t *rec, int64_t j) {
  return (const uint16_t *)(const void *)x86_rec_zp(R, rec, j);
}
/* The fp32 panel fills read groups j .. j + groups - 1 of one record per block, records R->bytes apart:
 * a stride the hardware prefetchers pick up late, so a fill waited on every block's first chunk (perf,
 * Zen 5, AVX2, M = 128: a third of the fill's samples on the instruction after that load). This pulls the
 * record `ahead` blocks on (those groups' codes, scales and zero points) towards L1 while the current one
 * is dequantized (callers stop `ahead` blocks before the supergroup's last). */
static inline void x86_prefetch_rec(const x86_rec *R, const uint8_t *rec, int64_t j, int64_t groups, int64_t ahead) {
  const uint8_t *nx = rec + ahead * R->bytes;
  const uint8_t *codes = x86_rec_codes(R, nx, j);
  for (int64_t o = 0; o < groups * R->codes_step; o += 64) __builtin_prefetch(codes + o, 0, 3);
  for (int64_t o = 0; o < groups * R->scales_step; o += 64) __builtin_prefetch(nx + R->scales_off + j * R->scales_step + o, 0, 3);
  for (int64_t o = 0; o < groups * R->zp_step; o += 64) __builtin_prefetch(x86_rec_zp(R, nx, j) + o, 0, 3);
}
/* the same for group g and block b, from the start of the packed weights */
static inline const uint8_t *x86_codes(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  const x86_rec R = x86_sg_rec(L, g);
  return x86_rec_codes(&R, x86_record(packed, L, g, b), g % X86_SG);
}
static inline const void *x86_scales(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  const x86_rec R = x86_sg_rec(L, g);
  return x86_record(packed, L, g, b) + R.scales_off + g % X86_SG * R.scales_step;
}
static inline const uint8_t *x86_zp(const void *packed, const x86_pk *L, int64_t g, int64_t b) {
  const x86_rec R = x86_sg_rec(L, g);
  return x86_rec_zp(&R, x86_record(packed, L, g, b), g % X86_SG);
}
/* int8 kernels: 2^E of the 16 columns of group g */
static inline const float *x86_colscale(const void *packed, const x86_pk *L, int64_t g) {
  return (const float *)((const uint8_t *)packed + L->colscale_off) + g * 16;
}

/* pack hooks (x86_pack.c): fp32 scales as they are, or (int8 kernels) float16 with a column exponent */
I4O_HIDDEN size_t i4o_x86_packed_bytes_fp32(const i4o_wdesc *w);
I4O_HIDDEN size_t i4o_x86_packed_bytes_int8(const i4o_wdesc *w);
I4O_HIDDEN void i4o_x86_pack_fp32(const i4o_wdesc *w, void *dst);
I4O_HIDDEN void i4o_x86_pack_int8(const i4o_wdesc *w, void *dst);

/* ---- activations of the x86 int8 kernels: i4o_qa_view (kernels.h), sum premultiplied ----
 * sum[m][b] = zmul * sum(q): zmul = 1 for weights with zero points, integer or real (the kernel multiplies by each
 * column's zero point); without, the zero point that every column shares as the kernel sees the codes:
 * 8 for 4-bit, 128 for 8-bit and NF4 (codes run through a table offset by 128 to be unsigned); a kernel
 * whose dot product takes signed weights (x86_int8_256.inc with vpmaddubsw) passes 0 for those. */
static inline int32_t x86_sym_zp(const i4o_wdesc *w) {
  return (w->bits == 8 || w->quant_type == I4O_QUANT_NF4) ? 128 : 8;
}

/* The int8 path's NF4 levels (i4o_nf4_i8) plus offset, as a byte-shuffle table: offset 128 makes them
 * unsigned codes with zero point 128 (vpdpbusd), 0 keeps them signed (vpmaddubsw's abs/sign trick). */
static inline void x86_nf4_i8_table(uint8_t t[16], int offset) {
  const int8_t *l8 = i4o_nf4_i8();
  for (int i = 0; i < 16; i++) t[i] = (uint8_t)(l8[i] + offset);
}

#endif /* I4O_X86_PACKED_H_ */
