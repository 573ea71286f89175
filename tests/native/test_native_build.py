"""The standalone library (`int4onnx build-native`) and the C example app (examples/c), on this machine:
one forward pass from .npy files, and greedy generation with the KV cache against `int4onnx.tools.generate`.

The cross builds and the emulated ARM runs are `make test-arm` (tools/arm/run_tests.py)."""

import glob
import os
import pathlib
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from modelgen import char_tokenizer, gqa_lm, matmul_model, save

import int4onnx
from int4onnx.cli import main
from int4onnx.lm import LMInterface
from int4onnx.runtime import make_session
from int4onnx.tools import generate as gen

ROOT = pathlib.Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(17)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def session(model, library):
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A two-layer model with K = 200 and 75 (not multiples of the group), int8 and fp32 compute."""
    d = tmp_path_factory.mktemp("models")
    src = save(matmul_model({"w0": RNG.standard_normal((200, 75)).astype(np.float32),
                             "w1": RNG.standard_normal((75, 33)).astype(np.float32)}, batch_dims=("b", "s")), d / "m.onnx")
    out = {}
    for compute in ("fp32", "int8"):
        out[compute] = d / f"m.{compute}.onnx"
        int4onnx.quantize(src, out[compute], group_size=32, compute=compute)
    return out


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    r = invoke("build-native", "--target", "x86_64", "-o", d)
    assert r.exit_code == 0, r.output
    assert "libint4onnx_ops.so" in r.output and "bytes stripped" in r.output
    return d / "libint4onnx_ops.so"


def test_build_native_x86_64_exports_one_symbol_and_runs_like_the_extension(standalone, converted):
    # the 300 KB aim is for the board libraries (checked by make test-arm); on x86-64 the AVX-512 kernels
    # are unrolled per block size and row count, about 1 MB stripped
    assert 0 < standalone.stat().st_size < 2 * 1024 * 1024
    out = subprocess.run(["nm", "-D", "--defined-only", standalone], capture_output=True, text=True, check=True).stdout
    assert [line.split()[-1] for line in out.splitlines() if line.strip()] == ["RegisterCustomOps"]
    # no Python symbols needed: the library loads outside a Python process's symbol space as well
    ldd = subprocess.run(["ldd", standalone], capture_output=True, text=True).stdout
    assert "python" not in ldd.lower()
    x = RNG.standard_normal((3, 9, 200)).astype(np.float32)
    for model in converted.values():
        y_ext = session(model, int4onnx.library_path()).run(None, {"x": x})[0]
        y_std = session(model, standalone).run(None, {"x": x})[0]
        np.testing.assert_array_equal(y_std, y_ext)


def test_build_native_missing_cross_compiler_is_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    r = invoke("build-native", "--target", "aarch64-linux-gnu", "-o", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("int4onnx: error: cross compiler aarch64-linux-gnu-gcc for aarch64-linux-gnu not found")
    assert "apt-get install gcc-aarch64-linux-gnu" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_build_native_bad_target_and_wrong_compiler(tmp_path):
    r = invoke("build-native", "--target", "riscv64", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "unknown target 'riscv64'" in r.output
    r = invoke("build-native", "--target", "armv7", "--cc", "cc", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "not arm-linux-gnueabihf" in r.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def app(tmp_path_factory, standalone):
    """examples/c built against the onnxruntime wheel's libonnxruntime, laid out as on a device."""
    capi = pathlib.Path(ort.__file__).parent / "capi"
    ort_lib = sorted(glob.glob(str(capi / "libonnxruntime.so.1*")))
    if not ort_lib:
        pytest.fail(f"no libonnxruntime.so in {capi}")
    d = tmp_path_factory.mktemp("app")
    subprocess.run(["make", "-s", "-C", ROOT / "examples" / "c", f"BUILD={d / 'obj'}", f"ORT_LIB={ort_lib[0]}"],
                   check=True)
    bundle = d / "bundle"
    bundle.mkdir()
    shutil.copy2(d / "obj" / "int4onnx_run", bundle)
    shutil.copy2(standalone, bundle)
    os.symlink(ort_lib[0], bundle / "libonnxruntime.so.1")  # the soname; the app's rpath is $ORIGIN
    return bundle


def run_app(bundle, *args):
    return subprocess.run([bundle / "int4onnx_run", *[str(a) for a in args]], capture_output=True, text=True)


