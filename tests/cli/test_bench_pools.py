"""tools/bench_pools.py: every pool variant computes what ONNX Runtime's pool does, and the tool reports
one row per variant and step."""

import numpy as np
import pytest
from click.testing import CliRunner
from modelgen import gqa_lm, save

from int4onnx.cli import main
from int4onnx.lm import LMInterface
from int4onnx.tools.bench import make_feeds


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("pools")
    src = save(gqa_lm(layers=2, context=64), d / "lm.onnx")
    r = CliRunner().invoke(main, ["convert", src, "-o", str(d / "lm.int4.onnx"), "--compute", "int8"])
    assert r.exit_code == 0, r.output
    return d / "lm.int4.onnx"


def test_every_variant_computes_the_same(converted):
    import bench_pools  # tools/, on the path through conftest.py

    outs = {}
    for v in bench_pools.VARIANTS:
        s = bench_pools.session(converted, 3, v)
        feed = make_feeds(s, seq=5, past=7, lm=LMInterface.from_session(s, converted).require())
        outs[v] = s.run(None, feed)[0]
        # the own variants put the op on the library's pool: intra-op threads as the variant says
        intra = s.get_session_options().intra_op_num_threads
        assert intra == (1 if v == "own_intra1" else 3), (v, intra)
    for v, y in outs.items():
        np.testing.assert_allclose(y, outs["ort_spin"], rtol=1e-5, atol=1e-5, err_msg=v)


def test_report_rows(converted, capsys):
    import bench_pools

    bench_pools.main([str(converted), "--threads", "2", "--past", "4", "--prefill", "8", "--block", "2",
                      "--prefill-block", "1", "--cycles", "1"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " threads " in ln]
    names = list(bench_pools.VARIANTS)
    assert [next(v for v in names if f" {v} " in ln) for ln in lines] == names * 2
    assert all("decode (past 4)" in ln for ln in lines[:len(names)])
    assert all("prefill 8" in ln for ln in lines[len(names):])
    assert all(float(ln.split()[-1].rstrip("x")) > 0 for ln in lines)
    assert lines[0].endswith("1.00x") and lines[len(names)].endswith("1.00x")  # ort_spin against itself
