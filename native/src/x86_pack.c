/* Portable layout -> the x86 kernels' "cg16" layout (x86_packed.h). Plain C: runs once per weight
 * at session start. */
#if defined(__x86_64__) || defined(_M_X64)
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "x86_packed.h"

size_t i4o_x86_packed_bytes_fp32(const i4o_wdesc *w) { return x86_pk_layout(w, 0).total; }
size_t i4o_x86_packed_bytes_int8(const i4o_wdesc *w) { return x86_pk_layout(w, 1).total; }

/* real zero point j of a group: float16 for int8 kernels (exact: i4o_prepare rounded it), else float32 */
static void put_real_zp(uint8_t *zp, int j, float z, int int8) {
  if (int8) {
    const uint16_t h = i4o_float_to_half(z);
    memcpy(zp + 2 * j, &h, 2);
  } else {
    memcpy(zp + 4 * j, &z, 4);
  }
}

static void pack(const i4o_wdesc *w, void *dst, int int8) {
  const x86_pk L = x86_pk_layout(w, int8);
  uint8_t *base = (uint8_t *)dst;
  memset(base, 0, L.total);
  const uint8_t pad = w->bits == 8 ? 128 : (w->quant_type == I4O_QUANT_NF4 ? 7 : 8);
  for (int64_t g = 0; g < L.G; g++) {
    float *colscale = int8 ? (float *)(base + L.colscale_off) + g * 16 : NULL;
    for (int j = 0; j < 16; j++) {
      const int64_t n = g * 16 + j;
      const int e = n < w->N && int8 ? i4o_int8_scale_exp(w, n) : 0;
      if (colscale) colscale[j] = n < w->N ? ldexpf(1.0f, e) : 0.0f;
      for (int64_t b = 0; b < L.nb; b++) {
        uint8_t *out = base + (x86_codes(dst, &L, g, b) - (const uint8_t *)dst);
        uint8_t *sc = base + ((const uint8_t *)x86_scales(dst, &L, g, b) - (const uint8_t *)dst);
        uint8_t *zp = L.asym ? base + (x86_zp(dst, &L, g, b) - (const uint8_t *)dst) : NULL;
        if (n >= w->N) { /* padding column: codes that dequantize to 0, scale 0 */
          for (int64_t t = 0; t < L.chunks; t++)
            for (int i = 0; i < 4; i++) out[t * 64 + 4 * j + i] = w->bits == 8 ? pad : (uint8_t)(pad | (pad << 4));
          if (zp && L.asym == 2) put_real_zp(zp, j, (float)pad, int8);
          else if (zp) zp[j] = pad;
          continue;
        }
        float s = w->scales[n * L.nb + b];
        if (int8) { /* exact: i4o_prepare rounded s to this precision (NF4's 1/127 is applied by the kernel) */
          const uint16_t h = i4o_float_to_half(ldexpf(s, -e));
          memcpy(sc + 2 * j, &h, 2);
        } else {
          memcpy(sc + 4 * j, &s, 4);
        }
        if (zp && L.asym == 2) put_real_zp(zp, j, w->zpf[n * L.nb + b], int8);
        else if (zp) zp[j] = w->zp[n * L.nb + b];
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
