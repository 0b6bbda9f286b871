"""numba.cuda path of ``MLP.loss_and_grad``, ``hvp`` and ``gnvp`` on device arrays.

The same passes as ``MLP._passes`` (Pearlmutter's R-operator, all k directions at once), with the
streams stored as separate contiguous arrays (forward value ``(N, n)``, R-streams ``(N, k, n)``)
so that every matrix product is a plain 2-D GEMM on a reshaped view. The matrix products go
through :mod:`._device` (CuPy or torch cuBLAS, or the numba.cuda kernel below); the fused
element-wise passes are numba.cuda kernels built from ``_scalar.py``'s formulas
(``compiled(cuda.jit(device=True))``, the same functions the Numba CPU kernels compile).
Nothing crosses the bus but the loss (one float64) and the input checks' flags.

``THREADS_PER_BLOCK`` is read at each call; tests shrink it so that multi-block launches run in
the simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda, float64

from .. import _device
from . import _scalar
from ._device import matmul as _library_matmul

THREADS_PER_BLOCK = 128
MATMUL_TILE = 16  # edge of the 2-D thread blocks of the fallback matmul kernel


@cache
def _kernels(tpb: int):
    f = _scalar.compiled(cuda.jit(device=True))
    act_fn = f.act
    logistic_fn = f.logistic
    log_sum_exp = f.log_sum_exp
    CE, MSE = _scalar.CROSS_ENTROPY, _scalar.MSE

    @cuda.jit
    def hidden_forward(Z0, ZR, has_zr, AV, C, b, act, need, k, A0, AR, D1, D2, RZ):
        N, n = Z0.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for idx in range(start, N * n, stride):
            i = idx // n
            o = idx - i * n
            s, d1, d2 = act_fn(act, float64(Z0[i, o]) + float64(b[o]))
            A0[i, o] = s
            if need >= 1:
                D1[i, o] = d1
            if need == 2:
                D2[i, o] = d2
                d1r = D1[i, o]  # the stored (model dtype) derivative, as the CPU kernels use
                for j in range(k):
                    rz = float64(AV[i, j, o]) + float64(C[j, o])
                    if has_zr:
                        rz += float64(ZR[i, j, o])
                    RZ[i, j, o] = rz
                    AR[i, j, o] = d1r * RZ[i, j, o]

    @cuda.jit
    def output_forward(Z0, ZR, has_zr, AV, C, b, loss, need, k, labels, Y, D0, DR, losses):
        N, n = Z0.shape
        i = cuda.grid(1)
        if i >= N:
            return
        inv_n = 1.0 / N
        if loss == CE:
            lse, m, ssum = log_sum_exp(Z0[i], b)
            lab = labels[i]
            losses[i] = lse - (float64(Z0[i, lab]) + float64(b[lab]))
            if need >= 1:
                for j in range(k):
                    pr = 0.0
                    for o in range(n):
                        p = math.exp(float64(Z0[i, o]) + float64(b[o]) - m) / ssum
                        rf = float64(AV[i, j, o]) + float64(C[j, o])
                        if has_zr:
                            rf += float64(ZR[i, j, o])
                        pr += p * rf
                    for o in range(n):
                        p = math.exp(float64(Z0[i, o]) + float64(b[o]) - m) / ssum
                        rf = float64(AV[i, j, o]) + float64(C[j, o])
                        if has_zr:
                            rf += float64(ZR[i, j, o])
                        DR[i, j, o] = p * (rf - pr) * inv_n
                for o in range(n):
                    p = math.exp(float64(Z0[i, o]) + float64(b[o]) - m) / ssum
                    D0[i, o] = ((p - 1.0) if o == lab else p) * inv_n
        elif loss == MSE:
            ssum = 0.0
            for o in range(n):
                fo = float64(Z0[i, o]) + float64(b[o]) - float64(Y[i, o])
                ssum += fo * fo
                if need >= 1:
                    D0[i, o] = fo * inv_n
                for j in range(k):
                    rf = float64(AV[i, j, o]) + float64(C[j, o])
                    if has_zr:
                        rf += float64(ZR[i, j, o])
                    DR[i, j, o] = rf * inv_n
            losses[i] = 0.5 * ssum
        else:
            lv, dl, d2l = logistic_fn(float64(Z0[i, 0]) + float64(b[0]), float64(Y[i, 0]))
            losses[i] = lv
            if need >= 1:
                D0[i, 0] = dl * inv_n
            for j in range(k):
                rf = float64(AV[i, j, 0]) + float64(C[j, 0])
                if has_zr:
                    rf += float64(ZR[i, j, 0])
                DR[i, j, 0] = d2l * rf * inv_n

    @cuda.jit
    def hidden_backward(DA0, DAR, DV, has_dv, D1, D2, RZ, gn, k, D0, DR):
        N, n = DA0.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for idx in range(start, N * n, stride):
            i = idx // n
            o = idx - i * n
            d1 = float64(D1[i, o])
            da = float64(DA0[i, o])
            D0[i, o] = da * d1
            for j in range(k):
                if gn:
                    DR[i, j, o] = float64(DAR[i, j, o]) * d1
                else:
                    r = float64(DAR[i, j, o])
                    if has_dv:
                        r += float64(DV[i, j, o])
                    DR[i, j, o] = r * d1 + da * float64(D2[i, o]) * float64(RZ[i, j, o])

    @cuda.jit
    def colsum(D, out):
        # out[o, j] = sum_i D[i, j, o] in row order (deterministic), thread per (j, o)
        N, m, n = D.shape
        idx = cuda.grid(1)
        if idx < m * n:
            j = idx // n
            o = idx - j * n
            s = 0.0
            for i in range(N):
                s += float64(D[i, j, o])
            out[o, j] = s

    @cuda.jit
    def assemble(G, Gr, has_gr, outW):
        # outW[i, o, j] = G[i, j, o] (+ Gr[j, i, o])
        n_in, n_o, m = outW.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for idx in range(start, n_in * n_o * m, stride):
            i = idx // (n_o * m)
            r = idx - i * n_o * m
            o = r // m
            j = r - o * m
            v = float64(G[i, j, o])
            if has_gr:
                v += float64(Gr[j, i, o])
            outW[i, o, j] = v

    @cuda.jit
    def swap_last2(src, dst):
        # dst[a, c, b] = src[a, b, c]
        A, Bn, Cn = src.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for idx in range(start, A * Bn * Cn, stride):
            a = idx // (Bn * Cn)
            r = idx - a * Bn * Cn
            bb = r // Cn
            c = r - bb * Cn
            dst[a, c, bb] = src[a, bb, c]

    @cuda.jit(device=True)
    def tree_sum(sh, t):
        # sh[0] = sum of the block's tpb values (a power of two), in a fixed order
        cuda.syncthreads()
        step = tpb // 2
        while step > 0:
            if t < step:
                sh[t] += sh[t + step]
            cuda.syncthreads()
            step //= 2

    @cuda.jit
    def total(x, out):
        # one block: fixed-order strided sums, then a tree (deterministic)
        t = cuda.threadIdx.x
        sh = cuda.shared.array(tpb, float64)
        s = 0.0
        for i in range(t, x.shape[0], tpb):
            s += x[i]
        sh[t] = s
        tree_sum(sh, t)
        if t == 0:
            out[0] = sh[0]

    @cuda.jit
    def column_dot(A, B, out):
        # out[j] = sum_p A[p, j] B[p, j], one block per column (deterministic)
        t = cuda.threadIdx.x
        j = cuda.blockIdx.x
        sh = cuda.shared.array(tpb, float64)
        s = 0.0
        for p in range(t, A.shape[0], tpb):
            s += float64(A[p, j]) * float64(B[p, j])
        sh[t] = s
        tree_sum(sh, t)
        if t == 0:
            out[j] = sh[0]

    @cuda.jit
    def stats(x, part):
        # part[blk] = (non-finite count > 0, min, max) of a strided share of the flat x
        t = cuda.threadIdx.x
        blk = cuda.blockIdx.x
        bad = 0.0
        lo = math.inf
        hi = -math.inf
        for i in range(blk * tpb + t, x.shape[0], cuda.gridDim.x * tpb):
            v = float64(x[i])
            if not abs(v) <= 1.7976931348623157e308:
                bad = 1.0
            else:
                lo = min(lo, v)
                hi = max(hi, v)
        sh = cuda.shared.array((3, tpb), float64)
        sh[0, t] = bad
        sh[1, t] = lo
        sh[2, t] = hi
        cuda.syncthreads()
        step = tpb // 2
        while step > 0:
            if t < step:
                sh[0, t] = max(sh[0, t], sh[0, t + step])
                sh[1, t] = min(sh[1, t], sh[1, t + step])
                sh[2, t] = max(sh[2, t], sh[2, t + step])
            cuda.syncthreads()
            step //= 2
        if t == 0:
            part[blk, 0] = sh[0, 0]
            part[blk, 1] = sh[1, 0]
            part[blk, 2] = sh[2, 0]

    return dict(hidden_forward=hidden_forward, output_forward=output_forward,
                hidden_backward=hidden_backward, colsum=colsum, assemble=assemble,
                swap_last2=swap_last2, total=total, column_dot=column_dot, stats=stats)


@cache
def _matmul_kernel(tile: int):
    @cuda.jit
    def matmul_kernel(A, B, C, ta, tb):
        i, j = cuda.grid(2)
        rows, cols = C.shape
        if i < rows and j < cols:
            inner = A.shape[0] if ta else A.shape[1]
            s = 0.0
            for p in range(inner):
                a = A[p, i] if ta else A[i, p]
                b = B[j, p] if tb else B[p, j]
                s += float64(a) * float64(b)
            C[i, j] = s

    return matmul_kernel


def matmul(A, B, C, ta=False, tb=False):
    """``C = op(A) @ op(B)`` with fastopt's numba.cuda kernel (simulator and plain numba input)."""
    tile = min(MATMUL_TILE, THREADS_PER_BLOCK)
    rows, cols = C.shape
    grid = (math.ceil(rows / tile), math.ceil(cols / tile))
    _matmul_kernel(tile)[grid, (tile, tile)](A, B, C, bool(ta), bool(tb))


