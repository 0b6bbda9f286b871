"""Curvature diagnostics: dense Hessians, Lanczos extremes, saddle detection, operators, traces,
spectral density, the gradient-direction curvature and the ill-conditioning monitor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastopt import (
    MLP,
    Curvature,
    IllConditioningMonitor,
    curvature_along_gradient,
    hessian_extremes,
    hessian_operator,
    hutchinson_trace,
    hvp_fd,
    spectral_density,
)


def dense_hessian(net, theta, X, y, backend="auto"):
    return net.hvp(theta, X, y, np.eye(net.num_params, dtype=net.dtype), backend=backend)


@pytest.fixture(scope="module")
def tanh_ce():
    rng = np.random.default_rng(7)
    net = MLP([5, 8, 6, 3], activation="tanh", loss="cross_entropy")
    theta = net.init(rng) + 0.2 * rng.standard_normal(net.num_params)
    X = rng.standard_normal((40, 5))
    y = rng.integers(0, 3, 40)
    H = dense_hessian(net, theta, X, y)
    return net, theta, X, y, H


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "logistic"])
@pytest.mark.parametrize("act", ["identity", "tanh", "sigmoid", "relu", "softplus", "gelu"])
def test_dense_hessian_is_symmetric(act, loss):
    rng = np.random.default_rng(1)
    n_out = 1 if loss == "logistic" else 3
    net = MLP([4, 7, 5, n_out], activation=act, loss=loss)
    theta = net.init(rng) + 0.3 * rng.standard_normal(net.num_params)
    X = rng.standard_normal((25, 4))
    if loss == "cross_entropy":
        y = rng.integers(0, 3, 25)
    elif loss == "logistic":
        y = rng.integers(0, 2, 25).astype(np.float64)
    else:
        y = rng.standard_normal((25, 3))
    H = dense_hessian(net, theta, X, y)
    assert np.abs(H - H.T).max() <= 1e-12 * max(1.0, np.abs(H).max())


def test_hessian_extremes_match_eigvalsh(tanh_ce):
    net, theta, X, y, H = tanh_ce
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    tol = 1e-8
    res = hessian_extremes(net, theta, X, y, tol=tol)
    scale = np.abs(ev).max()
    assert abs(res.lambda_max - ev[-1]) <= 10 * tol * scale
    assert abs(res.lambda_min - ev[0]) <= 10 * tol * scale
    assert 1 <= res.iterations <= net.num_params
    assert res.kind == "saddle"  # a random point of a nonconvex net has negative curvature


def test_hessian_extremes_float32_model():
    rng = np.random.default_rng(3)
    net = MLP([3, 6, 2], activation="tanh", loss="mse", dtype=np.float32)
    theta = net.init(rng).astype(np.float32)
    X = rng.standard_normal((30, 3)).astype(np.float32)
    y = rng.standard_normal((30, 2)).astype(np.float32)
    net64 = MLP([3, 6, 2], activation="tanh", loss="mse")
    H = dense_hessian(net64, theta.astype(np.float64), X.astype(np.float64), y.astype(np.float64))
    ev = np.linalg.eigvalsh(H)
    res = hessian_extremes(net, theta, X, y, tol=1e-4, maxiter=net.num_params)
    assert abs(res.lambda_max - ev[-1]) <= 1e-3 * np.abs(ev).max()
    assert abs(res.lambda_min - ev[0]) <= 1e-3 * np.abs(ev).max()


def test_two_layer_linear_net_at_origin_is_a_saddle():
    # y = x fitted by f(x) = w2 (w1 x + b1) + b2: at the origin, d2J/dw1 dw2 = -E[x^2] < 0
    net = MLP([1, 1, 1], activation="identity", loss="mse")
    X = np.linspace(-1.0, 1.0, 21).reshape(-1, 1)
    res = hessian_extremes(net, np.zeros(net.num_params), X, X[:, 0], tol=1e-10)
    H = dense_hessian(net, np.zeros(net.num_params), X, X[:, 0])
    ev = np.linalg.eigvalsh(H)
    assert ev[0] < 0 < ev[-1]
    assert res.kind == "saddle"
    np.testing.assert_allclose([res.lambda_min, res.lambda_max], [ev[0], ev[-1]], rtol=1e-8)


def test_wider_linear_net_at_origin_is_a_saddle():
    rng = np.random.default_rng(0)
    net = MLP([3, 4, 3], activation="identity", loss="mse")
    X = rng.standard_normal((50, 3))
    assert hessian_extremes(net, np.zeros(net.num_params), X, X).kind == "saddle"


def test_convex_least_squares_is_a_minimum():
    rng = np.random.default_rng(0)
    net = MLP([6, 1], activation="identity", loss="mse")
    X = rng.standard_normal((40, 6))
    y = X @ rng.standard_normal(6) + 0.1 * rng.standard_normal(40)
    theta = rng.standard_normal(net.num_params)
    res = hessian_extremes(net, theta, X, y, tol=1e-10)
    A = np.hstack([X, np.ones((40, 1))])
    ev = np.linalg.eigvalsh(A.T @ A / 40)
    assert res.kind == "minimum"
    np.testing.assert_allclose([res.lambda_min, res.lambda_max], [ev[0], ev[-1]], rtol=1e-8)


def test_concave_and_flat_classification():
    from fastopt.curvature.diagnostics import _classify

    assert _classify(-1e-9, -2.0, 1e-5, 0.0) == "maximum"
    assert _classify(0.0, 0.0, 1e-5, 0.0) == "flat"
    assert _classify(1e-3, -1e-3, 1e-5, 1e-2) == "flat"
    assert _classify(2.0, -1e-7, 1e-5, 0.0) == "minimum"  # within the relative tolerance
    assert _classify(2.0, -1e-4, 1e-5, 0.0) == "saddle"


def test_dead_relu_units_leave_only_output_bias_curvature():
    # every hidden relu is dead (W1 = 0, b1 = -1): the loss is 0.5 mean(b2^2) and H is
    # diag(0, ..., 0, 1): a minimum (lambda_min = 0 within tolerance), or "flat" below atol
    net = MLP([2, 3, 1], activation="relu", loss="mse")
    theta = np.zeros(net.num_params)
    net.unpack(theta)[0][1][:] = -1.0
    X = np.random.default_rng(0).standard_normal((10, 2)) * 0.1
    res = hessian_extremes(net, theta, X, np.zeros(10), tol=1e-10)
    assert res.kind == "minimum"
    assert np.isclose(res.lambda_max, 1.0) and abs(res.lambda_min) <= 1e-12
    assert hessian_extremes(net, theta, X, np.zeros(10), atol=2.0).kind == "flat"


def test_hessian_operator_with_scipy(tanh_ce):
    sla = pytest.importorskip("scipy.sparse.linalg")
    net, theta, X, y, H = tanh_ce
    op = hessian_operator(net, theta, X, y)
    assert op.shape == H.shape
    v = np.random.default_rng(0).standard_normal(net.num_params)
    np.testing.assert_allclose(op @ v, H @ v, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(op.rmatvec(v), H @ v, rtol=1e-12, atol=1e-14)
    M = np.random.default_rng(1).standard_normal((net.num_params, 3))
    np.testing.assert_allclose(op @ M, H @ M, rtol=1e-12, atol=1e-14)
    vals = sla.eigsh(op, k=2, which="BE", tol=1e-10)[0]
    ev = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(np.sort(vals), [ev[0], ev[-1]], rtol=1e-7)
    # minres on the (indefinite) Hessian shifted to be nonsingular
    shift = sla.LinearOperator(op.shape, matvec=lambda x: op @ x + 2.0 * x, dtype=op.dtype)
    x, info = sla.minres(shift, v, rtol=1e-12)
    assert info == 0
    np.testing.assert_allclose(H @ x + 2.0 * x, v, atol=1e-8)


def test_hessian_operator_cg_on_convex_problem():
    sla = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(2)
    net = MLP([5, 1], activation="identity", loss="mse")
    X = rng.standard_normal((30, 5))
    y = rng.standard_normal(30)
    op = hessian_operator(net, np.zeros(6), X, y)
    g = net.loss_and_grad(np.zeros(6), X, y)[1]
    step, info = sla.cg(op, g, rtol=1e-12)
    assert info == 0
    # one Newton step solves least squares exactly: the gradient vanishes there
    assert np.abs(net.loss_and_grad(-step, X, y)[1]).max() <= 1e-9


def test_hvp_fd_on_a_generic_function():
    A = np.random.default_rng(0).standard_normal((6, 6))
    A = A + A.T

    def grad(t):  # gradient of 0.5 t^T A t + sum(sin t)
        return A @ t + np.cos(t)

    t = np.random.default_rng(1).standard_normal(6)
    V = np.random.default_rng(2).standard_normal((6, 2))
    exact = A @ V - np.sin(t)[:, None] * V
    np.testing.assert_allclose(hvp_fd(grad, t, V), exact, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(hvp_fd(grad, t, V[:, 0], eps=1e-5), exact[:, 0], rtol=1e-6)
    assert not hvp_fd(grad, t, np.zeros(6)).any()


def test_hessian_extremes_warns_when_not_converged(tanh_ce):
    net, theta, X, y, _ = tanh_ce
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        ext = hessian_extremes(net, theta, X, y, tol=1e-12, maxiter=3)
    assert ext.iterations == 3


def test_curvature_along_gradient_matches_dense(tanh_ce):
    net, theta, X, y, H = tanh_ce
    c = curvature_along_gradient(net, theta, X, y)
    L, g = net.loss_and_grad(theta, X, y)
    assert c.loss == L
    assert np.isclose(c.g_dot_g, g @ g, rtol=1e-14)
    assert np.isclose(c.g_h_g, g @ H @ g, rtol=1e-11)
    assert c.g_h_g > 0  # this fixture's point curves upward along g
    assert np.isclose(c.best_step, c.g_dot_g / c.g_h_g)
    # the quadratic model predicts small steps' change to second order
    eps = 1e-3
    actual = net.loss(theta - eps * g, X, y) - L
    assert abs(actual - c.predicted_change(eps)) <= 1e-6 * abs(actual)
    both = c.predicted_change(np.array([0.0, eps]))
    np.testing.assert_allclose(both, [0.0, c.predicted_change(eps)])


def test_curvature_best_step_inf_on_concave_direction():
    c = Curvature(1.0, 2.0, -3.0, math.inf)
    assert c.predicted_change(1.0) == -2.0 - 1.5
    net = MLP([1, 1, 1], activation="identity", loss="mse")
    X = np.array([[1.0], [2.0]])
    # at w1 = w2 = 0 with b2 = 0 the gradient is along b2 only: curvature 1 along it
    cur = curvature_along_gradient(net, np.zeros(net.num_params), X, X[:, 0])
    assert cur.g_h_g > 0 and np.isfinite(cur.best_step)
    # f = w2 (w1 x) fitting y = x from w1 = w2 = 0.1: the gradient points along the negative
    # cross-curvature of w1 w2, so g^T H g < 0 and no finite step minimizes the model
    Xs = np.array([[1.0], [-1.0]])
    theta = net.pack([(np.array([[0.1]]), np.zeros(1)), (np.array([[0.1]]), np.zeros(1))])
    concave = curvature_along_gradient(net, theta, Xs, Xs[:, 0])
    assert concave.g_h_g < 0 and concave.g_dot_g > 0
    assert concave.best_step == math.inf


def test_monitor_flags_growth_and_suggests_lr():
    mon = IllConditioningMonitor(window=5)
    assert mon.suggested_lr is None and not mon.ill_conditioned
    for step in range(4):
        mon.update(step, Curvature(0.0, 1.0, 1.0, 1.0))
    assert not mon.ill_conditioned
    for step, ghg in zip(range(4, 8), [2.0, 4.0, 8.0, 12.0], strict=True):
        mon.update(step, Curvature(0.0, 1.0 + 0.01 * step, ghg, 1.0 / ghg))
    assert mon.ill_conditioned  # window g^T H g: 1, 2, 4, 8, 12 (>= 10x); g^T g grew
    h = mon.history
    assert list(h["step"]) == list(range(8)) and h["g_h_g"][-1] == 12.0
    lr = mon.suggested_lr
    assert np.isclose(lr, (1.07) / 12.0) and lr < 2 * 1.07 / 12.0
    # g^T g shrinking: not ill-conditioned however fast g^T H g grows
    mon2 = IllConditioningMonitor(window=2)
    mon2.update(0, Curvature(0.0, 1.0, 1.0, 1.0))
    mon2.update(1, Curvature(0.0, 0.5, 100.0, 0.005))
    assert not mon2.ill_conditioned
    mon2.update(2, Curvature(0.0, 0.6, -1.0, math.inf))
    assert mon2.suggested_lr == math.inf


def test_monitor_on_a_real_net(tanh_ce):
    net, theta, X, y, _ = tanh_ce
    mon = IllConditioningMonitor(window=3)
    t = theta.copy()
    recorded = []
    for step in range(3):
        c = curvature_along_gradient(net, t, X, y)
        mon.update(step, c)
        recorded.append(c)
        t -= 0.5 * net.loss_and_grad(t, X, y)[1]
    h = mon.history
    np.testing.assert_array_equal(h["g_dot_g"], [c.g_dot_g for c in recorded])
    np.testing.assert_array_equal(h["g_h_g"], [c.g_h_g for c in recorded])
    first, last = recorded[0], recorded[-1]
    expected = (first.g_h_g > 0 and last.g_h_g >= 10 * first.g_h_g
                and last.g_dot_g >= first.g_dot_g)
    assert mon.ill_conditioned == expected
    # the verdict is not just the rule restated: on this run g^T H g falls, so it must be False
    assert last.g_h_g < first.g_h_g and not mon.ill_conditioned
    assert mon.suggested_lr == (last.g_dot_g / last.g_h_g if last.g_h_g > 0 else math.inf)


def test_monitor_bad_input():
    with pytest.raises(ValueError, match="window"):
        IllConditioningMonitor(window=1)
    with pytest.raises(ValueError, match="growth"):
        IllConditioningMonitor(growth=0.5)
    mon = IllConditioningMonitor()
    with pytest.raises(TypeError, match="curvature"):
        mon.update(0, 3.0)
    with pytest.raises(ValueError, match="finite"):
        mon.update(0, Curvature(0.0, np.nan, 1.0, 1.0))


def test_hutchinson_trace_matches_dense(tanh_ce):
    net, theta, X, y, H = tanh_ce
    est = hutchinson_trace(net, theta, X, y, samples=200, batch=50, seed=1)
    assert est.samples == 200 and est.std_error > 0
    assert abs(est.estimate - np.trace(H)) <= 4 * est.std_error
    again = hutchinson_trace(net, theta, X, y, samples=200, batch=50, seed=1)
    assert again == est


def test_hutchinson_exact_for_diagonal_hessian():
    # one linear layer, mse, orthonormal inputs without bias coupling: H = [X 1]^T[X 1]/N is
    # diagonal when the columns of [X 1] are orthogonal -> z^T H z = tr(H) for Rademacher z
    X = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    net = MLP([2, 1], activation="identity", loss="mse")
    est = hutchinson_trace(net, np.zeros(3), X, np.zeros(4), samples=5)
    assert np.isclose(est.estimate, 3.0) and est.std_error <= 1e-12


def test_spectral_density_moments_and_normalisation(tanh_ce):
    net, theta, X, y, H = tanh_ce
    P = net.num_params
    sd = spectral_density(net, theta, X, y, n_vectors=3, steps=P, n_grid=2000, seed=4)
    ev = np.linalg.eigvalsh(H)
    assert sd.nodes.shape == (3, P) and sd.weights.shape == (3, P)
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=1e-10)
    used = sd.weights > 0
    assert sd.nodes[used].min() >= ev[0] - 1e-8 and sd.nodes[used].max() <= ev[-1] + 1e-8
    # with a full Krylov basis the quadrature gives z^T H^p z / z^T z exactly
    rng = np.random.default_rng(4)
    for i in range(3):
        z = rng.standard_normal(P)
        z /= np.linalg.norm(z)
        for p in (1, 2, 3):
            exact = z @ np.linalg.matrix_power(H, p) @ z
            quad = (sd.weights[i] * sd.nodes[i] ** p).sum()
            assert abs(quad - exact) <= 1e-8 * np.abs(ev).max() ** p
    dx = sd.grid[1] - sd.grid[0]
    assert abs(sd.density.sum() * dx - 1.0) <= 1e-3
    assert sd.density.min() >= 0


def test_spectral_density_few_steps_and_bad_input(tanh_ce):
    net, theta, X, y, _ = tanh_ce
    sd = spectral_density(net, theta, X, y, n_vectors=2, steps=10, sigma=0.05)
    assert sd.sigma == 0.05 and sd.nodes.shape == (2, 10)
    with pytest.raises(ValueError, match="steps"):
        spectral_density(net, theta, X, y, steps=0)
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(net, theta, X, y, sigma=-1.0)
    with pytest.raises(TypeError, match="model"):
        hessian_extremes("not a net", theta, X, y)
    with pytest.raises(ValueError, match="tol"):
        hessian_extremes(net, theta, X, y, tol=0)
    with pytest.raises(ValueError, match="samples"):
        hutchinson_trace(net, theta, X, y, samples=0)
    with pytest.raises(TypeError, match="grad_fn"):
        hvp_fd(None, theta, theta)
    with pytest.raises(ValueError, match="v"):
        hvp_fd(lambda t: t, theta, theta[:-1])
    with pytest.raises(ValueError, match="grad_fn"):
        hvp_fd(lambda t: t[:-1], theta, theta)


# ---------------------------------------------------------------- generic sources
class _PlainModel:
    """A model known only through its public methods (no fastopt internals)."""

    def __init__(self, net):
        self.net, self.num_params, self.dtype = net, net.num_params, net.dtype
        self.calls = 0

    def loss_and_grad(self, theta, X, y):
        return self.net.loss_and_grad(theta, X, y)

    def hvp(self, theta, X, y, v):
        self.calls += 1
        return self.net.hvp(theta, X, y, v)

    def gnvp(self, theta, X, y, v):
        return self.net.gnvp(theta, X, y, v)


class _PlainObjective:
    def __init__(self, net, X, y):
        self.net, self.X, self.y = net, X, y
        self.num_params, self.dtype = net.num_params, net.dtype

    def loss_and_grad(self, theta):
        return self.net.loss_and_grad(theta, self.X, self.y)

    def hvp(self, theta, v):
        return self.net.hvp(theta, self.X, self.y, v)

    def gnvp(self, theta, v):
        return self.net.gnvp(theta, self.X, self.y, v)


def _sources(net, theta, X, y, H):
    from fastopt.curvature import bind

    return {
        "mlp": (net, theta, X, y),
        "plain model": (_PlainModel(net), theta, X, y),
        "bound": (bind(net, X, y), theta),
        "objective": (_PlainObjective(net, X, y), theta),
    }


@pytest.mark.parametrize("which", ["mlp", "plain model", "bound", "objective"])
def test_every_diagnostic_accepts_models_and_objectives(tanh_ce, which):
    net, theta, X, y, H = tanh_ce
    args = _sources(net, theta, X, y, H)[which]
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    res = hessian_extremes(*args, tol=1e-8)
    assert res.converged and res.kind == "saddle"
    assert abs(res.lambda_max - ev[-1]) <= 1e-6 * ev[-1]
    assert abs(res.lambda_min - ev[0]) <= 1e-6 * abs(ev).max()
    assert res.residual_max <= 1e-6 * abs(ev).max() and res.residual_min <= 1e-6 * abs(ev).max()
    c = curvature_along_gradient(*args)
    g = net.loss_and_grad(theta, X, y)[1]
    assert np.isclose(c.g_h_g, g @ H @ g, rtol=1e-11)
    tr = hutchinson_trace(*args, exact=True, batch=50)
    assert tr.exact and tr.std_error == 0 and tr.samples == net.num_params
    assert np.isclose(tr.estimate, np.trace(H), rtol=1e-12)
    sd = spectral_density(*args, n_vectors=1, steps=5, seed=1)
    assert np.isfinite(sd.density).all()
    pytest.importorskip("scipy")
    op = hessian_operator(*args)
    M = np.random.default_rng(0).standard_normal((net.num_params, 2))
    np.testing.assert_allclose(op @ M, H @ M, rtol=1e-11, atol=1e-13)
    fd = hvp_fd(*args[:2], M, **({"X": X, "y": y} if len(args) == 4 else {}))
    np.testing.assert_allclose(fd, H @ M, rtol=1e-5, atol=1e-7)


def test_ggn_curvature_option(tanh_ce):
    net, theta, X, y, _ = tanh_ce
    G = net.gnvp(theta, X, y, np.eye(net.num_params))
    ev = np.linalg.eigvalsh((G + G.T) / 2)
    res = hessian_extremes(net, theta, X, y, curvature="ggn", tol=1e-8)
    assert res.kind == "minimum" and abs(res.lambda_max - ev[-1]) <= 1e-6 * ev[-1]
    assert np.isclose(hutchinson_trace(net, theta, X, y, curvature="ggn", exact=True).estimate,
                      np.trace(G), rtol=1e-12)
    g = net.loss_and_grad(theta, X, y)[1]
    assert np.isclose(curvature_along_gradient(net, theta, X, y, curvature="ggn").g_h_g,
                      g @ G @ g, rtol=1e-11)
    with pytest.raises(ValueError, match="curvature"):
        hessian_extremes(net, theta, X, y, curvature="fisher")


def test_diagnostics_on_a_plain_matvec_and_operators():
    rng = np.random.default_rng(5)
    Q = np.linalg.qr(rng.standard_normal((30, 30)))[0]
    lam = np.linspace(-2.0, 5.0, 30)
    A = (Q * lam) @ Q.T
    res = hessian_extremes(lambda v: A @ v, size=30, tol=1e-10)
    assert res.converged and res.kind == "saddle"
    np.testing.assert_allclose([res.lambda_max, res.lambda_min], [5.0, -2.0], rtol=1e-9)
    res_a = hessian_extremes(A, tol=1e-10)
    np.testing.assert_allclose([res_a.lambda_max, res_a.lambda_min], [5.0, -2.0], rtol=1e-9)
    assert np.isclose(hutchinson_trace(A, exact=True).estimate, lam.sum(), rtol=1e-12)
    assert hutchinson_trace(A, samples=30, exact=None).exact  # P <= samples: exact
    sla = pytest.importorskip("scipy.sparse.linalg")
    op = sla.aslinearoperator(A)
    assert np.isclose(hessian_extremes(op, tol=1e-10).lambda_max, 5.0, rtol=1e-9)
    sd = spectral_density(lambda v: A @ v, size=30, n_vectors=2, steps=30)
    assert sd.nodes.min() >= -2.0 - 1e-8 and sd.nodes.max() <= 5.0 + 1e-8
    with pytest.raises(ValueError, match="size"):
        hessian_extremes(lambda v: A @ v)
    with pytest.raises(ValueError, match="curvature"):
        hessian_extremes(A, curvature="ggn")
    with pytest.raises(TypeError, match="gradient"):
        curvature_along_gradient(A, None)
    with pytest.raises(ValueError, match="square"):
        hessian_extremes(np.ones((3, 4)))


def test_model_without_batch_is_refused(tanh_ce):
    net, theta, X, y, _ = tanh_ce
    with pytest.raises(ValueError, match="X, y"):
        hessian_extremes(net, theta)
    with pytest.raises(ValueError, match="X, y"):
        hessian_extremes(_PlainModel(net), theta, X)


def test_hessian_extremes_reports_non_convergence_in_the_result(tanh_ce):
    net, theta, X, y, H = tanh_ce
    with pytest.warns(RuntimeWarning):
        ext = hessian_extremes(net, theta, X, y, tol=1e-12, maxiter=3)
    assert ext.converged is False and ext.iterations == 3
    ev = np.linalg.eigvalsh(H)
    # each Ritz value lies within its true residual of an eigenvalue
    for lam, r in ((ext.lambda_max, ext.residual_max), (ext.lambda_min, ext.residual_min)):
        assert r > 0 and np.abs(ev - lam).min() <= r * (1 + 1e-9)


# ---------------------------------------------------------------- degenerate cases
def test_spectral_density_of_a_zero_hessian_is_finite():
    # all-dead relu layer and a zero output layer with mse on zero targets at b = 0: H has
    # only the output-bias block; a zero operator is the cleanest flat case
    sd = spectral_density(lambda v: 0.0 * v, size=7, n_vectors=2, steps=5)
    assert np.isfinite(sd.density).all() and np.isfinite(sd.grid).all()
    dx = sd.grid[1] - sd.grid[0]
    assert abs(sd.density.sum() * dx - 1.0) <= 1e-2
    net = MLP([2, 1], activation="identity", loss="mse")
    X = np.zeros((4, 2))
    assert hessian_extremes(lambda v: 0.0 * v, size=7).kind == "flat"
    sd2 = spectral_density(net, np.zeros(3), X, np.zeros(4), n_vectors=1, steps=3)
    assert np.isfinite(sd2.density).all()
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(lambda v: 0.0 * v, size=3, sigma=1e-320)


def test_hessian_operator_complex_vectors_are_exact(tanh_ce):
    pytest.importorskip("scipy")
    net, theta, X, y, H = tanh_ce
    op = hessian_operator(net, theta, X, y)
    rng = np.random.default_rng(3)
    P = net.num_params
    v = rng.standard_normal(P) + 1j * rng.standard_normal(P)
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")  # no ComplexWarning: the imaginary part is not dropped
        hv = op.matvec(v)
        HM = op.matmat(np.stack([v, 2 * v], 1))
    np.testing.assert_allclose(hv, H @ v, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(HM, H @ np.stack([v, 2 * v], 1), rtol=1e-11, atol=1e-13)


def test_hessian_operator_matmat_with_zero_columns(tanh_ce):
    pytest.importorskip("scipy")
    net, theta, X, y, _ = tanh_ce
    out = hessian_operator(net, theta, X, y).matmat(np.empty((net.num_params, 0)))
    assert isinstance(out, np.ndarray) and out.shape == (net.num_params, 0)


def test_monitor_non_numeric_values_get_clear_errors():
    mon = IllConditioningMonitor()
    with pytest.raises(TypeError, match=r"curvature\.g_dot_g: expected a real number, got str"):
        mon.update(0, Curvature(0.0, "abc", 1.0, 1.0))
    with pytest.raises(TypeError, match=r"curvature\.g_h_g"):
        mon.update(0, Curvature(0.0, 1.0, [1.0, 2.0], 1.0))
    with pytest.raises(TypeError, match=r"curvature\.g_h_g"):
        mon.update(0, Curvature(0.0, 1.0, 1 + 2j, 1.0))
    assert mon.history["step"].size == 0  # rejected records changed nothing


def test_monitor_updates_atomically_under_threads_and_interrupts():
    import threading

    mon = IllConditioningMonitor(window=4)

    def work(t):
        for i in range(500):
            mon.update(t * 1000 + i, Curvature(0.0, float(t), float(i), 1.0))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    h = mon.history
    assert h["step"].size == 4000
    # every record is whole: its step encodes its own g_dot_g and g_h_g
    np.testing.assert_array_equal(h["step"] // 1000, h["g_dot_g"])
    np.testing.assert_array_equal(h["step"] % 1000, h["g_h_g"])

    class Interrupting:
        g_dot_g = 1.0

        @property
        def g_h_g(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mon.update(9999, Interrupting())
    assert mon.history["step"].size == 4000
