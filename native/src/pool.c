/*
 * The op's own thread pool (INT4ONNX_THREADS, i4o_set_threads), for decode on many cores.
 *
 * ONNX Runtime's pool hands a parallel section's work to its threads one queue at a time (~0.45 us apart on
 * the lent Xeon), so a 10 us MatMul at M = 1 on 16 threads spends most of its time bringing them in
 * (docs/performance.md, "Where the time goes"). Here the workers spin on one generation counter: a
 * section starts on every worker within the time one cache line takes to travel, and each worker first
 * runs a fixed, contiguous range of the tasks (the same columns every call, so a layer's weights stay in
 * the same cores' private caches), then takes what is left of the others' ranges.
 *
 * The caller waits for the section's tasks, not for the workers: a worker the kernel has taken off its core
 * while it spun (16 threads on 16 cores, and anything else wants a core) does not hold the section up.
 * The generation counter is odd while a section is open and even once it is closed; a worker joins an open
 * section by counting itself in `inside` and then seeing the counter unchanged (both seq_cst; the caller
 * closes, then waits for `inside` to drop to 0 before it writes the next section's state), so a worker
 * that wakes late never touches a section that has ended.
 *
 * Workers spin INT4ONNX_SPIN_US microseconds (default 1000) after a section, then sleep on a condition
 * variable. The pool lives while a kernel that uses it lives (i4o_pool_acquire / i4o_pool_release). One
 * section runs at a time: a caller that finds the pool busy (another session's Run on another thread) gets
 * a refusal and uses ONNX Runtime's pool instead.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define POOL_RELAX() _mm_pause()
#elif defined(__aarch64__) || (defined(__arm__) && __ARM_ARCH >= 7)
#define POOL_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define POOL_RELAX() ((void)0)
#endif

#define POOL_MAX 256

typedef struct {
  _Alignas(64) atomic_size_t next; /* the next unclaimed task of this thread's range */
  size_t end;
} pool_range;

typedef struct {
  _Alignas(64) atomic_uint gen;     /* odd: a section is open; bumped to open, to close, and to stop */
  _Alignas(64) atomic_size_t done;  /* tasks of the open section that have finished */
  _Alignas(64) atomic_int inside;   /* workers that joined the open section and have not left it */
  _Alignas(64) void (*fn)(void *, size_t);
  void *data;
  int threads; /* including the caller */
  int stop;
  int64_t spin_ns;
  atomic_int sleepers;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t tid[POOL_MAX];
  pool_range range[POOL_MAX];
} pool;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* guards g_pool, g_refs, g_threads */
static pool *g_pool;
static int g_refs;
static int g_threads = -1; /* -1: not set yet (INT4ONNX_THREADS is read on first use) */
static atomic_flag g_busy = ATOMIC_FLAG_INIT;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* thread t's tasks first, then the rest of the others' ranges; returns how many it ran */
static size_t run_tasks(pool *p, int t) {
  const int T = p->threads;
  size_t ran = 0;
  for (int j = 0; j < T; j++) {
    pool_range *r = &p->range[(t + j) % T];
    for (;;) {
      if (atomic_load_explicit(&r->next, memory_order_relaxed) >= r->end) break;
      const size_t i = atomic_fetch_add_explicit(&r->next, 1, memory_order_relaxed);
      if (i >= r->end) break;
      p->fn(p->data, i);
      ran++;
    }
  }
  return ran;
}

typedef struct {
  pool *p;
  int t;
} worker_arg;

/* a section this worker has not seen yet is open (or the pool stops) */
static int section_ready(pool *p, unsigned seen, unsigned *g) {
  *g = atomic_load_explicit(&p->gen, memory_order_acquire);
  return (*g & 1u) && *g != seen;
}

static void *worker(void *arg) {
  pool *p = ((worker_arg *)arg)->p;
  const int t = ((worker_arg *)arg)->t;
  free(arg);
  unsigned seen = 0; /* the last section joined (0: none; sections are odd) */
  for (;;) {
    unsigned g;
    int64_t t_end = 0;
    for (unsigned spins = 0; !section_ready(p, seen, &g); spins++) {
      POOL_RELAX();
      if ((spins & 255) == 255) {
        const int64_t t_now = now_ns();
        if (!t_end) t_end = t_now + p->spin_ns;
        else if (t_now >= t_end) {
          pthread_mutex_lock(&p->mu);
          atomic_fetch_add(&p->sleepers, 1);
          while (!section_ready(p, seen, &g)) pthread_cond_wait(&p->cv, &p->mu);
          atomic_fetch_sub(&p->sleepers, 1);
          pthread_mutex_unlock(&p->mu);
          break;
        }
      }
    }
    seen = g;
    atomic_fetch_add(&p->inside, 1); /* seq_cst, then the load below: see the comment at the top */
    if (atomic_load(&p->gen) == g) {
      if (p->stop) {
        atomic_fetch_sub(&p->inside, 1);
        return NULL;
      }
      const size_t ran = run_tasks(p, t);
      if (ran) atomic_fetch_add_explicit(&p->done, ran, memory_order_release);
    }
    atomic_fetch_sub_explicit(&p->inside, 1, memory_order_release);
  }
}

