"""Pieces every solver of the spectra family shares: the backend's kernel module, the thread
policy of the solvers, and the exact power-of-two rescaling of out-of-range matrices."""

from __future__ import annotations

import contextlib
import time
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




# Under load (other processes keep every core busy) a parallel region waits at its barrier for
# threads the OS has descheduled, for milliseconds each time, and a solver runs ~50-300 regions
# per call. A Team watches the solver's passes over W: when a parallel pass takes more than
# STALL_RATIO times a one-thread pass of the same call (twice), the rest of the call, and every
# call for HOLD_SECONDS after, runs its kernels on one OS thread. The work split (and so every
# result) stays the one planned for fastopt's thread count: only who executes it changes.
STALL_RATIO = 2.0
STALL_SLACK = 50e-6  # seconds: wake-up jitter of a quiet machine is not a stall
HOLD_SECONDS = 1.0
_serial_until = [0.0]  # monotonic time until which new calls start on one worker


class Team:
    """Threads of one solver call: ``plan`` (the work split, fixed) and ``workers`` (who run it).

    ``team.timed(kernel, *args)`` runs a pass over ``W`` (the solver's main kernel) and watches
    it for stalls; ``team(kernel, *args)`` runs any other kernel with the current workers. Both
    append ``n_threads=plan, n_workers=workers`` to the kernel's arguments.
    """

    __slots__ = ("plan", "workers", "_serial_ref", "_first", "_passes", "_stalls")

    def __init__(self, entries: int) -> None:
        self.plan = threads_for(entries)
        held = time.monotonic() < _serial_until[0]
        self.workers = 1 if held else self.plan
        self._serial_ref = None
        self._first = None
        self._passes = 0
        self._stalls = 0

    def __call__(self, kernel, *args):
        return kernel(*args, self.plan, self.workers)

    def timed(self, kernel, *args):
        if self.workers == 1:
            return kernel(*args, self.plan, 1)
        self._passes += 1
        if self._passes == 2:  # one-thread reference pass of this call (same plan, same result)
            t0 = time.perf_counter()
            out = kernel(*args, self.plan, 1)
            self._serial_ref = time.perf_counter() - t0
            if self._first is not None:
                self._judge(self._first)
            return out
        t0 = time.perf_counter()
        out = kernel(*args, self.plan, self.workers)
        dt = time.perf_counter() - t0
        if self._serial_ref is None:
            self._first = dt
        else:
            self._judge(dt)
        return out

    def _judge(self, dt: float) -> None:
        if dt > STALL_RATIO * self._serial_ref + STALL_SLACK:
            self._stalls += 1
            if self._stalls >= 2:
                self.workers = 1
                _serial_until[0] = time.monotonic() + HOLD_SECONDS


_blas_controller: list = []  # [ThreadpoolController] once created; [None] if unavailable


def blas_single_thread():
    """A context in which numpy's BLAS/LAPACK run on one thread (threadpoolctl, if installed).

    The solvers' LAPACK calls are on matrices of order <= 64 (eigh of the Lanczos matrix, eig
    of the Arnoldi matrix): there OpenBLAS's worker threads only wait for each other, and under
    load a 45 x 45 eigh took 48 ms on two threads against 0.15 ms on one. Entering costs ~10 us.
    """
    if not _blas_controller:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_controller.append(ThreadpoolController())
        except Exception:  # threadpoolctl missing or unable to inspect the libraries
            _blas_controller.append(None)
    ctl = _blas_controller[0]
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")
