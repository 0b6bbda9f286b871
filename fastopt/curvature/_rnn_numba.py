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

from ._numba import _act

_F32 = np.float32
_TANH = 1
_IDENTITY = 0
_GRAD, _HVP, _GNVP = 1, 2, 3


@njit(cache=True, inline="always", error_model="numpy", nogil=True)
def _tanh_fast(x):
    """float32 tanh without a libm call (vectorizes); see ``_rnn_cython._tanh_fast``."""
    c = _F32(7.90531110763549805)
    x = min(max(x, -c), c)
    x2 = x * x
    p = x2 * _F32(-2.76076847742355e-16) + _F32(2.00018790482477e-13)
    p = p * x2 + _F32(-8.60467152213735e-11)
    p = p * x2 + _F32(5.12229709037114e-08)
    p = p * x2 + _F32(1.48572235717979e-05)
    p = p * x2 + _F32(6.37261928875436e-04)
    p = p * x2 + _F32(4.89352455891786e-03)
    p = p * x
    q = x2 * _F32(1.19825839466702e-06) + _F32(1.18534705686654e-04)
    q = q * x2 + _F32(2.26843463243900e-03)
    q = q * x2 + _F32(4.89352518554385e-03)
    return p / q


@njit(cache=True, error_model="numpy", nogil=True)
def forward_step(ZZ, RZW, XUU, b, Cb, act, mode, has_rec, H, D1, D2, RZ, RH):
    """See ``fastopt.reference.rnn.forward_step``."""
    N, kk, n = XUU.shape
    k = kk - 1 if mode >= _HVP else 0
    need = 2 if mode == _HVP else (1 if mode >= _GRAD else 0)
    fast = H.itemsize == 4
    one = H.dtype.type(1)  # keeps float32 arithmetic in float32 (a float literal promotes)
    two = H.dtype.type(2)
    for i in range(N):
        h = H[i]
        if has_rec:
            for o in range(n):
                h[o] = ZZ[i, 0, o] + XUU[i, 0, o] + b[o]
        else:
            for o in range(n):
                h[o] = XUU[i, 0, o] + b[o]
        if act == _TANH:
            if fast:
                for o in range(n):
                    h[o] = _tanh_fast(h[o])
            else:
                for o in range(n):
                    h[o] = math.tanh(h[o])
            if need >= 1:
                for o in range(n):
                    D1[i, o] = one - h[o] * h[o]
            if need == 2:
                for o in range(n):
                    D2[i, o] = -two * h[o] * D1[i, o]
        elif act == _IDENTITY:
            if need >= 1:
                for o in range(n):
                    D1[i, o] = one
            if need == 2:
                for o in range(n):
                    D2[i, o] = 0
        else:
            for o in range(n):
                s, d1, d2 = _act(act, h[o])
                h[o] = s
                if need >= 1:
                    D1[i, o] = d1
                if need == 2:
                    D2[i, o] = d2
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
        if loss == 0:
            mx = np.float64(FF[i, 0, 0]) + c[0]
            for q in range(1, no):
                f = np.float64(FF[i, 0, q]) + c[q]
                if f > mx:
                    mx = f
            ssum = 0.0
            for q in range(no):
                ssum += math.exp(np.float64(FF[i, 0, q]) + c[q] - mx)
            lab = labels[i]
            losses[i] = mx + math.log(ssum) - (np.float64(FF[i, 0, lab]) + c[lab])
            if mode == 0:
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
