"""The objective protocol: a loss of ``theta`` alone, with its gradient and curvature products.

A *model* (:class:`~fastopt.MLP`, :class:`~fastopt.Network`, ``ElmanRNN``, or anything with
``loss_and_grad(theta, X, y)``, ``hvp(theta, X, y, v)``, ``gnvp(theta, X, y, v)``,
``num_params`` and ``dtype``) computes a loss of ``theta`` *on data*. An *objective* has the data
built in: ``loss(theta)``, ``loss_and_grad(theta)``, ``hvp(theta, v)`` and ``gnvp(theta, v)``,
``v`` of shape ``(P,)`` or ``(P, k)``. :func:`bind` turns a model and a batch into an objective;
a sharded or otherwise distributed loss implements the protocol directly, and every curvature
diagnostic accepts either form.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._dispatch import is_cuda_array
from .._validate import as_float_array, check_all_finite, check_choice

__all__ = ["Objective", "BoundObjective", "bind"]

CURVATURES = ("hessian", "ggn")


@runtime_checkable
class Objective(Protocol):
    """What the curvature diagnostics need from a loss ``J(theta)`` with the data built in.

    Any object with these attributes is an objective (structural typing: ``isinstance(obj,
    Objective)`` checks that they exist); subclassing is optional and inherits :meth:`loss`
    (from :meth:`loss_and_grad`).

    Attributes
    ----------
    num_params : int
        Length ``P`` of ``theta``.
    dtype : numpy dtype
        float32 or float64: dtype of ``theta``, ``v`` and of the returned arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.curvature.objective import Objective
    >>> class Quadratic(Objective):          # J = 0.5 theta^T A theta
    ...     num_params, dtype = 2, np.dtype(np.float64)
    ...     A = np.array([[2.0, 1.0], [1.0, 3.0]])
    ...     def loss_and_grad(self, theta):
    ...         return 0.5 * float(theta @ self.A @ theta), self.A @ theta
    ...     def hvp(self, theta, v):
    ...         return self.A @ v
    ...     gnvp = hvp
    >>> Quadratic().loss(np.ones(2)), isinstance(Quadratic(), Objective)
    (3.5, True)
    """

    num_params: int
    dtype: np.dtype

    def loss(self, theta: np.ndarray) -> float:
        """Loss at ``theta`` (default: the first element of :meth:`loss_and_grad`)."""
        return self.loss_and_grad(theta)[0]

    def loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(loss, gradient)``, the gradient of shape ``(P,)``."""
        ...

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Hessian-vector product, ``v`` and the result of shape ``(P,)`` or ``(P, k)``."""
        ...

    def gnvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Generalized Gauss-Newton-vector product (same shapes as :meth:`hvp`)."""
        ...


def check_finite(x: np.ndarray, name: str) -> None:
    """``check_all_finite`` without its temporary: min and max propagate NaN and reach +-inf,
    so two allocation-free reductions decide, and only a bad array pays for the count."""
    if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        check_all_finite(x, name)


def _accepts_backend(method: Any) -> bool:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "backend" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def check_model(model: object, name: str = "model") -> None:
    """Raise ``TypeError`` unless ``model`` has the model methods and attributes."""
    missing = [a for a in ("num_params", "dtype", "loss_and_grad", "hvp")
               if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"{name}: expected a model (fastopt.MLP, fastopt.Network, fastopt.ElmanRNN or an "
            "object with num_params, dtype, loss_and_grad(theta, X, y), hvp(theta, X, y, v) and "
            f"gnvp(theta, X, y, v)), got {type(model).__name__} without {', '.join(missing)}"
        )


