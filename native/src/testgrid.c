/* The kernel tests' shape grid, derived from each kernel's register tile as XNNPACK's gemm testers
 * derive theirs, and test schedules for the threaded driver, after MLAS's threaded sweeps: the one
 * list of cases that native/tests/test_kernels.c and tests/native/test_kernels.py both run.
 *
 * With the kernel's tile (mr, nr, kr, kc), tail = kr - 1 (1 when kr = 1), N0 = nr + 1 and
 * M_edge = {1, mr, mr + 1, 2 mr + 1}:
 *   blocks   block B in {16, 32, 48, 64, 128, 256}: K in {B - 16, B, B + 16, 2B + 16, B + 16 + tail}
 *            (and K = tail for B = 16); per-channel (one block spans K): K in {16 + tail, 272 + tail};
 *            M in M_edge, N = N0
 *   columns  N in {1, nr - 1, nr, nr + 1, 4 nr + 1}, M in {1, mr + 1}, K in {80, 80 + tail}, block 32
 *   rows     M in {1 .. mr + 1, 2 mr + 1}, N = N0, K = 80, block 32
 *   panels   (kc > 0) K in {kc - 16, kc + 16, 2 kc + 16, kc + 16 + tail}, block 32 and per-channel,
 *            M in {mr + 1, 2 mr + 1}, N = N0
 *   long K   K = 4096, block 32 and per-channel, M in {1, mr + 1}, N = N0 (4-bit sym/asym, 8-bit asym)
 *   groups   block B in {16, 32, 64}: K = 33 B + B / 2 (the x86 int8 kernels quantise activations 16 or
 *            8 whole blocks at a time: groups, then a whole block and a part of one), M in M_edge, N = N0
 *   threads  cubes M = N = K = 1 .. 15 (block 16); 43 x 500 x 401 and, with c the driver's row slab at
 *            K = 64, N = N0: M in {2c + c/4, 2c + 3c/4} (the remainder joins the last slab, or makes
 *            its own) x 64 x N0 (block 32; 4-bit asym)
 * each in the eight weight formats below (those the kernel supports: real zero points only on kernels
 * with real_zero_points), duplicates dropped.
 */
#define _POSIX_C_SOURCE 200112L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef struct fmt {
  int bits, quant_type, symmetric, int8_scales, real_zero_points;
} fmt;

static const fmt kFormats[] = {
    {4, I4O_QUANT_INT, 1, 0, 0}, {4, I4O_QUANT_INT, 0, 0, 0}, {4, I4O_QUANT_NF4, 1, 0, 0},
    {8, I4O_QUANT_INT, 1, 0, 0}, {8, I4O_QUANT_INT, 0, 0, 0}, {4, I4O_QUANT_INT, 0, 1, 0},
    {4, I4O_QUANT_INT, 0, 0, 1}, {8, I4O_QUANT_INT, 0, 0, 1},
};
#define N_FORMATS (int)(sizeof(kFormats) / sizeof(kFormats[0]))
/* the long-K and driver cases run the 4-bit asymmetric formats (integer and real zero points) */
enum { F_ALL = (1 << N_FORMATS) - 1, F_INT4_ASYM = 1 << 1 | 1 << 6, F_LONG = 1 << 0 | 1 << 1 | 1 << 4 | 1 << 6 };

typedef struct grid {
  const i4o_kernel *k;
  i4o_test_case *v;
  int64_t n, cap;
  int oom;
} grid;

/* Ms[0 .. nm) x the formats in the mask fmts; block 0 = per-channel (one block spans K) */
static void add(grid *g, const int64_t *Ms, int nm, int64_t K, int64_t N, int64_t block, int fmts) {
  if (K < 1 || N < 1) return;
  if (block == 0) block = (K + 15) / 16 * 16;
  for (int f = 0; f < N_FORMATS; f++) {
    if (!(fmts >> f & 1)) continue;
    /* what the kernel may ask about before it sees data (as i4o_choose_kernel) */
    i4o_wdesc d = i4o_wdesc_make(K, N, kFormats[f].bits, block, kFormats[f].quant_type);
    if (kFormats[f].real_zero_points) d.zpf = i4o_real_zp_probe();
    if (!i4o_kernel_supports(g->k, &d)) continue;
    for (int i = 0; i < nm; i++) {
      if (Ms[i] < 1) continue;
      if (g->n == g->cap) {
        const int64_t cap = g->cap ? 2 * g->cap : 1024;
        i4o_test_case *v = (i4o_test_case *)realloc(g->v, (size_t)cap * sizeof(*v));
        if (!v) {
          g->oom = 1;
          return;
        }
        g->v = v;
        g->cap = cap;
      }
      i4o_test_case c = {Ms[i], K, N, block, kFormats[f].bits, kFormats[f].quant_type, kFormats[f].symmetric,
                         kFormats[f].int8_scales, kFormats[f].real_zero_points};
      g->v[g->n++] = c;
    }
  }
}

