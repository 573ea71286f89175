"""The contract between analysis and rewrite: a frozen plan, passes that check their pre- and
post-conditions, and typed results whose JSON form is the --report's."""

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import pytest
from modelgen import matmul_model, save

import int4onnx
from int4onnx.config import QuantConfig
from int4onnx.passes.plan import LayerChoices, QuantPlan, Selection
from int4onnx.passes.quantize import WeightQuantizer, default_spec
from int4onnx.passes.results import RewriteRecord
from int4onnx.passes.rewrite import RewriteMatMulsPass
from int4onnx.passes.select import SelectMatMulsPass, select_matmuls
from int4onnx.pipeline import quantize_model

RNG = np.random.default_rng(5)


def chain():
    return ir.serde.deserialize_model(matmul_model({f"w{i}": RNG.standard_normal((64, 64)).astype(np.float32)
                                                    for i in range(3)}))


def test_plan_is_frozen_and_not_changed_by_the_save():
    model, done = quantize_model(chain(), QuantConfig())
    plan = done.plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.targets = ()
    with pytest.raises(TypeError):
        plan.specs[("w0", False, 1.0)] = None
    key = plan.targets[0].key
    specs, skipped, targets = dict(plan.specs), plan.skipped, plan.targets
    assert done.layers == {}
    ir.serde.serialize_model(model)  # quantizes every weight (lazy initializers)
    assert dict(plan.specs) == specs and plan.skipped is skipped and plan.targets is targets
    result = done.quantizer.results.layers[key]  # the results live with the quantizer, not the plan
    assert set(done.layers) == set(specs) and result.spec is specs[key] and result.error.rel_error > 0


def test_plan_needs_a_spec_for_every_target():
    selection = select_matmuls(chain(), QuantConfig())
    with pytest.raises(ValueError, match="no LayerSpec"):
        QuantPlan(method="rtn", targets=selection.targets, skipped=(), specs={})


def test_later_choices_win_and_floats_are_skipped_with_their_reason():
    config = QuantConfig()
    selection = select_matmuls(chain(), config)
    t0, t1 = selection.targets[:2]
    first = LayerChoices(specs={t0.key: default_spec(config, t0, bits=8)}, decisions={t0.key: "first"})
    second = LayerChoices(decisions={t0.key: "second"}, floats={t1.key: "kept float here"})
    plan = QuantPlan.assemble("rtn", selection, first.then(second), lambda t: default_spec(config, t))
    assert plan.specs[t0.key].bits == 8 and plan.decisions[t0.key] == "second"
    assert t1.key not in plan.specs and [(s.name, s.reason) for s in plan.skipped] == [("mm1", "kept float here")]
    assert plan.layer(t0.key).spec.bits == 8 and plan.layer(t0.key).decision == "second"
    assert first.fixed == {t0.key} and second.fixed == {t0.key}  # a float choice without a decision fixes nothing


def test_selection_ensures_every_matmul_is_accounted_for(monkeypatch):
    monkeypatch.setattr(SelectMatMulsPass, "_why_not", lambda self, node, graph, inputs: "")
    with pytest.raises(ir.passes.PostconditionError):
        SelectMatMulsPass(QuantConfig())(chain())
    monkeypatch.undo()
    step = SelectMatMulsPass(QuantConfig())
    step(chain())
    assert len(step.selection.targets) == 3 and isinstance(step.selection, Selection)


def test_rewrite_requires_its_targets_and_ensures_none_is_left():
    config = QuantConfig()
    model = chain()
    plan = QuantPlan.assemble("rtn", select_matmuls(model, config), LayerChoices(), lambda t: default_spec(config, t))
    other = chain()  # the plan's nodes are not in this model
    with pytest.raises(ir.passes.PreconditionError):
        RewriteMatMulsPass(config, plan, WeightQuantizer(config, plan), RewriteRecord())(other)
    record = RewriteRecord()
    RewriteMatMulsPass(config, plan, WeightQuantizer(config, plan), record)(model)
    assert record.nodes_rewritten == 3

    class Lazy(RewriteMatMulsPass):  # a rewrite that leaves a target behind breaks its post-condition
        def _rewrite(self, t, spec, w):
            if t.node.name != "mm1":
                super()._rewrite(t, spec, w)

    model = chain()
    plan = QuantPlan.assemble("rtn", select_matmuls(model, config), LayerChoices(), lambda t: default_spec(config, t))
    with pytest.raises(ir.passes.PostconditionError, match="mm1"):
        Lazy(config, plan, WeightQuantizer(config, plan), RewriteRecord())(model)


def test_report_records_read_by_attribute_and_as_json(tmp_path):
    src = save(matmul_model({"w0": RNG.standard_normal((64, 32)).astype(np.float32)}), tmp_path / "m.onnx")
    r = int4onnx.quantize(src, tmp_path / "q.onnx")
    (layer,) = r.layers
    assert (layer.bits, layer.block_size, layer.K, layer.N) == (4, 32, 64, 32)
    assert dict(layer) == layer.to_dict() and layer["bits"] == 4 and layer["rel_error"] == layer.metric("rel_error")
    d = json.loads(r.to_json())
    assert d["layers"] == [layer.to_dict()] and d["calibration"] == {} and d["skipped"] == []
    assert r.mean_metric("rel_error") == layer.metric("rel_error") and r.mean_metric("output_rel_error") is None
