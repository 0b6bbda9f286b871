"""Spectral norm and spectral radius of (recurrent) weight matrices, single or batched.

``spectral_norm`` runs Lanczos on ``W^T W`` (equivalent to Golub-Kahan-Lanczos
bidiagonalization) with full reorthogonalization and thick restarts; every iteration is one fused
kernel pass over ``W`` (``t = W x``, ``y = W^T t`` from one row-wise read). ``spectral_radius`` runs
a Krylov-Schur type restarted Arnoldi method on ``W`` with eigenvalue-condition-aware stopping and
a dense LAPACK fallback. Krylov bookkeeping is numpy; the passes over ``W`` are the compiled
kernels of the chosen backend.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _dispatch
from .._threads import get_num_threads
from .._validate import as_float_array, check_all_finite, check_int, check_positive

__all__ = ["RadiusResult", "SpectralResult", "spectral_norm", "spectral_radius"]

# Basis size of the Lanczos iteration for sigma_1 before a thick restart, and Ritz vectors kept.
_LANCZOS_NCV = 64
_LANCZOS_KEEP = 20
# Krylov-Schur parameters of spectral_radius: basis size, wanted Ritz values.
_ARNOLDI_NCV = 60
_ARNOLDI_NEV = 6
# Below this order spectral_radius uses LAPACK (np.linalg.eigvals) directly: it is faster there.
_DENSE_RADIUS_N = 128
# Limits of the non-normality screen of a converged Arnoldi run (_trust_krylov): relative
# departure from normality of the projected matrix and condition number of the dominant Ritz
# value within the Krylov space. Random N(0, 1/n) matrices: <= 0.28 and <= 9 at n = 129..1024.
_TRUST_DEPARTURE = 0.35
_TRUST_COND = 100.0
# A Krylov-Schur restart must keep an invariant subspace of the projected matrix: relative
# residual ||Hm Q - Q G|| / ||Hm|| at most this times tol (random matrices: ~1e-15).
_RESTART_INVARIANCE = 1e-3
# spectral_radius rescales W (exactly, by a power of two) when max |W_ij| is outside
# [2**-_SCALE_EXP, 2**_SCALE_EXP], so that float32 products and squares neither under- nor
# overflow in the kernels.
_SCALE_EXP = 50
_DEFAULT_MAXITER_NORM = 1000


class SpectralResult(NamedTuple):
    """Result of :func:`spectral_norm`.

    Attributes
    ----------
    value : float or ndarray
        Largest singular value sigma_1 (float64; shape ``(B,)`` for a batch).
    u, v : ndarray or None
        Left and right singular vectors (unit norm, ``W v = value * u``); ``None`` unless
        ``return_vectors=True``. Shapes ``(n,)``/``(m,)`` or ``(B, n)``/``(B, m)``.
    iterations : int or ndarray
        Passes over ``W`` (one fused ``W^T W v`` pass each).
    converged : bool or ndarray
        Whether the relative residual reached ``tol``.
    residual : float or ndarray
        Relative residual ``||W^T u - value v|| / value`` of the returned triplet as estimated by
        the Lanczos recurrence (0 for the zero matrix or an exhausted Krylov space).
    """

    value: float | np.ndarray
    u: np.ndarray | None
    v: np.ndarray | None
    iterations: int | np.ndarray
    converged: bool | np.ndarray
    residual: float | np.ndarray


class RadiusResult(NamedTuple):
    """Result of :func:`spectral_radius`.

    Attributes
    ----------
    value : float or ndarray
        Spectral radius ``max |lambda|`` (float64; shape ``(B,)`` for a batch).
    eigenvalue : complex or ndarray
        A dominant eigenvalue (complex128; of a conjugate pair the one with positive imaginary
        part). NaN when the radius was certified by the singular-value bracket
        ``sigma_min <= |lambda| <= sigma_max`` (then every eigenvalue is dominant to ``tol``).
    iterations : int or ndarray
        Matrix-vector products spent (0 when LAPACK answered directly).
    converged : bool or ndarray
        Whether ``value`` is accurate to ``tol`` (relative).
    """

    value: float | np.ndarray
    eigenvalue: complex | np.ndarray
    iterations: int | np.ndarray
    converged: bool | np.ndarray


def _kernels(backend: str):
    # "auto": Cython first (no JIT latency; bench/bench_spectral.py: at least as fast as Numba)
    name = _dispatch.resolve("spectral", backend)
    return _dispatch.load("spectral", name)


def _as_stack(W: object, name: str = "W", *, square: bool = False) -> tuple[np.ndarray, bool]:
    """Validate ``W`` and return it as a C-contiguous ``(B, n, m)`` stack and a batched flag."""
    arr = as_float_array(W, name, allow_int=True)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2-D matrix (n, m) or a 3-D batch (B, n, m), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: is empty (shape {arr.shape})")
    if square and arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name}: must be square, got shape {arr.shape}")
    check_all_finite(arr, name)
    batched = arr.ndim == 3
    return (arr if batched else arr[None]), batched


# Thread policy of the solvers (kernels called directly use the count they are given): the
# kernels use fastopt's thread count from 128K matrix entries per pass on, one thread below.
# No multithreaded BLAS call may sit in a solver loop: OpenBLAS's spinning worker threads and
# the OpenMP team slow each other down badly on a 2-core machine (spectral_radius took
# 65-130 ms instead of 30 ms while its restarts rotated the basis with a BLAS gemm; they use
# a non-BLAS einsum now, and the remaining LAPACK calls are on 60 x 60 matrices).
_PARALLEL_MIN_ENTRIES = 1 << 17


def _threads_for(entries: int) -> int:
    return get_num_threads() if entries >= _PARALLEL_MIN_ENTRIES else 1


def _maxiter(maxiter: object, default: int) -> int:
    return default if maxiter is None else check_int(maxiter, "maxiter", minimum=1)


# --------------------------------------------------------------------------------------------
# spectral norm: thick-restart Lanczos on W^T W, all matrices of a batch in lockstep
# --------------------------------------------------------------------------------------------


def _start_vectors(v0: object, B: int, m: int, dtype: np.dtype) -> np.ndarray:
    if v0 is None:
        start = np.random.default_rng(0).standard_normal(m)
        return np.broadcast_to(start, (B, m)).astype(dtype)
    arr = np.asarray(v0)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"v0: dtype {arr.dtype} is not supported (expected a real array)")
    arr = arr.astype(np.float64)
    if arr.shape == (m,):
        arr = np.broadcast_to(arr, (B, m))
    elif arr.shape != (B, m):
        want = f"({m},)" if B == 1 else f"({m},) or ({B}, {m})"
        raise ValueError(f"v0: expected shape {want}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("v0: contains non-finite values")
    if (np.linalg.norm(arr, axis=1) == 0).any():
        raise ValueError("v0: must be nonzero (for every matrix of the batch)")
    return np.ascontiguousarray(arr, dtype=dtype)


def _lanczos_norm(W3, kern, tol, maxiter, v0, want_vectors):
    """Largest eigenpair of W^T W per matrix.

    Returns theta, relative residual, iterations, converged and (if ``want_vectors``) the Ritz
    vectors (float64, unnormalized rows) computed when each matrix stopped.
    """
    B, n, m = W3.shape
    dtype = W3.dtype
    nt = _threads_for(W3.size)
    ncv = min(m, _LANCZOS_NCV)
    keep = min(_LANCZOS_KEEP, max(1, ncv - 2))
    V = np.zeros((B, ncv + 1, m), dtype=dtype)
    V[:, 0] = _start_vectors(v0, B, m, dtype)
    V[:, 0] /= np.linalg.norm(V[:, 0].astype(np.float64), axis=1)[:, None].astype(dtype)
    T = np.zeros((B, ncv + 1, ncv + 1))
    x = np.empty((B, m), dtype=dtype)
    w = np.empty((B, m), dtype=dtype)
    tbuf = np.empty((B, n), dtype=dtype)
    work = np.empty(kern.work_shape(B, n, m, nt))
    hbuf = np.zeros((B, 2 * (ncv + 1)))
    beta = np.zeros(B)
    theta = np.zeros(B)
    resid = np.full(B, np.inf)
    iters = np.zeros(B, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    vecs = np.zeros((B, m)) if want_vectors else None
    active = np.arange(B, dtype=np.int64)
    tiny = np.finfo(np.float64).tiny
    eps = np.finfo(dtype).eps
    j = 0
    total = 0
    next_check = 1
    scale = np.full(B, tiny)  # running max |alpha|: the scale of W^T W seen so far
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
        kern.wtwv(W3, xin, tbuf, w, active, work, nt)
        kern.orth_step(V, j, w, hbuf, beta, active, nt)  # also sets V[:, j + 1] = w / beta
        total += 1
        hh = hbuf[:, : j + 1]
        T[:, : j + 1, j] = hh
        T[:, j, : j + 1] = hh
        T[:, j + 1, j] = beta
        T[:, j, j + 1] = beta
        alph[:, j] = hbuf[:, j]
        bet[:, j] = beta
        np.maximum(scale, np.abs(hbuf[:, j]), out=scale)
        invariant = beta <= 16 * eps * scale
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
                kern.tridiag_top(alph, bet, j + 1, chk, th, s2, scratch, nt)
                r[chk] = np.abs(beta[chk]) * np.sqrt(s2[chk])
            rel = np.where(th > 0, r / np.maximum(th, tiny), 0.0)
            conv_now = ~done & ((rel <= tol) | invariant | (th <= tiny))
            for b in np.flatnonzero(conv_now | (~done & out_of_budget)):
                theta[b] = max(th[b], 0.0)
                resid[b] = 0.0 if invariant[b] or th[b] <= tiny else rel[b]
                iters[b] = total
                if want_vectors:  # now, before a restart can rotate the basis
                    _, S_b = np.linalg.eigh(T[b, : j + 1, : j + 1])
                    vecs[b] = S_b[:, -1] @ V[b, : j + 1].astype(np.float64)
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
    return theta, resid, iters, done.copy(), vecs


def spectral_norm(
    W: object,
    *,
    tol: float = 1e-6,
    maxiter: int | None = None,
    v0: object = None,
    return_vectors: bool = False,
    backend: str = "auto",
) -> SpectralResult:
    """Largest singular value of a matrix or of every matrix of a batch.

    Lanczos on ``W^T W`` (the Golub-Kahan-Lanczos process) with full reorthogonalization and
    thick restarts every 64 iterations. Each iteration is one fused pass over ``W`` that reads it
    once and returns ``W^T (W x)``; batches run in lockstep and the kernel skips matrices that
    have converged. The iteration stops on the residual of the Ritz pair, not on the change of
    the estimate.

    Parameters
    ----------
    W : array_like, shape (n, m) or (B, n, m)
        float32 or float64 (computed in that dtype, with float64 sums); integer or bool input is
        computed in float64. Non-contiguous input is copied once. ``W`` is never modified.
    tol : float
        Relative residual tolerance ``||W^T u - sigma v|| <= tol * sigma`` (> 0). sigma_1 is then
        accurate to about ``tol`` (usually far better: the error is quadratic in the residual).
    maxiter : int, optional
        Maximum number of passes over ``W`` (default 1000).
    v0 : array_like, optional
        Starting vector, shape ``(m,)`` or ``(B, m)`` (e.g. the previous ``v`` for a warm start).
        Default: a fixed standard normal vector (results are deterministic).
    return_vectors : bool
        Also return the singular vectors ``u`` and ``v``.
    backend : {"auto", "cython", "numba", "numpy"}
        Kernel backend of the fused pass.

    Returns
    -------
    SpectralResult
        ``(value, u, v, iterations, converged, residual)``; arrays of shape ``(B,)`` for a batch.

    Raises
    ------
    ValueError
        ``W`` not 2-D/3-D, empty or non-finite; ``tol <= 0``; ``maxiter < 1``; bad ``v0``.
    TypeError
        Complex or other unsupported dtypes.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import spectral_norm
    >>> W = np.random.default_rng(0).standard_normal((300, 200))
    >>> res = spectral_norm(W)
    >>> bool(res.converged), bool(abs(res.value - np.linalg.norm(W, 2)) < 1e-6 * res.value)
    (True, True)
    >>> spectral_norm(np.zeros((3, 3))).value
    0.0
    >>> spectral_norm(np.stack([np.eye(4), 2 * np.eye(4)])).value
    array([1., 2.])
    """
    tol = check_positive(tol, "tol")
    maxiter = _maxiter(maxiter, _DEFAULT_MAXITER_NORM)
    W3, batched = _as_stack(W)
    B, n, m = W3.shape
    kern = _kernels(backend)
    W3, ex = _rescaled(W3)  # singular vectors do not change; values scale back below
    theta, resid, iters, conv, vecs = _lanczos_norm(W3, kern, tol, maxiter, v0, return_vectors)
    value = np.ldexp(np.sqrt(theta), -ex)
    u = v = None
    if return_vectors:
        v = np.empty((B, m), dtype=W3.dtype)
        for b in range(B):
            nrm = np.linalg.norm(vecs[b])
            if nrm > 0:
                v[b] = vecs[b] / nrm
            else:  # cannot happen for a unit start vector; keep a unit vector anyway
                v[b] = 0
                v[b, 0] = 1
        u = np.empty((B, n), dtype=W3.dtype)
        kern.matvec(W3, v, u, np.arange(B, dtype=np.int64), _threads_for(W3.size))
        un = np.linalg.norm(u.astype(np.float64), axis=1)
        for b in range(B):
            if un[b] > 0:
                u[b] /= un[b]
            else:  # zero matrix: any unit vector is a singular vector
                u[b] = 0
                u[b, 0] = 1
        if not batched:
            u, v = u[0], v[0]
    if batched:
        return SpectralResult(value, u, v, iters, conv, resid)
    return SpectralResult(
        float(value[0]), u, v, int(iters[0]), bool(conv[0]), float(resid[0])
    )


# --------------------------------------------------------------------------------------------
# spectral radius: Krylov-Schur type restarted Arnoldi on W
# --------------------------------------------------------------------------------------------


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


def _trust_krylov(Hm: np.ndarray, ev: np.ndarray, cond: np.ndarray):
    """Whether the Krylov error estimate of a converged run can be trusted: True, or the reason
    (a string) why not.

    The estimate ``cond_1 * rho_1`` uses the condition number of the dominant Ritz value *within
    the Krylov space*. On strongly non-normal matrices (Jordan blocks, triangular matrices,
    badly conditioned similarity transforms) that misses the true sensitivity: Arnoldi then
    converges, with a tiny residual, to a point of the pseudospectrum that is no eigenvalue
    (J(0.5) of order 150 gives 1.28). Such runs show the non-normality in the projected matrix
    itself: a large relative departure from normality ``(||H||_F^2 - sum |theta_i|^2) /
    ||H||_F^2`` or an ill-conditioned dominant Ritz value. Random matrices stay far below both
    limits (at most 0.28 and 9 at n = 129..1024; see ``_TRUST_DEPARTURE`` and ``_TRUST_COND``).
    """
    fro2 = float(np.sum(Hm * Hm))
    if fro2 <= 0.0:  # zero projected matrix (the zero matrix): exact
        return True
    departure = max(fro2 - float(np.sum(np.abs(ev) ** 2)), 0.0) / fro2
    if not np.isfinite(departure) or departure > _TRUST_DEPARTURE:
        return f"departure from normality {departure:.2f} of the projected matrix"
    if not np.isfinite(cond[0]) or cond[0] > _TRUST_COND:
        return f"dominant Ritz value condition number {cond[0]:.3g}"
    return True


def _arnoldi_radius(W1, kern, tol, maxiter, seed=0):
    """Krylov-Schur restarted Arnoldi on one matrix (W1 has shape (1, n, n)).

    Returns (radius, eigenvalue, matvecs, converged); ``converged`` is True, False (budget
    spent) or a string saying why the result cannot be trusted: converged by the Krylov
    estimate but :func:`_trust_krylov` rejects it, or the restart lost invariance, where the
    Ritz values are meaningless and radius and eigenvalue come back NaN.
    """
    n = W1.shape[1]
    dtype = W1.dtype
    nt = _threads_for(W1.size)
    ncv = min(n - 1, _ARNOLDI_NCV)
    nev = min(_ARNOLDI_NEV, max(1, ncv // 3))
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
    eps = np.finfo(dtype).eps
    k = 0
    mv = 0
    hscale = 1e-300  # running estimate of ||H|| for the invariant-subspace test
    while True:
        invariant = False
        j = k
        for j in range(k, ncv):
            kern.matvec(W1, V[j : j + 1], y, active, nt)
            mv += 1
            kern.orth_step(V3, j, y, hbuf, beta_buf, active, nt)  # V[j + 1] = y / beta
            H[: j + 1, j] = hbuf[0, : j + 1]
            beta = float(beta_buf[0])
            H[j + 1, j] = beta
            hscale = max(hscale, beta, abs(float(H[j, j])))
            if beta <= 16 * eps * hscale:  # invariant subspace: the Ritz values are exact
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
            return scale, complex(ev[0]), mv, _trust_krylov(Hm, ev, cond)
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
        if not lost <= _RESTART_INVARIANCE * tol:  # no estimate at all (|theta| > ||W|| seen)
            return math.nan, complex(math.nan, math.nan), mv, (
                f"restart basis not invariant ({lost:.1e})")
        b = H[size, :size] @ Q
        # V[:k] = Q^T V[:size] without BLAS (see the thread policy above)
        V[:k] = np.einsum("ji,jn->in", Q.astype(dtype), V[:size], optimize=False)
        V[k] = V[size]
        H[:] = 0.0
        H[:k, :k] = G
        H[k, :k] = b


def _rescaled(W3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W3 * 2**ex[b] per matrix, ex)`` with each matrix's ``max |entry|`` brought near 1 when
    it lies outside ``[2**-_SCALE_EXP, 2**_SCALE_EXP]`` (ex 0 otherwise; no copy if none does).

    The float32 kernels form products and squares in float32: entries around 1e-30 underflow
    (a 1e-30-scaled random matrix came back with radius 1e-24, converged; its spectral norm
    with 0.0, converged) and entries around 1e30 overflow (NaN, converged). Scaling by a power
    of two is exact, so eigenvalues and singular values scale back exactly with ``ldexp``.
    """
    # two read passes, no |W| temporary; about 2 of the ~50 W passes a norm or radius costs
    amax = np.maximum(W3.max(axis=(1, 2)), -W3.min(axis=(1, 2))).astype(np.float64)
    ex = np.zeros(W3.shape[0], dtype=np.int64)
    out_of_range = (amax > 0) & ((amax < 2.0**-_SCALE_EXP) | (amax > 2.0**_SCALE_EXP))
    if not out_of_range.any():
        return W3, ex
    ex[out_of_range] = -np.frexp(amax[out_of_range])[1]
    return np.ldexp(W3, ex[:, None, None]).astype(W3.dtype, copy=False), ex


