"""The same input and options give byte-identical output files, for every format, single-file or
with external data, across processes (different hash seeds)."""

import os
import subprocess
import sys

import numpy as np
from modelgen import make_model, save
from onnx import TensorProto, helper, numpy_helper

FORMATS = ("int4onnx", "matmulnbits", "qdq")

SCRIPT = """
import sys
import int4onnx
from int4onnx import io
src, out_dir, external = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if external:
    io.EXTERNAL_DATA_THRESHOLD = 0
for fmt in %r:
    int4onnx.quantize(src, f"{out_dir}/m.{fmt}.onnx", format=fmt, group_size=32)
""" % (FORMATS,)


def model():
    """MatMul chain with a shared weight, a transposed Gemm with bias, all of varied sizes."""
    rng = np.random.default_rng(21)
    w0 = rng.standard_normal((96, 80)).astype(np.float32)
    w1 = rng.standard_normal((80, 80)).astype(np.float32)
    wg = rng.standard_normal((40, 80)).astype(np.float32)  # Gemm B, transB=1: [N, K]
    bias = rng.standard_normal(40).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             helper.make_node("MatMul", ["h0", "w1"], ["h1"], name="mm1"),
             helper.make_node("MatMul", ["h1", "w1"], ["h2"], name="mm2_shared"),
             helper.make_node("Gemm", ["h2", "wg", "bias"], ["y"], name="gemm", transB=1, alpha=0.5)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 96])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 40])],
                      [numpy_helper.from_array(a, n) for n, a in
                       (("w0", w0), ("w1", w1), ("wg", wg), ("bias", bias))])


def _convert(src, out_dir, external, hash_seed):
    out_dir.mkdir()
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    subprocess.run([sys.executable, "-c", SCRIPT, src, str(out_dir), "1" if external else "0"], env=env, check=True)
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def test_outputs_are_byte_identical(tmp_path):
    src = save(model(), tmp_path / "m.onnx")
    for external in (False, True):
        tag = "ext" if external else "single"
        a = _convert(src, tmp_path / f"a_{tag}", external, 1)
        b = _convert(src, tmp_path / f"b_{tag}", external, 2)
        names = {f"m.{f}.onnx" for f in FORMATS} | ({f"m.{f}.onnx.data" for f in FORMATS} if external else set())
        assert set(a) == names
        for name in names:
            assert a[name] == b[name], f"{name} differs between two runs ({tag})"