def _grid(size: int, tpb: int) -> int:
    return max(1, min(65535, math.ceil(size / tpb)))


def stats(x):
    """(any NaN/Inf, min, max) of a contiguous device array, as host values."""
    tpb = THREADS_PER_BLOCK
    flat = x.reshape(x.size)
    blocks = max(1, min(64, math.ceil(x.size / (4 * tpb))))
    part = cuda.device_array((blocks, 3), np.float64)
    _kernels(tpb)["stats"][blocks, tpb](flat, part)
    p = part.copy_to_host()
    return bool(p[:, 0].max() > 0), float(p[:, 1].min()), float(p[:, 2].max())


def passes(net, theta, X, labels, Y, V, mode, kind):
    """Loss (host float) and the gradient ``(P,)`` or products ``(P, k)`` (a new device array)
    of ``net`` (a validated :class:`fastopt.MLP`) on device inputs; ``kind`` (of theta, see
    :func:`fastopt._device.kind_of`) chooses the GEMMs and the allocator."""
    lib = _device.matrix_library(kind)
    tpb = THREADS_PER_BLOCK
    kern = _kernels(tpb)
    dt = np.dtype(net.dtype)
    N = X.shape[0]
    need = {"loss": 0, "grad": 1, "hvp": 2, "gnvp": 2}[mode]
    k = V.shape[1] if need == 2 else 0
    L = len(net._offsets)
    dims = list(zip(net.sizes[:-1], net.sizes[1:], strict=True))
    # Scratch is reused across calls (a device allocation per array per call would cost more
    # than the small passes): the i-th allocation of a call is the i-th buffer of the net's
    # per-thread workspace (the sequence depends only on mode and shapes). The result is new.
    ws = net._workspace()
    counter = [0]

    def empty(*shape, dtype=dt):
        counter[0] += 1
        key = f"cuda:{counter[0]}"
        a = ws.get(key)
        if a is None or tuple(a.shape) != shape or np.dtype(a.dtype) != np.dtype(dtype):
            a = ws[key] = _device.empty(shape, dtype, kind)
        return a

    dummy3 = empty(1, 1, 1)
    dummy2 = empty(1, 1)

    def mm(A, B, out, ta=False, tb=False):
        _library_matmul(lib, A, B, out, ta, tb)
        return out

    def swapped(src3):
        a, b_, c = src3.shape
        dst = empty(a, c, b_)
        kern["swap_last2"][_grid(src3.size, tpb), tpb](src3, dst)
        return dst

    layers, Vc, VT, Cs = [], [], [], []
    for l, ((n_in, n_o), (o0, o1, o2)) in enumerate(zip(dims, net._offsets, strict=True)):
        layers.append((theta[o0:o1].reshape(n_in, n_o), theta[o1:o2]))
        if k:
            Vc.append(swapped(V[o0:o1].reshape(n_in, n_o, k)).reshape(n_in, k * n_o))
            if mode == "hvp" and l > 0:
                VT.append(swapped(V[o0:o1].reshape(1, n_in, n_o * k)).reshape(n_o, k * n_in))
            else:
                VT.append(None)
            Cs.append(swapped(V[o1:o2].reshape(1, n_o, k)).reshape(k, n_o))

    # ---- forward and R-forward
    a0, ar = X, None
    ins, caches = [], []
    for l, (W, b) in enumerate(layers):
        n_in, n_o = W.shape
        Z0 = mm(a0, W, empty(N, n_o))
        ZR = mm(ar.reshape(N * k, n_in), W, empty(N * k, n_o)).reshape(N, k, n_o) if (
            ar is not None) else dummy3
        if k:
            AV = mm(a0, Vc[l], empty(N, k * n_o)).reshape(N, k, n_o)
            C = Cs[l]
        else:
            AV, C = dummy3, dummy2
        ins.append((a0, ar))
        if l < L - 1:
            A0 = empty(N, n_o)
            AR = empty(N, k, n_o) if need == 2 else dummy3
            D1 = empty(N, n_o) if need >= 1 else dummy2
            D2 = empty(N, n_o) if need == 2 else dummy2
            RZ = empty(N, k, n_o, dtype=dt) if need == 2 else dummy3
            kern["hidden_forward"][_grid(N * n_o, tpb), tpb](
                Z0, ZR, ar is not None, AV, C, b, net._act_code, need, k, A0, AR, D1, D2, RZ)
            caches.append((D1, D2, RZ))
            a0, ar = A0, (AR if k else None)
        else:
            D0 = empty(N, n_o) if need >= 1 else dummy2
            DR = empty(N, k, n_o) if k else dummy3
            losses = empty(N, dtype=np.float64)
            lab = labels if labels is not None else cuda.device_array(1, np.int64)
            Yd = Y if Y is not None else dummy2
            kern["output_forward"][_grid(N, tpb), tpb](
                Z0, ZR, ar is not None, AV, C, b, net._loss_code, need, k, lab, Yd, D0, DR,
                losses)
    tot = empty(1, dtype=np.float64)
    kern["total"][1, tpb](losses, tot)
    loss = float(tot.copy_to_host()[0]) / N
    if need == 0:
        return loss, None

    # ---- backward and R-backward
    P = net.num_params
    m = k if k else 1
    result = _device.empty((P, k) if k else (P,), dt, kind)
    out2 = result.reshape(P, m)
    for l in range(L - 1, -1, -1):
        W, _ = layers[l]
        n_in, n_o = W.shape
        o0, o1, o2 = net._offsets[l]
        a0, ar = ins[l]
        Dsel = DR if k else D0.reshape(N, 1, n_o)
        G = mm(a0, Dsel.reshape(N, m * n_o), empty(n_in, m * n_o), ta=True).reshape(
            n_in, m, n_o)
        if mode == "hvp" and ar is not None:
            Gr = mm(ar.reshape(N, k * n_in), D0, empty(k * n_in, n_o), ta=True).reshape(
                k, n_in, n_o)
            has_gr = True
        else:
            Gr, has_gr = dummy3, False
        kern["assemble"][_grid(n_in * n_o * m, tpb), tpb](
            G, Gr, has_gr, out2[o0:o1].reshape(n_in, n_o, m))
        kern["colsum"][_grid(m * n_o, tpb), tpb](Dsel, out2[o1:o2])
        if l > 0:
            DA0 = mm(D0, W, empty(N, n_in), tb=True)
            DAR = mm(DR.reshape(N * k, n_o), W, empty(N * k, n_in), tb=True).reshape(
                N, k, n_in) if k else dummy3
            if mode == "hvp" and k:
                DV = mm(D0, VT[l], empty(N, k * n_in)).reshape(N, k, n_in)
            else:
                DV = dummy3
            D1, D2, RZ = caches[l - 1]
            nD0 = empty(N, n_in)
            nDR = empty(N, k, n_in) if k else dummy3
            kern["hidden_backward"][_grid(N * n_in, tpb), tpb](
                DA0, DAR, DV, mode == "hvp" and k > 0, D1, D2, RZ, 1 if mode == "gnvp" else 0,
                k, nD0, nDR)
            D0, DR = nD0, nDR
    return loss, result
