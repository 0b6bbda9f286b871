"""Numba batch-norm kernels: the same strategies and signatures as ``_cython.pyx``.

Plain loops over the innermost axis, compiled lazily on first call (``cache=True``), one
specialization per dtype; the channels-last sums take 4-row blocks or single rows
(``row_block``) as in Cython. The plan's ``stream`` flag is ignored (Numba has no non-temporal
stores). ``fastmath`` allows only reassociation and contraction, so float64 reductions vectorize
while NaN and Inf keep their meaning. Outputs are computed in float64 as
``y = (x - mean) * scale + bias``; for ``inner == 1`` (channels-last, (N, C)) the loops run
across channels on 2-D contiguous rows. The scalar formulas are shared with the CUDA kernels
(``_scalar.py``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._threads import apply_numba_threads
from . import _scalar

FAST = {"reassoc", "contract", "nsz"}
jit = nb.njit(cache=True, fastmath=FAST, nogil=True)
pjit = nb.njit(cache=True, fastmath=FAST, nogil=True, parallel=True)

channel_shift = jit(_scalar.channel_shift)
finish_stats = jit(_scalar.finish_stats)
sum_partials = jit(_scalar.sum_partials)
grad_coefficients = jit(_scalar.grad_coefficients)
normalize = jit(_scalar.normalize)
grad_input = jit(_scalar.grad_input)


# ------------------------------------------------ contiguous runs (x[o, c, :]) for inner > 1


@jit
def run_sums(x, o, c, shift):
    a = 0.0
    b = 0.0
    for i in range(x.shape[2]):
        v = np.float64(x[o, c, i]) - shift
        a += v
        b += v * v
    return a, b


@jit
def run_normalize(x, y, o, c, mean, scale, bias):
    for i in range(x.shape[2]):
        y[o, c, i] = normalize(np.float64(x[o, c, i]), mean, scale, bias)


@jit
def run_grad_sums(dy, x, o, c, mean):
    a = 0.0
    b = 0.0
    for i in range(x.shape[2]):
        g = np.float64(dy[o, c, i])
        a += g
        b += (np.float64(x[o, c, i]) - mean) * g
    return a, b


@jit
def run_grad_input(dy, x, dx, o, c, mean, a, b, cc):
    for i in range(x.shape[2]):
        dx[o, c, i] = grad_input(np.float64(dy[o, c, i]), np.float64(x[o, c, i]), mean, a, b, cc)


# ------------------------------------------------ 2-D rows (inner == 1): sweeps across channels


ROW_BLOCK = 4  # rows per sweep in the sums (row_block > 1): partial sums stay in registers


@jit
def rows_sums(x2, lo, hi, shifts, s1, s2, row_block):
    C = x2.shape[1]
    o = lo
    while row_block > 1 and o + ROW_BLOCK <= hi:
        for c in range(C):  # vectorizes across channels; the row loop unrolls
            sh = shifts[c]
            a = 0.0
            b = 0.0
            for j in range(ROW_BLOCK):
                v = np.float64(x2[o + j, c]) - sh
                a += v
                b += v * v
            s1[c] += a
            s2[c] += b
        o += ROW_BLOCK
    for t in range(o, hi):
        r = x2[t]
        for c in range(C):
            v = np.float64(r[c]) - shifts[c]
            s1[c] += v
            s2[c] += v * v


@jit
def rows_normalize(x2, y2, lo, hi, mean, scale, bias):
    C = x2.shape[1]
    for o in range(lo, hi):
        r = x2[o]
        out = y2[o]
        for c in range(C):
            out[c] = normalize(np.float64(r[c]), mean[c], scale[c], bias[c])


@jit
def rows_grad_sums(g2, x2, lo, hi, mean, s, d, row_block):
    C = x2.shape[1]
    o = lo
    while row_block > 1 and o + ROW_BLOCK <= hi:
        for c in range(C):  # vectorizes across channels; the row loop unrolls
            m = mean[c]
            a = 0.0
            b = 0.0
            for j in range(ROW_BLOCK):
                g = np.float64(g2[o + j, c])
                a += g
                b += (np.float64(x2[o + j, c]) - m) * g
            s[c] += a
            d[c] += b
        o += ROW_BLOCK
    for t in range(o, hi):
        gr, xr = g2[t], x2[t]
        for c in range(C):
            g = np.float64(gr[c])
            s[c] += g
            d[c] += (np.float64(xr[c]) - mean[c]) * g


@jit
def rows_grad_input(g2, x2, dx2, lo, hi, mean, a, b, cc):
    C = x2.shape[1]
    for o in range(lo, hi):
        gr, xr, out = g2[o], x2[o], dx2[o]
        for c in range(C):
            out[c] = grad_input(np.float64(gr[c]), np.float64(xr[c]), mean[c], a[c], b[c], cc[c])


# ------------------------------------------------ parallel drivers


@pjit
def _forward_per_channel(x, weight, bias, eps, y, mean, var, invstd):
    outer, C, inner = x.shape
    n = outer * inner
    for c in nb.prange(C):
        shift = channel_shift(np.float64(x[0, c, 0]))
        s1 = 0.0
        s2 = 0.0
        for o in range(outer):
            a, b = run_sums(x, o, c, shift)
            s1 += a
            s2 += b
        m, v, inv = finish_stats(s1, s2, shift, n, eps)
        mean[c] = m
        var[c] = v
        invstd[c] = inv
        scale = inv * weight[c]
        for o in range(outer):  # the slab was just read: cache hits
            run_normalize(x, y, o, c, m, scale, bias[c])


@pjit
def _chunk_sums(x, shifts, n_chunks, row_block):
    outer, C, inner = x.shape
    part = np.zeros((n_chunks, 2, C))
    x2 = x.reshape((outer, C * inner))
    for k in nb.prange(n_chunks):
        lo, hi = k * outer // n_chunks, (k + 1) * outer // n_chunks
        if inner == 1:
            rows_sums(x2, lo, hi, shifts, part[k, 0], part[k, 1], row_block)
        else:
            for o in range(lo, hi):
                for c in range(C):
                    a, b = run_sums(x, o, c, shifts[c])
                    part[k, 0, c] += a
                    part[k, 1, c] += b
    return part


@pjit
def _normalize(x, y, mean, scale, bias, n_chunks):
    outer, C, inner = x.shape
    x2 = x.reshape((outer, C * inner))
    y2 = y.reshape((outer, C * inner))
    for k in nb.prange(n_chunks):
        lo, hi = k * outer // n_chunks, (k + 1) * outer // n_chunks
        if inner == 1:
            rows_normalize(x2, y2, lo, hi, mean, scale, bias)
        else:
            for o in range(lo, hi):
                for c in range(C):
                    run_normalize(x, y, o, c, mean[c], scale[c], bias[c])


@jit
def _forward_chunked(x, weight, bias, eps, y, mean, var, invstd, n_chunks, row_block):
    outer, C, inner = x.shape
    n = outer * inner
    shifts = np.empty(C)
    for c in range(C):
        shifts[c] = channel_shift(np.float64(x[0, c, 0]))
    part = _chunk_sums(x, shifts, n_chunks, row_block)
    scale = np.empty(C)
    for c in range(C):
        s1, s2 = sum_partials(part, c)
        m, v, inv = finish_stats(s1, s2, shifts[c], n, eps)
        mean[c] = m
        var[c] = v
        invstd[c] = inv
        scale[c] = inv * weight[c]
    _normalize(x, y, mean, scale, bias, n_chunks)


@pjit
def _backward_per_channel(dy, x, mean, invstd, weight, training, dx, dweight, dbias):
    outer, C, inner = x.shape
    n = outer * inner
    for c in nb.prange(C):
        s = 0.0
        d = 0.0
        for o in range(outer):
            a, b = run_grad_sums(dy, x, o, c, mean[c])
            s += a
            d += b
        dbias[c] = s
        dweight[c] = d * invstd[c]
        ca, cb, cc = grad_coefficients(s, d, invstd[c], weight[c], n, training)
        for o in range(outer):
            run_grad_input(dy, x, dx, o, c, mean[c], ca, cb, cc)


@pjit
def _chunk_grad_sums(dy, x, mean, n_chunks, row_block):
    outer, C, inner = x.shape
    part = np.zeros((n_chunks, 2, C))
    x2 = x.reshape((outer, C * inner))
    g2 = dy.reshape((outer, C * inner))
    for k in nb.prange(n_chunks):
        lo, hi = k * outer // n_chunks, (k + 1) * outer // n_chunks
        if inner == 1:
            rows_grad_sums(g2, x2, lo, hi, mean, part[k, 0], part[k, 1], row_block)
        else:
            for o in range(lo, hi):
                for c in range(C):
                    a, b = run_grad_sums(dy, x, o, c, mean[c])
                    part[k, 0, c] += a
                    part[k, 1, c] += b
    return part


@pjit
def _grad_input(dy, x, dx, mean, ca, cb, cc, n_chunks):
    outer, C, inner = x.shape
    x2 = x.reshape((outer, C * inner))
    g2 = dy.reshape((outer, C * inner))
    dx2 = dx.reshape((outer, C * inner))
    for k in nb.prange(n_chunks):
        lo, hi = k * outer // n_chunks, (k + 1) * outer // n_chunks
        if inner == 1:
            rows_grad_input(g2, x2, dx2, lo, hi, mean, ca, cb, cc)
        else:
            for o in range(lo, hi):
                for c in range(C):
                    run_grad_input(dy, x, dx, o, c, mean[c], ca[c], cb[c], cc[c])


@jit
def _backward_chunked(dy, x, mean, invstd, weight, training, dx, dweight, dbias, n_chunks,
                      row_block):
    outer, C, inner = x.shape
    n = outer * inner
    part = _chunk_grad_sums(dy, x, mean, n_chunks, row_block)
    ca = np.empty(C)
    cb = np.empty(C)
    cc = np.empty(C)
    for c in range(C):
        s, d = sum_partials(part, c)
        dbias[c] = s
        dweight[c] = d * invstd[c]
        ca[c], cb[c], cc[c] = grad_coefficients(s, d, invstd[c], weight[c], n, training)
    _grad_input(dy, x, dx, mean, ca, cb, cc, n_chunks)


# ------------------------------------------------------------------ the kernel interface


def forward_train(x, weight, bias, eps, y, mean, var, invstd, plan):
    """Training forward; same contract as ``_cython.forward_train`` (``plan.stream`` is
    ignored)."""
    apply_numba_threads(plan.n_threads)
    if plan.per_channel:
        _forward_per_channel(x, weight, bias, eps, y, mean, var, invstd)
    else:
        _forward_chunked(x, weight, bias, eps, y, mean, var, invstd, plan.n_chunks,
                         plan.row_block)


def forward_eval(x, mean, invstd, weight, bias, y, plan):
    """Normalize with given statistics; same contract as ``_cython.forward_eval``."""
    apply_numba_threads(plan.n_threads)
    _normalize(x, y, mean, invstd * weight, bias, plan.n_chunks)


def backward(dy, x, mean, invstd, weight, training, dx, dweight, dbias, plan):
    """Backward; same contract as ``_cython.backward`` (``plan.stream`` is ignored)."""
    apply_numba_threads(plan.n_threads)
    if plan.per_channel:
        _backward_per_channel(dy, x, mean, invstd, weight, training, dx, dweight, dbias)
    else:
        _backward_chunked(dy, x, mean, invstd, weight, training, dx, dweight, dbias,
                          plan.n_chunks, plan.row_block)
