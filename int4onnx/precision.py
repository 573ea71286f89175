"""Per-layer precision: the LM policy (lm_head) and mixed precision by estimated sensitivity.

Sensitivity of a layer option = the squared relative error of the model's outputs on calibration
samples when only that layer is quantized with that option. It is measured end to end in ONNX Runtime
once per layer (the float model runs with the layer's weight replaced by its dequantized version at
the first option: weights become overridable inputs of one session, so no model is rebuilt per layer)
and carried over to the layer's other options by their layer output errors tr(D^T G D) from the
calibration Gram matrix (measure_sensitivity). Errors of different layers are treated as independent,
so the squared relative output error of a choice is estimated as the sum of the layers' squared errors.

Each layer can be 4-bit (the configured format, or finer groups), 8-bit (same op, bits=8) or float.
With ``target_bits`` the layers are promoted greedily by error reduction per extra bit while the
average bits per weight over all selected MatMul weights (float ones counted at 16/32) stays within
the target; with ``max_error`` the most error-reducing promotions per bit are taken until the
estimated error is at most the bound. Only one layer's weights are held at a time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time

import numpy as np
import onnx_ir as ir

from int4onnx._threads import blas_threads_for, cpu_threads
from int4onnx.config import GROUP_SIZES, QuantConfig
from int4onnx.errors import ConfigError
from int4onnx.passes.plan import LayerChoices, LayerSpec, MatMulTarget, MixedPrecisionSummary, QuantPlan, Selection
from int4onnx.passes.quantize import WeightQuantizer, default_spec, rtn_method

logger = logging.getLogger(__name__)



@dataclasses.dataclass
class Option:
    name: str                 # "4", "8" or "float"
    spec: LayerSpec | None    # None = float
    bits: float               # storage bits of the layer
    error2: float = 0.0       # measured squared relative output error


def float_bits(t: MatMulTarget) -> int:
    return t.K * t.N * (16 if t.dtype == ir.DataType.FLOAT16 else 32)


def apply_lm_policy(config: QuantConfig, lm_heads: list[MatMulTarget]) -> LayerChoices:
    """The lm_head's precision from config.lm_head (its ``fixed`` keys: the lm_heads decided)."""
    specs, decisions, floats = {}, {}, {}
    if config.lm_head == "4":
        if not config.lm_head_symmetric:
            return LayerChoices()
        for t in lm_heads:
            specs[t.key] = default_spec(config, t, lm_head=True)
            decisions[t.key] = "lm_head 4-bit symmetric (--lm-head-symmetric)"
        return LayerChoices(specs=specs, decisions=decisions)
    for t in lm_heads:
        if config.lm_head == "8":
            specs[t.key] = default_spec(config, t, bits=8)
            decisions[t.key] = "lm_head kept at 8-bit (--lm-head 8)"
        else:
            decisions[t.key] = "lm_head kept float (--lm-head float)"
            floats[t.key] = "lm_head kept float (--lm-head float)"
    return LayerChoices(specs=specs, decisions=decisions, floats=floats)


def _bits_at(config: QuantConfig, t: MatMulTarget, bits: int | None = None) -> float:
    """Storage bits of a layer quantized with the options' spec (bits overridden, e.g. 8)."""
    return 8.0 * default_spec(config, t, bits=bits).storage_bytes(t.K, t.N)


def _floor_bits(plan: Selection, config: QuantConfig, fixed: set[tuple], lm_head: str) -> float:
    """Fewest bits per weight a mixed-precision choice can reach: every layer at the 4-bit spec of the
    options (its cheapest option), the lm_head as `lm_head` says; float layers are not counted."""
    used = total = 0.0
    for key, ts in plan.targets_by_key().items():
        t = ts[0]
        if key in fixed and lm_head == "float":
            continue
        total += t.K * t.N
        used += _bits_at(config, t, 8 if key in fixed and lm_head == "8" else None)
    return used / total if total else 0.0


