/*
 * Timeline of the op's calls (i4o_trace_start / i4o_trace_stop in int4onnx.h; tools/op_timeline.py reads
 * it). Off, a call costs one relaxed atomic load; on, each record is one atomic increment and a store.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getcpu */
#endif
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <sched.h>
#endif

#include "kernels.h"

static i4o_trace_record *g_buf;
static int64_t g_cap;
static atomic_llong g_n;
static atomic_int g_on, g_call, g_threads;
static _Thread_local int32_t t_thread; /* the thread's number + 1; 0: none yet */

int i4o_trace_start(int64_t capacity) {
  if (capacity <= 0 || (uint64_t)capacity > SIZE_MAX / sizeof(i4o_trace_record)) return I4O_E_ARG;
  i4o_trace_record *buf = (i4o_trace_record *)calloc((size_t)capacity, sizeof(i4o_trace_record));
  if (!buf) return I4O_E_NOMEM;
  atomic_store(&g_on, 0);
  free(g_buf);
  g_buf = buf;
  g_cap = capacity;
  atomic_store(&g_n, 0);
  atomic_store(&g_call, 0);
  atomic_store(&g_on, 1);
  return I4O_OK;
}

int64_t i4o_trace_stop(i4o_trace_record *out, int64_t cap) {
  if (!atomic_exchange(&g_on, 0) || !g_buf) return 0;
  const int64_t n = atomic_load(&g_n), kept = n < g_cap ? n : g_cap;
  if (out && cap > 0) memcpy(out, g_buf, (size_t)(kept < cap ? kept : cap) * sizeof(i4o_trace_record));
  free(g_buf);
  g_buf = NULL;
  g_cap = 0;
  return n;
}

int32_t i4o_trace_call(void) {
  if (!atomic_load_explicit(&g_on, memory_order_relaxed)) return -1;
  return atomic_fetch_add_explicit(&g_call, 1, memory_order_relaxed);
}

int64_t i4o_trace_now(void) {
  struct timespec ts;
  if (!timespec_get(&ts, TIME_UTC)) return 0;
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void i4o_trace_add(int32_t call, int32_t node, int32_t section, int32_t task, int32_t n_tasks, int64_t t0,
                   int64_t t1) {
  if (!atomic_load_explicit(&g_on, memory_order_relaxed)) return;
  const int64_t i = atomic_fetch_add_explicit(&g_n, 1, memory_order_relaxed);
  if (i >= g_cap) return;
  if (!t_thread) t_thread = atomic_fetch_add_explicit(&g_threads, 1, memory_order_relaxed) + 1;
  i4o_trace_record *r = &g_buf[i];
  r->t0_ns = t0;
  r->t1_ns = t1;
  r->call = call;
  r->node = node;
  r->section = section;
  r->task = task;
  r->n_tasks = n_tasks;
  r->thread = t_thread - 1;
#if defined(__linux__)
  r->cpu = sched_getcpu();
#else
  r->cpu = -1;
#endif
  r->pad = 0;
}
