/*
 * int4onnx_run: runs an ONNX model converted by `int4onnx convert` on a device without Python, through
 * ONNX Runtime's C API and int4onnx's custom-op library. The deployment recipe in a page of C:
 *
 *   1. OrtGetApiBase()->GetApi(ORT_API_VERSION)        the C API of the runtime on the device
 *   2. RegisterCustomOpsLibrary_V2(options, path)        load libint4onnx_ops.so into the session options
 *   3. CreateSession(env, model, options)               the MatMulInt4 nodes now resolve to our kernels
 *   4. CreateTensorWithDataAsOrtValue + Run              inputs in, outputs out
 *
 * Usage, one forward pass:
 *   int4onnx_run --model MODEL.onnx --ops libint4onnx_ops.so [--out-dir DIR] [--threads N] [--repeat R]
 *                [NAME=]INPUT.npy ...
 * Inputs are NumPy .npy files (numpy.save), given in the model's input order or as NAME=FILE. Each
 * output is written to DIR/<output name>.npy (default DIR: the current directory; characters other
 * than letters, digits, '.', '-' and '_' in the name become '_'). --repeat R runs the model R times and
 * prints the median and fastest latency.
 *
 * Usage, greedy generation with the KV cache (generate.c) on a decoder with optimum's I/O:
 *   int4onnx_run --model MODEL.onnx --ops libint4onnx_ops.so (--prompt-ids 1,2,3 | --prompt-file IDS)
 *                [--max-new-tokens N] [--eos ID]... [--out-dir DIR [--save-logits]] [--threads N]
 * IDS: a text file of integers (separated by spaces, commas or newlines) or an int64/int32 .npy. Prints
 * the new token ids, time to first token and decode tokens/s; with --out-dir also writes them to
 * DIR/generated_ids.npy (int64) and, with --save-logits, each step's last-position logits to
 * DIR/step_logits.npy [steps, vocab].
 *
 * --out-dir is created if missing. --threads N: ONNX Runtime's intra-op threads (default: its own choice);
 * they sleep between runs unless --spin. Errors print one line and exit with status 1.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "app.h"
#include "npy.h"
#include "onnxruntime_c_api.h"

const OrtApi *g_ort;

void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "int4onnx_run: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

void check(OrtStatus *st, const char *what) {
  if (!st) return;
  char msg[1024];
  snprintf(msg, sizeof(msg), "%s", g_ort->GetErrorMessage(st));
  g_ort->ReleaseStatus(st);
  /* ORT's messages can span lines: keep the error on one */
  for (char *p = msg; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  die("%s: %s", what, msg);
}

void make_dirs(const char *path) {
  char buf[4096];
  if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) die("--out-dir %s: path too long", path);
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    const char c = *p;
    *p = '\0';
    struct stat st;
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) die("--out-dir %s: cannot create %s: %s", path, buf, strerror(errno));
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) die("--out-dir %s: %s is not a folder", path, buf);
    *p = c;
    if (c == '\0') break;
  }
}

static const struct {
  const char *descr, *name;
  ONNXTensorElementDataType type;
} kTypes[] = {
    {"<f4", "float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, {"<f2", "float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16},
    {"<f8", "float64", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE}, {"<i8", "int64", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64},
    {"<i4", "int32", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32},   {"<i2", "int16", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16},
    {"|i1", "int8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8},     {"<u8", "uint64", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64},
    {"<u4", "uint32", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32}, {"<u2", "uint16", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16},
    {"|u1", "uint8", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},   {"|b1", "bool", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL},
};
#define N_TYPES (sizeof(kTypes) / sizeof(kTypes[0]))

static int type_index_of_descr(const char *descr) {
  for (size_t i = 0; i < N_TYPES; i++)
    if (strcmp(kTypes[i].descr, descr) == 0) return (int)i;
  return -1;
}

static int type_index_of_onnx(ONNXTensorElementDataType t) {
  for (size_t i = 0; i < N_TYPES; i++)
    if (kTypes[i].type == t) return (int)i;
  return -1;
}

void shape_str(const int64_t *d, size_t n, char *out, size_t len) {
  size_t off = (size_t)snprintf(out, len, "[");
  for (size_t i = 0; i < n && off < len; i++) off += (size_t)snprintf(out + off, len - off, i ? ", %lld" : "%lld", (long long)d[i]);
  if (off < len) snprintf(out + off, len - off, "]");
}

double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void usage(void) {
  fprintf(stderr,
          "usage: int4onnx_run --model MODEL.onnx --ops libint4onnx_ops.so [--out-dir DIR] [--threads N [--spin]] [--repeat R]\n"
          "                    [NAME=]INPUT.npy ...\n"
          "       int4onnx_run --model MODEL.onnx --ops libint4onnx_ops.so (--prompt-ids 1,2,3 | --prompt-file IDS)\n"
          "                    [--max-new-tokens N] [--eos ID]... [--out-dir DIR [--save-logits]] [--threads N]\n");
  exit(2);
}

/* A whole decimal integer within [lo, hi], else a one-line error naming the option. */
static long long parse_int(const char *option, const char *text, long long lo, long long hi) {
  char *end = NULL;
  errno = 0;
  const long long v = strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno || v < lo || v > hi)
    die("%s: expected an integer in [%lld, %lld], got '%s'", option, lo, hi, text);
  return v;
}

