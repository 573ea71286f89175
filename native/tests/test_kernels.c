/*
 * Native kernel test: every kernel this CPU runs against the references, on the shape grid of
 * tests/test_kernels.py, without Python (for cross builds run under qemu, and for boards).
 *
 *   fp32 kernels: |y - y64| <= 2e-6 * (|A| @ |W| + 1), y64 the float64 product of A and the weights
 *                 dequantized by i4o_dequantize (pack.c packs them: the layout has one implementation);
 *   int8 kernels: within 1e-6 of scalar_int8 (the definition of the int8 path) on the same scale, as
 *                 in tests/test_kernels.py: the integer block dot products are exact everywhere, only
 *                 the order in which the x86 kernels add the float per-block terms differs (the NEON
 *                 kernels follow scalar_int8's order and report "bit-exact"); and within 5e-2 of y64
 *                 (activation quantization error only).
 *
 * Usage: test_kernels [--expect COMPUTE=KERNEL,...] [--max-k K] [--quiet]
 *   --expect fp32=neon_fp32,int8=i8mm_int8   fail unless the automatic choice is these kernels
 *   --max-k K                                 skip the K values of the grid above K (slow emulators)
 * Prints the CPU's ISA rungs, the kernels available and selected, one line per kernel with its
 * case count and worst error, and exits 0 only if every check passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static const char *const kIsas[] = {"scalar", "avx2", "avxvnni", "avx512vnni", "neon", "neondot", "i8mm"};

typedef struct variant {
  const char *name;
  int bits, symmetric, quant_type;
} variant;

static const variant kVariants[] = {
    {"int4-sym", 4, 1, I4O_QUANT_INT}, {"int4-asym", 4, 0, I4O_QUANT_INT}, {"nf4", 4, 1, I4O_QUANT_NF4},
    {"int8-sym", 8, 1, I4O_QUANT_INT}, {"int8-asym", 8, 0, I4O_QUANT_INT},
};
#define N_VARIANTS (sizeof(kVariants) / sizeof(kVariants[0]))

typedef struct kstat {
  const i4o_kernel *k;
  long cases;
  double worst; /* fp32: scaled error against y64; int8: scaled difference from scalar_int8 */
  long differ;  /* int8: outputs not bit-identical to scalar_int8 */
  int failed;
} kstat;

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { /* xorshift64*: reproducible on every architecture */
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return (uint32_t)((g_rng * 0x2545F4914F6CDD1Dull) >> 32);
}
static float rnd_normalish(void) { /* sum of uniforms: roughly normal, mean 0, sd 1 */
  float s = 0.0f;
  for (int i = 0; i < 4; i++) s += (float)rnd() / 4294967296.0f;
  return (s - 2.0f) * 1.7320508f;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "test_kernels: out of memory\n");
    exit(2);
  }
  return p;
}

typedef struct weights {
  i4o_weights w;
  uint8_t *packed, *zp_packed;
  float *scales;
  double *deq; /* [K][N] */
  double *absdeq;
} weights;

static void make_weights(weights *t, int64_t K, int64_t N, int64_t block, const variant *v) {
  const int64_t nb = i4o_n_blocks(K, block);
  const int levels = 1 << v->bits;
  uint8_t *codes = (uint8_t *)xmalloc((size_t)(N * K));
  uint8_t *zp = v->symmetric ? NULL : (uint8_t *)xmalloc((size_t)(N * nb));
  t->scales = (float *)xmalloc((size_t)(N * nb) * sizeof(float));
  for (int64_t i = 0; i < N * K; i++) codes[i] = (uint8_t)(rnd() % (uint32_t)levels);
  for (int64_t i = 0; i < N * nb; i++) {
    t->scales[i] = (0.01f + (float)(rnd() % 1000) / 1000.0f) * (rnd() & 1 ? 1.0f : -1.0f);
    if (zp) zp[i] = (uint8_t)(rnd() % (uint32_t)levels);
  }
  if (N * nb > 1) t->scales[rnd() % (uint32_t)(N * nb)] *= 16.0f; /* an outlier block */
  t->packed = (uint8_t *)xmalloc((size_t)i4o_weight_bytes(K, N, v->bits, block));
  if (i4o_pack_weights(codes, K, N, v->bits, block, v->quant_type, zp, t->packed)) {
    fprintf(stderr, "test_kernels: i4o_pack_weights failed for K=%lld N=%lld\n", (long long)K, (long long)N);
    exit(2);
  }
  t->zp_packed = NULL;
  if (zp) {
    t->zp_packed = (uint8_t *)xmalloc((size_t)(N * i4o_zero_point_row_bytes(nb, v->bits)));
    i4o_pack_zero_points(zp, N, nb, v->bits, t->zp_packed);
  }
  i4o_weights w = {K, N, block, v->bits, v->quant_type, t->packed, t->scales, t->zp_packed};
  t->w = w;
  float *deq = (float *)xmalloc((size_t)(K * N) * sizeof(float));
  if (i4o_dequantize(&t->w, deq)) {
    fprintf(stderr, "test_kernels: i4o_dequantize failed\n");
    exit(2);
  }
  t->deq = (double *)xmalloc((size_t)(K * N) * sizeof(double));
  t->absdeq = (double *)xmalloc((size_t)(K * N) * sizeof(double));
  for (int64_t i = 0; i < K * N; i++) {
    t->deq[i] = deq[i];
    t->absdeq[i] = fabs((double)deq[i]);
  }
  free(deq);
  free(codes);
  free(zp);
}

