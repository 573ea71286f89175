/* Run-time kernel choice: probe the CPU once, walk the architecture's ISA ladder from the top.
 * INT4ONNX_ISA=<isa> caps the ladder (for tests and for working around a suspect kernel). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#if defined(__aarch64__) || defined(__arm__)
#include <sys/auxv.h>
/* Linux's hwcap bits (arch/arm64/include/uapi/asm/hwcap.h, arch/arm/include/uapi/asm/hwcap.h), spelled
 * out for C libraries whose <sys/auxv.h> does not define them. */
#if defined(__aarch64__)
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#else
#ifndef HWCAP_NEON
#define HWCAP_NEON (1UL << 12)
#endif
#endif
#endif

/* ISA ladder, weakest first. A kernel's isa must be one of these names. */
#if defined(__x86_64__) || defined(_M_X64)
static const char *const kLadder[] = {"scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "amx"};
#elif defined(__aarch64__)
static const char *const kLadder[] = {"scalar", "neon", "neondot", "i8mm"};
#elif defined(__arm__)
static const char *const kLadder[] = {"scalar", "neon"};
#else
static const char *const kLadder[] = {"scalar"};
#endif
#define LADDER_LEN (sizeof(kLadder) / sizeof(kLadder[0]))

static const i4o_kernel *const kKernels[] = {
    &i4o_kernel_scalar_fp32,
    &i4o_kernel_scalar_int8,
#if defined(__x86_64__) || defined(_M_X64)
    &i4o_kernel_avx2_fp32,
    &i4o_kernel_avx2_int8,
    &i4o_kernel_avxvnni_int8,
    &i4o_kernel_avx512_fp32,
    &i4o_kernel_avx512vnni_int8,
    &i4o_kernel_amx_fp32,
#endif
#if defined(I4O_ARM_NEON_KERNELS)
    &i4o_kernel_neon_fp32,
    &i4o_kernel_neon_int8,
#endif
#if defined(__aarch64__)
    &i4o_kernel_neondot_int8,
    &i4o_kernel_i8mm_int8,
#endif
};

const i4o_kernel *const *i4o_all_kernels(size_t *count) {
  *count = sizeof(kKernels) / sizeof(kKernels[0]);
  return kKernels;
}

static int isa_rank(const char *isa) {
  for (size_t i = 0; i < LADDER_LEN; i++)
    if (strcmp(kLadder[i], isa) == 0) return (int)i;
  return -1;
}

#if defined(__x86_64__) || defined(_M_X64)
/* AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22), tile state enabled by the OS (XCR0 bits 17
 * and 18), and this process allowed to use it: Linux hands out the 8 KiB of tile state per thread only
 * after ARCH_REQ_XCOMP_PERM (arch_prctl 0x1023, feature 18 = XTILEDATA; Linux 5.16 and later). */
static int amx_bf16_usable(void) {
#if defined(I4O_AMX_EMULATE)
  return 1;
#elif defined(__linux__)
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 24 & 1) || !(d >> 22 & 1)) return 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1)) return 0; /* OSXSAVE: xgetbv is there */
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo >> 17 & 3) != 3) return 0;
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return 0;
#endif
}
#endif

static int probe_isa(const char *isa) {
  if (strcmp(isa, "scalar") == 0) return 1;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (strcmp(isa, "avx2") == 0) return avx2;
  if (strcmp(isa, "avxvnni") == 0) return avx2 && __builtin_cpu_supports("avxvnni");
  const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl");
  if (strcmp(isa, "avx512") == 0) return avx512;
  const int vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  if (strcmp(isa, "avx512vnni") == 0) return vnni;
  if (strcmp(isa, "amx") == 0) return vnni && amx_bf16_usable();
#elif defined(__aarch64__)
  /* each rung needs the ones below it: the kernels of a rung may use the instructions of lower rungs */
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  const int neon = (hw & HWCAP_ASIMD) != 0, dot = neon && (hw & HWCAP_ASIMDDP) != 0;
  if (strcmp(isa, "neon") == 0) return neon;
  if (strcmp(isa, "neondot") == 0) return dot;
  if (strcmp(isa, "i8mm") == 0) return dot && (hw2 & HWCAP2_I8MM) != 0;
#elif defined(__arm__)
  if (strcmp(isa, "neon") == 0) return (getauxval(AT_HWCAP) & HWCAP_NEON) != 0;
#endif
  return 0;
}

int i4o_cpu_has_isa(const char *isa) {
  static int cache[LADDER_LEN]; /* 0 unknown, 1 yes, 2 no; benign race */
  const int r = isa_rank(isa);
  if (r < 0) return 0;
  if (!cache[r]) cache[r] = probe_isa(isa) ? 1 : 2;
  return cache[r] == 1;
}

const i4o_kernel *i4o_find_kernel(const char *name) {
  size_t n;
  const i4o_kernel *const *all = i4o_all_kernels(&n);
  for (size_t i = 0; i < n; i++)
    if (strcmp(all[i]->name, name) == 0) return all[i];
  return NULL;
}

const i4o_kernel *i4o_choose_kernel(int compute, const i4o_wdesc *w, char *err, size_t err_len) {
  int cap = (int)LADDER_LEN - 1;
  const char *forced = getenv("INT4ONNX_ISA");
  if (forced && *forced) {
    cap = isa_rank(forced);
    if (cap < 0) {
      if (err) snprintf(err, err_len, "INT4ONNX_ISA=%s is not an ISA of this build (%s)", forced, i4o_kernels_available());
      return NULL;
    }
    if (!i4o_cpu_has_isa(forced)) {
      if (err) snprintf(err, err_len, "INT4ONNX_ISA=%s: this CPU does not support it", forced);
      return NULL;
    }
  }
  size_t n;
  const i4o_kernel *const *all = i4o_all_kernels(&n);
  const i4o_kernel *best = NULL;
  int best_rank = -1;
  for (size_t i = 0; i < n; i++) {
    const i4o_kernel *k = all[i];
    const int r = isa_rank(k->isa);
    if (k->compute != compute || r < 0 || r > cap || r <= best_rank) continue;
    if (!i4o_cpu_has_isa(k->isa)) continue;
    if (w && !i4o_kernel_supports(k, w)) continue;
    best = k;
    best_rank = r;
  }
  if (!best && err) snprintf(err, err_len, "no kernel for compute mode %d", compute);
  return best;
}

const char *i4o_kernels_available(void) {
  static char buf[512]; /* built once; identical content on every call */
  if (!buf[0]) {
    char tmp[512] = "";
    size_t n;
    const i4o_kernel *const *all = i4o_all_kernels(&n);
    for (size_t r = 0; r < LADDER_LEN; r++)
      for (size_t i = 0; i < n; i++) {
        if (isa_rank(all[i]->isa) != (int)r || !i4o_cpu_has_isa(all[i]->isa)) continue;
        if (tmp[0]) strncat(tmp, ",", sizeof(tmp) - strlen(tmp) - 1);
        strncat(tmp, all[i]->name, sizeof(tmp) - strlen(tmp) - 1);
      }
    memcpy(buf, tmp, sizeof(buf));
  }
  return buf;
}

const char *i4o_kernel_selected(int compute) {
  const i4o_kernel *k = i4o_choose_kernel(compute, NULL, NULL, 0);
  return k ? k->name : "";
}