typedef struct ids {
  int64_t *v;
  size_t n, cap;
} ids;

static void push_id(ids *a, int64_t x) {
  if (a->n == a->cap) {
    a->cap = a->cap ? 2 * a->cap : 64;
    a->v = (int64_t *)realloc(a->v, a->cap * sizeof(int64_t));
    if (!a->v) die("out of memory");
  }
  a->v[a->n++] = x;
}

/* Token ids separated by commas or white space. */
static void parse_ids(const char *where, const char *text, ids *out) {
  char tok[32];
  const char *p = text;
  for (;;) {
    while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (!*p) break;
    size_t n = 0;
    while (*p && *p != ',' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      if (n + 1 < sizeof(tok)) tok[n] = *p;
      n++, p++;
    }
    tok[n < sizeof(tok) ? n : sizeof(tok) - 1] = '\0';
    push_id(out, parse_int(where, tok, 0, INT64_MAX));
  }
}

/* --prompt-file: an int64/int32 .npy (any shape, read flat) or a text file of ids. */
static void read_ids(const char *path, ids *out) {
  const size_t len = strlen(path);
  char err[512];
  if (len > 4 && strcmp(path + len - 4, ".npy") == 0) {
    npy_array a;
    if (npy_read(path, &a, err, sizeof(err))) die("%s", err);
    const int is64 = strcmp(a.descr, "<i8") == 0;
    if (!is64 && strcmp(a.descr, "<i4") != 0) die("%s: token ids must be int64 or int32, not '%s'", path, a.descr);
    for (size_t i = 0; i < a.count; i++) {
      const int64_t x = is64 ? ((const int64_t *)a.data)[i] : ((const int32_t *)a.data)[i];
      if (x < 0) die("%s: negative token id %lld", path, (long long)x);
      push_id(out, x);
    }
    npy_free(&a);
    return;
  }
  FILE *f = fopen(path, "rb");
  if (!f) die("%s: %s", path, strerror(errno));
  char *text = NULL;
  size_t n = 0, cap = 0, got;
  do {
    if (cap - n < 4096) {
      cap = cap ? 2 * cap : 8192;
      text = (char *)realloc(text, cap + 1);
      if (!text) die("out of memory");
    }
    got = fread(text + n, 1, cap - n, f);
    n += got;
  } while (got > 0);
  const int bad = ferror(f);
  fclose(f);
  if (bad) die("%s: read error", path);
  text[n] = '\0';
  if (strlen(text) != n) die("%s: not a text file of token ids (use .npy for binary ids)", path);
  parse_ids(path, text, out);
  free(text);
}