def test_example_app_equals_python(app, converted, tmp_path):
    x = RNG.standard_normal((2, 5, 200)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for compute, model in converted.items():
        out = tmp_path / compute / "out"  # the app creates its output folder
        p = run_app(app, "--model", model, "--ops", app / "libint4onnx_ops.so", "--out-dir", out, "--repeat", 3,
                    tmp_path / "x.npy")
        assert p.returncode == 0, p.stderr
        assert "output y float32 [2, 5, 33]" in p.stdout and "median" in p.stdout
        ref = session(model, int4onnx.library_path()).run(None, {"x": x})[0]
        np.testing.assert_array_equal(np.load(out / "y.npy"), ref)


def test_example_app_errors_are_one_line(app, converted, tmp_path):
    np.save(tmp_path / "i.npy", np.zeros((1, 1, 200), np.int64))
    np.save(tmp_path / "f.npy", np.zeros((1, 1, 200), np.float32))
    cases = [
        (["--model", converted["fp32"], tmp_path / "f.npy"], "is not a registered function/op"),  # no --ops
        (["--model", converted["fp32"], "--ops", app / "libint4onnx_ops.so", tmp_path / "i.npy"],
         "input x is int64"),
        (["--model", converted["fp32"], "--ops", app / "libint4onnx_ops.so", f"z={tmp_path / 'f.npy'}"],
         "no input named"),
        (["--model", converted["fp32"], "--ops", app / "libint4onnx_ops.so", converted["fp32"]], "not a .npy file"),
    ]
    for args, needle in cases:
        p = run_app(app, *args)
        assert p.returncode == 1 and needle in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1


# -- generation: prefill, then greedy decoding with the KV cache (examples/c/generate.c) -------------------

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n"
PROMPT = "the quick"


def refusing_empty_past(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with logits + 0 * sum(past_key_values.0.key[:, :, 0]): the same logits, but a past of length 0
    makes the Gather fail in ONNX Runtime, so prefill needs the masked one-token past."""
    from onnx import TensorProto, helper

    g = model.graph
    producer = next(n for n in g.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    g.initializer.extend([helper.make_tensor("probe_index", TensorProto.INT64, [1], [0]),
                          helper.make_tensor("probe_zero", TensorProto.FLOAT, [], [0.0])])
    g.node.extend([helper.make_node("Gather", ["past_key_values.0.key", "probe_index"], ["p0"], axis=2, name="probe"),
                   helper.make_node("ReduceSum", ["p0"], ["p0s"], keepdims=0, name="probe_sum"),
                   helper.make_node("Mul", ["p0s", "probe_zero"], ["p0z"], name="probe_zero"),
                   helper.make_node("Add", ["logits_raw", "p0z"], ["logits"], name="probe_add")])
    return model


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """KV-cache decoders converted to int4 (group 32), each in a folder with a char tokenizer.json:
    a tiny Llama with optimum's I/O (models/llama.py), the same refusing an empty past, and ONNX Runtime
    GenAI's interface (GroupQueryAttention, no position_ids) with a 16-token context in its metadata."""
    from llama import LlamaConfig, build_model, random_weights

    cfg = LlamaConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=len(ALPHABET), seq_len=64)
    w = random_weights(cfg, seed=3)
    gqa = gqa_lm(V=len(ALPHABET), layers=2, kv_heads=2, context=64)
    onnx.helper.set_model_props(gqa, {"context_length": "16"})
    sources = {"llama": build_model(cfg, w, kv_cache=True), "llama-masked": refusing_empty_past(build_model(cfg, w, True)),
               "gqa": gqa}
    root = tmp_path_factory.mktemp("decoders")
    out = {}
    for name, model in sources.items():
        (root / name).mkdir()
        src = save(model, root / name / "float.onnx")
        out[name] = root / name / "model.onnx"
        int4onnx.quantize(src, out[name], group_size=32)
        char_tokenizer(root / name / "tokenizer.json", ALPHABET)
    return out


def generated(p) -> list[int]:
    line = next(x for x in p.stdout.splitlines() if x.startswith("generated:"))
    return [int(t) for t in line.split()[1:]]


@pytest.mark.parametrize("name", ["llama", "llama-masked", "gqa"])
def test_example_app_generates_the_ids_of_int4onnx_generate(app, decoders, name, tmp_path):
    model = decoders[name]
    ref = gen.generate(model, PROMPT, max_new_tokens=20)  # Python: greedy, the same KV-cache feeds
    assert ref.kv_cache and len(ref.prompt_tokens) == len(PROMPT)
    assert ref.stopped == ("context" if name == "gqa" else "max_new_tokens")
    out = tmp_path / "a" / "b"
    p = run_app(app, "--model", model, "--ops", app / "libint4onnx_ops.so", "--prompt-ids",
                ",".join(map(str, ref.prompt_tokens)), "--max-new-tokens", 20, "--out-dir", out, "--save-logits")
    assert p.returncode == 0, p.stderr
    assert generated(p) == ref.tokens and np.load(out / "generated_ids.npy").tolist() == ref.tokens
    assert f"({ref.stopped}); time to first token" in p.stdout and "decode" in p.stdout and "tokens/s" in p.stdout
    assert "KV cache: 2 layers, 4 past inputs, 2 kv heads x head dim 16" in p.stdout
    assert ("masked one-token past" in p.stdout + p.stderr) == (name == "llama-masked")
    # one logits row per chosen token; each id is its row's argmax; the prefill row is Python's
    logits = np.load(out / "step_logits.npy")
    assert logits.shape == (len(ref.tokens), len(ALPHABET))
    assert logits.argmax(axis=1).tolist() == ref.tokens
    sess = make_session(model)
    lm = LMInterface.from_session(sess, model)
    assert lm.probe_empty_past(sess) == (name != "llama-masked")
    first = sess.run([lm.logits], lm.window_feed(np.array([ref.prompt_tokens])))[0][0, -1]
    np.testing.assert_allclose(logits[0], first, rtol=1e-5, atol=1e-5)
    # the prompt from a text file and from an .npy, a stop id: the ids before its first occurrence
    stop = ref.tokens[3]
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ref.prompt_tokens)) + "\n")
    np.save(tmp_path / "ids.npy", np.array([ref.prompt_tokens], np.int32))
    for prompt in (tmp_path / "ids.txt", tmp_path / "ids.npy"):
        p = run_app(app, "--model", model, "--ops", app / "libint4onnx_ops.so", "--prompt-file", prompt,
                    "--max-new-tokens", 20, "--eos", 99, "--eos", stop, "--threads", 2, "--spin")
        assert p.returncode == 0, p.stderr
        assert generated(p) == ref.tokens[:ref.tokens.index(stop)] and "(eos)" in p.stdout


