"""Small ONNX models built in code for the tests, and independent numpy references."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from int4onnx import _native

IR_VERSION = 10


def make_model(nodes, inputs, outputs, initializers, opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] + list(extra_opsets))
    model.ir_version = IR_VERSION
    return model


def matmul_model(weights: dict[str, np.ndarray], chain=True, dtype=np.float32, batch_dims=("b",)):
    """x [*batch, K0] -> MatMul(W0) -> MatMul(W1) ... (chain) -> y."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    names = list(weights)
    K0 = weights[names[0]].shape[0]
    nodes, cur = [], "x"
    for i, name in enumerate(names):
        out = "y" if i == len(names) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [cur, name], [out], name=f"mm{i}"))
        cur = out
    N = weights[names[-1]].shape[1]
    inits = [numpy_helper.from_array(w.astype(dtype), n) for n, w in weights.items()]
    return make_model(nodes, [helper.make_tensor_value_info("x", elem, list(batch_dims) + [K0])],
                      [helper.make_tensor_value_info("y", elem, list(batch_dims) + [N])], inits)


def save(model, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def numpy_pack_reference(codes: np.ndarray, bits: int, block: int, pad: np.ndarray) -> np.ndarray:
    """Independent statement of the portable layout (docs/format.md) for the round-trip tests."""
    N, K = codes.shape
    nb = -(-K // block)
    full = np.repeat(pad.astype(np.uint8)[:, None], nb * block, axis=1)
    full[:, :K] = codes
    full = full.reshape(N, nb, block)
    if bits == 8:
        return full
    return (full[:, :, 0::2] | (full[:, :, 1::2] << 4)).astype(np.uint8)


def dequant_reference(codes, scales, zp, K, block, bits, quant_type="int"):
    """float64 [K, N] from codes [N, K], scales [N, nb], zp [N, nb] (integer, or real: a float array) or None."""
    N = codes.shape[0]
    b = np.arange(K) // block
    if quant_type == "nf4":
        vals = _native.nf4_codebook().astype(np.float64)[codes]
    else:
        z = np.full((N, scales.shape[1]), 1 << (bits - 1)) if zp is None else zp
        vals = codes.astype(np.float64) - z[:, b]
    return (vals * scales.astype(np.float64)[:, b]).T


def int8_scales(scales: np.ndarray) -> np.ndarray:
    """Weight scales as the int8 path uses them: per column a power of two 2^E puts the largest |scale|
    in [2^14, 2^15), then each scale is rounded to float16: half(s * 2^-E) * 2^E (docs/format.md)."""
    s = np.asarray(scales, dtype=np.float32).copy()
    for n in range(s.shape[0]):
        for _ in range(2):  # a maximum that rounds up to 2^15 moves E by one: round again
            mx = float(np.abs(s[n]).max())
            e = int(np.frexp(np.float32(mx))[1]) - 1 - 14 if mx > 0 and np.isfinite(mx) else 0
            s[n] = (np.ldexp(s[n], -e).astype(np.float16).astype(np.float32) * np.float32(2.0**e)).astype(np.float32)
    return s


def int8_path_reference(A, codes, scales, zp, K, block, bits, quant_type="int", bias=None):
    """numpy statement of the int8 compute path: per-block activation quantization, exact integer dots,
    then per block, in block order, y += dot * (scale_a * scale_w) in float32. Real zero points (zp a float
    array) are rounded to float16 and taken off in float32: dot = float(dot) - z * float(sum_q)."""
    M = A.shape[0]
    N = codes.shape[0]
    nb = -(-K // block)
    scales = int8_scales(scales)
    Ap = np.zeros((M, nb * block), dtype=np.float32)
    Ap[:, :K] = A
    Ap = Ap.reshape(M, nb, block)
    amax = np.abs(Ap).max(axis=2)
    sa = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint((Ap * inv[:, :, None]).astype(np.float32)), -127, 127).astype(np.int64)
    c = np.zeros((N, nb * block), dtype=np.int64)
    c[:, :K] = codes
    c = c.reshape(N, nb, block)
    if quant_type == "nf4":
        c = np.rint(_native.nf4_codebook() * 127).astype(np.int64)[c]  # (q is 0 past K)
        sw = (scales * np.float32(1 / 127)).astype(np.float32)
        dot = np.einsum("mbi,nbi->mnb", q, c)
    elif zp is not None and np.asarray(zp).dtype.kind == "f":
        z = np.asarray(zp).astype(np.float16).astype(np.float32)
        zs = (z[None, :, :] * q.sum(axis=2).astype(np.float32)[:, None, :]).astype(np.float32)
        dot = np.einsum("mbi,nbi->mnb", q, c).astype(np.float32) - zs
        sw = scales.astype(np.float32)
    else:
        z = np.full((N, nb), 1 << (bits - 1), dtype=np.int64) if zp is None else zp.astype(np.int64)
        dot = np.einsum("mbi,nbi->mnb", q, c) - z[None, :, :] * q.sum(axis=2)[:, None, :]
        sw = scales.astype(np.float32)
    acc = np.zeros((M, N), dtype=np.float32)
    for b in range(nb):
        acc = (acc + dot[:, :, b].astype(np.float32) * (sa[:, b][:, None] * sw[:, b][None, :]).astype(np.float32)).astype(np.float32)
    return acc + (np.float32(0) if bias is None else bias)


def tiny_lm(V=40, D=32, H=48, F=64, seed=0, outlier_scale=12.0):
    """A small causal-LM-shaped graph with the patterns AWQ folds into (and one it cannot):
    ids -> Gather(E) -> RMSNorm (Mul by gamma) -> W1, W3 -> SwiGLU -> W2 -> residual
        -> LayerNormalization -> W4 (+bias) -> GELU (Erf) -> W5 -> residual -> Wout -> logits.
    A few channels of gamma and of the LayerNorm scale are large, so activations have outlier channels."""
    rng = np.random.default_rng(seed)

    def lin(i, o):
        return (rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32)

    gamma = np.ones(D, np.float32)
    gamma[[3, 17]] = outlier_scale
    ln_s = np.ones(D, np.float32)
    ln_s[[5]] = outlier_scale
    inits = {
        "E": rng.standard_normal((V, D)).astype(np.float32), "gamma": gamma, "eps": np.array(1e-5, np.float32),
        "W1": lin(D, H), "W3": lin(D, H), "W2": lin(H, D), "ln_s": ln_s, "ln_b": rng.standard_normal(D).astype(np.float32) * 0.1,
        "W4": lin(D, F), "b4": rng.standard_normal(F).astype(np.float32) * 0.1, "W5": lin(F, D), "Wout": lin(D, V),
        "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32), "r2": np.array(1 / np.sqrt(2), np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["E", "input_ids"], ["x"], name="embed"),
        n("Mul", ["x", "x"], ["xx"], name="sq"), n("ReduceMean", ["xx"], ["ms"], axes=[-1], keepdims=1, name="mean"),
        n("Add", ["ms", "eps"], ["mse"], name="addeps"), n("Sqrt", ["mse"], ["rms"], name="sqrt"),
        n("Div", ["x", "rms"], ["xn"], name="div"), n("Mul", ["xn", "gamma"], ["h"], name="norm_w"),
        n("MatMul", ["h", "W1"], ["a"], name="mm_w1"), n("MatMul", ["h", "W3"], ["u"], name="mm_w3"),
        n("Sigmoid", ["a"], ["sa"], name="sig"), n("Mul", ["a", "sa"], ["silu"], name="silu"),
        n("Mul", ["silu", "u"], ["act"], name="glu"), n("MatMul", ["act", "W2"], ["y"], name="mm_w2"),
        n("Add", ["x", "y"], ["x2"], name="res1"),
        n("LayerNormalization", ["x2", "ln_s", "ln_b"], ["ln"], axis=-1, epsilon=1e-5, name="ln"),
        n("MatMul", ["ln", "W4"], ["z0"], name="mm_w4"), n("Add", ["z0", "b4"], ["z"], name="b4add"),
        n("Mul", ["z", "r2"], ["zr"], name="g0"), n("Erf", ["zr"], ["ze"], name="g1"), n("Add", ["ze", "one"], ["z1"], name="g2"),
        n("Mul", ["z", "half"], ["zh"], name="g3"), n("Mul", ["zh", "z1"], ["gelu"], name="g4"),
        n("MatMul", ["gelu", "W5"], ["y2"], name="mm_w5"), n("Add", ["x2", "y2"], ["x3"], name="res2"),
        n("MatMul", ["x3", "Wout"], ["logits"], name="lm_head"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", V])],
                      [numpy_helper.from_array(v, k) for k, v in inits.items()])


def char_tokenizer(path, alphabet: str) -> str:
    """A tokenizer.json mapping each character of `alphabet` to its index (unknown characters to 0)."""
    from tinygpt import char_tokenizer as build  # models/ (not on the path of the fuzzer's child process)

    return str(build(path, alphabet, unk=alphabet[0]))


def write_external_data_model(path, layers: int, K: int, N: int, seed: int = 0) -> int:
    """A chain of `layers` MatMuls with float32 [K, N] weights (normal, std 1/sqrt(K)) stored in the
    external data file `<path>.data`, written one layer at a time (memory stays near one layer).
    Returns the bytes of weights written."""
    import os

    path = str(path)
    data_name = os.path.basename(path) + ".data"
    rng = np.random.default_rng(seed)
    inits, nodes, offset = [], [], 0
    with open(os.path.join(os.path.dirname(path), data_name), "wb") as f:
        for i in range(layers):
            w = rng.standard_normal((K, N), dtype=np.float32)
            w *= np.float32(1 / np.sqrt(K))
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[K, N],
                            data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += w.nbytes
            inits.append(t)
            nodes.append(helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"],
                                          ["y" if i == layers - 1 else f"h{i}"], name=f"mm{i}"))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])], inits)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return offset


