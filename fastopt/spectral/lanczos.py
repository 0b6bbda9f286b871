"""Lanczos with full reorthogonalization for the extreme eigenvalues of a symmetric operator.

Public front end (``lanczos_extremes`` is exported by ``fastopt``; ``lanczos_tridiagonal`` and
``tridiagonal_eigh`` are used by the curvature family's stochastic Lanczos quadrature). The
iteration itself is the shared core of :mod:`fastopt.spectral._lanczos_core`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._validate import (
    as_generator,
    as_start_vectors,
    check_choice,
    check_dtype_arg,
    check_int,
    check_real,
)
from ._lanczos_core import operator_steps, tridiagonal_eigh, unit_rows
from ._results import LanczosResult

__all__ = ["LanczosResult", "lanczos_extremes", "lanczos_tridiagonal", "tridiagonal_eigh"]


def lanczos_tridiagonal(
    matvec: Callable[[np.ndarray], np.ndarray], v0: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """``m`` Lanczos steps from ``v0`` (float64, full reorthogonalization): the tridiagonal.

    Parameters
    ----------
    matvec : callable
        ``matvec(v) -> A v`` for a vector of ``v0``'s shape; A must be symmetric.
    v0 : array_like, shape (n,)
        Starting vector: finite and nonzero (normalized here).
    m : int
        Number of steps (>= 1).

    Returns ``(alpha, beta)``, the diagonal (length j) and off-diagonal (length j - 1) of the
    Lanczos matrix, j <= m (shorter when the Krylov space becomes invariant: then the Gauss
    quadrature it defines is exact). Used by stochastic Lanczos quadrature.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.spectral.lanczos import lanczos_tridiagonal
    >>> alpha, beta = lanczos_tridiagonal(lambda v: np.array([1.0, 2.0, 3.0]) * v, np.ones(3), 5)
    >>> np.round(np.linalg.eigvalsh(np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)), 12)
    array([1., 2., 3.])
    """
    if not callable(matvec):
        raise TypeError(f"matvec: must be callable, got {type(matvec).__name__}")
    v0a = np.asarray(v0)
    if v0a.ndim != 1 or v0a.size == 0:
        raise ValueError(f"v0: expected a non-empty vector (n,), got shape {v0a.shape}")
    start = _unit_start(v0, v0a.shape[0], 0)
    m = check_int(m, "m", minimum=1)
    *_, (j, alpha, beta, _, _) = operator_steps(matvec, start, m, np.dtype(np.float64))
    return alpha[: j + 1].copy(), beta[:j].copy()


def _unit_start(v0: object, n: int, seed: object) -> np.ndarray:
    """The float64 unit starting vector: ``v0`` (checked: shape ``(n,)``, finite, nonzero; any
    scale) normalized safely, or a seeded standard normal vector when ``v0`` is None."""
    if v0 is None:
        start = as_generator(seed, "seed").standard_normal((1, n))
    else:
        start = as_start_vectors(v0, "v0", 1, n)
    return unit_rows(start, np.dtype(np.float64))[0]


def _selected(theta: np.ndarray, k: int, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ascending ``theta``) of the wanted largest and smallest Ritz values."""
    k = min(k, theta.size)
    large = np.arange(theta.size - 1, theta.size - 1 - k, -1) if which != "smallest" else None
    small = np.arange(k) if which != "largest" else None
    return large, small


def lanczos_extremes(
    matvec: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    k: int = 1,
    which: str = "both",
    tol: float = 1e-6,
    maxiter: int | None = None,
    dtype: type | np.dtype = np.float64,
    v0: np.ndarray | None = None,
    seed: int = 0,
) -> LanczosResult:
    """Largest and/or smallest eigenvalues (and vectors) of a symmetric operator.

    Lanczos iteration with full reorthogonalization (two Gram-Schmidt passes per step, so the
    basis stays orthogonal to working precision and no spurious copies of converged values
    appear). It stops when every wanted Ritz pair has residual ``||A y - theta y|| <= tol * s``,
    where ``s`` is the largest Ritz value in magnitude (the estimate of ``||A||``), when the Krylov
    space becomes invariant (exact answer), or after ``maxiter`` operator applications.

    Parameters
    ----------
    matvec : callable
        ``matvec(v) -> A v`` for a vector of shape ``(n,)``; A must be symmetric.
    n : int
        Dimension of the operator.
    k : int
        Number of eigenvalues wanted at each requested end.
    which : {"both", "largest", "smallest"}
        Which end(s) of the spectrum.
    tol : float
        Relative residual tolerance (> 0).
    maxiter : int, optional
        Maximum number of operator applications (default ``min(n, 300)``). Memory is
        ``(maxiter + 1) * n`` values of ``dtype``.
    dtype : numpy dtype
        float32 or float64: precision of the Lanczos basis.
    v0 : ndarray, optional
        Starting vector (default: a seeded standard normal vector).
    seed : int
        Seed for the default starting vector (the result is deterministic).

    Returns
    -------
    LanczosResult

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import lanczos_extremes
    >>> A = np.diag(np.arange(1.0, 101.0)) - 50.5 * np.eye(100)
    >>> res = lanczos_extremes(lambda v: A @ v, 100, tol=1e-10)
    >>> round(float(res.largest[0]), 6), round(float(res.smallest[0]), 6), res.converged
    (49.5, -49.5, True)
    """
    if not callable(matvec):
        raise TypeError(f"matvec: must be callable, got {type(matvec).__name__}")
    n = check_int(n, "n", minimum=1)
    k = check_int(k, "k", minimum=1)
    which = check_choice(which, "which", ("both", "largest", "smallest"))
    tol = check_real(tol, "tol", positive=True)
    dtype = check_dtype_arg(dtype)
    m = min(n, 300) if maxiter is None else check_int(maxiter, "maxiter", minimum=1)
    m = min(m, n)
    if k > n:
        raise ValueError(f"k: {k} exceeds the operator dimension n={n}")

    start = _unit_start(v0, n, seed).astype(dtype)
    next_check = 1
    theta = S = None
    converged = False
    for step in operator_steps(matvec, start, m, dtype):
        j, alpha, beta, V, invariant = step
        last = j == m - 1
        if invariant or last or j + 1 >= next_check:
            theta, S = tridiagonal_eigh(alpha[: j + 1], beta[:j])
            scale = max(np.abs(theta).max(), np.finfo(float).tiny)
            large, small = _selected(theta, k, which)
            wanted = np.concatenate([i for i in (large, small) if i is not None])
            res = np.abs(beta[j] * S[-1, wanted])
            converged = bool(invariant or (res <= tol * scale).all()) and bool(
                invariant or wanted.size == min(k * (2 if which == "both" else 1), n) or j + 1 == n
            )
            if converged or invariant or last:
                break
            # Checks cost O(j^3): every step early on, then about every 5% of the basis size.
            next_check = j + 1 + max(1, (j + 1) // 20)

    iterations = j + 1
    large, small = _selected(theta, k, which)
    basis = V[:iterations]
    wanted = np.concatenate([i for i in (large, small) if i is not None])
    res = np.abs(beta[j] * S[-1, wanted]) if not invariant else np.zeros(wanted.size)

    def ritz(idx: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        if idx is None:
            return None, None
        vals = theta[idx].astype(np.float64)
        vecs = basis.T @ S[:, idx].astype(dtype)
        return vals, vecs

    lv, lvec = ritz(large)
    sv, svec = ritz(small)
    return LanczosResult(lv, sv, lvec, svec, iterations, converged, float(res.max()))
