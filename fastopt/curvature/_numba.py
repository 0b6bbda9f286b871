"""Numba kernels of the curvature family (same signatures and layouts as ``_cython.pyx``).

Plain loops compiled lazily on first call (``cache=True``, no eager signatures): importing this
module compiles nothing. Each kernel compiles once per dtype (float32, float64).
``error_model="numpy"``: a division does not test for zero, so the loops vectorize (the Python
error model's check made the float32 tanh loop 8x slower).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from numba import njit, prange

from .._threads import apply_numba_threads, get_num_threads
from . import _scalar
from ._hooks import formula_activation, formula_logistic

# The scalar formulas (``_scalar.py``), compiled for the CPU and inlined into the loops: the
# names below are what the kernels (and other curvature models' Numba kernels) call.
_formulas = _scalar.compiled(njit(cache=True, inline="always", error_model="numpy", nogil=True))
_sigmoid = _formulas.sigmoid
_softplus = _formulas.softplus
_tanh_fast = _formulas.tanh_fast  # float32 tanh that vectorizes
_act = _formulas.act  # (code, z) -> (value, d1, d2)
_act_row = _formulas.act_row  # (code, h, d1, d2, need, fast): h <- act(h) in place
_logistic = _formulas.logistic  # (f, y) -> (loss, dloss, d2loss)
_log_sum_exp = _formulas.log_sum_exp  # (z, b) -> (log sum exp(z + b), max, sum exp(z + b - max))

_CROSS_ENTROPY = _scalar.CROSS_ENTROPY
_MSE = _scalar.MSE
_COLSUM_BLOCK = 256  # columns per block of the float64 column sums


@njit(cache=True, error_model="numpy", nogil=True)
def _hidden_forward_rows(Z, b, AV, C, act, need, A, D1, D2, RZ, fast, i0, i1):
    N, kz, n = Z.shape
    k = AV.shape[1] if need == 2 else 0
    for i in range(i0, i1):
        a = A[i, 0]
        for o in range(n):
            a[o] = Z[i, 0, o] + b[o]
        _act_row(act, a, D1[i] if need >= 1 else a, D2[i] if need == 2 else a, need, fast)
        for j in range(k):
            if kz > 1:
                for o in range(n):
                    rz = AV[i, j, o] + C[j, o] + Z[i, 1 + j, o]
                    RZ[i, j, o] = rz
                    A[i, 1 + j, o] = D1[i, o] * rz
            else:
                for o in range(n):
                    rz = AV[i, j, o] + C[j, o]
                    RZ[i, j, o] = rz
                    A[i, 1 + j, o] = D1[i, o] * rz


@njit(cache=True, error_model="numpy", nogil=True)
def _output_forward_rows(Z, b, AV, C, loss, need, labels, Y, D, losses, i0, i1):
    N, kz, n = Z.shape
    k = AV.shape[1] if need == 2 else 0
    inv_n = 1.0 / N
    for i in range(i0, i1):
        if loss == _CROSS_ENTROPY:
            lse, m, ssum = _log_sum_exp(Z[i, 0], b)
            lab = labels[i]
            losses[i] = lse - (np.float64(Z[i, 0, lab]) + b[lab])
            if need >= 1:
                for o in range(n):  # p, for now
                    D[i, 0, o] = math.exp(np.float64(Z[i, 0, o]) + b[o] - m)
                    D[i, 0, o] = D[i, 0, o] / ssum
                for j in range(k):
                    pr = 0.0
                    for o in range(n):
                        rf = AV[i, j, o] + C[j, o]
                        if kz > 1:
                            rf = rf + Z[i, 1 + j, o]
                        pr += np.float64(D[i, 0, o]) * rf
                    for o in range(n):
                        rf = AV[i, j, o] + C[j, o]
                        if kz > 1:
                            rf = rf + Z[i, 1 + j, o]
                        D[i, 1 + j, o] = D[i, 0, o] * (rf - pr) * inv_n
                for o in range(n):
                    p = np.float64(D[i, 0, o])
                    if o == lab:
                        D[i, 0, o] = (p - 1.0) * inv_n
                    else:
                        D[i, 0, o] = p * inv_n
        elif loss == _MSE:
            ssum = 0.0
            for o in range(n):
                f = np.float64(Z[i, 0, o] + b[o]) - Y[i, o]
                ssum += f * f
                if need >= 1:
                    D[i, 0, o] = f * inv_n
                for j in range(k):
                    rf = AV[i, j, o] + C[j, o]
                    if kz > 1:
                        rf = rf + Z[i, 1 + j, o]
                    D[i, 1 + j, o] = rf * inv_n
            losses[i] = 0.5 * ssum
        else:
            f = np.float64(Z[i, 0, 0] + b[0])
            lv, dl, d2l = _logistic(f, np.float64(Y[i, 0]))
            losses[i] = lv
            if need >= 1:
                D[i, 0, 0] = dl * inv_n
            for j in range(k):
                rf = AV[i, j, 0] + C[j, 0]
                if kz > 1:
                    rf = rf + Z[i, 1 + j, 0]
                D[i, 1 + j, 0] = d2l * rf * inv_n


@njit(cache=True, error_model="numpy", nogil=True)
def _hidden_backward_rows(DA, DV, D1, D2, RZ, gn, D, i0, i1):
    N, kk, n = DA.shape
    for i in range(i0, i1):
        for o in range(n):
            D[i, 0, o] = DA[i, 0, o] * D1[i, o]
        for j in range(kk - 1):
            if gn:
                for o in range(n):
                    D[i, 1 + j, o] = DA[i, 1 + j, o] * D1[i, o]
            else:
                for o in range(n):
                    D[i, 1 + j, o] = ((DA[i, 1 + j, o] + DV[i, j, o]) * D1[i, o]
                                      + DA[i, 0, o] * D2[i, o] * RZ[i, j, o])


@njit(cache=True, error_model="numpy", nogil=True)
def _hidden_backward_sums(DA, DV, D1, D2, RZ, gn, D, S, first):
    """``_hidden_backward_rows`` over all rows, accumulating the column sums of
    ``D[:, first:]`` row by row (in a local array: LLVM cannot tell ``S`` from ``D``)."""
    N, kk, n = DA.shape
    acc = np.zeros(S.shape[0], np.float64)
    for i in range(N):
        _hidden_backward_rows(DA, DV, D1, D2, RZ, gn, D, i, i + 1)
        for j in range(first, kk):
            row = D[i, j]
            base = (j - first) * n
            for o in range(n):
                acc[base + o] += row[o]
    S[:] = acc


@njit(cache=True, error_model="numpy", nogil=True)
def _colsum_blocks(D, out, b0, b1):
    """Column sums of the column blocks ``b0 .. b1 - 1`` of D into ``out``, row by row.

    Each block accumulates in a local float64 array (which LLVM knows aliases nothing) over
    row slices: accumulating into ``out[m]`` directly, indexed ``D[i, m]``, ran 2.2x slower.
    """
    N, M = D.shape
    acc = np.empty(_COLSUM_BLOCK, np.float64)
    for blk in range(b0, b1):
        m0 = blk * _COLSUM_BLOCK
        w = min(m0 + _COLSUM_BLOCK, M) - m0
        acc[:w] = 0.0
        for i in range(N):
            row = D[i, m0 : m0 + w]
            for m in range(w):
                acc[m] += row[m]
        for m in range(w):
            out[m0 + m] = acc[m]


_TILE = 32  # tile edge of the batched transposes


@njit(cache=True, error_model="numpy", nogil=True)
def _batched_transpose(a, b, dst, has_b):
    B, R, C = a.shape
    for i in range(B):
        for r0 in range(0, R, _TILE):
            r1 = min(r0 + _TILE, R)
            for c0 in range(0, C, _TILE):
                c1 = min(c0 + _TILE, C)
                if has_b:
                    for r in range(r0, r1):
                        for c in range(c0, c1):
                            dst[i, c, r] = a[i, r, c] + b[i, r, c]
                else:
                    for r in range(r0, r1):
                        for c in range(c0, c1):
                            dst[i, c, r] = a[i, r, c]


# Parallel drivers: a fixed number of contiguous chunks (rows or column blocks) per call, each
# handled by the serial body above, so that results do not depend on scheduling. With one
# thread the body runs directly, without touching Numba's thread pool (whose OpenMP workers,
# left spinning, steal the cores that the next BLAS call needs).


@njit(cache=True, parallel=True, nogil=True)
def _hidden_forward_par(Z, b, AV, C, act, need, A, D1, D2, RZ, fast, chunks):
    N = Z.shape[0]
    step = (N + chunks - 1) // chunks
    for c in prange(chunks):
        _hidden_forward_rows(Z, b, AV, C, act, need, A, D1, D2, RZ, fast, c * step,
                             min(N, (c + 1) * step))


@njit(cache=True, parallel=True, nogil=True)
def _output_forward_par(Z, b, AV, C, loss, need, labels, Y, D, losses, chunks):
    N = Z.shape[0]
    step = (N + chunks - 1) // chunks
    for c in prange(chunks):
        _output_forward_rows(Z, b, AV, C, loss, need, labels, Y, D, losses, c * step,
                             min(N, (c + 1) * step))


@njit(cache=True, parallel=True, nogil=True)
def _hidden_backward_par(DA, DV, D1, D2, RZ, gn, D, chunks):
    N = DA.shape[0]
    step = (N + chunks - 1) // chunks
    for c in prange(chunks):
        _hidden_backward_rows(DA, DV, D1, D2, RZ, gn, D, c * step, min(N, (c + 1) * step))


@njit(cache=True, parallel=True, nogil=True)
def _colsum_par(D, out, chunks):
    nb = (D.shape[1] + _COLSUM_BLOCK - 1) // _COLSUM_BLOCK
    step = (nb + chunks - 1) // chunks
    for c in prange(chunks):
        _colsum_blocks(D, out, c * step, min(nb, (c + 1) * step))


def _threads(n_threads: int) -> int:
    """Threads for this call: fastopt's count, or fewer when the caller asks (1: serial)."""
    if n_threads <= 1:  # the serial body runs without Numba's thread pool
        return 1
    return apply_numba_threads(min(get_num_threads(), int(n_threads)))


