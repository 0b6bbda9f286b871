"""numba.cuda kernels of the spectra family (same kernel interface as ``_cython``/``_numba``).

``W`` is a numba device array (B, n, m) that never leaves the device; the vectors are the host
arrays of the Krylov bookkeeping (the Lanczos/Arnoldi bases, O(n * iterations), stay on the
host). Per pass over ``W``, ``wtwv`` copies ``x`` (B x m) to the device and ``t`` (B x n) and
``y`` (B x m) back; ``matvec`` copies ``x`` down and ``y`` back. ``orth_step`` (host basis) runs
the CPU kernels; ``tridiag_top`` runs on the device from the scalar helpers shared with the
Numba kernels (``_scalar.py``).

The fused pass: block (a, c) owns rows ``[c n / nch, (c + 1) n / nch)`` of matrix ``active[a]``,
taken ``rows`` (8) at a time: each group of ``group`` (32) threads forms one ``t_i = W_i . x`` by
a shared-memory tree reduction (no warp shuffles: the simulator has none), then every thread adds
``t_i W_i`` of those rows to the columns it owns of the block's float64 partial row of ``work``
(no atomics). A second kernel adds the ``nch`` partial rows in chunk order, so results are
deterministic.

``THREADS_PER_BLOCK`` (a power of two) and ``TARGET_BLOCKS`` are read at each call; tests shrink
them so that multi-block paths run on tiny inputs in the simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""

from __future__ import annotations

import math
import threading
from functools import cache

import numpy as np
from numba import cuda, float64

from . import _scalar
from ._plan import n_chunks, work_shape  # noqa: F401  (part of the kernel module API)

THREADS_PER_BLOCK = 256
TARGET_BLOCKS = 264  # about two blocks per SM of a large GPU

# Device scratch of the per-pass kernels, reused across the passes of a solve (a device
# allocation per pass would cost more than a small pass); one set per host thread.
_scratch = threading.local()


def _buffer(key: str, shape: tuple, dtype) -> object:
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    a = bufs.get(key)
    if a is None or tuple(a.shape) != shape or np.dtype(a.dtype) != dtype:
        a = bufs[key] = cuda.device_array(shape, dtype)
    return a


def _upload(key: str, host: np.ndarray):
    """``host`` copied into the reusable device buffer ``key``."""
    host = np.ascontiguousarray(host)
    d = _buffer(key, host.shape, host.dtype)
    d.copy_to_device(host)
    return d


@cache
def _kernels(tpb: int):
    helpers = _scalar.compiled(cuda.jit(device=True))
    top_one = helpers.tridiag_top_one

    # Rows go through a block `rows` at a time: group g (of `group` threads) forms the dot
    # product of row base + g by a tree in shared memory, so one set of barriers serves
    # `rows` rows; then every thread adds those rows, times their t_i, to the columns it owns.
    group = max(1, min(32, tpb // 2))
    rows = tpb // group

    @cuda.jit(device=True)
    def row_dots(W, x, a, b, base, r1, sh):
        """sh[g * group] = W[b, base + g] . x[a] for the `rows` rows from base (0 past r1)."""
        tid = cuda.threadIdx.x
        g = tid // group
        lane = tid - g * group
        i = base + g
        s = 0.0
        if i < r1:
            for j in range(lane, W.shape[2], group):
                s += float64(W[b, i, j]) * float64(x[a, j])
        sh[tid] = s
        cuda.syncthreads()
        step = group // 2
        while step > 0:
            if lane < step:
                sh[tid] += sh[tid + step]
            cuda.syncthreads()
            step //= 2

    @cuda.jit
    def wtwv_rows(W, x, t, work, active, nch):
        a = cuda.blockIdx.x
        c = cuda.blockIdx.y
        b = active[a]
        n = W.shape[1]
        m = W.shape[2]
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(tpb, float64)
        r0 = (c * n) // nch
        r1 = ((c + 1) * n) // nch
        for j in range(tid, m, tpb):
            work[a, c, j] = 0.0
        for base in range(r0, r1, rows):
            row_dots(W, x, a, b, base, r1, sh)
            g = tid // group
            if tid - g * group == 0 and base + g < r1:
                t[a, base + g] = sh[tid]
            for j in range(tid, m, tpb):  # the rows again, from L1/L2
                acc = work[a, c, j]
                for r in range(rows):
                    if base + r < r1:
                        acc += sh[r * group] * float64(W[b, base + r, j])
                work[a, c, j] = acc
            cuda.syncthreads()  # sh is rewritten by the next rows

    @cuda.jit
    def sum_chunks(work, y):
        a = cuda.blockIdx.y
        j = cuda.blockIdx.x * tpb + cuda.threadIdx.x
        if j < y.shape[1]:
            s = 0.0
            for c in range(work.shape[1]):
                s += work[a, c, j]
            y[a, j] = s

    @cuda.jit
    def matvec_rows(W, x, y, active, nch):
        a = cuda.blockIdx.x
        c = cuda.blockIdx.y
        b = active[a]
        n = W.shape[1]
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(tpb, float64)
        r1 = ((c + 1) * n) // nch
        for base in range((c * n) // nch, r1, rows):
            row_dots(W, x, a, b, base, r1, sh)
            g = tid // group
            if tid - g * group == 0 and base + g < r1:
                y[a, base + g] = sh[tid]
            cuda.syncthreads()

    @cuda.jit
    def rmatvec_rows(W, u, y):
        # y[j] = sum_i W[i, j] u[i] for one matrix: thread per column, rows in order
        j = cuda.grid(1)
        if j < W.shape[1]:
            s = 0.0
            for i in range(W.shape[0]):
                s += float64(W[i, j]) * float64(u[i])
            y[j] = s

    @cuda.jit
    def tridiag(alpha, beta, k, active, theta, s2, scratch):
        a = cuda.grid(1)
        if a < active.shape[0]:
            b = active[a]
            th, s = top_one(alpha[b], beta[b], k, scratch[a])
            theta[a] = th
            s2[a] = s

    @cuda.jit
    def absmax_rows(W, part, bad):
        # per (matrix, block): max |W| over a strided share; bad = 1 on NaN/Inf
        b = cuda.blockIdx.x
        blk = cuda.blockIdx.y
        n = W.shape[1]
        m = W.shape[2]
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(tpb, float64)
        amax = 0.0
        flag = 0.0
        step = cuda.gridDim.y * tpb
        idx = blk * tpb + tid
        while idx < n * m:
            v = abs(float64(W[b, idx // m, idx % m]))
            if not v <= 1.7976931348623157e308:  # NaN or Inf
                flag = 1.0
            elif v > amax:
                amax = v
            idx += step
        sh[tid] = amax
        cuda.syncthreads()
        s = tpb // 2
        while s > 0:
            if tid < s and sh[tid + s] > sh[tid]:
                sh[tid] = sh[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            part[b, blk] = sh[0]
        cuda.syncthreads()
        sh[tid] = flag
        cuda.syncthreads()
        s = tpb // 2
        while s > 0:
            if tid < s:
                sh[tid] = max(sh[tid], sh[tid + s])
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            bad[b, blk] = sh[0]

    @cuda.jit
    def scale_rows(W, factor, out):
        # out[b] = W[b] * factor[b] (factor a power of two: exact)
        n = W.shape[1]
        m = W.shape[2]
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for idx in range(start, W.shape[0] * n * m, stride):
            b = idx // (n * m)
            r = idx - b * n * m
            out[b, r // m, r % m] = float64(W[b, r // m, r % m]) * factor[b]

    @cuda.jit
    def scale_flat(x, factor, out):
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for idx in range(start, x.shape[0], stride):
            out[idx] = float64(x[idx]) * factor

    return dict(wtwv_rows=wtwv_rows, sum_chunks=sum_chunks, matvec_rows=matvec_rows,
                rmatvec_rows=rmatvec_rows, tridiag=tridiag, absmax_rows=absmax_rows,
                scale_rows=scale_rows, scale_flat=scale_flat)


def _row_chunks(n_rows: int, n_active: int) -> int:
    """Row chunks per matrix: about TARGET_BLOCKS blocks over the batch, at least one row each."""
    return max(1, min(n_rows, math.ceil(TARGET_BLOCKS / max(1, n_active))))


def wtwv(W, x, t, y, active, work, n_threads=1, n_workers=0):
    """Fused ``t[b] = W[b] @ x[b]``, ``y[b] = W[b].T @ t[b]`` for ``b`` in ``active``.

    ``W`` is a device array; ``x``, ``t``, ``y`` and ``active`` are host arrays (``work`` and
    the thread arguments are unused: the device has its own scratch).
    """
    na = active.shape[0]
    if na == 0 or W.shape[1] == 0 or W.shape[2] == 0:
        return
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    n, m = W.shape[1], W.shape[2]
    nch = _row_chunks(n, na)
    act = np.ascontiguousarray(active, dtype=np.int64)
    xd = _upload("x", x[act])
    td = _buffer("t", (na, n), x.dtype)
    yd = _buffer("y", (na, m), np.float64)
    wd = _buffer("work", (na, nch, m), np.float64)
    k["wtwv_rows"][(na, nch), tpb](W, xd, td, wd, _upload("active", act), nch)
    k["sum_chunks"][(math.ceil(m / tpb), na), tpb](wd, yd)
    t[act] = td.copy_to_host()
    y[act] = yd.copy_to_host().astype(y.dtype, copy=False)


def matvec(W, x, y, active, n_threads=1, n_workers=0):
    """``y[b] = W[b] @ x[b]`` for ``b`` in ``active`` (``W`` on the device, vectors on the host)."""
    na = active.shape[0]
    if na == 0 or W.shape[1] == 0:
        return
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    n = W.shape[1]
    nch = _row_chunks(n, na)
    act = np.ascontiguousarray(active, dtype=np.int64)
    xd = _upload("x", x[act])
    yd = _buffer("mv", (na, n), y.dtype)
    k["matvec_rows"][(na, nch), tpb](W, xd, yd, _upload("active", act), nch)
    y[act] = yd.copy_to_host()


def _cpu():
    from .. import _dispatch

    for name in ("cython", "numba"):
        if _dispatch.available("spectral", name):
            return _dispatch.load("spectral", name)
    return _dispatch.load("spectral", "numpy")


def orth_step(V, j, w, h, beta, active, n_threads=1, n_workers=0):
    """Reorthogonalization of the host basis ``V``: the CPU kernel (the basis is host data)."""
    _cpu().orth_step(V, j, w, h, beta, active, 1, 1)


def tridiag_top(alpha, beta, k, active, theta, s2, scratch, n_threads=1, n_workers=0):
    """Largest eigenvalue of each active tridiagonal and its eigenvector's squared last
    component, one device thread per matrix (the helpers of ``_scalar.py``)."""
    na = active.shape[0]
    if na == 0 or k == 0:
        return
    tpb = THREADS_PER_BLOCK
    kern = _kernels(tpb)
    act = np.ascontiguousarray(active, dtype=np.int64)
    th = _buffer("theta", (na,), np.float64)
    sd = _buffer("s2", (na,), np.float64)
    kern["tridiag"][math.ceil(na / tpb), tpb](
        _upload("alpha", alpha), _upload("beta", beta), k, _upload("active", act), th, sd,
        _buffer("scratch", (na, scratch.shape[1]), np.float64))
    theta[act] = th.copy_to_host()
    s2[act] = sd.copy_to_host()


def read_floor(a, n_threads=1, n_workers=0):  # pragma: no cover - benchmark helper
    """Not a device kernel: the CPU read floor of a host array."""
    return _cpu().read_floor(a, n_threads, n_workers)


# ----------------------------------------------------------------- front-end helpers (device W)
def absmax(W3):
    """Per matrix ``max |W|`` (float64 host array) and whether any entry is NaN/Inf."""
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    B, n, m = W3.shape
    blocks = max(1, min(64, math.ceil(n * m / (4 * tpb))))
    part = cuda.device_array((B, blocks), np.float64)
    bad = cuda.device_array((B, blocks), np.float64)
    k["absmax_rows"][(B, blocks), tpb](W3, part, bad)
    return part.copy_to_host().max(axis=1), bool(bad.copy_to_host().max() > 0)


def scaled(W3, factor):
    """A new device array ``W3[b] * factor[b]`` (host float64 factors, powers of two)."""
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    out = cuda.device_array(W3.shape, W3.dtype)
    grid = max(1, min(65535, math.ceil(W3.size / tpb)))
    k["scale_rows"][grid, tpb](W3, cuda.to_device(np.ascontiguousarray(factor, np.float64)), out)
    return out


def scale_flat(x, factor: float):
    """A new 1-D device array ``x * factor``."""
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    out = cuda.device_array(x.shape, x.dtype)
    grid = max(1, min(65535, math.ceil(x.shape[0] / tpb)))
    k["scale_flat"][grid, tpb](x, float(factor), out)
    return out


def power_step(W2, u, v, n_iter, eps):
    """``n_iter`` power iterations of torch's ``spectral_norm`` on the device matrix ``W2``
    (rows x cols) from host unit vectors ``u``, ``v``; returns the new host ``u``, ``v`` and
    ``u . W v``. Per iteration one vector of each side crosses the bus."""
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    rows, cols = W2.shape
    W3 = W2.reshape(1, rows, cols)
    act = cuda.to_device(np.zeros(1, np.int64))
    dtype = u.dtype
    nch = _row_chunks(rows, 1)

    def Wv(vec):
        yd = cuda.device_array((1, rows), np.float64)
        k["matvec_rows"][(1, nch), tpb](W3, cuda.to_device(vec.reshape(1, cols)), yd, act, nch)
        return yd.copy_to_host()[0]

    for _ in range(n_iter):
        nvd = cuda.device_array(cols, np.float64)
        k["rmatvec_rows"][math.ceil(cols / tpb), tpb](W2, cuda.to_device(u), nvd)
        nv = nvd.copy_to_host()
        v = (nv / max(float(np.linalg.norm(nv)), eps)).astype(dtype)
        nu = Wv(v)
        u = (nu / max(float(np.linalg.norm(nu)), eps)).astype(dtype)
    sigma = float(np.dot(u.astype(np.float64), Wv(v)))
    return u, v, sigma
