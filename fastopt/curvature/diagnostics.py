"""Curvature diagnostics built on Hessian-vector products.

- :func:`hvp_fd`: central-difference HVP for any gradient callable (approximate);
- :func:`hessian_operator`: the Hessian as a symmetric ``scipy.sparse.linalg.LinearOperator``;
- :func:`curvature_along_gradient` / :class:`Curvature`: g^T g, g^T H g, the best step along -g;
- :class:`IllConditioningMonitor`: watches g^T H g grow faster than g^T g over training;
- :func:`hessian_extremes` / :class:`HessianExtremes`: both ends of the spectrum (Lanczos),
  minimum / saddle / maximum / flat;
- :func:`hutchinson_trace` / :class:`TraceEstimate`: trace of H from Rademacher probes;
- :func:`spectral_density` / :class:`SpectralDensity`: stochastic Lanczos quadrature.

Device arrays: an :class:`~fastopt.MLP` with ``theta``, ``X`` and ``y`` all device arrays
(numba.cuda, CuPy, torch CUDA), an objective bound to device data, or any objective given a
device ``theta``, runs every curvature product on the device (the data never cross the bus);
the Lanczos and Hutchinson bookkeeping stays on the host and exchanges one ``P``-vector each way
per Lanczos step (``g^T g``, ``g^T H g`` and Hutchinson's ``z^T H z`` are reduced on the device).
Results are what the host path returns: host floats, ints and bools (and host arrays in
:class:`SpectralDensity`). A host/device mix is a ``TypeError`` saying what to move where. See
``docs/gpu.md``.
"""

from __future__ import annotations

import inspect
import math
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .._dispatch import is_cuda_array
from .._validate import (
    as_float_array,
    as_generator,
    check_all_finite,
    check_choice,
    check_float_dtype,
    check_int,
    check_positive,
)
from ..spectral.lanczos import lanczos_extremes, lanczos_tridiagonal, tridiagonal_eigh
from .mlp import MLP
from .objective import (
    BoundObjective,
    check_same_side,
    device_checked,
    prepare,
    reject_device_theta,
)

if TYPE_CHECKING:  # scipy is an optional (test) dependency, imported lazily
    from scipy.sparse.linalg import LinearOperator


CURVATURES = ("hessian", "ggn")


class _Source:
    """A curvature matrix at one point, resolved from the diagnostics' arguments.

    ``products(V)`` applies it to the columns of ``V`` (``(P, k)``, any float dtype, ``k >= 0``)
    and returns ``(P, k)`` in ``dtype``; ``loss_and_grad()`` is the loss and gradient at the
    point (only for models and objectives: an operator has none)."""

    def __init__(self, num_params: int, dtype: np.dtype, products, loss_and_grad=None,
                 name: str = "operator") -> None:
        self.num_params = num_params
        self.dtype = np.dtype(dtype)
        self._products = products
        self._loss_and_grad = loss_and_grad
        self.name = name

    def products(self, V: np.ndarray) -> np.ndarray:
        P = self.num_params
        if V.shape[1] == 0:
            return np.empty((P, 0), self.dtype)
        out = np.asarray(self._products(np.ascontiguousarray(V, dtype=self.dtype)))
        if out.shape != V.shape:
            raise ValueError(f"matvec: returned shape {out.shape}, expected {V.shape}")
        return out

    def matvec64(self, v: np.ndarray) -> np.ndarray:
        """One product in float64 (for Lanczos)."""
        return self.products(v.reshape(-1, 1))[:, 0].astype(np.float64, copy=False)

    def loss_and_grad(self) -> tuple[float, np.ndarray]:
        if self._loss_and_grad is None:
            raise TypeError(
                "model: a matvec or LinearOperator has no loss or gradient; pass a model with "
                "(theta, X, y) or an objective with theta"
            )
        return self._loss_and_grad()


class _DeviceSource(_Source):
    """A curvature source whose products run on the device (theta, X, y device arrays).

    ``products_device(V)`` takes and returns numba device arrays ``(P, k)`` (no bus traffic);
    ``loss_and_grad()`` returns the loss (host float) and the gradient as a numba device array.
    ``products(V)`` on host ``V`` (what the host Lanczos core calls) copies ``V`` to the device
    and the result back: ``P * k`` values each way."""

    device = True

    def __init__(self, num_params: int, dtype: np.dtype, kind: str, products_device,
                 loss_and_grad, name: str) -> None:
        super().__init__(num_params, dtype, self._host_products, loss_and_grad, name)
        self.kind = kind
        self._products_device = products_device

    def products_device(self, V):
        from .. import _device

        V = _device.to_numba(V)
        out = self._products_device(V)
        if tuple(out.shape) != tuple(V.shape):
            raise ValueError(f"matvec: returned shape {tuple(out.shape)}, expected "
                             f"{tuple(V.shape)}")
        return out

    def _host_products(self, V: np.ndarray) -> np.ndarray:
        from .. import _device

        return self.products_device(_device.to_device(V)).copy_to_host()


