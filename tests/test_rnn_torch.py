"""ElmanRNN against PyTorch: loss, gradient and double-backward HVP through
``nn.RNN(batch_first=True)`` and a ``Linear`` head with the same weights (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import ElmanRNN

torch = pytest.importorskip("torch")


def torch_model(rnn, theta):
    """nn.RNN + nn.Linear holding the RNN's weights. torch computes
    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``: W_ih = U^T, W_hh = W^T, and the one
    bias b = b_ih + b_hh goes to b_ih (b_hh is zero and not differentiated)."""
    p = rnn.unpack(theta)
    net = torch.nn.RNN(rnn.n_in, rnn.n_hidden, nonlinearity=rnn.activation,
                       batch_first=True).double()
    head = torch.nn.Linear(rnn.n_hidden, rnn.n_out).double()
    with torch.no_grad():
        net.weight_hh_l0.copy_(torch.tensor(p["W"].T))
        net.weight_ih_l0.copy_(torch.tensor(p["U"].T))
        net.bias_ih_l0.copy_(torch.tensor(p["b"]))
        net.bias_hh_l0.zero_()
        head.weight.copy_(torch.tensor(p["V"].T))
        head.bias.copy_(torch.tensor(p["c"]))
    params = [net.weight_hh_l0, net.weight_ih_l0, net.bias_ih_l0, head.weight, head.bias]
    return net, head, params


def torch_loss(rnn, net, head, X, y):
    hs, _ = net(torch.tensor(X))
    f = head(hs[:, -1] if rnn.output == "last" else hs)
    yt = torch.tensor(y)
    if rnn.loss_name == "cross_entropy":
        return torch.nn.functional.cross_entropy(f.reshape(-1, rnn.n_out), yt.reshape(-1))
    return 0.5 * ((f - yt) ** 2).sum(-1).mean()


def flat(rnn, parts):
    """torch's parameter tensors (weight_hh, weight_ih, bias_ih, head weight, head bias) as
    fastopt's flat layout (W, U, b, V, c)."""
    W, U, b, V, c = (t.detach().numpy() for t in parts)
    return np.concatenate([W.T.ravel(), U.T.ravel(), b, V.T.ravel(), c])


def as_torch(rnn, v):
    p = rnn.unpack(v)
    return [torch.tensor(a) for a in (p["W"].T, p["U"].T, p["b"], p["V"].T, p["c"])]


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("loss, output", [("cross_entropy", "last"), ("cross_entropy", "all"),
                                          ("mse", "last"), ("mse", "all")])
def test_loss_grad_and_hvp_match_torch_double_backward(loss, output, act):
    rng = np.random.default_rng(0)
    N, T = 5, 9
    rnn = ElmanRNN(3, 6, 4, activation=act, loss=loss, output=output)
    theta = rnn.init(rng) + 0.3 * rng.standard_normal(rnn.num_params)
    X = rng.standard_normal((N, T, 3))
    rows = (N,) if output == "last" else (N, T)
    y = rng.integers(0, 4, rows) if loss == "cross_entropy" else rng.standard_normal((*rows, 4))
    V = rng.standard_normal((rnn.num_params, 3))

    net, head, params = torch_model(rnn, theta)
    lt = torch_loss(rnn, net, head, X, y)
    grads = torch.autograd.grad(lt, params, create_graph=True)
    loss_value, g = rnn.loss_and_grad(theta, X, y)
    assert np.isclose(loss_value, lt.item(), rtol=1e-12)
    gt = flat(rnn, grads)
    assert np.abs(g - gt).max() <= 1e-12 * np.abs(gt).max()
    HV = rnn.hvp(theta, X, y, V)
    for j in range(V.shape[1]):
        vj = as_torch(rnn, V[:, j].copy())
        dot = sum((gi * vi).sum() for gi, vi in zip(grads, vj, strict=True))
        ht = flat(rnn, torch.autograd.grad(dot, params, retain_graph=True))
        assert np.abs(HV[:, j] - ht).max() <= 1e-10 * np.abs(ht).max()
