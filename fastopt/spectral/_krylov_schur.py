"""Krylov-Schur type restarted Arnoldi for the spectral radius (one matrix at a time), with
eigenvalue-condition-aware stopping, a non-normality screen and a restart-invariance check;
and the singular-value bracket for matrices that are orthogonal up to scale.

Matrix-vector products and reorthogonalization (the step of :mod:`._lanczos_core`) are the
backend's compiled kernels; the projected matrix is dense numpy bookkeeping.
"""

from __future__ import annotations

import math

import numpy as np

from ._lanczos_core import extend

# Basis size and wanted Ritz values of the Krylov-Schur iteration.
ARNOLDI_NCV = 60
ARNOLDI_NEV = 6
# Limits of the non-normality screen of a converged Arnoldi run (trust_krylov): relative
# departure from normality of the projected matrix and condition number of the dominant Ritz
# value within the Krylov space. Random N(0, 1/n) matrices: <= 0.28 and <= 9 at n = 129..1024.
TRUST_DEPARTURE = 0.35
TRUST_COND = 100.0
# A Krylov-Schur restart must keep an invariant subspace of the projected matrix: relative
# residual ||Hm Q - Q G|| / ||Hm|| at most this times tol (random matrices: ~1e-15).
RESTART_INVARIANCE = 1e-3


def _real_basis(X: np.ndarray, ev: np.ndarray) -> np.ndarray:
    """Orthonormal real basis of the span of eigenvectors ``X`` (conjugate pairs adjacent)."""
    cols = []
    i = 0
    while i < ev.size:
        if ev[i].imag != 0 and i + 1 < ev.size:
            cols.append(X[:, i].real)
            cols.append(X[:, i].imag)
            i += 2
        else:
            cols.append(X[:, i].real)
            i += 1
    Q, _ = np.linalg.qr(np.array(cols).T)
    return Q


def _sorted_eig(H: np.ndarray):
    """Eigenpairs of a small real matrix sorted by decreasing modulus, conjugate pairs adjacent
    (positive imaginary part first); right vectors unit norm; left vectors as rows of X^-1."""
    ev, X = np.linalg.eig(H)
    mod = np.abs(ev)
    ev = np.where(np.abs(ev.imag) <= 1e-14 * np.maximum(mod, 1e-300), ev.real + 0j, ev)
    order = np.lexsort((-ev.imag, -np.round(mod / max(mod.max(), 1e-300), 12)))
    ev = ev[order]
    X = X[:, order]
    X = X / np.linalg.norm(X, axis=0)
    try:
        Y = np.linalg.inv(X)
    except np.linalg.LinAlgError:
        Y = np.linalg.pinv(X)
    return ev, X, Y


def trust_krylov(Hm: np.ndarray, ev: np.ndarray, cond: np.ndarray):
    """Whether the Krylov error estimate of a converged run can be trusted: True, or the reason
    (a string) why not.

    The estimate ``cond_1 * rho_1`` uses the condition number of the dominant Ritz value *within
    the Krylov space*. On strongly non-normal matrices (Jordan blocks, triangular matrices,
    badly conditioned similarity transforms) that misses the true sensitivity: Arnoldi then
    converges, with a tiny residual, to a point of the pseudospectrum that is no eigenvalue
    (J(0.5) of order 150 gives 1.28). Such runs show the non-normality in the projected matrix
    itself: a large relative departure from normality ``(||H||_F^2 - sum |theta_i|^2) /
    ||H||_F^2`` or an ill-conditioned dominant Ritz value. Random matrices stay far below both
    limits (at most 0.28 and 9 at n = 129..1024; see ``TRUST_DEPARTURE`` and ``TRUST_COND``).
    """
    fro2 = float(np.sum(Hm * Hm))
    if fro2 <= 0.0:  # zero projected matrix (the zero matrix): exact
        return True
    departure = max(fro2 - float(np.sum(np.abs(ev) ** 2)), 0.0) / fro2
    if not np.isfinite(departure) or departure > TRUST_DEPARTURE:
        return f"departure from normality {departure:.2f} of the projected matrix"
    if not np.isfinite(cond[0]) or cond[0] > TRUST_COND:
        return f"dominant Ritz value condition number {cond[0]:.3g}"
    return True


