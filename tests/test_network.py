"""fastopt.Network: batch norm in training and eval mode, exact HVP/GNVP against central
differences, PyTorch double backward through nn.BatchNorm1d, the MLP, and the diagnostics."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fastopt import MLP, Network, hessian_extremes, hutchinson_trace, hvp_fd, nn
from fastopt.curvature import bind


def _backends():
    from fastopt.curvature.network import _kernels

    out = []
    for name in ("cython", "numba", "numpy"):
        try:
            _kernels(name)
            out.append(name)
        except RuntimeError:
            out.append(pytest.param(name, marks=pytest.mark.skip(reason=f"{name} unavailable")))
    return out


BACKENDS = _backends()
AVAILABLE = [b for b in BACKENDS if isinstance(b, str)]
ACTS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "softplus": nn.Softplus,
        "gelu": nn.GELU, "identity": nn.Identity}


def bn_net(loss="cross_entropy", n_out=3, act=nn.Tanh, training=True, dtype=np.float64,
           n_in=4):
    return Network([nn.Dense(n_in, 6), nn.BatchNorm(6), act(), nn.Dense(6, 5),
                    nn.BatchNorm(5, eps=1e-3), nn.GELU(), nn.Dense(5, n_out)],
                   loss=loss, training=training, dtype=dtype)


def targets(rng, loss, N, n_out):
    if loss == "cross_entropy":
        return rng.integers(0, n_out, N)
    if loss == "logistic":
        return rng.integers(0, 2, N).astype(np.float64)
    return rng.standard_normal((N, n_out))


def random_stats(net, rng):
    net.set_running_stats([(0.3 * rng.standard_normal(net.layers[i].n),
                            rng.uniform(0.5, 2.0, net.layers[i].n)) for i in net._bn_index])


def problem(loss="cross_entropy", training=True, seed=0, act=nn.Tanh, N=12):
    rng = np.random.default_rng(seed)
    n_out = 1 if loss == "logistic" else 3
    net = bn_net(loss, n_out, act, training)
    if not training:
        random_stats(net, rng)
    theta = net.init(rng) + 0.3 * rng.standard_normal(net.num_params)
    X = rng.standard_normal((N, 4)) * 1.5 + 0.5
    return net, theta, X, targets(rng, loss, N, n_out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "logistic"])
def test_hvp_matches_central_differences(loss, training, backend):
    net, theta, X, y = problem(loss, training)
    V = np.random.default_rng(1).standard_normal((net.num_params, 3))
    Hv = net.hvp(theta, X, y, V, backend=backend)
    fd = hvp_fd(net, theta, V, X=X, y=y, backend=backend)
    assert np.abs(Hv - fd).max() <= 1e-6 * np.abs(fd).max()
    # k directions in one pass = one at a time
    for j in range(3):
        np.testing.assert_allclose(net.hvp(theta, X, y, V[:, j], backend=backend), Hv[:, j],
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", list(ACTS))
def test_dense_hessian_symmetric_and_backends_agree(act, training):
    net, theta, X, y = problem("cross_entropy", training, act=ACTS[act])
    Hn = net.hvp(theta, X, y, np.eye(net.num_params), backend="numpy")
    for backend in AVAILABLE:
        H = net.hvp(theta, X, y, np.eye(net.num_params), backend=backend)
        assert np.abs(H - H.T).max() <= 1e-12 * np.abs(H).max()
        assert np.abs(H - Hn).max() <= 1e-12 * np.abs(H).max()
    G = net.gnvp(theta, X, y, np.eye(net.num_params), backend=AVAILABLE[0])
    assert np.abs(G - G.T).max() <= 1e-12 * np.abs(G).max()
    assert np.linalg.eigvalsh((G + G.T) / 2).min() >= -1e-12 * np.abs(G).max()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gauss_newton_is_jt_hloss_j(training):
    # J by central differences of the outputs, H_loss of softmax cross-entropy in closed form
    net, theta, X, y = problem("cross_entropy", training)
    N, P = X.shape[0], net.num_params
    J = np.empty((N * 3, P))
    h = 1e-6
    for p in range(P):
        e = np.zeros(P)
        e[p] = h
        J[:, p] = ((net.forward(theta + e, X) - net.forward(theta - e, X)) / (2 * h)).ravel()
    f = net.forward(theta, X)
    prob = np.exp(f - f.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    HL = np.zeros((N * 3, N * 3))
    for i in range(N):
        HL[3 * i:3 * i + 3, 3 * i:3 * i + 3] = (np.diag(prob[i]) - np.outer(prob[i], prob[i])) / N
    G = J.T @ HL @ J
    Gf = net.gnvp(theta, X, y, np.eye(P))
    assert np.abs(Gf - G).max() <= 1e-6 * np.abs(G).max()


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "logistic"])
def test_mlp_and_equivalent_network_agree(act, loss):
    rng = np.random.default_rng(3)
    n_out = 1 if loss == "logistic" else 3
    mlp = MLP([4, 7, 5, n_out], activation=act, loss=loss)
    net = Network([nn.Dense(4, 7), ACTS[act](), nn.Dense(7, 5), ACTS[act](),
                   nn.Dense(5, n_out)], loss=loss)
    assert net.num_params == mlp.num_params
    theta = mlp.init(rng) + 0.2 * rng.standard_normal(mlp.num_params)
    X = rng.standard_normal((9, 4))
    y = targets(rng, loss, 9, n_out)
    V = rng.standard_normal((mlp.num_params, 2))
    assert np.isclose(net.loss(theta, X, y), mlp.loss(theta, X, y), rtol=1e-14)
    np.testing.assert_allclose(net.forward(theta, X), mlp.forward(theta, X), rtol=1e-13,
                               atol=1e-15)
    for name in ("hvp", "gnvp"):
        a = getattr(net, name)(theta, X, y, V)
        b = getattr(mlp, name)(theta, X, y, V)
        assert np.abs(a - b).max() <= 1e-12 * np.abs(b).max()
    la, ga = net.loss_and_grad(theta, X, y)
    lb, gb = mlp.loss_and_grad(theta, X, y)
    assert np.isclose(la, lb, rtol=1e-14) and np.abs(ga - gb).max() <= 1e-13 * np.abs(gb).max()


def test_float32_matches_float64():
    net64, theta, X, y = problem("cross_entropy", True)
    net32 = bn_net(dtype=np.float32)
    V = np.random.default_rng(2).standard_normal((net64.num_params, 2))
    for backend in AVAILABLE:
        a = net32.hvp(theta.astype(np.float32), X.astype(np.float32), y, V.astype(np.float32),
                      backend=backend)
        b = net64.hvp(theta, X, y, V)
        assert a.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
        g32 = net32.loss_and_grad(theta.astype(np.float32), X.astype(np.float32), y,
                                  backend=backend)[1]
        g64 = net64.loss_and_grad(theta, X, y)[1]
        assert np.abs(g32 - g64).max() <= 1e-4 * np.abs(g64).max()


# ---------------------------------------------------------------------------- PyTorch
def torch_model(net, theta):
    torch = pytest.importorskip("torch")
    mods = []
    views = iter(net.unpack(theta))
    for layer in net.layers:
        if isinstance(layer, nn.Dense):
            W, b = next(views)
            lin = torch.nn.Linear(layer.n_in, layer.n_out).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T.copy()))
                lin.bias.copy_(torch.from_numpy(b.copy()))
            mods.append(lin)
        elif isinstance(layer, nn.BatchNorm):
            w, b = next(views)
            bn = torch.nn.BatchNorm1d(layer.n, eps=layer.eps, momentum=layer.momentum).double()
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(w.copy()))
                bn.bias.copy_(torch.from_numpy(b.copy()))
            mods.append(bn)
        else:
            mods.append({nn.Tanh: torch.nn.Tanh, nn.Sigmoid: torch.nn.Sigmoid,
                         nn.ReLU: torch.nn.ReLU, nn.Softplus: torch.nn.Softplus,
                         nn.Identity: torch.nn.Identity,
                         nn.GELU: lambda: torch.nn.GELU(approximate="tanh")}[type(layer)]())
    model = torch.nn.Sequential(*mods)
    stats = iter(net.running_stats)
    for m in model:
        if isinstance(m, torch.nn.BatchNorm1d):
            rm, rv = next(stats)
            m.running_mean.copy_(torch.from_numpy(rm.astype(np.float64)))
            m.running_var.copy_(torch.from_numpy(rv.astype(np.float64)))
    model.train(net.training)
    return model


def torch_flat(net, tensors):
    """Flatten per-parameter tensors (torch order: Linear weight (out, in), bias; BN weight,
    bias) into fastopt's theta layout."""
    out = []
    it = iter(tensors)
    for layer in net.layers:
        if isinstance(layer, nn.Dense):
            out += [next(it).detach().numpy().T.ravel(), next(it).detach().numpy()]
        elif isinstance(layer, nn.BatchNorm):
            out += [next(it).detach().numpy(), next(it).detach().numpy()]
    return np.concatenate(out)


