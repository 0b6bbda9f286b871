"""Scalar helpers shared by the Numba CPU kernels and the numba.cuda kernels.

Plain Python functions of float64 scalars (and one of a partial-sum array): ``_numba.py`` wraps
them with ``njit`` and ``_cuda.py`` with ``cuda.jit(device=True)``, so the two targets cannot
drift apart.
"""

from __future__ import annotations

import math


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


def grad_coefficients(s: float, d: float, mean: float, invstd: float, weight: float, n: float,
                      training: bool):
    """(a, b, c) with ``dx = dy * a + x * b + c`` from ``s = sum(dy)``, ``d = sum((x - mean) *
    dy)``: PyTorch's ``(dy - s/n - (x - mean) d invstd^2 / n) invstd weight`` with the mean folded
    into the constant. In eval mode the statistics are constants (b = c = 0)."""
    a = invstd * weight
    if not training:
        return a, 0.0, 0.0
    b = -d * invstd * invstd * a / n
    return a, b, -s / n * a - mean * b
