"""Numba batch-norm kernels: the same strategies and signatures as ``_cython.pyx``.

Plain loops over the innermost axis, compiled lazily on first call (``cache=True``), one
specialization per dtype. ``fastmath`` allows only reassociation and contraction, so float64
reductions vectorize while NaN and Inf keep their meaning.
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
grad_coefficients = jit(_scalar.grad_coefficients)


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
        y[o, c, i] = (np.float64(x[o, c, i]) - mean) * scale + bias


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
        dx[o, c, i] = np.float64(dy[o, c, i]) * a + (np.float64(x[o, c, i]) - mean) * b + cc


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
        for o in range(outer):  # the slab was just read: cache hits when it fits
            run_normalize(x, y, o, c, m, scale, bias[c])


@pjit
def _chunk_sums(x, shifts, n_chunks):
    outer, C, inner = x.shape
    part = np.zeros((n_chunks, 2, C))
    for k in nb.prange(n_chunks):
        s1 = part[k, 0]
        s2 = part[k, 1]
        for o in range(k * outer // n_chunks, (k + 1) * outer // n_chunks):
            for c in range(C):
                a, b = run_sums(x, o, c, shifts[c])
                s1[c] += a
                s2[c] += b
    return part


@pjit
def _normalize_rows(x, y, mean, scale, bias, n_chunks):
    outer, C, inner = x.shape
    for k in nb.prange(n_chunks):
        for o in range(k * outer // n_chunks, (k + 1) * outer // n_chunks):
            for c in range(C):
                run_normalize(x, y, o, c, mean[c], scale[c], bias[c])


@jit
def normalize(x, y, mean, scale, bias, n_chunks):
    outer, C, inner = x.shape
    if inner == 1:
        _rows_normalize(x.reshape((outer, C)), y.reshape((outer, C)), mean, scale, bias, n_chunks)
    else:
        _normalize_rows(x, y, mean, scale, bias, n_chunks)


@jit
def _forward_chunked(x, weight, bias, eps, y, mean, var, invstd, n_chunks):
    outer, C, inner = x.shape
    n = outer * inner
    shifts = np.empty(C)
    for c in range(C):
        shifts[c] = channel_shift(np.float64(x[0, c, 0]))
    if inner == 1:
        part = _rows_sums(x.reshape((outer, C)), shifts, n_chunks)
    else:
        part = _chunk_sums(x, shifts, n_chunks)
    scale = np.empty(C)
    for c in range(C):
        s1 = 0.0
        s2 = 0.0
        for k in range(n_chunks):  # fixed order: deterministic
            s1 += part[k, 0, c]
            s2 += part[k, 1, c]
        m, v, inv = finish_stats(s1, s2, shifts[c], n, eps)
        mean[c] = m
        var[c] = v
        invstd[c] = inv
        scale[c] = inv * weight[c]
    normalize(x, y, mean, scale, bias, n_chunks)


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
def _chunk_grad_sums(dy, x, mean, n_chunks):
    outer, C, inner = x.shape
    part = np.zeros((n_chunks, 2, C))
    for k in nb.prange(n_chunks):
        s = part[k, 0]
        d = part[k, 1]
        for o in range(k * outer // n_chunks, (k + 1) * outer // n_chunks):
            for c in range(C):
                a, b = run_grad_sums(dy, x, o, c, mean[c])
                s[c] += a
                d[c] += b
    return part


@pjit
def _grad_input_rows(dy, x, dx, mean, ca, cb, cc, n_chunks):
    outer, C, inner = x.shape
    for k in nb.prange(n_chunks):
        for o in range(k * outer // n_chunks, (k + 1) * outer // n_chunks):
            for c in range(C):
                run_grad_input(dy, x, dx, o, c, mean[c], ca[c], cb[c], cc[c])


@jit
def _backward_chunked(dy, x, mean, invstd, weight, training, dx, dweight, dbias, n_chunks):
    outer, C, inner = x.shape
    n = outer * inner
    if inner == 1:
        part = _rows_grad_sums(dy.reshape((outer, C)), x.reshape((outer, C)), mean, n_chunks)
    else:
        part = _chunk_grad_sums(dy, x, mean, n_chunks)
    ca = np.empty(C)
    cb = np.empty(C)
    cc = np.empty(C)
    for c in range(C):
        s = 0.0
        d = 0.0
        for k in range(n_chunks):  # fixed order: deterministic
            s += part[k, 0, c]
            d += part[k, 1, c]
        dbias[c] = s
        dweight[c] = d * invstd[c]
        ca[c], cb[c], cc[c] = grad_coefficients(s, d, invstd[c], weight[c], n, training)
    if inner == 1:
        _rows_grad_input(dy.reshape((outer, C)), x.reshape((outer, C)), dx.reshape((outer, C)),
                         mean, ca, cb, cc, n_chunks)
    else:
        _grad_input_rows(dy, x, dx, mean, ca, cb, cc, n_chunks)


# ---------------------------------------- inner == 1 (channels-last, (N, C)): 2-D contiguous rows


@pjit
def _rows_sums(x2, shifts, n_chunks):
    rows, C = x2.shape
    part = np.zeros((n_chunks, 2, C))
    for k in nb.prange(n_chunks):
        s1 = part[k, 0]
        s2 = part[k, 1]
        for o in range(k * rows // n_chunks, (k + 1) * rows // n_chunks):
            row = x2[o]
            for c in range(C):  # vectorizes across channels
                v = np.float64(row[c]) - shifts[c]
                s1[c] += v
                s2[c] += v * v
    return part


@pjit
def _rows_normalize(x2, y2, mean, scale, bias, n_chunks):
    rows, C = x2.shape
    for k in nb.prange(n_chunks):
        for o in range(k * rows // n_chunks, (k + 1) * rows // n_chunks):
            row = x2[o]
            out = y2[o]
            for c in range(C):
                out[c] = (np.float64(row[c]) - mean[c]) * scale[c] + bias[c]


@pjit
def _rows_grad_sums(g2, x2, mean, n_chunks):
    rows, C = x2.shape
    part = np.zeros((n_chunks, 2, C))
    for k in nb.prange(n_chunks):
        s = part[k, 0]
        d = part[k, 1]
        for o in range(k * rows // n_chunks, (k + 1) * rows // n_chunks):
            xr = x2[o]
            gr = g2[o]
            for c in range(C):  # vectorizes across channels
                g = np.float64(gr[c])
                s[c] += g
                d[c] += (np.float64(xr[c]) - mean[c]) * g
    return part


@pjit
def _rows_grad_input(g2, x2, dx2, mean, ca, cb, cc, n_chunks):
    rows, C = x2.shape
    for k in nb.prange(n_chunks):
        for o in range(k * rows // n_chunks, (k + 1) * rows // n_chunks):
            xr = x2[o]
            gr = g2[o]
            out = dx2[o]
            for c in range(C):
                out[c] = np.float64(gr[c]) * ca[c] + (np.float64(xr[c]) - mean[c]) * cb[c] + cc[c]


# ------------------------------------------------------------------ entry points (as in Cython)


def forward_train(x, weight, bias, eps, y, mean, var, invstd, per_channel, n_chunks, n_threads):
    """Training forward; same contract as ``_cython.forward_train``."""
    apply_numba_threads(n_threads)
    if per_channel:
        _forward_per_channel(x, weight, bias, eps, y, mean, var, invstd)
    else:
        _forward_chunked(x, weight, bias, eps, y, mean, var, invstd, n_chunks)


def forward_eval(x, mean, scale, bias, y, n_chunks, n_threads):
    """Eval forward; same contract as ``_cython.forward_eval``."""
    apply_numba_threads(n_threads)
    normalize(x, y, mean, scale, bias, n_chunks)


def backward(dy, x, mean, invstd, weight, training, dx, dweight, dbias, per_channel, n_chunks,
             n_threads):
    """Backward; same contract as ``_cython.backward``."""
    apply_numba_threads(n_threads)
    if per_channel:
        _backward_per_channel(dy, x, mean, invstd, weight, training, dx, dweight, dbias)
    else:
        _backward_chunked(dy, x, mean, invstd, weight, training, dx, dweight, dbias, n_chunks)
