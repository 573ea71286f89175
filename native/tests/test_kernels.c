/*
 * Native kernel test: every kernel this CPU runs against the references, on the kernel's own shape
 * grid (i4o_kernel_grid, derived from its register tile: the list tests/native/test_kernels.py runs too),
 * without Python (for cross builds run under qemu, and for boards).
 *
 *   fp32 kernels: |y - y64| <= 2e-6 * (|A| @ |W| + 1), y64 the float64 product of A and the weights
 *                 dequantized by i4o_dequantize (pack.c packs them: the layout has one implementation);
 *   int8 kernels: within 1e-6 of scalar_int8 (the definition of the int8 path) on the same scale, as
 *                 in tests/native/test_kernels.py: the integer block dot products are exact everywhere, only
 *                 the order in which the x86 kernels add the float per-block terms differs (the NEON
 *                 kernels follow scalar_int8's order and report "bit-exact"); and within 5e-2 of y64
 *                 on the scale of the activation quantization step: |y - y64| <= 5e-2 * (amax @ |W| + 1),
 *                 amax[m][k] the largest |A| of row m's block that holds k;
 *   threaded driver: every case also runs through i4o_run with its tasks in reverse order on one
 *                 thread and on --threads threads (i4o_matmul_threads), and must equal the serial
 *                 result bit for bit.
 *
 * Usage: test_kernels [--expect COMPUTE=KERNEL,...] [--max-k K] [--threads T] [--kernel NAME]
 *   --expect fp32=neon_fp32,int8=i8mm_int8   fail unless the automatic choice is these kernels
 *   --max-k K                                 skip the grid's cases with K above K (slow emulators)
 *   --threads T                               threads of the threaded schedule (default 3)
 *   --kernel NAME                             test this kernel only
 * Prints the CPU's ISA rungs, the kernels available and selected, one line per kernel with its tile,
 * case count and worst error, and exits 0 only if every check passed.
 */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static const char *const kIsas[] = {"scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "amx", "neon", "neondot", "i8mm"};

typedef struct kstat {
  const i4o_kernel *k;
  long cases, skipped;
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
  i4o_test_case key; /* the case that made it, M = 0: K, N, block_size and format */
  i4o_weights w;
  uint8_t *packed, *zp_packed;
  float *scales;
  int8_t *scales_int8; /* int8_scales: the int8 codes and their per-column super-scales */
  float *scales_scale;
  float *zpf; /* real_zero_points: [N][nb] */
  double *deq; /* [K][N] */
  double *absdeq;
} weights;

static void make_weights(weights *t, const i4o_test_case *c) {
  const int64_t K = c->K, N = c->N, block = c->block_size, nb = i4o_n_blocks(K, block);
  const int levels = 1 << c->bits;
  uint8_t *codes = (uint8_t *)xmalloc((size_t)(N * K));
  uint8_t *zp = c->symmetric ? NULL : (uint8_t *)xmalloc((size_t)(N * nb));
  t->key = *c;
  t->key.M = 0;
  t->scales = (float *)xmalloc((size_t)(N * nb) * sizeof(float));
  for (int64_t i = 0; i < N * K; i++) codes[i] = (uint8_t)(rnd() % (uint32_t)levels);
  for (int64_t i = 0; i < N * nb; i++) {
    t->scales[i] = (0.01f + (float)(rnd() % 1000) / 1000.0f) * (rnd() & 1 ? 1.0f : -1.0f);
    if (zp) zp[i] = (uint8_t)(rnd() % (uint32_t)levels);
  }
  if (N * nb > 1) t->scales[rnd() % (uint32_t)(N * nb)] *= 16.0f; /* an outlier block */
  t->zpf = NULL;
  if (c->real_zero_points) { /* real zero points in [-1, levels + 1) in steps of 1/256; zp keeps the padding code */
    t->zpf = (float *)xmalloc((size_t)(N * nb) * sizeof(float));
    for (int64_t i = 0; i < N * nb; i++) {
      t->zpf[i] = ((float)(rnd() % (uint32_t)(levels * 256 + 512)) - 256.0f) / 256.0f;
      const float r = t->zpf[i] + 0.5f;
      zp[i] = (uint8_t)(r < 0.0f ? 0 : (r >= (float)levels ? levels - 1 : (int)r));
    }
  }
  t->scales_int8 = NULL;
  t->scales_scale = NULL;
  if (c->int8_scales) { /* int8 codes times a per-column super-scale: the library expands them */
    t->scales_int8 = (int8_t *)xmalloc((size_t)(N * nb));
    t->scales_scale = (float *)xmalloc((size_t)N * sizeof(float));
    for (int64_t n = 0; n < N; n++) {
      t->scales_scale[n] = 0.001f + (float)(rnd() % 1000) * 1e-5f;
      for (int64_t b = 0; b < nb; b++) t->scales_int8[n * nb + b] = (int8_t)((int)(rnd() % 255) - 127);
    }
  }
  t->packed = (uint8_t *)xmalloc((size_t)i4o_weight_bytes(K, N, c->bits, block));
  if (i4o_pack_weights(codes, K, N, c->bits, block, c->quant_type, zp, t->packed)) {
    fprintf(stderr, "test_kernels: i4o_pack_weights failed for K=%lld N=%lld\n", (long long)K, (long long)N);
    exit(2);
  }
  t->zp_packed = NULL;
  if (zp && !t->zpf) {
    t->zp_packed = (uint8_t *)xmalloc((size_t)(N * i4o_zero_point_row_bytes(nb, c->bits)));
    i4o_pack_zero_points(zp, N, nb, c->bits, t->zp_packed);
  }
  i4o_weights w = {K, N, block, c->bits, c->quant_type, t->packed, t->scales, t->zp_packed, NULL, NULL, 0, t->zpf};
  if (c->int8_scales) {
    w.scales = NULL;
    w.scales_int8 = t->scales_int8;
    w.scales_scale = t->scales_scale;
    w.n_scales_scale = N;
  }
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
  free(t->scales_int8);
  free(t->scales_scale);
  free(t->zpf);
  free(t->deq);
  free(t->absdeq);
  memset(t, 0, sizeof(*t));
}

static const char *fmt_name(const i4o_test_case *c) {
  if (c->quant_type == I4O_QUANT_NF4) return c->int8_scales ? "nf4-s8" : "nf4";
  if (c->real_zero_points) return c->bits == 8 ? "int8-asym-rz" : (c->int8_scales ? "int4-asym-s8-rz" : "int4-asym-rz");
  static const char *const names[2][2][2] = {{{"int4-asym", "int4-asym-s8"}, {"int4-sym", "int4-sym-s8"}},
                                             {{"int8-asym", "int8-asym-s8"}, {"int8-sym", "int8-sym-s8"}}};
  return names[c->bits == 8][c->symmetric != 0][c->int8_scales != 0];
}

/* schedule 0: i4o_matmul (serial, in order); 1: tasks in reverse order; 2: on `threads` threads */
static int run_kernel(const i4o_kernel *k, int schedule, int threads, const float *A, int64_t M, const weights *t,
                      const float *bias, float *Y) {
  char err[256] = "";
  const int rc = schedule == 0 ? i4o_matmul(k->name, k->compute, A, M, &t->w, bias, Y, err, sizeof(err))
                               : i4o_matmul_threads(k->name, k->compute, A, M, &t->w, bias, Y,
                                                    schedule == 1 ? 1 : threads, err, sizeof(err));
  if (rc) fprintf(stderr, "  %s: matmul (schedule %d) failed (%d): %s\n", k->name, schedule, rc, err);
  return rc;
}

/* One grid case of one kernel (its weight in t): returns the number of failed checks. */
static int check_case(kstat *st, const i4o_test_case *c, const weights *t, int threads) {
  static const char *const kSchedule[3] = {"serial", "reverse order", "threads"};
  const int64_t M = c->M, K = c->K, N = c->N;
  float *bias = NULL;
  if (M % 2) {
    bias = (float *)xmalloc((size_t)N * sizeof(float));
    for (int64_t n = 0; n < N; n++) bias[n] = rnd_normalish();
  }
  float *A = (float *)xmalloc((size_t)(M * K) * sizeof(float));
  float *Y = (float *)xmalloc((size_t)(M * N) * sizeof(float));
  float *Yt = (float *)xmalloc((size_t)(M * N) * sizeof(float));
  float *Y8 = (float *)xmalloc((size_t)(M * N) * sizeof(float));
  double *ref = (double *)xmalloc((size_t)(M * N) * sizeof(double));
  double *bound = (double *)xmalloc((size_t)(M * N) * sizeof(double));
  double *bound8 = (double *)xmalloc((size_t)(M * N) * sizeof(double));
  double *amax = (double *)xmalloc((size_t)K * sizeof(double)); /* one row's amax[k] */
  for (int64_t i = 0; i < M * K; i++) A[i] = rnd_normalish();
  A[rnd() % (uint32_t)(M * K)] *= 4.0f; /* an outlier activation */
  if (K > 32) for (int64_t k = 0; k < 16; k++) A[k] = 0.0f; /* a block of zeros in row 0 (block 16) */
  const int is8 = st->k->compute == I4O_COMPUTE_INT8;
  for (int64_t m = 0; m < M; m++) {
    for (int64_t k0 = 0; k0 < K && is8; k0 += c->block_size) {
      const int64_t k1 = k0 + c->block_size < K ? k0 + c->block_size : K;
      double mx = 0.0;
      for (int64_t k = k0; k < k1; k++) {
        const double a = fabs((double)A[m * K + k]); /* not fmax(): aarch64 gcc 12 -O3 crashes vectorising it */
        if (a > mx) mx = a;
      }
      for (int64_t k = k0; k < k1; k++) amax[k] = mx;
    }
    for (int64_t n = 0; n < N; n++) {
      double s = bias ? bias[n] : 0.0, s_abs = 1.0, s_q = 1.0;
      for (int64_t k = 0; k < K; k++) {
        s += (double)A[m * K + k] * t->deq[k * N + n];
        s_abs += fabs((double)A[m * K + k]) * t->absdeq[k * N + n];
        if (is8) s_q += amax[k] * t->absdeq[k * N + n];
      }
      ref[m * N + n] = s;
      bound[m * N + n] = s_abs;
      bound8[m * N + n] = s_q;
    }
  }
  int failures = 0;
  if (run_kernel(st->k, 0, threads, A, M, t, bias, Y) ||
      (is8 && run_kernel(i4o_find_kernel("scalar_int8"), 0, threads, A, M, t, bias, Y8))) {
    failures++;
  } else {
    double worst = 0.0, worst8 = 0.0;
    long differ = 0;
    for (int64_t i = 0; i < M * N; i++) {
      const double e = fabs((double)Y[i] - ref[i]) / (is8 ? bound8[i] : bound[i]);
      if (!(e <= worst)) worst = e; /* NaN counts as the worst */
      if (is8 && memcmp(&Y[i], &Y8[i], sizeof(float)) != 0) {
        differ++;
        const double e8 = fabs((double)Y[i] - (double)Y8[i]) / bound[i];
        if (!(e8 <= worst8)) worst8 = e8;
      }
    }
    const double tol = is8 ? 5e-2 : 2e-6;
    const double d = is8 ? worst8 : worst;
    if (!(d <= st->worst)) st->worst = d;
    st->differ += differ;
    if (!(worst <= tol) || !(worst8 <= 1e-6)) {
      failures++;
      if (st->failed + failures <= 5)
        fprintf(stderr, "  FAIL %s %s M=%lld K=%lld N=%lld block=%lld bias=%d: scaled error %.3g (tol %.0e), %ld outputs differ from scalar_int8 by up to %.3g (tol 1e-06)\n",
                st->k->name, fmt_name(c), (long long)M, (long long)K, (long long)N, (long long)c->block_size,
                bias != NULL, worst, tol, differ, worst8);
    }
    for (int s = 1; s <= 2; s++) {
      if (run_kernel(st->k, s, threads, A, M, t, bias, Yt)) {
        failures++;
        continue;
      }
      if (memcmp(Y, Yt, (size_t)(M * N) * sizeof(float)) != 0) {
        failures++;
        if (st->failed + failures <= 5)
          fprintf(stderr, "  FAIL %s %s M=%lld K=%lld N=%lld block=%lld: the threaded driver (%s) differs from the serial run\n",
                  st->k->name, fmt_name(c), (long long)M, (long long)K, (long long)N, (long long)c->block_size,
                  kSchedule[s]);
      }
    }
  }
  st->cases++;
  st->failed += failures;
  free(A);
  free(Y);
  free(Yt);
  free(Y8);
  free(ref);
  free(bound);
  free(bound8);
  free(amax);
  free(bias);
  return failures;
}

/* The kernel's whole grid: returns the number of failed checks. */
static int check_kernel(kstat *st, int64_t max_k, int threads) {
  const int64_t n = i4o_kernel_grid(st->k->name, NULL, 0);
  if (n < 0) {
    fprintf(stderr, "test_kernels: no grid for %s\n", st->k->name);
    return 1;
  }
  i4o_test_case *cases = (i4o_test_case *)xmalloc((size_t)n * sizeof(*cases));
  i4o_kernel_grid(st->k->name, cases, n);
  weights t;
  memset(&t, 0, sizeof(t));
  int failures = 0;
  for (int64_t i = 0; i < n; i++) {
    const i4o_test_case *c = &cases[i];
    if (c->K > max_k) {
      st->skipped++;
      continue;
    }
    i4o_test_case key = *c;
    key.M = 0;
    if (!t.packed || memcmp(&key, &t.key, sizeof(key)) != 0) { /* i4o_test_case has no padding */
      if (t.packed) free_weights(&t);
      make_weights(&t, c);
    }
    failures += check_case(st, c, &t, threads);
  }
  if (t.packed) free_weights(&t);
  free(cases);
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

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
/* amx_fp32 leaves the calling thread's tile configuration as it found it, a foreign one or none (ONNX
 * Runtime's own AMX kernels load theirs once per thread and rely on it): returns the failures */
static int check_amx_tile_state(void) {
  const i4o_kernel *k = i4o_find_kernel("amx_fp32");
  if (!k || !i4o_cpu_has_isa("amx")) return 0;
  uint8_t foreign[64] = {1}, zeros[64] = {0}, after[64];
  for (int t = 0; t < 8; t++) { /* 8 rows of 32 bytes in every tile, unlike the kernel's 16 x 64 */
    foreign[16 + 2 * t] = 32;
    foreign[48 + t] = 8;
  }
  const i4o_test_case c = {48, 256, 64, 32, 4, I4O_QUANT_INT, 1, 0, 0}; /* M >= 16: the tile path */
  weights t;
  make_weights(&t, &c);
  float *A = (float *)xmalloc((size_t)(c.M * c.K) * sizeof(float)), *Y = (float *)xmalloc((size_t)(c.M * c.N) * sizeof(float));
  for (int64_t i = 0; i < c.M * c.K; i++) A[i] = rnd_normalish();
  int failures = 0;
  for (int released = 0; released < 2; released++) {
    if (released) __asm__ volatile("tilerelease" ::: "memory");
    else __asm__ volatile("ldtilecfg %0" ::"m"(foreign) : "memory");
    failures += run_kernel(k, 0, 1, A, c.M, &t, NULL, Y) != 0;
    __asm__ volatile("sttilecfg %0" : "=m"(after)::"memory");
    if (memcmp(after, released ? zeros : foreign, sizeof(after)) != 0) {
      printf("FAIL: amx_fp32 changed the thread's tile configuration (%s before)\n", released ? "none" : "a foreign one");
      failures++;
    }
  }
  __asm__ volatile("tilerelease" ::: "memory");
  if (!failures) printf("amx_fp32: the thread's tile configuration kept (a foreign one, and none)\n");
  free(A);
  free(Y);
  free_weights(&t);
  return failures;
}
#else
static int check_amx_tile_state(void) { return 0; }
#endif

int main(int argc, char **argv) {
  const char *expect = NULL, *only = NULL;
  int64_t max_k = INT64_MAX;
  int threads = 3;
  /* the driver's finest split (no minimum work per task), so that small shapes run as many tasks too */
  setenv("INT4ONNX_MIN_TASK_MACS", "0", 1);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc) expect = argv[++i];
    else if (strcmp(argv[i], "--max-k") == 0 && i + 1 < argc) max_k = atoll(argv[++i]);
    else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--kernel") == 0 && i + 1 < argc) only = argv[++i];
    else {
      fprintf(stderr, "usage: %s [--expect COMPUTE=KERNEL,...] [--max-k K] [--threads T] [--kernel NAME]\n", argv[0]);
      return 2;
    }
  }
  if (threads < 2 || threads > 64) {
    fprintf(stderr, "test_kernels: --threads must be 2..64\n");
    return 2;
  }
  printf("cpu isa:");
  for (size_t i = 0; i < sizeof(kIsas) / sizeof(kIsas[0]); i++)
    if (i4o_cpu_has_isa(kIsas[i])) printf(" %s", kIsas[i]);
  printf("\nkernels available: %s\n", i4o_kernels_available());
  printf("selected: fp32=%s int8=%s\n", i4o_kernel_selected(I4O_COMPUTE_FP32), i4o_kernel_selected(I4O_COMPUTE_INT8));
  int failures = expect ? check_expectations(expect) : 0;
  failures += check_amx_tile_state();
  for (int i = 0; i < 16; i++)
    if (i4o_nf4_i8()[i] != (int8_t)lrintf(127.0f * i4o_nf4_codebook()[i])) {
      printf("FAIL: NF4 int8 level %d is %d, not lrintf(127 * %g)\n", i, i4o_nf4_i8()[i], i4o_nf4_codebook()[i]);
      failures++;
    }

  size_t n_all, n_stats = 0;
  const i4o_kernel *const *all = i4o_all_kernels(&n_all);
  kstat *stats = (kstat *)calloc(n_all, sizeof(kstat));
  for (size_t i = 0; i < n_all; i++)
    if (i4o_cpu_has_isa(all[i]->isa) && (!only || strcmp(only, all[i]->name) == 0)) stats[n_stats++].k = all[i];
  if (only && !n_stats) {
    fprintf(stderr, "test_kernels: --kernel %s: not a kernel this CPU runs (%s)\n", only, i4o_kernels_available());
    return 2;
  }
  if (max_k != INT64_MAX) printf("skipping the cases with K > %lld (--max-k)\n", (long long)max_k);

  const clock_t t0 = clock();
  for (size_t s = 0; s < n_stats; s++) failures += check_kernel(&stats[s], max_k, threads);
  const double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
  for (size_t s = 0; s < n_stats; s++) {
    const kstat *st = &stats[s];
    char what[96];
    snprintf(what, sizeof(what), "%5ld cases (tile %lldx%lld, kr %lld, kc %lld%s)", st->cases,
             (long long)st->k->tile.mr, (long long)st->k->tile.nr, (long long)st->k->tile.kr,
             (long long)st->k->tile.kc, st->skipped ? ", some skipped" : "");
    if (st->k->compute == I4O_COMPUTE_INT8 && st->differ == 0)
      printf("%-16s %s, bit-exact vs scalar_int8%s\n", st->k->name, what, st->failed ? "  FAILED" : "");
    else if (st->k->compute == I4O_COMPUTE_INT8)
      printf("%-16s %s, %ld outputs differ from scalar_int8, worst scaled difference %.2e (tol 1e-06)%s\n",
             st->k->name, what, st->differ, st->worst, st->failed ? "  FAILED" : "");
    else
      printf("%-16s %s, worst scaled error %.2e (tol 2e-06)%s\n", st->k->name, what, st->worst,
             st->failed ? "  FAILED" : "");
  }
  printf("threaded driver: every case also ran with its tasks in reverse order and on %d threads (each must equal "
         "the serial run bit for bit)\n", threads);
  printf("%s: %d failure(s), %.1f s cpu\n", failures ? "FAIL" : "PASS", failures, secs);
  free(stats);
  return failures ? 1 : 0;
}