def _as_numba(result: object, shape: tuple, dtype: np.dtype):
    """A user objective's result as a numba device array of ``shape`` (a host result is copied
    to the device once)."""
    from .. import _device

    if is_cuda_array(result):
        return _device.to_numba(result).reshape(shape)
    return _device.to_device(np.asarray(result, dtype=dtype).reshape(shape))


def _device_model_source(prep: Any, theta: object, mode: str, copy: bool,
                         name: str) -> _DeviceSource:
    from .. import _device

    kind = _device.kind_of(theta)
    theta = prep.check_theta(theta)
    if copy:
        theta = _device.copy(theta)

    def products(V):
        return prep.run(theta, V, mode, kind)[2]

    def loss_and_grad():
        loss, g, _ = prep.run(theta, None, "grad", kind)
        return loss, g

    return _DeviceSource(prep.num_params, prep.dtype, kind, products, loss_and_grad, name)


def _is_model_like(obj: object) -> bool:
    return all(hasattr(obj, a) for a in ("num_params", "dtype", "loss_and_grad", "hvp"))


def _is_objective(obj: object) -> bool:
    """An objective's ``hvp`` takes ``(theta, v)``, a model's ``(theta, X, y, v)``."""
    if isinstance(obj, BoundObjective):
        return True
    if isinstance(obj, MLP) or hasattr(obj, "_prepared"):
        return False
    try:
        params = inspect.signature(obj.hvp).parameters.values()
    except (TypeError, ValueError):
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    return len(required) < 4


def _resolve(model: object, theta: object, X: object, y: object, *, curvature: str = "hessian",
             backend: str = "auto", size: int | None = None, copy: bool = False) -> _Source:
    """The curvature source for ``(model, theta, X, y)``, ``(objective, theta)`` or a symmetric
    operator (``theta`` None): see the module's conventions."""
    curvature = check_choice(curvature, "curvature", CURVATURES)
    mode = "hvp" if curvature == "hessian" else "gnvp"
    if _is_model_like(model):
        if X is None and y is None and _is_objective(model):
            return _objective_source(model, theta, mode, copy)
        if X is None or y is None:
            raise ValueError(
                f"X, y: {type(model).__name__} is a model; pass the batch (model, theta, X, y) or "
                "bind it first (fastopt.curvature.objective.bind(model, X, y))"
            )
        if check_same_side(theta=theta, X=X, y=y):
            prep = prepare(model, X, y, backend, copy=copy)
            return _device_model_source(prep, theta, mode, copy, "model")
        prep = prepare(model, X, y, backend, copy=copy)
        theta = prep.check_theta(theta)
        if copy:
            theta = theta.copy()

        def products(V):
            return prep.run(theta, V, mode)[2]

        def loss_and_grad():
            loss, g, _ = prep.run(theta, None, "grad")
            return loss, g

        return _Source(prep.num_params, prep.dtype, products, loss_and_grad, "model")
    if X is not None or y is not None:
        raise TypeError(
            f"model: expected a model (fastopt.MLP, Network, ElmanRNN or an object with "
            "num_params, dtype, loss_and_grad, hvp and gnvp) when X and y are given, got "
            f"{type(model).__name__}"
        )
    if theta is not None:
        raise TypeError(
            f"model: {type(model).__name__} is not a model or objective (no num_params, dtype, "
            "loss_and_grad and hvp); an operator (matvec or LinearOperator) takes theta=None"
        )
    if curvature != "hessian":
        raise ValueError("curvature: 'ggn' needs a model or an objective; an operator is used as "
                         "given (leave curvature='hessian')")
    return _operator_source(model, size)


def _objective_source(obj: Any, theta: object, mode: str, copy: bool) -> _Source:
    if isinstance(obj, BoundObjective):
        if obj.device:
            return _device_model_source(obj._prep, theta, mode, copy, "objective")
        reject_device_theta(theta)
    elif is_cuda_array(theta):
        return _device_objective_source(obj, theta, mode, copy)
    P = check_int(obj.num_params, "objective.num_params")
    dtype = check_float_dtype(obj.dtype, "objective.dtype")
    theta = as_float_array(theta, "theta", dtype=dtype)
    if theta.shape != (P,):
        raise ValueError(f"theta: expected shape ({P},) for the objective, got {theta.shape}")
    check_all_finite(theta, "theta")
    if copy:
        theta = theta.copy()
    fn = obj.hvp if mode == "hvp" else getattr(obj, "gnvp", None)
    if fn is None:
        raise TypeError(f"objective: {type(obj).__name__} has no gnvp (needed for curvature='ggn')")

    def products(V):
        return np.asarray(fn(theta, V)).reshape(V.shape)

    def loss_and_grad():
        loss, g = obj.loss_and_grad(theta)
        return float(loss), np.asarray(g)

    return _Source(P, dtype, products, loss_and_grad, "objective")


