"""MatMulInt4 graphs built from a plain description (a JSON-able dict), valid or deliberately broken.

Used by the op error tests and by the fuzzer (tests/fuzz_op.py), which must be able to print a case
before running it, so that a crash can be reported and replayed.

case = {
  "a_type": "float" | "float16", "K", "N", "bits", "block", "quant_type": "int" | "nf4",
  "compute": "fp32" | "int8", "sym": bool, "bias": bool, "int8_scales": bool,
  "scale_type": None (the type of A) | "float16" (float scales' type; float16 scales go with float A too),
  "weights_as_inputs": bool (fed at run time instead of initializers), "a_shape": [..., K],
  "real_zp": None (integer zero points) | "float" | "float16" | "int8" (real zero points of that type, one
             per block; int8 codes with zero_points_scale, a float32 super-scale per column),
  "seed": int, "mutations": [[kind, ...], ...]
}
Mutations (applied in order):
  ["attr", name, value]      set an attribute (int, float, string, list) or remove it (None)
  ["shape", input, shape]    replace an input by random data of another shape (same type)
  ["dtype", input, type]     replace an input by data of another element type (same shape)
  ["drop", input]            leave the input out (empty name)
  ["empty", input]           give the input as a zero-element tensor
  ["extra_input"]            add a seventh input
  ["outputs", n]             give the node n outputs
  ["a_shape", shape]         feed A with another shape
  ["values", input, what]    put NaN, inf, -inf or 1e30 into part of a float input
"""

from __future__ import annotations

import numpy as np
import onnx
from modelgen import IR_VERSION, dequant_reference, int8_path_reference
from onnx import TensorProto, helper, numpy_helper

from int4onnx import _native

INPUTS = list(_native.OP_INPUTS)  # the op's input names in slot order (int4onnx.h)
ATTRS = _native.OP_ATTRS
TYPES = {"float": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8, "int32": np.int32,
         "double": np.float64, "int64": np.int64, "bool": np.bool_}


def valid_case(**kw) -> dict:
    case = dict(a_type="float", K=64, N=16, bits=4, block=32, quant_type="int", compute="fp32", sym=False,
                bias=False, int8_scales=False, scale_type=None, weights_as_inputs=False, a_shape=None, seed=0,
                real_zp=None, mutations=[])
    case.update(kw)
    if case["a_shape"] is None:
        case["a_shape"] = [3, case["K"]]
    return case


def _random(rng, shape, dtype) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -100), min(info.max, 100) + 1, size=shape).astype(dtype)


