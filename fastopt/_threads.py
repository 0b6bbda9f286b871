"""Thread count shared by the compiled backends.

Cython kernels receive the count as an argument (``prange(..., num_threads=n)``); Numba kernels run
under ``numba.set_num_threads`` applied by :func:`apply_numba_threads` right before each call.
Results are deterministic for a given thread count: reductions split the work into a fixed number
of chunks that does not depend on scheduling, and combine the partial sums in chunk order.

Under load (other processes keeping the CPUs busy) a parallel region waits at its barriers for
threads the OS has descheduled, many times per call: :func:`threads_for_call` lowers a call's
thread count to the CPUs the other processes leave free. The work split, and so the result,
still follows the configured count (:func:`get_num_threads`); only how many threads run it
changes. ``FASTOPT_LOAD_AWARE=0`` turns this off.
"""

from __future__ import annotations

import os
import threading
import time
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


_LOAD_INTERVAL = 0.1  # seconds between two looks at the system's run queue
_load_lock = threading.Lock()
_load_state: dict = {"at": -1.0, "free": None, "others": None}


def _running_tasks(path: str) -> int:
    """Runnable tasks: the 4th field of /proc/loadavg ("running/total")."""
    with open(path) as fh:
        return int(fh.read().split()[3].split("/")[0])


def _own_running_tids() -> set[str]:
    """Threads of this process that are running or runnable now (state R)."""
    running = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:  # the thread ended
            continue
        if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R":
            running.add(tid)
    return running


def free_cpus() -> int | None:
    """CPUs of this process's affinity set that other processes' runnable tasks leave free, or
    None where that cannot be read (not Linux). Looked up at most every 0.1 s.

    This process's own threads are those running just before or just after the system count
    is read (a worker that stops spinning in between is not taken for another process), and
    the other processes' count is the smaller of the last two looks, so that one passing task
    does not take a thread away."""
    now = time.monotonic()
    if now - _load_state["at"] < _LOAD_INTERVAL:
        return _load_state["free"]
    with _load_lock:
        if now - _load_state["at"] >= _LOAD_INTERVAL:
            try:
                before = _own_running_tids()
                total = _running_tasks("/proc/loadavg")
                own = len(before | _own_running_tids())
                others = max(0, total - own)
                previous = _load_state["others"]
                _load_state["others"] = others
                if previous is not None and now - _load_state["at"] < 10 * _LOAD_INTERVAL:
                    others = min(others, previous)
                free = max(1, _default_cpus() - others)
            except (OSError, ValueError, IndexError):
                free = None
            _load_state["free"] = free
            _load_state["at"] = now
    return _load_state["free"]


@cache
def _default_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@cache
def _load_aware() -> bool:
    return os.environ.get("FASTOPT_LOAD_AWARE", "1") != "0"


def threads_for_call(n: int) -> int:
    """Threads to run a call planned for ``n``: ``n``, lowered (never below 1) to the CPUs that
    other processes leave free (:func:`free_cpus`), so that no thread of the call waits for a
    descheduled one. Used by the Cython and Numba backends alike."""
    if n <= 1 or not _load_aware():
        return n
    free = free_cpus()
    return n if free is None else max(1, min(n, free))
