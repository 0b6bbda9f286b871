"""Scalar formulas of the curvature models (MLP, Network, ElmanRNN) for the Numba (and
numba.cuda) kernels.

Each activation with its first and second derivatives (per value, and over a row in place),
the logistic loss pieces and the log-sum-exp of softmax cross-entropy, written once as plain
Python functions (``math`` only, so any Numba target compiles them).
:func:`compiled` turns the module into a namespace of compiled functions whose calls to each
other resolve to the compiled versions: ``_numba.py`` uses ``compiled(njit(...))``, a CUDA kernel
would use ``compiled(cuda.jit(device=True))``. The C/Cython side has its own single copy
(``_formulas.pxd``) and the numpy reference its vectorized one; ``tests/test_formulas.py`` holds
all three to the same values on a grid of extreme inputs.

Activation and loss codes are ``fastopt._codes``'s; they are module constants here so that the
compiled code compares against compile-time integers.

Numba's on-disk cache (``cache=True``) keys each kernel on its own file: after editing a formula
here, touch ``_numba.py`` (or delete its ``__pycache__``) so the kernels that inline it recompile.
"""

from __future__ import annotations

import math
import types

import numpy as np

from .._codes import Activation, Loss, Mode

IDENTITY = int(Activation.IDENTITY)
TANH = int(Activation.TANH)
SIGMOID = int(Activation.SIGMOID)
RELU = int(Activation.RELU)
SOFTPLUS = int(Activation.SOFTPLUS)
GELU = int(Activation.GELU)

CROSS_ENTROPY = int(Loss.CROSS_ENTROPY)
MSE = int(Loss.MSE)
LOGISTIC = int(Loss.LOGISTIC)

MODE_LOSS = int(Mode.LOSS)
MODE_GRAD = int(Mode.GRAD)
MODE_HVP = int(Mode.HVP)
MODE_GNVP = int(Mode.GNVP)

SQRT_2_OVER_PI = 0.7978845608028654
GELU_A = 0.044715
# Beyond |z| = 10 the tanh inside GELU is 1 to far below float64 rounding (its argument is over
# 43), so GELU is z or 0 with derivatives 1 or 0 and 0; taking the limits there also keeps
# z^3 and z * u1^2 from overflowing into inf - inf for huge z.
GELU_SATURATION = 10.0

_F32 = np.float32
_F64 = np.float64

# the formulas, in dependency order (a function may call only those before it)
FORMULAS = ("sigmoid", "softplus", "tanh_fast", "act", "act_row", "logistic", "log_sum_exp")


def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow for either sign of z."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def softplus(z):
    """log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|))."""
    m = z if z > 0 else 0.0
    return m + math.log1p(math.exp(-abs(z)))


def tanh_fast(x):
    """float32 tanh without a libm call, so that loops over it vectorize: a 13/6 rational
    approximation on [-7.905, 7.905] (outside, tanh rounds to +-1 in float32 to 3 ulp); max
    relative error 3.5e-7 (about 3 ulp), checked against float64 tanh on a fine grid. The same
    coefficients as ``_formulas.pxd``'s ``tanh_fast``."""
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


def act(code, z):
    """(value, first derivative, second derivative) of activation ``code`` at z.

    ReLU's second derivative is 0 everywhere (as in autodiff frameworks); ReLU of NaN is NaN
    (with derivatives 0), of -inf 0.
    """
    if code == TANH:
        t = math.tanh(z)
        d1 = 1.0 - t * t
        return t, d1, -2.0 * t * d1
    if code == SIGMOID:
        s = sigmoid(z)
        d1 = s * (1.0 - s)
        return s, d1, d1 * (1.0 - 2.0 * s)
    if code == RELU:
        if z > 0:
            return z, 1.0, 0.0
        if z != z:
            return z, 0.0, 0.0
        return 0.0, 0.0, 0.0
    if code == SOFTPLUS:
        s = sigmoid(z)
        return softplus(z), s, s * (1.0 - s)
    if code == GELU:
        if z >= GELU_SATURATION:
            return z, 1.0, 0.0
        if z <= -GELU_SATURATION:
            return 0.0, 0.0, 0.0
        z2 = z * z
        t = math.tanh(SQRT_2_OVER_PI * (z + GELU_A * z2 * z))
        u1 = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_A * z2)
        s = 0.5 * z * (1.0 + t)
        d1 = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * u1
        d2 = (1.0 - t * t) * (u1 - z * t * u1 * u1 + 0.5 * z * 6.0 * SQRT_2_OVER_PI * GELU_A * z)
        return s, d1, d2
    return z, 1.0, 0.0


