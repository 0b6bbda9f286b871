# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernels of :class:`fastopt.Network` (same signatures as ``_network_numba.py`` and the
numpy reference ``fastopt.reference.network``).

Streams are C-contiguous ``(N, m, n)`` arrays (slot 0 the value or gradient, slots 1.. the
R-streams); loops run row by row with the feature axis innermost; per-channel sums accumulate
in float64. Inputs are const memoryviews (read-only arrays work). Serial, GIL released: between
BLAS calls a thread team costs more than these passes (see ``fastopt.curvature.mlp``). The loss
(``N x n_out`` values) runs in the numpy reference.
"""

from fastopt.curvature._formulas cimport act_row, real
from fastopt.curvature._rows cimport add_row, transpose
from libc.math cimport sqrt

from ..reference.network import loss_forward  # noqa: F401


def dense_bias(const real[:, :, ::1] Z, const real[::1] b, const real[:, :, ::1] AV,
               const real[:, ::1] C, real[:, :, ::1] out):
    cdef Py_ssize_t N = Z.shape[0], kz = Z.shape[1], n = Z.shape[2], k = AV.shape[1]
    cdef Py_ssize_t i, j, o
    with nogil:
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


def act_forward(const real[:, :, ::1] X, int code, int need, real[:, :, ::1] out,
                real[:, ::1] D1, real[:, ::1] D2):
    cdef Py_ssize_t N = X.shape[0], kk = X.shape[1], n = X.shape[2]
    cdef Py_ssize_t i, j, o
    cdef real* d1
    cdef real* d2
    cdef real[::1] d1row
    import numpy as np
    d1row = np.empty(n, np.float32 if real is float else np.float64)
    with nogil:
        for i in range(N):
            for o in range(n):
                out[i, 0, o] = X[i, 0, o]
            # act' is needed for the R-streams even when it is not returned
            d1 = &D1[i, 0] if need >= 1 else &d1row[0]
            d2 = &D2[i, 0] if need == 2 else NULL
            act_row(code, &out[i, 0, 0], d1, d2, n, 2 if need == 2 else 1)
            for j in range(1, kk):
                for o in range(n):
                    out[i, j, o] = d1[o] * X[i, j, o]


def act_backward(const real[:, :, ::1] G, const real[:, ::1] D1, const real[:, ::1] D2,
                 const real[:, :, ::1] Z, int rmode, real[:, :, ::1] out):
    cdef Py_ssize_t N = G.shape[0], m = G.shape[1], n = G.shape[2]
    cdef Py_ssize_t i, j, o
    with nogil:
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


def bn_forward_train(const real[:, :, ::1] X, double eps, const real[::1] gamma,
                     const real[::1] beta, const real[:, ::1] VG, const real[:, ::1] VB,
                     real[:, :, ::1] out, real[:, ::1] XH, real[:, :, ::1] RXH,
                     double[::1] mean, double[::1] var, double[::1] invstd, double[:, ::1] c):
    cdef Py_ssize_t N = X.shape[0], kk = X.shape[1], n = X.shape[2], k = kk - 1
    cdef Py_ssize_t i, j, o
    cdef double d, r, xh, rxh
    import numpy as np
    cdef double[::1] s1 = np.zeros(n), s2 = np.zeros(n)
    cdef double[:, ::1] r1 = np.zeros((k, n)), r2 = np.zeros((k, n))
    with nogil:
        for i in range(N):
            for o in range(n):
                s1[o] += X[i, 0, o]
        for o in range(n):
            mean[o] = s1[o] / N
        for i in range(N):
            for o in range(n):
                d = X[i, 0, o] - mean[o]
                s2[o] += d * d
            for j in range(k):
                for o in range(n):
                    r = X[i, 1 + j, o]
                    r1[j, o] += r
                    r2[j, o] += (X[i, 0, o] - mean[o]) * r
        for o in range(n):
            var[o] = s2[o] / N
            invstd[o] = 1.0 / sqrt(var[o] + eps)
        for j in range(k):
            for o in range(n):
                c[j, o] = invstd[o] * r2[j, o] / N
                r1[j, o] = r1[j, o] / N
        for i in range(N):
            for o in range(n):
                xh = (X[i, 0, o] - mean[o]) * invstd[o]
                XH[i, o] = <real>xh
                out[i, 0, o] = <real>(gamma[o] * xh + beta[o])
            for j in range(k):
                for o in range(n):
                    xh = XH[i, o]
                    rxh = invstd[o] * (X[i, 1 + j, o] - r1[j, o] - xh * c[j, o])
                    RXH[i, j, o] = <real>rxh
                    out[i, 1 + j, o] = <real>(gamma[o] * rxh + VG[j, o] * xh + VB[j, o])


def bn_forward_eval(const real[:, :, ::1] X, const double[::1] mean, const double[::1] invstd,
                    const real[::1] gamma, const real[::1] beta, const real[:, ::1] VG,
                    const real[:, ::1] VB, real[:, :, ::1] out, real[:, ::1] XH,
                    real[:, :, ::1] RXH):
    cdef Py_ssize_t N = X.shape[0], kk = X.shape[1], n = X.shape[2]
    cdef Py_ssize_t i, j, o
    cdef double xh, rxh
    with nogil:
        for i in range(N):
            for o in range(n):
                xh = (X[i, 0, o] - mean[o]) * invstd[o]
                XH[i, o] = <real>xh
                out[i, 0, o] = <real>(gamma[o] * xh + beta[o])
            for j in range(kk - 1):
                for o in range(n):
                    rxh = X[i, 1 + j, o] * invstd[o]
                    RXH[i, j, o] = <real>rxh
                    out[i, 1 + j, o] = <real>(gamma[o] * rxh + VG[j, o] * XH[i, o] + VB[j, o])


def bn_backward(const real[:, :, ::1] G, const real[:, ::1] XH, const double[::1] invstd,
                const real[::1] gamma, const real[:, :, ::1] RXH, const double[:, ::1] c,
                const real[:, ::1] VG, bint training, int rmode, real[:, :, ::1] out,
                double[:, ::1] dgamma, double[:, ::1] dbeta):
    cdef Py_ssize_t N = G.shape[0], m = G.shape[1], n = G.shape[2], k = m - 1
    cdef Py_ssize_t i, j, o
    cdef double g, rg, s, m_rgh, m_rghx, m_ghrx
    import numpy as np
    cdef double[::1] A = np.empty(n), B = np.zeros(n), Cc = np.zeros(n), a4 = np.zeros(n)
    cdef double[:, ::1] sb, sg, sbr, sgr, sgx, a2, a3, a5, a6
    if not rmode:
        sb = np.zeros((m, n))
        sg = np.zeros((m, n))
        with nogil:
            for i in range(N):
                for j in range(m):
                    for o in range(n):
                        g = G[i, j, o]
                        sb[j, o] += g
                        sg[j, o] += g * XH[i, o]
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
                        out[i, j, o] = <real>(A[o] * (G[i, j, o] - sb[j, o] - XH[i, o] * sg[j, o]))
        return
    sb = np.zeros((1, n))
    sg = np.zeros((1, n))
    sbr = np.zeros((k, n))
    sgr = np.zeros((k, n))
    sgx = np.zeros((k, n))
    a2 = np.empty((k, n))
    a3 = np.zeros((k, n))
    a5 = np.zeros((k, n))
    a6 = np.zeros((k, n))
    with nogil:
        for i in range(N):
            for o in range(n):
                g = G[i, 0, o]
                sb[0, o] += g
                sg[0, o] += g * XH[i, o]
            for j in range(k):
                for o in range(n):
                    rg = G[i, 1 + j, o]
                    sbr[j, o] += rg
                    sgr[j, o] += rg * XH[i, o]
                    sgx[j, o] += <double>G[i, 0, o] * RXH[i, j, o]
        for o in range(n):
            s = invstd[o]
            A[o] = s * gamma[o]
            if training:
                B[o] = sb[0, o] / N
                Cc[o] = sg[0, o] / N
                a4[o] = -s * gamma[o] * sg[0, o] / N
        for j in range(k):
            for o in range(n):
                s = invstd[o]
                dbeta[j, o] = sbr[j, o]
                dgamma[j, o] = sgr[j, o] + sgx[j, o]
                a2[j, o] = s * VG[j, o]
                if training:
                    m_rgh = (VG[j, o] * sb[0, o] + gamma[o] * sbr[j, o]) / N
                    m_rghx = (VG[j, o] * sg[0, o] + gamma[o] * sgr[j, o]) / N
                    m_ghrx = gamma[o] * sgx[j, o] / N
                    a3[j, o] = -s * c[j, o]
                    a5[j, o] = -s * (m_rghx + m_ghrx)
                    a6[j, o] = -s * m_rgh
        for i in range(N):
            for o in range(n):
                out[i, 0, o] = <real>(A[o] * (G[i, 0, o] - B[o] - XH[i, o] * Cc[o]))
            for j in range(k):
                for o in range(n):
                    out[i, 1 + j, o] = <real>(A[o] * G[i, 1 + j, o] + a2[j, o] * G[i, 0, o]
                                              + a3[j, o] * out[i, 0, o] + a4[o] * RXH[i, j, o]
                                              + a5[j, o] * XH[i, o] + a6[j, o])


def colsum(const real[:, :, ::1] G, Py_ssize_t first, double[:, ::1] out):
    """out (m - first, n) float64 = column sums of slots ``first..`` of G (N, m, n), row order."""
    cdef Py_ssize_t N = G.shape[0], m = G.shape[1], n = G.shape[2]
    cdef Py_ssize_t i, M = (m - first) * n
    out[:, :] = 0
    if M == 0:
        return
    with nogil:
        for i in range(N):
            add_row(&out[0, 0], &G[i, first, 0], M)


def transpose2d(const real[:, ::1] A, real[:, ::1] dst):
    """dst = A.T in 32 x 32 tiles (numpy's copy of a transposed view reads down columns)."""
    cdef Py_ssize_t R = A.shape[0], C = A.shape[1]
    if R == 0 or C == 0:
        return
    with nogil:
        transpose(&dst[0, 0], R, &A[0, 0], C, NULL, 0, R, C)