static void free_weights(weights *t) {
  free(t->packed);
  free(t->zp_packed);
  free(t->scales);
  free(t->deq);
  free(t->absdeq);
}

static int run_kernel(const i4o_kernel *k, const float *A, int64_t M, const weights *t, const float *bias, float *Y) {
  char err[256] = "";
  const int rc = i4o_matmul(k->name, k->compute, A, M, &t->w, bias, Y, err, sizeof(err));
  if (rc) fprintf(stderr, "  %s: i4o_matmul failed (%d): %s\n", k->name, rc, err);
  return rc;
}

/* One (K, N, block, variant) weight and every M: returns the number of failed checks. */
static int check_case(kstat *stats, size_t n_stats, int64_t K, int64_t N, int64_t block, const variant *v) {
  static const int64_t kM[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 32, 128};
  weights t;
  make_weights(&t, K, N, block, v);
  float *bias = (float *)xmalloc((size_t)N * sizeof(float));
  for (int64_t n = 0; n < N; n++) bias[n] = rnd_normalish();
  const int64_t Mmax = 128;
  float *A = (float *)xmalloc((size_t)(Mmax * K) * sizeof(float));
  float *Y = (float *)xmalloc((size_t)(Mmax * N) * sizeof(float));
  float *Y8 = (float *)xmalloc((size_t)(Mmax * N) * sizeof(float));
  double *ref = (double *)xmalloc((size_t)(Mmax * N) * sizeof(double));
  double *bound = (double *)xmalloc((size_t)(Mmax * N) * sizeof(double));
  const i4o_kernel *scalar8 = i4o_find_kernel("scalar_int8");
  int failures = 0;
  for (size_t mi = 0; mi < sizeof(kM) / sizeof(kM[0]); mi++) {
    const int64_t M = kM[mi];
    const float *b = (M % 2) ? bias : NULL;
    for (int64_t i = 0; i < M * K; i++) A[i] = rnd_normalish();
    A[rnd() % (uint32_t)(M * K)] *= 4.0f; /* an outlier activation */
    if (K > 32) for (int64_t k = 0; k < 16; k++) A[k] = 0.0f; /* a block of zeros in row 0 (block 16) */
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = b ? b[n] : 0.0, s_abs = 1.0;
        for (int64_t k = 0; k < K; k++) {
          s += (double)A[m * K + k] * t.deq[k * N + n];
          s_abs += fabs((double)A[m * K + k]) * t.absdeq[k * N + n];
        }
        ref[m * N + n] = s;
        bound[m * N + n] = s_abs;
      }
    if (run_kernel(scalar8, A, M, &t, b, Y8)) return failures + 1;
    for (size_t s = 0; s < n_stats; s++) {
      kstat *st = &stats[s];
      if (run_kernel(st->k, A, M, &t, b, Y)) {
        st->failed++;
        failures++;
        continue;
      }
      st->cases++;
      double worst = 0.0, worst8 = 0.0;
      long differ = 0;
      for (int64_t i = 0; i < M * N; i++) {
        const double e = fabs((double)Y[i] - ref[i]) / bound[i];
        if (!(e <= worst)) worst = e; /* NaN counts as the worst */
        if (st->k->compute == I4O_COMPUTE_INT8 && memcmp(&Y[i], &Y8[i], sizeof(float)) != 0) {
          differ++;
          const double e8 = fabs((double)Y[i] - (double)Y8[i]) / bound[i];
          if (!(e8 <= worst8)) worst8 = e8;
        }
      }
      const int is8 = st->k->compute == I4O_COMPUTE_INT8;
      const double tol = is8 ? 5e-2 : 2e-6;
      const double d = is8 ? worst8 : worst;
      if (!(d <= st->worst)) st->worst = d;
      st->differ += differ;
      if (!(worst <= tol) || !(worst8 <= 1e-6)) {
        st->failed++;
        failures++;
        if (st->failed <= 5)
          fprintf(stderr, "  FAIL %s %s K=%lld N=%lld block=%lld M=%lld bias=%d: scaled error %.3g (tol %.0e), %ld outputs differ from scalar_int8 by up to %.3g (tol 1e-06)\n",
                  st->k->name, v->name, (long long)K, (long long)N, (long long)block, (long long)M, b != NULL, worst,
                  tol, differ, worst8);
      }
    }
  }
  free(A);
  free(Y);
  free(Y8);
  free(ref);
  free(bound);
  free(bias);
  free_weights(&t);
  return failures;
}

