/*
 * Internal kernel interface: one table of function pointers per kernel, one
 * translation unit per ISA (kernel_<isa>.c), chosen at run time by dispatch.c.
 * No ONNX Runtime types here: the ORT glue lives in ort_op.c only.
 */
#ifndef I4O_KERNELS_H_
#define I4O_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#include "int4onnx.h"

#if defined(__GNUC__)
#define I4O_HIDDEN __attribute__((visibility("hidden")))
#define I4O_RESTRICT __restrict__
#else
#define I4O_HIDDEN
#define I4O_RESTRICT
#endif

/* A weight ready for the kernels: scales in fp32, zero points one per byte (integer) or one float per
 * block (real). */
typedef struct i4o_wdesc {
  int64_t K, N, block_size, n_blocks, blob_bytes;
  int bits, quant_type;
  const uint8_t *data;   /* portable layout [N][n_blocks][blob_bytes] */
  const float *scales;   /* [N][n_blocks]; NULL in a prepared weight that its kernel has packed */
  const uint8_t *zp;     /* [N][n_blocks], or NULL: implied 2^(bits-1) */
  const float *zpf;      /* [N][n_blocks] real zero points, or NULL (then zp decides). A kernel's supports()
                            sees it non-NULL for real zero points before the data (i4o_real_zp_probe());
                            the int8 kernels see it rounded to float16 values (i4o_prepare) */
} i4o_wdesc;

/* The one constructor: a weight's shape (n_blocks and blob_bytes derived), no data, scales or zero
 * points yet. What a kernel may be asked about before it sees data (supports), and the start of a
 * prepared weight. */
static inline i4o_wdesc i4o_wdesc_make(int64_t K, int64_t N, int bits, int64_t block_size, int quant_type) {
  i4o_wdesc d;
  d.K = K;
  d.N = N;
  d.block_size = block_size;
  d.n_blocks = i4o_n_blocks(K, block_size);
  d.blob_bytes = i4o_blob_bytes(bits, block_size);
  d.bits = bits;
  d.quant_type = quant_type;
  d.data = NULL;
  d.scales = NULL;
  d.zp = NULL;
  d.zpf = NULL;
  return d;
}

/* A non-NULL zpf for asking a kernel's supports() about real zero points before any data exists
 * (dispatch, the test grid); never read. */
I4O_HIDDEN const float *i4o_real_zp_probe(void);

/* Everything one gemm call sees. */
typedef struct i4o_gemm_ctx {
  const i4o_wdesc *w;
  const void *packed;    /* the kernel's prepacked weights, or NULL if it reads w->data */
  const float *A;        /* fp32 activations [M][lda] */
  int64_t lda;
  const void *a_ws;      /* the kernel's prepared activations (prepare_a), or NULL */
  const float *bias;     /* [N] or NULL */
  float *C;              /* [M][ldc] */
  int64_t ldc;
  int64_t M;
} i4o_gemm_ctx;

