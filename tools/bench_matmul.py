"""MatMul benchmark: fp32 MatMul vs ONNX Runtime's MatMulNBits vs int4onnx's MatMulInt4 (vs ggml), in one process.

Each case is a chain of L MatMuls [K, N] (x -> x @ W1 -> ... -> x @ WL) built in code:
  dram   L x 4096 x 4096, L sized from this machine: int4 weights >= 4x the last-level cache (sysfs),
         at least 16 layers (168 MB), capped by the memory available (--dram-layers overrides)
  cache  4 x 1024 x 1024 (int4 weights 2.6 MB, fp32 16.8 MB: resident in L2/L3)
Every row says where its weights were read from: "DRAM" (>= 4x the LLC), "cache" (<= the LLC), "mixed".
All variants compute with the very same quantized weights: random 4-bit codes, block 32, symmetric,
float32 scales; the fp32 model holds those weights dequantized, MatMulNBits and MatMulInt4 the same
packed bytes (the layouts are byte-identical). Variants:
  fp32        onnx MatMul, float32 weights (MLAS SGEMM)
  nbits_acc0  com.microsoft.MatMulNBits, accuracy_level 0 (float activations)
  nbits_acc4  com.microsoft.MatMulNBits, accuracy_level 4 (int8 activations)
  i4o_fp32    com.int4onnx.MatMulInt4, compute "fp32"
  i4o_int8    com.int4onnx.MatMulInt4, compute "int8"
With --ggml PREFIX (a ggml build, tools/build_ggml.sh), ggml's CPU backend, i.e. llama.cpp's kernels, through
tools/ggml_chain.c (one process per variant holding the weights; same sizes and distribution, own random
values, float16 scales as Q4_0 has; each round timed inside that process):
  ggml_q4_0      q4_0 weights in ggml-cpu's CPU_REPACK buffer (what llama.cpp runs on x86 without AMX)
  ggml_q4_0_amx  q4_0 weights in the AMX buffer (llama.cpp's choice where the CPU has AMX; left out elsewhere)
  ggml_f32       the same weights dequantized, plain CPU buffer (only when named in --variants)
  ggml_q4_0_passive  ggml_q4_0 with OMP_WAIT_POLICY=passive: its threads sleep at once instead of spinning
                 (only when named; for machines whose cores are shared, where spinning threads wait for
                 preempted ones)
Scale-storage variants (--variants; not in the default run): i4o_fp32_f16 / i4o_int8_f16 store the
scales as float16 (--scale-dtype float16: the weights differ by that rounding), i4o_fp32_dq /
i4o_int8_dq as int8 with a float32 super-scale per column (--double-quant); the op widens both at
session start, so this measures whether the stored type changes anything at run time.
Every round runs each variant once, in turn (int4onnx.tools.bench.time_alternating); medians per variant.
ONNX Runtime's thread spinning is off for every variant (--spin keeps it on; see int4onnx/tools/bench.py); ggml
keeps its OpenMP threads' default spinning, and the benchmark waits 50 ms (untimed) after each ggml round so
they are asleep before the next variant runs; with --spin every sample is the median of 10 calls back to back (as
an application decodes; --burst sets the count), followed by that wait, for every variant. A burst of 10 after
the wait is decode right after a pause (the threads have fallen asleep); a burst of a few hundred is steady
decode, which can rank the variants differently (docs/performance.md, "How a chain is timed"). Spinning matters for
short ops: per-op thread wake-up then dominates (cache case on the 16-core Xeon, 4 threads: i4o_int8 80 us per
1024x1024 layer without spinning, 14.5 us with it).
Reported per variant: median ms per chain, effective weight GB/s (bytes of the weights as stored --
codes + scales, or fp32 -- divided by the time), GFLOP/s (2*M*K*N*L / time); per M the speed-ups
i4o_int8/nbits_acc4, i4o_fp32/nbits_acc0, i4o_*/fp32 and i4o_int8/ggml_* (peer median / our median);
and, per thread count, the stream read bandwidth of a buffer >= 4x the LLC (tools/stream_read.c): the
physical limit of the weight GB/s in the DRAM regime.

    python tools/bench_matmul.py                                 # 2 threads (or all cores), both cases
    python tools/bench_matmul.py --threads 1,2,4,8,16 --m 1,128 --case dram --json scaling.json
    tools/build_ggml.sh ~/src/ggml /tmp/ggml-build               # prints /tmp/ggml-build/install
    python tools/bench_matmul.py --ggml /tmp/ggml-build/install --m 1,16,128,512 --threads 1,2
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import int4onnx
from int4onnx import _native
from int4onnx.runtime import make_session
from int4onnx.tools.bench import NO_SPIN, SPIN, SelfTimed, time_alternating

SPIN_BURST = 10  # with --spin, calls per sample back to back (then one settle wait): spinning between calls counts
SETTLE_S = 0.05  # untimed wait after a variant whose threads spin on after its run (ggml always; ONNX Runtime with --spin)
CASES = {"dram": (4096, 4096, 16), "cache": (1024, 1024, 4)}  # dram: at least 16 layers, more if the LLC asks
VARIANTS = ("fp32", "nbits_acc0", "nbits_acc4", "i4o_fp32", "i4o_int8")
# ggml's CPU backend through tools/ggml_chain.c (--ggml): weight type, buffer type, environment
PASSIVE = {"OMP_WAIT_POLICY": "passive"}
GGML_VARIANTS = {"ggml_q4_0": ("q4_0", "repack", {}), "ggml_q4_0_amx": ("q4_0", "amx", {}),
                 "ggml_f32": ("f32", "cpu", {}), "ggml_q4_0_passive": ("q4_0", "repack", PASSIVE)}
TOOLS = os.path.dirname(os.path.abspath(__file__))
SCALE_VARIANTS = ("i4o_fp32_f16", "i4o_int8_f16", "i4o_fp32_dq", "i4o_int8_dq")  # scales stored as float16 / int8
OWN_VARIANTS = ("i4o_fp32_own", "i4o_int8_own")  # the op on the library's own threads (make_session's op_threads)
NAMED_VARIANTS = SCALE_VARIANTS + OWN_VARIANTS  # ONNX Runtime variants run only when named
BLOCK = 32
OPSET = 17


def make_weights(K: int, N: int, layers: int, seed: int = 0):
    """Per layer: packed codes [N, nb, 16] (random 4-bit codes) and float32 scales [N, nb] chosen so that
    activations keep unit variance along the chain (codes - 8 have standard deviation ~4.6)."""
    rng = np.random.default_rng(seed)
    nb = _native.n_blocks(K, BLOCK)
    out = []
    for _ in range(layers):
        packed = rng.integers(0, 256, size=(N, nb, _native.blob_bytes(4, BLOCK)), dtype=np.uint8)
        scales = (rng.uniform(0.5, 1.5, size=(N, nb)) / (4.6 * np.sqrt(K))).astype(np.float32)
        out.append((packed, scales))
    return out


def _model(nodes, inits, K, N, opsets):
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)] + opsets)
    model.ir_version = 10
    return model


def chain_model(variant: str, weights, K: int, N: int) -> onnx.ModelProto:
    nodes, inits, cur = [], [], "x"
    opsets = []
    for i, (packed, scales) in enumerate(weights):
        out = "y" if i == len(weights) - 1 else f"h{i}"
        if variant == "fp32":
            W = _native.dequantize(packed, scales, None, K, N, 4, BLOCK)
            inits.append(numpy_helper.from_array(W, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [out], name=f"mm{i}"))
        else:
            inputs = [cur, f"b{i}", f"s{i}"]
            if variant.endswith("_f16"):
                scales = scales.astype(np.float16)
            elif variant.endswith("_dq"):  # int8 codes times the column's largest scale / 127
                super_scale = (scales.max(axis=1) / 127).astype(np.float32)
                scales = np.clip(np.rint(scales / super_scale[:, None]), 1, 127).astype(np.int8)
                inits.append(numpy_helper.from_array(super_scale, f"ss{i}"))
                inputs = _native.op_inputs(A=cur, B=f"b{i}", scales=f"s{i}", zero_points="", bias="",
                                           scales_scale=f"ss{i}")
            inits += [numpy_helper.from_array(packed, f"b{i}"), numpy_helper.from_array(scales, f"s{i}")]
            if variant.startswith("nbits"):
                nodes.append(helper.make_node("MatMulNBits", [cur, f"b{i}", f"s{i}"], [out], name=f"mm{i}",
                                              domain="com.microsoft", K=K, N=N, bits=4, block_size=BLOCK,
                                              accuracy_level=int(variant[-1])))
            else:
                nodes.append(helper.make_node(_native.OP_NAME, inputs, [out], name=f"mm{i}",
                                              domain=_native.DOMAIN, K=K, N=N, bits=4, block_size=BLOCK,
                                              compute=variant.split("_")[1]))
        cur = out
    if variant.startswith("nbits"):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    elif variant.startswith("i4o"):
        opsets.append(helper.make_opsetid(_native.DOMAIN, 1))
    return _model(nodes, inits, K, N, opsets)


def weight_bytes(variant: str, K: int, N: int, layers: int) -> int:
    """Bytes of the weights as stored: fp32, codes + float32 scales (ONNX), or q4_0 (codes + float16 scales)."""
    if variant in ("fp32", "ggml_f32"):
        return K * N * 4 * layers
    nb = _native.n_blocks(K, BLOCK)
    if variant.startswith("ggml") or variant.endswith("_f16"):
        scale_bytes = N * nb * 2
    elif variant.endswith("_dq"):
        scale_bytes = N * nb + 4 * N  # int8 scales and a float32 super-scale per column
    else:
        scale_bytes = N * nb * 4
    return (N * nb * _native.blob_bytes(4, BLOCK) + scale_bytes) * layers


# ---- the machine: last-level cache, memory, read bandwidth -------------------------------------------


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMGB") or 0) * mult


def llc_bytes() -> tuple[int, str]:
    """Total last-level cache of the machine (size of the highest-level cache of cpu0 times its instances,
    from sysfs; os.sysconf's L3 or L2 size where sysfs has nothing) and a description."""
    best = None
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(f"{d}/level") as f:
                level = int(f.read())
            with open(f"{d}/type") as f:
                kind = f.read().strip()
            with open(f"{d}/size") as f:
                size = _parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size and (best is None or level > best[0]):
            best = (level, size, os.path.basename(d))
    if best:
        level, size, index = best
        shared = set()
        for f in glob.glob(f"/sys/devices/system/cpu/cpu*/cache/{index}/shared_cpu_list"):
            try:
                with open(f) as fh:
                    shared.add(fh.read().strip())
            except OSError:
                pass
        n = max(1, len(shared))
        return size * n, f"L{level} {size / 2**20:g} MiB x {n} (sysfs)"
    for name, level in (("SC_LEVEL3_CACHE_SIZE", 3), ("SC_LEVEL2_CACHE_SIZE", 2)):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError):
            size = 0
        if size and size > 0:
            return size, f"L{level} {size / 2**20:g} MiB (sysconf)"
    return 32 << 20, "unknown, 32 MiB assumed"


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def regime(nbytes: int, llc: int) -> str:
    """What a chain reading `nbytes` of weights per run measures on a machine with `llc` bytes of LLC."""
    if nbytes >= 4 * llc:
        return "DRAM"
    return "cache" if nbytes <= llc else "mixed"