def gqa_lm(V=48, D=64, heads=4, kv_heads=2, layers=2, context=64, seed=0):
    """A toy decoder with ONNX Runtime GenAI's KV-cache interface: input_ids, attention_mask,
    past_key_values.{i}.key/value [batch, kv_heads, past, 16] -> logits, present.{i}.key/value, attention
    by com.microsoft.GroupQueryAttention with fused rotary (seqlens_k and total_sequence_length computed
    from the mask as GenAI's builder does; no position_ids input). Weight MatMuls q, k, v, o and the head."""
    rng = np.random.default_rng(seed)
    hd = D // heads

    def lin(i, o):
        return (rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32)

    inv = 10000.0 ** (-np.arange(hd // 2) * 2 / hd)
    angles = np.arange(context)[:, None] * inv[None, :]
    inits = {"E": rng.standard_normal((V, D)).astype(np.float32), "Wout": lin(D, V), "one": np.array(1, np.int64),
             "axis1": np.array([1], np.int64), "cos": np.cos(angles).astype(np.float32),
             "sin": np.sin(angles).astype(np.float32)}
    n = helper.make_node
    nodes = [n("Gather", ["E", "input_ids"], ["x0"], name="embed"),
             n("ReduceSum", ["attention_mask", "axis1"], ["msum"], keepdims=0, name="msum"),
             n("Sub", ["msum", "one"], ["sk64"], name="sk"), n("Cast", ["sk64"], ["seqlens_k"], to=TensorProto.INT32, name="skc"),
             n("Shape", ["attention_mask"], ["tsl"], start=1, end=2, name="tsl"),
             n("Squeeze", ["tsl"], ["tsl0"], name="tsl0"), n("Cast", ["tsl0"], ["total"], to=TensorProto.INT32, name="tslc")]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V])]
    x = "x0"
    for i in range(layers):
        for w, o in (("q", D), ("k", kv_heads * hd), ("v", kv_heads * hd), ("o", D)):
            inits[f"W{w}{i}"] = lin(D, o)
        nodes += [n("MatMul", [x, f"W{w}{i}"], [f"{w}{i}"], name=f"mm_{w}{i}") for w in "qkv"]
        nodes.append(n("GroupQueryAttention", [f"q{i}", f"k{i}", f"v{i}", f"past_key_values.{i}.key",
                                                f"past_key_values.{i}.value", "seqlens_k", "total", "cos", "sin"],
                       [f"att{i}", f"present.{i}.key", f"present.{i}.value"], domain="com.microsoft", name=f"gqa{i}",
                       num_heads=heads, kv_num_heads=kv_heads, do_rotary=1))
        nodes += [n("MatMul", [f"att{i}", f"Wo{i}"], [f"ao{i}"], name=f"mm_o{i}"),
                  n("Add", [x, f"ao{i}"], [f"x{i + 1}"], name=f"res{i}")]
        x = f"x{i + 1}"
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                                                        ["batch", kv_heads, "past", hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         ["batch", kv_heads, "total", hd]))
    nodes.append(n("MatMul", [x, "Wout"], ["logits"], name="lm_head"))
    return make_model(nodes, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()],
                      extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
