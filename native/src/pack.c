/* The only implementation of the portable weight layout (see include/int4onnx.h). */
#include <string.h>

#include "int4onnx.h"

/* NF4 levels from the QLoRA paper (Dettmers et al., 2023): quantiles of N(0,1)
 * normalised to [-1, 1], with an exact zero at index 7. */
static const float kNf4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

const float *i4o_nf4_codebook(void) { return kNf4; }

const char *i4o_version(void) { return I4O_VERSION_STRING; }
const char *i4o_op_domain(void) { return I4O_DOMAIN; }
const char *i4o_op_name(void) { return I4O_OP_NAME; }

static const char *const kInputNames[] = I4O_IN_NAMES;
static const char *const kAttrNames[] = I4O_ATTR_NAMES;
_Static_assert(sizeof(kInputNames) / sizeof(kInputNames[0]) == I4O_IN_COUNT, "I4O_IN_NAMES != I4O_IN_COUNT");
_Static_assert(sizeof(kAttrNames) / sizeof(kAttrNames[0]) == I4O_ATTR_COUNT, "I4O_ATTR_NAMES != I4O_ATTR_COUNT");

const char *i4o_op_input_name(int index) {
  return index >= 0 && index < I4O_IN_COUNT ? kInputNames[index] : NULL;
}
const char *i4o_op_attr_name(int index) {
  return index >= 0 && index < I4O_ATTR_COUNT ? kAttrNames[index] : NULL;
}

static int valid_bits(int bits) { return bits == 4 || bits == 8; }
/* block sizes are multiples of 16 in 16..65536: keeps int8-path block dot products inside int32
 * (127 * 255 * 65536 < 2^31) */
static int valid_block(int64_t block_size) {
  return block_size >= 16 && block_size <= 65536 && block_size % 16 == 0;
}
/* K, N, n_blocks in 1..2^31 keep every byte count inside int64/size_t */
static int valid_dim(int64_t d) { return d >= 1 && d <= ((int64_t)1 << 31); }

int i4o_check_layout(int64_t K, int64_t N, int bits, int64_t block_size) {
  if (!valid_bits(bits) || !valid_dim(K) || !valid_dim(N) || !valid_block(block_size)) return I4O_E_ARG;
  return I4O_OK;
}

/* The size helpers validate their arguments like everything else and answer -1 when they are out
 * of range (K = 0 or block_size = 0 must not reach a division). */
int64_t i4o_n_blocks(int64_t K, int64_t block_size) {
  if (!valid_dim(K) || !valid_block(block_size)) return -1;
  return (K + block_size - 1) / block_size;
}

int64_t i4o_blob_bytes(int bits, int64_t block_size) {
  if (!valid_bits(bits) || !valid_block(block_size)) return -1;
  return block_size * bits / 8;
}

int64_t i4o_weight_bytes(int64_t K, int64_t N, int bits, int64_t block_size) {
  if (i4o_check_layout(K, N, bits, block_size)) return -1;
  return N * i4o_n_blocks(K, block_size) * i4o_blob_bytes(bits, block_size);
}

int64_t i4o_zero_point_row_bytes(int64_t n_blocks, int bits) {
  if (!valid_dim(n_blocks) || !valid_bits(bits)) return -1;
  return (n_blocks * bits + 7) / 8;
}

/* The code that dequantizes to exactly zero, used for padding past K. */
static uint8_t pad_code(int bits, int quant_type, const uint8_t *zp_row, int64_t n_blocks) {
  if (quant_type == I4O_QUANT_NF4) return 7;
  if (zp_row) return zp_row[n_blocks - 1];
  return (uint8_t)(1u << (bits - 1));
}

