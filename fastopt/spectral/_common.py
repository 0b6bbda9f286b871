"""Pieces every solver of the spectra family shares: the backend's kernel module, the thread
policy of the solvers, and the exact power-of-two rescaling of out-of-range matrices."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from .. import _dispatch
from .._threads import get_num_threads

# spectral_radius and spectral_norm rescale W (exactly, by a power of two) when max |W_ij| is
# outside [2**-SCALE_EXP, 2**SCALE_EXP], so that float32 products and squares neither under-
# nor overflow in the kernels.
SCALE_EXP = 50

# Thread policy of the solvers (kernels called directly use the count they are given): the
# kernels use fastopt's thread count from 128K matrix entries per pass on, one thread below.
# No multithreaded BLAS call may sit in a solver loop: OpenBLAS's spinning worker threads and
# the OpenMP team slow each other down badly on a 2-core machine (the Krylov-Schur restarts
# rotate the basis with a non-BLAS einsum; the remaining LAPACK calls are on 60 x 60 matrices).
PARALLEL_MIN_ENTRIES = 1 << 17


def kernels(backend: str) -> ModuleType:
    """The kernel module of ``backend`` ("auto": Cython first, no JIT latency)."""
    name = _dispatch.resolve("spectral", backend)
    return _dispatch.load("spectral", name)


def threads_for(entries: int) -> int:
    """Threads of the kernels for a pass over ``entries`` matrix entries."""
    return get_num_threads() if entries >= PARALLEL_MIN_ENTRIES else 1


def rescaled(W3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W3 * 2**ex[b] per matrix, ex)`` with each matrix's ``max |entry|`` brought near 1 when
    it lies outside ``[2**-SCALE_EXP, 2**SCALE_EXP]`` (ex 0 otherwise; no copy if none does).

    The float32 kernels form products and squares in float32: entries around 1e-30 underflow
    (a 1e-30-scaled random matrix came back with radius 1e-24, converged; its spectral norm
    with 0.0, converged) and entries around 1e30 overflow (NaN, converged). Scaling by a power
    of two is exact, so eigenvalues and singular values scale back exactly with ``ldexp``.
    """
    # two read passes, no |W| temporary; about 2 of the ~50 W passes a norm or radius costs
    amax = np.maximum(W3.max(axis=(1, 2)), -W3.min(axis=(1, 2))).astype(np.float64)
    ex = np.zeros(W3.shape[0], dtype=np.int64)
    out_of_range = (amax > 0) & ((amax < 2.0**-SCALE_EXP) | (amax > 2.0**SCALE_EXP))
    if not out_of_range.any():
        return W3, ex
    ex[out_of_range] = -np.frexp(amax[out_of_range])[1]
    return np.ldexp(W3, ex[:, None, None]).astype(W3.dtype, copy=False), ex