class _Prepared:
    """A model and one batch, validated once: ``run(theta, V, mode)`` with ``theta`` already
    checked and ``V`` of shape ``(P, k)`` in the model dtype, mode ``"loss"``, ``"grad"``,
    ``"hvp"`` or ``"gnvp"``; returns ``(loss, grad or None, product or None)``.

    Models that define ``_prepared(X, y, backend, copy)`` (fastopt's own) return one of these
    that skips re-checking ``X`` and ``y`` on every call; any other model is called through its
    public methods."""

    def __init__(self, model: Any, X: Any, y: Any, backend: str, copy: bool) -> None:
        self.model = model
        self.num_params = int(model.num_params)
        self.dtype = np.dtype(model.dtype)
        if copy:
            X, y = np.array(X, copy=True), np.array(y, copy=True)
        self.X, self.y = X, y
        self.kw = {"backend": backend} if _accepts_backend(model.hvp) else {}
        if backend != "auto" and not self.kw:
            raise ValueError(
                f"backend: {type(model).__name__}.hvp takes no backend argument; pass "
                "backend='auto'"
            )

    def check_theta(self, theta: object) -> np.ndarray:
        theta = as_float_array(theta, "theta", dtype=self.dtype)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta: expected shape ({self.num_params},), got {theta.shape}")
        check_finite(theta, "theta")
        return theta

    def run(self, theta, V, mode):
        m, X, y = self.model, self.X, self.y
        if mode == "loss":
            loss = m.loss(theta, X, y, **self.kw) if hasattr(m, "loss") else \
                m.loss_and_grad(theta, X, y, **self.kw)[0]
            return float(loss), None, None
        if mode == "grad":
            loss, g = m.loss_and_grad(theta, X, y, **self.kw)
            return float(loss), np.asarray(g), None
        fn = m.hvp if mode == "hvp" else getattr(m, "gnvp", None)
        if fn is None:
            raise TypeError(f"model: {type(m).__name__} has no gnvp (needed for curvature='ggn')")
        return None, None, np.asarray(fn(theta, X, y, V, **self.kw)).reshape(V.shape)


def prepare(model: object, X: object, y: object, backend: str = "auto", *,
            copy: bool = False) -> _Prepared:
    """Validate a model and a batch once (see :class:`_Prepared`); ``copy``: keep private copies
    of the data (for operators that outlive the call)."""
    check_model(model)
    if is_cuda_array(X) or is_cuda_array(y):
        check_same_side(X=X, y=y)
        from .mlp import MLP

        if not isinstance(model, MLP):
            raise TypeError(
                f"X: device arrays need a model with a GPU path (fastopt.MLP); "
                f"{type(model).__name__} computes on the host: copy X and y to the host"
            )
        return _PreparedMLPDevice(model, X, y, backend, copy)
    hook = getattr(model, "_prepared", None)
    if hook is not None:
        return hook(X, y, backend, copy)
    from .mlp import MLP

    if isinstance(model, MLP):
        return _PreparedMLP(model, X, y, backend, copy)
    return _Prepared(model, X, y, backend, copy)


class _PreparedMLP(_Prepared):
    """The MLP's validated-once path: ``MLP._run`` on checked arrays."""

    def __init__(self, model, X, y, backend: str, copy: bool) -> None:
        self.model = model
        self.num_params = model.num_params
        self.dtype = model.dtype
        X = model._check_X(X)
        labels, Y = model._check_y(y, X.shape[0])
        if copy:
            X, labels, Y = X.copy(), labels.copy(), Y.copy()
        self.X, self.labels, self.Y, self.backend = X, labels, Y, backend
        from .. import _dispatch

        _dispatch.resolve("curvature", backend)  # an unknown backend fails here, not later

    def check_theta(self, theta):
        theta = self.model._check_theta(theta)
        check_finite(theta, "theta")
        return theta

    def run(self, theta, V, mode):
        if V is not None and V.shape[1] == 0:
            return None, None, np.empty((self.num_params, 0), self.dtype)
        return self.model._run(theta, self.X, self.labels, self.Y, V, mode, self.backend)


