/*
 * Greedy text generation on token ids with the KV cache, through ONNX Runtime's C API: the loop of
 * int4onnx.tools.generate (Python) in C. Tokenisation stays in the app's own language; this file sees ids.
 *
 * The decoder's interface is read from the session, with int4onnx.lm's names:
 *   input_ids (or ids, tokens, idx, input, or the only integer input)  [batch, seq]       int64 | int32
 *   attention_mask (a name with "mask")                                [batch, past+seq]  int64 | int32
 *   position_ids (a name with "position")                              [batch, seq]       int64 | int32
 *   past_key_values.{i}.key / .value (also past_key_value.*, past.*)    [batch, kv_heads, past, head_dim] float32
 *   -> logits (else the first output) [batch, seq, vocab] float32, present.{i}.key / .value
 * Prefill runs the prompt with an empty past (length 0); if the graph refuses that (an ONNX Runtime
 * error or non-finite logits), with a one-token past of zeros that a 0 in the attention mask hides,
 * as int4onnx.lm does. Each decoding step then feeds the chosen token alone, the present.* outputs of
 * the previous run as past_key_values.* (the OrtValues themselves: no copy), the mask grown by one
 * and the next position. Stops at an --eos id (not emitted), after max_new_tokens, or at the context
 * length of the model's metadata (context_length, max_position_embeddings, ...) or its fixed
 * sequence dimension. Batch 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "npy.h"

enum role { ROLE_TOKEN, ROLE_MASK, ROLE_POSITIONS, ROLE_PAST };

typedef struct input {
  char *name;
  enum role role;
  ONNXTensorElementDataType type;
  int64_t dims[NPY_MAX_RANK];
  size_t rank;
  int layer, kind; /* ROLE_PAST: layer index, 0 key / 1 value */
  int output;      /* ROLE_PAST: index of its present output in the requested outputs (1..) */
} input;

static int is_int(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64:
      return 1;
    default:
      return 0;
  }
}

/* "<prefix>[._]<layer>[._](key|value)" for one of the prefixes: 1 with layer and kind, else 0. */
static int kv_name(const char *name, const char *const *prefixes, int *layer, int *kind) {
  for (const char *const *p = prefixes; *p; p++) {
    const size_t n = strlen(*p);
    if (strncmp(name, *p, n) != 0 || (name[n] != '.' && name[n] != '_')) continue;
    const char *s = name + n + 1;
    if (*s < '0' || *s > '9') continue;
    long v = 0;
    while (*s >= '0' && *s <= '9' && v < 1000000) v = v * 10 + (*s++ - '0');
    if (*s != '.' && *s != '_') continue;
    s++;
    if (strcmp(s, "key") == 0 || strcmp(s, "value") == 0) {
      *layer = (int)v;
      *kind = s[0] == 'v';
      return 1;
    }
  }
  return 0;
}

static const char *const kPast[] = {"past_key_values", "past_key_value", "past", NULL};
static const char *const kPresent[] = {"present", "present_key_values", NULL};
static const char *const kTokenNames[] = {"input_ids", "ids", "tokens", "idx", "input", NULL};

static const char *type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    default: return is_int(t) ? "a small integer type" : "another type";
  }
}

/* Element type and dimensions (-1: symbolic) of a session input or output; 0 if not a tensor. */
static int tensor_info(OrtTypeInfo *ti, ONNXTensorElementDataType *type, int64_t *dims, size_t *rank) {
  const OrtTensorTypeAndShapeInfo *tsi = NULL;
  check(g_ort->CastTypeInfoToTensorInfo(ti, &tsi), "CastTypeInfoToTensorInfo");
  if (!tsi) return 0;
  check(g_ort->GetTensorElementType(tsi, type), "GetTensorElementType");
  check(g_ort->GetDimensionsCount(tsi, rank), "GetDimensionsCount");
  if (*rank > NPY_MAX_RANK) return 0;
  check(g_ort->GetDimensions(tsi, dims, *rank), "GetDimensions");
  return 1;
}

