"""Golub-Kahan-Lanczos for sigma_1: thick-restart Lanczos on ``W^T W`` (in exact arithmetic
the Golub-Kahan bidiagonalization), all matrices of a batch in lockstep.

Every iteration is one fused kernel pass over ``W`` (``t = W x``, ``y = W^T t`` from one
row-wise read) and one step of the shared Lanczos core (:mod:`._lanczos_core`). The iteration
stops on the residual of the top Ritz pair, checked again at the end on the returned vector
in the working dtype (:func:`checked_residual`).
"""

from __future__ import annotations

import numpy as np

from ._lanczos_core import extend

# Basis size of the Lanczos iteration for sigma_1 before a thick restart, and Ritz vectors kept.
LANCZOS_NCV = 64
LANCZOS_KEEP = 20
DEFAULT_MAXITER = 1000


def default_start(B: int, m: int, dtype: np.dtype) -> np.ndarray:
    """The fixed seeded normal starting vector of every matrix (deterministic results)."""
    from ._lanczos_core import unit_rows

    start = np.random.default_rng(0).standard_normal((1, m))
    return np.broadcast_to(unit_rows(start, dtype), (B, m)).copy()


def lanczos_norm(W3, kern, tol, maxiter, start, team):
    """Largest eigenpair of ``W^T W`` per matrix of the C-contiguous stack ``W3`` (B, n, m),
    from the unit starting rows ``start`` (B, m) of ``W3``'s dtype, on the threads of ``team``
    (a :class:`._common.Team`).

    Returns theta, the relative residual estimated by the recurrence, iterations, converged,
    the Ritz vectors (float64, unnormalized rows, computed when each matrix stopped) and
    ``exact`` (the matrix stopped on an invariant Krylov space).
    """
    B, n, m = W3.shape
    dtype = W3.dtype
    ncv = min(m, LANCZOS_NCV)
    keep = min(LANCZOS_KEEP, max(1, ncv - 2))
    V = np.zeros((B, ncv + 1, m), dtype=dtype)
    V[:, 0] = start
    T = np.zeros((B, ncv + 1, ncv + 1))
    x = np.empty((B, m), dtype=dtype)
    w = np.empty((B, m), dtype=dtype)
    tbuf = np.empty((B, n), dtype=dtype)
    work = np.empty(kern.work_shape(B, n, m, team.plan))
    hbuf = np.zeros((B, 2 * (ncv + 1)))
    beta = np.zeros(B)
    theta = np.zeros(B)
    resid = np.full(B, np.inf)
    iters = np.zeros(B, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    vecs = np.zeros((B, m))
    exact = np.zeros(B, dtype=bool)
    active = np.arange(B, dtype=np.int64)
    tiny = np.finfo(np.float64).tiny
    j = 0
    total = 0
    next_check = 1
    scale = np.full(B, tiny)  # running max |alpha|, beta: the scale of W^T W seen so far
    last = None  # (j, worst relative residual) at the previous convergence check
    restarted = False
    alph = np.zeros((B, ncv + 1))  # the tridiagonal T before any restart
    bet = np.zeros((B, ncv + 1))
    s2 = np.zeros(B)
    scratch = np.zeros((B, ncv + 1))
    while True:
        if B > 1:
            np.copyto(x, V[:, j])
            xin = x
        else:
            xin = V[:, j]
        team.timed(kern.wtwv, W3, xin, tbuf, w, active, work)
        invariant = extend(kern, V, j, w, hbuf, beta, active, team.plan, scale,  # V[:, j+1]
                           team.workers)
        total += 1
        hh = hbuf[:, : j + 1]
        T[:, : j + 1, j] = hh
        T[:, j, : j + 1] = hh
        T[:, j + 1, j] = beta
        T[:, j, j + 1] = beta
        alph[:, j] = hbuf[:, j]
        bet[:, j] = beta
        full = j + 1 == ncv
        out_of_budget = total >= maxiter
        if full or out_of_budget or j + 1 >= next_check or (invariant & ~done).any():
            chk = active
            th = np.zeros(B)
            r = np.zeros(B)
            if restarted or full:  # T is no longer (or must be fully) diagonalized: LAPACK
                ev_a, S_a = np.linalg.eigh(T[chk, : j + 1, : j + 1])
                th[chk] = ev_a[:, -1]
                r[chk] = np.abs(beta[chk] * S_a[:, -1, -1])
            else:  # tridiagonal T: bisection + recurrences in the kernel, no LAPACK call
                team(kern.tridiag_top, alph, bet, j + 1, chk, th, s2, scratch)
                r[chk] = np.abs(beta[chk]) * np.sqrt(s2[chk])
            rel = np.where(th > 0, r / np.maximum(th, tiny), 0.0)
            conv_now = ~done & ((rel <= tol) | invariant | (th <= tiny))
            stop = np.flatnonzero(conv_now | (~done & out_of_budget))
            if stop.size:
                theta[stop] = np.maximum(th[stop], 0.0)
                resid[stop] = np.where(invariant[stop] | (th[stop] <= tiny), 0.0, rel[stop])
                iters[stop] = total
                exact[stop] = invariant[stop]
                # the vectors now, before a restart can rotate the basis (one stacked eigh)
                _, S_s = np.linalg.eigh(T[stop, : j + 1, : j + 1])
                vecs[stop] = np.einsum("bj,bjm->bm", S_s[:, :, -1],
                                       V[stop, : j + 1].astype(np.float64), optimize=False)
            done |= conv_now
            if done.all() or out_of_budget:
                break
            keep_rows = ~done[chk]
            active = np.flatnonzero(~done).astype(np.int64)
            # convergence checks cost O(j) (O(j^3) after a restart) per matrix: check at steps
            # 1 and 2 (warm starts), then where the residual's recent rate of decrease predicts
            # convergence (at most j/3 steps ahead: a poor prediction overshoots by a third)
            worst = float(rel[~done].max())
            step = 1 if j + 1 < 2 else max(2, (j + 1) // 4)
            if last is not None and j > last[0] and 0 < worst < last[1]:
                q = (worst / last[1]) ** (1.0 / (j - last[0]))
                predicted = int(np.ceil(np.log(tol / worst) / np.log(q)))
                step = min(max(predicted, 1), max(2, (j + 1) // 3))
            last = (j, worst)
            next_check = j + 1 + step
            if full:  # thick restart: keep the `keep` largest Ritz vectors of every matrix
                ev_a, S_a = ev_a[keep_rows], S_a[keep_rows]
                Y = S_a[:, :, -keep:]  # (nact, ncv, keep)
                V[active, :keep] = np.einsum(  # no BLAS in the loop (see the thread policy)
                    "bji,bjn->bin", Y.astype(dtype), V[active, :ncv], optimize=False
                )
                V[active, keep] = V[active, ncv]
                coupling = beta[active, None] * S_a[:, -1, -keep:]
                T[active] = 0.0
                idx = np.arange(keep)
                T[active[:, None], idx, idx] = ev_a[:, -keep:]
                T[active, keep, :keep] = coupling
                T[active, :keep, keep] = coupling
                j = keep
                next_check = j + 2
                last = None
                restarted = True
                continue
        j += 1
    return theta, resid, iters, done.copy(), vecs, exact


def checked_residual(W3, kern, vecs, team):
    """Relative residual ``||W^T W x - theta_x x|| / theta_x`` of the unit vectors ``x`` (the
    rows of ``vecs`` normalized and cast to ``W3``'s dtype), with ``W^T W x`` computed by the
    backend's fused kernel in that dtype, ``theta_x = x . W^T W x``: one more pass over ``W``.
    0 where ``W^T W x`` is exactly zero (the zero matrix)."""
    from ._lanczos_core import unit_rows

    B, n, m = W3.shape
    dtype = W3.dtype
    ok = np.any(vecs != 0, axis=1)
    x = np.zeros((B, m), dtype=dtype)
    x[ok] = unit_rows(vecs[ok], dtype)
    x[~ok, 0] = 1
    t = np.empty((B, n), dtype=dtype)
    y = np.empty((B, m), dtype=dtype)
    work = np.empty(kern.work_shape(B, n, m, team.plan))
    team(kern.wtwv, W3, x, t, y, np.arange(B, dtype=np.int64), work)
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64)
    theta = np.einsum("bi,bi->b", x64, y64)
    r = np.linalg.norm(y64 - theta[:, None] * x64, axis=1)
    zero = ~np.any(y64 != 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(zero, 0.0, r / np.where(theta > 0, theta, np.nan))
    return np.where(np.isnan(rel), np.inf, rel)
