"""Pure-numpy reference of the spectra family (backend ``"numpy"`` and the tests' oracle).

The kernel functions have the same names and signatures as ``fastopt.spectral._cython`` and
``fastopt.spectral._numba`` (so the solvers run unchanged on them; ``n_threads`` and
``n_workers`` are accepted and ignored);
``dense_spectral_norm`` and ``dense_spectral_radius`` are the LAPACK answers used as oracles.
"""

from __future__ import annotations

import numpy as np

from ..spectral._plan import n_chunks, work_shape  # noqa: F401  (kernel module API)


def wtwv(W, x, t, y, active, work, n_threads, n_workers=0):
    """``t[b] = W[b] @ x[b]``, ``y[b] = W[b].T @ t[b]`` for ``b`` in ``active`` (float64 sums)."""
    for b in np.asarray(active):
        Wb = W[b].astype(np.float64)
        tb = Wb @ x[b].astype(np.float64)
        t[b] = tb
        y[b] = Wb.T @ tb


def matvec(W, x, y, active, n_threads, n_workers=0):
    """``y[b] = W[b] @ x[b]`` for ``b`` in ``active`` (float64 sums)."""
    for b in np.asarray(active):
        y[b] = W[b].astype(np.float64) @ x[b].astype(np.float64)


def orth_step(V, j, w, h, beta, active, n_threads, n_workers=0):
    """Two classical Gram-Schmidt passes of ``w[b]`` against ``V[b, :j+1]`` (see ``_cython``)."""
    k = j + 1
    for b in np.asarray(active):
        basis = V[b, :k].astype(np.float64, copy=False)  # one conversion (none for float64)
        c1 = basis @ w[b].astype(np.float64, copy=False)
        w[b] -= (c1 @ basis).astype(w.dtype, copy=False)
        c2 = basis @ w[b].astype(np.float64, copy=False)
        w[b] -= (c2 @ basis).astype(w.dtype, copy=False)
        h[b, :k] = c1 + c2
        nrm = float(np.linalg.norm(w[b].astype(np.float64)))
        beta[b] = nrm
        if nrm > 0 and k < V.shape[1]:
            V[b, k] = w[b] / nrm


def tridiag_top(alpha, beta, k, active, theta, s2, scratch, n_threads, n_workers=0):
    """Largest eigenvalue and squared last eigenvector component of each tridiagonal (LAPACK)."""
    for b in np.asarray(active):
        T = np.diag(alpha[b, :k])
        if k > 1:
            T += np.diag(beta[b, : k - 1], 1) + np.diag(beta[b, : k - 1], -1)
        ev, V = np.linalg.eigh(T)
        theta[b] = ev[-1]
        s2[b] = V[-1, -1] ** 2


def read_floor(a, n_threads, n_workers=0):
    """Sum of ``a`` (one read of every value)."""
    return float(np.sum(a, dtype=np.float64))


def simd_level():
    """0: numpy's own loops (the reference has no SIMD dispatch of its own)."""
    return 0


def dense_spectral_norm(W) -> np.ndarray | float:
    """Largest singular value of ``W`` (``(n, m)`` or ``(B, n, m)``) by a dense SVD in float64."""
    W = np.asarray(W, dtype=np.float64)
    s = np.linalg.svd(W, compute_uv=False)
    return float(s[0]) if W.ndim == 2 else s[..., 0]


def dense_spectral_radius(W) -> tuple:
    """``(max |lambda|, lambda)`` of square ``W`` (or of each matrix of a stack) by LAPACK.

    Of a conjugate pair the eigenvalue with positive imaginary part is returned.
    """
    W = np.asarray(W, dtype=np.float64)
    ev = np.linalg.eigvals(W)
    mod = np.abs(ev)
    # prefer the member of a conjugate pair with imag >= 0 among (near-)ties of the modulus
    key = mod + 1e-14 * mod.max(axis=-1, keepdims=True) * (ev.imag >= 0)
    idx = np.argmax(key, axis=-1)
    lam = np.take_along_axis(ev, idx[..., None], axis=-1)[..., 0]
    if W.ndim == 2:
        return float(np.abs(lam)), complex(lam)
    return np.abs(lam), lam
