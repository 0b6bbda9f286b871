"""ShardedObjective: a model's full-dataset loss, gradient and curvature products over shards
that stay resident on the workers of a Dask cluster.

On the client: input checks, one task per shard and the fixed reduction tree (``_reduce``).
On the workers: :func:`_shard_task` runs the model's own method on its shard with one thread
(fastopt's kernels and BLAS), and returns the shard result scaled by the shard size in float64.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .._validate import as_float_array, check_all_finite, check_choice, check_int
from ._cluster import connect, import_distributed
from ._progress import ProgressInfo, Reporter
from ._reduce import ShardSum, combine, tree_reduce

__all__ = ["ShardedObjective", "DEFAULT_MIN_SHARD", "DEFAULT_MAX_SHARDS"]

# Default shard size: N / 512 rows, at least 2048 (see docs/distributed.md for the cost model).
# It depends on the data only, never on the cluster, so the results do not depend on the workers.
DEFAULT_MIN_SHARD = 2048
DEFAULT_MAX_SHARDS = 512

_MODES = ("loss", "loss_and_grad", "hvp", "gnvp")
_REQUIRED = ("num_params", "dtype", "loss_and_grad", "hvp", "gnvp")


# ------------------------------------------------------------------------------- worker side
class _OneThread:
    """Holds fastopt's kernels and BLAS to one thread while any shard task of this process runs.

    A task occupies one of the threads Dask gives its worker, so it computes on one thread: a
    worker started with ``--nthreads T`` runs T tasks at once on T threads, never more. The
    limits are counted: the first task in sets them, the last one out restores the previous
    ones (a worker inside the client's process, ``processes=False``, gives them back).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: tuple[Any, Any] | None = None
        self._controller = None

    def __enter__(self) -> _OneThread:
        from .. import _threads

        with self._lock:
            if self._active == 0:
                blas = None
                try:
                    if self._controller is None:
                        from threadpoolctl import ThreadpoolController

                        self._controller = ThreadpoolController()
                    blas = self._controller.limit(limits=1)
                except ImportError:  # the nanny already sets OPENBLAS/OMP/MKL_NUM_THREADS=1
                    pass
                self._saved = (_threads._num_threads, blas)
                _threads.set_num_threads(1)
            self._active += 1
        return self

    def __exit__(self, *exc: object) -> None:
        from .. import _threads

        with self._lock:
            self._active -= 1
            if self._active == 0 and self._saved is not None:
                saved_threads, blas = self._saved
                _threads._num_threads = saved_threads
                if blas is not None:
                    blas.restore_original_limits()
                self._saved = None


_ONE_THREAD = _OneThread()

# Per worker process: a copy of the model for each shard length, so that each keeps its own
# scratch buffers (an MLP reallocates its workspace whenever the batch length changes, and the
# last shard is usually shorter). Keyed weakly by the model the worker holds for the objective.
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()
_MAX_COPIES = 4


def _model_for(model: Any, rows: int) -> Any:
    try:
        with _COPIES_LOCK:
            per = _COPIES.setdefault(model, {})
            m = per.get(rows)
            if m is None:
                if len(per) >= _MAX_COPIES:
                    per.pop(next(iter(per)))
                m = per[rows] = pickle.loads(pickle.dumps(model))
            return m
    except TypeError:  # not weakly referenceable or not hashable: use it as is
        return model


def _identity(x: Any) -> Any:
    """A task whose result is its (literal) argument: θ and the directions travel inside the
    task graph, so the scheduler can recompute them if the worker holding them dies."""
    return x


def _aligned(a: Any) -> Any:
    """``a``, copied if it is a numpy array that is not C-contiguous and aligned to its dtype.

    Arrays deserialized from a network frame can start at any byte; numpy's matmul does not
    hand those to BLAS but runs its own loop, which is slower and rounds differently (the same
    shard would give other bits depending on where its bytes landed). The persisted shards are
    made aligned once, on the workers; a shard that moved to another worker is copied per call.
    """
    if isinstance(a, np.ndarray) and not (a.flags.aligned and a.flags.c_contiguous):
        return np.array(a, order="C")
    return a


def _shard_task(model: Any, mode: str, backend: str, theta: np.ndarray, V: np.ndarray | None,
                X: Any, y: Any) -> ShardSum:
    """The shard's result times its size, in float64 (runs on a worker)."""
    theta, V, X, y = (_aligned(a) for a in (theta, V, X, y))
    n = int(X.shape[0])
    kw = {} if backend == "auto" else {"backend": backend}
    with _ONE_THREAD:
        m = _model_for(model, n)
        if mode == "loss":
            if hasattr(m, "loss"):
                loss = m.loss(theta, X, y, **kw)
            else:
                loss = m.loss_and_grad(theta, X, y, **kw)[0]
            return ShardSum(float(loss) * n, None)
        if mode == "loss_and_grad":
            loss, g = m.loss_and_grad(theta, X, y, **kw)
            return ShardSum(float(loss) * n, np.asarray(g, dtype=np.float64) * n)
        r = getattr(m, mode)(theta, X, y, V, **kw)
        return ShardSum(0.0, np.asarray(r, dtype=np.float64) * n)


def _local_result(model: Any, shards: list[tuple[Any, Any]], mode: str, theta: np.ndarray,
                  V: np.ndarray | None = None, backend: str = "auto") -> ShardSum:
    """The same shard tasks and the same tree in this process (reference and benchmark)."""
    parts = [_shard_task(model, mode, backend, theta, V, X, y) for X, y in shards]
    return tree_reduce(parts, lambda level, i, *children: combine(*children))


def _balanced_targets(sizes: list[int], holders: list[str | None], workers: list[str]
                      ) -> list[str | None]:
    """A worker for each shard such that the rows per worker are balanced, moving as few
    shards as possible: ``None`` where the shard stays where it is.

    Shards (largest first) stay on their worker while it holds at most ``N / W`` rows; the
    rest go, largest first, to the least loaded worker.

    Examples
    --------
    >>> from fastopt.distributed.sharded import _balanced_targets
    >>> _balanced_targets([4, 4, 4, 4, 1], ["a", "a", "a", "a", "a"], ["a", "b"])
    [None, None, 'b', 'b', None]
    """
    cap = sum(sizes) / max(1, len(workers))
    load = dict.fromkeys(workers, 0)
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    target: list[str | None] = [None] * len(sizes)
    deferred = []
    for i in order:
        w = holders[i]
        if w in load and load[w] + sizes[i] <= cap:
            load[w] += sizes[i]
        else:
            deferred.append(i)
    for i in deferred:
        w = min(workers, key=lambda a: (load[a], a))
        load[w] += sizes[i]
        target[i] = None if w == holders[i] else w
    return target


def _wait_quietly(futures: Any) -> None:
    """Wait, re-raising a shard's own error (a model's ValueError) as itself."""
    distributed = import_distributed()
    distributed.wait(futures)
    for f in futures if isinstance(futures, list) else [futures]:
        if f.status == "error":
            f.result()


# ------------------------------------------------------------------------------- client side
def _as_dask(a: Any, name: str, rows: tuple[int, ...] | None, shard: int | None):
    """``a`` as a dask array chunked along axis 0 only, into ``rows`` (or ``shard``-row chunks,
    or as it is chunked)."""
    import dask.array as da

    if not isinstance(a, da.Array):
        a = np.asarray(a)
        if a.dtype == object:
            raise TypeError(f"{name}: expected a numeric numpy or dask array, got dtype object")
    if a.ndim == 0:
        raise ValueError(f"{name}: expected an array with a batch axis, got a scalar")
    if any(math.isnan(s) for s in a.shape):
        raise ValueError(f"{name}: the dask array has unknown chunk sizes; call "
                         f"{name}.compute_chunk_sizes() first")
    if rows is None:
        if shard is not None:
            rows = da.core.normalize_chunks((shard,), (a.shape[0],))[0]
        elif isinstance(a, da.Array):
            rows = a.chunks[0]
        else:
            size = max(DEFAULT_MIN_SHARD, -(-a.shape[0] // DEFAULT_MAX_SHARDS))
            rows = da.core.normalize_chunks((size,), (a.shape[0],))[0]
    chunks = (tuple(rows),) + tuple((s,) for s in a.shape[1:])
    if isinstance(a, da.Array):
        return a.rechunk(chunks) if a.chunks != chunks else a
    return da.from_array(a, chunks=chunks)


class ShardedObjective:
    """A model's loss over a whole dataset sharded across a Dask cluster.

    ``loss``, ``loss_and_grad``, ``hvp`` and ``gnvp`` return the average over all samples:
    each shard's result (the model's own method on that shard) times the shard size, summed in
    float64 by a fixed tree over the shards in order (fan-in 8), divided by the number of samples.
    The tree depends only on the shards, so results are bit-identical on any number of workers
    and under any scheduling (given the same software and CPU type on every worker). Each task
    runs on one thread (fastopt's kernels and BLAS).

    The shards are persisted on the workers once, as dask arrays that keep their lineage: a
    worker that dies loses nothing, its shards are recomputed (numpy input: from the copy the
    scheduler holds in the task graph; a dask array: from its source, such as files) and the
    call returns the same result. Each call sends only ``theta`` (once for consecutive calls
    with the same ``theta``, as in a Lanczos run) and the directions.

    The object satisfies fastopt's objective protocol (``num_params``, ``dtype``, ``loss``,
    ``loss_and_grad``, ``hvp``, ``gnvp``), so the curvature diagnostics accept it in place of
    ``(model, X, y)``, and ``fastopt.lanczos_extremes`` runs on ``hvp`` as a matvec.

    Parameters
    ----------
    model : fastopt curvature model
        Anything with ``num_params``, ``dtype`` and the methods ``loss_and_grad(theta, X, y)``,
        ``hvp(theta, X, y, v)``, ``gnvp(theta, X, y, v)`` (``fastopt.MLP``, and the networks
        and RNN of the models family). A model with batch norm computes its statistics per
        shard: the mini-batch semantics, with the shard as the batch. Must be picklable.
    X, y : numpy or dask arrays
        Inputs and targets with the samples along axis 0 (``X`` of the model's dtype; a dask
        array converts lazily with ``X.astype(...)``). Dask arrays are rechunked along axis 0
        only if needed (to ``shard_size``, and ``y`` to the chunks of ``X``).
    client : None, distributed.Client or str
        ``None`` starts a ``LocalCluster`` of one single-threaded worker process per CPU on
        127.0.0.1 (closed by :meth:`close`); a ``Client`` or a scheduler address
        (``"tcp://host:8786"``) uses that cluster.
    shard_size : int, optional
        Samples per shard (the last may be shorter). Default: the chunks of a dask ``X``, else
        ``max(2048, ceil(N / 512))``. Fixes the shards, hence the bits of every result.
    backend : {"auto", "cython", "numba", "numpy"}
        Passed to the model's methods on the workers (not passed when ``"auto"``).
    progress : None, bool or callable
        ``callable(ProgressInfo)`` after every distributed call; ``True`` shows a tqdm bar,
        ``None`` (default) shows one only in interactive use (stderr is a terminal, or a Jupyter
        kernel runs) when tqdm is installed; ``False`` shows none.

    Attributes
    ----------
    num_params, dtype : int, numpy dtype
        Those of the model.
    n_samples : int
        ``N``, the samples over all shards.
    shard_sizes : tuple of int
        Samples per shard, in the order of the reduction.
    client : distributed.Client
        The client in use.

    Notes
    -----
    Call :meth:`close` (or use ``with``) to release the shards and stop a cluster this object
    started. A script that starts a ``LocalCluster`` (``client=None``) must run it under
    ``if __name__ == "__main__":``, as for any multiprocessing program.

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client
    >>> from fastopt import MLP
    >>> from fastopt.distributed import ShardedObjective
    >>> net = MLP([3, 4, 2])
    >>> X = np.random.default_rng(0).standard_normal((50, 3)); y = np.arange(50) % 2
    >>> theta = net.init(0)
    >>> with Client(processes=False, n_workers=1, protocol="tcp://", host="127.0.0.1",
    ...             dashboard_address=None) as client:
    ...     with ShardedObjective(net, X, y, client=client, shard_size=16) as obj:
    ...         print(obj.shard_sizes)
    ...         hv = obj.hvp(theta, np.ones(net.num_params))
    (16, 16, 16, 2)
    >>> bool(np.allclose(hv, net.hvp(theta, X, y, np.ones(net.num_params)), rtol=1e-12))
    True
    """

    def __init__(self, model: Any, X: Any, y: Any, *, client: Any = None,
                 shard_size: int | None = None, backend: str = "auto",
                 progress: bool | Callable[[ProgressInfo], object] | None = None) -> None:
        import_distributed()
        missing = [a for a in _REQUIRED if not hasattr(model, a)]
        if missing:
            raise TypeError(
                f"model: expected a fastopt curvature model (with {', '.join(_REQUIRED)}), "
                f"got {type(model).__name__} without {', '.join(missing)}"
            )
        self.num_params = check_int(model.num_params, "model.num_params")
        self.dtype = np.dtype(model.dtype)
        if shard_size is not None:
            shard_size = check_int(shard_size, "shard_size")
        self.backend = check_choice(backend, "backend", ("auto", "cython", "numba", "numpy"))
        if client is not None and not isinstance(client, str):
            distributed = import_distributed()
            if not isinstance(client, distributed.Client):
                raise TypeError(
                    "client: expected None (start a LocalCluster), a distributed.Client or a "
                    f"scheduler address such as 'tcp://127.0.0.1:8786', got "
                    f"{type(client).__name__}"
                )
        Xd = _as_dask(X, "X", None, shard_size)
        if Xd.dtype.kind == "f" and Xd.dtype != self.dtype:
            raise ValueError(
                f"X: dtype {Xd.dtype} does not match the model's {self.dtype}; pass "
                f"X.astype(np.{self.dtype.name}) (a dask array converts lazily, on the workers)"
            )
        if Xd.shape[0] == 0:
            raise ValueError("X: empty dataset (0 samples); the loss is an average over samples")
        yd = _as_dask(y, "y", Xd.chunks[0] if np.shape(y)[:1] == Xd.shape[:1] else None, None)
        if yd.shape[0] != Xd.shape[0]:
            raise ValueError(f"y: expected {Xd.shape[0]} samples (the length of X), got "
                             f"{yd.shape[0]}")
        self.shard_sizes = tuple(int(s) for s in Xd.chunks[0])
        self.n_samples = int(Xd.shape[0])
        self._progress = Reporter(progress)

        self.client, self._owned = connect(client)
        self._id = uuid.uuid4().hex[:12]
        self._calls = 0
        try:
            Xd, yd = (a.map_blocks(_aligned, dtype=a.dtype) for a in (Xd, yd))
            with warnings.catch_warnings():
                # a numpy dataset travels in the graph on purpose: the scheduler's copy is the
                # lineage that recomputes a lost shard
                warnings.filterwarnings("ignore", message=".*[Ll]arge (object|graph).*")
                self._X, self._y = self.client.persist([Xd, yd])
            x_graph, y_graph = dict(self._X.__dask_graph__()), dict(self._y.__dask_graph__())
            x_keys = [k for row in self._X.__dask_keys__() for k in _flat(row)]
            self._shards = list(zip([x_graph[k] for k in x_keys],
                                    [y_graph[k] for k in _flat(self._y.__dask_keys__())],
                                    strict=True))
            self._model = self.client.submit(_identity, model, key=f"fastopt-{self._id}-model",
                                             pure=False)
            self._theta: np.ndarray | None = None
            self._theta_future = None
            _wait_quietly([f for pair in self._shards for f in pair] + [self._model])
            self._balance()
        except BaseException:
            self.close()
            raise

    def _balance(self) -> None:
        """Even out the rows per worker (the scheduler places persisted chunks unevenly: 5 and 3
        of 8, 16 and 14 of 30 seen on 2 workers). A moved shard becomes an identity task of the
        original pinned to its new worker, so it keeps its lineage."""
        workers = sorted(self.client.scheduler_info()["workers"])
        if len(workers) < 2:
            return
        who = self.client.who_has([x for x, _ in self._shards])
        holders = [min(who.get(x.key, ()) or [None], key=lambda a: a or "") for x, _ in
                   self._shards]
        targets = _balanced_targets(list(self.shard_sizes), holders, workers)
        moved = []
        for i, w in enumerate(targets):
            if w is None:
                continue
            pair = tuple(self.client.submit(_identity, f, key=f"fastopt-{self._id}-{name}-{i}",
                                            workers=[w], allow_other_workers=True, pure=False)
                         for f, name in zip(self._shards[i], ("X", "y"), strict=True))
            self._shards[i] = pair
            moved.extend(pair)
        if moved:
            _wait_quietly(moved)

    # ------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:
        return (f"ShardedObjective({self.n_samples} samples in {len(self.shard_sizes)} shards, "
                f"{self.num_params} parameters, {self.dtype.name})")

    def __enter__(self) -> ShardedObjective:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_shards(self) -> int:
        """Number of shards (tasks per call)."""
        return len(self.shard_sizes)

    def close(self) -> None:
        """Release the shards on the workers and close what this object started (its client and
        ``LocalCluster``; a client or cluster passed in stays open). Idempotent."""
        if hasattr(self, "_progress"):
            self._progress.close()
        for name in ("_shards", "_X", "_y", "_model", "_theta_future"):
            if hasattr(self, name):
                setattr(self, name, None)
        for thing in getattr(self, "_owned", []):
            try:
                thing.close()
            except Exception:  # closing is best effort: a cluster may already be gone
                pass
        self._owned = []

    def _check_open(self) -> None:
        if getattr(self, "_shards", None) is None:
            raise RuntimeError("ShardedObjective: closed (create a new one)")

    def _check_theta(self, theta: object) -> np.ndarray:
        theta = as_float_array(theta, "theta", dtype=self.dtype)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta: expected shape ({self.num_params},), got {theta.shape}")
        check_all_finite(theta, "theta")
        return theta

    def _check_v(self, v: object) -> np.ndarray:
        # Directions of either float dtype (Lanczos works in float64) are cast to the model's.
        V = as_float_array(v, "v", allow_int=True)
        P = self.num_params
        if not ((V.ndim == 1 and V.shape[0] == P) or
                (V.ndim == 2 and V.shape[0] == P and V.shape[1] >= 1)):
            raise ValueError(f"v: expected shape ({P},) or ({P}, k) with k >= 1, got {V.shape}")
        check_all_finite(V, "v")
        return np.ascontiguousarray(V, dtype=self.dtype)

    def _theta_on_cluster(self, theta: np.ndarray):
        """The future of ``theta``, reused while consecutive calls pass the same values."""
        if self._theta is None or not np.array_equal(self._theta, theta):
            self._theta = theta.copy()
            self._theta_future = self.client.submit(
                _identity, self._theta, key=f"fastopt-{self._id}-theta-{self._calls}",
                pure=False)
        return self._theta_future

    def _call(self, mode: str, theta: object, v: object = None) -> ShardSum:
        self._check_open()
        theta = self._check_theta(theta)
        V = None if v is None else self._check_v(v)
        t0 = time.perf_counter()
        self._calls += 1
        tag = f"fastopt-{self._id}-{mode}-{self._calls}"
        client = self.client
        with warnings.catch_warnings():
            # θ and the directions travel in the graph on purpose (lineage, see _identity)
            warnings.filterwarnings("ignore", message=".*[Ll]arge (object|graph).*")
            theta_f = self._theta_on_cluster(theta)
            V_f = None if V is None else client.submit(_identity, V, key=f"{tag}-v", pure=False)
            parts = [client.submit(_shard_task, self._model, mode, self.backend, theta_f, V_f,
                                   xf, yf, key=f"{tag}-shard-{i}", pure=False)
                     for i, (xf, yf) in enumerate(self._shards)]
            root = tree_reduce(parts, lambda level, i, *children: client.submit(
                combine, *children, key=f"{tag}-sum-{level}-{i}", pure=False))
        total = root.result()
        k = 0 if V is None else (1 if V.ndim == 1 else V.shape[1])
        self._progress.report(mode, k, time.perf_counter() - t0)
        return total

    # ------------------------------------------------------------------ the protocol
    def loss(self, theta: np.ndarray) -> float:
        """The loss averaged over all samples.

        Examples
        --------
        >>> import numpy as np
        >>> from distributed import Client
        >>> from fastopt import MLP
        >>> from fastopt.distributed import ShardedObjective
        >>> net = MLP([2, 1], activation="identity", loss="mse")
        >>> X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]); y = np.zeros(3)
        >>> with Client(processes=False, n_workers=1, protocol="tcp://", host="127.0.0.1",
        ...             dashboard_address=None) as client:
        ...     with ShardedObjective(net, X, y, client=client, shard_size=2) as obj:
        ...         print(obj.loss(np.ones(3)))     # 0.5 * mean((x1 + x2 + 1)^2) = 0.5 * 22 / 3
        3.6666666666666665
        """
        s = self._call("loss", theta)
        return s.loss / self.n_samples

    def loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """The average loss and its gradient, shape ``(num_params,)``, the model's dtype.

        Examples
        --------
        >>> import numpy as np
        >>> from distributed import Client
        >>> from fastopt import MLP
        >>> from fastopt.distributed import ShardedObjective
        >>> net = MLP([1, 1], activation="identity", loss="mse")
        >>> X = np.array([[1.0], [2.0]]); y = np.array([1.0, 2.0])
        >>> with Client(processes=False, n_workers=1, protocol="tcp://", host="127.0.0.1",
        ...             dashboard_address=None) as client:
        ...     with ShardedObjective(net, X, y, client=client, shard_size=1) as obj:
        ...         loss, g = obj.loss_and_grad(np.array([2.0, 0.0]))
        >>> loss, g.tolist()
        (1.25, [2.5, 1.5])
        """
        s = self._call("loss_and_grad", theta)
        return s.loss / self.n_samples, (s.vector / self.n_samples).astype(self.dtype)

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Exact Hessian-vector product of the average loss, ``v`` of shape ``(P,)`` or ``(P, k)``
        (any float dtype, cast to the model's); the result has ``v``'s shape, the model's dtype.

        Examples
        --------
        >>> import numpy as np
        >>> from distributed import Client
        >>> from fastopt import MLP
        >>> from fastopt.distributed import ShardedObjective
        >>> net = MLP([2, 1], activation="identity", loss="mse")   # H = [X 1]^T [X 1] / N
        >>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> with Client(processes=False, n_workers=1, protocol="tcp://", host="127.0.0.1",
        ...             dashboard_address=None) as client:
        ...     with ShardedObjective(net, X, np.zeros(2), client=client, shard_size=1) as obj:
        ...         H = obj.hvp(np.zeros(3), np.eye(3))
        >>> H
        array([[0.5, 0. , 0.5],
               [0. , 2. , 1. ],
               [0.5, 1. , 1. ]])
        """
        s = self._call("hvp", theta, v)
        return (s.vector / self.n_samples).astype(self.dtype)

    def gnvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Gauss-Newton-vector product of the average loss (same arguments as :meth:`hvp`).

        Examples
        --------
        >>> import numpy as np
        >>> from distributed import Client
        >>> from fastopt import MLP
        >>> from fastopt.distributed import ShardedObjective
        >>> net = MLP([2, 1], activation="identity", loss="mse")   # linear: G == H
        >>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> with Client(processes=False, n_workers=1, protocol="tcp://", host="127.0.0.1",
        ...             dashboard_address=None) as client:
        ...     with ShardedObjective(net, X, np.zeros(2), client=client) as obj:
        ...         G = obj.gnvp(np.zeros(3), np.eye(3))
        >>> G[1].tolist()
        [0.0, 2.0, 1.0]
        """
        s = self._call("gnvp", theta, v)
        return (s.vector / self.n_samples).astype(self.dtype)


def _flat(keys: Any) -> list:
    """Chunk keys of a dask array along axis 0 (the others are one chunk each)."""
    out = []
    for k in keys:
        if isinstance(k, list):
            out.extend(_flat(k))
        else:
            out.append(k)
    return out