def _device_objective_source(obj: Any, theta: object, mode: str, copy: bool) -> _DeviceSource:
    """A user objective called with a device ``theta``: its methods get device arrays of
    ``theta``'s kind (``v`` included) and may return device or host arrays."""
    from .. import _device

    P = check_int(obj.num_params, "objective.num_params")
    dtype = check_float_dtype(obj.dtype, "objective.dtype")
    kind = _device.kind_of(theta)
    checked = device_checked(theta, "theta", dtype, lambda s: s == (P,), f"({P},)")
    if copy:
        theta = _device.like(_device.copy(checked), kind)
    fn = obj.hvp if mode == "hvp" else getattr(obj, "gnvp", None)
    if fn is None:
        raise TypeError(f"objective: {type(obj).__name__} has no gnvp (needed for curvature='ggn')")

    def products(V):
        return _as_numba(fn(theta, _device.like(V, kind)), tuple(V.shape), dtype)

    def loss_and_grad():
        loss, g = obj.loss_and_grad(theta)
        return float(loss), _as_numba(g, (P,), dtype)

    return _DeviceSource(P, dtype, kind, products, loss_and_grad, "objective")


def _operator_source(op: object, size: int | None) -> _Source:
    if isinstance(op, np.ndarray) or (hasattr(op, "shape") and hasattr(op, "matvec")):
        shape = tuple(op.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"model: a symmetric operator must be square, got shape {shape}")
        if size is not None and check_int(size, "size") != shape[0]:
            raise ValueError(f"size: {size} does not match the operator's shape {shape}")
        P = shape[0]
        if isinstance(op, np.ndarray):
            A = as_float_array(op, "model", allow_int=True)
            return _Source(P, A.dtype, lambda V: A @ V)
        dt = np.dtype(getattr(op, "dtype", None) or np.float64)
        dtype = dt if dt in (np.float32, np.float64) else np.dtype(np.float64)
        matmat = op.matmat
        return _Source(P, dtype, lambda V: np.asarray(matmat(V)))
    if callable(op):
        if size is None:
            raise ValueError("size: required with a matvec callable (the operator's dimension)")
        P = check_int(size, "size")

        def products(V):
            out = np.empty(V.shape, np.float64)
            for j in range(V.shape[1]):
                w = np.asarray(op(V[:, j].astype(np.float64)))
                if w.shape != (P,):
                    raise ValueError(f"matvec: returned shape {w.shape}, expected ({P},)")
                out[:, j] = w
            return out

        return _Source(P, np.dtype(np.float64), products)
    raise TypeError(
        "model: expected a model (with theta, X, y), an objective (with theta), a matvec callable "
        f"(with size=) or a LinearOperator, got {type(op).__name__}"
    )


