"""Connecting to a Dask cluster: an existing ``Client``, a scheduler address, or a new
``LocalCluster`` on this machine (processes, one thread each, bound to 127.0.0.1)."""

from __future__ import annotations

import os


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def import_distributed():
    """``distributed``, or an ImportError that says how to install it."""
    try:
        import dask.array  # noqa: F401
        import distributed
    except ImportError as exc:
        raise ImportError(
            "fastopt.distributed needs dask and distributed: pip install 'fastopt[dask]' "
            "(or pip install 'dask[array,distributed]')"
        ) from exc
    return distributed


# No dashboard; the scheduler's small HTTP server (health, metrics) on a free loopback port
# rather than 8787, which another cluster on the machine may hold.
LOOPBACK_HTTP = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}


def start_local_cluster(n_workers: int | None = None):
    """A ``LocalCluster`` of ``n_workers`` processes (default: the CPUs this process may use),
    one thread each, on 127.0.0.1 without a dashboard; returns ``(client, cluster)``."""
    distributed = import_distributed()
    n = _cpus() if n_workers is None else n_workers
    cluster = distributed.LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, scheduler_kwargs=LOOPBACK_HTTP,
    )
    return distributed.Client(cluster), cluster


def connect(client: object):
    """``(client, owned)`` for the ``client=`` argument of ShardedObjective. ``owned`` lists what
    this objective started and must close (the client first, then a cluster)."""
    distributed = import_distributed()
    if client is None:
        c, cluster = start_local_cluster()
        return c, [c, cluster]
    if isinstance(client, distributed.Client):
        return client, []
    if isinstance(client, str):
        c = distributed.Client(client)
        return c, [c]
    raise TypeError(
        "client: expected None (start a LocalCluster), a distributed.Client or a scheduler "
        f"address such as 'tcp://127.0.0.1:8786', got {type(client).__name__}"
    )