def check_target_bits(plan: Selection, config: QuantConfig, fixed: set[tuple]) -> None:
    """Refuse, before any calibration or sensitivity measurement, a --target-bits that no choice of layer
    precisions reaches with these options; the message says which --lm-head (or budget) would work.
    `fixed`: the keys the LM and tied-table policies decided (still in plan.targets unless kept float)."""
    if config.target_bits is None:
        return
    floor = _floor_bits(plan, config, fixed, config.lm_head)
    if floor <= config.target_bits + 1e-9:
        return
    hint = f"raise --target-bits to {floor:.3f} or more, or use a larger --group-size / --double-quant"
    if fixed and config.lm_head == "8":
        lm_floor = _floor_bits(plan, config, fixed, "4")
        if lm_floor <= config.target_bits + 1e-9:
            hint = f"use --lm-head 4 ({lm_floor:.3f} bits per weight at 4-bit everywhere), or " + hint
        else:
            hint = (f"raise --target-bits to {floor:.3f} or more ({lm_floor:.3f} with --lm-head 4), or use a larger "
                    "--group-size / --double-quant")
    raise ConfigError(f"--target-bits {config.target_bits} is below the {floor:.3f} bits per weight that 4-bit "
                      f"everywhere needs with --lm-head {config.lm_head}; {hint}")


def _stored(t: MatMulTarget, w_kn: np.ndarray) -> np.ndarray:
    """A [K, N] weight in the layout and type of the target's initializer."""
    w = w_kn / np.float32(t.alpha) if t.alpha != 1.0 else w_kn
    w = w.T if t.transposed else w
    return np.ascontiguousarray(w.astype(np.float16 if t.dtype == ir.DataType.FLOAT16 else np.float32))


# The end-to-end part of the sensitivity pass runs about SENSITIVITY_MACS multiply-adds of the selected
# weights per layer: SmolLM2-135M (134M weights, 211 layers) gets 2 windows of 32 tokens; stories260K
# its 16 samples of 512 tokens whole. 2^33: against 2^34 (3 windows of 42 tokens) SmolLM2's
# --target-bits 4.8 (gptq g128) pass takes a third less time, perplexity 29.87 against 29.80 (4,096 tokens)
SENSITIVITY_MACS = 1 << 33
SENSITIVITY_MIN_WINDOW = 32
# The method itself is run on every layer of a model with at most METHOD_ALL_LAYERS_WEIGHTS selected
# weights to scale each layer's RTN estimates to its error, else on METHOD_SAMPLE_LAYERS layers (spread
# evenly; the others take their median)
METHOD_ALL_LAYERS_WEIGHTS = 1 << 24
METHOD_SAMPLE_LAYERS = 8
ERROR_CHUNK_ELEMENTS = 1 << 22  # columns of a weight per product in _output_errors


