/* ggml_chain: time a chain of L mul_mat through ggml's CPU backend (the kernels llama.cpp runs), for
 * tools/bench_matmul.py --ggml. Our code, compiled against an existing ggml build (tools/build_ggml.sh);
 * nothing of ggml is in this project.
 *
 * The chain is x -> x @ W1 -> ... -> x @ WL with L distinct weights [K, N] (K == N when L > 1) and
 * input x [M, K], as in tools/bench_matmul.py. Weights are q4_0 (random 4-bit codes, float16 block
 * scales of magnitude uniform in [0.5, 1.5] / (4.6 sqrt(K)) as in the bench, random sign) or the same weights
 * dequantized to f32. They are loaded the way llama.cpp loads a model for the CPU: into a buffer of
 * the chosen buffer type, whose set_tensor converts them once:
 *   repack  ggml-cpu's "CPU_REPACK" extra buffer (q4_0 interleaved for its gemv/gemm kernels;
 *           llama.cpp's choice for q4_0 weights on x86 with AVX2 and up, unless AMX is present)
 *   amx     the "AMX" extra buffer (llama.cpp's first choice where the CPU has AMX-INT8)
 *   cpu     the plain CPU buffer (no repacking; llama.cpp with --no-repack)
 * and run with n threads by ggml_backend_graph_compute on a CPU backend.
 *
 *   ggml_chain --list                                   available buffer types, as JSON
 *   ggml_chain --k K --n N --layers L --threads T [--type q4_0|f32] [--buft repack|amx|cpu]
 *      then one command per line on stdin, one JSON line per command on stdout:
 *        run M R     R rounds at M rows: {"M":M,"ms":[...],"median_ms":...}
 *        check M     one run against a float64 reference with the same weights: {"M":M,"rel_err":...}
 *        quit
 * Each timed round is set input + graph compute + get output. Exit status 2 on bad arguments, 3 when
 * ggml cannot do what was asked (the reason on stderr and in {"error": ...} on stdout).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#define QK 32
#define MAX_ROUNDS 100000

typedef struct {
    uint16_t d;
    uint8_t qs[QK / 2];
} q4_block; /* ggml's block_q4_0: element j is qs[j] & 15, element j + 16 is qs[j] >> 4, value (q - 8) * d */

static void fail(int code, const char *msg, const char *arg) {
    fprintf(stderr, "ggml_chain: %s%s\n", msg, arg ? arg : "");
    printf("{\"error\": \"%s%s\"}\n", msg, arg ? arg : "");
    fflush(stdout);
    exit(code);
}

