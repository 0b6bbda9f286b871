"""fastopt.symmetry: permutations and signs leave the function unchanged, canonical forms are
unique per class, alignment recovers a hidden permutation, and the barrier drops after it."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import MLP
from fastopt.datasets import load_digits
from fastopt.symmetry import (
    align,
    canonicalize,
    count_equivalent,
    interpolation_barrier,
    invert,
    permute,
    permute_running_stats,
)

pytest.importorskip("scipy")


def random_symmetry(net, rng, signs=True):
    perms = [rng.permutation(n) for n in net.sizes[1:-1]]
    if not signs:
        return perms, None
    return perms, [rng.choice([-1.0, 1.0], n) for n in net.sizes[1:-1]]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 4)), rng.integers(0, 3, 20)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
def test_permute_keeps_loss_and_moves_gradient(data, dtype, activation):
    X, y = data
    net = MLP([4, 5, 6, 3], activation=activation, dtype=dtype)
    theta = net.init(1)
    X = X.astype(dtype)
    rng = np.random.default_rng(2)
    perms, signs = random_symmetry(net, rng, signs=activation != "relu")
    moved = permute(net, theta, perms, signs=signs)
    assert moved.dtype == dtype and not np.array_equal(moved, theta)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    loss, g = net.loss_and_grad(theta, X, y)
    loss_m, g_m = net.loss_and_grad(moved, X, y)
    assert abs(loss - loss_m) <= tol * max(1, abs(loss))
    # the gradient transforms like theta: g(P theta) = P g(theta) (P is orthogonal, signed)
    np.testing.assert_allclose(g_m, permute(net, g, perms, signs=signs), rtol=tol * 10,
                               atol=tol * 10)
    back, back_signs = invert(perms, signs)
    assert np.array_equal(permute(net, moved, back, signs=back_signs), theta)


def test_hvp_transforms_with_the_permutation(data):
    X, y = data
    net = MLP([4, 5, 6, 3], activation="tanh")
    theta = net.init(3)
    v = np.random.default_rng(4).standard_normal(net.num_params)
    perms, signs = random_symmetry(net, np.random.default_rng(5))
    P = lambda u: permute(net, u, perms, signs=signs)  # noqa: E731
    np.testing.assert_allclose(net.hvp(P(theta), X, y, P(v)), P(net.hvp(theta, X, y, v)),
                               rtol=1e-11, atol=1e-13)


def test_sign_flips_are_refused_for_non_odd_activations():
    net = MLP([2, 3, 1], activation="relu", loss="mse")
    with pytest.raises(ValueError, match="odd"):
        permute(net, net.init(0), [np.arange(3)], signs=[np.array([1.0, -1.0, 1.0])])


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_canonical_form_is_the_same_for_every_member_of_a_class(data, activation):
    X, y = data
    net = MLP([4, 7, 5, 3], activation=activation)
    theta = net.init(6)
    canon = canonicalize(net, theta)
    np.testing.assert_array_equal(
        canon.theta, permute(net, theta, canon.perms, signs=canon.signs))
    rng = np.random.default_rng(7)
    for _ in range(3):
        perms, signs = random_symmetry(net, rng, signs=activation == "tanh")
        other = canonicalize(net, permute(net, theta, perms, signs=signs))
        np.testing.assert_array_equal(other.theta, canon.theta)
    assert abs(net.loss(canon.theta, X, y) - net.loss(theta, X, y)) < 1e-13
    # canonical again is a fixed point
    np.testing.assert_array_equal(canonicalize(net, canon.theta).theta, canon.theta)


def test_canonical_forms_of_different_networks_differ():
    net = MLP([4, 6, 3])
    assert not np.array_equal(canonicalize(net, net.init(0)).theta,
                              canonicalize(net, net.init(1)).theta)


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_align_recovers_a_hidden_permutation(data, method, activation):
    X, _ = data
    net = MLP([4, 8, 8, 3], activation=activation)
    theta = net.init(8)
    perms, signs = random_symmetry(net, np.random.default_rng(9), signs=activation == "tanh")
    shuffled = permute(net, theta, perms, signs=signs)
    result = align(net, theta, shuffled, method=method, X=X)
    np.testing.assert_allclose(result.theta, theta, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(permute(net, shuffled, result.perms, signs=result.signs),
                                  result.theta)


def test_count_equivalent_is_exact():
    assert count_equivalent(MLP([3, 4, 2], activation="relu")).count == 24
    tanh = count_equivalent(MLP([3, 4, 5, 2], activation="tanh"))
    assert tanh.permutations == 24 * 120 and tanh.sign_flips == 2 ** 9
    big = count_equivalent(MLP([784, 1024, 1024, 10], activation="relu"))
    assert isinstance(big.count, int) and abs(big.log10 - 2 * 2639.9) < 1.0  # log10(1024!) ~ 2639.9


def test_bad_input_is_refused_clearly():
    net = MLP([2, 3, 1], activation="tanh", loss="mse")
    theta = net.init(0)
    with pytest.raises(ValueError, match="no hidden layer"):
        canonicalize(MLP([2, 1], loss="mse"), np.zeros(3))
    with pytest.raises(ValueError, match=r"theta: expected shape \(13,\)"):
        canonicalize(net, np.zeros(5))
    with pytest.raises(ValueError, match="not a permutation"):
        permute(net, theta, [np.array([0, 0, 1])])
    with pytest.raises(ValueError, match="one per hidden layer"):
        permute(net, theta, [np.arange(3), np.arange(3)])
    with pytest.raises(TypeError, match="model"):
        canonicalize(object(), theta)
    with pytest.raises(ValueError, match="X: method='activations'"):
        align(net, theta, theta, method="activations")
    with pytest.raises(ValueError, match="method"):
        align(net, theta, theta, method="bogus")
    with pytest.raises(ValueError, match="points"):
        interpolation_barrier(net, theta, theta, np.zeros((2, 2)), np.zeros(2), points=1)
    before = theta.copy()
    permute(net, theta, [np.array([2, 1, 0])], signs=[np.array([1.0, -1.0, 1.0])])
    assert np.array_equal(theta, before)


def _train(net, X, y, seed, steps=150, lr=0.5):
    theta = net.init(seed)
    for _ in range(steps):
        _, g = net.loss_and_grad(theta, X, y)
        theta -= lr * g
    return theta


def test_barrier_drops_after_alignment_on_the_digits():
    X, y = load_digits()
    net = MLP([64, 48, 48, 10], activation="relu")
    theta_a = _train(net, X, y, seed=1)
    theta_b = _train(net, X, y, seed=2)
    result = interpolation_barrier(net, theta_a, theta_b, X, y, points=9)
    assert result.barrier > 0.05, result.barrier
    assert result.aligned_barrier < 0.6 * result.barrier, (result.barrier, result.aligned_barrier)
    assert result.aligned_accuracy.min() > result.accuracy.min()
    # the aligned theta_b is the same function as theta_b
    assert abs(net.loss(result.theta_b_aligned, X, y) - net.loss(theta_b, X, y)) < 1e-12


def _bn_network(activation="tanh", dtype=np.float64):
    from fastopt import Network, nn

    act = {"tanh": nn.Tanh(), "relu": nn.ReLU()}[activation]
    act2 = {"tanh": nn.Tanh(), "relu": nn.ReLU()}[activation]
    return Network([nn.Dense(4, 6), nn.BatchNorm(6), act, nn.Dense(6, 5), act2,
                    nn.BatchNorm(5), nn.Dense(5, 3)], dtype=dtype)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_networks_with_batch_norm_move_its_parameters_and_statistics(data, activation):
    X, y = data
    net = _bn_network(activation)
    rng = np.random.default_rng(11)
    theta = net.init(rng) + 0.05 * rng.standard_normal(net.num_params)
    perms = [rng.permutation(6), rng.permutation(5)]
    signs = [rng.choice([-1.0, 1.0], 6), rng.choice([-1.0, 1.0], 5)] if activation == "tanh" \
        else None
    moved = permute(net, theta, perms, signs=signs)
    loss, g = net.loss_and_grad(theta, X, y)        # training-mode batch statistics
    loss_m, g_m = net.loss_and_grad(moved, X, y)
    assert abs(loss - loss_m) < 1e-13
    np.testing.assert_allclose(g_m, permute(net, g, perms, signs=signs), atol=1e-12)
    v = rng.standard_normal(net.num_params)
    P = lambda u: permute(net, u, perms, signs=signs)  # noqa: E731
    np.testing.assert_allclose(net.hvp(moved, X, y, P(v)), P(net.hvp(theta, X, y, v)),
                               rtol=1e-10, atol=1e-12)
    # eval mode: the running statistics move with the units
    net.loss_and_grad(theta, X, y, update_running_stats=True)
    stats = net.running_stats
    moved_net = _bn_network(activation)
    moved_net.set_running_stats(permute_running_stats(net, perms, signs=signs))
    net.eval()
    moved_net.eval()
    np.testing.assert_allclose(moved_net.forward(moved, X), net.forward(theta, X), atol=1e-12)
    assert all(np.array_equal(a, b) for pair, new in zip(stats, net.running_stats, strict=True)
               for a, b in zip(pair, new, strict=True))
    # canonical forms and alignment
    canon = canonicalize(net, theta).theta
    np.testing.assert_array_equal(canonicalize(net, moved).theta, canon)
    for method in ("weights", "activations"):
        np.testing.assert_allclose(align(net, theta, moved, method=method, X=X).theta, theta,
                                   atol=1e-15)
    counted = count_equivalent(net)
    assert counted.permutations == 720 * 120
    assert counted.sign_flips == (2 ** 11 if activation == "tanh" else 1)