int i4o_pack_weights(const uint8_t *codes, int64_t K, int64_t N, int bits, int64_t block_size,
                     int quant_type, const uint8_t *zero_points, uint8_t *out) {
  if (!codes || !out || i4o_check_layout(K, N, bits, block_size)) return I4O_E_ARG;
  if (quant_type != I4O_QUANT_INT && quant_type != I4O_QUANT_NF4) return I4O_E_ARG;
  if (quant_type == I4O_QUANT_NF4 && bits != 4) return I4O_E_ARG;
  const int64_t nb = i4o_n_blocks(K, block_size);
  const int64_t row_bytes = nb * i4o_blob_bytes(bits, block_size);
  const uint8_t mask = (uint8_t)((1u << bits) - 1u);
  for (int64_t n = 0; n < N; n++) {
    const uint8_t *src = codes + n * K;
    uint8_t *dst = out + n * row_bytes;
    const uint8_t pad = pad_code(bits, quant_type, zero_points ? zero_points + n * nb : NULL, nb);
    const int64_t padded_k = nb * block_size;
    if (bits == 8) {
      memcpy(dst, src, (size_t)K);
      memset(dst + K, pad, (size_t)(padded_k - K));
      continue;
    }
    for (int64_t k = 0; k < padded_k; k += 2) {
      uint8_t lo = k < K ? (uint8_t)(src[k] & mask) : pad;
      uint8_t hi = k + 1 < K ? (uint8_t)(src[k + 1] & mask) : pad;
      dst[k / 2] = (uint8_t)(lo | (hi << 4));
    }
  }
  return I4O_OK;
}

int i4o_unpack_weights(const uint8_t *packed, int64_t K, int64_t N, int bits, int64_t block_size,
                       uint8_t *out) {
  if (!packed || !out || i4o_check_layout(K, N, bits, block_size)) return I4O_E_ARG;
  const int64_t row_bytes = i4o_n_blocks(K, block_size) * i4o_blob_bytes(bits, block_size);
  for (int64_t n = 0; n < N; n++) {
    const uint8_t *src = packed + n * row_bytes;
    uint8_t *dst = out + n * K;
    if (bits == 8) {
      memcpy(dst, src, (size_t)K);
      continue;
    }
    for (int64_t k = 0; k < K; k++) dst[k] = (uint8_t)((src[k / 2] >> ((k & 1) * 4)) & 0xF);
  }
  return I4O_OK;
}

int i4o_pack_zero_points(const uint8_t *zp, int64_t N, int64_t n_blocks, int bits, uint8_t *out) {
  if (!zp || !out || !valid_bits(bits) || !valid_dim(N) || !valid_dim(n_blocks)) return I4O_E_ARG;
  const int64_t row = i4o_zero_point_row_bytes(n_blocks, bits);
  for (int64_t n = 0; n < N; n++) {
    const uint8_t *src = zp + n * n_blocks;
    uint8_t *dst = out + n * row;
    if (bits == 8) {
      memcpy(dst, src, (size_t)n_blocks);
      continue;
    }
    memset(dst, 0, (size_t)row);
    for (int64_t b = 0; b < n_blocks; b++) dst[b / 2] |= (uint8_t)((src[b] & 0xF) << ((b & 1) * 4));
  }
  return I4O_OK;
}

int i4o_unpack_zero_points(const uint8_t *packed, int64_t N, int64_t n_blocks, int bits, uint8_t *out) {
  if (!packed || !out || !valid_bits(bits) || !valid_dim(N) || !valid_dim(n_blocks)) return I4O_E_ARG;
  const int64_t row = i4o_zero_point_row_bytes(n_blocks, bits);
  for (int64_t n = 0; n < N; n++) {
    const uint8_t *src = packed + n * row;
    uint8_t *dst = out + n * n_blocks;
    if (bits == 8) {
      memcpy(dst, src, (size_t)n_blocks);
      continue;
    }
    for (int64_t b = 0; b < n_blocks; b++) dst[b] = (uint8_t)((src[b / 2] >> ((b & 1) * 4)) & 0xF);
  }
  return I4O_OK;
}
