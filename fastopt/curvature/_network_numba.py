"""Numba kernels of :class:`fastopt.Network` (same signatures as ``fastopt.reference.network``).

Plain loops, compiled lazily on first call (``cache=True``): row by row, the feature axis
innermost (contiguous, so the loops vectorize), per-channel sums in float64. Each batch-norm
pass reads its rows once per reduction it needs: the training forward takes the batch mean
first, then the centred moments and the R-stream sums together, then normalizes; the backward
takes all its sums in one pass and writes ``dx`` and ``R dx`` in a second, from per-channel
coefficients. The loss (``N x n_out`` values) runs in the numpy reference.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..reference.network import loss_forward  # noqa: F401  (N x n_out: numpy is enough)
from ._numba import _COLSUM_BLOCK, _act_row, _batched_transpose, _colsum_blocks


@njit(cache=True, error_model="numpy", nogil=True)
def dense_bias(Z, b, AV, C, out):
    N, kz, n = Z.shape
    k = AV.shape[1]
    for i in range(N):
        for o in range(n):
            out[i, 0, o] = Z[i, 0, o] + b[o]
        for j in range(k):
            if kz > 1:
                for o in range(n):
                    out[i, 1 + j, o] = AV[i, j, o] + C[j, o] + Z[i, 1 + j, o]
            else:
                for o in range(n):
                    out[i, 1 + j, o] = AV[i, j, o] + C[j, o]


@njit(cache=True, error_model="numpy", nogil=True)
def _act_forward(X, code, need, out, D1, D2, fast):
    N, kk, n = X.shape
    d1row = np.empty(n, X.dtype)  # act' is needed for the R-streams even when not returned
    for i in range(N):
        h = out[i, 0]
        for o in range(n):
            h[o] = X[i, 0, o]
        d1 = D1[i] if need >= 1 else d1row
        _act_row(code, h, d1, D2[i] if need == 2 else h, 2 if need == 2 else 1, fast)
        for j in range(1, kk):
            for o in range(n):
                out[i, j, o] = d1[o] * X[i, j, o]


def act_forward(X, code, need, out, D1, D2):
    _act_forward(X, code, need, out, D1, D2, X.dtype == np.float32)


@njit(cache=True, error_model="numpy", nogil=True)
def act_backward(G, D1, D2, Z, rmode, out):
    N, m, n = G.shape
    for i in range(N):
        if rmode:
            for o in range(n):
                out[i, 0, o] = G[i, 0, o] * D1[i, o]
            for j in range(1, m):
                for o in range(n):
                    out[i, j, o] = G[i, j, o] * D1[i, o] + G[i, 0, o] * D2[i, o] * Z[i, j, o]
        else:
            for j in range(m):
                for o in range(n):
                    out[i, j, o] = G[i, j, o] * D1[i, o]


@njit(cache=True, error_model="numpy", nogil=True)
def bn_forward_train(X, eps, gamma, beta, VG, VB, out, XH, RXH, mean, var, invstd, c):
    N, kk, n = X.shape
    k = kk - 1
    s1 = np.zeros(n)
    for i in range(N):
        for o in range(n):
            s1[o] += X[i, 0, o]
    for o in range(n):
        mean[o] = s1[o] / N
    s2 = np.zeros(n)
    r1 = np.zeros((k, n))
    r2 = np.zeros((k, n))
    for i in range(N):
        for o in range(n):
            d = X[i, 0, o] - mean[o]
            s2[o] += d * d
        for j in range(k):
            for o in range(n):
                r = np.float64(X[i, 1 + j, o])
                r1[j, o] += r
                r2[j, o] += (X[i, 0, o] - mean[o]) * r
    for o in range(n):
        var[o] = s2[o] / N
        invstd[o] = 1.0 / math.sqrt(var[o] + eps)
    for j in range(k):
        for o in range(n):
            c[j, o] = invstd[o] * r2[j, o] / N  # mean(xhat Rx)
            r1[j, o] = r1[j, o] / N  # mean(Rx)
    for i in range(N):
        for o in range(n):
            xh = (X[i, 0, o] - mean[o]) * invstd[o]
            XH[i, o] = xh
            out[i, 0, o] = gamma[o] * xh + beta[o]
        for j in range(k):
            for o in range(n):
                xh = XH[i, o]
                rxh = invstd[o] * (X[i, 1 + j, o] - r1[j, o] - xh * c[j, o])
                RXH[i, j, o] = rxh
                out[i, 1 + j, o] = gamma[o] * rxh + VG[j, o] * xh + VB[j, o]


@njit(cache=True, error_model="numpy", nogil=True)
def bn_forward_eval(X, mean, invstd, gamma, beta, VG, VB, out, XH, RXH):
    N, kk, n = X.shape
    for i in range(N):
        for o in range(n):
            xh = (X[i, 0, o] - mean[o]) * invstd[o]
            XH[i, o] = xh
            out[i, 0, o] = gamma[o] * xh + beta[o]
        for j in range(kk - 1):
            for o in range(n):
                rxh = X[i, 1 + j, o] * invstd[o]
                RXH[i, j, o] = rxh
                out[i, 1 + j, o] = gamma[o] * rxh + VG[j, o] * XH[i, o] + VB[j, o]


@njit(cache=True, error_model="numpy", nogil=True)
def bn_backward(G, XH, invstd, gamma, RXH, c, VG, training, rmode, out, dgamma, dbeta):
    N, m, n = G.shape
    if not rmode:
        sb = np.zeros((m, n))
        sg = np.zeros((m, n))
        for i in range(N):
            for j in range(m):
                for o in range(n):
                    g = np.float64(G[i, j, o])
                    sb[j, o] += g
                    sg[j, o] += g * XH[i, o]
        A = np.empty(n)
        for o in range(n):
            A[o] = invstd[o] * gamma[o]
        for j in range(m):
            for o in range(n):
                dbeta[j, o] = sb[j, o]
                dgamma[j, o] = sg[j, o]
                sb[j, o] = sb[j, o] / N if training else 0.0
                sg[j, o] = sg[j, o] / N if training else 0.0
        for i in range(N):
            for j in range(m):
                for o in range(n):
                    out[i, j, o] = A[o] * (G[i, j, o] - sb[j, o] - XH[i, o] * sg[j, o])
        return
    k = m - 1
    sb0 = np.zeros(n)
    sg0 = np.zeros(n)
    sbr = np.zeros((k, n))
    sgr = np.zeros((k, n))
    sgx = np.zeros((k, n))
    for i in range(N):
        for o in range(n):
            g = np.float64(G[i, 0, o])
            sb0[o] += g
            sg0[o] += g * XH[i, o]
        for j in range(k):
            for o in range(n):
                rg = np.float64(G[i, 1 + j, o])
                sbr[j, o] += rg
                sgr[j, o] += rg * XH[i, o]
                sgx[j, o] += G[i, 0, o] * np.float64(RXH[i, j, o])
    # dx = A (g - B - xhat Cc);  R dx = A Rg + a2 g + a3 dx + a4 R xhat + a5 xhat + a6
    A = np.empty(n)
    B = np.zeros(n)
    Cc = np.zeros(n)
    a4 = np.zeros(n)
    a2 = np.empty((k, n))
    a3 = np.zeros((k, n))
    a5 = np.zeros((k, n))
    a6 = np.zeros((k, n))
    for o in range(n):
        s = invstd[o]
        A[o] = s * gamma[o]
        if training:
            B[o] = sb0[o] / N
            Cc[o] = sg0[o] / N
            a4[o] = -s * gamma[o] * sg0[o] / N
    for j in range(k):
        for o in range(n):
            s = invstd[o]
            dbeta[j, o] = sbr[j, o]
            dgamma[j, o] = sgr[j, o] + sgx[j, o]
            a2[j, o] = s * VG[j, o]
            if training:
                m_rgh = (VG[j, o] * sb0[o] + gamma[o] * sbr[j, o]) / N
                m_rghx = (VG[j, o] * sg0[o] + gamma[o] * sgr[j, o]) / N
                m_ghrx = gamma[o] * sgx[j, o] / N
                a3[j, o] = -s * c[j, o]
                a5[j, o] = -s * (m_rghx + m_ghrx)
                a6[j, o] = -s * m_rgh
    for i in range(N):
        for o in range(n):
            out[i, 0, o] = A[o] * (G[i, 0, o] - B[o] - XH[i, o] * Cc[o])
        for j in range(k):
            for o in range(n):
                out[i, 1 + j, o] = (A[o] * G[i, 1 + j, o] + a2[j, o] * G[i, 0, o]
                                    + a3[j, o] * out[i, 0, o] + a4[o] * RXH[i, j, o]
                                    + a5[j, o] * XH[i, o] + a6[j, o])


def colsum(G, first, out):
    """out (m - first, n) float64 = column sums of slots ``first..`` of G (N, m, n): the MLP's
    column sums (blocks of columns, float64, row order)."""
    N, m, n = G.shape
    M = (m - first) * n
    flat = out.reshape(M)  # a view: out is C-contiguous
    if M == 0 or N == 0:
        flat[:] = 0.0
        return
    _colsum_blocks(G.reshape(N, m * n)[:, first * n:], flat, 0, (M + _COLSUM_BLOCK - 1)
                   // _COLSUM_BLOCK)


def transpose2d(A, dst):
    """dst = A.T in 32 x 32 tiles (numpy's copy of a transposed view reads down columns): the
    MLP's tiled transpose."""
    a = A.reshape((1,) + A.shape)
    _batched_transpose(a, a, dst.reshape((1,) + dst.shape), False)
