/* AVX-VNNI int8 kernel (256-bit vpdpbusd, e.g. Alder Lake and later, Zen 5) on the "cg16" layout.
 * The code is x86_int8_256.inc; see kernel_avx512vnni.c for the scheme. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "x86_simd.h"

#define I8_TARGET "avx2,fma,f16c,avxvnni"
#define I8_PREFIX avxvnni_
#define I8_SIGNED 0
#define I8_DOT(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#include "x86_int8_256.inc"

const i4o_kernel i4o_kernel_avxvnni_int8 = {
    .name = "avxvnni_int8", .isa = "avxvnni", .compute = I4O_COMPUTE_INT8,
    .packed_bytes = i4o_x86_packed_bytes_int8, .pack = i4o_x86_pack_int8,
    .a_bytes = i4o_qa_bytes, .prepare_a = avxvnni_qa_prepare,
    .gemm = avxvnni_gemm, .real_zero_points = 1, .n_tile = 16, .m_tile = 4, .tile = I8_TILE,
};
#endif