# ---------------------------------------------------------------------------- device data
MOVE_HINT = "numba.cuda.to_device(a), cupy.asarray(a) or torch.as_tensor(a, device='cuda')"


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def check_same_side(**arrays: object) -> bool:
    """True when every array given (``None`` ones are skipped) is a device array, False when none
    is; a mix raises ``TypeError`` saying what to move where (the diagnostics and bound objectives
    keep the data and every product on one side of the bus)."""
    dev = [n for n, a in arrays.items() if a is not None and is_cuda_array(a)]
    host = [n for n, a in arrays.items() if a is not None and not is_cuda_array(a)]
    if dev and host:
        d, h = _names(dev), _names(host)
        raise TypeError(
            f"{h}: {d} {'is a device array' if len(dev) == 1 else 'are device arrays'} but {h} "
            f"{'is' if len(host) == 1 else 'are'} on the host; the curvature diagnostics keep the "
            f"data and every product on one side: move {h} to the device ({MOVE_HINT}) or {d} "
            "to the host"
        )
    return bool(dev)


def device_checked(x: object, name: str, dtype: np.dtype, shape_ok, expected: str):
    """``x`` (a device array of any kind) as a numba device array, checked on the device:
    float dtype ``dtype``, C-contiguous, ``shape_ok(shape)``, no NaN/Inf (one reduction; its
    per-block partials, three floats per block, at most 64 blocks, cross the bus)."""
    from .. import _device
    from .._validate import as_device_array
    from . import _cuda

    arr = as_device_array(_device.to_numba(x), name)
    if np.dtype(arr.dtype) != np.dtype(dtype):
        raise TypeError(f"{name}: dtype {arr.dtype} does not match the model dtype "
                        f"{np.dtype(dtype).name}; convert it on the device first")
    shape = tuple(arr.shape)
    if not shape_ok(shape):
        raise ValueError(f"{name}: expected shape {expected}, got {shape}")
    if arr.size and _cuda.stats(arr)[0]:
        raise ValueError(f"{name}: contains NaN or Inf")
    return arr


class _PreparedMLPDevice:
    """An MLP and one batch on the device, validated once on the device (``X``, ``y`` never
    cross the bus). ``check_theta`` and ``check_v`` take device arrays only and return numba
    views; ``run(theta, V, mode, kind)`` is :func:`fastopt.curvature._cuda.passes` and returns
    ``(loss, grad or None, products or None)`` as numba device arrays (``kind``: the caller's
    kind of array, which chooses the GEMM library and the allocator)."""

    device = True

    def __init__(self, model, X, y, backend: str, copy: bool) -> None:
        from .. import _device, _dispatch
        from .mlp import _device_targets

        _dispatch.resolve_device("curvature", backend, "X")
        self.model = model
        self.num_params = model.num_params
        self.dtype = model.dtype
        self.backend = backend
        n0 = model.sizes[0]
        X = device_checked(X, "X", model.dtype, lambda s: len(s) == 2 and s[1] == n0 and s[0] > 0,
                           f"(N, {n0}) with N >= 1")
        labels, Y = _device_targets(model, y, X.shape[0])
        if copy:
            X, labels, Y = (None if a is None else _device.copy(a) for a in (X, labels, Y))
        self.X, self.labels, self.Y = X, labels, Y

    def check_theta(self, theta: object):
        if not is_cuda_array(theta):
            raise TypeError(
                f"theta: the batch X, y is on the device but theta is a host "
                f"{type(theta).__name__}; move theta to the device ({MOVE_HINT}) or use host data"
            )
        P = self.num_params
        return device_checked(theta, "theta", self.dtype, lambda s: s == (P,), f"({P},)")

    def check_v(self, v: object):
        """``(V (P, k) numba, single)`` for a device ``v`` of shape ``(P,)`` or ``(P, k)``."""
        if not is_cuda_array(v):
            raise TypeError(f"v: the data are on the device but v is a host "
                            f"{type(v).__name__}; move v to the device ({MOVE_HINT})")
        P = self.num_params
        arr = device_checked(
            v, "v", self.dtype,
            lambda s: (len(s) == 1 and s[0] == P) or (len(s) == 2 and s[0] == P and s[1] >= 1),
            f"({P},) or ({P}, k) with k >= 1")
        single = len(tuple(arr.shape)) == 1
        return (arr.reshape(P, 1) if single else arr), single

    def run(self, theta, V, mode, kind="numba"):
        from . import _cuda

        loss, res = _cuda.passes(self.model, theta, self.X, self.labels, self.Y, V, mode, kind)
        if mode == "loss":
            return loss, None, None
        if mode == "grad":
            return loss, res, None
        return loss, None, res