/* An int64 or int32 tensor over `v` (int64): wrapped without a copy, or converted into `scratch`. */
static OrtValue *int_tensor(const OrtMemoryInfo *mem, ONNXTensorElementDataType t, int64_t *v, size_t n, void *scratch,
                            const int64_t *shape, size_t rank) {
  OrtValue *out = NULL;
  void *data = v;
  size_t bytes = n * sizeof(int64_t);
  if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
    int32_t *s = (int32_t *)scratch;
    for (size_t i = 0; i < n; i++) s[i] = (int32_t)v[i];
    data = s;
    bytes = n * sizeof(int32_t);
  }
  check(g_ort->CreateTensorWithDataAsOrtValue(mem, data, bytes, shape, rank, t, &out), "CreateTensorWithDataAsOrtValue");
  return out;
}

/* The context length from the model's metadata, else 0. */
static int64_t metadata_context(OrtSession *sess, OrtAllocator *alloc, const char **source) {
  static const char *const keys[] = {"context_length", "max_position_embeddings", "n_positions", "n_ctx",
                                     "max_sequence_length"};
  OrtModelMetadata *md = NULL;
  int64_t ctx = 0;
  check(g_ort->SessionGetModelMetadata(sess, &md), "SessionGetModelMetadata");
  for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]) && !ctx; k++) {
    char *value = NULL;
    check(g_ort->ModelMetadataLookupCustomMetadataMap(md, alloc, keys[k], &value), "ModelMetadataLookupCustomMetadataMap");
    if (!value) continue;
    char *end = NULL;
    const long long v = strtoll(value, &end, 10);
    if (end != value && *end == '\0' && v > 0) {
      ctx = v;
      *source = keys[k];
    }
    alloc->Free(alloc, value);
  }
  g_ort->ReleaseModelMetadata(md);
  return ctx;
}

typedef struct decoder {
  size_t n_in, n_past, n_out; /* n_out: logits + one present per past */
  input *in;
  char **out_names;
  int token, mask, positions; /* indices into in, -1 if absent (token never) */
  int64_t vocab_hint;         /* fixed vocabulary dimension of logits, else -1 */
} decoder;