def test_example_app_generation_errors_are_one_line(app, decoders, converted, tmp_path):
    model, ops = decoders["llama"], app / "libint4onnx_ops.so"
    np.save(tmp_path / "f.npy", np.zeros(3, np.float32))
    (tmp_path / "file").write_text("")
    cases = [
        (["--model", converted["fp32"], "--ops", ops, "--prompt-ids", "1"], "no integer token-id input"),
        (["--model", model, "--ops", ops, "--prompt-ids", "1,x"], "--prompt-ids: expected an integer"),
        (["--model", model, "--ops", ops, "--prompt-ids", "1,30"], "token id 30 is outside the vocabulary"),
        (["--model", model, "--ops", ops, "--prompt-ids", ","], "the prompt has no token ids"),
        (["--model", model, "--ops", ops, "--prompt-file", tmp_path / "f.npy"], "must be int64 or int32"),
        (["--model", model, "--ops", ops, "--prompt-file", tmp_path / "none.txt"], "No such file"),
        (["--model", model, "--ops", ops, "--prompt-ids", "1", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--model", model, "--ops", ops, "--prompt-ids", "1", "--save-logits"], "--save-logits needs --out-dir"),
        (["--model", model, "--ops", ops, "--prompt-ids", "1", "--out-dir", tmp_path / "file" / "d"], "is not a folder"),
        (["--model", model, "--prompt-ids", "1"], "is not a registered function/op"),  # no --ops
    ]
    for args, needle in cases:
        p = run_app(app, *args)
        assert p.returncode == 1 and needle in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1
    # a decoder without a KV cache: named, nothing written
    nocache = tmp_path / "nocache.onnx"
    from llama import LlamaConfig, build_model, random_weights

    cfg = LlamaConfig(dim=32, hidden_dim=48, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=30, seq_len=16)
    save(build_model(cfg, random_weights(cfg), kv_cache=False), nocache)
    p = run_app(app, "--model", nocache, "--prompt-ids", "1", "--out-dir", tmp_path / "o")
    assert p.returncode == 1 and "no past_key_values.* inputs" in p.stderr and not (tmp_path / "o").exists()


def test_native_kernel_test_passes_here(tmp_path):
    """native/tests/test_kernels.c, which make test-arm runs under qemu, also passes with this CPU's kernels."""
    build = tmp_path / "build"
    subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", "-C", ROOT / "native", f"BUILD={build}", "test-kernels"],
                   check=True, capture_output=True)
    r = subprocess.run([build / "test_kernels"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS: 0 failure(s)" in r.stdout and "FAILED" not in r.stdout
    assert "scalar_int8" in r.stdout and "bit-exact vs scalar_int8" in r.stdout
