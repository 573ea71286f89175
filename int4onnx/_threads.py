"""BLAS threading for the many small matrix products of calibration and GPTQ.

Multi-threaded OpenBLAS makes each small product (a 512 x 172 Gram update, GPTQ's rank-1 updates)
wait on its worker threads; on a busy 2-core machine that was 25x slower than one thread (0.8 ms
against 21 ms for one Gram update, measured). Large products keep every thread.
"""

from __future__ import annotations

import contextlib
import functools
import os

from threadpoolctl import ThreadpoolController

SMALL = 2048  # matrices up to this dimension use one BLAS thread


@functools.lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()  # finds the BLAS libraries once (slow); limiting is then cheap


def blas_threads_for(dim: int):
    """A context limiting BLAS to one thread when `dim` (the largest matrix dimension) is small."""
    if dim <= SMALL:
        return _controller().limit(limits=1, user_api="blas")
    return contextlib.nullcontext()


# Threads for work split by output columns (GPTQ, AWQ's search): no slice narrower than this
MIN_SLICE_COLUMNS = 128


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def column_slices(n: int, threads: int | None = None) -> list[slice]:
    """[0, n) cut into at most `threads` (default cpu_threads()) near-equal slices of at least
    MIN_SLICE_COLUMNS columns (one slice when n is small)."""
    parts = max(1, min(threads or cpu_threads(), n // MIN_SLICE_COLUMNS))
    edges = [n * i // parts for i in range(parts + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(parts)]
