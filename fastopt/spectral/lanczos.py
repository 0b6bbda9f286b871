"""Lanczos with full reorthogonalization for the extreme eigenvalues of a symmetric operator.

Shared by the spectra family (``lanczos_extremes`` is public) and the curvature family
(``hessian_extremes`` runs it on Hessian-vector products).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .._validate import (
    as_float_array,
    as_generator,
    check_choice,
    check_float_dtype,
    check_int,
    check_positive,
)


class LanczosResult(NamedTuple):
    """Extreme eigenpairs found by :func:`lanczos_extremes`.

    ``largest`` is sorted in descending order, ``smallest`` in ascending order; either is ``None``
    when ``which`` did not ask for it, and so are the matching ``*_vectors`` (shape ``(n, k)``).
    ``residual`` is the largest ``||A y - theta y||`` over the returned pairs (unit vectors y),
    ``iterations`` the number of operator applications.
    """

    largest: np.ndarray | None
    smallest: np.ndarray | None
    largest_vectors: np.ndarray | None
    smallest_vectors: np.ndarray | None
    iterations: int
    converged: bool
    residual: float


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix with
    diagonal ``alpha`` and off-diagonal ``beta`` (a Lanczos matrix)."""
    j = alpha.size
    T = np.diag(alpha)
    if j > 1:
        idx = np.arange(j - 1)
        T[idx, idx + 1] = beta
        T[idx + 1, idx] = beta
    return np.linalg.eigh(T)


def _lanczos_steps(matvec, v0: np.ndarray, m: int, dtype: np.dtype):
    """Run up to ``m`` Lanczos steps from the unit vector ``v0``, with full reorthogonalization.

    Yields ``(j, alpha, beta, V, invariant)`` after step j (0-based): ``alpha[:j+1]`` and
    ``beta[:j+1]`` are filled (``beta[j]`` couples to the next vector), ``V[:j+1]`` holds the basis
    as rows. Stops after yielding a step whose Krylov space is invariant (``beta[j]`` ~ 0).
    """
    n = v0.size
    V = np.empty((m + 1, n), dtype=dtype)  # Lanczos vectors as rows (each contiguous)
    V[0] = v0
    alpha = np.zeros(m)
    beta = np.zeros(m)
    for j in range(m):
        w = np.asarray(matvec(V[j]))
        if w.shape != (n,):
            raise ValueError(f"matvec: returned shape {w.shape}, expected ({n},)")
        w = w.astype(dtype, copy=True)
        if not np.isfinite(w).all():
            raise ValueError(f"matvec: returned non-finite values at iteration {j + 1}")
        alpha[j] = float(np.dot(w, V[j]))
        basis = V[: j + 1]
        for _ in range(2):  # "twice is enough" (Kahan/Parlett)
            w -= basis.T @ (basis @ w)
        beta[j] = float(np.linalg.norm(w))
        scale = max(np.abs(alpha[: j + 1]).max(), beta[: j + 1].max(), np.finfo(float).tiny)
        invariant = bool(beta[j] <= 64 * np.finfo(dtype).eps * scale)
        yield j, alpha, beta, V, invariant
        if invariant:
            return
        V[j + 1] = w / beta[j]


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
    v0 = np.asarray(v0)
    start = _unit_start(v0, v0.shape[0] if v0.ndim == 1 else -1, 0)
    m = check_int(m, "m", minimum=1)
    *_, (j, alpha, beta, _, _) = _lanczos_steps(matvec, start, m, np.float64)
    return alpha[: j + 1].copy(), beta[:j].copy()


def _unit_start(v0: object, n: int, seed: object) -> np.ndarray:
    """The float64 unit starting vector: ``v0`` (checked: shape ``(n,)``, finite, nonzero)
    normalized, or a seeded standard normal vector when ``v0`` is None."""
    if v0 is None:
        start = as_generator(seed, "seed").standard_normal(n)
    else:
        start = as_float_array(v0, "v0", allow_int=True).astype(np.float64)
        if start.ndim != 1 or start.shape != (n,):
            want = f"({n},)" if n >= 0 else "a vector (n,)"
            raise ValueError(f"v0: expected shape {want}, got {np.shape(v0)}")
    norm0 = np.linalg.norm(start)
    if not np.isfinite(norm0) or norm0 == 0:
        raise ValueError("v0: must be a finite, nonzero vector")
    return start / norm0


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
    tol = check_positive(tol, "tol")
    dtype = check_float_dtype(dtype)
    m = min(n, 300) if maxiter is None else check_int(maxiter, "maxiter", minimum=1)
    m = min(m, n)
    if k > n:
        raise ValueError(f"k: {k} exceeds the operator dimension n={n}")

    start = _unit_start(v0, n, seed)
    next_check = 1
    theta = S = None
    converged = False
    for step in _lanczos_steps(matvec, start, m, dtype):
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
