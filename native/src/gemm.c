/* Prepared weights, the threaded gemm driver, the int8 activation quantizer, and the test API. */
#define _POSIX_C_SOURCE 200112L
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "kernels.h"

void *i4o_aligned_alloc(size_t bytes) {
  void *p = NULL;
  if (bytes == 0) bytes = 64;
  bytes = (bytes + 63) & ~(size_t)63;
  if (posix_memalign(&p, 64, bytes) != 0) return NULL;
  return p;
}

void i4o_aligned_free(void *p) { free(p); }

void i4o_serial_for(void *ctx, void (*fn)(void *, size_t), size_t n, void *data) {
  (void)ctx;
  for (size_t i = 0; i < n; i++) fn(data, i);
}

/* ---- float16 <-> float32 arrays (float16 models' activations and outputs) ---- */

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

__attribute__((target("avx,f16c"))) static void h2f_f16c(const uint16_t *src, float *dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  for (; i < n; i++) dst[i] = i4o_half_to_float(src[i]);
}

__attribute__((target("avx,f16c"))) static void f2h_f16c(const float *src, uint16_t *dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) dst[i] = i4o_float_to_half(src[i]);
}

static int has_f16c(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif

void i4o_half_to_float_n(const uint16_t *src, float *dst, int64_t n) {
#if defined(__x86_64__) || defined(_M_X64)
  if (has_f16c()) {
    h2f_f16c(src, dst, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) dst[i] = i4o_half_to_float(src[i]);
}

void i4o_float_to_half_n(const float *src, uint16_t *dst, int64_t n) {
#if defined(__x86_64__) || defined(_M_X64)
  if (has_f16c()) { /* round to nearest even, as i4o_float_to_half */
    f2h_f16c(src, dst, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) dst[i] = i4o_float_to_half(src[i]);
}

/* ---- int8 activations ---- */

static int64_t qa_ldq(const i4o_wdesc *w) { return (w->n_blocks * w->block_size + 63) & ~(int64_t)63; }

size_t i4o_qa_bytes(const i4o_wdesc *w, int64_t M) {
  const int64_t ldq = qa_ldq(w);
  return (size_t)(M * ldq) + (size_t)(M * w->n_blocks) * (sizeof(float) + sizeof(int32_t)) + 128;
}

i4o_qa_view i4o_qa_map(const i4o_wdesc *w, int64_t M, const void *ws) {
  i4o_qa_view v;
  v.ldq = qa_ldq(w);
  v.nb = w->n_blocks;
  v.q = (int8_t *)(uintptr_t)ws;
  v.scale = (float *)(v.q + M * v.ldq);
  v.sum = (int32_t *)(v.scale + M * w->n_blocks);
  return v;
}

void i4o_qa_prepare(const i4o_wdesc *w, const float *A, int64_t lda, int64_t M, int64_t m0, int64_t m1,
                    void *ws) {
  i4o_qa_view v = i4o_qa_map(w, M, ws);
  const int64_t K = w->K, bs = w->block_size;
  for (int64_t m = m0; m < m1; m++) {
    const float *a = A + m * lda;
    int8_t *q = v.q + m * v.ldq;
    for (int64_t b = 0; b < w->n_blocks; b++) {
      const int64_t k0 = b * bs, k1 = k0 + bs < K ? k0 + bs : K;
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; k++) {
        float x = fabsf(a[k]);
        amax = x > amax || x != x ? x : amax; /* a NaN sticks, so the block's scale is NaN */
      }
      const float scale = amax / 127.0f;
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t k = k0; k < k1; k++) {
        float r = nearbyintf(a[k] * inv);
        if (r != r) r = 0.0f; /* inf or NaN activations: converting NaN to int8 is undefined; the
                                 block's non-finite scale carries them into the result */
        r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
        q[k] = (int8_t)r;
        sum += q[k];
      }
      for (int64_t k = k1; k < k0 + bs; k++) q[k] = 0;
      v.scale[m * w->n_blocks + b] = scale;
      v.sum[m * w->n_blocks + b] = sum;
    }
    for (int64_t k = w->n_blocks * bs; k < v.ldq; k++) q[k] = 0;
  }
}

/* The NF4 levels as the int8 path's codes, lrintf(127 * i4o_nf4_codebook()[i]): a constant table, so
 * kernels on pool threads never initialise shared state (native/tests/test_kernels.c checks it). */
static const int8_t kNf4I8[16] = {-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127};

const int8_t *i4o_nf4_i8(void) { return kNf4I8; }

/* ---- weight scales of the int8 path ----
 * The int8 path uses each weight scale rounded to 11 significant bits (float16 precision) with a
 * power-of-two per column: E[n] puts the column's largest |scale| in [2^14, 2^15), and
 * scale' = half(scale * 2^-E[n]) * 2^E[n]. Kernels can then store scales in 16 bits and stay exact.
 * (Scales below 2^-38 of their column's largest lose bits as float16 subnormals, by definition.) */
int i4o_int8_scale_exp(const i4o_wdesc *w, int64_t n) {
  float mx = 0.0f;
  for (int64_t b = 0; b < w->n_blocks; b++) {
    const float a = fabsf(w->scales[n * w->n_blocks + b]);
    mx = a > mx ? a : mx;
  }
  if (!(mx > 0.0f) || !isfinite(mx)) return 0;
  return ilogbf(mx) - 14;
}

static void round_scales_int8(i4o_wdesc *w, float *scales) { /* w->scales == scales */
  for (int64_t n = 0; n < w->N; n++) {
    /* a maximum that rounds up to 2^15 moves E by one: round again, then E is stable (the value a
     * kernel recomputes from the rounded scales) */
    for (int pass = 0, e = i4o_int8_scale_exp(w, n); pass < 2; pass++) {
      for (int64_t b = 0; b < w->n_blocks; b++) {
        float *s = &scales[n * w->n_blocks + b];
        if (isfinite(*s)) *s = ldexpf(i4o_half_to_float(i4o_float_to_half(ldexpf(*s, -e))), e);
      }
      const int e2 = i4o_int8_scale_exp(w, n);
      if (e2 == e) break;
      e = e2;
    }
  }
}

/* ---- prepared weights ---- */

static const float kRealZpProbe[1] = {0.0f};

const float *i4o_real_zp_probe(void) { return kRealZpProbe; }

void i4o_prepared_free(i4o_prepared *p) {
  if (!p) return;
  i4o_aligned_free(p->packed);
  free(p->scales);
  free(p->zp);
  free(p->zpf);
  free(p);
}

/* The fields of an i4o_weights that every entry point checks: layout, pointers, code type, scales. */
static int check_weights(const i4o_weights *w) {
  if (!w || !w->data || i4o_check_layout(w->K, w->N, w->bits, w->block_size)) return I4O_E_ARG;
  if (!w->scales == !w->scales_int8) return I4O_E_ARG; /* exactly one kind of scales */
  if (w->scales_int8 && (!w->scales_scale || (w->n_scales_scale != w->N && w->n_scales_scale != 1))) return I4O_E_ARG;
  if (w->quant_type != I4O_QUANT_INT && w->quant_type != I4O_QUANT_NF4) return I4O_E_ARG;
  if (w->zero_points && w->zero_points_float) return I4O_E_ARG; /* at most one kind of zero points */
  if (w->quant_type == I4O_QUANT_NF4 && (w->bits != 4 || w->zero_points || w->zero_points_float)) return I4O_E_ARG;
  return I4O_OK;
}

int i4o_weight_scales(const i4o_weights *w, float *out) {
  if (!out || check_weights(w)) return I4O_E_ARG;
  const int64_t nb = i4o_n_blocks(w->K, w->block_size);
  const size_t n = (size_t)(w->N * nb);
  if (w->scales) {
    memcpy(out, w->scales, n * sizeof(float));
    return I4O_OK;
  }
  const size_t step = w->n_scales_scale == w->N ? 1 : 0; /* per column, or one for the tensor */
  for (size_t i = 0; i < n; i++) out[i] = (float)w->scales_int8[i] * w->scales_scale[step * (i / (size_t)nb)];
  return I4O_OK;
}

/* Least multiply-adds per task: 2^17 on ONNX Runtime's pool (~64 KB of 4-bit weights at M = 1, a few
 * microseconds on one core, worth waking a thread for), 2^14 on the library's own spinning threads (a task
 * starts there within a cache line's travel: at M = 1 a 1024 x 1024 layer becomes 64 tasks instead of 8, so
 * 16 threads all get work). INT4ONNX_MIN_TASK_MACS overrides both (0: split as finely as the tiles allow).
 * Read once per prepared weight (session start), not per run. */
int64_t i4o_min_task_macs(int own_threads) {
  const char *env = getenv("INT4ONNX_MIN_TASK_MACS");
  if (env && *env) {
    const long long v = atoll(env);
    return v > 0 ? (int64_t)v : 0;
  }
  return (int64_t)1 << (own_threads ? 14 : 17);
}

int i4o_prepare(const i4o_weights *src, const i4o_kernel *kernel, i4o_prepared **out) {
  if (!out) return I4O_E_ARG;
  *out = NULL;
  if (!kernel || check_weights(src)) return I4O_E_ARG;
  i4o_prepared *p = (i4o_prepared *)calloc(1, sizeof(*p));
  if (!p) return I4O_E_NOMEM;
  i4o_wdesc *w = &p->w;
  *w = i4o_wdesc_make(src->K, src->N, src->bits, src->block_size, src->quant_type);
  w->data = src->data;
  const size_t n_scales = (size_t)(w->N * w->n_blocks);
  p->scales = (float *)malloc(n_scales * sizeof(float));
  if (!p->scales) goto nomem;
  i4o_weight_scales(src, p->scales);
  w->scales = p->scales;
  if (src->zero_points) {
    p->zp = (uint8_t *)malloc(n_scales);
    if (!p->zp) goto nomem;
    i4o_unpack_zero_points(src->zero_points, w->N, w->n_blocks, w->bits, p->zp);
    w->zp = p->zp;
  }
  if (src->zero_points_float) {
    p->zpf = (float *)malloc(n_scales * sizeof(float));
    if (!p->zpf) goto nomem;
    memcpy(p->zpf, src->zero_points_float, n_scales * sizeof(float));
    /* the int8 path uses real zero points rounded to float16 (kernels may then store them in 16 bits) */
    if (kernel->compute == I4O_COMPUTE_INT8)
      for (size_t i = 0; i < n_scales; i++) p->zpf[i] = i4o_half_to_float(i4o_float_to_half(p->zpf[i]));
    w->zpf = p->zpf;
  }
  p->kernel = kernel;
  p->min_task_macs = i4o_min_task_macs(0);
  if (kernel->compute == I4O_COMPUTE_INT8) round_scales_int8(w, p->scales);
  if (!i4o_kernel_supports(kernel, w)) {
    i4o_prepared_free(p);
    return I4O_E_KERNEL;
  }
  if (kernel->packed_bytes) {
    size_t bytes = kernel->packed_bytes(w);
    if (bytes) {
      p->packed = i4o_aligned_alloc(bytes);
      if (!p->packed) goto nomem;
      kernel->pack(w, p->packed);
      /* the packed layout holds the scales and the kernel reads nothing else (w->zp stays: the
       * kernels take it as the zero-point flag), so the float copy goes: a fifth of the weights'
       * memory at group 32 */
      free(p->scales);
      p->scales = NULL;
      w->scales = NULL;
      if (p->zpf) { /* likewise the real zero points; w->zpf stays non-NULL as their flag */
        free(p->zpf);
        p->zpf = NULL;
        w->zpf = i4o_real_zp_probe();
      }
    }
  }
  *out = p;
  return I4O_OK;
nomem:
  i4o_prepared_free(p);
  return I4O_E_NOMEM;
}

/* ---- activation workspaces ----
 * A few buffers are kept between calls: a fresh multi-megabyte allocation per call (M = 512 x
 * K = 4096 fp32 activations are 8 MB) is mmap-ed and page-faulted every time, which measured
 * ~2-3 % of a large MatMul. Up to WS_KEEP buffers of at most WS_KEEP_MAX bytes each stay in the
 * pool (process-wide); concurrent runs take different buffers. */
#define WS_KEEP 4
#define WS_KEEP_MAX ((size_t)256 << 20)
static atomic_flag g_ws_lock = ATOMIC_FLAG_INIT;
static struct {
  void *p;
  size_t bytes;
} g_ws[WS_KEEP];

static void ws_lock(void) {
  while (atomic_flag_test_and_set_explicit(&g_ws_lock, memory_order_acquire)) {
  }
}
static void ws_unlock(void) { atomic_flag_clear_explicit(&g_ws_lock, memory_order_release); }

/* a buffer of at least `bytes`; *cap receives its size */
static void *ws_take(size_t bytes, size_t *cap) {
  int best = -1;
  ws_lock();
  for (int i = 0; i < WS_KEEP; i++)
    if (g_ws[i].p && g_ws[i].bytes >= bytes && (best < 0 || g_ws[i].bytes < g_ws[best].bytes)) best = i;
  void *p = NULL;
  if (best >= 0) {
    p = g_ws[best].p;
    *cap = g_ws[best].bytes;
    g_ws[best].p = NULL;
    g_ws[best].bytes = 0;
  }
  ws_unlock();
  if (!p) {
    p = i4o_aligned_alloc(bytes);
    *cap = bytes;
  }
  return p;
}

static void ws_give(void *p, size_t bytes) {
  if (!p) return;
  if (bytes > WS_KEEP_MAX) {
    i4o_aligned_free(p);
    return;
  }
  ws_lock();
  int slot = -1; /* an empty slot, else the one with the smallest buffer */
  for (int i = 0; i < WS_KEEP && slot < 0; i++)
    if (!g_ws[i].p) slot = i;
  if (slot < 0) {
    slot = 0;
    for (int i = 1; i < WS_KEEP; i++)
      if (g_ws[i].bytes < g_ws[slot].bytes) slot = i;
  }
  void *evict = NULL;
  if (!g_ws[slot].p) {
    g_ws[slot].p = p;
    g_ws[slot].bytes = bytes;
  } else if (g_ws[slot].bytes < bytes) {
    evict = g_ws[slot].p;
    g_ws[slot].p = p;
    g_ws[slot].bytes = bytes;
  } else {
    evict = p;
  }
  ws_unlock();
  i4o_aligned_free(evict);
}

/* ---- threaded driver ---- */

/* a spinning wait's pause */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

typedef struct run_state {
  const i4o_prepared *p;
  i4o_gemm_ctx ctx;
  void *a_ws;
  int64_t m_chunk, n_chunk, m_tasks, n_tasks;
  int64_t p_chunk, p_tasks; /* prepare_a's row chunks (multiples of m_tile) */
  atomic_llong p_next;      /* prepare_a's next unclaimed chunk */
  atomic_llong p_done;      /* prepare_a's chunks finished */
} run_state;

static void prepare_chunk(run_state *s, int64_t i) {
  int64_t m0 = i * s->p_chunk, m1 = i == s->p_tasks - 1 ? s->ctx.M : m0 + s->p_chunk;
  s->p->kernel->prepare_a(&s->p->w, s->ctx.A, s->ctx.lda, s->ctx.M, m0, m1, s->a_ws);
}

/* The activations are prepared (int8: quantized; fp32 panels: packed) inside the gemm's own parallel section:
 * the first tasks to start claim prepare_a's row chunks, and every task goes on once all chunks are done. One
 * section instead of two saves a pool hand-out and join per MatMul (microseconds on 8-16 threads), and at
 * M = 1 the quantisation overlaps the pool bringing the other threads in. The wait ends: a chunk is only
 * waited on once claimed, and its thread runs it without waiting on anything. */
static void ensure_prepared(run_state *s) {
  if (atomic_load_explicit(&s->p_done, memory_order_acquire) == s->p_tasks) return;
  for (;;) {
    const int64_t i = atomic_fetch_add_explicit(&s->p_next, 1, memory_order_relaxed);
    if (i >= s->p_tasks) break;
    prepare_chunk(s, i);
    atomic_fetch_add_explicit(&s->p_done, 1, memory_order_release);
  }
  /* spin briefly (the chunks take microseconds), then yield: a claimer that the OS took off its core (more
   * threads than cores) gets it back sooner */
  for (unsigned spins = 0; atomic_load_explicit(&s->p_done, memory_order_acquire) < s->p_tasks; spins++) {
    if (spins < 4096) cpu_relax();
    else sched_yield();
  }
}

static void gemm_task(void *data, size_t i) {
  run_state *s = (run_state *)data;
  if (s->p_tasks) ensure_prepared(s);
  /* Tasks run M-major: the contiguous range of tasks that a thread takes first (ONNX Runtime's pool and
   * ours both hand out ranges) shares one row slab, whose activations then stay in the thread's L2 while
   * it walks the columns. At large M the activations are the bigger stream (fp32: 4 bytes, amx_fp32's
   * bfloat16 parts 6, per element, against ~0.6 per weight); N-major order had every thread read all of
   * A from L3 (amx_fp32, M = 512 on the lent Xeon: 1.38x-1.42x of accuracy_level 0 on one thread
   * against 1.18x-1.24x, 1.09x-1.16x on 16 against 0.95x-1.02x). At M = 1 there is one slab. */
  int64_t mt = (int64_t)i / s->n_tasks, nt = (int64_t)i % s->n_tasks;
  int64_t n0 = nt * s->n_chunk, n1 = n0 + s->n_chunk;
  int64_t m0 = mt * s->m_chunk, m1 = mt == s->m_tasks - 1 ? s->ctx.M : m0 + s->m_chunk; /* the last slab takes the rest */
  if (n1 > s->p->w.N) n1 = s->p->w.N;
  s->p->kernel->gemm(&s->ctx, m0, m1, n0, n1);
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

#define I4O_SLAB_BYTES ((int64_t)1 << 20) /* half the L2 of the lent Xeon's cores (2 MB) */

i4o_partition i4o_partition_tasks(const i4o_kernel *k, int64_t M, int64_t K, int64_t N, int64_t min_macs) {
  const int64_t n_tile = k->n_tile > 0 ? k->n_tile : 1, m_tile = k->m_tile > 0 ? k->m_tile : 1;
  /* A task reads its rows' activations once per column panel it has and its columns' weights once
   * for all its rows (the fp32 panel path also dequantizes them once), so with A bytes per element
   * (4 for fp32, 1 for int8) and ~0.6 bytes per weight, traffic is lowest with tasks about
   * (A bytes / 0.6) times wider than tall: start from 72 x 512 (fp32) or 144 x 256 (int8). Tasks
   * shrink, columns first, then rows, towards 64 tasks for the pool to balance (it hands tasks out
   * dynamically, so a thread that falls behind takes fewer), but rows only while a task keeps
   * ~4 MFLOP (at M = 1, where the weights' memory traffic is the cost, narrow tasks are cheap). */
  const int fp32 = k->compute == I4O_COMPUTE_FP32;
  /* fp32 activations that fit in the last-level cache (<= 16 MB) are cheap to re-read: then tall
   * slabs (up to 516 rows) dequantize each weight fewer times (measured at M = 512, K = N = 1024 and
   * K = N = 4096 on a quiet machine: +5-15 %; when other processes thrash the cache, wide tasks win) */
  int64_t m_start = fp32 ? (M * K * 4 <= ((int64_t)16 << 20) ? 516 : 72) : 144;
  /* A kernel whose prepared activations are bulkier (amx_fp32: 6 bytes per element) keeps a slab's in L2
   * (M-major tasks, gemm_task): at M = 2048, K = 1024 its 528-row slabs (3.2 MB) were read from L3 for
   * every column task (lent Xeon, 1 / 2 / 16 threads: 1.04x-1.08x / 1.26x-1.35x / 1.10x-1.16x of
   * accuracy_level 0 with them, 1.25x-1.45x / 1.68x-1.76x / 1.29x-1.33x with 144-row slabs) */
  if (k->a_elem_bytes > 0) {
    const int64_t cap = I4O_SLAB_BYTES / (K * k->a_elem_bytes) / m_tile * m_tile;
    if (m_start > cap) m_start = cap > m_tile ? cap : m_tile;
  }
  int64_t m_chunk = round_up(M < m_start ? M : m_start, m_tile);
  int64_t n_chunk = round_up(fp32 ? 512 : 256, n_tile);
  /* The fp32 panel kernels dequantize a KC-deep panel once per task and sweep it over the task's rows, which
   * stream the task's activations once per panel: a task of many rows keeps >= 64 columns (4 of AVX2's
   * 16-column panels share each activation slice from L2) and >= 64 rows (a 36-row task spent 20 % of its
   * time filling panels: perf, AVX-512, M = 128, 2 threads). Both floors give way to a smaller M or N. */
  const int panels = fp32 && k->prepare_a; /* the x86 fp32 kernels (prepare_a packs A for the panels) */
  const int64_t n_floor = panels && M >= 64 ? round_up(64, n_tile) : n_tile, m_floor = panels ? 64 : 16;
#define TASKS(mc, nc) (((M + (mc) - 1) / (mc)) * ((N + (nc) - 1) / (nc)))
  while (n_chunk > n_floor && TASKS(m_chunk, n_chunk) < 64) n_chunk = round_up(n_chunk / 2, n_tile);
  while (m_chunk > m_floor && TASKS(m_chunk, n_chunk) < 64) {
    const int64_t half = round_up(m_chunk / 2, m_tile);
    if (half >= m_chunk || (panels && half < m_floor) || 2 * half * K * n_chunk < ((int64_t)1 << 22)) break;
    m_chunk = half;
  }
  /* Waking a pool thread costs microseconds (ONNX Runtime's threads sleep when spinning is off), so
   * a task gets at least min_macs multiply-adds (i4o_min_task_macs()): small products (M = 1 on a 576 x 576 layer of
   * a 135M-parameter LLM is 2-3 tasks, a 576 x 192 one a single task that the pool runs inline) no
   * longer wake every thread for microseconds of work each. */
  while (TASKS(m_chunk, n_chunk) > 1 && (m_chunk < M ? m_chunk : M) * (n_chunk < N ? n_chunk : N) * K < min_macs) {
    if (n_chunk < N) n_chunk = round_up(n_chunk * 2, n_tile);
    else if (m_chunk < M) m_chunk = round_up(m_chunk * 2, m_tile);
    else break;
  }
#undef TASKS
  i4o_partition t;
  t.m_chunk = m_chunk;
  /* a remainder under half a slab joins the last slab instead of making a thin task of its own */
  t.m_tasks = M % m_chunk && M % m_chunk < m_chunk / 2 && M > m_chunk ? M / m_chunk : (M + m_chunk - 1) / m_chunk;
  t.n_chunk = n_chunk;
  t.n_tasks = (N + n_chunk - 1) / n_chunk;
  return t;
}

int i4o_run(const i4o_prepared *p, const float *A, int64_t M, const float *bias, float *C,
            i4o_parallel_for pfor, void *pctx) {
  if (M <= 0) return I4O_OK;
  const i4o_kernel *k = p->kernel;
  run_state s;
  memset(&s, 0, sizeof(s));
  s.p = p;
  s.ctx.w = &p->w;
  s.ctx.packed = p->packed;
  s.ctx.A = A;
  s.ctx.lda = p->w.K;
  s.ctx.bias = bias;
  s.ctx.C = C;
  s.ctx.ldc = p->w.N;
  s.ctx.M = M;
  const i4o_partition t = i4o_partition_tasks(k, M, p->w.K, p->w.N, p->min_task_macs);
  s.m_chunk = t.m_chunk;
  s.m_tasks = t.m_tasks;
  s.n_chunk = t.n_chunk;
  s.n_tasks = t.n_tasks;
  size_t ws_cap = 0;
  if (k->prepare_a) {
    s.a_ws = ws_take(k->a_bytes(&p->w, M), &ws_cap);
    if (!s.a_ws) return I4O_E_NOMEM;
    s.ctx.a_ws = s.a_ws;
    /* rows in up to 16 chunks of their own, claimed by the gemm tasks (ensure_prepared): one gemm row slab
     * (the fp32 panel path's at M <= 516) would leave all of A to one thread while the others wait */
    const int64_t m_tile = k->m_tile > 0 ? k->m_tile : 1;
    s.p_chunk = round_up((M + 15) / 16, m_tile);
    s.p_tasks = (M + s.p_chunk - 1) / s.p_chunk;
  }
  atomic_init(&s.p_next, 0);
  atomic_init(&s.p_done, 0);
  pfor(pctx, gemm_task, (size_t)(s.n_tasks * s.m_tasks), &s);
  ws_give(s.a_ws, ws_cap);
  return I4O_OK;
}

/* ---- public test API ---- */

static void set_err(char *err, size_t len, const char *msg) {
  if (err && len) snprintf(err, len, "%s", msg);
}


int i4o_dequantize(const i4o_weights *w, float *out) {
  if (!out || check_weights(w)) return I4O_E_ARG;
  i4o_wdesc d = i4o_wdesc_make(w->K, w->N, w->bits, w->block_size, w->quant_type);
  const int64_t nb = d.n_blocks;
  d.data = w->data;
  float *scales = (float *)malloc((size_t)(w->N * nb) * sizeof(float));
  if (!scales) return I4O_E_NOMEM;
  i4o_weight_scales(w, scales);
  d.scales = scales;
  uint8_t *zp = NULL;
  if (w->zero_points) {
    zp = (uint8_t *)malloc((size_t)(w->N * nb));
    if (!zp) {
      free(scales);
      return I4O_E_NOMEM;
    }
    i4o_unpack_zero_points(w->zero_points, w->N, nb, w->bits, zp);
    d.zp = zp;
  }
  d.zpf = w->zero_points_float;
  const float *cb = i4o_nf4_codebook();
  for (int64_t n = 0; n < w->N; n++)
    for (int64_t k = 0; k < w->K; k++) {
      const int64_t b = k / w->block_size;
      const float s = scales[n * nb + b];
      const int c = i4o_code(&d, n, k);
      out[k * w->N + n] = w->quant_type == I4O_QUANT_NF4 ? cb[c] * s : ((float)c - i4o_zero_point_f(&d, n, b)) * s;
    }
  free(zp);
  free(scales);
  return I4O_OK;
}

int i4o_matmul(const char *kernel, int compute, const float *A, int64_t M, const i4o_weights *w,
               const float *bias, float *Y, char *err, size_t err_len) {
  return i4o_matmul_pfor(kernel, compute, A, M, w, bias, Y, i4o_serial_for, NULL, err, err_len);
}

int i4o_matmul_pfor(const char *kernel, int compute, const float *A, int64_t M, const i4o_weights *w,
                    const float *bias, float *Y, i4o_parallel_for pfor, void *pctx, char *err, size_t err_len) {
  if (!A || !w || !Y || M < 0) {
    set_err(err, err_len, "null argument or negative M");
    return I4O_E_ARG;
  }
  if (check_weights(w)) {
    set_err(err, err_len, "invalid weights (K, N, bits, block_size, quant_type or a null pointer)");
    return I4O_E_ARG;
  }
  if (compute != I4O_COMPUTE_FP32 && compute != I4O_COMPUTE_INT8) {
    set_err(err, err_len, "compute must be I4O_COMPUTE_FP32 or I4O_COMPUTE_INT8");
    return I4O_E_ARG;
  }
  const i4o_kernel *k;
  if (kernel && *kernel) {
    k = i4o_find_kernel(kernel);
    if (!k) {
      set_err(err, err_len, "unknown kernel name");
      return I4O_E_KERNEL;
    }
    if (!i4o_cpu_has_isa(k->isa)) {
      set_err(err, err_len, "this CPU cannot run that kernel");
      return I4O_E_KERNEL;
    }
  } else {
    i4o_wdesc d = i4o_wdesc_make(w->K, w->N, w->bits, w->block_size, w->quant_type);
    if (w->zero_points_float) d.zpf = i4o_real_zp_probe();
    k = i4o_choose_kernel(compute, &d, err, err_len);
    if (!k) return I4O_E_KERNEL;
  }
  i4o_prepared *p = NULL;
  int rc = i4o_prepare(w, k, &p);
  if (rc) {
    set_err(err, err_len, rc == I4O_E_NOMEM ? "out of memory" : "invalid weights for this kernel");
    return rc;
  }
  rc = i4o_run(p, A, M, bias, Y, pfor, pctx);
  i4o_prepared_free(p);
  if (rc) set_err(err, err_len, "out of memory");
  return rc;
}