# resident bytes per byte of stored weights while a variant's session lives (ONNX Runtime keeps the
# initializers and a prepacked copy; tools/session_memory.py), plus the model being built
MEM_FACTOR = {"fp32": 2.5, "nbits_acc0": 3.0, "nbits_acc4": 3.0, "i4o_fp32": 3.0, "i4o_int8": 3.0,
              **{v: 3.0 for v in NAMED_VARIANTS}, **{v: 1.2 for v in GGML_VARIANTS}}


def dram_layers(llc: int, variants, available: int, log=print) -> int:
    """Layers of the 4096 x 4096 DRAM chain: int4 weights >= 4x the LLC (at least 16 layers), capped so that
    every variant's session fits in 60 % of the available memory."""
    K, N, L0 = CASES["dram"]
    layers = max(L0, math.ceil(4 * llc / weight_bytes("i4o_int8", K, N, 1)))
    per_layer = sum(MEM_FACTOR[v] * weight_bytes(v, K, N, 1) for v in variants)
    cap = max(1, int(0.6 * available // per_layer))
    if cap < layers:
        log(f"dram case: {layers} layers would make the int4 weights 4x the LLC, but the variants' sessions "
            f"fit {cap} layers in memory: using {cap} (fewer variants fit more)")
        layers = cap
    return layers


def _compiler() -> str | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return cc if cc and shutil.which(cc) else None


def stream_bandwidth(workdir: str, nbytes: int, threads: int, rounds: int = 10) -> dict | None:
    """Read bandwidth with `threads` threads over `nbytes` (tools/stream_read.c, compiled once into `workdir`);
    None (and why, on stderr) when there is no C compiler with OpenMP."""
    exe = os.path.join(workdir, "stream_read")
    if not os.path.exists(exe):
        cc = _compiler()
        if cc is None:
            print("stream read bandwidth: not measured (no C compiler; set CC)", file=sys.stderr)
            return None
        r = subprocess.run([cc, "-O3", "-march=native", "-fopenmp", os.path.join(TOOLS, "stream_read.c"), "-o", exe],
                           capture_output=True, text=True)
        if r.returncode:
            print(f"stream read bandwidth: not measured ({cc} failed: {r.stderr.strip()[:200]})", file=sys.stderr)
            return None
    r = subprocess.run([exe, str(nbytes), str(threads), str(rounds)], capture_output=True, text=True)
    if r.returncode:
        print(f"stream read bandwidth: not measured ({r.stderr.strip()[:200]})", file=sys.stderr)
        return None
    return json.loads(r.stdout)


# ---- ggml's CPU backend (--ggml) ---------------------------------------------------------------------


class GgmlError(RuntimeError):
    pass


def _ggml_paths(root: str) -> tuple[str, str]:
    """(include dir, library dir) of a ggml install prefix (tools/build_ggml.sh prints one) or build folder."""
    inc = os.path.join(root, "include")
    if not os.path.exists(os.path.join(inc, "ggml-cpu.h")):
        inc = None
        cache = os.path.join(root, "CMakeCache.txt")
        if os.path.exists(cache):
            with open(cache) as f:
                for line in f:
                    if line.startswith(("ggml_SOURCE_DIR:", "CMAKE_HOME_DIRECTORY:")):
                        src = line.split("=", 1)[1].strip()
                        for cand in (os.path.join(src, "include"), os.path.join(src, "ggml", "include")):
                            if os.path.exists(os.path.join(cand, "ggml-cpu.h")):
                                inc = cand
    libs = sorted(glob.glob(os.path.join(root, "**", "libggml-base.*"), recursive=True), key=len)
    if inc is None or not libs:
        raise GgmlError(f"--ggml {root}: not a ggml build or install prefix (need include/ggml-cpu.h and "
                        "libggml-base; tools/build_ggml.sh SRC BUILD prints the prefix to pass)")
    return inc, os.path.dirname(libs[0])


def build_ggml_chain(root: str, workdir: str) -> str:
    """Compile tools/ggml_chain.c against the ggml at `root` into `workdir`; the executable's path."""
    inc, lib = _ggml_paths(root)
    cc = _compiler()
    if cc is None:
        raise GgmlError("--ggml needs a C compiler (cc, or set CC)")
    exe = os.path.join(workdir, "ggml_chain")
    cmd = [cc, "-O2", "-std=c11", os.path.join(TOOLS, "ggml_chain.c"), f"-I{inc}", f"-L{lib}", f"-Wl,-rpath,{lib}",
           "-lggml", "-lggml-cpu", "-lggml-base", "-lm", "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise GgmlError(f"cannot compile tools/ggml_chain.c against {root}: {r.stderr.strip()[:500]}")
    return exe


def ggml_list(exe: str) -> dict:
    return json.loads(subprocess.run([exe, "--list"], capture_output=True, text=True, check=True).stdout)


class GgmlChain:
    """A ggml_chain process holding one chain's weights (loaded, and repacked, once); each `run(M)` times
    one round inside the process and returns it as SelfTimed, so the pipe's round trip is not counted."""

    def __init__(self, exe: str, variant: str, K: int, N: int, L: int, threads: int):
        wtype, buft, extra_env = GGML_VARIANTS[variant]
        env = {**os.environ, **extra_env}
        # ggml (OpenMP) keeps its threads spinning for a while after each graph, as llama.cpp runs it;
        # let them fall asleep (outside the timed part) before the next variant runs. 5 ms was not
        # enough on a 16-core Xeon (i4o_int8 at M = 1 on 16 threads: 2.88 ms after 5 ms, 2.09 ms after 50 ms)
        self.settle = SETTLE_S
        self.proc = subprocess.Popen([exe, "--k", str(K), "--n", str(N), "--layers", str(L), "--threads", str(threads),
                                      "--type", wtype, "--buft", buft], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.variant = variant
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise GgmlError(f"{self.variant}: ggml_chain exited with status {self.proc.wait()}")
        out = json.loads(line)
        if "error" in out:
            raise GgmlError(f"{self.variant}: {out['error']}")
        return out

    def _cmd(self, text: str) -> dict:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, M: int, burst: int = 1) -> SelfTimed:
        """`burst` rounds back to back in the process; their median, then the settle wait."""
        out = self._cmd(f"run {M} {burst}")
        if self.settle:
            time.sleep(self.settle)
        return SelfTimed(out["median_ms"] / 1e3)

    def check(self, M: int) -> float:
        return self._cmd(f"check {M}")["rel_err"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait(timeout=60)


def run_case(case: str, threads: int, ms: list[int], repeats: int, variants, log=print, spin: bool = False,
             layers: int | None = None, ggml_exe: str | None = None, llc: int | None = None,
             optional=(), burst: int = SPIN_BURST) -> list[dict]:
    """Time `variants` on one case (ONNX Runtime sessions and, with `ggml_exe`, ggml_chain processes) for every M,
    alternating per round. `layers` overrides the case's chain length; `llc` (bytes) labels each row's regime;
    ggml variants in `optional` are left out (with a message) when ggml cannot run them."""
    K, N, L = CASES[case]
    L = layers or L
    ort_variants = [v for v in variants if v in VARIANTS or v in NAMED_VARIANTS]
    runners_ggml = {}
    try:
        for v in list(variants):
            if v in GGML_VARIANTS:
                if ggml_exe is None:
                    raise GgmlError(f"{v} needs --ggml")
                try:
                    runners_ggml[v] = GgmlChain(ggml_exe, v, K, N, L, threads)
                    err = runners_ggml[v].check(1)
                except GgmlError as exc:
                    if v not in optional:
                        raise
                    log(f"left out: {exc}")
                    if v in runners_ggml:
                        runners_ggml.pop(v).close()
                    variants = [u for u in variants if u != v]
                    continue
                if err is None or not err < 0.1:
                    raise GgmlError(f"{v}: output does not match the float64 reference (rel. err {err})")
                log(f"{v}: weights in ggml's {runners_ggml[v].info['buft']} buffer "
                    f"({runners_ggml[v].info['weight_bytes'] / 1e6:.1f} MB, loaded in {runners_ggml[v].info['load_s']:.1f} s); "
                    f"M = 1 output vs a float64 chain with the same weights: rel. err {err:.1e}")
        weights = make_weights(K, N, L, seed=1) if ort_variants else None
        sessions = {}
        for v in ort_variants:
            sessions[v] = _session(chain_model(v, weights, K, N), threads, spin, own=v in OWN_VARIANTS)
        del weights
        rows = []
        calls = burst if spin else 1  # calls per sample
        rng = np.random.default_rng(2)
        for M in ms:
            x = rng.standard_normal((M, K)).astype(np.float32)
            feeds = {"x": x}
            outs = {v: s.run(None, feeds)[0] for v, s in sessions.items()}
            ref = outs.get("fp32")
            runners = {v: (_settled(lambda s=s, f=feeds: s.run(None, f), calls) if spin else (lambda s=s, f=feeds: s.run(None, f)))
                       for v, s in sessions.items()}
            runners.update({v: (lambda g=g, m=M, b=calls: g.run(m, b)) for v, g in runners_ggml.items()})
            runners = {v: runners[v] for v in variants}
            # short chains get more rounds so that every variant runs at least ~0.5 s in total (not with --spin:
            # there every round sleeps SETTLE_S per variant, and a burst already gives each sample its length)
            timings = time_alternating(runners, repeats=repeats, warmup=2, min_seconds=0 if spin else 0.5)
            flops = 2.0 * M * K * N * L
            for v in variants:
                t = timings[v].median
                err = None
                if ref is not None and v in outs and v != "fp32":
                    err = float(np.linalg.norm(outs[v] - ref) / np.linalg.norm(ref))
                nbytes = weight_bytes(v, K, N, L)
                rows.append({"case": case, "K": K, "N": N, "layers": L, "threads": threads, "M": M, "variant": v,
                             "median_ms": t * 1e3, "best_ms": timings[v].best * 1e3, "rounds": len(timings[v].seconds),
                             "us_per_layer": t * 1e6 / L, "weight_bytes": nbytes, "weight_GBps": nbytes / t / 1e9,
                             "GFLOPs": flops / t / 1e9, "rel_err_vs_fp32": err, "burst": calls,
                             "regime": regime(nbytes, llc) if llc else None})
            log(format_block([r for r in rows if r["M"] == M]))
        return rows
    finally:
        for g in runners_ggml.values():
            g.close()


def _settled(fn, burst: int = 1):
    """`burst` calls of fn back to back, timed one by one (their median is the sample), then SETTLE_S untimed:
    with --spin each session's threads spin on after its run and would take the cores from the next variant (on
    a 16-core Xeon ggml's 8-thread chain took 10.9 ms instead of ~0.2 ms right after spinning ONNX Runtime
    sessions); within a burst they spin between the chain's MatMuls and between calls, as in an application
    decoding token after token (ggml's rounds run the same way: `GgmlChain.run(M, burst)`)."""
    def run() -> SelfTimed:
        times = []
        for _ in range(burst):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        time.sleep(SETTLE_S)
        return SelfTimed(float(np.median(times)))
    return run


def _session(model: onnx.ModelProto, threads: int, spin: bool, own: bool = False):
    """A session of `model`; models past protobuf's 2 GB limit go through a temporary file with external data.
    own: the op on `threads` of the library's own threads, the rest of the graph on one (1 thread: ONNX
    Runtime's pool, there is nothing to share)."""
    config = SPIN if spin else NO_SPIN
    kw = {"op_threads": threads} if own and threads > 1 else {"threads": threads}
    if sum(t.ByteSize() for t in model.graph.initializer) < 1_800_000_000:
        return make_session(model.SerializeToString(), config=config, **kw)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chain.onnx")
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="chain.bin")
        return make_session(path, config=config, **kw)


def _get(rows, v):
    for r in rows:
        if r["variant"] == v:
            return r
    return None


RATIOS = {"int8/acc4": ("i4o_int8", "nbits_acc4"), "fp32/acc0": ("i4o_fp32", "nbits_acc0"),
          "int8/fp32MM": ("i4o_int8", "fp32"), "fp32/fp32MM": ("i4o_fp32", "fp32"),
          "int8/ggml": ("i4o_int8", "ggml_q4_0"), "int8/ggml_amx": ("i4o_int8", "ggml_q4_0_amx"),
          "int8/ggml_passive": ("i4o_int8", "ggml_q4_0_passive"),
          "ggml_f32/fp32MM": ("ggml_f32", "fp32"),
          # the same kernels with scales stored as float16 or int8, against float32 scales
          "int8_f16/int8": ("i4o_int8_f16", "i4o_int8"), "int8_dq/int8": ("i4o_int8_dq", "i4o_int8"),
          "fp32_f16/fp32": ("i4o_fp32_f16", "i4o_fp32"), "fp32_dq/fp32": ("i4o_fp32_dq", "i4o_fp32"),
          # the op on its own threads
          "int8own/ggml": ("i4o_int8_own", "ggml_q4_0"), "int8own/int8": ("i4o_int8_own", "i4o_int8"),
          "fp32own/fp32": ("i4o_fp32_own", "i4o_fp32")}


def ratios(rows_m: list[dict]) -> dict[str, float]:
    """Speed-ups (peer median / our median) for one (case, threads, M)."""
    out = {}
    for label, (ours, peer) in RATIOS.items():
        a, b = _get(rows_m, ours), _get(rows_m, peer)
        if a and b:
            out[label] = b["median_ms"] / a["median_ms"]
    return out


def format_block(rows_m: list[dict]) -> str:
    r0 = rows_m[0]
    head = f"{r0['case']} {r0['layers']}x{r0['K']}x{r0['N']}, M={r0['M']}, {r0['threads']} thread(s)"
    lines = [head, f"  {'variant':<17} {'median ms':>10} {'us/layer':>9} {'weight GB/s':>11} {'GFLOP/s':>8} {'rel.err':>8}"
                   f"  weights"]
    for r in rows_m:
        err = f"{r['rel_err_vs_fp32']:.1e}" if r["rel_err_vs_fp32"] is not None else ""
        where = f"{r['weight_bytes'] / 1e6:.0f} MB" + (f", {r['regime']}" if r.get("regime") else "")
        lines.append(f"  {r['variant']:<17} {r['median_ms']:>10.3f} {r['us_per_layer']:>9.1f} {r['weight_GBps']:>11.1f} "
                     f"{r['GFLOPs']:>8.1f} {err:>8}  {where}")
    rs = ratios(rows_m)
    if rs:
        lines.append("  speed-up: " + ", ".join(f"{k} {v:.2f}x" for k, v in rs.items()))
    return "\n".join(lines)


def markdown(rows: list[dict], stream: dict | None = None) -> str:
    """One table per (case, threads): M down, medians and speed-ups across; `stream`: {threads: stream_read result}."""
    out = []
    if stream:
        out.append("Stream read bandwidth (tools/stream_read.c): " + ", ".join(
            f"{t} thread(s) {r['median_GBps']:.1f} GB/s" for t, r in sorted(stream.items())) + "\n")
    keys = sorted({(r["case"], r["threads"]) for r in rows}, key=lambda k: (list(CASES).index(k[0]), k[1]))
    for case, threads in keys:
        sel = [r for r in rows if r["case"] == case and r["threads"] == threads]
        K, N, L = sel[0]["K"], sel[0]["N"], sel[0]["layers"]
        variants = [v for v in (*VARIANTS, *NAMED_VARIANTS, *GGML_VARIANTS) if any(r["variant"] == v for r in sel)]
        where = {v: r["regime"] for v in variants for r in [_get(sel, v)] if r.get("regime")}
        regimes = next(iter(where.values())) if len(set(where.values())) == 1 else \
            ", ".join(f"{v} {g}" for v, g in where.items())
        out.append(f"**{case}**: {L} x MatMul {K}x{N}, {threads} thread(s); median ms per chain "
                   f"(weight GB/s | GFLOP/s)" + (f"; weights read from: {regimes}" if regimes else "") + "\n")
        ratio_keys = [k for k in RATIOS if any(k in ratios([r for r in sel if r["M"] == M]) for M in {r["M"] for r in sel})]
        out.append("| M | " + " | ".join(variants) + " | " + " | ".join(ratio_keys) + " |")
        out.append("|---" * (1 + len(variants) + len(ratio_keys)) + "|")
        for M in sorted({r["M"] for r in sel}):
            rm = [r for r in sel if r["M"] == M]
            cells = []
            for v in variants:
                r = _get(rm, v)
                cells.append(f"{r['median_ms']:.2f} ({r['weight_GBps']:.1f} \\| {r['GFLOPs']:.0f})" if r else "")
            rs = ratios(rm)
            out.append(f"| {M} | " + " | ".join(cells) + " | " + " | ".join(f"{rs[k]:.2f}x" if k in rs else ""
                                                                          for k in ratio_keys) + " |")
        out.append("")
    return "\n".join(out)


AVX2_ONLY_ENV = "INT4ONNX_BENCH_AVX2_ONLY"  # set in the re-executed benchmark (--avx2-only)


def avx2_only_exec(argv: list[str]) -> str:
    """--avx2-only: build tools/cpuid_avx2only.c, check that this machine has CPUID faulting, and run this
    benchmark again with the shim preloaded (AVX-512, VNNI and AMX hidden from CPUID: MLAS and int4onnx take
    their AVX2 kernels; INT4ONNX_ISA=avx2 as well). Does not return on success; returns the reason it cannot."""
    cc = _compiler()
    if cc is None:
        return "--avx2-only needs a C compiler (cc, or set CC)"
    tmp = tempfile.mkdtemp(prefix="bench_matmul_cpuid_")  # kept while the benchmark runs (the shim is in use)
    so = os.path.join(tmp, "cpuid_avx2only.so")
    r = subprocess.run([cc, "-O2", "-shared", "-fPIC", os.path.join(TOOLS, "cpuid_avx2only.c"), "-o", so],
                       capture_output=True, text=True)
    # after what is preloaded already: a sanitizer's runtime must stay first in the list
    env = dict(os.environ, LD_PRELOAD=":".join(p for p in (os.environ.get("LD_PRELOAD", ""), so) if p),
               INT4ONNX_ISA="avx2", **{AVX2_ONLY_ENV: so})
    why = f"{cc} failed: {r.stderr.strip()[:200]}" if r.returncode else None
    if why is None:
        r = subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, text=True)
        why = (r.stderr.strip().splitlines() or ["the shim failed"])[-1] if r.returncode else None
    if why:
        shutil.rmtree(tmp, ignore_errors=True)
        return f"--avx2-only: {why}"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], env)
    return "exec failed"  # not reached


