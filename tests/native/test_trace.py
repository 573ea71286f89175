"""The op's timeline (i4o_trace_start / i4o_trace_stop): what a traced ONNX Runtime run records, and
tools/op_timeline.py's summary of it."""

import os

import numpy as np
import pytest

from int4onnx._native import ffi, lib


@pytest.fixture(scope="module")
def timeline():
    import op_timeline  # tools/, on the path through conftest.py

    return op_timeline


@pytest.fixture(scope="module")
def chain(timeline):
    """A 3-layer 256 x 256 chain of MatMulInt4 (int8 path) on 2 threads, split into 16-column tasks."""
    bm = timeline.bm
    before = os.environ.get("INT4ONNX_MIN_TASK_MACS")
    os.environ["INT4ONNX_MIN_TASK_MACS"] = "0"  # read when the session prepares its weights
    try:
        weights = bm.make_weights(256, 256, 3, seed=3)
        session = bm._session(bm.chain_model("i4o_int8", weights, 256, 256), 2, True)
    finally:
        if before is None:
            os.environ.pop("INT4ONNX_MIN_TASK_MACS")
        else:
            os.environ["INT4ONNX_MIN_TASK_MACS"] = before
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)}
    return session, feeds


def test_a_traced_run_records_every_call_section_and_task_once(timeline, chain):
    session, feeds = chain
    expected = session.run(None, feeds)[0]
    rec = timeline.trace(lambda: session.run(None, feeds), 5, 10_000)
    assert np.array_equal(session.run(None, feeds)[0], expected)  # tracing changes no result
    calls = rec[rec["task"] == -1]
    assert len(calls) == 15 and sorted(calls["call"]) == list(range(15))
    assert set(calls["n_tasks"]) == {4}  # M
    assert len(set(calls["node"])) == 3
    for c in calls:
        mine = rec[rec["call"] == c["call"]]
        assert set(mine["node"]) == {c["node"]}
        sections = mine[mine["task"] == -2]
        assert list(sections["section"]) == [0]
        n = int(sections["n_tasks"][0])
        tasks = mine[mine["task"] >= 0]
        assert n > 1 and sorted(tasks["task"]) == list(range(n)) and set(tasks["n_tasks"]) == {n}
        # every span nests: tasks inside their section, the section inside the call
        assert (tasks["t0"] <= tasks["t1"]).all() and c["t0"] <= c["t1"]
        assert (tasks["t0"] >= sections["t0"][0]).all() and (tasks["t1"] <= sections["t1"][0]).all()
        assert sections["t0"][0] >= c["t0"] and sections["t1"][0] <= c["t1"]
        assert (mine["thread"] >= 0).all()
    assert lib.i4o_trace_stop(ffi.NULL, 0) == 0  # off again


def test_a_full_trace_says_how_many_records_it_lost(timeline, chain):
    session, feeds = chain
    with pytest.raises(RuntimeError, match="lost"):
        timeline.trace(lambda: session.run(None, feeds), 2, 5)
    assert lib.i4o_trace_start(3) == 0
    session.run(None, feeds)
    out = ffi.new("i4o_trace_record[]", 2)
    n = lib.i4o_trace_stop(out, 2)
    assert n > 3  # counted past the capacity, kept 3, copied 2
    assert lib.i4o_trace_stop(out, 2) == 0


@pytest.mark.parametrize("capacity", [0, -1, 2**62])
def test_bad_capacities_are_refused_and_leave_tracing_off(capacity):
    assert lib.i4o_trace_start(capacity) in (lib.I4O_E_ARG, lib.I4O_E_NOMEM)
    assert lib.i4o_trace_stop(ffi.NULL, 0) == 0


def test_summary_of_a_made_up_trace(timeline):
    """Two layers' calls of one run, the second starting 10 us after the first: every column from its records."""
    us = 1000
    rows = [  # t0, t1, call, node, section, task, n_tasks, thread
        (0, 8 * us, 0, 0, -1, -1, 1, 0),
        (1 * us, 7 * us, 0, 0, 0, -2, 2, 0),
        (2 * us, 5 * us, 0, 0, 0, 0, 2, 0),
        (3 * us, 6 * us, 0, 0, 0, 1, 2, 1),
        (10 * us, 18 * us, 1, 1, -1, -1, 1, 0),
        (11 * us, 17 * us, 1, 1, 0, -2, 2, 0),
        (12 * us, 15 * us, 1, 1, 0, 0, 2, 1),
        (13 * us, 16 * us, 1, 1, 0, 1, 2, 1),
    ]
    rec = np.array([(*r, 0, 0) for r in rows], dtype=timeline.RECORD)
    s = timeline.summarize(rec)
    assert s["period"] == 10 and s["gap"] == 2  # one pair of consecutive layers
    assert s["call"] == 8 and s["pre"] == 1 and s["first"] == 1 and s["last"] == 2
    assert s["task"] == 3 and s["task max"] == 3 and s["join"] == 1
    assert s["threads"] == 1.5 and s["busiest"] == 1.5
    assert np.isnan(s["same"])  # no node ran twice


def test_op_timeline_cli_prints_a_row_per_thread_count(timeline, capsys, tmp_path):
    assert timeline.main(["--threads", "1,2", "--size", "64", "--layers", "2", "--runs", "3", "--warmup", "1",
                          "--save", str(tmp_path)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 1 ") or r.startswith("| 2 ")]
    assert len(rows) == 2
    cells = rows[0].strip("|").split("|")
    assert len(cells) == 1 + len(timeline.COLUMNS) and float(cells[1]) > 0
    assert sorted(os.listdir(tmp_path)) == ["threads1.npy", "threads2.npy"]
    assert len(np.load(tmp_path / "threads1.npy")) >= 6


def test_op_timeline_own_pool_runs_tasks_on_the_ops_threads(timeline, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INT4ONNX_MIN_TASK_MACS", "0")  # one task per kernel column tile (16-64 columns)
    assert timeline.main(["--own", "--threads", "2", "--size", "256", "--layers", "2", "--runs", "20", "--warmup",
                          "2", "--save", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "own pool" in out
    rec = np.load(tmp_path / "threads2.npy")
    tasks = rec[rec["task"] >= 0]
    calls = rec[rec["task"] == -1]
    assert len(calls) == 20 * 2
    for c in calls["call"]:  # each call ran each of its >= 4 tasks once
        mine = rec[rec["call"] == c]
        n = int(mine[mine["task"] == -2]["n_tasks"][0])
        assert n >= 4 and sorted(mine[mine["task"] >= 0]["task"].tolist()) == list(range(n))
    # the caller and the pool's one worker, nothing else (which of them runs what depends on timing)
    assert len(set(tasks["thread"].tolist())) <= 2
