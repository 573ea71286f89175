"""tools/bench_matmul.py's machine sizing, self-timed rounds, and (where a ggml build is given in
INT4ONNX_GGML, e.g. the path tools/build_ggml.sh prints) the ggml harness against its float64 reference."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from int4onnx.tools.bench import SelfTimed, time_alternating

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")


@pytest.fixture(scope="module")
def bm():
    import bench_matmul  # tools/, on the path through conftest.py

    return bench_matmul


def test_self_timed_rounds_are_credited_with_their_own_seconds():
    calls = []
    t = time_alternating({"a": lambda: calls.append("a") or SelfTimed(0.25), "b": lambda: calls.append("b")},
                         repeats=3, warmup=1)
    assert t["a"].seconds == [0.25] * 3
    assert all(s < 0.25 for s in t["b"].seconds)
    assert calls.count("a") == 4 and calls.count("b") == 4


def test_sizes_and_regimes(bm):
    assert bm._parse_size("32768K") == 32 << 20
    assert bm._parse_size("2M") == 2 << 20
    assert bm._parse_size("512") == 512
    llc, text = bm.llc_bytes()
    assert llc >= 256 << 10 and "L" in text
    assert bm.regime(4 * llc, llc) == "DRAM"
    assert bm.regime(4 * llc - 1, llc) == "mixed"
    assert bm.regime(llc, llc) == "cache"
    assert bm.mem_available() > 0


def test_dram_layers_follow_the_llc_and_the_memory(bm):
    per_layer = bm.weight_bytes("i4o_int8", 4096, 4096, 1)
    assert bm.dram_layers(32 << 20, ["i4o_int8"], 1 << 40, log=lambda _: None) == 16  # 16 layers are 5x 32 MiB
    big = 300 << 20
    L = bm.dram_layers(big, ["i4o_int8", "ggml_q4_0"], 1 << 40, log=lambda _: None)
    assert L == math.ceil(4 * big / per_layer) and L * per_layer >= 4 * big > (L - 1) * per_layer
    msgs = []
    capped = bm.dram_layers(big, ["fp32", "i4o_int8"], 8 << 30, log=msgs.append)
    assert capped < L and msgs and "fit" in msgs[0]
    # the cap keeps every variant's estimated sessions within 60 % of the memory
    assert capped * sum(bm.MEM_FACTOR[v] * bm.weight_bytes(v, 4096, 4096, 1) for v in ("fp32", "i4o_int8")) <= 0.6 * (8 << 30)


def test_ggml_q4_0_bytes_are_4_5_bits_per_weight(bm):
    assert bm.weight_bytes("ggml_q4_0", 4096, 4096, 2) * 8 == 4.5 * 4096 * 4096 * 2
    assert bm.weight_bytes("i4o_int8", 4096, 4096, 1) * 8 == 5.0 * 4096 * 4096


def test_not_a_ggml_build_is_a_one_line_error(bm, tmp_path, capsys):
    assert bm.main(["--ggml", str(tmp_path), "--case", "cache", "--m", "1", "--no-stream"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --ggml") and "build_ggml.sh" in err and "\n" not in err


def test_ggml_variants_need_ggml(bm):
    with pytest.raises(SystemExit):
        bm.main(["--variants", "i4o_int8,ggml_q4_0", "--case", "cache", "--m", "1", "--no-stream"])


def test_build_ggml_refuses_what_is_not_a_ggml_source(tmp_path):
    script = os.path.join(TOOLS, "build_ggml.sh")
    for src in (tmp_path / "missing", tmp_path):
        r = subprocess.run(["bash", script, str(src), str(tmp_path / "build")], capture_output=True, text=True)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "build").exists()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_stream_read(bm, tmp_path):
    res = bm.stream_bandwidth(str(tmp_path), 64 << 20, 1, rounds=3)
    assert res["bytes"] == 64 << 20 and len(res["GBps"]) == 3 and res["median_GBps"] > 0.1


GGML = os.environ.get("INT4ONNX_GGML")


@pytest.mark.skipif(not GGML, reason="set INT4ONNX_GGML to a ggml build (tools/build_ggml.sh prints it)")
def test_ggml_chain_matches_its_float64_reference(bm, tmp_path):
    exe = bm.build_ggml_chain(GGML, str(tmp_path))
    assert "CPU_REPACK" in bm.ggml_list(exe)["bufts"]
    for variant, tol in (("ggml_q4_0", 0.03), ("ggml_f32", 1e-5)):
        for threads in (1, 2):
            g = bm.GgmlChain(exe, variant, 256, 256, 3, threads)
            try:
                for M in (1, 5):
                    assert g.check(M) < tol
                assert g.run(3).seconds > 0
            finally:
                g.close()
    r = subprocess.run([exe, "--buft", "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "error" in json.loads(r.stdout)


def _has_cpuid_faulting(shim_dir) -> bool:
    so = os.path.join(shim_dir, "shim.so")
    subprocess.run([shutil.which("cc") or "gcc", "-O2", "-shared", "-fPIC", os.path.join(TOOLS, "cpuid_avx2only.c"),
                    "-o", so], check=True)
    return subprocess.run(["true"], env=_preload(so)).returncode == 0


def _preload(so) -> dict:
    """the environment with `so` preloaded after what is preloaded already (make test-sanitize preloads
    the sanitizer runtime, which must stay first)"""
    return dict(os.environ, LD_PRELOAD=":".join(p for p in (os.environ.get("LD_PRELOAD", ""), so) if p))


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="needs a C compiler")
def test_avx2_only_shim_hides_avx512_or_says_why(bm, tmp_path, monkeypatch, capsys):
    """--avx2-only: without CPUID faulting one line and exit 2, nothing left in the temp folder; with it, a
    process under the shim sees AVX2 and no AVX-512 (numpy's run-time CPU features, read from CPUID)."""
    if _has_cpuid_faulting(str(tmp_path)):
        probe = ("try:\n from numpy._core._multiarray_umath import __cpu_features__ as f\n"
                 "except ImportError:\n from numpy.core._multiarray_umath import __cpu_features__ as f\n"
                 "print(f['AVX512F'], f['AVX2'])")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=_preload(os.path.join(str(tmp_path), "shim.so")))
        assert out.stdout.split() == ["False", "True"], out.stderr
        return
    monkeypatch.setattr(bm.tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(bm.AVX2_ONLY_ENV, raising=False)
    assert bm.main(["--avx2-only", "--case", "cache", "--m", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CPUID faulting" in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["shim.so"]  # the benchmark's own build was removed


def test_avx2_only_without_a_compiler_is_one_line(bm, monkeypatch, capsys):
    monkeypatch.setattr(bm, "_compiler", lambda: None)
    monkeypatch.delenv(bm.AVX2_ONLY_ENV, raising=False)
    assert bm.main(["--avx2-only"]) == 2
    assert capsys.readouterr().err.strip() == "error: --avx2-only needs a C compiler (cc, or set CC)"


def test_spin_samples_are_bursts_with_one_settle_wait(bm, monkeypatch):
    calls, sleeps = [], []
    monkeypatch.setattr(bm.time, "sleep", lambda s: sleeps.append(s))
    sample = bm._settled(lambda: calls.append(1), burst=5)()
    assert len(calls) == 5 and sleeps == [bm.SETTLE_S]
    assert isinstance(sample, SelfTimed) and 0 <= sample.seconds < 0.1


def test_burst_sets_the_calls_per_spin_sample(bm, tmp_path, monkeypatch, capsys):
    bursts, settled = [], bm._settled

    def record(fn, burst=1):
        bursts.append(burst)
        return settled(fn, burst)

    monkeypatch.setattr(bm, "_settled", record)
    monkeypatch.setattr(bm, "SETTLE_S", 0.0)
    out = tmp_path / "rows.json"
    args = ["--case", "cache", "--cache-layers", "1", "--m", "1", "--threads", "1", "--variants", "i4o_int8",
            "--repeats", "1", "--no-stream", "--json", str(out)]
    assert bm.main([*args, "--spin", "--burst", "3"]) == 0
    assert bursts == [3]
    assert [r["burst"] for r in json.loads(out.read_text())["rows"]] == [3]
    assert bm.main(args) == 0  # without --spin every sample is one call
    assert bursts == [3] and [r["burst"] for r in json.loads(out.read_text())["rows"]] == [1]
    with pytest.raises(SystemExit):
        bm.main([*args, "--spin", "--burst", "0"])
    assert "--burst must be at least 1" in capsys.readouterr().err


def test_cache_layers_set_the_chain_length(bm, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bm.main(["--case", "cache", "--cache-layers", "2", "--m", "1", "--threads", "1", "--variants", "i4o_int8",
                    "--repeats", "1", "--no-stream", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["layers"] for r in rows] == [2]
    with pytest.raises(SystemExit):
        bm.main(["--case", "cache", "--cache-layers", "0"])
    assert "--cache-layers must be at least 1" in capsys.readouterr().err


def test_op_floor_times_every_split(capsys):
    import op_floor as mod
    before = os.environ.get("INT4ONNX_MIN_TASK_MACS")
    assert mod.main(["--threads", "1", "--sizes", "64", "--layers", "2", "--repeats", "1", "--burst", "1"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].strip("|").split("|")
    assert [c.strip() for c in row[:2]] == ["64", "1"]
    assert all(float(c) > 0 for c in row[2:]) and len(row) == 2 + 1 + len(mod.SPLITS)
    assert os.environ.get("INT4ONNX_MIN_TASK_MACS") == before  # restored