def arnoldi_radius(W1, kern, tol, maxiter, team, seed=0):
    """Krylov-Schur restarted Arnoldi on one matrix (W1 has shape (1, n, n)).

    Returns (radius, eigenvalue, matvecs, converged); ``converged`` is True, False (budget
    spent) or a string saying why the result cannot be trusted: converged by the Krylov
    estimate but :func:`trust_krylov` rejects it, or the restart lost invariance, where the
    Ritz values are meaningless and radius and eigenvalue come back NaN.
    """
    n = W1.shape[1]
    dtype = W1.dtype
    ncv = min(n - 1, ARNOLDI_NCV)
    nev = min(ARNOLDI_NEV, max(1, ncv // 3))
    keep_target = min(nev + (ncv - nev) // 2, ncv - 2)
    V3 = np.zeros((1, ncv + 1, n), dtype=dtype)
    V = V3[0]
    H = np.zeros((ncv + 1, ncv))
    start = np.random.default_rng(seed).standard_normal(n)
    V[0] = start / np.linalg.norm(start)
    y = np.empty((1, n), dtype=dtype)
    hbuf = np.zeros((1, 2 * (ncv + 1)))
    beta_buf = np.zeros(1)
    active = np.zeros(1, dtype=np.int64)
    k = 0
    mv = 0
    hscale = np.full(1, 1e-300)  # running estimate of ||H|| for the invariant-subspace test
    while True:
        invariant = False
        j = k
        for j in range(k, ncv):
            team.timed(kern.matvec, W1, V[j : j + 1], y, active)
            mv += 1
            # V[j + 1] = y / beta; the shared breakdown test of the Lanczos core
            broke = extend(kern, V3, j, y, hbuf, beta_buf, active, team.plan, hscale,
                           team.workers)[0]
            H[: j + 1, j] = hbuf[0, : j + 1]
            H[j + 1, j] = float(beta_buf[0])
            if broke:  # invariant subspace: the Ritz values are exact
                invariant = True
                break
            if mv >= maxiter:
                break
        size = j + 1
        Hm = H[:size, :size]
        ev, X, Y = _sorted_eig(Hm)
        res = np.abs(H[size, :size] @ X) if not invariant else np.zeros(ev.size)
        cond = np.linalg.norm(Y, axis=1)  # X has unit columns: cond_i = ||y_i|| ||x_i|| / |y_i x_i|
        err = res * cond
        scale = float(np.abs(ev[0]))
        want = min(nev, ev.size)
        # The dominant value must be accurate to tol. The other wanted values must be resolved
        # well enough (error <= sqrt(tol)) to be certainly smaller in modulus, or accurate to
        # tol themselves (near-ties): then none of them can be the dominant one.
        mods = np.abs(ev[:want])
        accurate = err[:want] <= tol * scale
        below = (err[:want] <= np.sqrt(tol) * scale) & (
            mods + err[:want] < scale - err[0] - tol * scale
        )
        conv = accurate | below
        conv[0] = accurate[0]
        if invariant or conv.all():
            return scale, complex(ev[0]), mv, trust_krylov(Hm, ev, cond)
        if mv >= maxiter:
            return scale, complex(ev[0]), mv, False
        keep = keep_target
        if ev[keep - 1].imag > 0:  # do not split a conjugate pair
            keep += 1
        Q = _real_basis(X[:, :keep], ev[:keep])
        k = Q.shape[1]
        HQ = Hm @ Q
        G = Q.T @ HQ
        # The restart drops (I - Q Q^T) Hm Q, which is zero only if span(Q) is invariant under
        # Hm. Nearly parallel eigenvectors (a defective or nearly defective projected matrix,
        # e.g. after an undetected breakdown on a nilpotent W) make Q span other directions:
        # every later Ritz value would be garbage (|theta| >> ||W|| was seen), so stop here.
        lost = float(np.linalg.norm(HQ - Q @ G)) / max(float(np.linalg.norm(Hm)), 1e-300)
        if not lost <= RESTART_INVARIANCE * tol:  # no estimate at all (|theta| > ||W|| seen)
            return math.nan, complex(math.nan, math.nan), mv, (
                f"restart basis not invariant ({lost:.1e})")
        b = H[size, :size] @ Q
        # V[:k] = Q^T V[:size] without BLAS (see the thread policy above)
        V[:k] = np.einsum("ji,jn->in", Q.astype(dtype), V[:size], optimize=False)
        V[k] = V[size]
        H[:] = 0.0
        H[:k, :k] = G
        H[k, :k] = b


def bracket(W1, kern, tol, team):
    """Singular-value bracket for nearly orthogonal (up to scale) matrices, else None.

    One fused pass decides whether ``W^T W`` is close to a multiple of the identity; only then
    Lanczos on both ends of its spectrum runs. If ``sigma_max - sigma_min <= tol * sigma_max``
    every eigenvalue has modulus within that bracket, so the radius is known to ``tol``.
    Returns ``(sigma_max, matvecs)`` or ``None``.
    """
    from .lanczos import lanczos_extremes

    n = W1.shape[1]
    dtype = W1.dtype
    x = np.random.default_rng(1).standard_normal((1, n)).astype(dtype)
    x /= np.linalg.norm(x)
    t = np.empty((1, n), dtype=dtype)
    yv = np.empty((1, n), dtype=dtype)
    work = np.empty(kern.work_shape(1, n, n, team.plan))
    active = np.zeros(1, dtype=np.int64)
    team.timed(kern.wtwv, W1, x, t, yv, active, work)
    c = float(yv[0].astype(np.float64) @ x[0].astype(np.float64))
    r = float(np.linalg.norm(yv[0].astype(np.float64) - c * x[0].astype(np.float64)))
    if c <= 0 or r > 1e-2 * c:
        return None

    def op(v):
        team.timed(kern.wtwv, W1, v[None].astype(dtype), t, yv, active, work)
        return yv[0].astype(np.float64)

    res = lanczos_extremes(op, n, which="both", tol=tol / 4, maxiter=min(n, 60))
    if not res.converged:
        return None
    smax = np.sqrt(max(res.largest[0], 0.0))
    smin = np.sqrt(max(res.smallest[0], 0.0))
    if smax - smin <= tol * smax:
        return float(smax), 1 + res.iterations
    return None