def dense_init(rng: np.random.Generator, scheme: str, n_in: int, n_out: int) -> np.ndarray:
    """An ``(n_in, n_out)`` weight matrix of a dense layer (MLP, Network) drawn from ``rng``:
    ``"xavier"`` (Glorot uniform), ``"he"`` (normal, variance 2 / n_in) or ``"orthogonal"``."""
    if scheme == "xavier":
        lim = np.sqrt(6.0 / (n_in + n_out))
        return rng.uniform(-lim, lim, size=(n_in, n_out))
    if scheme == "he":
        return rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
    big, small = max(n_in, n_out), min(n_in, n_out)
    q, r = np.linalg.qr(rng.standard_normal((big, small)))
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    return q if n_in >= n_out else q.T


def check_class_labels(y: np.ndarray, n_out: int) -> None:
    """Class labels for softmax cross-entropy: an integer dtype, values in ``[0, n_out)``."""
    if y.dtype.kind not in "iu" or y.dtype == np.bool_:
        raise TypeError(
            f"y: cross_entropy needs integer class labels, got dtype {y.dtype}; "
            "convert with y.astype(np.int64) if the values are whole numbers"
        )
    if y.size and (y.min() < 0 or y.max() >= n_out):
        raise ValueError(
            f"y: labels must lie in [0, {n_out}), got values in [{y.min()}, {y.max()}]"
        )


def check_targets(y: object, N: int, n_out: int, loss: str, dtype: np.dtype,
                  as_array=None) -> tuple[np.ndarray, np.ndarray]:
    """The targets of a feed-forward model (MLP, Network) with N samples as the kernels take
    them: ``(labels int64 (N,) or empty, targets (N, n_out) of dtype or empty)``.

    ``as_array(y, "y")`` converts float targets (default: ``as_float_array`` to ``dtype``).
    """
    y = np.asarray(y)
    empty_l = np.empty(0, dtype=np.int64)
    empty_y = np.empty((0, 0), dtype=dtype)
    if loss == "cross_entropy":
        check_class_labels(y, n_out)
        if y.shape != (N,):
            raise ValueError(f"y: expected shape ({N},) (one label per sample), got {y.shape}")
        return np.ascontiguousarray(y, dtype=np.int64), empty_y
    if y.dtype.kind in "biu":
        y = y.astype(dtype)
    y = as_array(y, "y") if as_array is not None else as_float_array(y, "y", dtype=dtype)
    if loss == "mse":
        if y.shape == (N,) and n_out == 1:
            y = y.reshape(N, 1)
        if y.shape != (N, n_out):
            raise ValueError(f"y: expected shape ({N}, {n_out}) for mse, got {y.shape}")
        check_all_finite(y, "y")
        return empty_l, y
    if y.shape == (N,):
        y = y.reshape(N, 1)
    if y.shape != (N, 1):
        raise ValueError(f"y: expected shape ({N},) or ({N}, 1) for logistic, got {y.shape}")
    check_all_finite(y, "y")
    if y.size and (y.min() < 0 or y.max() > 1):
        raise ValueError(
            f"y: logistic labels must lie in [0, 1], got values in [{y.min()}, {y.max()}]"
        )
    return empty_l, y


