"""Fuzzer of the MatMulInt4 op's input checking: random valid graphs, and graphs broken in random ways
(attributes, shapes, types, missing or empty inputs, extra inputs or outputs, special values).

Every case must either run or make ONNX Runtime raise; a valid (unbroken) case must also match the
numpy reference. The process must never crash: tests/native/test_op_fuzz.py runs this script in a child
process and reports the last case printed before a crash.

    python tests/fuzz_op.py --examples 300 --seed 0      # explore (hypothesis)
    python tests/fuzz_op.py --replay '<case json>'       # run one printed case again
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from opcases import ATTRS, INPUTS, TYPES, build, check_valid, session  # noqa: E402

HUGE = [2**31 - 1, 2**31, 2**31 + 1, 2**40, 2**62, 2**63 - 1]
MAX_ELEMENTS = 1 << 20  # tensors stay small (huge dimensions only next to a zero one)


def _int_values(case):
    K, N = case["K"], case["N"]
    return st.one_of(st.sampled_from([-(2**63), -1, 0, 1, 2, 3, 4, 8, 15, 16, 17, 31, 32, 48, 64, 65536, 65552]
                                     + HUGE + [K - 1, K + 1, N - 1, N + 1, 2 * K]),
                     st.integers(-5, 300))


def _attr_value(case):
    return st.one_of(_int_values(case), st.none(), st.floats(allow_nan=True, width=32),
                     st.sampled_from(["int", "nf4", "fp32", "int8", "", "INT", "nf4\x00x"]),
                     st.text(max_size=80), st.lists(st.integers(-3, 70), max_size=3))


def _shape(case):
    K, N, block, bits = case["K"], case["N"], case["block"], case["bits"]
    nb = -(-K // block)
    dim = st.one_of(st.sampled_from([0, 1, 2, K, N, nb, block * bits // 8, (nb * bits + 7) // 8]), st.integers(0, 70))
    plain = st.lists(dim, max_size=4)
    huge = st.lists(st.sampled_from([0] + HUGE[:4]), min_size=2, max_size=3).map(lambda d: d + [0])
    def small(shape):
        n = 1
        for d in shape:
            n *= d
        return n <= MAX_ELEMENTS
    return st.one_of(plain, huge).filter(small)


def _mutation(case):
    names = st.sampled_from(INPUTS)
    weights = st.sampled_from(INPUTS[1:])
    attrs = st.sampled_from(ATTRS)
    return st.one_of(
        st.tuples(st.just("attr"), attrs, _attr_value(case)),
        st.tuples(st.just("shape"), weights, _shape(case)),
        st.tuples(st.just("dtype"), names, st.sampled_from(sorted(TYPES))),
        st.tuples(st.just("drop"), names),
        st.tuples(st.just("empty"), names),
        st.tuples(st.just("extra_input")),
        st.tuples(st.just("outputs"), st.sampled_from([0, 2])),
        st.tuples(st.just("a_shape"), _shape(case)),
        st.tuples(st.just("values"), st.sampled_from(["A", "scales", "bias"]),
                  st.sampled_from(["nan", "inf", "-inf", "big"])),
    ).map(list)


@st.composite
def cases(draw):
    bits = draw(st.sampled_from([4, 8]))
    quant_type = draw(st.sampled_from(["int", "int", "nf4"])) if bits == 4 else "int"
    case = dict(
        a_type=draw(st.sampled_from(["float", "float16"])), bits=bits, quant_type=quant_type,
        sym=True if quant_type == "nf4" else draw(st.booleans()),
        block=draw(st.sampled_from([16, 32, 64, 128])), K=draw(st.integers(1, 300)), N=draw(st.integers(1, 40)),
        compute=draw(st.sampled_from(["fp32", "int8"])), bias=draw(st.booleans()),
        int8_scales=draw(st.sampled_from([False, False, True])), scale_type=draw(st.sampled_from([None, "float16"])),
        weights_as_inputs=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)))
    # real zero points (asymmetric weights): float32 only with float32 activations
    real = [None, None, "float16", "int8"] + (["float"] if case["a_type"] == "float" else [])
    case["real_zp"] = draw(st.sampled_from(real))
    case["a_shape"] = draw(st.lists(st.integers(0, 4), max_size=3)) + [case["K"]]
    case["mutations"] = draw(st.lists(_mutation(case), max_size=3))
    return case


STATS = {"valid": 0, "ran": 0, "rejected": 0}


def run_case(case: dict) -> None:
    print("CASE " + json.dumps(case), flush=True)
    if not case["mutations"]:
        check_valid(case)
        STATS["valid"] += 1
        return
    try:
        model, feeds, _ = build(case)
    except (ValueError, TypeError, OverflowError):  # onnx helper refuses to encode it: not a graph
        return
    try:
        session(model).run(None, feeds)
        STATS["ran"] += 1
    except Exception as exc:  # ONNX Runtime's errors (Fail, InvalidArgument, InvalidGraph, ...)
        if type(exc).__module__.split(".")[0] != "onnxruntime":
            raise
        STATS["rejected"] += 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay")
    args = parser.parse_args()
    if args.replay:
        run_case(json.loads(args.replay))
        print("ok")
        return 0

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def fuzz(case):
        run_case(case)

    fuzz()
    print("SUMMARY " + json.dumps(STATS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