static decoder describe(OrtSession *sess, OrtAllocator *alloc) {
  decoder d = {0};
  d.token = d.mask = d.positions = -1;
  d.vocab_hint = -1;
  check(g_ort->SessionGetInputCount(sess, &d.n_in), "SessionGetInputCount");
  d.in = (input *)calloc(d.n_in + 1, sizeof(input));
  if (!d.in) die("out of memory");
  for (size_t i = 0; i < d.n_in; i++) {
    input *x = &d.in[i];
    check(g_ort->SessionGetInputName(sess, i, alloc, &x->name), "SessionGetInputName");
    OrtTypeInfo *ti = NULL;
    check(g_ort->SessionGetInputTypeInfo(sess, i, &ti), "SessionGetInputTypeInfo");
    const int ok = tensor_info(ti, &x->type, x->dims, &x->rank);
    g_ort->ReleaseTypeInfo(ti);
    if (!ok) die("input %s is not a tensor this example can feed", x->name);
  }
  /* the token input: a known name among the integer inputs, else the only input if it is an integer one */
  for (size_t i = 0; i < d.n_in && d.token < 0; i++)
    for (const char *const *n = kTokenNames; *n; n++)
      if (is_int(d.in[i].type) && strcmp(d.in[i].name, *n) == 0) d.token = (int)i;
  if (d.token < 0 && d.n_in == 1 && is_int(d.in[0].type)) d.token = 0;
  if (d.token < 0) die("the model has no integer token-id input (input_ids, ids, tokens, idx, input)");
  d.in[d.token].role = ROLE_TOKEN;
  for (size_t i = 0; i < d.n_in; i++) {
    input *x = &d.in[i];
    if ((int)i == d.token) continue;
    if (strstr(x->name, "mask") && (is_int(x->type) || x->type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL)) {
      x->role = ROLE_MASK;
      d.mask = (int)i;
    } else if (strstr(x->name, "position") && is_int(x->type)) {
      x->role = ROLE_POSITIONS;
      d.positions = (int)i;
    } else if (kv_name(x->name, kPast, &x->layer, &x->kind)) {
      x->role = ROLE_PAST;
      d.n_past++;
      if (x->rank != 4 || x->dims[1] <= 0 || x->dims[3] <= 0 || x->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        char s[128];
        shape_str(x->dims, x->rank, s, sizeof(s));
        die("past input %s is %s %s (-1: symbolic); this example feeds float32 [batch, kv_heads, past, head_dim] "
            "with fixed kv_heads and head_dim", x->name, type_name(x->type), s);
      }
      if (x->dims[2] > 0)
        die("past input %s has a fixed length %lld (a shared KV buffer); export the model with a dynamic past length",
            x->name, (long long)x->dims[2]);
    } else {
      die("cannot make model input '%s' from token ids (known: token ids, attention_mask, position_ids, "
          "past_key_values.N.key/value)", x->name);
    }
  }
  for (int r = ROLE_TOKEN; r <= ROLE_POSITIONS; r++) {
    const int i = r == ROLE_TOKEN ? d.token : r == ROLE_MASK ? d.mask : d.positions;
    if (i >= 0 && d.in[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 && d.in[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
      die("input %s is %s; this example feeds int64 or int32", d.in[i].name, type_name(d.in[i].type));
  }
  if (!d.n_past) die("the model has no past_key_values.* inputs: generation here needs a KV-cache decoder");

  /* outputs: logits first, then the present of each past, in input order */
  size_t n_sess_out = 0;
  check(g_ort->SessionGetOutputCount(sess, &n_sess_out), "SessionGetOutputCount");
  char **names = (char **)calloc(n_sess_out + 1, sizeof(char *));
  d.out_names = (char **)calloc(d.n_past + 1, sizeof(char *));
  if (!names || !d.out_names) die("out of memory");
  int logits = -1;
  for (size_t o = 0; o < n_sess_out; o++) {
    check(g_ort->SessionGetOutputName(sess, o, alloc, &names[o]), "SessionGetOutputName");
    if (strcmp(names[o], "logits") == 0) logits = (int)o;
  }
  if (n_sess_out == 0) die("the model has no outputs");
  if (logits < 0) logits = 0;
  OrtTypeInfo *ti = NULL;
  ONNXTensorElementDataType lt = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  int64_t ld[NPY_MAX_RANK];
  size_t lr = 0;
  check(g_ort->SessionGetOutputTypeInfo(sess, (size_t)logits, &ti), "SessionGetOutputTypeInfo");
  const int ok = tensor_info(ti, &lt, ld, &lr);
  g_ort->ReleaseTypeInfo(ti);
  if (!ok || lt != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || (lr != 0 && lr != 3))
    die("output %s is not float32 logits [batch, seq, vocab]", names[logits]);
  if (lr == 3 && ld[2] > 0) d.vocab_hint = ld[2];
  d.out_names[0] = names[logits];
  d.n_out = 1;
  for (size_t i = 0; i < d.n_in; i++) {
    input *x = &d.in[i];
    if (x->role != ROLE_PAST) continue;
    for (size_t o = 0; o < n_sess_out && !x->output; o++) {
      int layer, kind;
      if (kv_name(names[o], kPresent, &layer, &kind) && layer == x->layer && kind == x->kind) {
        x->output = (int)d.n_out;
        d.out_names[d.n_out++] = names[o];
      }
    }
    if (!x->output) die("past input %s has no matching present.%d.%s output", x->name, x->layer, x->kind ? "value" : "key");
  }
  for (size_t o = 0; o < n_sess_out; o++) {
    int used = 0;
    for (size_t k = 0; k < d.n_out; k++) used |= names[o] == d.out_names[k];
    if (!used) alloc->Free(alloc, names[o]);
  }
  free(names);
  return d;
}

static size_t count_layers(const decoder *d) {
  size_t layers = 0;
  for (size_t i = 0; i < d->n_in; i++) {
    if (d->in[i].role != ROLE_PAST) continue;
    int seen = 0;
    for (size_t j = 0; j < i; j++) seen |= d->in[j].role == ROLE_PAST && d->in[j].layer == d->in[i].layer;
    layers += !seen;
  }
  return layers;
}

typedef struct state {
  OrtSession *sess;
  OrtAllocator *alloc;
  OrtMemoryInfo *mem;
  const decoder *d;
  int64_t *tokens, *mask, *pos; /* the sequence so far; mask: `masked` zeros then ones; pos: 0, 1, 2, ... */
  void *scratch[3];             /* int32 copies for int32 inputs */
  OrtValue **past;              /* per input slot (NULL for non-past) */
  int masked;                   /* 1: a hidden placeholder token precedes the sequence in the cache */
} state;

/* Zero past tensors of length `masked` for every past input. */
static void reset_past(state *s) {
  for (size_t i = 0; i < s->d->n_in; i++) {
    const input *x = &s->d->in[i];
    if (x->role != ROLE_PAST) continue;
    if (s->past[i]) g_ort->ReleaseValue(s->past[i]);
    s->past[i] = NULL;
    const int64_t shape[4] = {1, x->dims[1], s->masked, x->dims[3]};
    check(g_ort->CreateTensorAsOrtValue(s->alloc, shape, 4, x->type, &s->past[i]), "CreateTensorAsOrtValue");
    if (s->masked) {
      void *p = NULL;
      check(g_ort->GetTensorMutableData(s->past[i], &p), "GetTensorMutableData");
      memset(p, 0, (size_t)(x->dims[1] * x->dims[3]) * sizeof(float));
    }
  }
}

/* One run: tokens [start, start + n) of the sequence after the cached ones. On success the presents
 * become the past and outs[0] holds the logits (the caller releases it); on failure the status. */
static OrtStatus *step(state *s, size_t start, size_t n, OrtValue **outs) {
  const decoder *d = s->d;
  OrtValue **in = (OrtValue **)calloc(d->n_in, sizeof(OrtValue *));
  const char **in_names = (const char **)calloc(d->n_in, sizeof(char *));
  if (!in || !in_names) die("out of memory");
  const int64_t seq_shape[2] = {1, (int64_t)n}, mask_shape[2] = {1, (int64_t)(s->masked + start + n)};
  for (size_t i = 0; i < d->n_in; i++) {
    const input *x = &d->in[i];
    in_names[i] = x->name;
    if (x->role == ROLE_TOKEN) in[i] = int_tensor(s->mem, x->type, s->tokens + start, n, s->scratch[0], seq_shape, 2);
    else if (x->role == ROLE_MASK)
      in[i] = int_tensor(s->mem, x->type, s->mask, (size_t)mask_shape[1], s->scratch[1], mask_shape, 2);
    else if (x->role == ROLE_POSITIONS) in[i] = int_tensor(s->mem, x->type, s->pos + start, n, s->scratch[2], seq_shape, 2);
    else in[i] = s->past[i];
  }
  for (size_t o = 0; o < d->n_out; o++) outs[o] = NULL;
  OrtStatus *st = g_ort->Run(s->sess, NULL, in_names, (const OrtValue *const *)in, d->n_in,
                             (const char *const *)d->out_names, d->n_out, outs);
  for (size_t i = 0; i < d->n_in; i++)
    if (d->in[i].role != ROLE_PAST) g_ort->ReleaseValue(in[i]);
  free(in);
  free(in_names);
  if (st) {
    for (size_t o = 0; o < d->n_out; o++)
      if (outs[o]) g_ort->ReleaseValue(outs[o]);
    return st;
  }
  for (size_t i = 0; i < d->n_in; i++) {
    const input *x = &d->in[i];
    if (x->role != ROLE_PAST) continue;
    g_ort->ReleaseValue(s->past[i]);
    s->past[i] = outs[x->output];
  }
  return NULL;
}

/* The last position's logits row of `logits` [1, seq, vocab]; its vocabulary size in *vocab. */
static const float *last_row(OrtValue *logits, int64_t *vocab) {
  OrtTensorTypeAndShapeInfo *info = NULL;
  size_t rank = 0;
  int64_t dims[NPY_MAX_RANK];
  check(g_ort->GetTensorTypeAndShape(logits, &info), "GetTensorTypeAndShape");
  check(g_ort->GetDimensionsCount(info, &rank), "GetDimensionsCount");
  if (rank != 3) {
    g_ort->ReleaseTensorTypeAndShapeInfo(info);
    die("logits have rank %zu, expected [batch, seq, vocab]", rank);
  }
  check(g_ort->GetDimensions(info, dims, rank), "GetDimensions");
  g_ort->ReleaseTensorTypeAndShapeInfo(info);
  if (dims[0] != 1 || dims[1] < 1 || dims[2] < 1) {
    char sh[128];
    shape_str(dims, rank, sh, sizeof(sh));
    die("logits are %s, expected [1, seq, vocab]", sh);
  }
  float *data = NULL;
  check(g_ort->GetTensorMutableData(logits, (void **)&data), "GetTensorMutableData");
  *vocab = dims[2];
  return data + (size_t)(dims[1] - 1) * (size_t)dims[2];
}

static int finite_row(const float *row, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(row[i])) return 0;
  return 1;
}

/* numpy.argmax: the first index of the largest value. */
static int64_t argmax(const float *row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (row[i] > row[best]) best = i;
  return best;
}

typedef struct logbook {
  float *rows;
  size_t n, cap;
  int64_t vocab;
} logbook;

static void keep_row(logbook *b, const float *row, int64_t vocab) {
  if (b->n && vocab != b->vocab) die("the vocabulary changed from %lld to %lld between steps", (long long)b->vocab,
                                     (long long)vocab);
  b->vocab = vocab;
  if (b->n == b->cap) {
    b->cap = b->cap ? 2 * b->cap : 16;
    b->rows = (float *)realloc(b->rows, b->cap * (size_t)vocab * sizeof(float));
    if (!b->rows) die("out of memory keeping the logits of %zu steps", b->n + 1);
  }
  memcpy(b->rows + b->n * (size_t)vocab, row, (size_t)vocab * sizeof(float));
  b->n++;
}

void generate(OrtSession *sess, const gen_options *o) {
  if (o->n_prompt == 0) die("the prompt has no token ids");
  if (o->max_new_tokens < 1) die("--max-new-tokens must be at least 1");
  OrtAllocator *alloc = NULL;
  check(g_ort->GetAllocatorWithDefaultOptions(&alloc), "GetAllocatorWithDefaultOptions");
  const decoder d = describe(sess, alloc);
  const input *kv0 = NULL;
  for (size_t i = 0; i < d.n_in && !kv0; i++)
    if (d.in[i].role == ROLE_PAST) kv0 = &d.in[i];
  printf("decoder: %s %s", d.in[d.token].name, type_name(d.in[d.token].type));
  if (d.mask >= 0) printf(", %s %s", d.in[d.mask].name, type_name(d.in[d.mask].type));
  if (d.positions >= 0) printf(", %s %s", d.in[d.positions].name, type_name(d.in[d.positions].type));
  printf("; KV cache: %zu layers, %zu past inputs, %lld kv heads x head dim %lld (%s); logits %s\n", count_layers(&d),
         d.n_past, (long long)kv0->dims[1], (long long)kv0->dims[3], kv0->name, d.out_names[0]);

  for (size_t i = 0; i < o->n_prompt; i++)
    if (o->prompt[i] < 0 || (d.vocab_hint > 0 && o->prompt[i] >= d.vocab_hint))
      die("prompt token id %lld is outside the vocabulary of the model (%lld entries)", (long long)o->prompt[i],
          (long long)d.vocab_hint);
  const char *ctx_source = NULL;
  int64_t ctx = metadata_context(sess, alloc, &ctx_source);
  const input *tok = &d.in[d.token];
  if (!ctx && tok->rank == 2 && tok->dims[1] > 0) {
    ctx = tok->dims[1];
    ctx_source = "the fixed sequence dimension of the token input";
  }
  if (ctx && (int64_t)o->n_prompt >= ctx)
    die("the prompt has %zu tokens, the context of the model is %lld (from %s); shorten the prompt", o->n_prompt,
        (long long)ctx, ctx_source);

  const size_t cap = o->n_prompt + (size_t)o->max_new_tokens + 1;
  state s = {sess, alloc, NULL, &d, NULL, NULL, NULL, {NULL, NULL, NULL}, NULL, 0};
  check(g_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &s.mem), "CreateCpuMemoryInfo");
  s.tokens = (int64_t *)calloc(cap, sizeof(int64_t));
  s.mask = (int64_t *)calloc(cap + 1, sizeof(int64_t));
  s.pos = (int64_t *)calloc(cap, sizeof(int64_t));
  s.past = (OrtValue **)calloc(d.n_in, sizeof(OrtValue *));
  for (int k = 0; k < 3; k++) s.scratch[k] = calloc(cap + 1, sizeof(int64_t));
  OrtValue **outs = (OrtValue **)calloc(d.n_out, sizeof(OrtValue *));
  int64_t *new_ids = (int64_t *)calloc((size_t)o->max_new_tokens, sizeof(int64_t));
  if (!s.tokens || !s.mask || !s.pos || !s.past || !s.scratch[0] || !s.scratch[1] || !s.scratch[2] || !outs || !new_ids)
    die("out of memory");
  memcpy(s.tokens, o->prompt, o->n_prompt * sizeof(int64_t));
  for (size_t i = 0; i < cap; i++) s.pos[i] = (int64_t)i;
  logbook book = {NULL, 0, 0, 0};

  /* prefill: the whole prompt, an empty past (or the masked placeholder if the graph refuses it) */
  const double t0 = now_ms();
  const float *row = NULL;
  int64_t vocab = 0;
  OrtStatus *first_error = NULL; /* of the empty past, reported if the masked past fails as well */
  for (;;) {
    for (size_t i = 0; i < cap + 1; i++) s.mask[i] = (int64_t)i >= s.masked;
    reset_past(&s);
    OrtStatus *st = step(&s, 0, o->n_prompt, outs);
    if (!st) {
      row = last_row(outs[0], &vocab);
      if (finite_row(row, vocab) || s.masked || d.mask < 0) break;
      g_ort->ReleaseValue(outs[0]); /* non-finite logits with an empty past: try the masked one */
    } else if (s.masked || d.mask < 0) {
      check(first_error ? first_error : st, "Run (prefill)");
    } else {
      first_error = st;
    }
    s.masked = 1;
  }
  if (first_error) g_ort->ReleaseStatus(first_error);
  if (!finite_row(row, vocab)) die("the prefill gave non-finite logits");
  if (o->save_logits) keep_row(&book, row, vocab);
  int64_t next = argmax(row, vocab);
  g_ort->ReleaseValue(outs[0]);
  const double t_first = now_ms();

  size_t n_new = 0, len = o->n_prompt;
  int steps = 0;
  const char *stopped = NULL;
  for (;;) {
    for (size_t e = 0; e < o->n_eos && !stopped; e++)
      if (next == o->eos[e]) stopped = "eos";
    if (stopped) break;
    new_ids[n_new++] = next;
    s.tokens[len++] = next;
    if ((int)n_new >= o->max_new_tokens) {
      stopped = "max_new_tokens";
      break;
    }
    if (ctx && (int64_t)len >= ctx) {
      stopped = "context";
      break;
    }
    check(step(&s, len - 1, 1, outs), "Run (decode)");
    row = last_row(outs[0], &vocab);
    if (o->save_logits) keep_row(&book, row, vocab);
    next = argmax(row, vocab);
    g_ort->ReleaseValue(outs[0]);
    steps++;
  }
  const double t_end = now_ms();

  printf("generated:");
  for (size_t i = 0; i < n_new; i++) printf(" %lld", (long long)new_ids[i]);
  printf("\n");
  const double ttft = t_first - t0;
  printf("prompt %zu tokens, %zu new (%s); time to first token %.1f ms, prefill %.1f tokens/s, ", o->n_prompt, n_new,
         stopped, ttft, 1e3 * (double)o->n_prompt / (ttft > 1e-6 ? ttft : 1e-6));
  if (steps) printf("decode %.1f tokens/s\n", 1e3 * steps / (t_end - t_first > 1e-6 ? t_end - t_first : 1e-6));
  else printf("no decoding step\n");
  if (s.masked) printf("prefill used a masked one-token past: the graph refuses an empty one\n");

  if (o->out_dir) {
    char file[4096], err[512];
    make_dirs(o->out_dir);
    const int64_t shape[1] = {(int64_t)n_new};
    snprintf(file, sizeof(file), "%s/generated_ids.npy", o->out_dir);
    if (npy_write(file, "<i8", shape, 1, new_ids, sizeof(int64_t), err, sizeof(err))) die("%s", err);
    printf("ids -> %s\n", file);
    if (o->save_logits) {
      const int64_t lshape[2] = {(int64_t)book.n, book.vocab};
      snprintf(file, sizeof(file), "%s/step_logits.npy", o->out_dir);
      if (npy_write(file, "<f4", lshape, 2, book.rows, sizeof(float), err, sizeof(err))) die("%s", err);
      printf("logits of each step's last position -> %s\n", file);
    }
  }

  for (size_t i = 0; i < d.n_in; i++) {
    if (s.past[i]) g_ort->ReleaseValue(s.past[i]);
    alloc->Free(alloc, d.in[i].name);
  }
  for (size_t k = 0; k < d.n_out; k++) alloc->Free(alloc, d.out_names[k]);
  for (int k = 0; k < 3; k++) free(s.scratch[k]);
  free(book.rows);
  free(new_ids);
  free(outs);
  free(s.past);
  free(s.pos);
  free(s.mask);
  free(s.tokens);
  free(d.in);
  free(d.out_names);
  g_ort->ReleaseMemoryInfo(s.mem);
}
