"""Spectral norm and spectral radius of (recurrent) weight matrices, single or batched: the
front end (input checks, backend, rescaling, which method answers, result assembly).

The methods live one per module: :mod:`._golub_kahan` (Lanczos on ``W^T W`` for sigma_1),
:mod:`._krylov_schur` (restarted Arnoldi for the radius, and the singular-value bracket),
:mod:`._dense` (LAPACK with its error bound), all built on :mod:`._lanczos_core`. Every backend
module (``_cython``, ``_numba``, ``fastopt.reference.spectral``) has the same kernel functions,
so nothing here depends on which one runs.
"""

from __future__ import annotations

import numpy as np

from .. import _dispatch
from .._validate import (
    as_matrix_stack,
    as_start_vectors,
    check_bool,
    check_int,
    check_real,
)
from . import _dense
from ._common import Team, blas_single_thread, kernels, rescaled
from ._golub_kahan import DEFAULT_MAXITER, checked_residual, default_start, lanczos_norm
from ._krylov_schur import arnoldi_radius, bracket
from ._lanczos_core import unit_rows
from ._results import RadiusResult, SpectralResult

__all__ = ["RadiusResult", "SpectralResult", "spectral_norm", "spectral_radius"]

# Below this order spectral_radius uses LAPACK (np.linalg.eigvals) directly: it is faster there.
DENSE_RADIUS_N = 128
# spectral_norm's final check accepts a residual computed in W's dtype up to
# max(tol, this * eps(dtype)): below that the dtype cannot show the residual.
CHECK_EPS_FACTOR = 64


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
    tol = check_real(tol, "tol", positive=True)
    maxiter = DEFAULT_MAXITER if maxiter is None else check_int(maxiter, "maxiter", minimum=1)
    return_vectors = check_bool(return_vectors, "return_vectors")
    if _dispatch.wants_device(W, backend):
        return _device_norm(W, tol, maxiter, v0, return_vectors, backend)
    W3, batched = as_matrix_stack(W, "W")
    B, n, m = W3.shape
    user_start = None if v0 is None else as_start_vectors(v0, "v0", B, m)
    kern = kernels(backend)

    with blas_single_thread():  # the solver's LAPACK calls are tiny (see _common)
        W3, ex = rescaled(W3)  # singular vectors do not change; values scale back below

    def reruns(again):  # the matrices to run again, in one batch
        yield again, np.ascontiguousarray(W3[again])

    return _solve_norm(W3, ex, kern, tol, maxiter, user_start, Team(W3.size), reruns,
                       return_vectors, batched, lambda a: a)


def _solve_norm(W3, ex, kern, tol, maxiter, user_start, team, reruns, return_vectors: bool,
                batched: bool, as_result) -> SpectralResult:
    """Golub-Kahan-Lanczos on the rescaled stack ``W3`` (exponents ``ex``), shared by the host
    and device front ends: ``reruns(indices)`` yields ``(indices, sub-stack)`` pairs for the
    matrices to run again from the default start, ``as_result`` turns a host result array into
    the caller's kind."""
    B, n, m = W3.shape
    dtype = np.dtype(W3.dtype)
    with blas_single_thread():
        start = default_start(B, m, dtype) if user_start is None else unit_rows(user_start, dtype)
        theta, resid, iters, conv, vecs, exact = lanczos_norm(W3, kern, tol, maxiter, start, team)
        if user_start is not None:
            # An invariant Krylov space is exact only for the directions the start vector reaches:
            # a start in the null space of W stops at once with sigma = 0. Such matrices run again
            # from the default start (a start in another invariant subspace is not detected: the
            # warm start from a converged v, the usual case, must stay one pass).
            again = np.flatnonzero(exact & (theta <= np.finfo(np.float64).tiny))
            for idx, Wa in (reruns(again) if again.size else ()):
                th2, re2, it2, cv2, ve2, _ = lanczos_norm(
                    Wa, kern, tol, maxiter, default_start(len(idx), m, dtype), team)
                better = th2 > theta[idx]
                sel = idx[better]
                theta[sel], resid[sel], conv[sel], vecs[sel] = (
                    th2[better], re2[better], cv2[better], ve2[better])
                iters[idx] += it2
        # converged only if the returned vector's residual, computed in W's dtype, is within tol
        # (or within the dtype's roundoff where tol asks for more than the dtype can show)
        checked = checked_residual(W3, kern, vecs, team)
        conv &= checked <= max(tol, CHECK_EPS_FACTOR * float(np.finfo(dtype).eps))
    value = np.ldexp(np.sqrt(theta), -ex)
    u = v = None
    if return_vectors:
        with blas_single_thread():
            u, v = singular_vectors(W3, kern, vecs, team)
        if not batched:
            u, v = u[0], v[0]
        u, v = as_result(u), as_result(v)
    if batched:
        return SpectralResult(as_result(value), u, v, iters, conv, resid)
    return SpectralResult(
        float(value[0]), u, v, int(iters[0]), bool(conv[0]), float(resid[0])
    )