typedef struct i4o_kernel {
  const char *name;      /* unique, e.g. "avx2_fp32" */
  const char *isa;       /* an entry of the architecture's ISA ladder in dispatch.c */
  int compute;           /* I4O_COMPUTE_FP32 or I4O_COMPUTE_INT8 */
  /* Optional: can this kernel handle this weight? NULL = every valid weight (real zero points only with
   * real_zero_points below). Ask through i4o_kernel_supports(). */
  int (*supports)(const i4o_wdesc *w);
  /* 1 if the kernel computes real zero points (w->zpf); 0 (the default): dispatch skips it for such
   * weights (the scalar kernel runs), so each SIMD kernel can gain them on its own. */
  int real_zero_points;
  /* Optional prepack at session start: bytes needed (0 = reads the portable layout) and fill. */
  size_t (*packed_bytes)(const i4o_wdesc *w);
  void (*pack)(const i4o_wdesc *w, void *dst);
  /* Optional per-call activation preparation (int8 path): workspace bytes for M rows, fill rows [m0, m1). */
  size_t (*a_bytes)(const i4o_wdesc *w, int64_t M);
  void (*prepare_a)(const i4o_wdesc *w, const float *A, int64_t lda, int64_t M, int64_t m0, int64_t m1,
                    void *ws);
  /* C[m0:m1, n0:n1] = A[m0:m1, :] @ W[:, n0:n1] (+ bias). */
  void (*gemm)(const i4o_gemm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
  int64_t n_tile;        /* task boundaries in N are multiples of this */
  int64_t m_tile;        /* task boundaries in M are multiples of this */
  /* Optional (0: none): bytes of prepared activations per element (amx_fp32's three bfloat16 parts: 6). The
   * driver then keeps a row slab's prepared activations within I4O_SLAB_BYTES, so that they stay in a
   * core's L2 while its tasks walk the slab's columns (i4o_partition_tasks). */
  int64_t a_elem_bytes;
  i4o_tile tile;         /* register tile (int4onnx.h): the kernel tests' shape grid derives from it */
} i4o_kernel;

/* ---- int8 activations: the one layout of every int8 kernel's prepare_a ----
 * For row m and block b: q[m][b*block_size + i] int8 (zero past K), scale[m][b] = amax / 127, and
 * sum[m][b] = zmul * (sum of the block's q), for the zero-point correction. zmul is a constant of the
 * kernel's activation preparation: 1 in i4o_qa_prepare (the kernel multiplies the sum by each column's
 * zero point); the x86 kernels fold the zero point of weights without zero points into it
 * (x86_sym_zmul in x86_packed.h), which saves a multiply per block and row. Everything else (q, its
 * rounding, scale, the buffer) is the same for every kernel. */
typedef struct i4o_qa_view {
  int8_t *q;
  float *scale;
  int32_t *sum;
  int64_t ldq;           /* row stride of q, a multiple of 64 */
  int64_t nb;            /* blocks per row: the row stride of scale and sum */
} i4o_qa_view;

I4O_HIDDEN size_t i4o_qa_bytes(const i4o_wdesc *w, int64_t M);
/* the view of a workspace of i4o_qa_bytes (const: gemm reads what prepare_a wrote) */
I4O_HIDDEN i4o_qa_view i4o_qa_map(const i4o_wdesc *w, int64_t M, const void *ws);
/* Scalar quantization of rows [m0, m1): the definition every int8 kernel must reproduce exactly. */
I4O_HIDDEN void i4o_qa_prepare(const i4o_wdesc *w, const float *A, int64_t lda, int64_t M, int64_t m0,
                               int64_t m1, void *ws);

static inline int i4o_zero_point(const i4o_wdesc *w, int64_t n, int64_t b) {
  return w->zp ? (int)w->zp[n * w->n_blocks + b] : (1 << (w->bits - 1));
}

/* The zero point of block b of column n as a float: the real one, or the integer one converted. */
static inline float i4o_zero_point_f(const i4o_wdesc *w, int64_t n, int64_t b) {
  return w->zpf ? w->zpf[n * w->n_blocks + b] : (float)i4o_zero_point(w, n, b);
}

/* Code of element k of column n (portable layout). */
static inline int i4o_code(const i4o_wdesc *w, int64_t n, int64_t k) {
  const uint8_t *row = w->data + n * w->n_blocks * w->blob_bytes;
  if (w->bits == 8) return row[k];
  return (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
}

/* Column exponent E of the int8 path's weight scales (gemm.c): i4o_prepare rounds the scales of int8
 * kernels to half(scale * 2^-E) * 2^E, so that kernels may keep them as float16 exactly. */
I4O_HIDDEN int i4o_int8_scale_exp(const i4o_wdesc *w, int64_t n);

/* int8 levels of the NF4 codebook for the int8 path: round(127 * level); value = level_i8 * scale / 127. */
I4O_HIDDEN const int8_t *i4o_nf4_i8(void);

/* ---- kernels (defined in kernel_<isa>.c; absent ones are NULL-free: dispatch.c lists what exists) ---- */
extern const i4o_kernel i4o_kernel_scalar_fp32;
extern const i4o_kernel i4o_kernel_scalar_int8;
#if defined(__x86_64__) || defined(_M_X64)
extern const i4o_kernel i4o_kernel_avx2_fp32;
extern const i4o_kernel i4o_kernel_avx2_int8;
extern const i4o_kernel i4o_kernel_avxvnni_int8;
extern const i4o_kernel i4o_kernel_avx512_fp32;
extern const i4o_kernel i4o_kernel_avx512vnni_int8;
extern const i4o_kernel i4o_kernel_amx_fp32;
#endif
/* ARM: the NEON files enable NEON themselves (armhf's default -mfpu has none), so the kernels exist
 * whenever the compiler can target NEON; dispatch.c runs them only where getauxval reports it. */
#if defined(__aarch64__) || (defined(__arm__) && (defined(__ARM_NEON) || defined(__ARM_PCS_VFP)))
#define I4O_ARM_NEON_KERNELS 1
extern const i4o_kernel i4o_kernel_neon_fp32;
extern const i4o_kernel i4o_kernel_neon_int8;
#endif
#if defined(__aarch64__)
extern const i4o_kernel i4o_kernel_neondot_int8;
extern const i4o_kernel i4o_kernel_i8mm_int8;
#endif

/* Can kernel k run weight w (real zero points included)? What dispatch, i4o_prepare and the test grid ask. */
static inline int i4o_kernel_supports(const i4o_kernel *k, const i4o_wdesc *w) {
  if (w->zpf && !k->real_zero_points) return 0;
  return !k->supports || k->supports(w);
}

/* ---- dispatch.c ---- */
/* Every kernel compiled in (whether or not this CPU runs it). */
I4O_HIDDEN const i4o_kernel *const *i4o_all_kernels(size_t *count);
I4O_HIDDEN int i4o_cpu_has_isa(const char *isa);
I4O_HIDDEN const i4o_kernel *i4o_find_kernel(const char *name);
/* Best kernel for this weight and compute mode, honouring INT4ONNX_ISA; NULL + message on failure. */
I4O_HIDDEN const i4o_kernel *i4o_choose_kernel(int compute, const i4o_wdesc *w, char *err, size_t err_len);

/* ---- gemm.c: prepared weights and the threaded driver ---- */
typedef struct i4o_prepared {
  i4o_wdesc w;
  const i4o_kernel *kernel;
  void *packed;          /* owned, 64-byte aligned, or NULL */
  float *scales;         /* owned; freed (NULL) once packed: packed holds the scales */
  uint8_t *zp;           /* owned or NULL */
  float *zpf;            /* owned or NULL: real zero points (float16 values for int8 kernels) */
  int64_t min_task_macs; /* least multiply-adds per i4o_run task (i4o_min_task_macs(0) at prepare) */
} i4o_prepared;

/* parallel_for(ctx, fn, n, data) must call fn(data, i) once for every i in [0, n). */
typedef void (*i4o_parallel_for)(void *ctx, void (*fn)(void *, size_t), size_t n, void *data);

/* Copies scales and zero points, prepacks for `kernel`. data is referenced, not copied, and must
 * outlive the prepared weight unless the kernel prepacks. */
I4O_HIDDEN int i4o_prepare(const i4o_weights *src, const i4o_kernel *kernel, i4o_prepared **out);
I4O_HIDDEN void i4o_prepared_free(i4o_prepared *p);
I4O_HIDDEN int i4o_run(const i4o_prepared *p, const float *A, int64_t M, const float *bias, float *C,
                       i4o_parallel_for pfor, void *pctx);
/* i4o_run's tasks: row slabs of m_chunk rows (the last one takes the rest) x column chunks of n_chunk */
typedef struct i4o_partition {
  int64_t m_chunk, n_chunk, m_tasks, n_tasks;
} i4o_partition;
/* least multiply-adds per task on ONNX Runtime's pool (0) or the library's own threads (1) */
I4O_HIDDEN int64_t i4o_min_task_macs(int own_threads);
/* min_macs: least multiply-adds per task (the prepared weight's min_task_macs; 0: the finest split) */
I4O_HIDDEN i4o_partition i4o_partition_tasks(const i4o_kernel *k, int64_t M, int64_t K, int64_t N, int64_t min_macs);
I4O_HIDDEN void *i4o_aligned_alloc(size_t bytes);
I4O_HIDDEN void i4o_aligned_free(void *p);
I4O_HIDDEN void i4o_serial_for(void *ctx, void (*fn)(void *, size_t), size_t n, void *data);
/* i4o_matmul with another parallel_for (the test schedules of testgrid.c) */
I4O_HIDDEN int i4o_matmul_pfor(const char *kernel, int compute, const float *A, int64_t M, const i4o_weights *w,
                               const float *bias, float *Y, i4o_parallel_for pfor, void *pctx, char *err,
                               size_t err_len);
/* float16 <-> float32 arrays, round to nearest even (F16C where the CPU has it) */
I4O_HIDDEN void i4o_half_to_float_n(const uint16_t *src, float *dst, int64_t n);
I4O_HIDDEN void i4o_float_to_half_n(const float *src, uint16_t *dst, int64_t n);

/* pool.c: the library's own threads (i4o_set_threads). acquire: a handle on the running pool (started on
 * first use), NULL when none is configured or it cannot start; run: fn(data, i) for i in [0, n) on the
 * pool's threads and the caller's, nonzero (nothing run) when the pool is busy with another caller. */
I4O_HIDDEN void *i4o_pool_acquire(void);
I4O_HIDDEN void i4o_pool_release(void *pool);
I4O_HIDDEN int i4o_pool_run(void *pool, void (*fn)(void *, size_t), size_t n, void *data);

/* trace.c: the op's timeline while i4o_trace_start's trace is on */
I4O_HIDDEN int32_t i4o_trace_call(void); /* the next call's number, -1 when no trace is on */
I4O_HIDDEN int64_t i4o_trace_now(void);
I4O_HIDDEN void i4o_trace_add(int32_t call, int32_t node, int32_t section, int32_t task, int32_t n_tasks, int64_t t0,
                              int64_t t1);

#endif /* I4O_KERNELS_H_ */
