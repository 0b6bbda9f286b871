"""SpectralNormState (torch spectral_norm semantics) and gradient_flow (Pascanu et al.)."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import GradientFlow, SpectralNormState, gradient_flow, spectral_radius


def test_state_matches_torch_spectral_norm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 4)).astype(np.float32)
    state = SpectralNormState(W.shape, n_power_iterations=2, seed=1)
    lin = torch.nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
    lin = torch.nn.utils.spectral_norm(lin, n_power_iterations=2, eps=1e-12)
    with torch.no_grad():
        lin.weight_u.copy_(torch.from_numpy(state.u.copy()))
    lin.train()
    for _ in range(3):  # three training steps, W fixed
        lin(torch.zeros(1, 4))
        sigma_torch = float((lin.weight_orig[0, 0] / lin.weight[0, 0]).detach())
        sigma = state.sigma(W)
        np.testing.assert_allclose(sigma, sigma_torch, rtol=1e-5)
        np.testing.assert_allclose(state.u, lin.weight_u.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.v, lin.weight_v.numpy(), rtol=1e-5, atol=1e-6)


def test_state_updates_in_place_and_converges():
    W = np.random.default_rng(1).standard_normal((30, 20))
    state = SpectralNormState(W.shape, dtype=np.float64, seed=0)
    u, v = state.u, state.v
    sigmas = [state.sigma(W) for _ in range(300)]
    assert state.u is u and state.v is v
    assert all(b >= a - 1e-12 for a, b in zip(sigmas, sigmas[1:], strict=False))  # monotone
    np.testing.assert_allclose(sigmas[-1], np.linalg.norm(W, 2), rtol=1e-6)
    Wn = state.normalize(W)
    np.testing.assert_allclose(np.linalg.norm(Wn, 2), 1.0, rtol=1e-6)


def test_state_conv_weight_is_flattened():
    W = np.random.default_rng(2).standard_normal((8, 3, 3, 3)).astype(np.float32)
    state = SpectralNormState(W.shape, n_power_iterations=100, seed=3)
    np.testing.assert_allclose(state.sigma(W), np.linalg.norm(W.reshape(8, -1), 2), rtol=1e-5)
    assert state.u.shape == (8,) and state.v.shape == (27,) and state.u.dtype == np.float32


def test_state_bad_input():
    state = SpectralNormState((3, 2), seed=0)
    with pytest.raises(ValueError, match="shape"):
        state.sigma(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        state.sigma(np.ones((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        state.sigma(np.full((3, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="n_power_iterations"):
        SpectralNormState((3, 2), n_power_iterations=0)
    with pytest.raises(ValueError, match="eps"):
        SpectralNormState((3, 2), eps=0)
    with pytest.raises(TypeError, match="dtype"):
        SpectralNormState((3, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="shape"):
        SpectralNormState((3, 0))


def test_zero_weight_keeps_eps_semantics():
    state = SpectralNormState((4, 4), seed=0)
    W = np.zeros((4, 4), np.float32)
    assert state.sigma(W) == 0.0
    np.testing.assert_array_equal(state.normalize(W), W)


def _powers_norms(W, steps):
    P = np.eye(W.shape[0])
    out = []
    for _ in range(steps):
        P = W @ P
        out.append(np.linalg.norm(P, 2))
    return np.array(out)


def test_flow_norms_exact_for_small_n():
    W = np.random.default_rng(4).standard_normal((20, 20)) / np.sqrt(20)
    res = gradient_flow(W, steps=30)
    assert isinstance(res, GradientFlow) and res.norms.shape == (30,)
    np.testing.assert_allclose(res.norms, _powers_norms(W, 30), rtol=1e-8)


def test_flow_large_n_lower_bounds_and_rate():
    W = np.random.default_rng(5).standard_normal((80, 80)) / np.sqrt(80)
    res = gradient_flow(W, steps=60)
    exact = _powers_norms(W, 60)
    np.testing.assert_allclose(res.norms[0], exact[0], rtol=1e-8)
    assert (res.norms <= exact * (1 + 1e-9)).all()
    assert (res.norms >= 0.2 * exact).all()
    rho = spectral_radius(W).value
    assert abs(res.rate - rho) <= 0.1 * rho


def test_flow_rate_is_exact_for_scaled_orthogonal():
    Q = np.linalg.qr(np.random.default_rng(6).standard_normal((50, 50)))[0]
    res = gradient_flow(0.9 * Q, steps=40)
    np.testing.assert_allclose(res.rate, 0.9, rtol=1e-10)
    np.testing.assert_allclose(res.norms, 0.9 ** np.arange(1, 41), rtol=1e-10)


@pytest.mark.parametrize(
    "scale, activation, regime",
    [
        (0.5, "tanh", "vanishing"),  # sigma_1 < 1: sufficient for vanishing
        (1.0, "tanh", "stable"),
        (1.0, "linear", "stable"),
        (1.5, "relu", "exploding"),
        (1.5, "sigmoid", "vanishing"),  # sigma_1 = 1.5 < 1/gamma = 4
        (4.0, "sigmoid", "stable"),
        (4.5, "sigmoid", "exploding"),
    ],
)
def test_flow_regimes(scale, activation, regime):
    Q = np.linalg.qr(np.random.default_rng(7).standard_normal((40, 40)))[0]
    assert gradient_flow(scale * Q, steps=50, activation=activation).regime == regime


def test_flow_nonnormal_bound_vs_rate():
    # sigma_1 > 1 (necessary condition for exploding holds) but rho < 1: the rate decides
    W = np.array([[0.5, 3.0], [0.0, 0.5]])
    res = gradient_flow(W, steps=100)
    assert res.norms[0] > 1 and res.regime == "vanishing"
    np.testing.assert_allclose(res.rate, 0.5, rtol=0.1)


def test_flow_nilpotent():
    S = np.eye(5, k=1)
    res = gradient_flow(S, steps=8)
    np.testing.assert_allclose(res.norms, [1, 1, 1, 1, 0, 0, 0, 0])
    assert res.rate == 0.0 and res.regime == "vanishing"


def test_flow_bad_input():
    with pytest.raises(ValueError, match="square"):
        gradient_flow(np.ones((2, 3)))
    with pytest.raises(ValueError, match="steps"):
        gradient_flow(np.eye(2), steps=0)
    with pytest.raises(ValueError, match="activation"):
        gradient_flow(np.eye(2), activation="gelu")
    with pytest.raises(ValueError, match="non-finite"):
        gradient_flow(np.full((2, 2), np.inf))
