/* fma_peak: the float32 multiply-adds per second one core of this CPU does with 256-bit FMA (AVX2 + FMA),
 * the ceiling of the fp32 path's AVX2 micro-kernel (native/src/kernel_avx2.c: 6 x 16, 12 accumulators)
 * and of MLAS's SGEMM behind MatMulNBits accuracy_level 0. x86-64 with FMA; one thread; five runs.
 *
 *   gcc -O2 -mavx2 -mfma -o /tmp/fma_peak tools/fma_peak.c && taskset -c 1 /tmp/fma_peak
 *
 * Twelve independent FMA chains (as many accumulators as the micro-kernel), 8 lanes each: enough in flight
 * to cover the FMA latency on two pipes. Compare a product's multiply-adds / time with the printed rate.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
  __m256 a[12];
  for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(0.001f * (float)i);
  const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-6f);
  const long n = 200000000;
  for (int run = 0; run < 5; run++) {
    const double t = now();
    for (long i = 0; i < n; i++) {
#define F(k) a[k] = _mm256_fmadd_ps(a[k], b, c);
      F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
#undef F
      /* uses every chain each iteration, from registers (no dead-code elimination, no spills) */
      __asm__ volatile("" ::"x"(a[0]), "x"(a[1]), "x"(a[2]), "x"(a[3]), "x"(a[4]), "x"(a[5]), "x"(a[6]), "x"(a[7]),
                       "x"(a[8]), "x"(a[9]), "x"(a[10]), "x"(a[11]));
    }
    const double dt = now() - t;
    printf("%.1f G multiply-adds/s (256-bit FMA, 12 chains, one thread)\n", (double)n * 12 * 8 / dt / 1e9);
  }
  float s = 0;
  for (int i = 0; i < 12; i++) s += a[i][0];
  return s > 1e30f;
}