def _ints(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=_ints, default=[min(2, os.cpu_count() or 1)],
                    help="comma-separated thread counts (intra_op_num_threads), e.g. 1,2,4,8,16")
    ap.add_argument("--m", type=_ints, default=[1, 4, 16, 128, 512], help="rows of activations (tokens)")
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--variants", help=f"subset of {','.join(VARIANTS)} (default: all of them), of {','.join(SCALE_VARIANTS)} (float16 / int8 scales), of {','.join(OWN_VARIANTS)} (the op on its own threads; these only when named) and, with --ggml, "
                    f"of {','.join(GGML_VARIANTS)} (default: the q4_0 ones this ggml build has)")
    ap.add_argument("--repeats", type=int, default=15, help="rounds (at least; short runs get more)")
    ap.add_argument("--spin", action="store_true",
                    help="keep ONNX Runtime's thread spinning on (off by default: idle sessions' spinning threads "
                         "would compete with the session being timed)")
    ap.add_argument("--burst", type=int, default=SPIN_BURST,
                    help=f"with --spin: calls per sample, back to back, after each variant's settle wait (default "
                         f"{SPIN_BURST}: decode after a pause; a few hundred: steady decode)")
    ap.add_argument("--ggml", metavar="PREFIX",
                    help="also time ggml's CPU backend (llama.cpp's kernels): an install prefix or build folder of "
                         "ggml, as printed by tools/build_ggml.sh")
    ap.add_argument("--dram-layers", type=int,
                    help="layers of the dram chain (default: enough for int4 weights of 4x the last-level cache, "
                         "at least 16, as many as memory allows)")
    ap.add_argument("--cache-layers", type=int,
                    help=f"layers of the cache chain (default {CASES['cache'][2]}): more layers spread ONNX Runtime's "
                         "fixed cost per session run (ggml's chain times its graph compute only) over more MatMuls, "
                         "as a real model's ~200 do; the regime stays the one printed")
    ap.add_argument("--no-stream", action="store_true", help="skip the stream read bandwidth measurement")
    ap.add_argument("--avx2-only", action="store_true",
                    help="hide AVX-512, VNNI and AMX from CPUID (tools/cpuid_avx2only.c preloaded; needs CPUID "
                         "faulting) so ONNX Runtime and int4onnx run their AVX2 kernels: an AVX2-only CPU on a newer one")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--markdown", help="also write markdown tables to this file")
    args = ap.parse_args(argv)
    if args.dram_layers is not None and args.dram_layers < 1:
        ap.error("--dram-layers must be at least 1")
    if args.cache_layers is not None and args.cache_layers < 1:
        ap.error("--cache-layers must be at least 1")
    if args.burst < 1:
        ap.error("--burst must be at least 1")
    if args.avx2_only and not os.environ.get(AVX2_ONLY_ENV):
        print(f"error: {avx2_only_exec(sys.argv[1:] if argv is None else list(argv))}", file=sys.stderr)
        return 2
    cases = list(CASES) if args.case == "all" else [args.case]
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench_matmul_") as workdir:
        ggml_exe, ggml_info = None, None
        if args.ggml:
            try:
                ggml_exe = build_ggml_chain(os.path.abspath(args.ggml), workdir)
                ggml_info = ggml_list(ggml_exe)
            except (GgmlError, subprocess.CalledProcessError, json.JSONDecodeError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        optional = ("ggml_q4_0_amx",)  # left out, with a message, where ggml has no AMX buffer or cannot use it
        if args.variants is None:
            variants = list(VARIANTS)
            if ggml_info:
                variants.append("ggml_q4_0")
                if "AMX" in ggml_info["bufts"]:
                    variants.append("ggml_q4_0_amx")
        else:
            variants = [v for v in args.variants.split(",") if v]
        bad = set(variants) - set(VARIANTS) - set(NAMED_VARIANTS) - set(GGML_VARIANTS)
        if bad:
            ap.error(f"unknown variants {sorted(bad)}")
        if not variants:
            ap.error("no variants")
        if not args.ggml and set(variants) & set(GGML_VARIANTS):
            ap.error(f"{sorted(set(variants) & set(GGML_VARIANTS))} need --ggml PREFIX")
        llc, llc_text = llc_bytes()
        avail = mem_available()
        layers = {"dram": args.dram_layers or dram_layers(llc, variants, avail), "cache": args.cache_layers or CASES["cache"][2]}

        print(f"int4onnx {int4onnx.__version__} (kernels: {', '.join(_native.kernels_available())}; selected "
              f"{_native.kernel_selected('fp32')} / {_native.kernel_selected('int8')}), onnxruntime {ort.__version__}, "
              f"{platform.machine()}, {os.cpu_count()} CPUs, last-level cache {llc_text}, "
              f"{avail / 2**30:.0f} GiB memory available")
        if os.environ.get(AVX2_ONLY_ENV):
            print("--avx2-only: AVX-512, VNNI and AMX hidden from CPUID (tools/cpuid_avx2only.c): ONNX Runtime and "
                  "int4onnx run their AVX2 kernels (ggml keeps what it was compiled for)")
        if ggml_info:
            print(f"ggml at {args.ggml}: buffer types {', '.join(ggml_info['bufts'])}; AVX-512 {ggml_info['avx512']}, "
                  f"VNNI {ggml_info['avx512_vnni']}, AMX-INT8 {ggml_info['amx_int8']}")
        for case in cases:
            K, N, _ = CASES[case]
            nbytes = weight_bytes("i4o_int8", K, N, layers[case])
            print(f"{case}: {layers[case]} x {K} x {N}, int4 weights {nbytes / 1e6:.0f} MB = {nbytes / llc:.1f}x the "
                  f"last-level cache: {regime(nbytes, llc)} regime at M = 1")
        rows, stream = [], {}
        for threads in args.threads:
            if not args.no_stream:
                sbytes = int(min(max(4 * llc, 512 << 20), 0.25 * avail))
                res = stream_bandwidth(workdir, sbytes, threads)
                if res:
                    stream[threads] = res
                    print(f"stream read, {threads} thread(s), {sbytes / 1e6:.0f} MB ({regime(sbytes, llc)}): "
                          f"{res['median_GBps']:.1f} GB/s median of {len(res['GBps'])} (the physical limit of the "
                          "weight GB/s columns in the DRAM regime)")
            for case in cases:
                try:
                    rows += run_case(case, threads, args.m, args.repeats, variants, spin=args.spin,
                                     layers=layers[case], ggml_exe=ggml_exe, llc=llc, optional=optional,
                                     burst=args.burst)
                except GgmlError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                print()
    md = markdown(rows, stream)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "int4onnx": int4onnx.__version__,
                       "kernels": _native.kernels_available(), "llc_bytes": llc, "llc": llc_text,
                       "ggml": ggml_info, "stream": stream, "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
