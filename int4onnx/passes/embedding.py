"""Language-model structure (token embeddings, the lm_head) and quantization of embedding tables.

find_embeddings: Gather nodes that look up rows of a 2-D float constant table by integer indices.
find_lm_heads: quantization targets whose output reaches a graph output through shape-only ops (no
    other MatMul) in a model that has such an embedding: the final projection to the vocabulary.
QuantizeEmbeddingsPass: Gather(table, ids) -> com.microsoft.GatherBlockQuantized(codes, ids, scales,
    zero_points) of ONNX Runtime (4- or 8-bit codes, blocks along the row, packed by our C packer:
    two codes a byte, low nibble first, which is that op's layout too). The table is quantized lazily,
    when the output is written.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from int4onnx import _native
from int4onnx.passes.plan import MSFT_DOMAIN, MatMulTarget, Names, PlanPass, read_float32
from int4onnx.quant.clip import quantize_clip
from int4onnx.quant.grid import Grid

logger = logging.getLogger(__name__)

_PASS_THROUGH = {"Identity", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Add", "Transpose"}


@dataclasses.dataclass
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


class QuantizeEmbeddingsPass(PlanPass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.config.embedding == "float":
            return ir.passes.PassResult(model, modified=False)
        bits = int(self.config.embedding)
        graph = model.graph
        names = Names(graph)
        done = 0
        for e in find_embeddings(graph):
            reason = self._why_not(e, graph)
            name = e.node.name or "Gather"
            if reason:
                self.plan.embeddings.append({"node": name, "table": e.table.name, "quantized": False, "reason": reason})
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
            self.plan.embeddings.append({"node": name, "table": e.table.name, "quantized": True, "bits": bits,
                                         "block_size": block, "V": e.V, "D": e.D, "bytes": int(storage),
                                         "bits_per_weight": round(8 * storage / (e.V * e.D), 4)})
            done += 1
        if done:
            model.opset_imports.setdefault(MSFT_DOMAIN, 1)
        return ir.passes.PassResult(model, modified=done > 0)

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