/* open a section (gen becomes odd) and wake the sleepers */
static void publish(pool *p) {
  atomic_fetch_add(&p->gen, 1); /* seq_cst: a worker about to sleep either sees it or is counted below */
  if (atomic_load(&p->sleepers)) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
  }
}

/* close the open section (gen becomes even) and wait for the workers inside it to leave */
static void close_section(pool *p) {
  atomic_fetch_add(&p->gen, 1);
  for (unsigned spins = 0; atomic_load(&p->inside) > 0; spins++) {
    if (spins < 4096) POOL_RELAX();
    else sched_yield();
  }
}

static void pool_stop(pool *p) { /* no section is open */
  p->stop = 1;
  publish(p); /* the stop "section": every worker sees it, since each waits for any open one it has not seen */
  for (int t = 1; t < p->threads; t++) pthread_join(p->tid[t], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  i4o_aligned_free(p);
}

static pool *pool_start(int threads) {
  pool *p = (pool *)i4o_aligned_alloc(sizeof(pool));
  if (!p) return NULL;
  memset(p, 0, sizeof(*p));
  atomic_init(&p->gen, 0);
  atomic_init(&p->done, 0);
  atomic_init(&p->inside, 0);
  atomic_init(&p->sleepers, 0);
  const char *env = getenv("INT4ONNX_SPIN_US");
  p->spin_ns = (env && *env ? atoll(env) : 1000) * 1000;
  if (pthread_mutex_init(&p->mu, NULL)) {
    i4o_aligned_free(p);
    return NULL;
  }
  pthread_cond_init(&p->cv, NULL);
  p->threads = 1;
  for (int t = 1; t < threads; t++) {
    worker_arg *a = (worker_arg *)malloc(sizeof(*a));
    if (!a) break;
    a->p = p;
    a->t = t;
    if (pthread_create(&p->tid[t], NULL, worker, a)) {
      free(a);
      break;
    }
    p->threads = t + 1; /* workers read it only once a section starts, after this store is published */
  }
  if (p->threads < 2) {
    pool_stop(p);
    return NULL;
  }
  return p;
}

static int configured_threads(void) { /* under g_mu */
  if (g_threads < 0) {
    const char *env = getenv("INT4ONNX_THREADS");
    const long v = env && *env ? atol(env) : 0;
    g_threads = v < 0 ? 0 : v > POOL_MAX ? POOL_MAX : (int)v;
  }
  return g_threads;
}

int i4o_set_threads(int threads) {
  if (threads < 0 || threads > POOL_MAX) return I4O_E_ARG;
  pthread_mutex_lock(&g_mu);
  g_threads = threads;
  pthread_mutex_unlock(&g_mu);
  return I4O_OK;
}

int i4o_get_threads(void) {
  pthread_mutex_lock(&g_mu);
  const int t = configured_threads();
  pthread_mutex_unlock(&g_mu);
  return t;
}

void *i4o_pool_acquire(void) {
  pthread_mutex_lock(&g_mu);
  const int want = configured_threads();
  pool *p = NULL;
  if (want >= 2) {
    if (!g_pool) g_pool = pool_start(want);
    if (g_pool) {
      g_refs++;
      p = g_pool;
    }
  }
  pthread_mutex_unlock(&g_mu);
  return p;
}

void i4o_pool_release(void *handle) {
  if (!handle) return;
  pthread_mutex_lock(&g_mu);
  if (--g_refs == 0) {
    pool_stop(g_pool);
    g_pool = NULL;
  }
  pthread_mutex_unlock(&g_mu);
}

int i4o_pool_run(void *handle, void (*fn)(void *, size_t), size_t n, void *data) {
  pool *p = (pool *)handle;
  if (!p || atomic_flag_test_and_set_explicit(&g_busy, memory_order_acquire)) return -1;
  const int T = p->threads;
  p->fn = fn;
  p->data = data;
  for (int t = 0; t < T; t++) {
    atomic_store_explicit(&p->range[t].next, n * (size_t)t / (size_t)T, memory_order_relaxed);
    p->range[t].end = n * (size_t)(t + 1) / (size_t)T;
  }
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  publish(p);
  const size_t ran = run_tasks(p, 0);
  /* wait for the tasks (spin, then yield: with more threads than free cores a worker running one may be
   * waiting for this core), then close */
  for (unsigned spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) + ran < n; spins++) {
    if (spins < 4096) POOL_RELAX();
    else sched_yield();
  }
  close_section(p);
  atomic_flag_clear_explicit(&g_busy, memory_order_release);
  return I4O_OK;
}