def build(case: dict):
    """-> (serialized model, feeds, expected output or None). expected is None for broken cases."""
    rng = np.random.default_rng(case["seed"])
    K, N, bits, block = case["K"], case["N"], case["bits"], case["block"]
    a_np = TYPES[case["a_type"]]
    nb = -(-K // block)
    levels = 16 if case["quant_type"] == "nf4" else 1 << bits
    codes = rng.integers(0, levels, size=(N, K)).astype(np.uint8)
    zp = None if case["sym"] else rng.integers(0, 1 << bits, size=(N, nb)).astype(np.uint8)
    arrays: dict[str, np.ndarray | None] = {
        "A": rng.standard_normal(case["a_shape"]).astype(a_np),
        "B": _native.pack_weights(codes, bits, block, case["quant_type"], zp),
        "zero_points": None if zp is None else _native.pack_zero_points(zp, bits),
        "bias": rng.standard_normal(N).astype(a_np) if case["bias"] else None,
        "scales_scale": None,
        "zero_points_scale": None,
    }
    real = case.get("real_zp")
    if real and zp is not None:  # real zero points: the integer ones moved by up to half a step
        z = (zp + rng.uniform(-0.5, 0.5, zp.shape)).astype(np.float32)
        if real == "int8":
            zs = np.full(N, (levels - 1) / 127, np.float32)
            z8 = np.clip(np.rint(z / zs[:, None]), -127, 127).astype(np.int8)
            arrays["zero_points"], arrays["zero_points_scale"] = z8, zs
            z = (z8.astype(np.float32) * zs[:, None]).astype(np.float32)
        else:
            arrays["zero_points"] = z.astype(TYPES[real])
            z = arrays["zero_points"].astype(np.float32)
        zp = z  # what the references take
    if case["int8_scales"]:
        s8 = rng.integers(1, 128, size=(N, nb)).astype(np.int8)
        ss = (rng.random(N) * 0.01 + 0.001).astype(np.float32)
        arrays["scales"], arrays["scales_scale"] = s8, ss
        scales_f = (s8.astype(np.float32) * ss[:, None]).astype(np.float32)
    else:
        arrays["scales"] = (rng.random((N, nb)) * 0.1 + 0.01).astype(TYPES[case.get("scale_type") or case["a_type"]])
        scales_f = arrays["scales"].astype(np.float32)
    values = {"K": K, "N": N, "bits": bits, "block_size": block, "quant_type": case["quant_type"],
              "compute": case["compute"]}
    attrs = {name: values[name] for name in ATTRS}
    names = {n: (n if arrays[n] is not None else "") for n in INPUTS}
    gap_types = {"zero_points": np.uint8, "bias": a_np, "scales_scale": np.float32}
    last = max(i for i, n in enumerate(INPUTS) if names[n])
    for n in INPUTS[:last]:
        if names[n] == "" and n in gap_types:  # an inner gap, as the converter writes it: a zero-element tensor
            arrays[n] = np.zeros((0,), gap_types[n])
            names[n] = n
    extra, n_out, a_feed = False, 1, None
    for m in case["mutations"]:
        kind = m[0]
        if kind == "attr":
            if m[2] is None:
                attrs.pop(m[1], None)
            else:
                attrs[m[1]] = m[2]
        elif kind == "shape":
            old = arrays[m[1]] if arrays[m[1]] is not None else np.zeros(0, np.uint8)
            arrays[m[1]] = _random(rng, m[2], old.dtype)
            names[m[1]] = m[1]
        elif kind == "dtype":
            old = arrays[m[1]] if arrays[m[1]] is not None else np.zeros(1, np.uint8)
            arrays[m[1]] = _random(rng, old.shape, TYPES[m[2]])
            names[m[1]] = m[1]
        elif kind == "drop":
            names[m[1]] = ""
        elif kind == "empty":
            old = arrays[m[1]] if arrays[m[1]] is not None else np.zeros(0, np.uint8)
            arrays[m[1]] = np.zeros((0,), old.dtype)
            names[m[1]] = m[1]
        elif kind == "extra_input":
            extra = True
        elif kind == "outputs":
            n_out = m[1]
        elif kind == "a_shape":
            a_feed = _random(rng, m[1], arrays["A"].dtype)
        elif kind == "values":
            arr = arrays[m[1]]
            if arr is not None and arr.dtype.kind == "f" and arr.size:
                arr = arr.copy()
                with np.errstate(over="ignore"):  # 1e30 is inf in float16
                    arr.reshape(-1)[:: max(1, arr.size // 7)] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf,
                                                                 "big": 1e30}[m[2]]
                arrays[m[1]] = arr
        else:
            raise ValueError(f"unknown mutation {m!r}")
    if a_feed is not None:
        arrays["A"] = a_feed

    node_inputs = [names[n] for n in INPUTS]
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()
    if extra:
        node_inputs += [""] * (len(INPUTS) - len(node_inputs)) + ["extra"]
        arrays["extra"] = np.zeros(3, np.float32)
    node = helper.make_node("MatMulInt4", node_inputs, [f"Y{i}" for i in range(n_out)], domain=_native.DOMAIN,
                            name="fuzz_node", **attrs)
    feeds, graph_inputs, inits = {}, [], []
    for name in dict.fromkeys(x for x in node_inputs if x):
        arr = arrays[name]
        if name == "A" or case["weights_as_inputs"]:
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, [f"{name}_d{i}" for i in range(arr.ndim)]))
            feeds[name] = arr
        else:
            inits.append(numpy_helper.from_array(arr, name))
    y_elem = helper.np_dtype_to_tensor_dtype(np.dtype(a_np))
    outputs = [helper.make_tensor_value_info(f"Y{i}", y_elem, None) for i in range(n_out)]
    graph = helper.make_graph([node], "fuzz", graph_inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(_native.DOMAIN, 1)])
    model.ir_version = IR_VERSION
    expected = None
    if not case["mutations"]:
        A = arrays["A"].astype(np.float32).reshape(-1, K)
        bias = None if arrays["bias"] is None or not arrays["bias"].size else arrays["bias"].astype(np.float32)
        if case["compute"] == "int8":
            ref = int8_path_reference(A, codes, scales_f, zp, K, block, bits, case["quant_type"], bias)
        else:
            ref = A.astype(np.float64) @ dequant_reference(codes, scales_f, zp, K, block, bits, case["quant_type"])
            if bias is not None:
                ref = ref + bias
        expected = ref.reshape(list(case["a_shape"][:-1]) + [N])
    return model.SerializeToString(), feeds, expected


def session(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(_native.library_path())
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def run(case: dict):
    """Build and run a case: the output array, or raises what ONNX Runtime raised."""
    model, feeds, _ = build(case)
    return session(model).run(None, feeds)[0]


def check_valid(case: dict) -> None:
    """A valid case must run and match the numpy reference."""
    model, feeds, expected = build(case)
    y = session(model).run(None, feeds)[0]
    assert y.shape == expected.shape, (y.shape, expected.shape)
    tol = 2e-2 if case["a_type"] == "float16" else 1e-4
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=tol, atol=tol * scale)


def model_proto(case: dict) -> onnx.ModelProto:
    return onnx.load_from_string(build(case)[0])


__all__ = ["ATTRS", "INPUTS", "TensorProto", "build", "check_valid", "model_proto", "run", "session", "valid_case"]
