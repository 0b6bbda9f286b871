"""numpy reference kernels of :class:`fastopt.Network` (backend ``"numpy"``).

Same signatures and layouts as ``fastopt.curvature._network_numba``. Streams are ``(N, m, n)``
arrays: slot 0 the forward value (or, backward, the gradient), slots ``1..k`` the R-streams of
the k directions; per-channel reductions accumulate in float64. In the backward kernels
``rmode=1`` is the R-backward of the Hessian product (slot 0 the gradient, slots 1.. its
R-streams, with the second-order terms), ``rmode=0`` the plain backward applied to every slot
independently (the gradient, or the Gauss-Newton product's ``J^T`` pass).
"""

from __future__ import annotations

import numpy as np

from .curvature import activation, output_forward


def dense_bias(Z, b, AV, C, out):
    """out[:, 0] = Z[:, 0] + b; out[:, 1 + j] = AV[:, j] + C[j] (+ Z[:, 1 + j] if Z has it)."""
    out[:, 0, :] = Z[:, 0, :] + b
    k = AV.shape[1]
    if k:
        r = AV + C[None, :, :]
        if Z.shape[1] > 1:
            r = r + Z[:, 1:, :]
        out[:, 1:, :] = r


def act_forward(X, code, need, out, D1, D2):
    """out[:, 0] = act(X[:, 0]); R-streams out[:, j] = act'(X[:, 0]) X[:, j]; D1/D2 the first
    and second derivatives when ``need`` >= 1 / == 2 (else empty)."""
    s, d1, d2 = activation(code, X[:, 0, :])
    out[:, 0, :] = s
    if X.shape[1] > 1:
        out[:, 1:, :] = d1[:, None, :] * X[:, 1:, :]
    if need >= 1:
        D1[...] = d1
    if need == 2:
        D2[...] = d2


def act_backward(G, D1, D2, Z, rmode, out):
    """Backward through an activation (see the module notes for ``rmode``); ``Z`` is the
    activation's input stream (its R-streams ``Z[:, 1:]`` enter the R-backward)."""
    if rmode:
        g = G[:, 0, :]
        out[:, 0, :] = g * D1
        out[:, 1:, :] = G[:, 1:, :] * D1[:, None, :] + (g * D2)[:, None, :] * Z[:, 1:, :]
    else:
        out[...] = G * D1[:, None, :]


