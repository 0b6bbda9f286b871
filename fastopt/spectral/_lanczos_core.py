"""The one Lanczos core of fastopt: safe normalization of starting vectors, the step
(two classical Gram-Schmidt passes in a backend's ``orth_step`` kernel), the invariance
(breakdown) test, and the tridiagonal eigensolver.

Used by ``spectral_norm`` (Lanczos on ``W^T W``, batched, compiled kernels), the Krylov-Schur
iteration of ``spectral_radius`` (the same step and test on Arnoldi's Hessenberg matrix),
``lanczos_extremes``/``lanczos_tridiagonal`` (a Python operator, numpy reference kernel) and
through those the curvature diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np

from .._validate import check_operator_output

#: A Krylov space counts as invariant when the new coupling ``beta`` is at most this many units
#: of roundoff of the working dtype times the running scale of the projected matrix
#: (``max |alpha_i|, beta_i``). One threshold for every Lanczos/Arnoldi iteration of fastopt.
INVARIANCE_FACTOR = 16


def unit_rows(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows of ``v`` (float64, finite, each nonzero) scaled to unit 2-norm, returned in ``dtype``.

    Each row is divided by its ``max |v_i|`` before its norm is taken, so no square under- or
    overflows (rows of 1e-170 or 1e200 are fine), and the division happens in float64 before
    the cast (a float32 basis from a 1e-50 vector would otherwise be all zeros).
    """
    v = np.asarray(v, dtype=np.float64)
    amax = np.abs(v).max(axis=-1, keepdims=True)
    s = v / amax
    s /= np.linalg.norm(s, axis=-1, keepdims=True)
    return s.astype(dtype)


def breakdown(beta: np.ndarray | float, scale: np.ndarray | float, dtype: np.dtype):
    """True where ``beta <= INVARIANCE_FACTOR * eps(dtype) * scale`` (invariant Krylov space)."""
    return beta <= INVARIANCE_FACTOR * np.finfo(dtype).eps * scale


def extend(kern: ModuleType, V: np.ndarray, j: int, w: np.ndarray, h: np.ndarray,
           beta: np.ndarray, active: np.ndarray, n_threads: int, scale: np.ndarray,
           n_workers: int = 0):
    """One Lanczos/Arnoldi step for the rows ``active`` of a batch of bases.

    ``w`` (the operator applied to ``V[:, j]``) is orthogonalized against ``V[:, :j+1]`` by the
    backend's ``orth_step`` (coefficients to ``h``, ``beta = ||w||``, ``V[:, j+1] = w/beta``);
    ``scale`` (running ``max |alpha|, beta``) is updated in place. Returns the breakdown mask.
    """
    kern.orth_step(V, j, w, h, beta, active, n_threads, n_workers)
    np.maximum(scale, np.abs(h[:, j]), out=scale)
    np.maximum(scale, beta, out=scale)
    return breakdown(beta, scale, V.dtype)


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix with
    diagonal ``alpha`` and off-diagonal ``beta`` (a Lanczos matrix).

    Examples
    --------
    >>> import numpy as np

from .._validate import check_operator_output
    >>> from fastopt.spectral.lanczos import tridiagonal_eigh
    >>> ev, _ = tridiagonal_eigh(np.array([2.0, 2.0]), np.array([1.0]))
    >>> np.round(ev, 12)
    array([1., 3.])
    """
    j = alpha.size
    T = np.diag(alpha)
    if j > 1:
        idx = np.arange(j - 1)
        T[idx, idx + 1] = beta
        T[idx + 1, idx] = beta
    return np.linalg.eigh(T)


def operator_steps(matvec: Callable[[np.ndarray], np.ndarray], v0: np.ndarray, m: int,
                   dtype: np.dtype) -> Iterator[tuple]:
    """Up to ``m`` Lanczos steps of a Python operator from the unit vector ``v0``.

    Yields ``(j, alpha, beta, V, invariant)`` after step j (0-based): ``alpha[:j+1]`` and
    ``beta[:j+1]`` are filled (``beta[j]`` couples to the next vector), ``V[:j+1]`` holds the basis
    as rows. Stops after yielding a step whose Krylov space is invariant. The step is
    :func:`extend` with the numpy reference kernel (float64 sums, no compilation).
    """
    from ..reference import spectral as ref

    n = v0.size
    V3 = np.zeros((1, m + 1, n), dtype=dtype)  # Lanczos vectors as rows (each contiguous)
    V = V3[0]
    V[0] = v0
    alpha = np.zeros(m)
    beta = np.zeros(m)
    h = np.zeros((1, 2 * (m + 1)))
    bbuf = np.zeros(1)
    scale = np.full(1, np.finfo(np.float64).tiny)
    active = np.zeros(1, dtype=np.int64)
    for j in range(m):
        # the caller's operator is user input: its result is checked as it arrives
        w = check_operator_output(matvec(V[j]), "matvec", n, j + 1)
        w = w.astype(dtype, copy=True)[None]
        invariant = bool(extend(ref, V3, j, w, h, bbuf, active, 1, scale)[0])
        alpha[j] = h[0, j]
        beta[j] = bbuf[0]
        yield j, alpha, beta, V, invariant
        if invariant:
            return
