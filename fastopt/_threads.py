"""Thread count shared by the compiled backends.

Cython kernels receive the count as an argument (``prange(..., num_threads=n)``); Numba kernels run
under ``numba.set_num_threads`` applied by :func:`apply_numba_threads` right before each call.
Results are deterministic for a given thread count: reductions split the work into a fixed number
of chunks that does not depend on scheduling, and combine the partial sums in chunk order.
"""

from __future__ import annotations

import os
from functools import cache

_num_threads: int | None = None


@cache  # read once, on first use (every kernel call asks; affinity is a system call)
def _default_threads() -> int:
    env = os.environ.get("FASTOPT_NUM_THREADS") or os.environ.get("NUMBA_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Number of threads the Cython and Numba kernels use.

    The default, ``FASTOPT_NUM_THREADS``, else ``NUMBA_NUM_THREADS``, else the CPUs this process
    may run on, is read once on first use; later changes to those variables have no effect, use
    :func:`set_num_threads` instead.

    Examples
    --------
    >>> import fastopt
    >>> fastopt.get_num_threads() >= 1
    True
    """
    return _num_threads if _num_threads is not None else _default_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads for both compiled backends (at least 1).

    Numba cannot use more threads than it started with (``NUMBA_NUM_THREADS``); larger values
    are clipped for the Numba backend only.

    Examples
    --------
    >>> import fastopt
    >>> old = fastopt.get_num_threads()
    >>> fastopt.set_num_threads(1)
    >>> fastopt.get_num_threads()
    1
    >>> fastopt.set_num_threads(old)
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an integer, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


def apply_numba_threads(n: int | None = None) -> int:
    """Make Numba's parallel loops in this thread use ``n`` (default :func:`get_num_threads`)."""
    import numba

    n = min(n or get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n