# ---------------------------------------------------------------------------- finite differences
def hvp_fd(
    grad_fn: Callable[[np.ndarray], np.ndarray] | Any,
    theta: np.ndarray,
    v: np.ndarray,
    *,
    eps: float | None = None,
    X: np.ndarray | None = None,
    y: np.ndarray | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Approximate Hessian-vector product by central differences of a gradient.

    ``(grad(theta + eps v) - grad(theta - eps v)) / (2 eps)``: two gradient calls per
    direction. The error is ``O(eps^2)`` (truncation) plus ``O(u / eps)`` (rounding, ``u`` the
    unit roundoff), so the default step balances the two:
    ``eps = u^(1/3) * max(1, ||theta||_inf) / ||v||_inf``. Use the models' ``hvp`` for exact
    products; this is the independent check.

    Parameters
    ----------
    grad_fn : callable, model or objective
        ``grad_fn(theta) -> gradient`` of the same shape as ``theta``; or a model (its
        ``loss_and_grad(theta, X, y)``, with ``X`` and ``y`` given) or an objective (its
        ``loss_and_grad(theta)``).
    theta : array_like, shape (P,)
        Point (float32 or float64); not modified.
    v : array_like, shape (P,) or (P, k)
        Direction(s); k directions cost 2k gradient calls.
    eps : float, optional
        Step (> 0); see above for the default.
    X, y : array_like, optional
        The batch, when ``grad_fn`` is a model.
    backend : str
        Passed to the model's ``loss_and_grad`` (models only).

    Returns
    -------
    ndarray
        Approximation of ``H v``, shape of ``v``, dtype of ``theta``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import hvp_fd
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> np.round(hvp_fd(lambda t: A @ t + t**3, np.zeros(2), np.array([1.0, 0.0])), 8)
    array([2., 1.])
    """
    for name, arr in (("theta", theta), ("v", v), ("X", X), ("y", y)):
        if is_cuda_array(arr):
            raise TypeError(f"{name}: hvp_fd (the independent host check) takes host arrays, got "
                            "a device array; copy it to the host, or use the model's exact hvp "
                            "on device arrays")
    if _is_model_like(grad_fn):
        if X is None and y is None and _is_objective(grad_fn):
            obj = grad_fn

            def grad_fn(t):
                return obj.loss_and_grad(t)[1]
        else:
            prep = prepare(grad_fn, X, y, backend)

            def grad_fn(t):
                return prep.run(prep.check_theta(t), None, "grad")[1]
    elif X is not None or y is not None:
        raise TypeError(f"grad_fn: X and y need a model, got {type(grad_fn).__name__}")
    if not callable(grad_fn):
        raise TypeError(f"grad_fn: must be callable, got {type(grad_fn).__name__}")
    theta = as_float_array(theta, "theta")
    if theta.ndim != 1 or theta.size == 0:
        raise ValueError(f"theta: expected a non-empty 1-D array, got shape {theta.shape}")
    check_all_finite(theta, "theta")
    v = as_float_array(v, "v", allow_int=True)
    single = v.ndim == 1
    V = v.reshape(-1, 1) if single else v
    if V.ndim != 2 or V.shape[0] != theta.size or V.shape[1] == 0:
        raise ValueError(f"v: expected shape ({theta.size},) or ({theta.size}, k), got {v.shape}")
    check_all_finite(V, "v")
    h_given = None if eps is None else check_positive(eps, "eps")  # checked once, up front
    u = np.finfo(theta.dtype).eps
    out = np.zeros(V.shape, dtype=theta.dtype)
    for j in range(V.shape[1]):
        vj = V[:, j].astype(np.float64)
        vmax = float(np.abs(vj).max())
        if vmax == 0:
            continue
        if eps is None:
            h = u ** (1 / 3) * max(1.0, float(np.abs(theta).max())) / vmax
        else:
            h = h_given
        tp = (theta + h * vj).astype(theta.dtype)
        tm = (theta - h * vj).astype(theta.dtype)
        gp = np.asarray(grad_fn(tp), dtype=np.float64)
        gm = np.asarray(grad_fn(tm), dtype=np.float64)
        if gp.shape != theta.shape or gm.shape != theta.shape:
            raise ValueError(
                f"grad_fn: returned shape {gp.shape}, expected the shape of theta {theta.shape}"
            )
        out[:, j] = (gp - gm) / (2 * h)
    return out[:, 0] if single else out


# ---------------------------------------------------------------------------- LinearOperator
def hessian_operator(model: Any, theta: np.ndarray | None = None, X: np.ndarray | None = None,
                     y: np.ndarray | None = None, *, curvature: str = "hessian",
                     backend: str = "auto", size: int | None = None) -> LinearOperator:
    """The curvature matrix at ``theta`` as a symmetric scipy ``LinearOperator``.

    ``matvec`` and ``matmat`` run the model's ``hvp`` (``gnvp`` for ``curvature="ggn"``;
    ``matmat`` passes all columns in one batched call, and zero columns give an empty ``(P, 0)``
    array); ``rmatvec`` equals ``matvec`` (the matrix is symmetric). A complex vector ``v`` gets
    the exact ``H Re(v) + i H Im(v)`` (both parts in one batched call). Works with
    ``scipy.sparse.linalg``'s ``eigsh``, ``cg`` and ``minres``. Inputs are validated once and
    copied, so later changes to the caller's arrays do not affect the operator. Needs scipy.
    With device ``theta``, ``X``, ``y`` the copies stay on the device and each product runs
    there; the operator itself (like all of scipy) takes and returns host vectors, so each
    ``matmat`` on ``k`` columns moves ``P * k`` values each way.

    Parameters
    ----------
    model : model, objective, or symmetric operator
        ``(model, theta, X, y)`` for a model (MLP, Network, ElmanRNN or any object with the model
        methods), ``(objective, theta)`` for an :class:`~fastopt.curvature.objective.Objective`;
        a matvec callable (with ``size=``), a ``LinearOperator`` or a square array is wrapped as
        given (``theta`` None).
    curvature : {"hessian", "ggn"}
        The Hessian or the generalized Gauss-Newton matrix (models and objectives).
    backend : str
        Kernel backend of the model's products (models only).
    size : int, optional
        Dimension of a matvec callable.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.sparse.linalg import eigsh
    >>> from fastopt import MLP, hessian_operator
    >>> net = MLP([2, 1], activation="identity", loss="mse")
    >>> X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> H = hessian_operator(net, np.zeros(3), X, np.zeros(3))
    >>> H.shape
    (3, 3)
    >>> float(np.round(eigsh(H, k=1, which="LA")[0][0], 6))   # = eigvalsh([X 1]^T [X 1] / 3)[-1]
    2.616952
    >>> H @ np.array([1j, 0, 0])                               # complex in, exact complex out
    array([0.+0.66666667j, 0.+0.33333333j, 0.+0.66666667j])
    """
    try:
        from scipy.sparse.linalg import LinearOperator
    except ImportError as exc:  # pragma: no cover - scipy is a test extra
        raise ImportError("hessian_operator needs scipy: pip install scipy") from exc
    src = _resolve(model, theta, X, y, curvature=curvature, backend=backend, size=size, copy=True)
    P = src.num_params

    def matmat(V):
        V = np.asarray(V)
        V2 = V.reshape(P, -1)
        if np.iscomplexobj(V2):
            k = V2.shape[1]
            HV = src.products(np.concatenate([V2.real, V2.imag], axis=1))
            out = HV[:, :k] + 1j * HV[:, k:]
        else:
            out = src.products(V2)
        return out.reshape(V.shape)

    def matvec(v):
        return matmat(np.asarray(v).reshape(P))

    return LinearOperator((P, P), matvec=matvec, rmatvec=matvec, matmat=matmat, rmatmat=matmat,
                          dtype=src.dtype)


# ---------------------------------------------------------------------------- along the gradient
class Curvature(NamedTuple):
    """Loss and curvature along the gradient (from :func:`curvature_along_gradient`).

    Attributes
    ----------
    loss : float
        Loss at theta.
    g_dot_g : float
        ``g^T g``.
    g_h_g : float
        ``g^T H g`` (``g^T G g`` for the Gauss-Newton curvature).
    best_step : float
        ``g^T g / g^T H g`` when ``g^T H g > 0`` (minimizer of the quadratic model along -g),
        ``inf`` otherwise.

    The method :meth:`predicted_change` gives the second-order model of the loss change.
    """

    loss: float
    g_dot_g: float
    g_h_g: float
    best_step: float

    def predicted_change(self, eps: float | np.ndarray) -> float | np.ndarray:
        """``J(theta - eps g) - J(theta) ≈ -eps g^T g + 0.5 eps^2 g^T H g``."""
        eps = np.asarray(eps, dtype=np.float64) if not np.isscalar(eps) else float(eps)
        return -eps * self.g_dot_g + 0.5 * eps * eps * self.g_h_g


def curvature_along_gradient(model: Any, theta: np.ndarray, X: np.ndarray | None = None,
                             y: np.ndarray | None = None, *, curvature: str = "hessian",
                             backend: str = "auto") -> Curvature:
    """``g^T g``, ``g^T H g`` and the best step along the negative gradient.

    One gradient pass and one exact HVP (GNVP for ``curvature="ggn"``) with ``v = g``. ``g^T g``
    and ``g^T H g`` are reduced in float64. Takes ``(model, theta, X, y)`` or
    ``(objective, theta)`` (see :func:`hessian_operator`); an operator has no gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP, curvature_along_gradient
    >>> net = MLP([1, 1], activation="identity", loss="mse")
    >>> X = np.array([[1.0], [2.0]]); y = np.array([1.0, 2.0])
    >>> c = curvature_along_gradient(net, np.array([2.0, 0.0]), X, y)
    >>> c.g_dot_g, c.g_h_g          # g = (2.5, 1.5), H = [[2.5, 1.5], [1.5, 1]]
    (8.5, 29.125)
    >>> round(c.best_step, 6), round(c.predicted_change(c.best_step), 6)
    (0.291845, -1.240343)
    """
    if theta is None:
        raise TypeError("theta: curvature_along_gradient needs a model or an objective and theta")
    src = _resolve(model, theta, X, y, curvature=curvature, backend=backend)
    loss, g = src.loss_and_grad()
    if getattr(src, "device", False):
        # g and H g stay on the device; the two float64 dots come back (16 bytes)
        from ._device import column_dots

        G = g.reshape(src.num_params, 1)
        gg = float(column_dots(G, G)[0])
        ghg = float(column_dots(G, src.products_device(G))[0])
        return Curvature(float(loss), gg, ghg, gg / ghg if ghg > 0 else math.inf)
    hg = src.products(np.asarray(g).reshape(-1, 1))[:, 0]
    g64 = np.asarray(g, dtype=np.float64)
    gg = float(g64 @ g64)
    ghg = float(g64 @ hg.astype(np.float64))
    best = gg / ghg if ghg > 0 else math.inf
    return Curvature(float(loss), gg, ghg, best)


def _real_field(curvature: Any, field: str) -> float:
    try:
        value = getattr(curvature, field)
    except AttributeError:
        raise TypeError(
            "curvature: expected a Curvature (with g_dot_g and g_h_g), got "
            f"{type(curvature).__name__}"
        ) from None
    if isinstance(value, (str, bytes)) or np.iscomplexobj(value):
        raise TypeError(f"curvature.{field}: expected a real number, got "
                        f"{type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"curvature.{field}: expected a real number, got "
                        f"{type(value).__name__} {value!r}") from None


class IllConditioningMonitor:
    """Tracks ``g^T g`` and ``g^T H g`` over training and flags ill-conditioning.

    Training is flagged ill-conditioned when, over the last ``window`` records, ``g^T H g`` has
    grown at least ``growth``-fold (default 10x; the first record of the window must have
    ``g^T H g > 0``) while ``g^T g`` has not shrunk (last >= first).

    Updates are atomic: a record is validated completely before it is stored in one step under
    a lock, so concurrent threads, a rejected value or an interrupt never leave a partial
    record; the properties read one consistent snapshot.

    Parameters
    ----------
    window : int
        Number of most recent records compared (>= 2).
    growth : float
        Growth factor of ``g^T H g`` that counts as ill-conditioning (> 1).

    Examples
    --------
    >>> from fastopt import Curvature, IllConditioningMonitor
    >>> mon = IllConditioningMonitor(window=3)
    >>> for step, (gg, ghg) in enumerate([(1.0, 1.0), (1.1, 4.0), (1.2, 12.0)]):
    ...     mon.update(step, Curvature(0.0, gg, ghg, gg / ghg))
    >>> mon.ill_conditioned, round(mon.suggested_lr, 4)
    (True, 0.1)
    """

    def __init__(self, window: int = 10, *, growth: float = 10.0) -> None:
        self.window = check_int(window, "window", minimum=2)
        self.growth = check_positive(growth, "growth")
        if self.growth <= 1:
            raise ValueError(f"growth: must be > 1, got {growth}")
        self._records: list[tuple[int, float, float]] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def update(self, step: int, curvature: Curvature | Any) -> None:
        """Record one measurement (anything with real ``g_dot_g`` and ``g_h_g`` attributes).

        Raises ``TypeError`` naming the field for a missing or non-numeric value and
        ``ValueError`` for a non-finite one; a rejected record changes nothing.
        """
        step = check_int(step, "step", minimum=0)
        gg = _real_field(curvature, "g_dot_g")
        ghg = _real_field(curvature, "g_h_g")
        if not (np.isfinite(gg) and np.isfinite(ghg)):
            raise ValueError(f"curvature: g_dot_g and g_h_g must be finite, got {gg}, {ghg}")
        record = (step, gg, ghg)
        with self._lock:
            self._records.append(record)

    def _snapshot(self) -> list[tuple[int, float, float]]:
        with self._lock:
            return list(self._records)

    @property
    def ill_conditioned(self) -> bool:
        """True when g^T H g grew ``growth``-fold over the window while g^T g did not shrink."""
        recent = self._snapshot()[-self.window:]
        if len(recent) < 2:
            return False
        _, gg0, ghg0 = recent[0]
        _, gg1, ghg1 = recent[-1]
        return ghg0 > 0 and ghg1 >= self.growth * ghg0 and gg1 >= gg0

    @property
    def suggested_lr(self) -> float | None:
        """``g^T g / g^T H g`` at the latest record: half the bound ``2 g^T g / g^T H g`` above
        which the second-order term cancels the first-order decrease (the exact minimizer of the
        quadratic model). ``inf`` when ``g^T H g <= 0``, ``None`` before any record."""
        records = self._snapshot()
        if not records:
            return None
        _, gg, ghg = records[-1]
        return gg / ghg if ghg > 0 else math.inf

    @property
    def history(self) -> dict[str, np.ndarray]:
        """All records as arrays ``{"step", "g_dot_g", "g_h_g"}`` (for plotting)."""
        arr = np.array(self._snapshot(), dtype=np.float64).reshape(-1, 3)
        return {"step": arr[:, 0].astype(np.int64), "g_dot_g": arr[:, 1], "g_h_g": arr[:, 2]}


# ---------------------------------------------------------------------------- spectrum
class HessianExtremes(NamedTuple):
    """Extreme curvature eigenvalues (from :func:`hessian_extremes`).

    Attributes
    ----------
    lambda_max, lambda_min : float
        Largest and smallest eigenvalue estimates (Ritz values).
    kind : str
        ``"minimum"``, ``"saddle"``, ``"maximum"`` or ``"flat"`` (see :func:`hessian_extremes`).
    iterations : int
        Operator applications of the Lanczos iteration.
    converged : bool
        Lanczos reached ``tol`` and the residuals below, recomputed with the operator itself,
        are within ``max(tol, 1000 eps) * max(|lambda|)`` (``eps`` of the model dtype).
    residual_max, residual_min : float
        ``||H y - lambda y||`` of the unit Ritz vector of each end, from one more (batched)
        product with the operator; an eigenvalue is within this distance of the spectrum.
    """

    lambda_max: float
    lambda_min: float
    kind: str
    iterations: int
    converged: bool
    residual_max: float
    residual_min: float


def _classify(lmax: float, lmin: float, rtol: float, atol: float) -> str:
    scale = max(abs(lmax), abs(lmin))
    if scale <= atol:
        return "flat"
    pos = lmax > rtol * scale
    neg = lmin < -rtol * scale
    if pos and neg:
        return "saddle"
    if neg:
        return "maximum"
    if pos:
        return "minimum"
    return "flat"


def hessian_extremes(model: Any, theta: np.ndarray | None = None, X: np.ndarray | None = None,
                     y: np.ndarray | None = None, *, tol: float = 1e-6,
                     rtol: float | None = None, atol: float = 0.0, maxiter: int | None = None,
                     seed: int = 0, curvature: str = "hessian", backend: str = "auto",
                     size: int | None = None) -> HessianExtremes:
    """Largest and smallest curvature eigenvalues by Lanczos on exact products; classify.

    Runs :func:`fastopt.lanczos_extremes` (full reorthogonalization, float64 basis) on the
    model's ``hvp`` (``gnvp`` for ``curvature="ggn"``), an objective's, or a given symmetric
    operator (``hessian_extremes(matvec, size=P)``, a ``LinearOperator`` or a square array; see
    :func:`hessian_operator`). Each eigenvalue is accurate to about ``tol * max|lambda|`` when
    ``converged``; the result carries the flag and the residuals of both ends, recomputed with
    the operator (non-convergence also warns, ``RuntimeWarning``).

    Classification, with ``s = max(|lambda_max|, |lambda_min|)``:

    - ``"flat"`` if ``s <= atol`` (default 0: an exactly zero Hessian);
    - ``"saddle"`` if ``lambda_max > rtol * s`` and ``lambda_min < -rtol * s``;
    - ``"minimum"`` if only ``lambda_max > rtol * s`` (positive semidefinite to the tolerance);
    - ``"maximum"`` if only ``lambda_min < -rtol * s``.

    The default ``rtol`` is ``max(10 * tol, 1000 * eps)`` with ``eps`` the machine epsilon of
    the model dtype (1e-5 in float64 at the default tol; 1.2e-4 in float32, whose HVPs carry
    rounding errors of about 1e-6 relative): eigenvalues smaller than that fraction of the
    spectral radius are treated as zero.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP, hessian_extremes
    >>> net = MLP([1, 1, 1], activation="identity", loss="mse")  # y = w2 * w1 * x (+ biases)
    >>> X = np.linspace(-1, 1, 9).reshape(-1, 1)
    >>> res = hessian_extremes(net, np.zeros(net.num_params), X, X[:, 0])
    >>> res.kind, res.converged
    ('saddle', True)
    >>> A = np.diag([3.0, -1.0, 2.0])                  # any symmetric operator, as a matvec
    >>> ext = hessian_extremes(lambda v: A @ v, size=3)
    >>> round(ext.lambda_max, 9), round(ext.lambda_min, 9), ext.kind
    (3.0, -1.0, 'saddle')
    """
    src = _resolve(model, theta, X, y, curvature=curvature, backend=backend, size=size)
    tol = check_positive(tol, "tol")
    atol = check_positive(atol, "atol", allow_zero=True)
    eps = float(np.finfo(src.dtype).eps)
    if rtol is None:
        rtol = max(10 * tol, 1000 * eps)
    rtol = check_positive(rtol, "rtol")
    P = src.num_params

    res = lanczos_extremes(src.matvec64, P, k=1, which="both", tol=tol, maxiter=maxiter,
                           dtype=np.float64, seed=as_generator(seed, "seed"))
    lmax, lmin = float(res.largest[0]), float(res.smallest[0])
    Y = np.concatenate([res.largest_vectors, res.smallest_vectors], axis=1)
    HY = src.products(Y).astype(np.float64)
    r = np.linalg.norm(HY - Y * np.array([lmax, lmin]), axis=0)
    scale = max(abs(lmax), abs(lmin))
    converged = bool(res.converged and r.max() <= max(tol, 1000 * eps) * scale)
    if not converged:
        warnings.warn(
            f"hessian_extremes: Lanczos did not reach tol={tol} in {res.iterations} products "
            f"(residuals {r[0]:.2e}, {r[1]:.2e}); the eigenvalues and the kind are estimates "
            "(result.converged is False)",
            RuntimeWarning,
            stacklevel=2,
        )
    return HessianExtremes(lmax, lmin, _classify(lmax, lmin, rtol, atol), res.iterations,
                           converged, float(r[0]), float(r[1]))


class TraceEstimate(NamedTuple):
    """Trace of the curvature matrix: ``estimate``, its ``std_error``, the number of
    ``samples`` (probes or unit vectors) and whether it is ``exact`` (then ``std_error`` is 0)."""

    estimate: float
    std_error: float
    samples: int
    exact: bool = False


def hutchinson_trace(model: Any, theta: np.ndarray | None = None, X: np.ndarray | None = None,
                     y: np.ndarray | None = None, *, samples: int = 64, batch: int = 16,
                     seed: int = 0, exact: bool | None = False, curvature: str = "hessian",
                     backend: str = "auto", size: int | None = None) -> TraceEstimate:
    """Hutchinson's estimate of the trace, ``E[z^T H z]`` over Rademacher ``z``, or the exact one.

    Probes run ``batch`` at a time through the batched products. ``std_error`` is the sample
    standard deviation of ``z^T H z`` over ``sqrt(samples)`` (0 for one sample). Deterministic
    for a given ``seed``. ``exact=True`` sums ``e_i^T H e_i`` over all ``P`` unit vectors
    (``P`` products, ``batch`` at a time: cheap for small models); ``exact=None`` chooses it
    when ``P <= samples`` (then it costs no more products than the estimate). Takes the same
    sources as :func:`hessian_operator`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP, hutchinson_trace
    >>> net = MLP([3, 1], activation="identity", loss="mse")
    >>> X = np.eye(3)               # exact trace: tr([X 1]^T [X 1] / 3) = (3 + 3) / 3 = 2
    >>> est = hutchinson_trace(net, np.zeros(4), X, np.zeros(3), samples=400)
    >>> abs(est.estimate - 2.0) < 4 * est.std_error
    True
    >>> hutchinson_trace(net, np.zeros(4), X, np.zeros(3), exact=True)
    TraceEstimate(estimate=2.0, std_error=0.0, samples=4, exact=True)
    """
    src = _resolve(model, theta, X, y, curvature=curvature, backend=backend, size=size)
    samples = check_int(samples, "samples", minimum=1)
    batch = check_int(batch, "batch", minimum=1)
    if exact is not None and not isinstance(exact, (bool, np.bool_)):
        raise TypeError(f"exact: must be True, False or None, got {exact!r}")
    rng = as_generator(seed, "seed")
    P = src.num_params
    device = getattr(src, "device", False)
    if device:
        # probes go to the device (P * batch values), the k column dots z_j^T H z_j come back
        from .. import _device
        from ._device import column_dots

        def quadratic_forms(Z):
            Zd = _device.to_device(Z)
            return column_dots(Zd, src.products_device(Zd))
    if exact or (exact is None and P <= samples):
        total = 0.0
        for i0 in range(0, P, batch):
            i1 = min(P, i0 + batch)
            E = np.zeros((P, i1 - i0), src.dtype)
            E[np.arange(i0, i1), np.arange(i1 - i0)] = 1
            if device:
                total += float(quadratic_forms(E).sum())
                continue
            HE = src.products(E)
            total += float(HE[np.arange(i0, i1), np.arange(i1 - i0)].astype(np.float64).sum())
        return TraceEstimate(total, 0.0, P, True)
    vals = []
    done = 0
    while done < samples:
        m = min(batch, samples - done)
        Z = rng.choice(np.array([-1.0, 1.0]), size=(P, m)).astype(src.dtype)
        if device:
            vals.append(quadratic_forms(Z))
        else:
            HZ = src.products(Z)
            vals.append(np.einsum("pj,pj->j", Z.astype(np.float64), HZ.astype(np.float64)))
        done += m
    v = np.concatenate(vals)
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
    return TraceEstimate(float(v.mean()), se, int(v.size), False)


class SpectralDensity(NamedTuple):
    """Stochastic Lanczos quadrature of the Hessian spectrum (from :func:`spectral_density`).

    Attributes
    ----------
    grid : ndarray (n_grid,)
        Eigenvalue axis.
    density : ndarray (n_grid,)
        Gaussian-smoothed spectral density on ``grid`` (integrates to about 1).
    nodes : ndarray (n_vectors, steps)
        Ritz values of each probe's Lanczos tridiagonal matrix.
    weights : ndarray (n_vectors, steps)
        Quadrature weights (squared first components of the Ritz vectors; each row sums to 1).
    sigma : float
        Width of the Gaussian kernel.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float


