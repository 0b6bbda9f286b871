"""Pure-numpy batch normalization: the obviously correct twin of the compiled kernels.

Same semantics as PyTorch (docs/design.md): biased variance to normalize, unbiased variance for
the running variance, eps inside the square root. Everything is computed in float64 with a
two-pass variance and cast back to x's dtype. The three kernels have the interface of every
batch-norm backend (``fastopt.batchnorm._cython``, ``_numba``, ``_cuda``): arrays viewed as
``(outer, C, inner)``, outputs written into the caller's arrays, the work split ``plan``
accepted and ignored. ``fastopt.batch_norm_forward(..., backend="numpy")`` reaches them through
the public API.

The element formulas are numpy functions of their own (:func:`normalize`,
:func:`grad_input`); tests/test_batchnorm_formulas.py checks the compiled backends' formulas
against them.
"""

from __future__ import annotations

import numpy as np


def normalize(x, mean, scale, bias):
    """``y = (x - mean) * scale + bias`` (float64; ``scale = invstd * weight``)."""
    return (np.asarray(x, np.float64) - mean) * scale + bias


def inverse_std(var, eps):
    """``1 / sqrt(var + eps)``."""
    return 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)


def grad_input(g, x, mean, invstd, weight, s, d, n, training):
    """PyTorch's dx: ``(dy - s/n - (x - mean) * d * invstd**2 / n) * invstd * weight`` in
    training mode (``s = sum(dy)``, ``d = sum((x - mean) * dy)`` over the channel's n values),
    ``dy * invstd * weight`` in eval mode."""
    g = np.asarray(g, np.float64)
    scale = invstd * weight
    if not training:
        return g * scale
    centred = np.asarray(x, np.float64) - mean
    return (g - s / n - centred * (d * invstd * invstd) / n) * scale


def _channels(v):
    return np.asarray(v, np.float64)[None, :, None]


def forward_train(x, weight, bias, eps, y, mean, var, invstd, plan):
    """Training forward: OUT mean, var (biased), invstd (float64, (C,)) and y."""
    del plan
    xd = x.astype(np.float64)
    mean[...] = xd.mean(axis=(0, 2))
    centred = xd - _channels(mean)
    var[...] = (centred * centred).mean(axis=(0, 2))
    invstd[...] = inverse_std(var, eps)
    y[...] = normalize(xd, _channels(mean), _channels(invstd * weight), _channels(bias))


def forward_eval(x, mean, invstd, weight, bias, y, plan):
    """OUT ``y = (x - mean) * invstd * weight + bias`` with given (running) statistics."""
    del plan
    y[...] = normalize(x, _channels(mean), _channels(invstd * weight), _channels(bias))


def backward(dy, x, mean, invstd, weight, training, dx, dweight, dbias, plan):
    """OUT dx, dweight = sum((x - mean) dy) invstd, dbias = sum(dy) (float64, (C,))."""
    del plan
    g = dy.astype(np.float64)
    centred = x.astype(np.float64) - _channels(mean)
    n = x.shape[0] * x.shape[2]
    s = g.sum(axis=(0, 2))
    d = (centred * g).sum(axis=(0, 2))
    dx[...] = grad_input(g, x, _channels(mean), _channels(invstd), _channels(weight),
                         _channels(s), _channels(d), n, training)
    dweight[...] = d * invstd
    dbias[...] = s
