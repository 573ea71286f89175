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
from int4onnx.passes.plan import MSFT_DOMAIN, LayerSpec, MatMulTarget, Names, PlanPass, QuantPlan
from int4onnx.passes.results import Growth, RewriteRecord

logger = logging.getLogger(__name__)

# com.microsoft::MatMulNBits' input slots (ONNX Runtime's contrib op schema; MatMulInt4's are _native.OP_INPUTS)
MATMULNBITS_INPUTS = {"A": 0, "B": 1, "scales": 2, "zero_points": 3, "g_idx": 4, "bias": 5}


def _np_dtype(dtype: ir.DataType):
    return np.float16 if dtype == ir.DataType.FLOAT16 else np.float32


class RewriteMatMulsPass(PlanPass):
    """Every target of the plan -> its quantized form; the new initializers are lazy and call `quantizer`
    (a passes.quantize.WeightQuantizer) by weight key when the saver reads them. Counts the nodes and
    keeps the initializers of tied tables in `record`."""

    def __init__(self, config: QuantConfig, plan: QuantPlan, quantizer, record: RewriteRecord):
        super().__init__(config, plan)
        self.quantizer = quantizer
        self.record = record

    def requires(self, model: ir.Model) -> None:
        nodes = {id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)}
        if any(id(t.node) not in nodes for t in self.plan.targets):
            raise ir.passes.PreconditionError("a target of the plan is not a node of this model")

    def ensures(self, model: ir.Model) -> None:
        nodes = {id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)}
        left = [t.node.name for t in self.plan.targets if id(t.node) in nodes]
        if left:
            raise ir.passes.PostconditionError(f"target MatMul/Gemm node(s) left in the graph: {left[:5]}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self.names = Names(graph)
        self.cache: dict[tuple, dict] = {}
        self.empties: dict[tuple, ir.Value] = {}
        # A quantized weight lives in the graph of the nodes that use it (inside an If/Loop body the
        # op then sees it as a constant); a weight shared across graphs goes to the main graph.
        homes = {}
        for key, targets in self.plan.targets_by_key().items():
            owners = {id(t.node.graph) for t in targets}
            homes[key] = targets[0].node.graph if len(owners) == 1 else graph
        for t in self.plan.targets:
            self.graph = homes[t.key]
            if t.key not in self.cache:
                self.cache[t.key] = self._weight_inputs(t)
            self.graph = t.node.graph
            self._rewrite(t, self.plan.specs[t.key], self.cache[t.key])
            self.record.nodes_rewritten += 1
        for t in self.plan.targets:  # float weights left unused inside subgraphs (the main graph's go later)
            w, owner = t.weight, t.weight.graph
            if owner is not None and owner is not graph and owner.initializers.get(w.name) is w and not w.uses() \
                    and w not in owner.outputs:
                del owner.initializers[w.name]
        fmt = self.config.format
        if self.record.nodes_rewritten:
            if fmt == "int4onnx":
                model.opset_imports[_native.DOMAIN] = 1
            elif fmt == "matmulnbits":
                model.opset_imports[MSFT_DOMAIN] = 1
        return ir.passes.PassResult(model, modified=self.record.nodes_rewritten > 0)

    # -- initializers (lazy: the weight is quantized when the saver asks for these bytes) -------------

    def _initializer(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
        return self.names.add_initializer(self.graph, base, array, dtype)

    def _lazy(self, base: str, shape, dtype: ir.DataType, make) -> ir.Value:
        return self.names.add_lazy(self.graph, base, shape, dtype, make)

    def _super_scale(self, base: str, spec: LayerSpec, N: int, make) -> ir.Value:
        """float32 super-scales [N] of int8 codes (scales or real zero points), or [1] for the tensor (the op
        broadcasts it)."""
        if spec.tensor_super_scale:
            return self._lazy(base, (1,), ir.DataType.FLOAT, lambda: make()[:1].astype(np.float32))
        return self._lazy(base, (N,), ir.DataType.FLOAT, lambda: make().astype(np.float32))

    def _weight_inputs(self, t: MatMulTarget) -> dict:
        """The weight's initializers by op input name (B, scales, zero_points, scales_scale,
        zero_points_scale; None if absent), and the block size the node states ("block"; None for a
        one-block DequantizeLinear). Real zero points are [N, n_blocks] of the scales' type (int8 codes
        with their float32 super-scales in zero_points_scale)."""
        spec: LayerSpec = self.plan.specs[t.key]
        quant = self.quantizer
        key, K, N, bits = t.key, t.K, t.N, spec.bits
        base = (t.weight.name or "weight") + ("_T" if t.transposed else "")
        nb = spec.n_blocks(K)
        scale_type = {"float16": ir.DataType.FLOAT16, "int8": ir.DataType.INT8}.get(spec.scale_dtype, ir.DataType.FLOAT)
        scale_np = np.dtype(spec.scale_dtype)
        if self.config.format in ("int4onnx", "matmulnbits"):
            block = spec.block_size
            if self.config.format == "matmulnbits" and block & (block - 1):
                block = 1 << (block - 1).bit_length()  # MatMulNBits wants a power of two; one block spans K here
            nbb = _native.n_blocks(K, block)
            data = self._lazy(f"{base}_q{bits}", (N, nbb, _native.blob_bytes(bits, block)), ir.DataType.UINT8,
                              lambda: quant(key).packed(block))
            sc = self._lazy(f"{base}_scales", (N, nb), scale_type, lambda: quant(key).stored_scales().astype(scale_np))
            zpv = zss = None
            if spec.grid.float_zero_points:
                zpv = self._lazy(f"{base}_zero_points", (N, nb), scale_type,
                                 lambda: quant(key).stored_zero_points().astype(scale_np))
                if spec.double_quant:
                    zss = self._super_scale(f"{base}_zero_points_scale", spec, N, lambda: quant(key).zero_points_scale)
            elif not spec.symmetric:
                zpv = self._lazy(f"{base}_zero_points", (N, _native.zero_point_row_bytes(nb, bits)), ir.DataType.UINT8,
                                 lambda: quant(key).packed_zero_points())
            gzp = None
            if key in self.plan.tied and not spec.symmetric and bits == 4:
                # a token Gather reads these too (QuantizeEmbeddingsPass); GatherBlockQuantized: one 4-bit
                # zero point a byte
                gzp = self._lazy(f"{base}_gather_zero_points", (N, nb, 1), ir.DataType.UINT8,
                                 lambda: quant(key).zero_points.reshape(N, nb, 1))
            ssv = None
            if spec.double_quant:
                ssv = self._super_scale(f"{base}_scales_scale", spec, N, lambda: quant(key).scales_scale)
            weights = {"B": data, "scales": sc, "zero_points": zpv, "scales_scale": ssv, "zero_points_scale": zss,
                       "block": block}
            if key in self.plan.tied:
                self.record.tied_inputs[key] = {**weights, "gather_zero_points": gzp}
            return weights
        # qdq: codes as a [K, N] int4/uint4 (or int8/uint8) tensor, scales [n_blocks, N] ([N] for one block)
        half = 1 << (bits - 1)
        one_block = nb == 1
        if spec.symmetric:
            xtype = ir.DataType.INT4 if bits == 4 else ir.DataType.INT8
            x_np = ml_dtypes.int4 if bits == 4 else np.int8

            def make_x():
                return np.ascontiguousarray((quant(key).codes.astype(np.int16) - half).T).astype(x_np)
        else:
            xtype = ir.DataType.UINT4 if bits == 4 else ir.DataType.UINT8
            x_np = ml_dtypes.uint4 if bits == 4 else np.uint8

            def make_x():
                return np.ascontiguousarray(quant(key).codes.T).astype(x_np)

        def per_block(a):  # [N, n_blocks] -> [n_blocks, N], or [N] for one block
            return np.ascontiguousarray(a[:, 0] if one_block else a.T)

        sshape = (N,) if one_block else (nb, N)
        xv = self._lazy(f"{base}_q{bits}", (K, N), xtype, make_x)
        sv = self._lazy(f"{base}_scales", sshape, scale_type, lambda: per_block(quant(key).scales.astype(scale_np)))
        zv = None
        if not spec.symmetric:
            zv = self._lazy(f"{base}_zero_points", sshape, xtype, lambda: per_block(quant(key).zero_points).astype(x_np))
        return {"B": xv, "scales": sv, "zero_points": zv, "scales_scale": None, "zero_points_scale": None,
                "block": None if one_block else spec.block_size}

    def _empty(self, dtype: ir.DataType) -> ir.Value:
        """A shared zero-element initializer standing for an absent optional input."""
        key = (id(self.graph), dtype)
        if key not in self.empties:
            self.empties[key] = self._initializer(f"int4onnx_absent_{dtype.name.lower()}",
                                                  np.zeros((0,), dtype=dtype.numpy()), dtype)
        return self.empties[key]

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

    def _rewrite(self, t: MatMulTarget, spec: LayerSpec, w: dict) -> None:
        node, fmt, c = t.node, self.config.format, self.config
        a = node.inputs[0]
        name = node.name or "matmul"
        folded, add_after = self._bias(t)
        new_nodes: list[ir.Node] = []
        if fmt == "int4onnx":
            values = {"K": t.K, "N": t.N, "bits": spec.bits, "block_size": w["block"],
                      "quant_type": spec.quant_type, "compute": c.compute}
            attrs = [ir.AttrString(n, values[n]) if isinstance(values[n], str) else ir.AttrInt64(n, values[n])
                     for n in _native.OP_ATTRS]
            extra = {} if w["zero_points_scale"] is None else {"zero_points_scale": w["zero_points_scale"]}
            inputs = _trim(_native.op_inputs(A=a, B=w["B"], scales=w["scales"], zero_points=w["zero_points"],
                                             bias=folded, scales_scale=w["scales_scale"], **extra))
            # no inner gaps: ONNX Runtime < 1.22 crashes on them in custom-op shape inference; a
            # zero-element tensor means "absent" to the op (zero points: symmetric; bias: none)
            gap_types = {"zero_points": ir.DataType.UINT8, "bias": t.dtype}
            for input_name, dtype in gap_types.items():
                i = _native.OP_INPUTS[input_name]
                if i < len(inputs) and inputs[i] is None:
                    inputs[i] = self._empty(dtype)
            new_nodes.append(ir.Node(_native.DOMAIN, _native.OP_NAME, inputs, attrs,
                                     name=self.names.fresh(f"{name}_MatMulInt4")))
        elif fmt == "matmulnbits":
            attrs = [ir.AttrInt64("K", t.K), ir.AttrInt64("N", t.N), ir.AttrInt64("bits", spec.bits),
                     ir.AttrInt64("block_size", w["block"])]
            if c.compute == "int8":
                attrs.append(ir.AttrInt64("accuracy_level", 4))
            values = {"A": a, "B": w["B"], "scales": w["scales"], "zero_points": w["zero_points"], "bias": folded}
            inputs = [values.get(n) for n in MATMULNBITS_INPUTS]
            new_nodes.append(ir.Node(MSFT_DOMAIN, "MatMulNBits", _trim(inputs), attrs,
                                     name=self.names.fresh(f"{name}_MatMulNBits")))
        else:
            x, sc, zp, block = w["B"], w["scales"], w["zero_points"], w["block"]
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


def check_growth(plan: QuantPlan, record: RewriteRecord) -> list[Growth]:
    """Fill record.grown with every quantized weight stored in more bytes than its float input (a float
    copy still read by another node, or padding), log a warning for each, and return the list. Run
    after unused initializers are removed."""
    grown = []
    for key, targets in plan.targets_by_key().items():
        t, spec = targets[0], plan.specs[key]
        float_bytes = t.K * t.N * (2 if t.dtype == ir.DataType.FLOAT16 else 4)
        stored = spec.storage_bytes(t.K, t.N)
        shared = record.tied_inputs.get(key)
        if shared is not None and shared["gather_zero_points"] is not None:
            stored += t.N * spec.n_blocks(t.K)
        readers = sorted({u.node.op_type for u in t.weight.uses()})
        why = None
        if readers:
            stored += float_bytes
            why = (f"the float weight is still read by {', '.join(readers)} node(s), so it is stored beside its "
                   "quantized copy")
        elif stored > float_bytes:
            why = f"its quantized form ({spec.describe()}, K={t.K}) takes more bytes than the float weight"
        if why:
            grown.append(Growth(tensor=t.weight.name, float_bytes=int(float_bytes), stored_bytes=int(stored), reason=why))
            logger.warning("tensor '%s' grows from %d to %d bytes: %s", t.weight.name, float_bytes, stored, why)
    record.grown = grown
    return grown