static int check_expectations(const char *spec) {
  int bad = 0;
  char buf[256];
  snprintf(buf, sizeof(buf), "%s", spec);
  for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    if (!eq) {
      fprintf(stderr, "test_kernels: --expect wants COMPUTE=KERNEL, got '%s'\n", tok);
      return 1;
    }
    *eq = '\0';
    const int compute = strcmp(tok, "int8") == 0 ? I4O_COMPUTE_INT8 : I4O_COMPUTE_FP32;
    const char *got = i4o_kernel_selected(compute);
    const int ok = strcmp(got, eq + 1) == 0;
    printf("expect %s=%s: %s\n", tok, eq + 1, ok ? "ok" : "MISMATCH");
    if (!ok) {
      fprintf(stderr, "test_kernels: expected %s kernel %s, the dispatcher chose %s\n", tok, eq + 1, got);
      bad = 1;
    }
  }
  return bad;
}

int main(int argc, char **argv) {
  const char *expect = NULL;
  int64_t max_k = INT64_MAX;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc) expect = argv[++i];
    else if (strcmp(argv[i], "--max-k") == 0 && i + 1 < argc) max_k = atoll(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--expect COMPUTE=KERNEL,...] [--max-k K]\n", argv[0]);
      return 2;
    }
  }
  printf("cpu isa:");
  for (size_t i = 0; i < sizeof(kIsas) / sizeof(kIsas[0]); i++)
    if (i4o_cpu_has_isa(kIsas[i])) printf(" %s", kIsas[i]);
  printf("\nkernels available: %s\n", i4o_kernels_available());
  printf("selected: fp32=%s int8=%s\n", i4o_kernel_selected(I4O_COMPUTE_FP32), i4o_kernel_selected(I4O_COMPUTE_INT8));
  int failures = expect ? check_expectations(expect) : 0;
  for (int i = 0; i < 16; i++)
    if (i4o_nf4_i8()[i] != (int8_t)lrintf(127.0f * i4o_nf4_codebook()[i])) {
      printf("FAIL: NF4 int8 level %d is %d, not lrintf(127 * %g)\n", i, i4o_nf4_i8()[i], i4o_nf4_codebook()[i]);
      failures++;
    }

  size_t n_all, n_stats = 0;
  const i4o_kernel *const *all = i4o_all_kernels(&n_all);
  kstat *stats = (kstat *)calloc(n_all, sizeof(kstat));
  for (size_t i = 0; i < n_all; i++)
    if (i4o_cpu_has_isa(all[i]->isa)) stats[n_stats++].k = all[i];

  static const int64_t kK[] = {16, 172, 256, 4096};
  static const int64_t kBlocks[] = {16, 32, 48, 64, 128, 256, 0}; /* 0 = per-channel */
  const clock_t t0 = clock();
  for (size_t ki = 0; ki < sizeof(kK) / sizeof(kK[0]); ki++) {
    const int64_t K = kK[ki];
    if (K > max_k) {
      printf("skipping K=%lld (--max-k %lld)\n", (long long)K, (long long)max_k);
      continue;
    }
    for (size_t bi = 0; bi < sizeof(kBlocks) / sizeof(kBlocks[0]); bi++) {
      const int64_t block = kBlocks[bi] ? kBlocks[bi] : (K + 15) / 16 * 16;
      if (kBlocks[bi] && block > K && block != 16) continue;
      for (size_t vi = 0; vi < N_VARIANTS; vi++) {
        const variant *v = &kVariants[vi];
        /* keep the large-K rows to the common configurations, as tests/test_kernels.py does */
        if (K == 4096 && v->bits == 8 && kBlocks[bi] != 32 && kBlocks[bi] != 0) continue;
        if (K == 4096 && v->quant_type == I4O_QUANT_NF4 && kBlocks[bi] != 32 && kBlocks[bi] != 0) continue;
        if (K == 4096 && kBlocks[bi] == 48) continue;
        const int64_t Ns[] = {7, 64};
        for (int ni = 0; ni < 2; ni++) failures += check_case(stats, n_stats, K, Ns[ni], block, v);
      }
    }
  }
  const double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
  for (size_t s = 0; s < n_stats; s++) {
    const kstat *st = &stats[s];
    if (st->k->compute == I4O_COMPUTE_INT8 && st->differ == 0)
      printf("%-16s %5ld cases, bit-exact vs scalar_int8%s\n", st->k->name, st->cases, st->failed ? "  FAILED" : "");
    else if (st->k->compute == I4O_COMPUTE_INT8)
      printf("%-16s %5ld cases, %ld outputs differ from scalar_int8, worst scaled difference %.2e (tol 1e-06)%s\n",
             st->k->name, st->cases, st->differ, st->worst, st->failed ? "  FAILED" : "");
    else
      printf("%-16s %5ld cases, worst scaled error %.2e (tol 2e-06)%s\n", st->k->name, st->cases, st->worst,
             st->failed ? "  FAILED" : "");
  }
  printf("%s: %d failure(s), %.1f s cpu\n", failures ? "FAIL" : "PASS", failures, secs);
  free(stats);
  return failures ? 1 : 0;
}
