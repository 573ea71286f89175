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
    """numpy statement of the int8 compute path: per-block activation quantization, exact integer dots."""
    M = A.shape[0]
    N = codes.shape[0]
    nb = -(-K // block)
    scales = int8_scales(scales)
    out = np.zeros((M, N), dtype=np.float32)
    nf4_i8 = np.rint(_native.nf4_codebook() * 127).astype(np.int64)
    for m in range(M):
        acc = np.zeros(N, dtype=np.float32)
        for b in range(nb):
            k0, k1 = b * block, min(K, (b + 1) * block)
            a = A[m, k0:k1].astype(np.float32)
            amax = np.float32(np.abs(a).max()) if k1 > k0 else np.float32(0)
            sa = np.float32(amax / np.float32(127))
            inv = np.float32(np.float32(127) / amax) if amax > 0 else np.float32(0)
            q = np.clip(np.rint((a * inv).astype(np.float32)), -127, 127).astype(np.int64)
            c = codes[:, k0:k1].astype(np.int64)
            if quant_type == "nf4":
                dot = nf4_i8[c] @ q
                sw = (scales[:, b] * np.float32(1 / 127)).astype(np.float32)
            else:
                z = np.full(N, 1 << (bits - 1)) if zp is None else zp[:, b].astype(np.int64)
                dot = c @ q - z * q.sum()
                sw = scales[:, b].astype(np.float32)
            acc = (acc + dot.astype(np.float32) * (sa * sw).astype(np.float32)).astype(np.float32)
        out[m] = acc + (0 if bias is None else bias)
    return out
