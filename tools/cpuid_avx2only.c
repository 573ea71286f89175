/* LD_PRELOAD library that makes a process see an AVX2-only x86-64 CPU (Zen 2/3, Skylake-class): the
 * CPUID bits of AVX-512 (all its subsets), AVX512-VNNI, AVX-VNNI, AVX-IFMA, AVX-VNNI-INT8 and AMX read as
 * 0, so a library that picks its kernels from CPUID (ONNX Runtime's MLAS, int4onnx's dispatch, ggml)
 * takes its AVX2 paths on a newer CPU. tools/bench_matmul.py --avx2-only builds and uses it.
 *
 * It needs CPUID faulting (Linux arch_prctl ARCH_SET_CPUID; not every CPU, kernel or VM offers it):
 * with faulting on, every CPUID instruction of the process
 * raises SIGSEGV; the handler runs CPUID itself with faulting briefly off, clears the bits, and steps
 * over the instruction. Where faulting is missing it prints one line and exits with status 3 at load.
 *
 *   cc -O2 -shared -fPIC -o /tmp/cpuid_avx2only.so tools/cpuid_avx2only.c
 *   LD_PRELOAD=/tmp/cpuid_avx2only.so python tools/bench_matmul.py ...
 *
 * Limits: XGETBV (the OS's register-state mask) cannot be trapped, so code that tests XCR0 alone still
 * sees the AVX-512 state; a child process inherits the faulting (and LD_PRELOAD) and is covered too.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

/* leaf 7, subleaf 0 */
static const unsigned kHide70Ebx = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) |
                                   BIT(31);                                 /* AVX512 F DQ IFMA PF ER CD BW VL */
static const unsigned kHide70Ecx = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14); /* VBMI VBMI2 VNNI BITALG VPOPCNTDQ */
static const unsigned kHide70Edx = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) |
                                   BIT(25); /* 4VNNIW 4FMAPS VP2INTERSECT AMX-BF16 AVX512-FP16 AMX-TILE AMX-INT8 */
/* leaf 7, subleaf 1 */
static const unsigned kHide71Eax = BIT(4) | BIT(5) | BIT(21) | BIT(23); /* AVX-VNNI AVX512-BF16 AMX-FP16 AVX-IFMA */
static const unsigned kHide71Edx = BIT(4) | BIT(5) | BIT(8) | BIT(10) | BIT(19); /* AVX-VNNI-INT8 AVX-NE-CONVERT
                                                                        AMX-COMPLEX AVX-VNNI-INT16 AVX10 */

static int set_faulting(int on) { return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void on_cpuid_fault(int sig, siginfo_t *info, void *ctx) {
  ucontext_t *uc = (ucontext_t *)ctx;
  greg_t *r = uc->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)r[REG_RIP];
  if (ip[0] != 0x0F || ip[1] != 0xA2) { /* not CPUID: a real fault, let it kill the process as it would */
    signal(SIGSEGV, SIG_DFL);
    return;
  }
  const unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX];
  unsigned a, b, c, d;
  set_faulting(0);
  __cpuid_count(leaf, sub, a, b, c, d);
  set_faulting(1);
  if (leaf == 7 && sub == 0) {
    b &= ~kHide70Ebx;
    c &= ~kHide70Ecx;
    d &= ~kHide70Edx;
  } else if (leaf == 7 && sub == 1) {
    a &= ~kHide71Eax;
    d &= ~kHide71Edx;
  }
  r[REG_RAX] = a;
  r[REG_RBX] = b;
  r[REG_RCX] = c;
  r[REG_RDX] = d;
  r[REG_RIP] += 2; /* CPUID is 0F A2 */
}

__attribute__((constructor)) static void cpuid_avx2only_init(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_cpuid_fault;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);
  if (set_faulting(1) != 0) {
    fprintf(stderr, "cpuid_avx2only: this kernel or CPU has no CPUID faulting (arch_prctl ARCH_SET_CPUID)\n");
    _exit(3);
  }
}
