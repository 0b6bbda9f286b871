"""Numba kernels of the spectra family (same names and arguments as ``_cython``).

Plain loops, compiled lazily on first call (``cache=True``, no eager signatures: one
specialization per dtype). Reductions accumulate in float64 and are split into a fixed number of
chunks that depends only on ``n_threads``; partial sums are combined in chunk order, so results
are deterministic for a given thread count. The wrappers call
:func:`fastopt._threads.apply_numba_threads` before every parallel kernel.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._threads import apply_numba_threads
from . import _scalar
from ._plan import n_chunks, work_shape  # noqa: F401  (part of the kernel module API)

_FAST = {"reassoc", "contract"}  # lets LLVM vectorize the float64 reductions; no NaN assumptions


_BLOCK = 256  # products summed in the input type per lane within a block, blocks in float64


@nb.njit(cache=True, fastmath=_FAST, nogil=True, boundscheck=False)
def _dot(a, x):  # pragma: no cover - compiled
    """Dot product: products summed in the input type over blocks of 256 (a fixed trip count,
    so LLVM vectorizes the reduction), block sums added in float64 in order."""
    m = a.shape[0]
    nblk = m // _BLOCK
    s = 0.0
    for blk in range(nblk):
        o = blk * _BLOCK
        p = a[o] * x[o] * np.float32(0.0)  # input type: float32 stays float32 in a block
        for j in range(_BLOCK):
            p += a[o + j] * x[o + j]
        s += np.float64(p)
    for j in range(nblk * _BLOCK, m):
        s += np.float64(a[j]) * np.float64(x[j])
    return s


@nb.njit(cache=True, fastmath=_FAST, nogil=True, boundscheck=False)
def _dot4(a0, a1, a2, a3, x):  # pragma: no cover - compiled
    """Four dot products sharing the loads of ``x`` (same block scheme as :func:`_dot`)."""
    m = x.shape[0]
    nblk = m // _BLOCK
    s0 = s1 = s2 = s3 = 0.0
    for blk in range(nblk):
        o = blk * _BLOCK
        z = x[o] * np.float32(0.0)  # input type
        p0 = p1 = p2 = p3 = z
        for j in range(_BLOCK):
            xj = x[o + j]
            p0 += a0[o + j] * xj
            p1 += a1[o + j] * xj
            p2 += a2[o + j] * xj
            p3 += a3[o + j] * xj
        s0 += np.float64(p0)
        s1 += np.float64(p1)
        s2 += np.float64(p2)
        s3 += np.float64(p3)
    for j in range(nblk * _BLOCK, m):
        xj = np.float64(x[j])
        s0 += np.float64(a0[j]) * xj
        s1 += np.float64(a1[j]) * xj
        s2 += np.float64(a2[j]) * xj
        s3 += np.float64(a3[j]) * xj
    return s0, s1, s2, s3


@nb.njit(cache=True, fastmath=_FAST, nogil=True, boundscheck=False)
def _wtwv_rows(W, x, t, acc, r0, r1):  # pragma: no cover - compiled
    """Rows [r0, r1): t[i] = W[i] . x; acc[:m] += t[i] W[i] (4 rows per pass over acc)."""
    m = W.shape[1]
    for j in range(m):
        acc[j] = 0.0
    i = r0
    while i + 4 <= r1:
        a0 = W[i]
        a1 = W[i + 1]
        a2 = W[i + 2]
        a3 = W[i + 3]
        s0, s1, s2, s3 = _dot4(a0, a1, a2, a3, x)
        t[i] = s0
        t[i + 1] = s1
        t[i + 2] = s2
        t[i + 3] = s3
        c0 = t[i]  # the sums rounded to the input type
        c1 = t[i + 1]
        c2 = t[i + 2]
        c3 = t[i + 3]
        for j in range(m):
            acc[j] += np.float64(c0 * a0[j] + c1 * a1[j] + c2 * a2[j] + c3 * a3[j])
        i += 4
    while i < r1:
        row = W[i]
        s = _dot(row, x)
        t[i] = s
        for j in range(m):
            acc[j] += s * np.float64(row[j])
        i += 1


@nb.njit(cache=True, parallel=True, fastmath=_FAST, nogil=True)
def _wtwv_batch(W, x, t, y, active, work):  # pragma: no cover - compiled
    nact = active.shape[0]
    n = W.shape[1]
    m = W.shape[2]
    for a in nb.prange(nact):
        b = active[a]
        _wtwv_rows(W[b], x[b], t[b], work[a], 0, n)
        for j in range(m):
            y[b, j] = work[a, j]


@nb.njit(cache=True, parallel=True, fastmath=_FAST, nogil=True)
def _wtwv_split(W, x, t, y, active, work, nch):  # pragma: no cover - compiled
    n = W.shape[1]
    m = W.shape[2]
    for a in range(active.shape[0]):
        b = active[a]
        Wb = W[b]
        for c in nb.prange(nch):
            _wtwv_rows(Wb, x[b], t[b], work[c], (c * n) // nch, ((c + 1) * n) // nch)
        for j in range(m):  # serial: a second parallel region (a barrier) costs more than this
            s = 0.0
            for k in range(nch):
                s += work[k, j]
            y[b, j] = s


@nb.njit(cache=True, parallel=True, fastmath=_FAST, nogil=True)
def _matvec(W, x, y, active, nch):  # pragma: no cover - compiled
    n = W.shape[1]
    total = active.shape[0] * nch
    for c in nb.prange(total):
        b = active[c // nch]
        k = c % nch
        xb = x[b]
        for i in range((k * n) // nch, ((k + 1) * n) // nch):
            y[b, i] = _dot(W[b, i], xb)


@nb.njit(cache=True, parallel=True, fastmath=_FAST, nogil=True)
def _orth(V, j, w, h, beta, active):  # pragma: no cover - compiled
    k = j + 1
    m = V.shape[2]
    for a in nb.prange(active.shape[0]):
        b = active[a]
        Vb = V[b]
        wb = w[b]
        for i in range(2 * k):
            h[b, i] = 0.0
        for _ in range(2):
            for r in range(k):
                c = _dot(Vb[r], wb)
                h[b, r] += c
                h[b, k + r] = c
            for r in range(k):
                c = h[b, k + r]
                row = Vb[r]
                for i in range(m):
                    wb[i] -= c * row[i]
        nrm = np.sqrt(_dot(wb, wb))
        beta[b] = nrm
        if nrm > 0 and k < V.shape[1]:
            inv = 1.0 / nrm
            for i in range(m):
                Vb[k, i] = wb[i] * inv


_helpers = _scalar.compiled(nb.njit(cache=True, nogil=True))
_sturm_below = _helpers.sturm_below
_tridiag_top_one = _helpers.tridiag_top_one


@nb.njit(cache=True, parallel=True, nogil=True)
def _tridiag_top(alpha, beta, k, active, theta, s2, scratch):  # pragma: no cover - compiled
    for a in nb.prange(active.shape[0]):
        b = active[a]
        th, s = _tridiag_top_one(alpha[b], beta[b], k, scratch[a])
        theta[b] = th
        s2[b] = s


@nb.njit(cache=True, fastmath=_FAST, nogil=True, boundscheck=False)
def _sum(a, r0, r1):  # pragma: no cover - compiled
    v = a[r0:r1]  # indices from 0: provably non-negative, so LLVM vectorizes
    size = v.shape[0]
    nblk = size // _BLOCK
    s = 0.0
    for blk in range(nblk):
        o = blk * _BLOCK
        p = v[o] * np.float32(0.0)  # input type
        for j in range(_BLOCK):
            p += v[o + j]
        s += np.float64(p)
    for j in range(nblk * _BLOCK, size):
        s += np.float64(v[j])
    return s


@nb.njit(cache=True, parallel=True, fastmath=_FAST, nogil=True)
def _read_floor(a, nch):  # pragma: no cover - compiled
    size = a.shape[0]
    part = np.zeros(nch)
    for c in nb.prange(nch):
        part[c] = _sum(a, (c * size) // nch, ((c + 1) * size) // nch)
    total = 0.0
    for c in range(nch):
        total += part[c]
    return total


def wtwv(W, x, t, y, active, work, n_threads, n_workers=0):
    """Fused ``t[b] = W[b] @ x[b]`` and ``y[b] = W[b].T @ t[b]`` for ``b`` in ``active``.

    One row-wise pass over each ``W[b]`` (each row read once, used for both products). ``work`` is
    float64 scratch of shape :func:`work_shape` ``(len(active), n, m, n_threads)``. The work is
    split for ``n_threads`` (the result depends on it only) and run by ``n_workers`` threads
    (0: ``n_threads``).
    """
    if active.shape[0] == 0 or W.shape[1] == 0 or W.shape[2] == 0:
        return
    n_threads = max(1, min(int(n_threads), _pool_size()))
    _use_threads(_workers(n_threads, n_workers))
    nch = n_chunks(W.shape[1], n_threads)
    if active.shape[0] >= n_threads or nch == 1:
        _wtwv_batch(W, x, t, y, active, work)
    else:
        _wtwv_split(W, x, t, y, active, work, nch)


def matvec(W, x, y, active, n_threads, n_workers=0):
    """``y[b] = W[b] @ x[b]`` for ``b`` in ``active`` (rows in parallel; no cross-thread sums)."""
    if active.shape[0] == 0 or W.shape[1] == 0:
        return
    n_threads = max(1, min(int(n_threads), _pool_size()))
    _use_threads(_workers(n_threads, n_workers))
    _matvec(W, x, y, active, n_chunks(W.shape[1], n_threads))


def orth_step(V, j, w, h, beta, active, n_threads, n_workers=0):
    """Full reorthogonalization step of a Lanczos/Arnoldi basis, for ``b`` in ``active``.

    Two classical Gram-Schmidt passes of ``w[b]`` against ``V[b, :j+1]``; ``h[b, :j+1]`` receives
    the summed coefficients (columns beyond are scratch), ``beta[b] = ||w[b]||`` afterwards and
    ``V[b, j+1] = w[b] / beta[b]`` (unchanged when ``beta[b] == 0``). Matrices run in parallel.
    """
    if active.shape[0] == 0:
        return
    # one matrix per thread: more threads than active matrices would only wait at the barrier
    _use_threads(min(_workers(n_threads, n_workers), active.shape[0]))
    _orth(V, j, w, h, beta, active)


def tridiag_top(alpha, beta, k, active, theta, s2, scratch, n_threads, n_workers=0):
    """Largest eigenvalue and its eigenvector's squared last component, per tridiagonal
    (bisection on Sturm counts and ratio recurrences; see the Cython kernel)."""
    if active.shape[0] == 0 or k == 0:
        return
    _use_threads(min(_workers(n_threads, n_workers), active.shape[0]))
    _tridiag_top(alpha, beta, k, active, theta, s2, scratch)


def read_floor(a, n_threads, n_workers=0):
    """Sum of ``a`` read once in parallel: the read-bandwidth floor of a pass over ``W``."""
    n_threads = max(1, min(int(n_threads), _pool_size()))
    _use_threads(_workers(n_threads, n_workers))
    return float(_read_floor(a, n_threads))


def simd_level():
    """SIMD level LLVM compiles these kernels for (the host CPU): 4 (AVX-512), 3 (AVX2 + FMA)
    or 0, in the numbering of the Cython module's ``simd_level``."""
    import llvmlite.binding as llvm

    feats = llvm.get_host_cpu_features()
    if feats.get("avx512f") and feats.get("avx512bw") and feats.get("avx512vl"):
        return 4
    if feats.get("avx2") and feats.get("fma"):
        return 3
    return 0


def _pool_size() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _workers(n_threads: int, n_workers: int) -> int:
    n_threads = max(1, int(n_threads))
    return n_threads if n_workers <= 0 or n_workers > n_threads else int(n_workers)


def _use_threads(n_threads: int) -> int:
    """Run the next parallel kernel on exactly the caller's ``n_threads`` (capped by Numba's
    pool): chunk counts and the ``work`` scratch the caller sized depend on it."""
    return apply_numba_threads(max(1, int(n_threads)))