def _bracket(W1, kern, tol):
    """Singular-value bracket for nearly orthogonal (up to scale) matrices, else None.

    One fused pass decides whether ``W^T W`` is close to a multiple of the identity; only then
    Lanczos on both ends of its spectrum runs. If ``sigma_max - sigma_min <= tol * sigma_max``
    every eigenvalue has modulus within that bracket, so the radius is known to ``tol``.
    Returns ``(sigma_max, matvecs)`` or ``None``.
    """
    from .lanczos import lanczos_extremes

    n = W1.shape[1]
    dtype = W1.dtype
    nt = _threads_for(W1.size)
    x = np.random.default_rng(1).standard_normal((1, n)).astype(dtype)
    x /= np.linalg.norm(x)
    t = np.empty((1, n), dtype=dtype)
    yv = np.empty((1, n), dtype=dtype)
    work = np.empty(kern.work_shape(1, n, n, nt))
    active = np.zeros(1, dtype=np.int64)
    kern.wtwv(W1, x, t, yv, active, work, nt)
    c = float(yv[0].astype(np.float64) @ x[0].astype(np.float64))
    r = float(np.linalg.norm(yv[0].astype(np.float64) - c * x[0].astype(np.float64)))
    if c <= 0 or r > 1e-2 * c:
        return None

    def op(v):
        kern.wtwv(W1, v[None].astype(dtype), t, yv, active, work, nt)
        return yv[0].astype(np.float64)

    res = lanczos_extremes(op, n, which="both", tol=tol / 4, maxiter=min(n, 60))
    if not res.converged:
        return None
    smax = np.sqrt(max(res.largest[0], 0.0))
    smin = np.sqrt(max(res.smallest[0], 0.0))
    if smax - smin <= tol * smax:
        return float(smax), 1 + res.iterations
    return None


