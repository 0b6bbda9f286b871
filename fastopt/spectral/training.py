"""Spectral-norm state for training (torch's ``spectral_norm`` semantics) and the
vanishing/exploding-gradient regime of a recurrent matrix (Pascanu et al., 2013)."""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np

from .. import _dispatch
from .._validate import (
    as_float_array,
    as_generator,
    check_all_finite,
    check_choice,
    check_dtype_arg,
    check_int,
    check_real,
    check_shape,
    reject_masked,
)
from .api import spectral_norm

__all__ = ["GradientFlow", "SpectralNormState", "gradient_flow"]

#: Bound of the activation's derivative (gamma in Pascanu et al.).
ACTIVATION_GAMMA = {"linear": 1.0, "tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}
#: gamma * rate within this relative band of 1 counts as "stable".
STABLE_BAND = 1e-2
#: Directions propagated by gradient_flow (exact norms when n <= this).
FLOW_BLOCK = 32


class SpectralNormState:
    """Persistent power-iteration state for spectral normalization (torch ``spectral_norm``).

    The weight is viewed as a matrix ``(shape[0], prod(shape[1:]))``. Each :meth:`sigma` call runs
    ``n_power_iterations`` steps ``v = normalize(W^T u)``, ``u = normalize(W v)`` (``normalize(x) =
    x / max(||x||, eps)``), updates ``u`` and ``v`` **in place** and returns ``u . (W v)``.
    Because the vectors persist, one iteration per training step is enough when ``W`` moves
    slowly (warm start); the estimate is a lower bound of sigma_1 that converges to it.

    Updates are atomic: a :meth:`sigma` call computes into temporaries and commits ``u`` and
    ``v`` together (one copy into the buffer both view, under a lock), so calls from several
    threads are serialized whole and a ``KeyboardInterrupt`` leaves the state as it was before
    the call or as after it, never half-updated.

    Parameters
    ----------
    shape : tuple of int
        Shape of the weight (at least 1-D, every dimension >= 1).
    dtype : {np.float32, np.float64}
        dtype of the weights and of ``u``, ``v``.
    n_power_iterations : int
        Power iterations per :meth:`sigma` call (>= 1).
    eps : float
        Lower bound of the norms in the normalization (> 0).
    seed : int or numpy.random.Generator, optional
        Seed of the initial ``u`` and ``v`` (standard normal, normalized).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import SpectralNormState
    >>> W = np.diag([3.0, 1.0, 0.5]).astype(np.float32)
    >>> state = SpectralNormState(W.shape, seed=0, n_power_iterations=20)
    >>> round(state.sigma(W), 5)
    3.0
    >>> round(float(np.linalg.norm(state.normalize(W), 2)), 5)
    1.0
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        dtype: type | np.dtype = np.float32,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
        seed: object = None,
    ) -> None:
        shape = check_shape(shape, "shape", min_ndim=1)
        dtype = check_dtype_arg(dtype)
        n_power_iterations = check_int(n_power_iterations, "n_power_iterations", minimum=1)
        eps = check_real(eps, "eps", positive=True)
        rng = as_generator(seed, "seed")
        self.shape = shape
        self.dtype = dtype
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        rows = shape[0]
        cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        u = rng.standard_normal(rows)
        v = rng.standard_normal(cols)
        self._lock = threading.Lock()
        # u and v are views of one buffer: a commit is one copy, which no signal can split
        self._uv = np.empty(rows + cols, dtype=dtype)
        self._u = self._uv[:rows]
        self._v = self._uv[rows:]
        self._u[...] = (u / max(np.linalg.norm(u), self.eps)).astype(dtype)
        self._v[...] = (v / max(np.linalg.norm(v), self.eps)).astype(dtype)

    @property
    def u(self) -> np.ndarray:
        """Left vector, shape ``(shape[0],)`` (updated in place by :meth:`sigma`)."""
        return self._u

    @u.setter
    def u(self, value: object) -> None:
        self._set("u", self._u, value)

    @property
    def v(self) -> np.ndarray:
        """Right vector, shape ``(prod(shape[1:]),)`` (updated in place by :meth:`sigma`)."""
        return self._v

    @v.setter
    def v(self, value: object) -> None:
        self._set("v", self._v, value)

    def _set(self, name: str, view: np.ndarray, value: object) -> None:
        reject_masked(value, name)
        arr = as_float_array(value, name, allow_int=True)
        if arr.shape != view.shape:
            raise ValueError(f"{name}: expected shape {view.shape}, got {arr.shape}")
        check_all_finite(arr, name)
        with self._lock:
            view[...] = arr

    def _matrix(self, W: object) -> np.ndarray:
        reject_masked(W, "W")
        arr = as_float_array(W, "W")
        if arr.shape != self.shape:
            raise ValueError(f"W: expected shape {self.shape}, got {arr.shape}")
        if arr.dtype != self.dtype:
            raise ValueError(f"W: dtype {arr.dtype} does not match the state's {self.dtype}")
        check_all_finite(arr, "W")
        return arr.reshape(self.shape[0], -1)

    def sigma(self, W: object) -> float:
        """Update ``u``, ``v`` in place by power iteration on ``W`` and return sigma_1's estimate.

        Parameters
        ----------
        W : array_like
            The weight, of the state's shape and dtype.

        Returns
        -------
        float
            ``u . (W v)`` after the update.
        """
        if _dispatch.is_cuda_array(W):
            return self._sigma_device(W)
        Wm = self._matrix(W)
        with self._lock:
            u = self._u.copy()
            v = self._v.copy()
            for _ in range(self.n_power_iterations):
                nv = Wm.T @ u
                v = (nv / max(float(np.linalg.norm(nv)), self.eps)).astype(self.dtype)
                nu = Wm @ v
                u = (nu / max(float(np.linalg.norm(nu)), self.eps)).astype(self.dtype)
            sigma = float(np.dot(u.astype(np.float64), (Wm @ v).astype(np.float64)))
            self._uv[...] = np.concatenate([u, v])  # the commit: one copy
        return sigma

    def normalize(self, W: object) -> np.ndarray:
        """``W / sigma(W)`` (a new array; updates the state like :meth:`sigma`)."""
        s = self.sigma(W)  # validates W
        if _dispatch.is_cuda_array(W):  # a new device array of W's kind
            from .. import _device

            kern = _dispatch.load("spectral", "cuda")
            flat = _device.to_numba(W).reshape(-1)
            out = kern.scale_flat(flat, 1.0 / s if s != 0 else 1.0)
            return _device.like(out.reshape(*self.shape), _device.kind_of(W))
        arr = np.asarray(W)
        return (arr / arr.dtype.type(s)) if s != 0 else arr.copy()

    def _sigma_device(self, W: object) -> float:
        """:meth:`sigma` for a device array: the matrix-vector products run on the device
        (fastopt.spectral._cuda), u and v stay host vectors (one of each crosses the bus per
        power iteration)."""
        from .. import _device
        from .._validate import as_device_array

        kern = _dispatch.load("spectral", "cuda")  # a clear error without numba-cuda
        arr = as_device_array(_device.to_numba(W), "W")
        if tuple(arr.shape) != self.shape:
            raise ValueError(f"W: expected shape {self.shape}, got {tuple(arr.shape)}")
        if np.dtype(arr.dtype) != self.dtype:
            raise ValueError(f"W: dtype {arr.dtype} does not match the state's {self.dtype}")
        Wm = arr.reshape(self.shape[0], -1)
        if kern.absmax(Wm.reshape(1, *Wm.shape))[1]:
            raise ValueError("W: contains NaN or Inf")
        with self._lock:
            u, v, sigma = kern.power_step(Wm, self._u.copy(), self._v.copy(),
                                          self.n_power_iterations, self.eps)
            self._uv[...] = np.concatenate([u, v])
        return sigma

    def __repr__(self) -> str:
        return (
            f"SpectralNormState(shape={self.shape}, dtype={self.dtype.name}, "
            f"n_power_iterations={self.n_power_iterations}, eps={self.eps})"
        )


class GradientFlow(NamedTuple):
    """Result of :func:`gradient_flow`.

    Attributes
    ----------
    norms : ndarray, shape (steps,)
        ``||W^t||_2`` for ``t = 1..steps`` (float64; see :func:`gradient_flow` for accuracy).
    rate : float
        Asymptotic growth rate per step (tends to the spectral radius).
    regime : str
        ``"vanishing"``, ``"exploding"`` or ``"stable"``.
    """

    norms: np.ndarray
    rate: float
    regime: str


def gradient_flow(W: object, *, steps: int = 100, activation: str = "tanh") -> GradientFlow:
    """Norms of the powers of a recurrent matrix and its vanishing/exploding-gradient regime.

    Backpropagation through ``t`` steps multiplies the gradient by ``W^T`` and activation
    derivatives bounded by ``gamma`` (linear, tanh, relu: 1; sigmoid: 1/4), so it is bounded by
    ``(gamma ||W||)^t`` (Pascanu et al., 2013): ``sigma_1(W) < 1/gamma`` is sufficient for
    vanishing gradients and ``sigma_1(W) > 1/gamma`` is necessary for exploding ones. Where the
    bound does not decide, the growth rate of ``||W^t||`` does: ``gamma * rate`` above
    ``1 + 0.01`` is "exploding", below ``1 - 0.01`` "vanishing", else "stable".

    ``W^t`` is never formed: a block ``X_t = W X_{t-1}`` of ``k = min(n, 32)`` orthonormal
    directions is propagated (re-orthonormalized every step, the scale kept in logarithms, so
    nothing overflows) and ``norms[t-1] = sigma_1(W^t X_0)``. For ``n <= 32`` the block spans
    everything and the norms are exact; for larger ``n`` they are lower bounds that become
    accurate as ``t`` grows (the top singular subspace of ``W^t`` narrows), ``norms[0]`` is
    the exact ``sigma_1(W)``, and ``rate`` (from the second half of the steps) tends to the
    spectral radius. Cost: ``steps`` products ``(n, n) @ (n, k)``.

    Parameters
    ----------
    W : array_like, shape (n, n)
        Square recurrent matrix (float32/float64; integers are computed in float64).
    steps : int
        Number of powers (>= 1).
    activation : {"tanh", "linear", "relu", "sigmoid"}
        Activation whose derivative bound gamma enters the conditions.

    Returns
    -------
    GradientFlow
        ``(norms, rate, regime)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import gradient_flow
    >>> gradient_flow(0.5 * np.eye(8), steps=4).norms
    array([0.5   , 0.25  , 0.125 , 0.0625])
    >>> gradient_flow(0.5 * np.eye(8)).regime, gradient_flow(np.eye(8)).regime
    ('vanishing', 'stable')
    >>> gradient_flow(1.5 * np.eye(8), activation="sigmoid").regime
    'vanishing'
    >>> gradient_flow(4.5 * np.eye(8), activation="sigmoid").regime
    'exploding'
    """
    reject_masked(W, "W")
    arr = as_float_array(W, "W", allow_int=True)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"W: expected a square 2-D matrix, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"W: is empty (shape {arr.shape})")
    check_all_finite(arr, "W")
    steps = check_int(steps, "steps", minimum=1)
    activation = check_choice(activation, "activation", tuple(ACTIVATION_GAMMA))
    gamma = ACTIVATION_GAMMA[activation]
    n = arr.shape[0]
    Wd = arr.astype(np.float64)
    k = min(n, FLOW_BLOCK)
    if k == n:
        X = np.eye(n)
    else:
        X, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, k)))
    sigma1 = spectral_norm(Wd, tol=1e-10).value
    lognorm = np.full(steps, -np.inf)
    logscale = 0.0
    for t in range(steps):
        X = Wd @ X
        s = np.linalg.svd(X, compute_uv=False)[0] if X.size else 0.0
        if s == 0.0:
            break  # nilpotent along the block: every later norm is 0 too
        lognorm[t] = logscale + math.log(s)
        logscale += math.log(s)
        X = X / s
    if n > k:
        lognorm[0] = math.log(sigma1) if sigma1 > 0 else -np.inf
    with np.errstate(over="ignore"):
        norms = np.exp(lognorm)
    half = steps // 2
    if steps == 1:
        rate = float(norms[0])
    elif np.isfinite(lognorm[-1]):
        rate = math.exp((lognorm[-1] - lognorm[half - 1]) / (steps - half))
    else:
        rate = 0.0
    if sigma1 < 1.0 / gamma:
        regime = "vanishing"
    elif gamma * rate > 1.0 + STABLE_BAND:
        regime = "exploding"
    elif gamma * rate < 1.0 - STABLE_BAND:
        regime = "vanishing"
    else:
        regime = "stable"
    return GradientFlow(norms, float(rate), regime)