def spectral_density(model: Any, theta: np.ndarray | None = None, X: np.ndarray | None = None,
                     y: np.ndarray | None = None, *, n_vectors: int = 4, steps: int = 60,
                     n_grid: int = 256, sigma: float | None = None, seed: int = 0,
                     curvature: str = "hessian", backend: str = "auto",
                     size: int | None = None) -> SpectralDensity:
    """Eigenvalue density by stochastic Lanczos quadrature (as in PyHessian).

    For each of ``n_vectors`` random unit probes, ``steps`` Lanczos iterations (full
    reorthogonalization; fewer when the Krylov space is invariant) give a Gauss quadrature
    ``(nodes, weights)`` of the probe's spectral measure; the density is the average of these
    measures smoothed by a Gaussian of width ``sigma`` on a grid spanning the nodes ± 3 sigma.
    The default ``sigma`` is 1% of the spectral range (of the largest ``|node|`` when all nodes
    coincide, and 0.01 when they are all 0, as for a zero Hessian); a ``sigma`` so small that
    the kernel's peak ``1 / (sigma sqrt(2 pi))`` overflows is refused. With
    ``steps >= num_params`` the quadrature reproduces ``z^T H^p z`` exactly for every moment p.
    Takes the same sources as :func:`hessian_operator`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP, spectral_density
    >>> net = MLP([3, 1], activation="identity", loss="mse")
    >>> sd = spectral_density(net, np.zeros(4), np.eye(3), np.zeros(3), n_vectors=2, steps=4)
    >>> sd.density.shape, bool(np.allclose(sd.weights.sum(axis=1), 1.0))
    ((256,), True)
    """
    src = _resolve(model, theta, X, y, curvature=curvature, backend=backend, size=size)
    n_vectors = check_int(n_vectors, "n_vectors", minimum=1)
    steps = check_int(steps, "steps", minimum=1)
    n_grid = check_int(n_grid, "n_grid", minimum=2)
    if sigma is not None:
        sigma = check_positive(sigma, "sigma")
        if not np.isfinite(1.0 / (sigma * math.sqrt(2 * math.pi))):
            raise ValueError(f"sigma: {sigma} is too small (the kernel's peak overflows float64)")
    P = src.num_params
    m = min(steps, P)
    rng = as_generator(seed, "seed")
    nodes = np.zeros((n_vectors, m))
    weights = np.zeros((n_vectors, m))
    for i in range(n_vectors):
        alpha, beta = lanczos_tridiagonal(src.matvec64, rng.standard_normal(P), m)
        ev, S = tridiagonal_eigh(alpha, beta)
        nodes[i, : ev.size] = ev
        weights[i, : ev.size] = S[0] ** 2
    used = weights > 0
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    if sigma is None:
        spread = max(hi - lo, abs(hi), abs(lo))
        sigma = 0.01 * spread if spread > 0 else 0.01
        # a spectrum at ~1e-308 would give a subnormal width and an infinite peak
        sigma = max(sigma, 1e-300)
    grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, n_grid)
    diff = grid[:, None] - nodes[used][None, :]
    kern = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    density = kern @ weights[used] / n_vectors
    return SpectralDensity(grid, density, nodes, weights, sigma)
