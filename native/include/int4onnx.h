/*
 * int4onnx public C API.
 *
 * This header is the single source of truth for the portable ("file") weight
 * layout of the com.int4onnx MatMulInt4 operator; docs/format.md describes the
 * same layout in prose. Python packs weights by calling i4o_pack_weights()
 * through cffi, so the layout is implemented exactly once (native/src/pack.c).
 *
 * Portable layout, for a MatMul weight W of shape [K, N] (Y = A @ W):
 *   - each column n of W is cut along K into n_blocks = ceil(K / block_size)
 *     blocks; block_size is a multiple of 16 between 16 and 65536;
 *   - data   : uint8 [N, n_blocks, block_size * bits / 8]; bits = 4 stores two
 *              codes a byte, element 2i in the LOW nibble of byte i and 2i+1
 *              in the HIGH nibble; bits = 8 stores one code a byte;
 *   - scales : [N, n_blocks] (float32, float16, or int8 with a per-column
 *              float32 super-scale, see docs/format.md); float16 scales go
 *              with float or float16 activations;
 *   - zero points (asymmetric only): integer, uint8 [N, ceil(n_blocks * bits / 8)],
 *              same nibble order; or real ("float"), one per block [N, n_blocks]
 *              (float32, float16, or int8 with a float32 super-scale, like the
 *              scales; the C API takes them widened to float32); symmetric
 *              weights have no zero-point tensor and an implied zero point of
 *              2^(bits-1) (8 for 4-bit);
 *   - dequantized value: (code - zero_point) * scale for I4O_QUANT_INT (in
 *              float32: ((float)code - z) * scale for a real zero point z),
 *              i4o_nf4_codebook()[code] * scale for I4O_QUANT_NF4;
 *   - elements past K in the last block hold the code that dequantizes to
 *     exactly 0 (the row's last zero point, or the codebook's zero); with real
 *     zero points they hold whatever code the packer was given (kernels never
 *     let them reach the result: activations past K are 0).
 * This is byte-for-byte the layout of ONNX Runtime's com.microsoft.MatMulNBits
 * (for power-of-two block sizes), which lets one packing serve both formats.
 */
#ifndef INT4ONNX_H_
#define INT4ONNX_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define I4O_DOMAIN "com.int4onnx"
#define I4O_OP_NAME "MatMulInt4"
#define I4O_OP_VERSION 1
#define I4O_VERSION_STRING "0.1.0"

/* ---- the operator's schema (the one definition; docs/format.md describes it) ---- */

/* Input slots of MatMulInt4, in order. A, B and scales are required (the first I4O_IN_REQUIRED);
 * the rest are optional: left out by an empty name or given as a zero-element tensor. */
enum {
  I4O_IN_A = 0,            /* float or float16 [..., K] */
  I4O_IN_B = 1,            /* uint8 [N, n_blocks, blob_bytes]: the packed codes */
  I4O_IN_SCALES = 2,       /* [N, n_blocks], type of A, float16, or int8 with I4O_IN_SCALES_SCALE */
  I4O_IN_ZERO_POINTS = 3,  /* asymmetric weights: integer, uint8 [N, zero_point_row_bytes]; or real,
                              [N, n_blocks] of float32 (float A), float16, or int8 with
                              I4O_IN_ZERO_POINTS_SCALE */
  I4O_IN_BIAS = 4,         /* [N], type of A */
  I4O_IN_SCALES_SCALE = 5, /* float [N] or [1]: super-scale of int8 scales */
  I4O_IN_ZERO_POINTS_SCALE = 6, /* float [N] or [1]: super-scale of int8 real zero points */
  I4O_IN_COUNT = 7,
  I4O_IN_REQUIRED = 3
};
/* Attributes of MatMulInt4: K, N, bits, block_size are int64 and required; quant_type and compute are
 * strings with defaults ("int", "fp32"). */
enum {
  I4O_ATTR_K = 0,
  I4O_ATTR_N = 1,
  I4O_ATTR_BITS = 2,
  I4O_ATTR_BLOCK_SIZE = 3,
  I4O_ATTR_QUANT_TYPE = 4,
  I4O_ATTR_COMPUTE = 5,
  I4O_ATTR_COUNT = 6
};
/* Their names, indexed by the enums above (the only place they are spelled). */
#define I4O_IN_NAMES {"A", "B", "scales", "zero_points", "bias", "scales_scale", "zero_points_scale"}
#define I4O_ATTR_NAMES {"K", "N", "bits", "block_size", "quant_type", "compute"}

/* How a code maps to a value. */
enum { I4O_QUANT_INT = 0, I4O_QUANT_NF4 = 1 };
/* Which arithmetic the kernel uses: fp32 activations, or activations quantized to int8 per block. */
enum { I4O_COMPUTE_FP32 = 0, I4O_COMPUTE_INT8 = 1 };

