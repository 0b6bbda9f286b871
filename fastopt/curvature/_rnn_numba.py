"""Numba kernels of the Elman RNN time step (same signatures and layouts as ``_rnn_cython.pyx``;
semantics in ``fastopt.reference.rnn``).

Plain loops compiled lazily on first call (``cache=True``, no eager signatures): importing this
module compiles nothing; each kernel compiles once per dtype. Serial, ``nogil``: a step holds
too few values for Numba's thread pool to pay off next to the BLAS calls around it.
``error_model="numpy"`` so that divisions do not test for zero and the loops vectorize.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import _scalar
from ._numba import _act_row, _log_sum_exp

_CROSS_ENTROPY = _scalar.CROSS_ENTROPY
_LOSS, _GRAD = _scalar.MODE_LOSS, _scalar.MODE_GRAD
_HVP, _GNVP = _scalar.MODE_HVP, _scalar.MODE_GNVP


@njit(cache=True, error_model="numpy", nogil=True)
def forward_step(ZZ, RZW, XUU, b, Cb, act, mode, has_rec, H, D1, D2, RZ, RH):
    """See ``fastopt.reference.rnn.forward_step``."""
    N, kk, n = XUU.shape
    k = kk - 1 if mode >= _HVP else 0
    need = 2 if mode == _HVP else (1 if mode >= _GRAD else 0)
    fast = H.itemsize == 4
    for i in range(N):
        h = H[i]
        if has_rec:
            for o in range(n):
                h[o] = ZZ[i, 0, o] + XUU[i, 0, o] + b[o]
        else:
            for o in range(n):
                h[o] = XUU[i, 0, o] + b[o]
        _act_row(act, h, D1[i] if need >= 1 else h, D2[i] if need == 2 else h, need, fast)
        for j in range(k):
            r = RZ[i, j] if mode == _HVP else RH[i, j]
            if has_rec:
                for o in range(n):
                    r[o] = ZZ[i, 1 + j, o] + RZW[i, j, o] + XUU[i, 1 + j, o] + Cb[j, o]
            else:
                for o in range(n):
                    r[o] = XUU[i, 1 + j, o] + Cb[j, o]
            for o in range(n):
                RH[i, j, o] = D1[i, o] * r[o]


@njit(cache=True, error_model="numpy", nogil=True)
def output(FF, RFV, c, Cc, loss, mode, labels, Y, E, RE, losses, Sc, scale):
    """See ``fastopt.reference.rnn.output``."""
    M, kk, no = FF.shape
    k = kk - 1 if mode >= _HVP else 0
    Sc[:, :] = 0.0
    for i in range(M):
        if loss == _CROSS_ENTROPY:
            lse, mx, ssum = _log_sum_exp(FF[i, 0], c)
            lab = labels[i]
            losses[i] = lse - (np.float64(FF[i, 0, lab]) + c[lab])
            if mode == _LOSS:
                continue
            for q in range(no):  # p, for now
                E[i, q] = math.exp(np.float64(FF[i, 0, q]) + c[q] - mx) / ssum
            for j in range(k):
                pr = 0.0
                for q in range(no):
                    pr += E[i, q] * (np.float64(FF[i, 1 + j, q]) + RFV[i, j, q] + Cc[j, q])
                for q in range(no):
                    rf = np.float64(FF[i, 1 + j, q]) + RFV[i, j, q] + Cc[j, q]
                    RE[i, j, q] = E[i, q] * (rf - pr) * scale
                    Sc[1 + j, q] += RE[i, j, q]
            for q in range(no):
                val = np.float64(E[i, q])
                if q == lab:
                    val -= 1.0
                E[i, q] = val * scale
                Sc[0, q] += E[i, q]
        else:
            ssum = 0.0
            for q in range(no):
                f = np.float64(FF[i, 0, q]) + c[q] - Y[i, q]
                ssum += f * f
                if mode >= _GRAD:
                    E[i, q] = f * scale
                    Sc[0, q] += E[i, q]
            losses[i] = 0.5 * ssum
            for j in range(k):
                for q in range(no):
                    rf = np.float64(FF[i, 1 + j, q]) + RFV[i, j, q] + Cc[j, q]
                    RE[i, j, q] = rf * scale
                    Sc[1 + j, q] += RE[i, j, q]


@njit(cache=True, error_model="numpy", nogil=True)
def backward_step(A, B, EA, EB, D1, D2, RZ, mode, has_rec, has_out, Dl, RDl, G, S):
    """See ``fastopt.reference.rnn.backward_step``."""
    N, n = D1.shape
    k = RDl.shape[1] if mode >= _HVP else 0
    store_g = G.shape[0] != 0
    for i in range(N):
        d1 = D1[i]
        if mode == _GNVP:
            for j in range(k):
                r = RDl[i, j]
                if has_rec and has_out:
                    for o in range(n):
                        r[o] = B[i, j, o] + EB[i, j, o]
                elif has_rec:
                    for o in range(n):
                        r[o] = B[i, j, o]
                else:
                    for o in range(n):
                        r[o] = EB[i, j, o]
                acc = S[j]
                for o in range(n):
                    r[o] = r[o] * d1[o]
                    acc[o] += r[o]
            continue
        g = Dl[i]  # holds g until the end of the row, then delta = g act'
        if has_rec and has_out:
            for o in range(n):
                g[o] = A[i, 0, o] + EA[i, 0, o]
        elif has_rec:
            for o in range(n):
                g[o] = A[i, 0, o]
        else:
            for o in range(n):
                g[o] = EA[i, 0, o]
        if store_g:
            for o in range(n):
                G[i, o] = g[o]
        if mode == _HVP:
            d2 = D2[i]
            for j in range(k):
                r = RDl[i, j]
                rz = RZ[i, j]
                if has_rec and has_out:
                    for o in range(n):
                        r[o] = A[i, 1 + j, o] + B[i, j, o] + EA[i, 1 + j, o] + EB[i, j, o]
                elif has_rec:
                    for o in range(n):
                        r[o] = A[i, 1 + j, o] + B[i, j, o]
                else:
                    for o in range(n):
                        r[o] = EA[i, 1 + j, o] + EB[i, j, o]
                acc = S[j]
                for o in range(n):
                    r[o] = r[o] * d1[o] + g[o] * d2[o] * rz[o]
                    acc[o] += r[o]
        for o in range(n):
            g[o] = g[o] * d1[o]
        if mode == _GRAD:
            acc = S[0]
            for o in range(n):
                acc[o] += g[o]