def torch_loss(net, model, X, y):
    import torch

    f = model(torch.from_numpy(X))
    if net.loss_name == "cross_entropy":
        return torch.nn.functional.cross_entropy(f, torch.from_numpy(y))
    if net.loss_name == "mse":
        return 0.5 * ((f - torch.from_numpy(y.reshape(f.shape))) ** 2).sum(1).mean()
    return torch.nn.functional.binary_cross_entropy_with_logits(
        f[:, 0], torch.from_numpy(y))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "logistic"])
def test_hvp_matches_torch_double_backward(loss, training):
    torch = pytest.importorskip("torch")
    net, theta, X, y = problem(loss, training, N=16)
    model = torch_model(net, theta)
    params = list(model.parameters())
    L = torch_loss(net, model, X, y)
    grads = torch.autograd.grad(L, params, create_graph=True)
    V = np.random.default_rng(5).standard_normal((net.num_params, 2))
    fl, fg = net.loss_and_grad(theta, X, y)
    assert np.isclose(fl, float(L.detach()), rtol=1e-13)
    g_t = torch_flat(net, grads)
    assert np.abs(fg - g_t).max() <= 1e-12 * np.abs(g_t).max()
    Hv = net.hvp(theta, X, y, V)
    for j in range(2):
        vs = []  # direction j in torch's parameter shapes
        views = net.unpack(V[:, j].copy())
        it = iter(views)
        for layer in net.layers:
            if isinstance(layer, nn.Dense):
                W, b = next(it)
                vs += [torch.from_numpy(W.T.copy()), torch.from_numpy(b.copy())]
            elif isinstance(layer, nn.BatchNorm):
                w, b = next(it)
                vs += [torch.from_numpy(w.copy()), torch.from_numpy(b.copy())]
        dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
        hv_t = torch_flat(net, torch.autograd.grad(dot, params, retain_graph=True))
        assert np.abs(Hv[:, j] - hv_t).max() <= 1e-10 * np.abs(hv_t).max()