/* Error codes returned by the functions below (0 = success). */
enum {
  I4O_OK = 0,
  I4O_E_ARG = 1,      /* invalid argument (shape, bits, block size, pointer) */
  I4O_E_NOMEM = 2,    /* allocation failed */
  I4O_E_KERNEL = 3,   /* no such kernel, or the CPU cannot run it */
};

/* ---- identity ------------------------------------------------------- */

const char *i4o_version(void);     /* I4O_VERSION_STRING */
const char *i4o_op_domain(void);   /* I4O_DOMAIN */
const char *i4o_op_name(void);     /* I4O_OP_NAME */
/* The name of input slot `index` (I4O_IN_*) or attribute `index` (I4O_ATTR_*); NULL out of range. */
const char *i4o_op_input_name(int index);
const char *i4o_op_attr_name(int index);

/* ---- layout ---------------------------------------------------------- */

/* 0 if (K, N, bits, block_size) describe a valid layout, else I4O_E_ARG. Every function below
 * checks its arguments: the int functions return I4O_E_ARG, the size helpers -1 (e.g. for K = 0 or
 * block_size = 0); none divides by an argument it has not checked. */
int i4o_check_layout(int64_t K, int64_t N, int bits, int64_t block_size);
int64_t i4o_n_blocks(int64_t K, int64_t block_size);
int64_t i4o_blob_bytes(int bits, int64_t block_size);                  /* bytes per block */
int64_t i4o_weight_bytes(int64_t K, int64_t N, int bits, int64_t block_size);
int64_t i4o_zero_point_row_bytes(int64_t n_blocks, int bits);          /* bytes per column */

/*
 * Packs codes [N, K] (row n = column n of W, one code per byte, each below
 * 2^bits) into the portable layout. zero_points [N, n_blocks] (one per byte)
 * is NULL for symmetric weights; it only decides the padding code.
 */
int i4o_pack_weights(const uint8_t *codes, int64_t K, int64_t N, int bits, int64_t block_size,
                     int quant_type, const uint8_t *zero_points, uint8_t *out);
/* Inverse of i4o_pack_weights: out is [N, K], padding dropped. */
int i4o_unpack_weights(const uint8_t *packed, int64_t K, int64_t N, int bits, int64_t block_size,
                       uint8_t *out);
/* zero points [N, n_blocks] (one per byte) <-> packed [N, zero_point_row_bytes]. */
int i4o_pack_zero_points(const uint8_t *zp, int64_t N, int64_t n_blocks, int bits, uint8_t *out);
int i4o_unpack_zero_points(const uint8_t *packed, int64_t N, int64_t n_blocks, int bits, uint8_t *out);

/* The 16 NF4 levels (normal-distribution quantiles scaled to [-1, 1]); index 7 is 0. */
const float *i4o_nf4_codebook(void);

/* ---- compute --------------------------------------------------------- */

/* A quantized weight in the portable layout. Its scales are float32 (`scales`), or int8 codes times a
 * float32 super-scale (double quantization, as the op's inputs scales and scales_scale): `scales_int8`
 * with `scales_scale`, one per column (n_scales_scale = N) or one for the tensor (n_scales_scale = 1);
 * exactly one of `scales` and `scales_int8` is set. The value of a scale is then
 * (float)scales_int8[n, b] * scales_scale[n or 0] in float32.
 * Zero points: integer (`zero_points`, packed), real (`zero_points_float`, float32 [N, n_blocks], the
 * value ((float)code - z) * scale), or neither (symmetric); at most one is set, and NF4 takes none. */
typedef struct i4o_weights {
  int64_t K, N, block_size;
  int bits;                     /* 4 or 8 */
  int quant_type;               /* I4O_QUANT_INT or I4O_QUANT_NF4 */
  const uint8_t *data;          /* [N, n_blocks, blob_bytes] */
  const float *scales;          /* [N, n_blocks], or NULL with scales_int8 */
  const uint8_t *zero_points;   /* packed [N, zero_point_row_bytes], or NULL (symmetric) */
  const int8_t *scales_int8;    /* [N, n_blocks], or NULL with scales */
  const float *scales_scale;    /* [n_scales_scale], with scales_int8 */
  int64_t n_scales_scale;       /* N or 1, with scales_int8 */
  const float *zero_points_float; /* [N, n_blocks] real zero points (float32, already widened), or NULL */
} i4o_weights;

/* Writes the float32 scales [N, n_blocks] of w (a copy, or the int8 scales expanded). */
int i4o_weight_scales(const i4o_weights *w, float *out);

/* Writes W dequantized to float32 [K, N]. */
int i4o_dequantize(const i4o_weights *w, float *out);

/* Comma-separated names of the kernels this build has and this CPU runs, best last. */
const char *i4o_kernels_available(void);
/* Name of the kernel the operator would pick for a compute mode (honours INT4ONNX_ISA). */
const char *i4o_kernel_selected(int compute);

/*
 * Y[M, N] = A[M, K] @ dequant(W) (+ bias[N]) with the named kernel (NULL =
 * automatic choice for `compute`), single-threaded. Used by tests and tools.
 * On failure returns an error code and writes a message into err.
 */