static int same_weight(const i4o_test_case *a, const i4o_test_case *b) {
  return a->K == b->K && a->N == b->N && a->block_size == b->block_size && a->bits == b->bits &&
         a->quant_type == b->quant_type && a->symmetric == b->symmetric && a->int8_scales == b->int8_scales &&
         a->real_zero_points == b->real_zero_points;
}

static void build(grid *g) {
  const i4o_tile t = g->k->tile;
  const int64_t mr = t.mr > 0 ? t.mr : 1, nr = t.nr > 0 ? t.nr : 1, tail = t.kr > 1 ? t.kr - 1 : 1;
  const int64_t N0 = nr + 1;
  const int64_t m_edge[] = {1, mr, mr + 1, 2 * mr + 1}, m_rows[] = {1, mr + 1, 2 * mr + 1};
  static const int64_t kBlocks[] = {16, 32, 48, 64, 128, 256};
  for (size_t i = 0; i < sizeof(kBlocks) / sizeof(kBlocks[0]); i++) {
    const int64_t B = kBlocks[i];
    const int64_t Ks[] = {B - 16, B, B + 16, 2 * B + 16, B + 16 + tail, B == 16 ? tail : 0};
    for (size_t j = 0; j < sizeof(Ks) / sizeof(Ks[0]); j++) add(g, m_edge, 4, Ks[j], N0, B, F_ALL);
  }
  add(g, m_edge, 4, 16 + tail, N0, 0, F_ALL);
  add(g, m_edge, 4, 272 + tail, N0, 0, F_ALL);
  const int64_t Ns[] = {1, nr - 1, nr, nr + 1, 4 * nr + 1};
  for (size_t j = 0; j < sizeof(Ns) / sizeof(Ns[0]); j++) {
    add(g, m_rows, 2, 80, Ns[j], 32, F_ALL);
    add(g, m_rows, 2, 80 + tail, Ns[j], 32, F_ALL);
  }
  int64_t Ms[64];
  int nm = 0;
  for (int64_t m = 1; m <= mr + 1 && nm < 63; m++) Ms[nm++] = m;
  Ms[nm++] = 2 * mr + 1;
  add(g, Ms, nm, 80, N0, 32, F_ALL);
  if (t.kc > 0) {
    const int64_t Ks[] = {t.kc - 16, t.kc + 16, 2 * t.kc + 16, t.kc + 16 + tail};
    for (size_t j = 0; j < sizeof(Ks) / sizeof(Ks[0]); j++) {
      add(g, m_rows + 1, 2, Ks[j], N0, 32, F_ALL);
      add(g, m_rows + 1, 2, Ks[j], N0, 0, F_ALL);
    }
  }
  static const int64_t kGroupBlocks[] = {16, 32, 64};
  for (size_t i = 0; i < sizeof(kGroupBlocks) / sizeof(kGroupBlocks[0]); i++)
    add(g, m_edge, 4, 33 * kGroupBlocks[i] + kGroupBlocks[i] / 2, N0, kGroupBlocks[i], F_ALL);
  add(g, m_rows, 2, 4096, N0, 32, F_LONG);
  add(g, m_rows, 2, 4096, N0, 0, F_LONG);
  for (int64_t s = 1; s <= 15; s++) add(g, &s, 1, s, s, 16, F_ALL);
  const int64_t m43 = 43;
  add(g, &m43, 1, 500, 401, 32, F_INT4_ASYM);
  /* the driver's row slabs at K = 64 (i4o_partition_tasks): two and a remainder that joins the last
   * slab, two and one that makes a slab of its own */
  const int64_t c = i4o_partition_tasks(g->k, 4096, 64, N0, 0).m_chunk;
  const int64_t m_slabs[] = {2 * c + c / 4, 2 * c + 3 * c / 4};
  add(g, m_slabs, 2, 64, N0, 32, F_INT4_ASYM);
  /* the fp32 panel kernels' task floors (i4o_partition_tasks): at K = 512, 2 * 64 + 5 rows split into two
   * slabs of >= 64 rows and the columns into chunks of 64 plus a last one of a single column */
  const int64_t m_floors = 2 * 64 + 5;
  add(g, &m_floors, 1, 512, 4 * nr + 1, 32, F_INT4_ASYM);
  /* kernels whose slabs the driver caps by their prepared activations' bytes (a_elem_bytes): at K = 2048,
   * two capped slabs and a remainder that joins the last, two and one of its own */
  if (g->k->a_elem_bytes > 0) {
    const int64_t cb = i4o_partition_tasks(g->k, 4096, 2048, N0, 0).m_chunk;
    const int64_t m_capped[] = {2 * cb + cb / 4, 2 * cb + 3 * cb / 4};
    add(g, m_capped, 2, 2048, N0, 32, F_INT4_ASYM);
  }
}

