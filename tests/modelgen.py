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
    """float64 [K, N] from codes [N, K], scales [N, nb], zp [N, nb] or None."""
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
    then per block, in block order, y += dot * (scale_a * scale_w) in float32."""
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
    else:
        z = np.full((N, nb), 1 << (bits - 1), dtype=np.int64) if zp is None else zp.astype(np.int64)
        dot = np.einsum("mbi,nbi->mnb", q, c) - z[None, :, :] * q.sum(axis=2)[:, None, :]
        sw = scales.astype(np.float32)
    acc = np.zeros((M, N), dtype=np.float32)
    for b in range(nb):
        acc = (acc + dot[:, :, b].astype(np.float32) * (sa[:, b][:, None] * sw[:, b][None, :]).astype(np.float32)).astype(np.float32)
    return acc + (np.float32(0) if bias is None else bias)