def hidden_forward(Z, b, AV, C, act, need, A, D1, D2, RZ, n_threads):
    """See ``fastopt.curvature._cython.hidden_forward``."""
    fast = Z.dtype == np.float32
    n = _threads(n_threads)
    if n == 1:
        _hidden_forward_rows(Z, b, AV, C, act, need, A, D1, D2, RZ, fast, 0, Z.shape[0])
    else:
        _hidden_forward_par(Z, b, AV, C, act, need, A, D1, D2, RZ, fast, 4 * n)


def output_forward(Z, b, AV, C, loss, need, labels, Y, D, losses, n_threads):
    """See ``fastopt.curvature._cython.output_forward``."""
    n = _threads(n_threads)
    if n == 1:
        _output_forward_rows(Z, b, AV, C, loss, need, labels, Y, D, losses, 0, Z.shape[0])
    else:
        _output_forward_par(Z, b, AV, C, loss, need, labels, Y, D, losses, 4 * n)


def hidden_backward(DA, DV, D1, D2, RZ, gn, D, S, first, n_threads):
    """See ``fastopt.curvature._cython.hidden_backward``."""
    N, kk, n = DA.shape
    if S.shape[0] and S.shape[0] != (kk - first) * n:
        raise ValueError(f"hidden_backward: S must have {(kk - first) * n} entries")
    t = _threads(n_threads)
    if t == 1 and S.shape[0]:
        _hidden_backward_sums(DA, DV, D1, D2, RZ, gn, D, S, first)
        return
    if t == 1:
        _hidden_backward_rows(DA, DV, D1, D2, RZ, gn, D, 0, N)
    else:
        _hidden_backward_par(DA, DV, D1, D2, RZ, gn, D, 4 * t)
    if S.shape[0]:
        colsum(D[:, first:, :].reshape(N, (kk - first) * n), S, n_threads)


def colsum(D, out, n_threads):
    """See ``fastopt.curvature._cython.colsum``."""
    n = _threads(n_threads)
    nb = (D.shape[1] + _COLSUM_BLOCK - 1) // _COLSUM_BLOCK
    if n == 1 or nb == 1:
        _colsum_blocks(D, out, 0, nb)
    else:
        _colsum_par(D, out, min(nb, 4 * n))


def batched_transpose(a, b, dst, n_threads):
    """See ``fastopt.curvature._cython.batched_transpose`` (tiled, serial)."""
    _batched_transpose(a, b, dst, b.shape[0] != 0)


# test-only (tests/test_formulas.py): the formulas through this module's row loops
_formula_activation = partial(formula_activation, hidden_forward)
_formula_logistic = partial(formula_logistic, output_forward)
