# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython batch-norm kernels (fused forward, eval forward, backward) over (outer, C, inner) views.

Kernels never validate or allocate beyond their documented outputs: ``fastopt.batchnorm.api``
checks shapes and dtypes and picks the strategy (``_plan.make_plan``). Every loop runs without
the GIL. Statistics accumulate in float64 around a per-channel shift (the channel's first value),
so float32 input with a large offset keeps its variance.

Arguments are marked IN (read), OUT (written) or INOUT.
"""

cimport cython
from cython.parallel cimport prange
from libc.math cimport isfinite, sqrt
from cython cimport floating

import numpy as np


# ---------------------------------------------------------------- contiguous-run helpers (.pxd)

cdef void run_sums(const floating* x, Py_ssize_t n, double shift,
                   double* s1, double* s2) noexcept nogil:
    """s1 += sum(x - shift), s2 += sum((x - shift)**2) over a contiguous run (float64)."""
    cdef double a = 0.0, b = 0.0, v
    cdef Py_ssize_t i
    for i in range(n):
        v = <double>x[i] - shift
        a += v
        b += v * v
    s1[0] += a
    s2[0] += b


cdef void run_normalize(const floating* x, floating* y, Py_ssize_t n,
                        double mean, double scale, double bias) noexcept nogil:
    """y = (x - mean) * scale + bias over a contiguous run, computed in float64."""
    cdef Py_ssize_t i
    cdef floating* z
    if <const void*>x == <void*>y:
        # in place: a loop over one pointer vectorizes without an overlap check
        z = y
        for i in range(n):
            z[i] = <floating>((<double>z[i] - mean) * scale + bias)
    else:
        for i in range(n):
            y[i] = <floating>((<double>x[i] - mean) * scale + bias)


cdef void run_grad_sums(const floating* dy, const floating* x, Py_ssize_t n, double mean,
                        double* s, double* d) noexcept nogil:
    """s += sum(dy), d += sum((x - mean) * dy) over a contiguous run (float64)."""
    cdef double a = 0.0, b = 0.0, g
    cdef Py_ssize_t i
    for i in range(n):
        g = <double>dy[i]
        a += g
        b += (<double>x[i] - mean) * g
    s[0] += a
    d[0] += b


cdef void run_grad_input(const floating* dy, const floating* x, floating* dx, Py_ssize_t n,
                         double mean, double a, double b, double c) noexcept nogil:
    """dx = dy * a + (x - mean) * b + c over a contiguous run, computed in float64."""
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = <floating>(<double>dy[i] * a + (<double>x[i] - mean) * b + c)


cdef inline double channel_shift(double first) noexcept nogil:
    # Shift by a value of the channel for accuracy; a non-finite one must not poison the sums
    # beyond what the data itself does (an Inf channel gets mean Inf, as in PyTorch).
    return first if isfinite(first) else 0.0


cdef inline void finish_stats(double s1, double s2, double shift, double n, double eps,
                              double* mean, double* var, double* invstd) noexcept nogil:
    cdef double m = s1 / n
    cdef double v = s2 / n - m * m
    if v < 0.0:  # rounding; NaN stays NaN
        v = 0.0
    mean[0] = shift + m
    var[0] = v
    invstd[0] = 1.0 / sqrt(v + eps)


# ---------------------------------------------------------------- training forward

@cython.boundscheck(False)
@cython.wraparound(False)
def forward_train(
    const floating[:, :, ::1] x,     # IN  (outer, C, inner)
    const double[::1] weight,        # IN  (C,)
    const double[::1] bias,          # IN  (C,)
    double eps,
    floating[:, :, ::1] y,           # OUT (outer, C, inner); may be x itself
    double[::1] mean,                # OUT (C,) batch mean
    double[::1] var,                 # OUT (C,) biased batch variance
    double[::1] invstd,              # OUT (C,) 1/sqrt(var + eps)
    bint per_channel,
    Py_ssize_t n_chunks,
    int n_threads,
):
    """Training forward: batch statistics, then y = (x - mean) * invstd * weight + bias."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t stride = C * inner, c, o, k, lo, hi
    cdef double n = <double>(outer * inner), s1, s2, shift
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &y[0, 0, 0]
    cdef double[:, :, ::1] part
    cdef double[::1] shifts, scale

    if per_channel:
        with nogil:
            for c in prange(C, schedule="static", num_threads=n_threads):
                shift = channel_shift(<double>xp[c * inner])
                s1 = 0.0
                s2 = 0.0
                for o in range(outer):
                    run_sums(xp + o * stride + c * inner, inner, shift, &s1, &s2)
                finish_stats(s1, s2, shift, n, eps, &mean[c], &var[c], &invstd[c])
                # the slab was just read: this pass hits cache when it fits
                for o in range(outer):
                    run_normalize(xp + o * stride + c * inner, yp + o * stride + c * inner,
                                  inner, mean[c], invstd[c] * weight[c], bias[c])
        return

    part = np.zeros((n_chunks, 2, C))
    shifts = np.empty(C)
    scale = np.empty(C)
    for c in range(C):
        shifts[c] = channel_shift(<double>xp[c * inner])
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            chunk_sums(xp, outer, C, inner, k, n_chunks, &shifts[0], &part[k, 0, 0],
                       &part[k, 1, 0])
    for c in range(C):
        s1 = 0.0
        s2 = 0.0
        for k in range(n_chunks):  # fixed order: deterministic
            s1 += part[k, 0, c]
            s2 += part[k, 1, c]
        finish_stats(s1, s2, shifts[c], n, eps, &mean[c], &var[c], &invstd[c])
        scale[c] = invstd[c] * weight[c]
    _normalize_rows(x, y, mean, scale, bias, n_chunks, n_threads)


cdef void chunk_sums(const floating* xp, Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                     Py_ssize_t k, Py_ssize_t n_chunks, const double* shifts,
                     double* s1, double* s2) noexcept nogil:
    """Per-channel shifted sums over the rows of chunk k (OUT: s1[C], s2[C], zero on entry)."""
    cdef Py_ssize_t lo = k * outer // n_chunks, hi = (k + 1) * outer // n_chunks
    cdef Py_ssize_t o, c
    cdef const floating* row
    cdef double v
    for o in range(lo, hi):
        row = xp + o * C * inner
        if inner == 1:
            for c in range(C):  # vectorizes across channels
                v = <double>row[c] - shifts[c]
                s1[c] += v
                s2[c] += v * v
        else:
            for c in range(C):
                run_sums(row + c * inner, inner, shifts[c], &s1[c], &s2[c])


cdef void normalize_row(const floating* row, floating* out, Py_ssize_t C, Py_ssize_t inner,
                        const double* mean, const double* scale, const double* bias) noexcept nogil:
    cdef Py_ssize_t c
    if inner == 1:
        if <const void*>row == <void*>out:
            for c in range(C):
                out[c] = <floating>((<double>out[c] - mean[c]) * scale[c] + bias[c])
        else:
            for c in range(C):
                out[c] = <floating>((<double>row[c] - mean[c]) * scale[c] + bias[c])
    else:
        for c in range(C):
            run_normalize(row + c * inner, out + c * inner, inner, mean[c], scale[c], bias[c])


cdef void _normalize_rows(const floating[:, :, ::1] x, floating[:, :, ::1] y,
                          const double[::1] mean, const double[::1] scale,
                          const double[::1] bias, Py_ssize_t n_chunks, int n_threads):
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t k, o
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &y[0, 0, 0]
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            for o in range(k * outer // n_chunks, (k + 1) * outer // n_chunks):
                normalize_row(xp + o * C * inner, yp + o * C * inner, C, inner,
                              &mean[0], &scale[0], &bias[0])


# ---------------------------------------------------------------- eval forward

def forward_eval(
    const floating[:, :, ::1] x,     # IN  (outer, C, inner)
    const double[::1] mean,          # IN  (C,) running mean
    const double[::1] scale,         # IN  (C,) invstd * weight
    const double[::1] bias,          # IN  (C,)
    floating[:, :, ::1] y,           # OUT (outer, C, inner); may be x itself
    Py_ssize_t n_chunks,
    int n_threads,
):
    """Eval forward: y = (x - mean) * scale + bias with the running statistics."""
    _normalize_rows(x, y, mean, scale, bias, n_chunks, n_threads)


# ---------------------------------------------------------------- backward

def backward(
    const floating[:, :, ::1] dy,    # IN  (outer, C, inner)
    const floating[:, :, ::1] x,     # IN  (outer, C, inner)
    const double[::1] mean,          # IN  (C,) saved mean (batch or running)
    const double[::1] invstd,        # IN  (C,) saved invstd
    const double[::1] weight,        # IN  (C,)
    bint training,
    floating[:, :, ::1] dx,          # OUT (outer, C, inner); may alias dy or x
    double[::1] dweight,             # OUT (C,) sum((x - mean) * dy) * invstd
    double[::1] dbias,               # OUT (C,) sum(dy)
    bint per_channel,
    Py_ssize_t n_chunks,
    int n_threads,
):
    """Backward of batch norm: one reduction pass (sum dy, sum (x-mean) dy), one dx pass."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t stride = C * inner, c, o, k
    cdef double n = <double>(outer * inner), s, d
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* gp = &dy[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef double[:, :, ::1] part
    cdef double[::1] ca, cb, cc

    if per_channel:
        with nogil:
            for c in prange(C, schedule="static", num_threads=n_threads):
                s = 0.0
                d = 0.0
                for o in range(outer):
                    run_grad_sums(gp + o * stride + c * inner, xp + o * stride + c * inner,
                                  inner, mean[c], &s, &d)
                dbias[c] = s
                dweight[c] = d * invstd[c]
                for o in range(outer):
                    if training:
                        run_grad_input(gp + o * stride + c * inner, xp + o * stride + c * inner,
                                       dxp + o * stride + c * inner, inner, mean[c],
                                       invstd[c] * weight[c],
                                       -d * invstd[c] * invstd[c] * invstd[c] * weight[c] / n,
                                       -s / n * invstd[c] * weight[c])
                    else:
                        run_grad_input(gp + o * stride + c * inner, xp + o * stride + c * inner,
                                       dxp + o * stride + c * inner, inner, mean[c],
                                       invstd[c] * weight[c], 0.0, 0.0)
        return

    part = np.zeros((n_chunks, 2, C))
    ca = np.empty(C)
    cb = np.empty(C)
    cc = np.empty(C)
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            chunk_grad_sums(gp, xp, outer, C, inner, k, n_chunks, &mean[0], &part[k, 0, 0],
                            &part[k, 1, 0])
    for c in range(C):
        s = 0.0
        d = 0.0
        for k in range(n_chunks):  # fixed order: deterministic
            s += part[k, 0, c]
            d += part[k, 1, c]
        dbias[c] = s
        dweight[c] = d * invstd[c]
        ca[c] = invstd[c] * weight[c]
        cb[c] = -d * invstd[c] * invstd[c] * invstd[c] * weight[c] / n if training else 0.0
        cc[c] = -s / n * invstd[c] * weight[c] if training else 0.0
    with nogil:
        for k in prange(n_chunks, schedule="static", num_threads=n_threads):
            for o in range(k * outer // n_chunks, (k + 1) * outer // n_chunks):
                grad_input_row(gp + o * stride, xp + o * stride, dxp + o * stride, C, inner,
                               &mean[0], &ca[0], &cb[0], &cc[0])


cdef void chunk_grad_sums(const floating* gp, const floating* xp, Py_ssize_t outer, Py_ssize_t C,
                          Py_ssize_t inner, Py_ssize_t k, Py_ssize_t n_chunks,
                          const double* mean, double* s, double* d) noexcept nogil:
    """Per-channel sum(dy), sum((x-mean) dy) over the rows of chunk k (OUT: s[C], d[C])."""
    cdef Py_ssize_t lo = k * outer // n_chunks, hi = (k + 1) * outer // n_chunks
    cdef Py_ssize_t o, c
    cdef const floating* xr
    cdef const floating* gr
    cdef double g
    for o in range(lo, hi):
        xr = xp + o * C * inner
        gr = gp + o * C * inner
        if inner == 1:
            for c in range(C):  # vectorizes across channels
                g = <double>gr[c]
                s[c] += g
                d[c] += (<double>xr[c] - mean[c]) * g
        else:
            for c in range(C):
                run_grad_sums(gr + c * inner, xr + c * inner, inner, mean[c], &s[c], &d[c])


cdef void grad_input_row(const floating* gr, const floating* xr, floating* dxr, Py_ssize_t C,
                         Py_ssize_t inner, const double* mean, const double* a, const double* b,
                         const double* cc) noexcept nogil:
    cdef Py_ssize_t c
    if inner == 1:
        for c in range(C):
            dxr[c] = <floating>(<double>gr[c] * a[c] + (<double>xr[c] - mean[c]) * b[c] + cc[c])
    else:
        for c in range(C):
            run_grad_input(gr + c * inner, xr + c * inner, dxr + c * inner, inner, mean[c],
                           a[c], b[c], cc[c])