def singular_vectors(W3, kern, vecs, team):
    """Unit right singular vectors from the Ritz vectors ``vecs`` and ``u = W v / ||W v||``,
    in ``W3``'s dtype (a unit vector where ``W v = 0``: the zero matrix)."""
    B, n, m = W3.shape
    v = np.empty((B, m), dtype=W3.dtype)
    ok = np.any(vecs != 0, axis=1)
    v[ok] = unit_rows(vecs[ok], W3.dtype)
    v[~ok] = 0
    v[~ok, 0] = 1
    u = np.empty((B, n), dtype=W3.dtype)
    team(kern.matvec, W3, v, u, np.arange(B, dtype=np.int64))
    ok = np.any(u != 0, axis=1)
    u[ok] = unit_rows(u[ok].astype(np.float64), W3.dtype)
    u[~ok] = 0  # zero matrix: any unit vector is a singular vector
    u[~ok, 0] = 1
    return u, v


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
    tol = check_real(tol, "tol", positive=True)
    explicit = maxiter is not None
    if _dispatch.wants_device(W, backend):
        return _device_radius(W, tol, maxiter, backend)
    W3, batched = as_matrix_stack(W, "W", square=True)
    B, n, _ = W3.shape
    budget = max(3000, 20 * n) if maxiter is None else check_int(maxiter, "maxiter", minimum=1)
    kern = kernels(backend)

    value = np.zeros(B)
    lam = np.zeros(B, dtype=np.complex128)
    iters = np.zeros(B, dtype=np.int64)
    conv = np.zeros(B, dtype=bool)
    if n <= DENSE_RADIUS_N:
        Ws, ex = rescaled(W3)  # LAPACK's norms of 1e300-entries overflow too
        with blas_single_thread():
            value[:], lam[:], conv[:] = _dense.dense_radius(Ws, tol)
        value[:] = np.ldexp(value, -ex)
        lam[:] = lam * np.ldexp(1.0, -ex)
    else:
        for b in range(B):
            W1, (ex,) = rescaled(W3[b : b + 1])
            value[b], lam[b], iters[b], conv[b] = _krylov_radius(
                W1, ex, kern, tol, budget, explicit, Team(W1.size), lambda M: M)
    if batched:
        return RadiusResult(value, lam, iters, conv)
    return RadiusResult(float(value[0]), complex(lam[0]), int(iters[0]), bool(conv[0]))


# --------------------------------------------------------------------------- device arrays
# Device input (numba.cuda, CuPy, torch CUDA; see fastopt._device): W stays on the device and
# every pass over it is a numba.cuda kernel (fastopt.spectral._cuda); the Krylov bookkeeping,
# O((n + m) * iterations), stays on the host (docs/gpu.md says what crosses the bus).


def _device_stack(W, backend, square=False):
    """(W3 device (B, n, m), batched, kind, kernel module, host_input) for the GPU path."""
    from .. import _device
    from .._validate import as_device_stack

    _dispatch.resolve_device("spectral", backend, "W")
    host = not _dispatch.is_cuda_array(W)
    kern = _dispatch.load("spectral", "cuda")
    if host:
        W3h, batched = as_matrix_stack(W, "W", square=square)
        return _device.to_device(W3h), batched, "host", kern
    kind = _device.kind_of(W)
    W3, batched = as_device_stack(_device.to_numba(W), "W", square=square)
    return W3, batched, kind, kern


