"""Numpy reference of the Elman RNN time-step kernels (backend ``"numpy"``; the tests' oracle).

Same signatures and layouts as ``fastopt.curvature._rnn_cython`` (see ``fastopt.curvature.rnn``
for what the arrays hold). Streams of one step are ``(N, 1 + k, n)`` (slot 0 the forward value,
slot ``1 + j`` the part of direction ``j``) or ``(N, k, n)`` (R-streams only). Written for clarity,
vectorized over whole arrays.

Modes: 0 loss, 1 gradient, 2 Hessian-vector product, 3 Gauss-Newton-vector product.
"""

from __future__ import annotations

import numpy as np

from .._codes import Loss, Mode
from .curvature import activation, softmax_cross_entropy, softmax_hessian

LOSS, GRAD, HVP, GNVP = Mode.LOSS, Mode.GRAD, Mode.HVP, Mode.GNVP


def forward_step(ZZ, RZW, XUU, b, Cb, act, mode, has_rec, H, D1, D2, RZ, RH):
    """One step of the forward and R-forward pass.

    ``z = [ZZ_0] + XUU_0 + b``, ``h = act(z)`` into ``H``, ``act'``/``act''`` into ``D1``/``D2``;
    ``Rz_j = [ZZ_(1+j) + RZW_j] + XUU_(1+j) + Cb_j`` (into ``RZ`` for mode 2) and
    ``Rh_j = act'(z) Rz_j`` into ``RH``. The bracketed terms (the recurrence ``h_prev [W | W']``
    and ``Rh_prev W``) are present when ``has_rec`` (every step but the first, where h_0 = 0).
    """
    z = XUU[:, 0, :] + b
    if has_rec:
        z = z + ZZ[:, 0, :]
    s, d1, d2 = activation(act, z)
    H[...] = s
    if mode >= GRAD:
        D1[...] = d1
    if mode == HVP:
        D2[...] = d2
    if mode >= HVP:
        rz = XUU[:, 1:, :] + Cb[None, :, :]
        if has_rec:
            rz = rz + ZZ[:, 1:, :] + RZW
        if mode == HVP:
            RZ[...] = rz
        RH[...] = D1[:, None, :] * rz


def output(FF, RFV, c, Cc, loss, mode, labels, Y, E, RE, losses, Sc, scale):
    """Output rows: per-row loss (float64), ``E = scale * dloss/df`` and, for the products,
    ``RE_j = scale * H_loss Rf_j`` with ``Rf_j = FF_(1+j) + RFV_j + Cc_j``; ``Sc`` (float64) gets
    the column sums of ``E`` (row 0) and of each ``RE_j`` (row 1 + j).

    loss : 0 softmax cross-entropy (``labels``), 1 mse ``0.5 ||f - y||^2`` (``Y``).
    """
    M = FF.shape[0]
    f = FF[:, 0, :].astype(np.float64) + c
    k = RFV.shape[1] if mode >= HVP else 0
    cross_entropy = Loss(loss) is Loss.CROSS_ENTROPY
    if cross_entropy:
        losses[...], p = softmax_cross_entropy(f, labels)
        grad = p.copy()
        grad[np.arange(M), labels] -= 1
    else:
        r = f - Y
        losses[...] = 0.5 * (r * r).sum(axis=1)
        grad = r
    if mode >= GRAD:
        E[...] = grad * scale
        Sc[0] = E.sum(axis=0, dtype=np.float64)
    if k:
        rf = FF[:, 1:, :].astype(np.float64) + RFV + Cc[None, :, :]
        hr = softmax_hessian(p, rf) if cross_entropy else rf
        RE[...] = hr * scale
        Sc[1:] = RE.sum(axis=0, dtype=np.float64)


def backward_step(A, B, EA, EB, D1, D2, RZ, mode, has_rec, has_out, Dl, RDl, G, S):
    """One step of the backward and R-backward pass (backpropagation through time).

    ``g = [A_0] + {EA_0}`` (into ``G`` when it is not empty), ``delta = g act'`` into ``Dl``;
    ``Rg_j = [A_(1+j) + B_j] + {EA_(1+j) + EB_j}``,
    ``R delta_j = Rg_j act' + g act'' Rz_j`` into ``RDl`` (mode 3, Gauss-Newton:
    ``Rg_j = [B_j] + {EB_j}``, ``R delta_j = Rg_j act'``). ``[...]``: the recurrence from the step
    after (``has_rec``), ``{...}``: the output of this step (``has_out``). ``S`` (float64) is
    incremented by the column sums of delta (mode 1, row 0) or of each R delta_j (rows j).
    """
    if mode in (GRAD, HVP):
        g = np.zeros_like(D1)
        if has_rec:
            g = g + A[:, 0, :]
        if has_out:
            g = g + EA[:, 0, :]
        if G.size:
            G[...] = g
        Dl[...] = g * D1
        if mode == GRAD:
            S[0] += Dl.sum(axis=0, dtype=np.float64)
            return
    rg = np.zeros_like(RDl)
    if mode == HVP:
        if has_rec:
            rg = rg + A[:, 1:, :] + B
        if has_out:
            rg = rg + EA[:, 1:, :] + EB
        RDl[...] = rg * D1[:, None, :] + (g * D2)[:, None, :] * RZ
    else:
        if has_rec:
            rg = rg + B
        if has_out:
            rg = rg + EB
        RDl[...] = rg * D1[:, None, :]
    S += RDl.sum(axis=0, dtype=np.float64)