int i4o_matmul(const char *kernel, int compute, const float *A, int64_t M, const i4o_weights *w,
               const float *bias, float *Y, char *err, size_t err_len);

/* ---- kernel tests (native/src/testgrid.c) ------------------------------ */

/* A kernel's register tile: it computes up to mr rows x nr columns at a time, walks K in steps of
 * kr codes (a K that is not a multiple ends in a tail step), and its many-rows path dequantizes
 * weight panels kc deep along K (0: no panel). The kernel tests derive their shapes from it. */
typedef struct i4o_tile {
  int64_t mr, nr, kr, kc;
} i4o_tile;

/* The tile of a kernel compiled into this build (whether or not this CPU runs it); I4O_E_KERNEL if
 * there is no such kernel. */
int i4o_kernel_tile(const char *kernel, i4o_tile *out);

/* One case of a kernel test: Y[M, N] = A[M, K] @ W (+ bias) for a weight in this format.
 * int8_scales: the scales are int8 codes times a float32 super-scale per column (--double-quant), given
 * to the kernel as i4o_weights.scales_int8 and scales_scale. real_zero_points (asymmetric only): the
 * zero points are real, i4o_weights.zero_points_float. */
typedef struct i4o_test_case {
  int64_t M, K, N, block_size;
  int bits, quant_type, symmetric, int8_scales, real_zero_points;
} i4o_test_case;

/* The shape grid of a kernel, derived from its tile (the one list that the C and Python kernel tests
 * run): writes the first min(count, cap) cases into `cases` (which may be NULL when cap is 0) and
 * returns count, or -1 for an unknown kernel. Cases of one weight (K, N, block_size and format) are
 * adjacent, so a test can build the weight once for its M values. */
int64_t i4o_kernel_grid(const char *kernel, i4o_test_case *cases, int64_t cap);

/* i4o_matmul through the threaded driver with a test schedule: the tasks of each phase run in
 * reverse order on the calling thread (threads = 1), or `threads` threads (2..64) take them from a
 * shared counter, last task first. The task partition does not depend on the schedule, so the
 * result must equal i4o_matmul's bit for bit. */
int i4o_matmul_threads(const char *kernel, int compute, const float *A, int64_t M, const i4o_weights *w,
                       const float *bias, float *Y, int threads, char *err, size_t err_len);

/* ---- timeline of the op's calls through ONNX Runtime (diagnostics: tools/op_timeline.py) ----
 * While a trace is on, every MatMulInt4 call records one record for the whole call (task -1: from the
 * kernel's compute entry to its exit, n_tasks = M), one per parallel section as its caller sees it
 * (task -2, from before handing the tasks to the pool to its return) and one per task (task >= 0, on the
 * thread that ran it). Times from timespec_get (TIME_UTC), in ns. */
typedef struct i4o_trace_record {
  int64_t t0_ns, t1_ns;
  int32_t call;    /* the MatMulInt4 call's number since i4o_trace_start, from 0 */
  int32_t node;    /* the node's number (kernels in creation order, from 0) */
  int32_t section; /* the call's parallel sections in order, from 0 (today one per call); -1 for task -1 */
  int32_t task;    /* >= 0: the task's index; -1: the whole call; -2: a section as its caller sees it */
  int32_t n_tasks; /* tasks in the section; M for task -1 */
  int32_t thread;  /* a number per thread, from 0 in the order threads first record */
  int32_t cpu;     /* the CPU the record ended on (Linux: sched_getcpu), -1 where unknown */
  int32_t pad;
} i4o_trace_record;

/* Starts a trace into a new buffer of `capacity` records (a previous trace's records are dropped):
 * 0, or I4O_E_NOMEM / I4O_E_ARG. Start and stop it while no op runs. */
int i4o_trace_start(int64_t capacity);
/* Stops the trace and copies its first min(recorded, cap) records to `out` (NULL when cap is 0);
 * returns how many records were made (more than cap, or than the capacity: the rest were lost), 0 when
 * no trace was on. */
int64_t i4o_trace_stop(i4o_trace_record *out, int64_t cap);

/* ---- the op's own threads ------------------------------------------- */

/* How many threads (the calling one included) the MatMulInt4 kernels created from now on run on, from
 * a pool of the library's own that spins between calls (src/pool.c) instead of ONNX Runtime's
 * intra-op pool: 0 (the default, or INT4ONNX_THREADS when set) uses ONNX Runtime's pool; 2..256 start
 * the library's (give the session intra_op_num_threads = 1 then, or both pools' threads spin on the
 * same cores). The pool lives while a kernel created with it lives; its size is fixed when it starts.
 * 0, or I4O_E_ARG outside 0..256. */
int i4o_set_threads(int threads);
/* The count set by i4o_set_threads, else INT4ONNX_THREADS, else 0. */
int i4o_get_threads(void);

#ifdef __cplusplus
}
#endif
#endif /* INT4ONNX_H_ */
