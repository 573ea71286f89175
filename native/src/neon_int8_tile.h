/* Template of a NEON int8 dot-product kernel, included by kernel_neon_int8.c once per instruction set
 * (no include guard on purpose). Before including, define:
 *   TILE_PREFIX            name prefix: defines <prefix>_tile and <prefix>_int8_gemm
 *   TILE_TARGET            the function attribute that enables the instructions (may be empty)
 *   TILE_ACC(acc, q, w)    int32x4 acc += the products of two int8x16 vectors, summed into 4 lanes
 *   TILE_ROWS              rows per tile (at most MAXR): what fits the registers without spilling
 * or, in place of TILE_ACC, TILE_DOT: a block dot product of the kernel's own with the signature of
 * <prefix>_tile below (i8mm), which is then not generated.
 * The macros are undefined at the end. */
#define TILE_CAT2(a, b) a##b
#define TILE_CAT(a, b) TILE_CAT2(a, b)
#define TILE_FN(suffix) TILE_CAT(TILE_PREFIX, suffix)

#ifndef TILE_DOT
/* dot[r] = [sum over the block of q[r] * w[c] for c = 0..NC-1], for `rows` rows (a constant after inlining). */
TILE_TARGET KINLINE void TILE_FN(_tile)(const int8_t *const *q, const uint8_t *const *w, int64_t bs, int rows,
                                        int bits, int nf4, lut_t lut, int32x4_t *dot) {
  int32x4_t acc[MAXR][NC];
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < NC; c++) acc[r][c] = vdupq_n_s32(0);
  int64_t i = 0;
  /* registers: rows x NC accumulators, the rows' activations, one column's weights at a time */
  for (; i + 32 <= bs; i += 32) {
    int8x16_t qv[MAXR][2];
    for (int r = 0; r < rows; r++) load_q32(q[r] + i, bits, qv[r]);
    for (int c = 0; c < NC; c++) {
      int8x16_t wv[2];
      load_w32(w[c] + i * bits / 8, bits, nf4, lut, wv);
      for (int r = 0; r < rows; r++) {
        acc[r][c] = TILE_ACC(acc[r][c], qv[r][0], wv[0]);
        acc[r][c] = TILE_ACC(acc[r][c], qv[r][1], wv[1]);
      }
    }
  }
  if (i < bs) {
    int8x16_t qv[MAXR];
    for (int r = 0; r < rows; r++) qv[r] = vld1q_s8(q[r] + i);
    for (int c = 0; c < NC; c++) {
      const int8x16_t wv = load_w16(w[c] + i * bits / 8, bits, nf4, lut);
      for (int r = 0; r < rows; r++) acc[r][c] = TILE_ACC(acc[r][c], qv[r], wv);
    }
  }
  for (int r = 0; r < rows; r++) dot[r] = reduce4(acc[r]);
}
#define TILE_DOT TILE_FN(_tile)
#endif

/* C[m:m+rows, col[0..ncols)] for a tile of `rows` rows (a constant after inlining). */
TILE_TARGET KINLINE void TILE_FN(_rows)(const i4o_gemm_ctx *c, const i4o_qa_view *qa, const int64_t *col, int ncols,
                                        int64_t m, int rows, int bits, int nf4, lut_t lut) {
  const i4o_wdesc *w = c->w;
  const int64_t bs = w->block_size, nb = w->n_blocks;
  const int8_t *qb[MAXR];
  const uint8_t *wb[NC];
  facc_t f;
  facc_zero(&f);
  for (int64_t b = 0; b < nb; b++) {
    int32x4_t dot[MAXR];
    for (int r = 0; r < rows; r++) qb[r] = qa->q + (m + r) * qa->ldq + b * bs;
    for (int k = 0; k < NC; k++) wb[k] = w->data + (col[k] * nb + b) * w->blob_bytes;
    TILE_DOT(qb, wb, bs, rows, bits, nf4, lut, dot);
    blk_params p;
    block_params(w, qa, col, m, rows, b, bits, nf4, &p);
    facc_block(&f, dot, rows, &p);
  }
  facc_store(&f, rows, ncols, c->bias, col, c->C + m * c->ldc, c->ldc);
}

TILE_TARGET KINLINE void TILE_FN(_driver)(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                                          int bits, int nf4) {
  const i4o_qa_view qa = i4o_qa_map(c->w, c->M, (void *)c->a_ws);
  const lut_t lut = lut_load();
  for (int64_t n = n0; n < n1; n += NC) {
    const int ncols = (int)(n1 - n < NC ? n1 - n : NC);
    int64_t col[NC];
    for (int k = 0; k < NC; k++) col[k] = n + (k < ncols ? k : ncols - 1); /* a short tile repeats its last column */
    int64_t m = m0;
    for (; m + TILE_ROWS <= m1; m += TILE_ROWS) TILE_FN(_rows)(c, &qa, col, ncols, m, TILE_ROWS, bits, nf4, lut);
#if TILE_ROWS > 2
    if (m + 2 <= m1) {
      TILE_FN(_rows)(c, &qa, col, ncols, m, 2, bits, nf4, lut);
      m += 2;
    }
#endif
    if (m < m1) TILE_FN(_rows)(c, &qa, col, ncols, m, 1, bits, nf4, lut);
  }
}

TILE_TARGET static void TILE_FN(_int8_gemm)(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (c->w->bits == 8) TILE_FN(_driver)(c, m0, m1, n0, n1, 8, 0);
  else if (c->w->quant_type == I4O_QUANT_NF4) TILE_FN(_driver)(c, m0, m1, n0, n1, 4, 1);
  else TILE_FN(_driver)(c, m0, m1, n0, n1, 4, 0);
}

#undef TILE_FN
#undef TILE_CAT
#undef TILE_CAT2
#undef TILE_PREFIX
#undef TILE_TARGET
#undef TILE_ACC
#undef TILE_ROWS
#undef TILE_DOT