def test_running_stats_follow_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    net = Network([nn.Dense(4, 6), nn.BatchNorm(6, momentum=0.3), nn.Tanh(), nn.Dense(6, 5),
                   nn.BatchNorm(5, momentum=None), nn.Dense(5, 2)])
    theta = net.init(rng)
    model = torch_model(net, theta)
    for _ in range(3):
        X = rng.standard_normal((10, 4)) + 1.0
        y = rng.integers(0, 2, 10)
        net.loss_and_grad(theta, X, y, update_running_stats=True)
        with torch.no_grad():
            model(torch.from_numpy(X))
    assert net.num_batches_tracked == 3
    bns = [m for m in model if isinstance(m, torch.nn.BatchNorm1d)]
    for (rm, rv), bn in zip(net.running_stats, bns, strict=True):
        np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-12)
    # curvature products and plain calls never move them
    before = net.running_stats
    net.hvp(theta, X, y, np.ones(net.num_params))
    net.forward(theta, X)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(before, net.running_stats,
                                                           strict=True))
    # eval mode uses them: the torch eval forward matches
    net.eval()
    model.eval()
    with torch.no_grad():
        ft = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.forward(theta, X), ft, rtol=1e-12, atol=1e-14)


def test_running_stat_updates_are_atomic_under_threads():
    rng = np.random.default_rng(0)
    net = Network([nn.Dense(3, 4), nn.BatchNorm(4, momentum=None), nn.Dense(4, 2)])
    theta = net.init(rng)
    batches = [rng.standard_normal((6, 3)) + i for i in range(16)]

    def work(chunk):
        for X in chunk:
            net.forward(theta, X, update_running_stats=True)

    threads = [threading.Thread(target=work, args=(batches[t::4],)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert net.num_batches_tracked == 16
    # momentum=None: the cumulative average of every batch's mean, whatever the order
    W, b = net.unpack(theta)[0]
    means = [(X @ W + b).mean(0) for X in batches]
    np.testing.assert_allclose(net.running_stats[0][0], np.mean(means, 0), rtol=1e-12)


# ---------------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors_and_inputs_are_untouched():
    net, theta, X, y = problem()
    V = np.ones((net.num_params, 2))
    copies = [a.copy() for a in (theta, X, y, V)]
    with pytest.raises(ValueError, match="batch of 1 sample"):
        net.hvp(theta, X[:1], y[:1], V)
    with pytest.raises(ValueError, match="2-D"):
        net.loss(theta, X[None], y)
    with pytest.raises(ValueError, match="columns"):
        net.loss(theta, X[:, :3], y)
    with pytest.raises(ValueError, match="theta"):
        net.loss(theta[:-1], X, y)
    with pytest.raises(ValueError, match="v"):
        net.hvp(theta, X, y, V[:-1])
    with pytest.raises(ValueError, match="backend"):
        net.hvp(theta, X, y, V, backend="cuda")
    with pytest.raises(ValueError, match="y"):
        net.loss(theta, X, y + 5)
    with pytest.raises(ValueError, match="non-finite"):
        net.loss(np.full_like(theta, np.nan), X, y)
    with pytest.raises(TypeError, match="layers"):
        Network([nn.Dense(2, 2), "tanh"])
    with pytest.raises(ValueError, match="input width"):
        Network([nn.Dense(2, 3), nn.BatchNorm(4)])
    with pytest.raises(ValueError, match="layers\\[0\\]"):
        Network([nn.Tanh(), nn.Dense(2, 2)])
    out = np.full((net.num_params, 2), 7.0)
    with pytest.raises(ValueError, match="out"):
        net.hvp(theta, X, y, V, out=out[:-1])
    with pytest.warns(PendingDeprecationWarning), pytest.raises(TypeError, match="out"):
        net.hvp(theta, X, y, V, out=np.asmatrix(out))
    assert (out == 7.0).all()
    for a, b in zip((theta, X, y, V), copies, strict=True):
        assert np.array_equal(a, b)
    # eval mode takes a single sample; read-only inputs work; out= is written
    net.eval()
    for a in (theta, X, V):
        a.flags.writeable = False
    r = net.hvp(theta, X[:1], y[:1], V, out=out)
    assert r is out and np.isfinite(out).all()
    net.train()
    np.testing.assert_allclose(net.hvp(theta, X, y, V, out=out), net.hvp(theta, X, y, V))


# ---------------------------------------------------------------------------- diagnostics
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_diagnostics_run_on_networks(training):
    net, theta, X, y = problem("cross_entropy", training)
    H = net.hvp(theta, X, y, np.eye(net.num_params))
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    res = hessian_extremes(net, theta, X, y, tol=1e-8)
    assert res.converged
    np.testing.assert_allclose([res.lambda_max, res.lambda_min], [ev[-1], ev[0]],
                               rtol=1e-6, atol=1e-7 * abs(ev).max())
    obj = bind(net, X, y)
    assert np.isclose(hutchinson_trace(obj, theta, exact=True).estimate, np.trace(H),
                      rtol=1e-12)
    G = net.gnvp(theta, X, y, np.eye(net.num_params))
    res_g = hessian_extremes(obj, theta, curvature="ggn", tol=1e-8)
    assert res_g.kind in ("minimum", "flat")
    assert np.isclose(res_g.lambda_max, np.linalg.eigvalsh(G)[-1], rtol=1e-6)
    # the operator snapshots the mode: switching the network afterwards changes nothing
    pytest.importorskip("scipy")
    from fastopt import hessian_operator

    op = hessian_operator(net, theta, X, y)
    net.train(not training)
    v = np.random.default_rng(0).standard_normal(net.num_params)
    np.testing.assert_allclose(op @ v, H @ v, rtol=1e-11, atol=1e-13)
    net.train(training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_first_and_last_layers(training):
    # the input itself normalized (its R-stream is zero), and a network ending in batch norm
    rng = np.random.default_rng(4)
    for layers, loss in (([nn.BatchNorm(4), nn.Dense(4, 3), nn.Sigmoid(), nn.Dense(3, 3)],
                          "cross_entropy"),
                         ([nn.Dense(4, 3), nn.Softplus(), nn.Dense(3, 2), nn.BatchNorm(2)],
                          "mse")):
        net = Network(layers, loss=loss, training=training)
        if not training:
            random_stats(net, rng)
        theta = net.init(rng) + 0.3 * rng.standard_normal(net.num_params)
        X = rng.standard_normal((10, 4)) * 2 + 1
        y = targets(rng, loss, 10, 3 if loss == "cross_entropy" else 2)
        V = rng.standard_normal((net.num_params, 2))
        fd = hvp_fd(net, theta, V, X=X, y=y)
        for backend in AVAILABLE:
            Hv = net.hvp(theta, X, y, V, backend=backend)
            assert np.abs(Hv - fd).max() <= 1e-6 * np.abs(fd).max()


def test_many_directions_out_aliasing_objective_and_pickle():
    import pickle

    net, theta, X, y = problem()
    rng = np.random.default_rng(9)
    V = rng.standard_normal((net.num_params, 8))
    HV = net.hvp(theta, X, y, V)
    for j in (0, 7):
        np.testing.assert_allclose(HV[:, j], net.hvp(theta, X, y, V[:, j]), rtol=1e-12,
                                   atol=1e-14)
    W = V.copy()
    assert net.hvp(theta, X, y, W, out=W) is W  # out= is the direction itself
    np.testing.assert_allclose(W, HV, rtol=1e-13, atol=1e-15)
    g = np.empty(net.num_params)
    assert net.loss_and_grad(theta, X, y, out=g)[1] is g
    obj = bind(net, X, y)
    assert obj.num_params == net.num_params and obj.dtype == net.dtype
    np.testing.assert_allclose(obj.hvp(theta, V), HV, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(obj.gnvp(theta, V[:, 0]), net.gnvp(theta, X, y, V[:, 0]),
                               rtol=1e-13, atol=1e-15)
    assert obj.loss(theta) == net.loss(theta, X, y)
    with pytest.raises(ValueError, match="theta"):
        obj.hvp(theta[:-1], V)
    with pytest.raises(ValueError, match="v"):
        obj.hvp(theta, V[:-1])
    clone = pickle.loads(pickle.dumps(net))
    np.testing.assert_allclose(clone.hvp(theta, X, y, V), HV, rtol=1e-13, atol=1e-15)
