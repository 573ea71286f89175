/* What int4onnx_run.c and generate.c share: the C API table, one-line errors, a clock, folders. */
#ifndef INT4ONNX_EXAMPLE_APP_H_
#define INT4ONNX_EXAMPLE_APP_H_

#include <stddef.h>
#include <stdint.h>

#include "onnxruntime_c_api.h"

extern const OrtApi *g_ort;

/* Prints "int4onnx_run: <message>" on one line and exits with status 1. */
__attribute__((format(printf, 1, 2), noreturn)) void die(const char *fmt, ...);
/* Every OrtStatus is checked: NULL means success, anything else dies with "<what>: <ORT's message>". */
void check(OrtStatus *st, const char *what);
double now_ms(void);
/* mkdir -p; dies with the reason when a component cannot be created or is not a folder. */
void make_dirs(const char *path);
/* "[1, 3, 0, 64]" */
void shape_str(const int64_t *d, size_t n, char *out, size_t len);

typedef struct gen_options {
  const int64_t *prompt; /* token ids (tokenisation happens outside C) */
  size_t n_prompt;
  int max_new_tokens;
  const int64_t *eos; /* stop ids (not emitted) */
  size_t n_eos;
  const char *out_dir; /* NULL: print only; else generated_ids.npy (and step_logits.npy) go there */
  int save_logits;
} gen_options;

/* Greedy decoding with the KV cache on an optimum-style decoder (generate.c). */
void generate(OrtSession *sess, const gen_options *o);

#endif