def bn_forward_train(X, eps, gamma, beta, VG, VB, out, XH, RXH, mean, var, invstd, c):
    """Training-mode batch norm on slot 0 (batch statistics, biased variance) and its R-operator
    on slots 1..k: ``R xhat = s (Rx - mean(Rx) - xhat mean(xhat Rx))``,
    ``R y = gamma R xhat + VG xhat + VB``. Writes y (out), xhat (XH), R xhat (RXH), the
    statistics (float64) and ``c = mean(xhat Rx)`` (k, n)."""
    N = X.shape[0]
    x = X[:, 0, :].astype(np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    v = (xc * xc).mean(axis=0)
    s = 1.0 / np.sqrt(v + eps)
    xh = xc * s
    mean[...] = mu
    var[...] = v
    invstd[...] = s
    XH[...] = xh
    out[:, 0, :] = gamma * xh + beta
    k = RXH.shape[1]
    if k:
        R = X[:, 1:, :].astype(np.float64)
        m1 = R.mean(axis=0)
        cc = np.einsum("io,ijo->jo", xh, R) / N
        c[...] = cc
        rxh = s * (R - m1[None] - xh[:, None, :] * cc[None])
        RXH[...] = rxh
        out[:, 1:, :] = gamma * rxh + VG[None] * xh[:, None, :] + VB[None]


def bn_forward_eval(X, mean, invstd, gamma, beta, VG, VB, out, XH, RXH):
    """Eval-mode batch norm (running statistics as constants): y = gamma xhat + beta,
    ``R xhat = s Rx``, ``R y = gamma R xhat + VG xhat + VB``."""
    xh = (X[:, 0, :].astype(np.float64) - mean) * invstd
    XH[...] = xh
    out[:, 0, :] = gamma * xh + beta
    if RXH.shape[1]:
        rxh = X[:, 1:, :].astype(np.float64) * invstd
        RXH[...] = rxh
        out[:, 1:, :] = gamma * rxh + VG[None] * xh[:, None, :] + VB[None]


def bn_backward(G, XH, invstd, gamma, RXH, c, VG, training, rmode, out, dgamma, dbeta):
    """Backward through batch norm (see the module notes for ``rmode``).

    Plain (every slot g): ``dbeta = sum g``, ``dgamma = sum g xhat``,
    ``dx = s gamma (g - dbeta/N - xhat dgamma/N)`` in training mode (``s gamma g`` in eval mode).
    R-backward of slot j (``Rg``, with ``Rghat = VG g + gamma Rg``): ``R dbeta = sum Rg``,
    ``R dgamma = sum (Rg xhat + g R xhat)`` and, in training mode,
    ``R dx = -s c dx + s (Rghat - mean Rghat - xhat mean(Rghat xhat))
    - s (R xhat mean(ghat xhat) + xhat mean(ghat R xhat))``.
    ``dgamma``/``dbeta`` (float64) get the returned slots: all for rmode 0, 1..k for rmode 1.
    """
    N = G.shape[0]
    s = invstd
    xh = XH
    G64 = G.astype(np.float64)
    if not rmode:
        sb = G64.sum(axis=0)
        sg = np.einsum("imo,io->mo", G64, xh)
        dbeta[...] = sb
        dgamma[...] = sg
        if training:
            out[...] = (s * gamma) * (G64 - sb[None] / N - xh[:, None, :] * sg[None] / N)
        else:
            out[...] = (s * gamma) * G64
        return
    g = G64[:, 0, :]
    Rg = G64[:, 1:, :]
    rxh = RXH
    sb0 = g.sum(axis=0)
    sg0 = (g * xh).sum(axis=0)
    sbr = Rg.sum(axis=0)
    sgr = np.einsum("ijo,io->jo", Rg, xh)
    sgx = np.einsum("io,ijo->jo", g, rxh)
    dbeta[...] = sbr
    dgamma[...] = sgr + sgx
    if training:
        dx = (s * gamma) * (g - sb0 / N - xh * sg0 / N)
        m_rgh = (VG * sb0 + gamma * sbr) / N
        m_rghx = (VG * sg0 + gamma * sgr) / N
        m2 = gamma * sg0 / N
        m_ghrx = gamma * sgx / N
        Rgh = VG[None] * g[:, None, :] + gamma * Rg
        rdx = (-s * c)[None] * dx[:, None, :] + s * (
            Rgh - m_rgh[None] - xh[:, None, :] * m_rghx[None]
            - rxh * m2 - xh[:, None, :] * m_ghrx[None]
        )
    else:
        dx = (s * gamma) * g
        rdx = s * (VG[None] * g[:, None, :] + gamma * Rg)
    out[:, 0, :] = dx
    out[:, 1:, :] = rdx


def colsum(G, first, out):
    """out (m - first, n) float64 = column sums of slots ``first..`` of G (N, m, n)."""
    out[...] = G[:, first:, :].sum(axis=0, dtype=np.float64)


def loss_forward(F, loss, need, labels, Y, D):
    """Loss of the logits F[:, 0] (float64 per sample, summed and returned), ``D[:, 0] = dL/df /
    N`` and ``D[:, j] = H_loss Rf_j / N`` for the R-streams F[:, j] (D (N, 1 + k, n), or empty):
    the MLP's output layer (``fastopt.reference.curvature.output_forward``) with a zero bias."""
    N, kk, n = F.shape
    losses = np.empty(N)
    output_forward(F[:, :1, :], np.zeros(n), F[:, 1:, :], np.zeros((kk - 1, n)), loss, need,
                   labels, Y, D, losses, 1)
    return float(losses.sum())


def transpose2d(A, dst):
    """dst = A.T."""
    dst[...] = A.T
