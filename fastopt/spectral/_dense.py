"""Dense (LAPACK) spectral radius with a first-order error bound: ``spectral_radius``'s answer
for order <= 128 and its fallback where the Krylov-Schur iteration cannot be trusted."""

from __future__ import annotations

import numpy as np


def dense_radius(Ws: np.ndarray, tol: float):
    """Radius, dominant eigenvalue and an accuracy verdict per matrix of a stack, by LAPACK.

    LAPACK's eigenvalues have backward error ~ eps ||W||, so the dominant one is accurate to
    about ``cond * eps * ||W||_F`` (first order; ``cond = ||x|| ||y|| / |y^H x|`` from its right
    and left eigenvectors). The verdict is ``converged`` when that is within ``tol * radius``:
    defective or nearly defective dominant eigenvalues (Jordan blocks), where LAPACK's
    eigenvalues can be off by ``eps**(1/k)``, come back ``converged=False``.
    """
    A = np.asarray(Ws, dtype=np.float64)
    ev, X = np.linalg.eig(A)
    X = X / np.maximum(np.linalg.norm(X, axis=-2, keepdims=True), 1e-300)
    mod = np.abs(ev)
    key = mod + 1e-14 * mod.max(axis=-1, keepdims=True) * (ev.imag >= 0)
    idx = np.argmax(key, axis=-1)
    lam = np.take_along_axis(ev, idx[:, None], axis=-1)[:, 0]
    value = np.abs(lam)
    normW = np.linalg.norm(A, axis=(-2, -1))
    conv = np.zeros(A.shape[0], dtype=bool)
    for b in range(A.shape[0]):
        if normW[b] == 0:
            conv[b] = True
            continue
        try:
            left = np.linalg.solve(X[b].T, np.eye(A.shape[1])[idx[b]])  # row idx of X^-1
        except np.linalg.LinAlgError:
            continue
        cond = float(np.linalg.norm(left))
        err = cond * np.finfo(np.float64).eps * normW[b]
        conv[b] = bool(np.isfinite(err) and err <= tol * max(value[b], 1e-300))
    return value, lam, conv


