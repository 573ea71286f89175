"""MatMulInt4's schema is defined once, in native/include/int4onnx.h: the Python view (_native.OP_INPUTS,
OP_ATTRS) is read from the library and equals the header; the op registered in ONNX Runtime takes
exactly those inputs, by name; docs/format.md lists the same slots."""

import pathlib
import re

import numpy as np
import pytest
from opcases import ATTRS, INPUTS, build, check_valid, run, session, valid_case

from int4onnx import _native

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = (ROOT / "native" / "include" / "int4onnx.h").read_text()


def _enum(prefix: str) -> dict[str, int]:
    """NAME -> value of the header's `I4O_<prefix>_NAME = value` enumerators (COUNT, REQUIRED left out)."""
    found = {m[1]: int(m[2]) for m in re.finditer(rf"\bI4O_{prefix}_([A-Z_]+) = (\d+)", HEADER)}
    return {k: v for k, v in found.items() if k not in ("COUNT", "REQUIRED")}


def _names(macro: str) -> list[str]:
    body = re.search(rf"#define {macro} \{{(.*?)\}}", HEADER)[1]
    return re.findall(r'"([^"]*)"', body)


def test_python_view_equals_the_header():
    inputs, attrs = _enum("IN"), _enum("ATTR")
    in_names, attr_names = _names("I4O_IN_NAMES"), _names("I4O_ATTR_NAMES")
    # the header's enum slots are 0..count-1, each named in its table, and the library reports the same
    assert sorted(inputs.values()) == list(range(len(in_names))) == list(range(_native.lib.I4O_IN_COUNT))
    assert sorted(attrs.values()) == list(range(len(attr_names))) == list(range(_native.lib.I4O_ATTR_COUNT))
    assert _native.OP_INPUTS == {name: i for i, name in enumerate(in_names)}
    assert _native.OP_ATTRS == tuple(attr_names)
    # the enumerator of each slot is its name in upper case (I4O_IN_ZERO_POINTS is "zero_points")
    assert {in_names[i].upper(): i for i in inputs.values()} == inputs
    assert {attr_names[i].upper(): i for i in attrs.values()} == attrs
    assert _native.OP_REQUIRED_INPUTS == int(re.search(r"I4O_IN_REQUIRED = (\d+)", HEADER)[1]) == 3
    for getter, count in ((_native.lib.i4o_op_input_name, len(in_names)), (_native.lib.i4o_op_attr_name, len(attr_names))):
        assert getter(-1) == _native.ffi.NULL and getter(count) == _native.ffi.NULL
    assert INPUTS == in_names and ATTRS == tuple(attr_names)  # the op tests' cases use the same view


def test_op_inputs_places_values_by_name():
    assert _native.op_inputs(A="a", scales_scale="s") == ["a", None, None, None, None, "s", None]
    with pytest.raises(ValueError, match="no input"):
        _native.op_inputs(weights="w")


def test_docs_table_lists_the_slots():
    doc = (ROOT / "docs" / "format.md").read_text()
    rows = dict((name, int(i)) for i, name in re.findall(r"^\| (\d+) \| (\w+) \|", doc, flags=re.M))
    assert rows == _native.OP_INPUTS


def test_op_runs_with_every_input_given_by_name():
    # all seven slots filled (asymmetric with int8 real zero points and their super-scale, bias, int8 scales with
    # their super-scale), in the order OP_INPUTS says
    case = valid_case(sym=False, bias=True, int8_scales=True, real_zp="int8")
    model, _, _ = build(case)
    import onnx

    node = onnx.load_from_string(model).graph.node[0]
    assert list(node.input) == INPUTS
    assert sorted(a.name for a in node.attribute) == sorted(ATTRS)
    check_valid(case)


@pytest.mark.parametrize("name", INPUTS)
def test_op_requires_exactly_the_required_inputs(name):
    case = valid_case(sym=False, bias=True, mutations=[["drop", name]])
    if _native.OP_INPUTS[name] < _native.OP_REQUIRED_INPUTS:
        with pytest.raises(Exception, match="fuzz_node|A is missing|required"):
            run(case)
    else:
        assert np.isfinite(run(case)).all()


def test_op_refuses_an_input_past_the_last_slot():
    model, feeds, _ = build(valid_case(mutations=[["extra_input"]]))
    with pytest.raises(Exception, match="fuzz_node"):
        session(model).run(None, feeds)
