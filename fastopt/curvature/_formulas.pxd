# Scalar formulas of the curvature models (MLP, Network, ElmanRNN) for the compiled C/Cython
# side, written once: each activation with its first and second derivatives (per value and over
# a row), the logistic loss pieces, the log-sum-exp of softmax cross-entropy (the float32 tanh
# is C, in _formulas.h, shared with the row loops of _rows.h).
# The Numba/CUDA copy is _scalar.py, the numpy one fastopt/reference/curvature.py;
# tests/test_formulas.py holds the three to the same values on a grid of extreme inputs.
# Everything is inline, nogil and never raises; float32 arguments compute in float32.
from libc.math cimport exp, expf, fabs, fabsf, log, log1p, log1pf, tanh

ctypedef fused real:
    float
    double

# fastopt._codes.Activation and Loss (tests/test_formulas.py checks these values against the
# IntEnum through _cython.ACTIVATION_CODES / LOSS_CODES)
cdef enum:
    ACT_IDENTITY = 0
    ACT_TANH = 1
    ACT_SIGMOID = 2
    ACT_RELU = 3
    ACT_SOFTPLUS = 4
    ACT_GELU = 5

cdef enum:
    LOSS_CROSS_ENTROPY = 0
    LOSS_MSE = 1
    LOSS_LOGISTIC = 2

# fastopt._codes.Mode: what an ElmanRNN time-step kernel computes
cdef enum:
    MODE_LOSS = 0
    MODE_GRAD = 1
    MODE_HVP = 2
    MODE_GNVP = 3

# GELU's constants sqrt(2/pi) and 0.044715 appear as literals in act (a module-level cdef
# double in a .pxd is never initialized). Beyond |z| = 10 (GELU_SATURATION in _scalar.py) GELU's
# tanh is 1 to far below float64 rounding: act takes the limits there, which also keeps z^3 and
# z * u1^2 from overflowing into inf - inf for huge z.


cdef extern from "_formulas.h":
    # float32 tanh without a libm call (vectorizes), written in C once for these formulas and
    # the row loops of _rows.h; 3.5e-7 max relative error
    float tanh_fast "fo_tanh_fast"(float x) noexcept nogil


cdef inline real tanh_real(real z) noexcept nogil:
    """tanh in the argument's dtype (float32: the vectorizable tanh_fast)."""
    if real is float:
        return tanh_fast(z)
    else:
        return tanh(z)


cdef inline real sigmoid(real z) noexcept nogil:
    """1 / (1 + exp(-z)) without overflow for either sign of z."""
    cdef real e
    if real is float:
        if z >= 0:
            return 1.0 / (1.0 + expf(-z))
        e = expf(z)
        return e / (1.0 + e)
    else:
        if z >= 0:
            return 1.0 / (1.0 + exp(-z))
        e = exp(z)
        return e / (1.0 + e)


cdef inline real softplus(real z) noexcept nogil:
    """log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|))."""
    cdef real m = z if z > 0 else 0
    if real is float:
        return m + log1pf(expf(-fabsf(z)))
    else:
        return m + log1p(exp(-fabs(z)))


cdef inline void act(int code, real z, real* s, real* d1, real* d2) noexcept nogil:
    """Activation ``code``'s value and first and second derivatives at z.

    ReLU's second derivative is 0 everywhere; ReLU of NaN is NaN (derivatives 0), of -inf 0.
    """
    cdef real t, u1, sg, z2
    if code == ACT_TANH:
        t = tanh_real(z)
        s[0] = t
        d1[0] = 1 - t * t
        d2[0] = -2 * t * d1[0]
    elif code == ACT_SIGMOID:
        sg = sigmoid(z)
        s[0] = sg
        d1[0] = sg * (1 - sg)
        d2[0] = d1[0] * (1 - 2 * sg)
    elif code == ACT_RELU:
        if z > 0:
            s[0] = z
            d1[0] = 1
        else:
            s[0] = z if z != z else 0  # NaN stays NaN
            d1[0] = 0
        d2[0] = 0
    elif code == ACT_SOFTPLUS:
        sg = sigmoid(z)
        s[0] = softplus(z)
        d1[0] = sg
        d2[0] = sg * (1 - sg)
    elif code == ACT_GELU:
        if z >= 10:
            s[0] = z
            d1[0] = 1
            d2[0] = 0
        elif z <= -10:
            s[0] = 0
            d1[0] = 0
            d2[0] = 0
        else:
            z2 = z * z
            t = tanh_real(<real>0.7978845608028654 * (z + <real>0.044715 * z2 * z))
            u1 = <real>0.7978845608028654 * (1 + 3 * <real>0.044715 * z2)
            s[0] = <real>0.5 * z * (1 + t)
            d1[0] = <real>0.5 * (1 + t) + <real>0.5 * z * (1 - t * t) * u1
            d2[0] = (1 - t * t) * (u1 - z * t * u1 * u1
                                   + <real>0.5 * z * <real>(6 * 0.7978845608028654 * 0.044715) * z)
    else:  # identity
        s[0] = z
        d1[0] = 1
        d2[0] = 0


cdef inline void logistic(double f, double y, double* loss, double* grad,
                          double* curv) noexcept nogil:
    """Binary cross-entropy on the logit f with label y: loss, dloss/df, d2loss/df2 (float64)."""
    cdef double sg = sigmoid(f)
    loss[0] = softplus(f) - y * f
    grad[0] = sg - y
    curv[0] = sg * (1 - sg)


cdef inline void act_row(int code, real* h, real* d1, real* d2, Py_ssize_t n,
                         int need) noexcept nogil:
    """h (holding the pre-activations z on entry) <- act(z) over a row of n values; need >= 1:
    d1 <- act'(z); need == 2: d2 <- act''(z) (d1, d2 unused, may be NULL, below that)."""
    cdef Py_ssize_t o
    cdef real s, g1, g2
    if code == ACT_TANH:
        # one array written per loop: gcc vectorizes these (a loop writing h, d1 and d2 at once
        # needs too many run-time alias checks)
        for o in range(n):
            h[o] = tanh_real(h[o])
        if need >= 1:
            for o in range(n):
                d1[o] = 1 - h[o] * h[o]
        if need == 2:
            for o in range(n):
                d2[o] = -2 * h[o] * d1[o]
    elif code == ACT_IDENTITY:
        if need >= 1:
            for o in range(n):
                d1[o] = 1
        if need == 2:
            for o in range(n):
                d2[o] = 0
    else:
        for o in range(n):
            act(code, h[o], &s, &g1, &g2)
            h[o] = s
            if need >= 1:
                d1[o] = g1
            if need == 2:
                d2[o] = g2


cdef inline double log_sum_exp(const real* z, const real* b, Py_ssize_t n, double* shift,
                               double* total) noexcept nogil:
    """log(sum_o exp(f_o)) of the logits f = z + b (n >= 1), in float64 (each f_o is summed in
    float64, as the reference does), shifted by the row's maximum so that nothing overflows:
    ``shift`` gets that maximum m and ``total`` sum_o exp(f_o - m), so that the softmax is
    exp(f_o - m) / total and the cross-entropy log_sum_exp - f_label."""
    cdef Py_ssize_t o
    cdef double m = <double>z[0] + b[0], f, ssum = 0
    for o in range(1, n):
        f = <double>z[o] + b[o]
        if f > m:
            m = f
    for o in range(n):
        ssum = ssum + exp(<double>z[o] + b[o] - m)
    shift[0] = m
    total[0] = ssum
    return m + log(ssum)
