"""The op on the library's own threads (i4o_set_threads, INT4ONNX_THREADS, make_session's op_threads):
results identical to one thread's, every task run once, sessions side by side, the pool's lifetime."""

import gc
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from int4onnx._native import lib
from int4onnx.runtime import make_session, own_threads

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")


@pytest.fixture(scope="module")
def bm():
    import bench_matmul  # tools/, on the path through conftest.py

    return bench_matmul


def _chain(bm, variant, K, layers=2, seed=0):
    return bm.chain_model(variant, bm.make_weights(K, K, layers, seed=seed), K, K).SerializeToString()


def _threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


# K = N: 200 ends in a part block (block 32) and a part 16-column tile; 512 makes several tasks per thread
@pytest.mark.parametrize("variant", ["i4o_int8", "i4o_fp32"])
@pytest.mark.parametrize("K", [200, 512])
def test_own_threads_give_one_threads_results(bm, variant, K):
    model = _chain(bm, variant, K)
    ref = make_session(model, threads=1)
    rng = np.random.default_rng(K)
    xs = [rng.standard_normal((M, K)).astype(np.float32) for M in (1, 3, 17, 70)]
    expected = [ref.run(None, {"x": x})[0] for x in xs]
    for T in (2, 3, 5):
        own = make_session(model, op_threads=T)
        for x, want in zip(xs, expected, strict=True):
            for i in range(3):  # back to back (workers spinning), then after they went to sleep (1 ms)
                if i == 2:
                    time.sleep(0.005)
                assert np.array_equal(own.run(None, {"x": x})[0], want), (T, x.shape)


def test_every_task_runs_once_on_own_threads(bm, monkeypatch):
    import op_timeline  # tools/

    monkeypatch.setenv("INT4ONNX_MIN_TASK_MACS", "0")  # 16-column tasks, many per thread; read at session start
    session = make_session(_chain(bm, "i4o_int8", 256, layers=3, seed=3), op_threads=3)
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)}
    expected = session.run(None, feeds)[0]
    rec = op_timeline.trace(lambda: session.run(None, feeds), 5, 10_000)
    assert np.array_equal(session.run(None, feeds)[0], expected)
    calls = rec[rec["task"] == -1]
    assert len(calls) == 15
    for c in calls:
        mine = rec[rec["call"] == c["call"]]
        n = int(mine[mine["task"] == -2]["n_tasks"][0])
        tasks = mine[mine["task"] >= 0]
        assert n > 3 and sorted(tasks["task"]) == list(range(n))
    assert len(set(rec["thread"])) <= 3


def test_sessions_side_by_side_on_one_pool(bm):
    """Two sessions on the pool, run from two threads at once: one section at a time on the pool, the other
    caller on ONNX Runtime's threads, both right."""
    model = _chain(bm, "i4o_int8", 256)
    ref = make_session(model, threads=1)
    x = np.random.default_rng(1).standard_normal((5, 256)).astype(np.float32)
    want = ref.run(None, {"x": x})[0]
    sessions = [make_session(model, op_threads=2), make_session(model, op_threads=2)]
    errors = []

    def work(s):
        try:
            for _ in range(200):
                if not np.array_equal(s.run(None, {"x": x})[0], want):
                    errors.append("mismatch")
                    return
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    runners = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    assert errors == []


def test_the_pool_lives_while_its_kernels_do(bm):
    model = _chain(bm, "i4o_int8", 128)
    gc.collect()
    n0 = _threads_now()
    s = make_session(model, op_threads=4)
    assert _threads_now() - n0 == 3  # three workers beside the caller (ONNX Runtime's pool: one thread, none)
    s2 = make_session(model, op_threads=6)  # the running pool serves it: its size is fixed when it starts
    assert _threads_now() - n0 == 3
    del s, s2
    gc.collect()
    assert _threads_now() == n0
    s = make_session(model, op_threads=2)
    assert _threads_now() - n0 == 1
    del s
    gc.collect()
    assert _threads_now() == n0


def test_more_threads_than_cores(bm, monkeypatch):
    # workers wait for a core while sections open and close: the caller waits for the tasks, a worker that
    # comes late must not touch a section that has ended (pool.c); many small tasks, many sections
    monkeypatch.setenv("INT4ONNX_MIN_TASK_MACS", "0")
    model = _chain(bm, "i4o_int8", 256, layers=4)
    x = np.random.default_rng(2).standard_normal((2, 256)).astype(np.float32)
    want = make_session(model, threads=1).run(None, {"x": x})[0]
    T = 4 * (os.cpu_count() or 1)
    s = make_session(model, op_threads=T)
    for _ in range(200):
        assert np.array_equal(s.run(None, {"x": x})[0], want)


def test_thread_counts_out_of_range_are_refused_and_nothing_changes():
    before = lib.i4o_get_threads()
    for bad in (-1, 257):
        assert lib.i4o_set_threads(bad) != 0
        assert lib.i4o_get_threads() == before
        with pytest.raises(ValueError, match="0..256"):
            with own_threads(bad):
                pass
        assert lib.i4o_get_threads() == before
    with own_threads(7):
        assert lib.i4o_get_threads() == 7
    assert lib.i4o_get_threads() == before


def test_environment_sets_the_default(bm, tmp_path):
    """INT4ONNX_THREADS, read when no count was set: a plain session's op then runs on the pool, and
    make_session puts its other nodes on one thread."""
    code = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import numpy as np, bench_matmul as bm\n"
        "from int4onnx._native import lib\n"
        "from int4onnx.runtime import make_session, own_threads\n"
        "print(lib.i4o_get_threads())\n"
        "m = bm.chain_model('i4o_int8', bm.make_weights(128, 128, 1), 128, 128).SerializeToString()\n"
        "with own_threads(0):\n"
        "    make_session(m, threads=1)  # ONNX Runtime's own first-session threads\n"
        "n0 = len(os.listdir('/proc/self/task'))\n"
        "s = make_session(m, threads=1)\n"
        "print(len(os.listdir('/proc/self/task')) - n0)\n"
        "print(make_session(m).get_session_options().intra_op_num_threads)  # the other nodes: one thread\n"
    )
    tools = os.path.join(os.path.dirname(__file__), "..", "..", "tools")
    env = {**os.environ, "INT4ONNX_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", code, tools], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "2", "1"]
    env["INT4ONNX_THREADS"] = "0"
    out = subprocess.run([sys.executable, "-c", code, tools], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0", "0"]
