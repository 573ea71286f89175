/* amx_tile_loop: what the AMX tile unit of this CPU does per cycle in amx_fp32's inner loop (native/src/
 * kernel_amx.c), without the kernel around it. Linux, a CPU with AMX-BF16; one thread; cycles are TSC cycles.
 *
 *   gcc -O2 -o /tmp/amx_tile_loop tools/amx_tile_loop.c && taskset -c 2 /tmp/amx_tile_loop
 *
 * Prints: four independent TDPBF16PS back to back (the instruction's throughput); four tile loads from L1
 * and four products; the kernel's 32 x 32 x 32 step (two weight tiles, then three activation parts of two
 * tiles and four products each) with the activation tiles streamed from a 6 MiB buffer (past L2) and from
 * a 96 KiB one (in L2). The tiles hold bfloat16 ones; the values do not matter to the timing.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static uint16_t buf[8][512] __attribute__((aligned(64)));
static uint16_t big[3 << 20] __attribute__((aligned(64)));
/* TSC cycles per step of the kernel's pattern over `steps` steps of activation tiles from big, reps times */
static double pattern(long steps, int reps) {
  const uint64_t c0 = __rdtsc();
  for (int rep = 0; rep < reps; rep++)
    for (long s = 0; s < steps; s++) {
      const uint16_t *a = big + s * 6 * 512;
      __asm__ volatile("tileloadd (%0,%1,1), %%tmm6\n tileloadd (%2,%1,1), %%tmm7\n" ::"r"(buf[0]), "r"(64L), "r"(buf[1]) : "memory");
      for (int p = 0; p < 3; p++)
        __asm__ volatile("tileloadd (%0,%1,1), %%tmm4\n tileloadd (%2,%1,1), %%tmm5\n"
                         "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n tdpbf16ps %%tmm7, %%tmm5, %%tmm3"
                         ::"r"(a + p * 1024), "r"(64L), "r"(a + p * 1024 + 512) : "memory");
    }
  return (double)(__rdtsc() - c0) / ((double)reps * steps);
}
int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023, 18)) { puts("no perm"); return 1; }
  uint8_t cfg[64] = {1};
  for (int t = 0; t < 8; t++) { cfg[16 + 2 * t] = 64; cfg[48 + t] = 16; }
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
  for (int t = 0; t < 8; t++) for (int i = 0; i < 512; i++) buf[t][i] = 0x3f80;
  const long N = 2000000;
  double t0 = now(); uint64_t c0 = __rdtsc();
  for (long i = 0; i < N; i++) {
    __asm__ volatile("tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n tdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::: "memory");
  }
  double t1 = now(); uint64_t c1 = __rdtsc();
  printf("4 independent TDPs: %.2f ns per TDP, %.1f tsc cycles per TDP\n", (t1 - t0) / (4.0 * N) * 1e9, (double)(c1 - c0) / (4.0 * N));
  /* 2x2 blocking with A/B loads from L1 every step (the kernel's inner loop, one part) */
  t0 = now(); c0 = __rdtsc();
  for (long i = 0; i < N; i++) {
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm6\n tileloadd (%2,%1,1), %%tmm7\n tileloadd (%3,%1,1), %%tmm4\n tileloadd (%4,%1,1), %%tmm5\n"
                     "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n tdpbf16ps %%tmm7, %%tmm5, %%tmm3"
                     ::"r"(buf[0]), "r"(64L), "r"(buf[1]), "r"(buf[2]), "r"(buf[3]) : "memory");
  }
  t1 = now(); c1 = __rdtsc();
  printf("4 loads (L1) + 4 TDPs: %.1f tsc cycles per step\n", (double)(c1 - c0) / N);
  /* the kernel's pattern: per step 2 B loads, then 3 parts of (2 A loads + 4 TDPs), A streaming through
   * 6 MiB, then through 96 KiB (in L2) */
  const long steps = (3L << 20) / (6 * 512);
  printf("kernel pattern, A streamed from 6 MiB: %.1f tsc cycles per 32x32x32 step (12 TDPs)\n", pattern(steps, 20));
  printf("kernel pattern, A from 96 KiB (L2): %.1f tsc cycles per step\n", pattern(steps / 64, 20 * 64));
  __asm__ volatile("tilerelease");
  return 0;
}
