"""Pure-numpy reference of the curvature kernels (backend ``"numpy"``; the tests' oracle).

Same signatures and layouts as ``fastopt.curvature._cython``: streams are ``(N, 1 + k, n)``,
slot 0 the forward value, slot ``1 + j`` the R-stream of direction ``j``. Written for clarity,
vectorized over whole arrays; ``n_threads`` is ignored.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .._codes import Activation, Loss
from ..curvature._hooks import formula_activation, formula_logistic

# the formulas that the other models' references (network.py, rnn.py) share with the kernels
FORMULAS = ("activation", "logistic", "log_sum_exp", "softmax_cross_entropy", "softmax_hessian")

_SQRT_2_OVER_PI = 0.7978845608028654
_GELU_A = 0.044715
_GELU_SATURATION = 10.0  # GELU takes its limits beyond |z| = 10 (see curvature/_scalar.py)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def activation(code: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activation ``code`` (a ``fastopt._codes.Activation``) at z and its first and second
    derivatives, in z's dtype.

    ReLU's second derivative is 0 everywhere, ReLU of NaN is NaN (derivatives 0); GELU takes
    its limits (z or 0, 1 or 0, 0) beyond |z| = 10, where its tanh is 1 to rounding.
    """
    code = Activation(code)
    zero = np.zeros_like(z)
    if code is Activation.TANH:
        t = np.tanh(z)
        d1 = 1 - t * t
        return t, d1, -2 * t * d1
    if code is Activation.SIGMOID:
        s = _sigmoid(z)
        d1 = s * (1 - s)
        return s, d1, d1 * (1 - 2 * s)
    if code is Activation.RELU:
        pos = z > 0
        return np.where(pos | np.isnan(z), z, zero), pos.astype(z.dtype), zero
    if code is Activation.SOFTPLUS:
        s = _sigmoid(z)
        return _softplus(z), s, s * (1 - s)
    if code is Activation.GELU:
        c, a = _SQRT_2_OVER_PI, _GELU_A
        with np.errstate(over="ignore", invalid="ignore"):  # huge |z|: replaced below
            t = np.tanh(c * (z + a * z**3))
            u1 = c * (1 + 3 * a * z * z)
            s = 0.5 * z * (1 + t)
            d1 = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * u1
            d2 = (1 - t * t) * (u1 - z * t * u1 * u1 + 0.5 * z * 6 * c * a * z)
        hi, lo = z >= _GELU_SATURATION, z <= -_GELU_SATURATION
        s = np.where(hi, z, np.where(lo, zero, s))
        d1 = np.where(hi, 1, np.where(lo, zero, d1)).astype(z.dtype, copy=False)
        d2 = np.where(hi | lo, zero, d2)
        return s, d1, d2
    return z.copy(), np.ones_like(z), zero


def logistic(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary cross-entropy on the logits f with labels y: (loss, dloss/df, d2loss/df2)."""
    s = _sigmoid(f)
    return _softplus(f) - y * f, s - y, s * (1 - s)


def log_sum_exp(f: np.ndarray) -> np.ndarray:
    """log(sum exp) of each row of the float64 logits f (N, n), shifted by the row maximum."""
    m = f.max(axis=1, keepdims=True)
    return m[:, 0] + np.log(np.exp(f - m).sum(axis=1))


def softmax_cross_entropy(f: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax cross-entropy of the float64 logits f (N, n) with integer labels: (loss per row,
    softmax p)."""
    lse = log_sum_exp(f)
    return lse - f[np.arange(f.shape[0]), labels], np.exp(f - lse[:, None])


def softmax_hessian(p: np.ndarray, rf: np.ndarray) -> np.ndarray:
    """The softmax cross-entropy Hessian (diag(p) - p p^T) applied to the R-logits rf
    (N, k, n): p (rf - <p, rf>)."""
    pr = np.einsum("io,ijo->ij", p, rf)
    return p[:, None, :] * (rf - pr[:, :, None])


def hidden_forward(Z, b, AV, C, act, need, A, D1, D2, RZ, n_threads):
    """Bias + activation (+ derivatives, + R-forward) of one hidden layer; see the Cython kernel."""
    s, d1, d2 = activation(act, Z[:, 0, :] + b)
    A[:, 0, :] = s
    if need >= 1:
        D1[...] = d1
    if need == 2:
        D2[...] = d2
        k = AV.shape[1]
        rz = AV + C[None, :, :]
        if Z.shape[1] > 1:
            rz = rz + Z[:, 1:, :]
        RZ[...] = rz
        A[:, 1 : 1 + k, :] = d1[:, None, :] * rz


def output_forward(Z, b, AV, C, loss, need, labels, Y, D, losses, n_threads):
    """Output layer: loss per sample (float64), gradient and loss-Hessian on the R-streams."""
    N = Z.shape[0]
    f = Z[:, 0, :].astype(np.float64) + b
    k = AV.shape[1] if need == 2 else 0
    rf = None
    if k:
        rf = AV.astype(np.float64) + C[None, :, :]
        if Z.shape[1] > 1:
            rf = rf + Z[:, 1:, :]
    loss = Loss(loss)
    if loss is Loss.CROSS_ENTROPY:
        losses[...], p = softmax_cross_entropy(f, labels)
        grad = p.copy()
        grad[np.arange(N), labels] -= 1
        if k:
            D[:, 1:, :] = softmax_hessian(p, rf) / N
    elif loss is Loss.MSE:
        r = f - Y
        losses[...] = 0.5 * (r * r).sum(axis=1)
        grad = r
        if k:
            D[:, 1:, :] = rf / N
    else:
        lv, dl, d2l = logistic(f[:, 0], Y[:, 0].astype(np.float64))
        losses[...] = lv
        grad = dl[:, None]
        if k:
            D[:, 1:, :] = d2l[:, None, None] * rf / N
    if need >= 1:
        D[:, 0, :] = grad / N


def hidden_backward(DA, DV, D1, D2, RZ, gn, D, S, first, n_threads):
    """delta and R(delta) of one hidden layer (+ column sums of D[:, first:] into a non-empty
    S); see the Cython kernel."""
    da = DA[:, 0, :]
    D[:, 0, :] = da * D1
    if DA.shape[1] > 1:
        if gn:
            D[:, 1:, :] = DA[:, 1:, :] * D1[:, None, :]
        else:
            D[:, 1:, :] = (DA[:, 1:, :] + DV) * D1[:, None, :] + (da * D2)[:, None, :] * RZ
    if S.shape[0]:
        colsum(D[:, first:, :].reshape(D.shape[0], -1), S, n_threads)


def colsum(D, out, n_threads):
    """Column sums in float64."""
    out[...] = D.sum(axis=0, dtype=np.float64)


def batched_transpose(a, b, dst, n_threads):
    """dst[i] = a[i].T (+ b[i].T when b is not empty); see the Cython kernel."""
    t = a.transpose(0, 2, 1)
    if b.shape[0]:
        np.add(t, b.transpose(0, 2, 1), out=dst)
    else:
        dst[...] = t


# test-only (tests/test_formulas.py): the formulas through this module's row loops
_formula_activation = partial(formula_activation, hidden_forward)
_formula_logistic = partial(formula_logistic, output_forward)
