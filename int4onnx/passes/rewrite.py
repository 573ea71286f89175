"""Replace each selected MatMul/Gemm by its quantized form in the chosen output format.

Formats:
  int4onnx     com.int4onnx::MatMulInt4 (our native op; portable layout of int4onnx.h)
  matmulnbits  com.microsoft::MatMulNBits (ONNX Runtime's contrib op; same bytes)
  qdq          opset-21 DequantizeLinear (int4/uint4, blocked along K) + MatMul: stock runtimes
"""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np
import onnx_ir as ir

from int4onnx import _native
from int4onnx.config import QuantConfig
from int4onnx.passes.plan import MatMulTarget, QuantPlan
from int4onnx.quant.base import QuantizedWeight

logger = logging.getLogger(__name__)

MSFT_DOMAIN = "com.microsoft"


def _np_dtype(dtype: ir.DataType):
    return np.float16 if dtype == ir.DataType.FLOAT16 else np.float32


class _Names:
    """Fresh value names that collide with nothing in the graph."""

    def __init__(self, graph: ir.Graph):
        self.used = set(graph.initializers)
        self.used.update(v.name for v in graph.inputs if v.name)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self.used.update(v.name for v in node.outputs if v.name)
            if node.name:
                self.used.add(node.name)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


class RewriteMatMulsPass(ir.passes.InPlacePass):
    def __init__(self, config: QuantConfig, plan: QuantPlan):
        super().__init__()
        self.config = config
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self.names = _Names(graph)
        self.graph = graph
        self.cache: dict[tuple, list] = {}
        self.empties: dict[ir.DataType, ir.Value] = {}
        for t in self.plan.targets:
            layer = self.plan.layers[t.key]
            if t.key not in self.cache:
                self.cache[t.key] = self._weight_inputs(t, layer.weight)
            self._rewrite(t, layer.weight, self.cache[t.key])
            self.plan.rewritten += 1
        fmt = self.config.format
        if self.plan.rewritten:
            if fmt == "int4onnx":
                model.opset_imports[_native.DOMAIN] = 1
            elif fmt == "matmulnbits":
                model.opset_imports[MSFT_DOMAIN] = 1
        return ir.passes.PassResult(model, modified=self.plan.rewritten > 0)

    # -- initializers ---------------------------------------------------------------------------

    def _initializer(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
        name = self.names.fresh(base)
        tensor = ir.Tensor(array, dtype=dtype, name=name)
        value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def _weight_inputs(self, t: MatMulTarget, qw: QuantizedWeight) -> list:
        base = t.weight.name or "weight"
        if t.transposed:
            base += "_T"
        fmt, bits = self.config.format, qw.bits
        scales = qw.scales.astype(_np_dtype(t.dtype))
        if fmt in ("int4onnx", "matmulnbits"):
            block = qw.block_size
            if fmt == "matmulnbits" and block & (block - 1):
                block = 1 << (block - 1).bit_length()  # MatMulNBits wants a power of two; one block spans K here
            data = self._initializer(f"{base}_q{bits}", qw.packed(block))
            sc = self._initializer(f"{base}_scales", scales)
            zp = qw.packed_zero_points()
            zpv = None if zp is None else self._initializer(f"{base}_zero_points", zp)
            return [data, sc, zpv, block]
        # qdq: codes as a [K, N] int4/uint4 (or int8/uint8) tensor
        half = 1 << (bits - 1)
        if qw.zero_points is None:
            codes = (qw.codes.astype(np.int16) - half).T.astype(np.int8)
            x = codes.astype(ml_dtypes.int4) if bits == 4 else codes
            xtype = ir.DataType.INT4 if bits == 4 else ir.DataType.INT8
            zp = None
        else:
            codes = np.ascontiguousarray(qw.codes.T)
            x = codes.astype(ml_dtypes.uint4) if bits == 4 else codes
            xtype = ir.DataType.UINT4 if bits == 4 else ir.DataType.UINT8
            zp = np.ascontiguousarray(qw.zero_points.T)  # [n_blocks, N]
            if bits == 4:
                zp = zp.astype(ml_dtypes.uint4)
        scales_kn = np.ascontiguousarray(scales.T)  # [n_blocks, N]
        one_block = qw.n_blocks == 1
        if one_block:  # per-channel: axis=1, scale [N]
            scales_kn = scales_kn[0]
            if zp is not None:
                zp = zp[0]
        xv = self._initializer(f"{base}_q{bits}", np.ascontiguousarray(x), xtype)
        sv = self._initializer(f"{base}_scales", scales_kn)
        zv = None if zp is None else self._initializer(f"{base}_zero_points", np.ascontiguousarray(zp), xtype)
        return [xv, sv, zv, None if one_block else qw.block_size]

    def _empty(self, dtype: ir.DataType) -> ir.Value:
        """A shared zero-element initializer standing for an absent optional input."""
        if dtype not in self.empties:
            self.empties[dtype] = self._initializer(f"int4onnx_absent_{dtype.name.lower()}",
                                                    np.zeros((0,), dtype=dtype.numpy()), dtype)
        return self.empties[dtype]

    # -- nodes ----------------------------------------------------------------------------------

    def _bias(self, t: MatMulTarget):
        """(folded bias value or None, value to Add after the op or None)."""
        if t.bias is None:
            return None, None
        const = ir.convenience.get_const_tensor(t.bias)
        if const is not None:
            c = const.numpy().astype(np.float32)
            if c.size in (1, t.N) and (c.ndim <= 1 or c.shape in ((1, t.N), (1, 1))):
                folded = np.broadcast_to(c.reshape(-1), (t.N,)) * np.float32(t.beta)
                base = (t.bias.name or "bias") + ("" if t.beta == 1.0 else "_scaled")
                return self._initializer(base, np.ascontiguousarray(folded.astype(_np_dtype(t.dtype)))), None
        return None, t.bias

    def _rewrite(self, t: MatMulTarget, qw: QuantizedWeight, w_inputs: list) -> None:
        node, fmt, c = t.node, self.config.format, self.config
        a = node.inputs[0]
        name = node.name or "matmul"
        folded, add_after = self._bias(t)
        new_nodes: list[ir.Node] = []
        if fmt == "int4onnx":
            data, sc, zp, block = w_inputs
            attrs = [ir.AttrInt64("K", t.K), ir.AttrInt64("N", t.N), ir.AttrInt64("bits", qw.bits),
                     ir.AttrInt64("block_size", block), ir.AttrString("quant_type", qw.quant_type),
                     ir.AttrString("compute", c.compute)]
            inputs = _trim([a, data, sc, zp, folded])
            if len(inputs) > 4 and inputs[3] is None:
                # no inner gaps: ONNX Runtime < 1.22 crashes on them in custom-op shape inference;
                # a zero-element zero-point tensor means "symmetric" to the op
                inputs[3] = self._empty(ir.DataType.UINT8)
            new_nodes.append(ir.Node(_native.DOMAIN, _native.OP_NAME, inputs, attrs,
                                     name=self.names.fresh(f"{name}_MatMulInt4")))
        elif fmt == "matmulnbits":
            data, sc, zp, block = w_inputs
            attrs = [ir.AttrInt64("K", t.K), ir.AttrInt64("N", t.N), ir.AttrInt64("bits", qw.bits),
                     ir.AttrInt64("block_size", block)]
            if c.compute == "int8":
                attrs.append(ir.AttrInt64("accuracy_level", 4))
            inputs = [a, data, sc, zp, None, folded]
            new_nodes.append(ir.Node(MSFT_DOMAIN, "MatMulNBits", _trim(inputs), attrs,
                                     name=self.names.fresh(f"{name}_MatMulNBits")))
        else:
            x, sc, zp, block = w_inputs
            attrs = [ir.AttrInt64("axis", 0 if block else 1)]
            if block:
                attrs.append(ir.AttrInt64("block_size", block))
            dq = ir.Node("", "DequantizeLinear", _trim([x, sc, zp]), attrs, name=self.names.fresh(f"{name}_DequantizeLinear"))
            dq.outputs[0].name = self.names.fresh(f"{name}_weight_dq")
            mm = ir.Node("", "MatMul", [a, dq.outputs[0]], name=self.names.fresh(f"{name}_MatMul"))
            new_nodes += [dq, mm]
            if folded is not None:
                mm.outputs[0].name = self.names.fresh(f"{name}_mm")
                new_nodes.append(ir.Node("", "Add", [mm.outputs[0], folded], name=self.names.fresh(f"{name}_bias")))
        if add_after is not None:
            last = new_nodes[-1]
            last.outputs[0].name = self.names.fresh(f"{name}_q_out")
            addend = add_after
            if t.beta != 1.0:
                beta = self._initializer(f"{name}_beta", np.array(t.beta, dtype=_np_dtype(t.dtype)))
                mul = ir.Node("", "Mul", [add_after, beta], name=self.names.fresh(f"{name}_beta_mul"))
                mul.outputs[0].name = self.names.fresh(f"{name}_beta_c")
                new_nodes.append(mul)
                addend = mul.outputs[0]
            new_nodes.append(ir.Node("", "Add", [last.outputs[0], addend], name=self.names.fresh(f"{name}_add_c")))
        ir.convenience.replace_nodes_and_values(self.graph, node, [node], new_nodes, [node.outputs[0]],
                                                [new_nodes[-1].outputs[0]])


def _trim(inputs: list) -> list:
    """Drop trailing missing optional inputs; keep inner ones as empty."""
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs
