/* Portable layout -> the x86 kernels' "cg16" layout (x86_packed.h). Plain C: runs once per weight
 * at session start. */
#if defined(__x86_64__) || defined(_M_X64)
#include <string.h>

#include "x86_packed.h"

size_t i4o_x86_packed_bytes(const i4o_wdesc *w) { return x86_pk_layout(w).total; }

static void pack(const i4o_wdesc *w, void *dst, int nf4_scale_div127) {
  const x86_pk L = x86_pk_layout(w);
  uint8_t *base = (uint8_t *)dst;
  memset(base, 0, L.total);
  for (int64_t g = 0; g < L.G; g++) {
    for (int64_t b = 0; b < L.nb; b++) {
      uint8_t *out = base + (g * L.nb + b) * L.block_bytes;
      float *sc = (float *)(base + L.scales_off) + (g * L.nb + b) * 16;
      uint8_t *zp = base + L.zp_off + (g * L.nb + b) * 16;
      for (int j = 0; j < 16; j++) {
        const int64_t n = g * 16 + j;
        if (n >= w->N) {
          /* padding column: codes equal to the zero point (or NF4's zero), scale 0 */
          const uint8_t pad = w->bits == 8 ? 128 : (w->quant_type == I4O_QUANT_NF4 ? 7 : 8);
          for (int64_t t = 0; t < L.chunks; t++)
            for (int i = 0; i < 4; i++) out[t * 64 + 4 * j + i] = w->bits == 8 ? pad : (uint8_t)(pad | (pad << 4));
          if (w->zp) zp[j] = pad;
          continue;
        }
        float s = w->scales[n * L.nb + b];
        if (nf4_scale_div127 && w->quant_type == I4O_QUANT_NF4) s *= (1.0f / 127.0f);
        sc[j] = s;
        if (w->zp) zp[j] = w->zp[n * L.nb + b];
        const uint8_t *blob = w->data + (n * L.nb + b) * w->blob_bytes;
        for (int64_t t = 0; t < L.chunks; t++) {
          for (int i = 0; i < 4; i++) {
            if (w->bits == 8) {
              out[t * 64 + 4 * j + i] = blob[4 * t + i];
            } else {
              const int64_t k0 = 8 * t + i, k1 = 8 * t + 4 + i; /* element offsets inside the block */
              const int c0 = (blob[k0 >> 1] >> ((k0 & 1) * 4)) & 0xF;
              const int c1 = (blob[k1 >> 1] >> ((k1 & 1) * 4)) & 0xF;
              out[t * 64 + 4 * j + i] = (uint8_t)(c0 | (c1 << 4));
            }
          }
        }
      }
    }
  }
}

void i4o_x86_pack_fp32(const i4o_wdesc *w, void *dst) { pack(w, dst, 0); }
void i4o_x86_pack_int8(const i4o_wdesc *w, void *dst) { pack(w, dst, 1); }
#endif