/* splitmix64: a fixed stream per (seed, layer), so the reference regenerates the same weights */
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double next_unit(uint64_t *s) { return (next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

static void gen_layer(q4_block *out, int K, int N, int layer, uint64_t seed) {
    uint64_t s = seed * 1000003ull + (uint64_t)layer;
    float denom = 4.6f * sqrtf((float)K);
    for (size_t b = 0; b < (size_t)N * (K / QK); b++) {
        uint64_t lo = next_u64(&s), hi = next_u64(&s), r = next_u64(&s);
        /* a random sign: q4_0's codes have mean -0.5, and with positive scales only a common component
         * grows ~7x per 4096-wide layer, past float16 (ggml's q8_0 activation scales) within 16 layers */
        float mag = (float)(0.5 + (r >> 11) * (1.0 / 9007199254740992.0)) / denom;
        out[b].d = ggml_fp32_to_fp16((r & 1) ? -mag : mag);
        memcpy(out[b].qs, &lo, 8);
        memcpy(out[b].qs + 8, &hi, 8);
    }
}

static void gen_input(float *x, size_t count, uint64_t seed) {
    uint64_t s = seed ^ 0x5DEECE66Dull;
    for (size_t i = 0; i < count; i += 2) { /* Box-Muller */
        double u = next_unit(&s), v = next_unit(&s);
        double r = sqrt(-2.0 * log(u > 0 ? u : 1e-300));
        x[i] = (float)(r * cos(6.283185307179586 * v));
        if (i + 1 < count) x[i + 1] = (float)(r * sin(6.283185307179586 * v));
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static ggml_backend_buffer_type_t *extra_bufts(ggml_backend_dev_t dev) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t fn =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    return fn ? fn(dev) : NULL;
}

static ggml_backend_buffer_type_t find_buft(ggml_backend_dev_t dev, const char *name) {
    if (strcmp(name, "CPU") == 0) return ggml_backend_cpu_buffer_type();
    ggml_backend_buffer_type_t *b = extra_bufts(dev);
    for (; b && *b; b++)
        if (strcmp(ggml_backend_buft_name(*b), name) == 0) return *b;
    return NULL;
}

typedef struct {
    int K, N, L, threads;
    enum ggml_type type;
    uint64_t seed;
    ggml_backend_t backend;
    ggml_backend_dev_t dev;
    struct ggml_context *wctx;
    struct ggml_tensor **w;
    /* graph for the current M */
    int M;
    struct ggml_context *gctx;
    struct ggml_cgraph *graph;
    struct ggml_tensor *x, *y;
    ggml_gallocr_t galloc;
    float *xin, *yout;
} chain;

static void load_weights(chain *c, ggml_backend_buffer_type_t buft) {
    struct ggml_init_params p = {ggml_tensor_overhead() * (size_t)(c->L + 1), NULL, true};
    c->wctx = ggml_init(p);
    c->w = calloc((size_t)c->L, sizeof *c->w);
    for (int i = 0; i < c->L; i++) c->w[i] = ggml_new_tensor_2d(c->wctx, c->type, c->K, c->N);
    if (!ggml_backend_alloc_ctx_tensors_from_buft(c->wctx, buft)) fail(3, "cannot allocate the weights in ", ggml_backend_buft_name(buft));
    size_t nblk = (size_t)c->N * (c->K / QK);
    q4_block *blocks = malloc(nblk * sizeof *blocks);
    float *f = c->type == GGML_TYPE_F32 ? malloc((size_t)c->K * c->N * sizeof *f) : NULL;
    if (!blocks || (c->type == GGML_TYPE_F32 && !f)) fail(3, "out of memory generating the weights", NULL);
    for (int i = 0; i < c->L; i++) {
        gen_layer(blocks, c->K, c->N, i, c->seed);
        if (f) {
            ggml_get_type_traits(GGML_TYPE_Q4_0)->to_float(blocks, f, (int64_t)nblk * QK);
            ggml_backend_tensor_set(c->w[i], f, 0, ggml_nbytes(c->w[i]));
        } else {
            ggml_backend_tensor_set(c->w[i], blocks, 0, ggml_nbytes(c->w[i]));
        }
    }
    free(blocks);
    free(f);
}

static void build_graph(chain *c, int M) {
    if (c->gctx && c->M == M) return;
    if (c->gctx) {
        ggml_gallocr_free(c->galloc);
        ggml_free(c->gctx);
        free(c->xin);
        free(c->yout);
    }
    struct ggml_init_params p = {ggml_tensor_overhead() * (size_t)(c->L + 4) + ggml_graph_overhead(), NULL, true};
    c->gctx = ggml_init(p);
    c->M = M;
    c->x = ggml_new_tensor_2d(c->gctx, GGML_TYPE_F32, c->K, M);
    ggml_set_input(c->x);
    struct ggml_tensor *cur = c->x;
    for (int i = 0; i < c->L; i++) cur = ggml_mul_mat(c->gctx, c->w[i], cur); /* [N, M] = x @ W */
    ggml_set_output(cur);
    c->y = cur;
    c->graph = ggml_new_graph(c->gctx);
    ggml_build_forward_expand(c->graph, cur);
    for (int i = 0; i < ggml_graph_n_nodes(c->graph); i++)
        if (!ggml_backend_dev_supports_op(c->dev, ggml_graph_node(c->graph, i)))
            fail(3, "the CPU device does not run mul_mat on weights of this buffer type/shape: ",
                 ggml_backend_buffer_name(c->w[0]->buffer));
    c->galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (!ggml_gallocr_alloc_graph(c->galloc, c->graph)) fail(3, "cannot allocate the graph", NULL);
    c->xin = malloc((size_t)M * c->K * sizeof(float));
    c->yout = malloc((size_t)M * c->N * sizeof(float));
    gen_input(c->xin, (size_t)M * c->K, c->seed + (uint64_t)M);
}

static double run_once(chain *c) {
    double t = now_s();
    ggml_backend_tensor_set(c->x, c->xin, 0, ggml_nbytes(c->x));
    if (ggml_backend_graph_compute(c->backend, c->graph) != GGML_STATUS_SUCCESS) fail(3, "graph compute failed", NULL);
    ggml_backend_tensor_get(c->y, c->yout, 0, ggml_nbytes(c->y));
    return now_s() - t;
}

/* float64 chain with the weights regenerated layer by layer and dequantized by the q4_0 definition */
static double check(chain *c) {
    int M = c->M, K = c->K, N = c->N;
    size_t nb = (size_t)K / QK;
    q4_block *blocks = malloc((size_t)N * nb * sizeof *blocks);
    double *a = malloc((size_t)M * (K > N ? K : N) * sizeof *a), *b = malloc((size_t)M * N * sizeof *b);
    float *wrow = malloc((size_t)K * sizeof *wrow);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = c->xin[i];
    for (int l = 0; l < c->L; l++) {
        gen_layer(blocks, K, N, l, c->seed);
        for (int n = 0; n < N; n++) {
            for (size_t j = 0; j < nb; j++) {
                const q4_block *blk = &blocks[(size_t)n * nb + j];
                float d = ggml_fp16_to_fp32(blk->d);
                for (int t = 0; t < QK / 2; t++) {
                    wrow[j * QK + t] = ((blk->qs[t] & 15) - 8) * d;
                    wrow[j * QK + t + QK / 2] = ((blk->qs[t] >> 4) - 8) * d;
                }
            }
            for (int m = 0; m < M; m++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += a[(size_t)m * K + k] * wrow[k];
                b[(size_t)m * N + n] = s;
            }
        }
        memcpy(a, b, (size_t)M * N * sizeof *a);
    }
    run_once(c);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)M * N; i++) {
        double e = c->yout[i] - a[i];
        num += e * e;
        den += a[i] * a[i];
    }
    free(blocks);
    free(a);
    free(b);
    free(wrow);
    return sqrt(num / (den > 0 ? den : 1));
}

static int arg_int(const char *s, const char *name) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 1 || v > 1 << 30) fail(2, "expected a positive integer for ", name);
    return (int)v;
}

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    ggml_log_set(quiet_log, NULL); /* drop the per-tensor "repack: ..." lines */
    chain c = {0};
    c.K = c.N = 1024;
    c.L = 4;
    c.threads = 1;
    c.type = GGML_TYPE_Q4_0;
    c.seed = 1;
    const char *buft_arg = "repack";
    int list = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--list") == 0) { list = 1; continue; }
        if (i + 1 >= argc) fail(2, "missing value for ", a);
        const char *v = argv[++i];
        if (strcmp(a, "--k") == 0) c.K = arg_int(v, a);
        else if (strcmp(a, "--n") == 0) c.N = arg_int(v, a);
        else if (strcmp(a, "--layers") == 0) c.L = arg_int(v, a);
        else if (strcmp(a, "--threads") == 0) c.threads = arg_int(v, a);
        else if (strcmp(a, "--seed") == 0) c.seed = (uint64_t)arg_int(v, a);
        else if (strcmp(a, "--buft") == 0) buft_arg = v;
        else if (strcmp(a, "--type") == 0) {
            if (strcmp(v, "q4_0") == 0) c.type = GGML_TYPE_Q4_0;
            else if (strcmp(v, "f32") == 0) c.type = GGML_TYPE_F32;
            else fail(2, "--type must be q4_0 or f32, got ", v);
        } else fail(2, "unknown argument ", a);
    }
    c.dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!c.dev) fail(3, "no CPU device in this ggml build", NULL);
    if (list) {
        printf("{\"bufts\": [\"CPU\"");
        for (ggml_backend_buffer_type_t *b = extra_bufts(c.dev); b && *b; b++) printf(", \"%s\"", ggml_backend_buft_name(*b));
        printf("], \"avx512\": %d, \"avx512_vnni\": %d, \"amx_int8\": %d}\n", ggml_cpu_has_avx512(),
               ggml_cpu_has_avx512_vnni(), ggml_cpu_has_amx_int8());
        return 0;
    }
    if (c.K % QK) fail(2, "--k must be a multiple of 32", NULL);
    if (c.L > 1 && c.K != c.N) fail(2, "a chain of more than one layer needs --k == --n", NULL);
    const char *name = strcmp(buft_arg, "repack") == 0 ? "CPU_REPACK"
                       : strcmp(buft_arg, "amx") == 0  ? "AMX"
                       : strcmp(buft_arg, "cpu") == 0  ? "CPU"
                                                       : NULL;
    if (!name) fail(2, "--buft must be repack, amx or cpu, got ", buft_arg);
    ggml_backend_buffer_type_t buft = find_buft(c.dev, name);
    if (!buft) fail(3, "this ggml build has no buffer type ", name);
    c.backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(c.backend, c.threads);
    double t0 = now_s();
    load_weights(&c, buft);
    printf("{\"ready\": true, \"buft\": \"%s\", \"type\": \"%s\", \"K\": %d, \"N\": %d, \"layers\": %d, \"threads\": %d, "
           "\"weight_bytes\": %zu, \"load_s\": %.3f}\n",
           ggml_backend_buft_name(buft), ggml_type_name(c.type), c.K, c.N, c.L, c.threads,
           ggml_backend_buffer_get_size(c.w[0]->buffer), now_s() - t0);
    fflush(stdout);

    char line[256];
    static double ts[MAX_ROUNDS];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        char cmd[16];
        int M = 0, R = 1;
        int n = sscanf(line, "%15s %d %d", cmd, &M, &R);
        if (n < 1 || strcmp(cmd, "quit") == 0) break;
        if (n < 2 || M < 1 || R < 1 || R > MAX_ROUNDS) fail(2, "bad command: ", line);
        build_graph(&c, M);
        if (strcmp(cmd, "run") == 0) {
            printf("{\"M\": %d, \"ms\": [", M);
            for (int r = 0; r < R; r++) {
                ts[r] = run_once(&c);
                printf("%s%.6f", r ? ", " : "", ts[r] * 1e3);
            }
            qsort(ts, (size_t)R, sizeof *ts, cmp_double);
            double med = R % 2 ? ts[R / 2] : 0.5 * (ts[R / 2 - 1] + ts[R / 2]);
            printf("], \"median_ms\": %.6f}\n", med * 1e3);
        } else if (strcmp(cmd, "check") == 0) {
            double err = check(&c);
            if (isfinite(err)) printf("{\"M\": %d, \"rel_err\": %.3e}\n", M, err);
            else printf("{\"M\": %d, \"rel_err\": null}\n", M);
        } else {
            fail(2, "unknown command: ", line);
        }
        fflush(stdout);
    }
    ggml_backend_buffer_free(c.w[0]->buffer);
    if (c.gctx) {
        ggml_gallocr_free(c.galloc);
        ggml_free(c.gctx);
    }
    ggml_free(c.wctx);
    ggml_backend_free(c.backend);
    return 0;
}