def sensitivity_feeds(model: ir.Model, feeds: list[dict], samples: int, session, weights: int) -> list[dict]:
    """The feeds of the end-to-end measurement. A causal LM with a free sequence length: the first
    `samples` windows, cut so that a run over all of them multiplies its `weights` selected weights
    by at most SENSITIVITY_MACS / weights tokens (fewer windows, of at least SENSITIVITY_MIN_WINDOW
    tokens, when that is short; with an empty past where `session` accepts one), as one batch when the
    batch dimension is free. Otherwise the first `samples` feeds as they are."""
    from int4onnx.lm import LMInterface

    lm = LMInterface.from_model(model)
    tok = lm.token
    if not lm.is_lm or tok is None or not tok.rank_known or len(tok.shape) != 2 or tok.shape[1] is not None \
            or not all(tok.name in f for f in feeds):
        return feeds[:samples]
    tokens = max(SENSITIVITY_MIN_WINDOW, SENSITIVITY_MACS // max(weights, 1))
    n = max(1, min(samples, len(feeds), tokens // SENSITIVITY_MIN_WINDOW))
    windows = [f[tok.name][:, :tokens // n] for f in feeds[:n]]
    if tok.shape[0] is None and len({w.shape[1] for w in windows}) == 1:
        # one run with the windows as a batch: the same outputs as one run per window (measured on
        # SmolLM2: equal logits) for 35 % less CPU, mostly ONNX Runtime packing the overridable weights once
        windows = [np.concatenate(windows, axis=0)]
    short = [lm.window_feed(w) for w in windows]
    lm.settle_feeds(session, short)
    return short


def _relative_error2(runner, feeds: list[dict], base: list, norm2: float, name: str, deq: np.ndarray) -> float:
    """Squared relative error of the model outputs with the weight `name` replaced by `deq`."""
    err = 0.0
    for f, b in zip(feeds, base, strict=True):
        ys = runner.run({**f, name: deq}, runner.model_outputs)
        err += sum(float(np.sum(np.square(y.astype(np.float64) - y0))) for y, y0 in zip(ys, b, strict=True))
    return err / norm2


def _output_errors(w: np.ndarray, deqs: list[np.ndarray], gram: np.ndarray) -> list[float]:
    """tr(D^T G D), D = deq - w, for each dequantized [K, N] weight: its layer output error on the
    calibration data up to the factor 1 / tr(W^T G W) that the ratios between a layer's options cancel.
    float32 products of G normalised to its largest entry (no overflow), summed in float64, slices of
    columns (small temporaries) and one BLAS thread (small products)."""
    top = float(np.abs(gram).max()) if gram.size else 0.0
    g = np.asarray(gram / top if top > 0 else gram, dtype=np.float32)
    K, N = w.shape
    step = max(1, ERROR_CHUNK_ELEMENTS // max(K, 1))
    out = []
    with blas_threads_for(K):
        for deq in deqs:
            total = 0.0
            for n0 in range(0, N, step):
                d = deq[:, n0:n0 + step].astype(np.float32) - w[:, n0:n0 + step]
                total += float(np.sum((g @ d) * d, dtype=np.float64))
            out.append(total * top)
    return out


def measure_sensitivity(model: ir.Model, plan: QuantPlan, config: QuantConfig, feeds: list[dict],
                        keys: list[tuple], options: dict[tuple, list[Option]], progress=None) -> None:
    """Fill Option.error2 (squared relative error of the model outputs) for the quantized options of each key.

    One end-to-end run per layer: the model's output error with only this layer at its first option
    (the configured spec), rounded to nearest, on short calibration windows (sensitivity_feeds). The
    other options' errors are scaled from it by their layer output errors on the whole calibration set,
    tr(D^T G D) with G = X^T X, which need no forward pass. All options are rounded to nearest (RTN;
    after AWQ's scaling when the method has one), then a layer's estimates are multiplied by the
    method's layer output error over RTN's at the first option (GPTQ's squared error is about a tenth of
    RTN's): measured on every layer of a small model, on METHOD_SAMPLE_LAYERS layers of a large one
    (the others take their median). A layer without a Gram matrix has every option measured end to end."""
    from int4onnx.calibrate import ModelRunner

    by_key = plan.targets_by_key()
    quantizer = WeightQuantizer(config, plan, method=rtn_method)
    method = WeightQuantizer(config, plan) if config.method != "rtn" else None
    weights = sum(ts[0].K * ts[0].N for ts in by_key.values())
    if method is None:
        sampled = set()
    elif weights <= METHOD_ALL_LAYERS_WEIGHTS:
        sampled = set(keys)
    else:
        step = max(1, len(keys) // METHOD_SAMPLE_LAYERS)
        sampled = set(keys[step // 2::step][:METHOD_SAMPLE_LAYERS])
    ratios: dict[tuple, float] = {}
    names = [by_key[k][0].weight.name for k in keys]
    quantized = {k: [o for o in options[k] if o.spec is not None] for k in keys}

    def layer_errors(key, w: np.ndarray, first: np.ndarray, gram: np.ndarray) -> tuple[list[float], float | None]:
        """The options' layer output errors and the method's over RTN's at the first option (sampled keys)."""
        deqs = [first] + [quantizer.quantize(key, o.spec, w).dequantize() for o in quantized[key][1:]]
        layer = _output_errors(w, deqs, gram)
        del deqs
        if key not in sampled or layer[0] <= 0:
            return layer, None
        own = _output_errors(w, [method.quantize(key, quantized[key][0].spec, w).dequantize()], gram)[0]
        return layer, own / layer[0]

    # With more than one CPU, a worker thread computes a layer's Gram errors (numpy and BLAS release the GIL)
    # while ONNX Runtime runs it end to end: one layer in flight, as in memory before
    pool = concurrent.futures.ThreadPoolExecutor(1) if cpu_threads() > 1 else None
    runner = ModelRunner(model, overridable=names)
    outs = runner.model_outputs
    try:
        short = sensitivity_feeds(model, feeds, config.sensitivity_samples, runner.session, weights)
        base = [runner.run(f, outs) for f in short]
        norm2 = sum(float(np.sum(np.square(y, dtype=np.float64))) for b in base for y in b) or 1.0
        for done, key in enumerate(keys):
            if progress:
                progress(done, len(keys), "measuring sensitivity")
            t = by_key[key][0]
            w = t.weight_kn()
            stats = quantizer.stats_for(key)
            gram = stats.gram if stats is not None and stats.has_gram else None
            if gram is None:
                for o in quantized[key]:
                    deq = quantizer.quantize(key, o.spec, w).dequantize()
                    o.error2 = _relative_error2(runner, short, base, norm2, t.weight.name, _stored(t, deq))
                continue
            first = quantizer.quantize(key, quantized[key][0].spec, w).dequantize()
            job = pool.submit(layer_errors, key, w, first, gram) if pool is not None else None
            e2e = _relative_error2(runner, short, base, norm2, t.weight.name, _stored(t, first))
            layer, ratio = job.result() if job is not None else layer_errors(key, w, first, gram)
            for o, e in zip(quantized[key], layer, strict=True):
                o.error2 = e2e if o is quantized[key][0] else (e2e * e / layer[0] if layer[0] > 0 else e2e)
            if ratio is not None:
                ratios[key] = ratio
            del w, first, gram, job
        if ratios:
            median = float(np.median(list(ratios.values())))
            for k in keys:
                for o in quantized[k]:
                    o.error2 *= ratios.get(k, median)
        if progress:
            progress(len(keys), len(keys), "measuring sensitivity")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        runner.close()


def choose(options: dict[tuple, list[Option]], target_bits: float | None, max_error: float | None,
           total_weights: int, fixed_bits: float) -> dict[tuple, Option]:
    """Greedy multiple-choice knapsack: start every layer at its cheapest option and take the upgrade
    with the largest error reduction per extra bit while it fits (target_bits), or until the estimated
    error is small enough (max_error)."""
    choice = {k: min(opts, key=lambda o: o.bits) for k, opts in options.items()}
    budget = None if target_bits is None else target_bits * total_weights - fixed_bits
    used = sum(o.bits for o in choice.values())
    if budget is not None and used > budget + 1e-6:
        floor = (used + fixed_bits) / total_weights
        raise ConfigError(f"--target-bits {target_bits} is below what 4-bit everywhere needs ({floor:.3f} bits "
                          "per weight with these options); raise it or use a larger --group-size / --double-quant")
    while True:
        err = sum(o.error2 for o in choice.values())
        if max_error is not None and err <= max_error ** 2:
            break
        best, best_gain = None, 0.0
        for k, cur in choice.items():
            for o in options[k]:
                extra = o.bits - cur.bits
                if extra <= 0 or o.error2 >= cur.error2:
                    continue
                if budget is not None and used + extra > budget + 1e-6:
                    continue
                gain = (cur.error2 - o.error2) / extra
                if gain > best_gain:
                    best, best_gain = (k, o), gain
        if best is None:
            break
        k, o = best
        used += o.bits - choice[k].bits
        choice[k] = o
    return choice


def mixed_precision(model: ir.Model, plan: QuantPlan, config: QuantConfig, feeds: list[dict],
                    fixed: set[tuple], progress=None) -> tuple[LayerChoices, MixedPrecisionSummary]:
    """Decide 4-bit / 8-bit / float for each layer of `plan` (the plan without mixed precision) not in
    `fixed`; returns those choices (specs, decisions, sensitivity, float layers) and a summary."""
    start = time.perf_counter()
    by_key = plan.targets_by_key()
    keys = [k for k in by_key if k not in fixed]
    options: dict[tuple, list[Option]] = {}
    for k in keys:
        t = by_key[k][0]
        opts = []
        for bits in (4, 8) if config.bits == 4 else (8,):
            spec = default_spec(config, t, bits=bits)
            opts.append(Option(str(bits), spec, 8.0 * spec.storage_bytes(t.K, t.N)))
            if bits == 4:  # finer groups: cheaper than 8-bit when the budget is tight
                for g in GROUP_SIZES:
                    if g < spec.block_size:
                        fine = dataclasses.replace(spec, block_size=g)
                        opts.append(Option(f"4/g{g}", fine, 8.0 * fine.storage_bytes(t.K, t.N)))
        opts.append(Option("float", None, float(float_bits(t))))
        options[k] = opts
    measure_sensitivity(model, plan, config, feeds, keys, options, progress)
    total_weights = sum(by_key[k][0].K * by_key[k][0].N for k in by_key)
    fixed_bits = 0.0
    for k in fixed:
        if k not in by_key:  # no longer a target (a tied table both of whose readers stay float, e.g. qdq)
            continue
        t = by_key[k][0]
        spec = plan.specs.get(k)
        fixed_bits += 8.0 * spec.storage_bytes(t.K, t.N) if spec is not None else float_bits(t)
    choice = choose(options, config.target_bits, config.max_error, total_weights, fixed_bits)
    specs, decisions, floats, sensitivity = {}, {}, {}, {}
    for k, o in choice.items():
        sensitivity[k] = {f"error_{x.name}" if x.spec else "error_float": round(float(np.sqrt(x.error2)), 6)
                          for x in options[k]}
        if o.spec is None:
            floats[k] = "kept float by mixed precision (most sensitive layer)"
            decisions[k] = f"mixed precision: kept float (output error at 4-bit {np.sqrt(options[k][0].error2):.4f})"
        else:
            specs[k] = o.spec
            decisions[k] = f"mixed precision: {o.spec.describe()}"
    est = float(np.sqrt(sum(o.error2 for o in choice.values())))
    used = sum(o.bits for o in choice.values()) + fixed_bits
    count = {name: sum(1 for o in choice.values() if o.name.split("/")[0] == name) for name in ("4", "8", "float")}
    summary = MixedPrecisionSummary(
        target_bits=config.target_bits, max_error=config.max_error,
        estimated_output_rel_error=round(est, 6),
        estimated_bits_per_weight_all_selected=round(used / total_weights, 4),
        layers_4bit=count["4"], layers_8bit=count["8"], layers_float=count["float"],
        choices={o.spec.describe() if o.spec else "float": sum(1 for x in choice.values() if x is o or
                                                               (x.spec == o.spec)) for o in choice.values()},
        seconds=round(time.perf_counter() - start, 3),
    )
    logger.info("mixed precision: %s", summary)
    return LayerChoices(specs=specs, decisions=decisions, floats=floats, sensitivity=sensitivity), summary