def act_row(code, h, d1, d2, need, fast):
    """h (1-D, holding the pre-activations z on entry) <- act(z) in place; need >= 1:
    d1 <- act'(z); need == 2: d2 <- act''(z) (unused below that). ``fast``: h is float32, tanh
    is ``tanh_fast``. tanh and identity run as branch-free loops over the row (they vectorize).
    """
    n = h.shape[0]
    one = h.dtype.type(1)  # keeps float32 arithmetic in float32 (an int literal promotes)
    two = h.dtype.type(2)
    if code == TANH:
        if fast:
            for o in range(n):
                h[o] = tanh_fast(h[o])
        else:
            for o in range(n):
                h[o] = math.tanh(h[o])
        if need >= 1:
            for o in range(n):
                d1[o] = one - h[o] * h[o]
        if need == 2:
            for o in range(n):
                d2[o] = -two * h[o] * d1[o]
    elif code == IDENTITY:
        if need >= 1:
            for o in range(n):
                d1[o] = one
        if need == 2:
            for o in range(n):
                d2[o] = 0
    else:
        for o in range(n):
            s, g1, g2 = act(code, h[o])
            h[o] = s
            if need >= 1:
                d1[o] = g1
            if need == 2:
                d2[o] = g2


def logistic(f, y):
    """Binary cross-entropy on the logit f with label y: (loss, dloss/df, d2loss/df2)."""
    s = sigmoid(f)
    return softplus(f) - y * f, s - y, s * (1.0 - s)


def log_sum_exp(z, b):
    """(log(sum_o exp(f_o)), m, sum_o exp(f_o - m)) of the logits f = z + b (1-D, n >= 1), in
    float64 (each f_o summed in float64, as the reference does), shifted by the row's maximum m
    so that nothing overflows. The softmax is exp(f_o - m) / total, the cross-entropy
    log_sum_exp - f_label."""
    n = z.shape[0]
    m = _F64(z[0]) + _F64(b[0])
    for o in range(1, n):
        f = _F64(z[o]) + _F64(b[o])
        if f > m:
            m = f
    ssum = 0.0
    for o in range(n):
        ssum += math.exp(_F64(z[o]) + _F64(b[o]) - m)
    return m + math.log(ssum), m, ssum


def compiled(jit) -> types.SimpleNamespace:
    """The formulas compiled by ``jit``, each calling the compiled versions of the others.

    Parameters
    ----------
    jit : callable
        A decorator such as ``numba.njit(inline="always")`` or ``numba.cuda.jit(device=True)``;
        the identity gives the plain Python functions.

    Examples
    --------
    >>> from fastopt.curvature import _scalar
    >>> plain = _scalar.compiled(lambda f: f)
    >>> plain.act(_scalar.RELU, -2.0)
    (0.0, 0.0, 0.0)
    """
    namespace = dict(globals())  # the constants and math; functions replaced below
    compiled_fns = {}
    for name in FORMULAS:
        fn = globals()[name]
        copy = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__, fn.__closure__)
        copy.__qualname__, copy.__doc__, copy.__module__ = fn.__qualname__, fn.__doc__, __name__
        compiled_fns[name] = namespace[name] = jit(copy)
    return types.SimpleNamespace(**compiled_fns)
