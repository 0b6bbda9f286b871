"""Scalar helpers of the spectra family shared by the Numba CPU kernels and the numba.cuda
kernels: the largest eigenvalue of a symmetric tridiagonal (Lanczos) matrix by bisection on Sturm
counts, and its eigenvector's squared last component from ratio recurrences.

Plain Python functions of scalars and 1-D arrays (``math`` only); :func:`compiled` compiles them
for a target (``_numba.py``: ``njit``; ``_cuda.py``: ``cuda.jit(device=True)``) so that calls
between them resolve to the compiled versions and the two targets cannot drift apart. The
Cython kernel has its own copy (``_cython.pyx``); tests compare all backends.

Numba's on-disk cache keys each kernel on its own file: after editing a helper here, touch
``_numba.py`` so the kernels that call it recompile.
"""

from __future__ import annotations

import types

# the helpers, in dependency order (a function may call only those before it)
HELPERS = ("sturm_below", "tridiag_top_one")


def sturm_below(al, b2, k, x):
    cnt = 0
    d = al[0] - x
    if d == 0.0:
        d = -1e-300
    if d < 0:
        cnt += 1
    for i in range(1, k):
        d = (al[i] - x) - b2[i - 1] / d
        if d == 0.0:
            d = -1e-300
        if d < 0:
            cnt += 1
    return cnt


def tridiag_top_one(al, be, k, b2):
    for i in range(k - 1):
        b2[i] = be[i] * be[i]
    lo = al[0]
    hi = al[0]
    for i in range(k):
        bl = abs(be[i - 1]) if i > 0 else 0.0
        br = abs(be[i]) if i < k - 1 else 0.0
        lo = min(lo, al[i] - bl - br)
        hi = max(hi, al[i] + bl + br)
    a = max(abs(lo), abs(hi))
    if a == 0.0:  # the zero matrix
        return 0.0, 1.0
    hi = hi + 1e-15 * a
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi or hi - lo <= 4e-16 * a:
            break
        if sturm_below(al, b2, k, mid) == k:
            hi = mid
        else:
            lo = mid
    if k == 1:
        return hi, 1.0
    t = hi
    gprev2 = 0.0
    r = t - al[0]
    g = 1.0 / r if r != 0 else 1e300
    gprev = 0.0
    for i in range(1, k - 1):
        gprev2 = gprev
        gprev = g
        rprev = r
        r = (t - al[i]) - b2[i - 1] / rprev
        if r == 0.0:
            r = 1e-300
        g = (1.0 + (t - al[i]) * gprev - b2[i - 1] * gprev2 / rprev) / r
    d = 1.0 + (t - al[k - 1]) * g - b2[k - 2] * gprev / r
    return hi, (1.0 / d if d > 1.0 else 1.0)


def compiled(jit) -> types.SimpleNamespace:
    """The helpers compiled by ``jit`` (e.g. ``numba.njit`` or ``numba.cuda.jit(device=True)``),
    each calling the compiled versions of the others.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.spectral import _scalar
    >>> plain = _scalar.compiled(lambda f: f)
    >>> top, s2 = plain.tridiag_top_one(np.array([2.0, 2.0]), np.array([1.0, 0.0]), 2,
    ...                                 np.zeros(2))
    >>> round(float(top), 12)
    3.0
    """
    namespace = dict(globals())
    out = {}
    for name in HELPERS:
        fn = globals()[name]
        copy = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__, fn.__closure__)
        copy.__qualname__, copy.__doc__, copy.__module__ = fn.__qualname__, fn.__doc__, __name__
        out[name] = namespace[name] = jit(copy)
    return types.SimpleNamespace(**out)
