/* bench_quantize: time of the int8 path's activation quantisation (a kernel's prepare_a) for one row,
 * the step every task of an M = 1 call waits for. Built from the library's sources (the kernels are
 * hidden symbols of the shared library):
 *
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Inative/src -Inative/include $(find native/src -name '*.c' ! -name ort_op.c) \
 *      tools/bench_quantize.c -o /tmp/bench_quantize -lm -lpthread
 *   /tmp/bench_quantize K BLOCK KERNEL...      e.g. /tmp/bench_quantize 4096 32 avx512vnni_int8 avx2_int8
 *
 * prints, per kernel, the best of 200 rounds of 1000 calls, in ns per row (the row stays in L1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bench_quantize K BLOCK KERNEL...\n");
    return 2;
  }
  const int K = atoi(argv[1]), bs = atoi(argv[2]);
  if (K < 1 || bs < 16 || bs % 16) {
    fprintf(stderr, "bench_quantize: K >= 1 and BLOCK a multiple of 16\n");
    return 2;
  }
  float *A = (float *)malloc((size_t)K * sizeof(float));
  if (!A) return 1;
  for (int i = 0; i < K; i++) A[i] = (float)((i * 7919) % 1000 - 500) / 77.0f;
  for (int a = 3; a < argc; a++) {
    const i4o_kernel *k = i4o_find_kernel(argv[a]);
    if (!k || !k->prepare_a || k->compute != I4O_COMPUTE_INT8 || !i4o_cpu_has_isa(k->isa)) {
      printf("%s: not an int8 kernel this CPU runs\n", argv[a]);
      continue;
    }
    const i4o_wdesc w = i4o_wdesc_make(K, 64, 4, bs, I4O_QUANT_INT);
    void *ws = malloc(k->a_bytes(&w, 1));
    if (!ws) return 1;
    double best = 1e9;
    for (int r = 0; r < 200; r++) {
      const double t0 = now();
      for (int i = 0; i < 1000; i++) k->prepare_a(&w, A, K, 1, 0, 1, ws);
      const double t = (now() - t0) / 1000;
      if (t < best) best = t;
    }
    printf("%s K=%d block=%d: %.0f ns per row\n", argv[a], K, bs, best * 1e9);
    free(ws);
  }
  free(A);
  return 0;
}