int main(int argc, char **argv) {
  const char *model = NULL, *ops = NULL, *out_dir = NULL;
  int threads = 0, repeat = 1, max_new = 32, save_logits = 0, generating = 0, spin = 0;
  const char *in_args[64];
  size_t n_args = 0;
  ids prompt = {NULL, 0, 0}, eos = {NULL, 0, 0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const int has_value = i + 1 < argc;
    if (strcmp(a, "--model") == 0 && has_value) model = argv[++i];
    else if (strcmp(a, "--ops") == 0 && has_value) ops = argv[++i];
    else if (strcmp(a, "--out-dir") == 0 && has_value) out_dir = argv[++i];
    else if (strcmp(a, "--threads") == 0 && has_value) threads = (int)parse_int(a, argv[++i], 0, 4096);
    else if (strcmp(a, "--repeat") == 0 && has_value) repeat = (int)parse_int(a, argv[++i], 1, 1000000);
    else if (strcmp(a, "--prompt-ids") == 0 && has_value) parse_ids(a, argv[++i], &prompt), generating = 1;
    else if (strcmp(a, "--prompt-file") == 0 && has_value) read_ids(argv[++i], &prompt), generating = 1;
    else if (strcmp(a, "--max-new-tokens") == 0 && has_value) max_new = (int)parse_int(a, argv[++i], 1, 1000000);
    else if (strcmp(a, "--eos") == 0 && has_value) push_id(&eos, parse_int(a, argv[++i], 0, INT64_MAX));
    else if (strcmp(a, "--save-logits") == 0) save_logits = 1;
    else if (strcmp(a, "--spin") == 0) spin = 1;
    else if (a[0] == '-' || n_args == sizeof(in_args) / sizeof(in_args[0])) usage();
    else in_args[n_args++] = a;
  }
  if (!model) usage();
  if (out_dir && !*out_dir) die("--out-dir: empty path");
  if (generating && n_args) die("give either --prompt-ids/--prompt-file (generation) or .npy inputs, not both");
  if (generating && !prompt.n) die("the prompt has no token ids");
  if (!generating && (save_logits || eos.n)) die("--eos and --save-logits go with --prompt-ids or --prompt-file");
  if (save_logits && !out_dir) die("--save-logits needs --out-dir");

  /* 1. the runtime's C API; a runtime older than the headers we were compiled with returns NULL */
  const OrtApiBase *base = OrtGetApiBase();
  g_ort = base->GetApi(ORT_API_VERSION);
  if (!g_ort) {
    die("ONNX Runtime %s does not provide C API version %d (built against newer headers)", base->GetVersionString(),
        ORT_API_VERSION);
  }
  printf("onnxruntime %s, model %s\n", base->GetVersionString(), model);

  OrtEnv *env = NULL;
  check(g_ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "int4onnx_run", &env), "CreateEnv");
  OrtSessionOptions *so = NULL;
  check(g_ort->CreateSessionOptions(&so), "CreateSessionOptions");
  if (threads) check(g_ort->SetIntraOpNumThreads(so, threads), "SetIntraOpNumThreads");
  /* pool threads sleep between runs unless --spin (as int4onnx's Python sessions): busy-waiting threads
   * take the cores from the rest of the app, and on a shared or loaded CPU from the next run itself */
  if (!spin) check(g_ort->AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "0"), "AddSessionConfigEntry");
  /* 2. the custom-op library: ONNX Runtime dlopens it and calls its RegisterCustomOps */
  if (ops) check(g_ort->RegisterCustomOpsLibrary_V2(so, ops), "RegisterCustomOpsLibrary_V2");
  /* 3. the session */
  OrtSession *sess = NULL;
  check(g_ort->CreateSession(env, model, so, &sess), "CreateSession");

  if (generating) {
    const gen_options o = {prompt.v, prompt.n, max_new, eos.v, eos.n, out_dir, save_logits};
    generate(sess, &o);
    free(prompt.v);
    free(eos.v);
    g_ort->ReleaseSession(sess);
    g_ort->ReleaseSessionOptions(so);
    g_ort->ReleaseEnv(env);
    return 0;
  }
  if (!out_dir) out_dir = ".";

  OrtAllocator *alloc = NULL;
  check(g_ort->GetAllocatorWithDefaultOptions(&alloc), "GetAllocatorWithDefaultOptions");
  size_t n_in = 0, n_out = 0;
  check(g_ort->SessionGetInputCount(sess, &n_in), "SessionGetInputCount");
  check(g_ort->SessionGetOutputCount(sess, &n_out), "SessionGetOutputCount");
  char **in_names = (char **)calloc(n_in + 1, sizeof(char *)), **out_names = (char **)calloc(n_out + 1, sizeof(char *));
  OrtValue **inputs = (OrtValue **)calloc(n_in + 1, sizeof(OrtValue *)), **outputs = (OrtValue **)calloc(n_out + 1, sizeof(OrtValue *));
  npy_array *arrays = (npy_array *)calloc(n_in + 1, sizeof(npy_array));
  if (!in_names || !out_names || !inputs || !outputs || !arrays) die("out of memory");
  for (size_t i = 0; i < n_in; i++) check(g_ort->SessionGetInputName(sess, i, alloc, &in_names[i]), "SessionGetInputName");
  for (size_t i = 0; i < n_out; i++) check(g_ort->SessionGetOutputName(sess, i, alloc, &out_names[i]), "SessionGetOutputName");
  if (n_args != n_in) die("the model has %zu input(s), %zu given", n_in, n_args);

  /* 4. inputs: .npy files wrapped as tensors without copying */
  OrtMemoryInfo *mem = NULL;
  check(g_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");
  for (size_t a = 0; a < n_args; a++) {
    size_t slot = a;
    const char *path = in_args[a], *eq = strchr(in_args[a], '=');
    if (eq) {
      slot = n_in;
      for (size_t i = 0; i < n_in; i++)
        if (strlen(in_names[i]) == (size_t)(eq - in_args[a]) && strncmp(in_names[i], in_args[a], (size_t)(eq - in_args[a])) == 0) slot = i;
      if (slot == n_in) die("the model has no input named as in '%s'", in_args[a]);
      path = eq + 1;
    }
    if (inputs[slot]) die("input %s given twice", in_names[slot]);
    char err[512];
    if (npy_read(path, &arrays[slot], err, sizeof(err))) die("%s", err);
    const int t = type_index_of_descr(arrays[slot].descr);
    OrtTypeInfo *ti = NULL;
    const OrtTensorTypeAndShapeInfo *tsi = NULL;
    ONNXTensorElementDataType want = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    check(g_ort->SessionGetInputTypeInfo(sess, slot, &ti), "SessionGetInputTypeInfo");
    check(g_ort->CastTypeInfoToTensorInfo(ti, &tsi), "CastTypeInfoToTensorInfo");
    if (tsi) check(g_ort->GetTensorElementType(tsi, &want), "GetTensorElementType");
    g_ort->ReleaseTypeInfo(ti);
    const int w = type_index_of_onnx(want);
    if (w < 0) die("input %s has a type this example does not handle", in_names[slot]);
    if (kTypes[w].type != kTypes[t].type)
      die("input %s is %s in %s, the model wants %s", in_names[slot], kTypes[t].name, path, kTypes[w].name);
    char s[128];
    shape_str(arrays[slot].shape, arrays[slot].rank, s, sizeof(s));
    printf("input  %s %s %s <- %s\n", in_names[slot], kTypes[t].name, s, path);
    check(g_ort->CreateTensorWithDataAsOrtValue(mem, arrays[slot].data, arrays[slot].count * arrays[slot].itemsize,
                                                arrays[slot].shape, arrays[slot].rank, kTypes[t].type, &inputs[slot]),
          "CreateTensorWithDataAsOrtValue");
  }

  double *ms = (double *)calloc((size_t)repeat, sizeof(double));
  if (!ms) die("out of memory");
  for (int r = 0; r < repeat; r++) {
    for (size_t i = 0; i < n_out; i++) {
      if (outputs[i]) g_ort->ReleaseValue(outputs[i]);
      outputs[i] = NULL;
    }
    const double t0 = now_ms();
    check(g_ort->Run(sess, NULL, (const char *const *)in_names, (const OrtValue *const *)inputs, n_in,
                     (const char *const *)out_names, n_out, outputs),
          "Run");
    ms[r] = now_ms() - t0;
  }

  /* outputs: one .npy file each */
  make_dirs(out_dir);
  for (size_t i = 0; i < n_out; i++) {
    OrtTensorTypeAndShapeInfo *info = NULL;
    check(g_ort->GetTensorTypeAndShape(outputs[i], &info), "GetTensorTypeAndShape");
    ONNXTensorElementDataType type;
    size_t rank = 0;
    check(g_ort->GetTensorElementType(info, &type), "GetTensorElementType");
    check(g_ort->GetDimensionsCount(info, &rank), "GetDimensionsCount");
    if (rank > NPY_MAX_RANK) die("output %s has too many dimensions", out_names[i]);
    int64_t shape[NPY_MAX_RANK];
    check(g_ort->GetDimensions(info, shape, rank), "GetDimensions");
    g_ort->ReleaseTensorTypeAndShapeInfo(info);
    const int t = type_index_of_onnx(type);
    if (t < 0) die("output %s has a type this example does not write", out_names[i]);
    size_t itemsize = 0;
    for (const char *p = kTypes[t].descr + 2; *p; p++) itemsize = itemsize * 10 + (size_t)(*p - '0');
    void *data = NULL;
    check(g_ort->GetTensorMutableData(outputs[i], &data), "GetTensorMutableData");
    char file[4096], safe[256], err[512], s[128];
    size_t k = 0;
    for (const char *p = out_names[i]; *p && k + 1 < sizeof(safe); p++)
      safe[k++] = ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
                   *p == '-' || *p == '_') ? *p : '_';
    safe[k] = '\0';
    snprintf(file, sizeof(file), "%s/%s.npy", out_dir, safe);
    if (npy_write(file, kTypes[t].descr, shape, rank, data, itemsize, err, sizeof(err))) die("%s", err);
    shape_str(shape, rank, s, sizeof(s));
    printf("output %s %s %s -> %s\n", out_names[i], kTypes[t].name, s, file);
  }
  qsort(ms, (size_t)repeat, sizeof(double), cmp_double);
  printf("run: %.2f ms median, %.2f ms fastest of %d\n", ms[repeat / 2], ms[0], repeat);

  for (size_t i = 0; i < n_out; i++) {
    g_ort->ReleaseValue(outputs[i]);
    alloc->Free(alloc, out_names[i]);
  }
  for (size_t i = 0; i < n_in; i++) {
    g_ort->ReleaseValue(inputs[i]);
    npy_free(&arrays[i]);
    alloc->Free(alloc, in_names[i]);
  }
  free(ms);
  free(arrays);
  free(inputs);
  free(outputs);
  free(in_names);
  free(out_names);
  g_ort->ReleaseMemoryInfo(mem);
  g_ort->ReleaseSession(sess);
  g_ort->ReleaseSessionOptions(so);
  g_ort->ReleaseEnv(env);
  return 0;
}