def check_v(v: object, P: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """``v`` as a ``(P, k)`` array of ``dtype`` (``k >= 1``) and whether it was one vector."""
    v = as_float_array(v, "v", dtype=dtype)
    if v.ndim == 1 and v.shape[0] == P:
        V, single = v.reshape(P, 1), True
    elif v.ndim == 2 and v.shape[0] == P and v.shape[1] >= 1:
        V, single = v, False
    else:
        raise ValueError(f"v: expected shape ({P},) or ({P}, k) with k >= 1, got {v.shape}")
    check_finite(V, "v")
    return V, single


def reject_device_theta(theta: object) -> None:
    """TypeError for a device ``theta`` given to an objective bound to host data."""
    if is_cuda_array(theta):
        raise TypeError(
            "theta: is a device array but the objective is bound to host data; bind device "
            "X and y (bind(model, X_device, y_device)) or pass theta on the host"
        )


class BoundObjective(Objective):
    """A model bound to one batch ``(X, y)``: the :class:`Objective` ``J(theta) = loss(theta, X,
    y)`` (from :func:`bind`).

    ``X`` and ``y`` are validated once, at binding; for fastopt's models they are kept as
    validated (referenced, not copied, when already C-contiguous in the model dtype: do not
    modify them while the objective is in use). Each call validates ``theta`` and ``v``.

    An :class:`~fastopt.MLP` bound to device arrays (numba.cuda, CuPy, torch CUDA; ``X`` and ``y``
    both on the device) is a device objective: ``theta`` and ``v`` must then be device arrays
    too, the passes run on the device, and the gradient and products come back as ``theta``'s
    kind of array (the loss a host float). A host/device mix is a ``TypeError`` saying what to
    move where. See ``docs/gpu.md``.

    Attributes
    ----------
    model : object
        The model.
    num_params : int
    dtype : numpy dtype
    backend : str
        Backend of every call.
    device : bool
        The data are device arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> from fastopt.curvature.objective import bind
    >>> net = MLP([2, 1], activation="identity", loss="mse")
    >>> obj = bind(net, np.array([[1.0, 0.0], [0.0, 2.0]]), np.zeros(2))
    >>> obj.hvp(np.zeros(3), np.array([1.0, 0.0, 0.0]))
    array([0.5, 0. , 0.5])
    """

    def __init__(self, model: object, X: object, y: object, *, backend: str = "auto",
                 copy: bool = False) -> None:
        self._prep = prepare(model, X, y, backend, copy=copy)
        self.model = model
        self.num_params = self._prep.num_params
        self.dtype = self._prep.dtype
        self.backend = backend
        self.device = bool(getattr(self._prep, "device", False))

    def _theta(self, theta):
        """``(checked theta, kind)``: ``kind`` None on the host, else the caller's kind of device
        array (results come back as that kind)."""
        if self.device:
            from .. import _device

            return self._prep.check_theta(theta), _device.kind_of(theta)
        reject_device_theta(theta)
        return self._prep.check_theta(theta), None

    def __repr__(self) -> str:
        return f"BoundObjective({self.model!r}, backend={self.backend!r})"

    def loss(self, theta: np.ndarray) -> float:
        """Batch loss at ``theta``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> from fastopt.curvature import bind
        >>> obj = bind(MLP([1, 1], activation="identity", loss="mse"), np.ones((2, 1)), np.zeros(2))
        >>> obj.loss(np.array([1.0, 1.0]))
        2.0
        """
        th, kind = self._theta(theta)
        if kind is not None:
            return self._prep.run(th, None, "loss", kind)[0]
        return self._prep.run(th, None, "loss")[0]

    def loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(loss, gradient)`` at ``theta``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> from fastopt.curvature import bind
        >>> obj = bind(MLP([1, 1], activation="identity", loss="mse"), np.ones((2, 1)), np.zeros(2))
        >>> obj.loss_and_grad(np.array([1.0, 0.0]))
        (0.5, array([1., 1.]))
        """
        th, kind = self._theta(theta)
        if kind is not None:
            from .. import _device

            loss, g, _ = self._prep.run(th, None, "grad", kind)
            return loss, _device.like(g, kind)
        loss, g, _ = self._prep.run(th, None, "grad")
        return loss, g

    def _product(self, theta, v, mode):
        theta, kind = self._theta(theta)
        if kind is not None:
            from .. import _device

            V, single = self._prep.check_v(v)
            hv = self._prep.run(theta, V, mode, kind)[2]
            return _device.like(hv.reshape(self.num_params) if single else hv, kind)
        V, single = check_v(v, self.num_params, self.dtype)
        hv = self._prep.run(theta, V, mode)[2]
        return hv[:, 0] if single else hv

    def hvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Exact Hessian-vector product(s), ``v`` of shape ``(P,)`` or ``(P, k)``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> from fastopt.curvature import bind
        >>> obj = bind(MLP([1, 1], activation="identity", loss="mse"), np.ones((2, 1)), np.zeros(2))
        >>> obj.hvp(np.zeros(2), np.eye(2))
        array([[1., 1.],
               [1., 1.]])
        """
        return self._product(theta, v, "hvp")

    def gnvp(self, theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Gauss-Newton-vector product(s), ``v`` of shape ``(P,)`` or ``(P, k)``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> from fastopt.curvature import bind
        >>> obj = bind(MLP([1, 1], activation="identity", loss="mse"), np.ones((2, 1)), np.zeros(2))
        >>> obj.gnvp(np.zeros(2), np.array([1.0, 0.0]))
        array([1., 1.])
        """
        return self._product(theta, v, "gnvp")

    def curvature_product(self, theta: np.ndarray, v: np.ndarray,
                          curvature: str = "hessian") -> np.ndarray:
        """:meth:`hvp` for ``curvature="hessian"``, :meth:`gnvp` for ``"ggn"``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> from fastopt.curvature import bind
        >>> obj = bind(MLP([1, 1], activation="identity", loss="mse"), np.ones((2, 1)), np.zeros(2))
        >>> obj.curvature_product(np.zeros(2), np.array([0.0, 1.0]), "ggn")
        array([1., 1.])
        """
        curvature = check_choice(curvature, "curvature", CURVATURES)
        return self._product(theta, v, "hvp" if curvature == "hessian" else "gnvp")


def bind(model: object, X: object, y: object, *, backend: str = "auto") -> BoundObjective:
    """The objective ``theta -> model.loss(theta, X, y)`` (validated once; see
    :class:`BoundObjective`).

    Parameters
    ----------
    model : MLP, Network, ElmanRNN or any model
        Anything with ``num_params``, ``dtype``, ``loss_and_grad(theta, X, y)``,
        ``hvp(theta, X, y, v)`` and ``gnvp(theta, X, y, v)``.
    X, y : array_like or device arrays
        The batch. For an :class:`~fastopt.MLP`, ``X`` and ``y`` may both be device arrays
        (numba.cuda, CuPy, torch CUDA): the objective then computes on the device and takes
        device ``theta`` and ``v`` (see :class:`BoundObjective`).
    backend : {"auto", "cython", "numba", "numpy", "cuda"}
        Backend of every call (models whose methods take no ``backend`` need ``"auto"``; device
        data need ``"auto"`` or ``"cuda"``).

    Returns
    -------
    BoundObjective

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP, hessian_extremes
    >>> from fastopt.curvature.objective import bind
    >>> net = MLP([3, 1], activation="identity", loss="mse")
    >>> obj = bind(net, np.eye(3), np.zeros(3))
    >>> round(obj.loss_and_grad(np.ones(4))[0], 6)      # 0.5 * mean((x.w + b)^2) = 0.5 * 4
    2.0
    >>> hessian_extremes(obj, np.zeros(4)).kind
    'minimum'
    """
    return BoundObjective(model, X, y, backend=backend)
