"""Scalar formulas shared by the Numba CPU kernels and the numba.cuda kernels.

Plain Python functions of float64 scalars (and one of a partial-sum array): ``_numba.py`` wraps
them with ``njit`` and ``_cuda.py`` with ``cuda.jit(device=True)``, so the two targets cannot
drift apart. Their C twins are in ``_scalar.h`` (Cython backend) and the numpy reference's in
``fastopt/reference/batchnorm.py``; tests/test_batchnorm_formulas.py checks that all agree.

Element-wise outputs subtract the mean before scaling, so that a constant or huge-magnitude
channel cancels exactly (``x - mean == 0``).
"""

from __future__ import annotations

import math


def normalize(x: float, mean: float, scale: float, bias: float) -> float:
    """``y = (x - mean) * scale + bias`` with ``scale = invstd * weight``."""
    return (x - mean) * scale + bias


def grad_input(g: float, x: float, mean: float, a: float, b: float, c: float) -> float:
    """``dx = dy * a + (x - mean) * b + c`` with ``(a, b, c)`` from :func:`grad_coefficients`."""
    return g * a + ((x - mean) * b + c)


def channel_shift(first: float) -> float:
    """Shift for a channel's float64 sums: its first value, unless that is NaN/Inf.

    Summing ``x - shift`` keeps the variance of float32 data with a large offset; a non-finite
    shift would poison the sums beyond what the data does (an Inf channel gets mean Inf, as in
    PyTorch).
    """
    return first if math.isfinite(first) else 0.0


def sum_partials(part, c: int):
    """Channel c's two partial sums ``part[k, 0, c]``, ``part[k, 1, c]`` added in chunk order
    (a fixed order, so results are deterministic for a given chunk count)."""
    a = 0.0
    b = 0.0
    for k in range(part.shape[0]):
        a += part[k, 0, c]
        b += part[k, 1, c]
    return a, b


def finish_stats(s1: float, s2: float, shift: float, n: float, eps: float):
    """(mean, biased var, invstd) from shifted sums ``s1 = sum(x - shift)``, ``s2 = sum(.**2)``."""
    m = s1 / n
    v = s2 / n - m * m
    if v < 0.0:  # rounding; NaN stays NaN
        v = 0.0
    return shift + m, v, 1.0 / math.sqrt(v + eps)


def grad_coefficients(s: float, d: float, invstd: float, weight: float, n: float,
                      training: bool):
    """(a, b, c) of :func:`grad_input` from ``s = sum(dy)``, ``d = sum((x - mean) * dy)``:
    PyTorch's ``(dy - s/n - (x - mean) d invstd^2 / n) invstd weight``. In eval mode the
    statistics are constants (b = c = 0)."""
    scale = invstd * weight
    if not training:
        return scale, 0.0, 0.0
    return scale, -d * invstd * invstd * scale / n, -s / n * scale
