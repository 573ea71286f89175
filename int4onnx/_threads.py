"""BLAS threading for the many small matrix products of calibration and GPTQ.

Multi-threaded OpenBLAS makes each small product (a 512 x 172 Gram update, GPTQ's rank-1 updates)
wait on its worker threads; on a busy 2-core machine that was 25x slower than one thread (0.8 ms
against 21 ms for one Gram update, measured). Large products keep every thread.
"""

from __future__ import annotations

import contextlib
import functools

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
