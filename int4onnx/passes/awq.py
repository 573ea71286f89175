"""AwqPass: activation-aware input-channel scaling (quant/awq.py) applied to the graph.

For each activation that feeds quantized MatMuls (e.g. the RMSNorm output feeding Q, K and V), the
pass searches one scale vector s on the calibration statistics, multiplies the rows of those weights
by s and divides the activation by s, so the float model computes the same function:

- folded into the op that produces the activation, when that is exact and touches nothing else:
  the constant multiplier of a Mul (RMSNorm's weight), LayerNormalization's scale and bias, the
  columns of a preceding MatMul's constant weight (through an Add of a constant bias, and through an
  elementwise Mul of two activations, e.g. SwiGLU's gate * up, by scaling one factor);
- otherwise kept as an input scale: a Mul by 1/s inserted before the MatMuls (one elementwise
  multiply per row at run time).

Weight scaling is lazy (the initializer becomes an ir.LazyTensor over the original), so memory stays
bounded by the largest layer. The pass's ``result`` (an AwqResult, for the plan) holds the statistics
with those of each scaled activation replaced, s by weight key (for the report's before/after
comparison) and the decision for each weight.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx_ir as ir

from int4onnx.config import QuantConfig
from int4onnx.passes.plan import AwqDecision, AwqResult, MatMulTarget, Names, read_float32
from int4onnx.quant.awq import search_scales
from int4onnx.quant.grid import fake_quantize

logger = logging.getLogger(__name__)

Action = Callable[[], None]


def _single_consumer(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and all(c is node for c in value.consumers()) and len(value.uses()) == 1


def _exclusive_initializer(value: ir.Value | None, node: ir.Node, graph: ir.Graph) -> bool:
    """A constant initializer used by `node` only (so rescaling it changes nothing else)."""
    return (value is not None and value.const_value is not None and value.name in graph.initializers
            and not value.is_graph_input() and not value.is_graph_output()
            and all(u.node is node for u in value.uses()))


def _per_channel(value: ir.Value, K: int) -> bool:
    """A constant of K elements broadcasting along the last axis only ([K] or [1, ..., 1, K])."""
    shape = [int(d) for d in value.const_value.shape]
    return bool(shape) and shape[-1] == K and int(np.prod(shape)) == K


def scale_initializer(value: ir.Value, scale: np.ndarray, axis: int) -> None:
    """Multiply a constant along `axis` by `scale`, lazily (the product is made when it is read)."""
    old = value.const_value
    dtype, shape, name = old.dtype, old.shape, value.name
    scale = np.asarray(scale, dtype=np.float32)

    def make():
        a = read_float32(old)
        b = a * scale.reshape([-1 if i == axis % a.ndim else 1 for i in range(a.ndim)])
        return ir.Tensor(b.astype(dtype.numpy()), name=name)

    value.const_value = ir.LazyTensor(make, dtype=dtype, shape=shape, name=name, cache=False)


class AwqPass(ir.passes.InPlacePass):
    """Scales the inputs of `targets` (calibration statistics `stats` by input name); ``result`` after the run."""

    def __init__(self, config: QuantConfig, targets, stats, spec_for: Callable[[MatMulTarget], object]):
        super().__init__()
        self.config = config
        self.targets = tuple(targets)
        self.stats = dict(stats)
        self.input_scales: dict[tuple, np.ndarray] = {}
        self.awq: dict[tuple, AwqDecision] = {}
        self.spec_for = spec_for  # target -> LayerSpec used for the search

    @property
    def result(self) -> AwqResult:
        return AwqResult(input_scales=dict(self.input_scales), decisions=dict(self.awq), stats=dict(self.stats))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.graph = model.graph
        self.names = Names(self.graph)
        self.target_nodes = {id(t.node): t for t in self.targets}
        groups: dict[str, list[MatMulTarget]] = {}
        for t in self.targets:
            groups.setdefault(t.node.inputs[0].name, []).append(t)
        modified = False
        for name, targets in groups.items():
            modified |= self._group(name, targets)
        return ir.passes.PassResult(model, modified=modified)

    # -- one activation and the MatMuls it feeds ----------------------------------------------------

    def _group(self, name: str, targets: list[MatMulTarget]) -> bool:
        stats = self.stats.get(name)
        by_key: dict[tuple, MatMulTarget] = {}
        for t in targets:
            by_key.setdefault(t.key, t)
        blocker = self._blocker(targets, by_key, stats)
        if blocker:
            for key in by_key:
                self.awq[key] = AwqDecision(applied=False, reason=blocker)
            logger.info("awq: %s left unscaled: %s", name, blocker)
            return False
        weights = [t.weight_kn() for t in by_key.values()]
        spec = self.spec_for(targets[0])
        grid = spec.grid
        s, alpha, losses = search_scales(weights, stats.mean_abs, stats.gram,
                                         lambda w: fake_quantize(w, grid, spec.block_size))
        del weights
        gain = losses[alpha] / losses[0.0] if losses[0.0] > 0 else 1.0
        if alpha == 0.0:
            for key in by_key:
                self.awq[key] = AwqDecision(applied=False, reason="the search kept alpha = 0 (no scaling helps)")
            return False
        value = targets[0].node.inputs[0]
        where = self._divide_input(value, targets, s)
        for key, t in by_key.items():
            scale_initializer(t.weight, s, axis=1 if t.transposed else 0)
            self.input_scales[key] = s
            self.awq[key] = AwqDecision(applied=True, alpha=round(alpha, 3), input_scale=where,
                                        calibration_output_error_ratio=round(float(gain), 4))
        new_value = targets[0].node.inputs[0]
        self.stats[new_value.name] = stats.scaled(1.0 / s)
        logger.info("awq: %s alpha %.2f, output error x%.3f, input scale %s", name, alpha, gain, where)
        return True

    def _blocker(self, targets, by_key, stats) -> str | None:
        if stats is None or not stats.has_gram:
            return "no calibration statistics for its input"
        nodes = {id(t.node) for t in targets}
        for t in by_key.values():
            if t.weight.name not in self.graph.initializers or t.weight.is_graph_input():
                return f"weight '{t.weight.name}' is not an initializer"
            if any(id(u.node) not in nodes for u in t.weight.uses()):
                return f"weight '{t.weight.name}' is also used by nodes outside this group"
        return None

    # -- dividing the activation by s ---------------------------------------------------------------

    def _divide_input(self, value: ir.Value, targets: list[MatMulTarget], s: np.ndarray) -> str:
        inv = (1.0 / s).astype(np.float32)
        nodes = {id(t.node) for t in targets}
        only_targets = not value.is_graph_output() and all(id(c) in nodes for c in value.consumers())
        if only_targets and not value.is_graph_input():
            plan = self._fold_actions(value, inv, depth=0)
            if plan is not None:
                actions, where = plan
                for act in actions:
                    act()
                return where
        return self._insert_mul(value, targets, inv)

    def _fold_actions(self, value: ir.Value, inv: np.ndarray, depth: int) -> tuple[list[Action], str] | None:
        """Actions that make `value` come out divided per channel by s, changing nothing else; or None."""
        p = value.producer()
        K = inv.shape[0]
        if p is None or depth > 4 or p.domain not in ("", "ai.onnx"):
            return None
        ins = list(p.inputs)
        if p.op_type == "Mul" and len(ins) == 2:
            for const in ins:
                if const is not None and _exclusive_initializer(const, p, self.graph) and _per_channel(const, K):
                    return [lambda c=const: scale_initializer(c, inv, axis=-1)], f"folded into {const.name} (Mul)"
            for operand in reversed(ins):  # x * y of two activations: scale one factor
                if operand is not None and operand.const_value is None and _single_consumer(operand, p):
                    sub = self._fold_actions(operand, inv, depth + 1)
                    if sub is not None:
                        return sub
            return None
        if p.op_type == "LayerNormalization":
            axis = p.attributes.get("axis")
            scale, bias = ins[1] if len(ins) > 1 else None, ins[2] if len(ins) > 2 else None
            if (axis is None or axis.value == -1 or (value.shape is not None and axis.value == len(value.shape) - 1)) \
                    and _exclusive_initializer(scale, p, self.graph) and _per_channel(scale, K) \
                    and (bias is None or (_exclusive_initializer(bias, p, self.graph) and _per_channel(bias, K))):
                acts = [lambda: scale_initializer(scale, inv, axis=-1)]
                if bias is not None:
                    acts.append(lambda: scale_initializer(bias, inv, axis=-1))
                return acts, f"folded into {scale.name} (LayerNormalization)"
            return None
        if p.op_type == "Add" and len(ins) == 2:
            for i, const in enumerate(ins):
                other = ins[1 - i]
                if const is not None and other is not None and _exclusive_initializer(const, p, self.graph) \
                        and _per_channel(const, K) and other.const_value is None and _single_consumer(other, p):
                    sub = self._fold_actions(other, inv, depth + 1)
                    if sub is not None:
                        return sub[0] + [lambda c=const: scale_initializer(c, inv, axis=-1)], sub[1]
            return None
        if p.op_type == "MatMul" and len(ins) == 2:
            w = ins[1]
            if _exclusive_initializer(w, p, self.graph) and w.const_value is not None \
                    and len(w.const_value.shape) == 2 and int(w.const_value.shape[1]) == K:
                return [lambda: scale_initializer(w, inv, axis=1)], f"folded into the columns of {w.name} (MatMul)"
            return None
        return None

    def _insert_mul(self, value: ir.Value, targets: list[MatMulTarget], inv: np.ndarray) -> str:
        const = self.names.add_initializer(self.graph, f"{value.name}_awq_inv_scale",
                                           inv.astype(targets[0].dtype.numpy()))
        mul = ir.Node("", "Mul", [value, const], name=self.names.fresh(f"{value.name}_awq_Mul"))
        out = mul.outputs[0]
        out.name = self.names.fresh(f"{value.name}_awq")
        out.type = value.type
        out.shape = value.shape
        nodes = {id(t.node) for t in targets}
        first = next(n for n in self.graph if id(n) in nodes)
        self.graph.insert_before(first, mul)
        for t in targets:
            t.node.replace_input_with(0, out)
        return f"input Mul by 1/s ({mul.name})"
