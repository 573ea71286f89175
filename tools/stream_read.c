/* stream_read: read bandwidth of this machine, the physical limit of a memory-bound MatMul at M = 1.
 * Used by tools/bench_matmul.py (compiled with the system C compiler, -O3 -march=native -fopenmp).
 *
 *   stream_read BYTES THREADS ROUNDS   ->   {"bytes": ..., "threads": ..., "GBps": [per round], "median_GBps": ...}
 *
 * Every thread sums 64-bit words of its own contiguous slice (the compiler vectorizes the loop); the
 * buffer is written once first so its pages exist. Rounds are timed from before the parallel region
 * to after it, as a kernel call would be.
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: stream_read BYTES THREADS ROUNDS\n");
        return 2;
    }
    size_t bytes = strtoull(argv[1], NULL, 10) & ~(size_t)4095;
    int threads = atoi(argv[2]), rounds = atoi(argv[3]);
    if (bytes < 4096 || threads < 1 || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "stream_read: bad arguments\n");
        return 2;
    }
    size_t words = bytes / 8;
    uint64_t *buf = aligned_alloc(4096, bytes);
    if (!buf) {
        fprintf(stderr, "stream_read: cannot allocate %zu bytes\n", bytes);
        return 3;
    }
    omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < words; i++) buf[i] = i;
    double *gbps = malloc(sizeof(double) * rounds);
    uint64_t sink = 0;
    for (int r = 0; r < rounds; r++) {
        double t = omp_get_wtime();
        uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
        for (size_t i = 0; i < words; i++) total += buf[i];
        gbps[r] = bytes / (omp_get_wtime() - t) / 1e9;
        sink += total;
    }
    printf("{\"bytes\": %zu, \"threads\": %d, \"GBps\": [", bytes, threads);
    for (int r = 0; r < rounds; r++) printf("%s%.2f", r ? ", " : "", gbps[r]);
    qsort(gbps, rounds, sizeof *gbps, cmp);
    printf("], \"median_GBps\": %.2f, \"check\": %llu}\n", gbps[rounds / 2], (unsigned long long)(sink & 1));
    free(buf);
    free(gbps);
    return 0;
}
