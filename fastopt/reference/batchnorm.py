"""Pure-numpy batch normalization: the obviously correct twin of the compiled kernels.

Same semantics as PyTorch (see DESIGN.md): biased variance to normalize, unbiased variance for the
running variance, eps inside the square root. Everything is computed in float64 with a two-pass
variance and cast back to x's dtype. These functions take already-validated arrays viewed as
``(outer, C, inner)``; ``fastopt.batch_norm_forward(..., backend="numpy")`` reaches them through the
public API.
"""

from __future__ import annotations

import numpy as np


def forward_train(x3: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float):
    """Return ``(y, mean, var, invstd)``; mean/var/invstd are float64 of shape (C,)."""
    xd = x3.astype(np.float64)
    mean = xd.mean(axis=(0, 2))
    centred = xd - mean[None, :, None]
    var = (centred * centred).mean(axis=(0, 2))
    invstd = 1.0 / np.sqrt(var + eps)
    y = centred * (invstd * weight)[None, :, None] + bias[None, :, None]
    return y.astype(x3.dtype), mean, var, invstd


def forward_eval(x3: np.ndarray, mean: np.ndarray, invstd: np.ndarray, weight, bias):
    """Return y = (x - mean) * invstd * weight + bias with given (running) statistics."""
    xd = x3.astype(np.float64)
    y = (xd - mean[None, :, None]) * (invstd * weight)[None, :, None] + bias[None, :, None]
    return y.astype(x3.dtype)


def backward(dy3, x3, mean, invstd, weight, training: bool):
    """Return ``(dx, dweight, dbias)``; dweight/dbias float64 of shape (C,)."""
    g = dy3.astype(np.float64)
    centred = x3.astype(np.float64) - mean[None, :, None]
    n = x3.shape[0] * x3.shape[2]
    s = g.sum(axis=(0, 2))
    d = (centred * g).sum(axis=(0, 2))
    scale = (invstd * weight)[None, :, None]
    if training:
        dx = (g - s[None, :, None] / n - centred * (d * invstd**2)[None, :, None] / n) * scale
    else:
        dx = g * scale
    return dx.astype(x3.dtype), d * invstd, s