def _dense_radius(Ws: np.ndarray, tol: float):
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


def spectral_radius(
    W: object,
    *,
    tol: float = 1e-6,
    maxiter: int | None = None,
    backend: str = "auto",
) -> RadiusResult:
    """Spectral radius ``max |lambda|`` of a square matrix or of every matrix of a batch.

    For order <= 128 LAPACK (``np.linalg.eigvals``) answers directly. Larger matrices run a
    Krylov-Schur type restarted Arnoldi method (basis 60, the 6 eigenvalues of largest modulus
    wanted, half the basis kept at each restart, conjugate pairs never split) whose matrix-vector
    products are the backend's compiled kernel. A Ritz value counts as converged when its
    residual times its estimated condition number is below ``tol * |lambda_max|``, i.e. on its
    estimated error, not on its residual alone (random ``W`` has eigenvalue condition numbers
    around ``sqrt(n)``). Matrices that are orthogonal up to scale (every ``|lambda|`` equal) are
    recognised by a singular-value bracket. If the Krylov method does not converge within the
    default budget, LAPACK answers; with an explicit ``maxiter`` the best estimate is returned
    with ``converged=False`` instead. A converged Krylov run whose projected matrix is strongly
    non-normal (Jordan blocks, triangular matrices, badly conditioned similarity transforms:
    there Arnoldi can converge to a pseudospectral point that is no eigenvalue) is not trusted:
    LAPACK answers and its condition-aware error bound decides ``converged`` (with an explicit
    ``maxiter``: the Krylov estimate with ``converged=False``, or NaN where the Krylov-Schur
    restart broke down and left no estimate).

    Parameters
    ----------
    W : array_like, shape (n, n) or (B, n, n)
        float32 or float64 (computed in that dtype, Krylov bookkeeping in float64); integer or
        bool input is computed in float64. ``W`` is never modified.
    tol : float
        Relative accuracy wanted for the radius (> 0).
    maxiter : int, optional
        Maximum number of matrix-vector products per matrix. Default: ``max(3000, 20 n)``, then
        the dense fallback.
    backend : {"auto", "cython", "numba", "numpy"}
        Kernel backend of the matrix-vector products.

    Returns
    -------
    RadiusResult
        ``(value, eigenvalue, iterations, converged)``; arrays of shape ``(B,)`` for a batch.

    Raises
    ------
    ValueError
        ``W`` not 2-D/3-D, not square, empty or non-finite; ``tol <= 0``; ``maxiter < 1``.
    TypeError
        Complex or other unsupported dtypes.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import spectral_radius
    >>> R = np.array([[0.0, -2.0], [2.0, 0.0]])       # eigenvalues +-2i
    >>> res = spectral_radius(R)
    >>> round(res.value, 12), complex(np.round(res.eigenvalue, 12)), res.converged
    (2.0, 2j, True)
    >>> W = np.random.default_rng(0).standard_normal((400, 400)) / 20
    >>> res = spectral_radius(W)
    >>> bool(res.converged), bool(abs(res.value - max(abs(np.linalg.eigvals(W)))) < 1e-6)
    (True, True)
    """
    tol = check_positive(tol, "tol")
    explicit = maxiter is not None
    W3, batched = _as_stack(W, square=True)
    B, n, _ = W3.shape
    budget = _maxiter(maxiter, max(3000, 20 * n))
    kern = _kernels(backend)
    value = np.zeros(B)
    lam = np.zeros(B, dtype=np.complex128)
    iters = np.zeros(B, dtype=np.int64)
    conv = np.zeros(B, dtype=bool)
    if n <= _DENSE_RADIUS_N:
        value[:], lam[:], conv[:] = _dense_radius(W3, tol)
    else:
        for b in range(B):
            W1, (ex,) = _rescaled(W3[b : b + 1])
            bracket = _bracket(W1, kern, tol)
            if bracket is not None:
                value[b], lam[b], iters[b], conv[b] = bracket[0], complex(np.nan, np.nan), (
                    bracket[1]
                ), True
                value[b] = np.ldexp(value[b], -ex)
                continue
            r, e, mv, ok = _arnoldi_radius(W1, kern, tol, budget)
            # ok is a string where the Krylov estimate said "converged" on a strongly non-normal
            # matrix, where that estimate cannot be trusted: LAPACK with its condition-aware
            # verdict decides instead, or (explicit maxiter: no dense fallback) converged=False.
            if ok is not True:
                if explicit:
                    ok = False
                else:
                    dv, de, dc = _dense_radius(W1, tol)
                    r, e, ok = float(dv[0]), complex(de[0]), bool(dc[0])
            value[b], lam[b], iters[b], conv[b] = r, e, mv, ok
            if ex:  # undo the exact power-of-two scaling
                value[b], lam[b] = np.ldexp(value[b], -ex), lam[b] * 2.0**-ex
    if batched:
        return RadiusResult(value, lam, iters, conv)
    return RadiusResult(float(value[0]), complex(lam[0]), int(iters[0]), bool(conv[0]))