int i4o_kernel_tile(const char *kernel, i4o_tile *out) {
  const i4o_kernel *k = kernel ? i4o_find_kernel(kernel) : NULL;
  if (!k || !out) return k ? I4O_E_ARG : I4O_E_KERNEL;
  *out = k->tile;
  return I4O_OK;
}

int64_t i4o_kernel_grid(const char *kernel, i4o_test_case *cases, int64_t cap) {
  const i4o_kernel *k = kernel ? i4o_find_kernel(kernel) : NULL;
  if (!k || cap < 0 || (cap > 0 && !cases)) return -1;
  grid g = {k, NULL, 0, 0, 0};
  build(&g);
  char *done = g.oom ? NULL : (char *)calloc((size_t)g.n + 1, 1);
  i4o_test_case *all = done ? (i4o_test_case *)malloc(((size_t)g.n + 1) * sizeof(*all)) : NULL;
  int64_t count = -1;
  if (all) { /* the cases of one weight together (in order of first appearance), duplicates dropped */
    count = 0;
    for (int64_t i = 0; i < g.n; i++) {
      const int64_t first = count;
      for (int64_t j = i; j < g.n; j++) {
        if (done[j] || !same_weight(&g.v[i], &g.v[j])) continue;
        done[j] = 1;
        int dup = 0;
        for (int64_t c = first; c < count && !dup; c++) dup = all[c].M == g.v[j].M;
        if (!dup) all[count++] = g.v[j];
      }
    }
    if (cap > 0) memcpy(cases, all, (size_t)(count < cap ? count : cap) * sizeof(*all));
  }
  free(all);
  free(done);
  free(g.v);
  return count;
}

/* ---- test schedules for the threaded driver ---- */

static void reverse_for(void *ctx, void (*fn)(void *, size_t), size_t n, void *data) {
  (void)ctx;
  for (size_t i = n; i-- > 0;) fn(data, i);
}

typedef struct shared_job {
  void (*fn)(void *, size_t);
  void *data;
  size_t n;
  atomic_size_t next;
} shared_job;

static void *take_tasks(void *arg) {
  shared_job *j = (shared_job *)arg;
  for (size_t i; (i = atomic_fetch_add(&j->next, 1)) < j->n;) j->fn(j->data, j->n - 1 - i);
  return NULL;
}

#define MAX_TEST_THREADS 64

/* ctx: the number of threads; the calling thread takes tasks too, as ONNX Runtime's pool does */
static void threads_for(void *ctx, void (*fn)(void *, size_t), size_t n, void *data) {
  const int threads = *(const int *)ctx;
  shared_job j;
  j.fn = fn;
  j.data = data;
  j.n = n;
  atomic_init(&j.next, 0);
  pthread_t t[MAX_TEST_THREADS];
  int started = 0;
  while (started < threads - 1 && pthread_create(&t[started], NULL, take_tasks, &j) == 0) started++;
  take_tasks(&j); /* a thread that could not start leaves its tasks to the others */
  for (int i = 0; i < started; i++) pthread_join(t[i], NULL);
}

int i4o_matmul_threads(const char *kernel, int compute, const float *A, int64_t M, const i4o_weights *w,
                       const float *bias, float *Y, int threads, char *err, size_t err_len) {
  if (threads < 1 || threads > MAX_TEST_THREADS) {
    if (err && err_len) snprintf(err, err_len, "threads must be 1..%d (got %d)", MAX_TEST_THREADS, threads);
    return I4O_E_ARG;
  }
  int ctx = threads;
  return i4o_matmul_pfor(kernel, compute, A, M, w, bias, Y, threads == 1 ? reverse_for : threads_for, &ctx, err,
                         err_len);
}
