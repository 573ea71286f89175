"""Language-model structure (token embeddings, the lm_head) and quantization of embedding tables.

find_embeddings: Gather nodes that look up rows of a 2-D float constant table by integer indices.
find_lm_heads: quantization targets whose output reaches a graph output through shape-only ops (no
    other MatMul) in a model that has such an embedding: the final projection to the vocabulary.
find_tied / apply_tied_policy: a table read by a token Gather and (directly or through Transpose) by a
    quantized MatMul/Gemm, usually the lm_head of a model with tied embeddings, is one tensor with one
    precision; it is quantized once, as that MatMul's weight ([N = V, K = D], blocks along D).
QuantizeEmbeddingsPass: Gather(table, ids) -> com.microsoft.GatherBlockQuantized(codes, ids, scales,
    zero_points) of ONNX Runtime (4- or 8-bit codes, blocks along the row, packed by our C packer:
    two codes a byte, low nibble first, which is that op's layout too). The table is quantized lazily,
    when the output is written. A tied table's Gather reads the MatMul's own packed codes
    [V, n_blocks, blob] (byte for byte MatMulInt4's and MatMulNBits' B), its scales through a Reshape
    to [V, n_blocks, 1] (the same bytes) and, asymmetric, its zero points: the same bytes for 8 bits;
    for 4 bits GatherBlockQuantized wants one zero point a byte where the MatMul packs two, so that
    small tensor ([V, n_blocks] bytes) is stored a second time.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from int4onnx import _native
from int4onnx.config import QuantConfig
from int4onnx.passes.plan import (
    MSFT_DOMAIN,
    LayerChoices,
    MatMulTarget,
    Names,
    PlanPass,
    QuantPlan,
    Selection,
    read_float32,
)
from int4onnx.passes.quantize import default_spec, float_scale_dtype
from int4onnx.passes.results import EmbeddingResult, RewriteRecord
from int4onnx.quant.clip import quantize_clip
from int4onnx.quant.grid import Grid

logger = logging.getLogger(__name__)

_PASS_THROUGH = {"Identity", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Add", "Transpose"}


@dataclasses.dataclass(frozen=True)
class Embedding:
    node: ir.Node
    table: ir.Value
    V: int
    D: int


def find_embeddings(graph: ir.Graph) -> list[Embedding]:
    out = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type != "Gather" or len(node.inputs) < 2:
            continue
        table, ids = node.inputs[0], node.inputs[1]
        axis = node.attributes.get("axis")
        if table is None or ids is None or (axis is not None and axis.value != 0):
            continue
        t = table.const_value
        if t is None or t.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) or len(t.shape) != 2:
            continue
        if ids.dtype is not None and ids.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            continue
        out.append(Embedding(node, table, int(t.shape[0]), int(t.shape[1])))
    return out


def _reaches_output(value: ir.Value, depth: int = 0) -> bool:
    if value.is_graph_output():
        return True
    if depth > 6:
        return False
    return any(c.domain in ("", "ai.onnx") and c.op_type in _PASS_THROUGH and
               any(_reaches_output(o, depth + 1) for o in c.outputs) for c in value.consumers())


def find_lm_heads(graph: ir.Graph, targets: list[MatMulTarget]) -> list[MatMulTarget]:
    """Targets producing the logits of a language model (empty if the model has no token embedding)."""
    inputs = set(graph.inputs)
    if not any(e.node.inputs[1] in inputs for e in find_embeddings(graph)):
        return []
    return [t for t in targets if _reaches_output(t.node.outputs[0])]


def find_tied(graph: ir.Graph, targets: list[MatMulTarget]) -> dict[tuple, list[Embedding]]:
    """Weight key -> the token-embedding Gathers that read the same [V, D] table the target multiplies
    by as its [K = D, N = V] weight (transposed)."""
    by_table: dict[int, list[Embedding]] = {}
    for e in find_embeddings(graph):
        by_table.setdefault(id(e.table), []).append(e)
    out: dict[tuple, list[Embedding]] = {}
    for t in targets:
        embs = by_table.get(id(t.weight))
        if embs and t.transposed and (t.K, t.N) == (embs[0].D, embs[0].V):
            out.setdefault(t.key, embs)
    return out


_FINENESS = {"4": 0, "8": 1, "float": 2}


def _gather_block(block: int, K: int) -> int:
    """GatherBlockQuantized's block size must be a power of two (16 or more): the largest one up to
    `block` that divides K, else `block` rounded up to a power of two (the row is padded)."""
    if block & (block - 1) == 0:
        return block
    for b in (256, 128, 64, 32, 16):
        if b <= block and K % b == 0:
            return b
    return 1 << (block - 1).bit_length()


def apply_tied_policy(plan: Selection, config: QuantConfig, graph: ir.Graph, tied: dict[tuple, list[Embedding]],
                      lm_heads: list[MatMulTarget]) -> LayerChoices:
    """One precision for each tied table (run on the selection after the LM policy; its choices override
    the LM policy's).

    The table is stored at the finer of --lm-head (for a lm_head; --bits for another MatMul) and
    --embedding ("float", the default of --embedding, leaves the choice to --lm-head): 8-bit by
    default. Both readers then use one int (not nf4) code with float scales of the table's type, so
    that GatherBlockQuantized can read it, and integer zero points (--float-zero-points leaves the table
    on the integer grid; --lm-head-symmetric makes a 4-bit lm_head's table symmetric). When the table cannot be shared that way, the MatMul stays
    float too: a quantized copy beside the float table would make the output larger than the input."""
    heads = {t.key for t in lm_heads}
    specs, decisions, floats, tied_keys, tied_float = {}, {}, {}, {}, {}
    for key, embs in tied.items():
        table, gathers = embs[0].table, ", ".join(e.node.name or "Gather" for e in embs)
        targets = [t for t in plan.targets if t.key == key]
        option = f"--lm-head {config.lm_head}" if key in heads else f"--bits {config.bits}"
        head = config.lm_head if key in heads and config.lm_head != "4" else str(config.bits)  # 4: like the others
        emb = config.embedding
        choice = head if emb == "float" or _FINENESS[head] >= _FINENESS[emb] else emb
        what = f"tied with the token embedding {gathers} (table '{table.name}')"
        why = None
        if choice == "float" or not targets:
            why = f"{what}: kept float ({option}); the table stays float for both"
        elif config.format == "qdq":
            why = (f"{what}: --format qdq has no quantized Gather to share the table with, so the table and "
                   "this MatMul stay float (use --format int4onnx or matmulnbits)")
        elif table.name not in graph.initializers or table.is_graph_input():
            why = f"{what}: the table is not an initializer of the main graph, so it stays float"
        elif any(t.alpha != 1.0 or t.node.graph is not graph for t in targets):
            why = f"{what}: Gemm alpha != 1 or a node inside a subgraph; the table stays float"
        if why is not None:
            tied_float[table.name] = why
            if targets:
                floats[key] = why
            logger.info("%s", why)
            continue
        t = targets[0]
        spec = default_spec(config, t, bits=int(choice), lm_head=key in heads)
        block = _gather_block(spec.block_size, t.K)
        # float scales (no int8 scales: the Gather takes float ones); float16 scales of a float32 model
        # reach the Gather through a Cast (QuantizeEmbeddingsPass._tied)
        scale_dtype = float_scale_dtype(config, t, spec.bits, spec.symmetric, "int") if spec.double_quant \
            else spec.scale_dtype
        # and integer zero points: GatherBlockQuantized reads no real ones (--lm-head-symmetric: none at all)
        spec = dataclasses.replace(spec, quant_type="int", tensor_super_scale=False, block_size=block,
                                   scale_dtype=scale_dtype, float_zero_points=False)
        specs[key] = spec
        tied_keys[key] = tuple(embs)
        source = option + (f", --embedding {emb}" if emb != "float" else "")
        decisions[key] = f"{what}: one {spec.describe()} table for both ({source})"
    return LayerChoices(specs=specs, decisions=decisions, floats=floats, tied=tied_keys, tied_float=tied_float)


class QuantizeEmbeddingsPass(PlanPass):
    """Token Gathers -> GatherBlockQuantized (--embedding; tied tables read RewriteMatMulsPass's
    initializers from `record`); records every table in ``record.embeddings``."""

    def __init__(self, config: QuantConfig, plan: QuantPlan, record: RewriteRecord):
        super().__init__(config, plan)
        self.record = record

    def requires(self, model: ir.Model) -> None:
        if any(key not in self.record.tied_inputs for key in self.plan.tied):
            raise ir.passes.PreconditionError("tied tables need the rewrite's initializers (run RewriteMatMulsPass first)")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan = self.plan
        if self.config.embedding == "float" and not plan.tied and not plan.tied_float:
            return ir.passes.PassResult(model, modified=False)
        graph = model.graph
        names = Names(graph)
        done = 0
        tied = {id(e.node): key for key, embs in plan.tied.items() for e in embs}
        for e in find_embeddings(graph):
            name = e.node.name or "Gather"
            if e.table.name in plan.tied_float:
                self.record.embeddings.append(EmbeddingResult(node=name, table=e.table.name, quantized=False,
                                                              reason=plan.tied_float[e.table.name]))
                continue
            if id(e.node) in tied and tied[id(e.node)] in self.record.tied_inputs:
                self._tied(e, tied[id(e.node)], graph, names)
                done += 1
                continue
            if self.config.embedding == "float":
                continue
            bits = int(self.config.embedding)
            reason = self._why_not(e, graph)
            if reason:
                self.record.embeddings.append(EmbeddingResult(node=name, table=e.table.name, quantized=False, reason=reason))
                logger.info("embedding %s left float: %s", name, reason)
                continue
            block = self._block(e.D)
            dtype = e.table.const_value.dtype
            nb = e.D // block
            grid = Grid(bits=bits, symmetric=False, scale_dtype="float16" if dtype == ir.DataType.FLOAT16 else "float32")
            cache: dict = {}

            def quantized(e=e, block=block, grid=grid, cache=cache):
                if "q" not in cache:
                    cache.clear()
                    table = read_float32(e.table.const_value)
                    cache["q"] = quantize_clip(np.ascontiguousarray(table.T), grid, block)  # rows = columns of [D, V]
                return cache["q"]

            row = e.D * bits // 8
            data = names.add_lazy(graph, f"{e.table.name}_q{bits}", (e.V, row), ir.DataType.UINT8,
                        lambda q=quantized, r=row, V=e.V, b=block: q().packed(b).reshape(V, r))
            sc = names.add_lazy(graph, f"{e.table.name}_scales", (e.V, nb), dtype,
                      lambda q=quantized, dt=dtype: q().scales.astype(dt.numpy()))
            zp = names.add_lazy(graph, f"{e.table.name}_zero_points", (e.V, _native.zero_point_row_bytes(nb, bits)), ir.DataType.UINT8,
                      lambda q=quantized: q().packed_zero_points())
            attrs = [ir.AttrInt64("gather_axis", 0), ir.AttrInt64("quantize_axis", 1),
                     ir.AttrInt64("block_size", block), ir.AttrInt64("bits", bits)]
            new = ir.Node(MSFT_DOMAIN, "GatherBlockQuantized", [data, e.node.inputs[1], sc, zp], attrs,
                          name=names.fresh(f"{name}_GatherBlockQuantized"))
            ir.convenience.replace_nodes_and_values(graph, e.node, [e.node], [new], [e.node.outputs[0]], [new.outputs[0]])
            storage = e.V * row + e.V * nb * np.dtype(dtype.numpy()).itemsize + e.V * _native.zero_point_row_bytes(nb, bits)
            self.record.embeddings.append(EmbeddingResult(
                node=name, table=e.table.name, quantized=True, bits=bits, block_size=block, V=e.V, D=e.D,
                bytes=int(storage), bits_per_weight=round(8 * storage / (e.V * e.D), 4)))
            done += 1
        if done:
            model.opset_imports.setdefault(MSFT_DOMAIN, 1)
        return ir.passes.PassResult(model, modified=done > 0)

    def _tied(self, e: Embedding, key: tuple, graph: ir.Graph, names: Names) -> None:
        """Gather rows of a table the rewrite quantized as a MatMul weight, from the same initializers."""
        shared, spec = self.record.tied_inputs[key], self.plan.specs[key]
        block, bits = shared["block"], spec.bits
        nb = _native.n_blocks(e.D, block)
        name = e.node.name or "Gather"
        nodes: list[ir.Node] = []

        def node(op, inputs, attrs=(), domain=""):
            n = ir.Node(domain, op, inputs, list(attrs), name=names.fresh(f"{name}_{op}"))
            n.outputs[0].name = names.fresh(f"{name}_{op.lower()}_out")
            nodes.append(n)
            return n.outputs[0]

        blocks = names.add_initializer(graph, f"{e.table.name}_blocks_shape", np.array([e.V, nb, 1], dtype=np.int64))
        scales = node("Reshape", [shared["scales"], blocks])
        out_type = self.plan.targets_by_key()[key][0].dtype
        if shared["scales"].dtype != out_type:  # float16 scales of a float32 table: the Gather wants the output type
            scales = node("Cast", [scales], [ir.AttrInt64("to", out_type.value)])
        inputs = [shared["B"], e.node.inputs[1], scales]
        if not spec.symmetric:
            inputs.append(shared["gather_zero_points"] if bits == 4 else node("Reshape", [shared["zero_points"], blocks]))
        attrs = [ir.AttrInt64("gather_axis", 0), ir.AttrInt64("quantize_axis", 2), ir.AttrInt64("block_size", block),
                 ir.AttrInt64("bits", bits)]
        rows = node("GatherBlockQuantized", inputs, attrs, MSFT_DOMAIN)   # [ids..., n_blocks, block]
        width = names.add_initializer(graph, f"{e.table.name}_row_length", np.array([nb * block], dtype=np.int64))
        shape = node("Concat", [node("Shape", [e.node.inputs[1]]), width], [ir.AttrInt64("axis", 0)])
        out = node("Reshape", [rows, shape])
        if nb * block != e.D:  # the padding of the last block dequantizes to zeros: cut it off
            def const(base, v):
                return names.add_initializer(graph, f"{e.table.name}_{base}", np.array([v], dtype=np.int64))
            node("Slice", [out, const("slice_start", 0), const("slice_end", e.D), const("slice_axis", -1)])
        ir.convenience.replace_nodes_and_values(graph, e.node, [e.node], nodes, [e.node.outputs[0]], [nodes[-1].outputs[0]])
        t = self.plan.targets_by_key()[key][0]
        extra = e.V * nb if shared["gather_zero_points"] is not None else 0
        storage = spec.storage_bytes(t.K, t.N) + extra
        self.record.embeddings.append(EmbeddingResult(
            node=name, table=e.table.name, quantized=True, bits=bits, block_size=block, V=e.V, D=e.D,
            shared_with=tuple(x.node.name or "" for x in self.plan.targets_by_key()[key]), bytes=int(storage),
            extra_bytes=int(extra), bits_per_weight=round(8 * storage / (e.V * e.D), 4)))

    def _block(self, D: int) -> int:
        g = self.config.group_size
        if g > 0 and D % g == 0:
            return g
        for b in (32, 16, 64, 128, 256):
            if D % b == 0:
                return b
        return 0

    def _why_not(self, e: Embedding, graph: ir.Graph) -> str | None:
        if e.table.name not in graph.initializers or e.table.is_graph_input():
            return "the table is not an initializer"
        if any(u.node is not e.node for u in e.table.uses()):
            return "the table is also used by other nodes (e.g. a tied lm_head); quantizing it would keep a float copy"
        if e.V == 0 or e.D == 0:
            return f"the table has shape [{e.V}, {e.D}]: nothing to quantize"
        if not self._block(e.D):
            return f"row length {e.D} is not a multiple of 16 (GatherBlockQuantized blocks)"
        return None