def _device_checked(W3, kern, name="W"):
    """Per-matrix power-of-two exponents that bring max |W| near 1 (see ``rescaled``), and the
    rescaled device stack; raises on NaN/Inf entries."""
    from ._common import SCALE_EXP

    amax, bad = kern.absmax(W3)
    if bad:
        raise ValueError(f"{name}: contains NaN or Inf")
    ex = np.zeros(W3.shape[0], dtype=np.int64)
    out = (amax > 0) & ((amax < 2.0**-SCALE_EXP) | (amax > 2.0**SCALE_EXP))
    if not out.any():
        return W3, ex
    ex[out] = -np.frexp(amax[out])[1]
    return kern.scaled(W3, np.ldexp(1.0, ex)), ex


def _device_result(a, kind):
    """A host array ``a`` as a device array of ``kind`` (``"host"``: unchanged)."""
    from .. import _device

    if kind == "host":
        return a
    return _device.like(_device.to_device(a), kind)


def _device_norm(W, tol, maxiter, v0, return_vectors, backend):
    W3, batched, kind, kern = _device_stack(W, backend)
    B, n, m = W3.shape
    user_start = None if v0 is None else as_start_vectors(_host_copy(v0), "v0", B, m)
    W3, ex = _device_checked(W3, kern)

    def reruns(again):  # one matrix at a time: device arrays take slices, not index arrays
        for b in again:
            yield np.array([b]), W3[b : b + 1]

    # Team(0): one "thread", the device has its own parallelism
    return _solve_norm(W3, ex, kern, tol, maxiter, user_start, Team(0), reruns, return_vectors,
                       batched, lambda a: _device_result(a, kind))


def _host_copy(x):
    """A start vector or similar small input as a host array (device inputs copied)."""
    from .. import _device

    if _dispatch.is_cuda_array(x):
        return _device.to_numba(x).copy_to_host()
    return x


def _krylov_radius(W1, ex: int, kern, tol: float, budget: int, explicit: bool, team,
                   to_host) -> tuple[float, complex, int, bool]:
    """``(value, eigenvalue, products, converged)`` of one rescaled matrix ``W1`` (shape
    ``(1, n, n)``, scaled by ``2**ex``): the bracket for a dominant real pair, else Arnoldi with
    LAPACK deciding where the Krylov estimate cannot be trusted; ``to_host(W1)`` is the matrix
    LAPACK gets (a device matrix crosses the bus only then)."""
    with blas_single_thread():  # a Team per method: each compares its own passes
        found = bracket(W1, kern, tol, team)
    if found is not None:
        return float(np.ldexp(found[0], -ex)), complex(np.nan, np.nan), int(found[1]), True
    with blas_single_thread():
        r, e, mv, ok = arnoldi_radius(W1, kern, tol, budget, team)
    # ok is a string where the Krylov estimate said "converged" on a strongly non-normal
    # matrix, where that estimate cannot be trusted: LAPACK with its condition-aware verdict
    # decides instead, or (explicit maxiter: no dense fallback) converged=False.
    if ok is not True:
        if explicit:
            ok = False
        else:
            dv, de, dc = _dense.dense_radius(to_host(W1), tol)
            r, e, ok = float(dv[0]), complex(de[0]), bool(dc[0])
    if ex:  # undo the exact power-of-two scaling
        r, e = np.ldexp(r, -ex), e * 2.0**-ex
    return r, e, mv, ok


def _device_radius(W, tol, maxiter, backend):
    explicit = maxiter is not None
    W3, batched, kind, kern = _device_stack(W, backend, square=True)
    B, n, _ = W3.shape
    budget = max(3000, 20 * n) if maxiter is None else check_int(maxiter, "maxiter", minimum=1)
    if n <= DENSE_RADIUS_N:  # LAPACK answers small orders: n^2 entries cross the bus once
        host = W3.copy_to_host()
        return spectral_radius(host if batched else host[0], tol=tol, maxiter=maxiter,
                               backend="numpy")
    W3, ex_all = _device_checked(W3, kern)
    value = np.zeros(B)
    lam = np.zeros(B, dtype=np.complex128)
    iters = np.zeros(B, dtype=np.int64)
    conv = np.zeros(B, dtype=bool)
    for b in range(B):  # Team(0): one "thread", the device has its own parallelism
        value[b], lam[b], iters[b], conv[b] = _krylov_radius(
            W3[b : b + 1], ex_all[b], kern, tol, budget, explicit, Team(0),
            lambda M: M.copy_to_host())
    if batched:
        return RadiusResult(value, lam, iters, conv)
    return RadiusResult(float(value[0]), complex(lam[0]), int(iters[0]), bool(conv[0]))
