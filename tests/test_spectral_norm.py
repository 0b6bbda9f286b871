"""spectral_norm against LAPACK (np.linalg.norm(W, 2)) on random, tall, wide, low-rank matrices."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import SpectralResult, spectral_norm
from fastopt.reference import spectral as ref

BACKENDS = compiled_backends("spectral") + ["numpy"]
DTYPES = [np.float32, np.float64]


def _with_singular_values(n, m, s, seed):
    rng = np.random.default_rng(seed)
    k = len(s)
    U, _ = np.linalg.qr(rng.standard_normal((n, k)))
    V, _ = np.linalg.qr(rng.standard_normal((m, k)))
    return (U * np.asarray(s)) @ V.T


def make(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((90, 70))
    if kind == "tall":
        return rng.standard_normal((160, 30))
    if kind == "wide":
        return rng.standard_normal((30, 160))
    if kind == "low_rank":
        return rng.standard_normal((100, 4)) @ rng.standard_normal((4, 80))
    if kind == "ill_conditioned":
        return _with_singular_values(80, 80, np.logspace(0, -12, 80), seed)
    if kind == "nearly_degenerate":  # sigma_1 and sigma_2 agree to 1e-9
        s = np.concatenate([[10.0, 10.0 * (1 - 1e-9)], np.linspace(9, 0.1, 58)])
        return _with_singular_values(90, 70, s, seed)
    if kind == "degenerate":  # every singular value equal (scaled orthogonal)
        return 3.0 * np.linalg.qr(rng.standard_normal((60, 60)))[0]
    raise AssertionError(kind)


KINDS = ["random", "tall", "wide", "low_rank", "ill_conditioned", "nearly_degenerate", "degenerate"]


def truth(W):
    return ref.dense_spectral_norm(W)  # the reference module's LAPACK oracle


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_single_matches_lapack(kind, dtype, backend):
    W = make(kind, 0).astype(dtype)
    res = spectral_norm(W, backend=backend)
    assert isinstance(res, SpectralResult)
    assert res.converged is True and isinstance(res.value, float)
    np.testing.assert_allclose(res.value, truth(W), rtol=1e-6)
    assert 0 <= res.residual <= 1e-6
    assert res.u is None and res.v is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "wide", "ill_conditioned", "nearly_degenerate"])
def test_batched_matches_lapack(kind, dtype, backend):
    W = np.stack([make(kind, s) for s in range(5)]).astype(dtype)
    res = spectral_norm(W, backend=backend)
    assert res.value.shape == res.iterations.shape == res.converged.shape == (5,)
    assert res.converged.all()
    np.testing.assert_allclose(res.value, truth(W), rtol=1e-6)
    # the batch gives what each matrix gives alone
    alone = [spectral_norm(W[b], backend=backend).value for b in range(5)]
    np.testing.assert_allclose(res.value, alone, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_singular_vectors(dtype, backend):
    W = make("random", 3).astype(dtype)
    res = spectral_norm(W, return_vectors=True, backend=backend)
    u, v, s = res.u.astype(np.float64), res.v.astype(np.float64), res.value
    assert u.dtype == v.dtype and res.u.dtype == dtype and u.shape == (90,) and v.shape == (70,)
    np.testing.assert_allclose([np.linalg.norm(u), np.linalg.norm(v)], 1.0, rtol=1e-6)
    Wd = W.astype(np.float64)
    tol = 1e-3 if dtype == np.float32 else 1e-5  # vectors converge like sqrt(residual)
    assert np.linalg.norm(Wd @ v - s * u) <= 1e-5 * s
    assert np.linalg.norm(Wd.T @ u - s * v) <= tol * s


def test_batched_vectors_and_zero_matrix_in_batch():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3, 20, 12))
    W[1] = 0.0
    res = spectral_norm(W, return_vectors=True)
    assert res.u.shape == (3, 20) and res.v.shape == (3, 12)
    assert res.value[1] == 0.0 and res.converged.all()
    np.testing.assert_allclose(res.value, truth(W), rtol=1e-6, atol=0)
    np.testing.assert_allclose(np.linalg.norm(res.u, axis=1), 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_scales_float32(backend):
    # float32 squares of 1e-30 underflowed (0.0, converged) and of 1e30 overflowed (NaN,
    # converged): each matrix of a stack is rescaled by its own exact power of two
    W = np.random.default_rng(3).standard_normal((150, 150))
    stack = np.stack([W * 1e-30, W * 1e30, W * 1e-20, W]).astype(np.float32)
    res = spectral_norm(stack, backend=backend, return_vectors=True)
    assert res.converged.all()
    want = np.linalg.norm(stack.astype(np.float64), 2, axis=(1, 2))
    np.testing.assert_allclose(res.value, want, rtol=1e-5)
    for b in range(len(stack)):  # singular vectors of the unscaled W
        Wb = stack[b].astype(np.float64) / want[b]
        np.testing.assert_allclose(res.u[b] @ Wb @ res.v[b], 1.0, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_matrix_is_zero_and_converged(backend):
    res = spectral_norm(np.zeros((7, 5), np.float32), backend=backend)
    assert res.value == 0.0 and res.converged is True and res.residual == 0.0


def test_tiny_shapes_are_exact():
    for shape in [(1, 1), (1, 5), (5, 1), (2, 3)]:
        W = np.random.default_rng(0).standard_normal(shape)
        res = spectral_norm(W)
        assert res.converged
        np.testing.assert_allclose(res.value, truth(W), rtol=1e-12)


def test_integer_input_is_computed_in_float64():
    W = np.arange(12).reshape(3, 4)
    res = spectral_norm(W, return_vectors=True)
    assert res.v.dtype == np.float64
    np.testing.assert_allclose(res.value, truth(W), rtol=1e-10)


def test_input_not_modified_and_noncontiguous():
    W = np.random.default_rng(2).standard_normal((60, 50)).astype(np.float32)
    before = W.copy()
    spectral_norm(W, return_vectors=True)
    np.testing.assert_array_equal(W, before)
    for view in (W.T, W[:, ::2], W[::3]):
        np.testing.assert_allclose(spectral_norm(view).value, truth(view), rtol=1e-6)


def test_thick_restart_path_is_correct():
    # evenly spaced eigenvalues of W^T W: needs more than one basis of 64 vectors at 1e-10
    W = _with_singular_values(300, 300, np.sqrt(np.linspace(1, 0, 300)), 4)
    res = spectral_norm(W, tol=1e-10)
    assert res.converged and res.iterations > 64
    np.testing.assert_allclose(res.value, 1.0, rtol=1e-10)


def test_maxiter_reports_not_converged():
    W = make("random", 5)
    res = spectral_norm(W, maxiter=3, tol=1e-10)
    assert res.iterations == 3 and res.converged is False
    assert res.residual > 1e-10
    assert res.value <= truth(W) * (1 + 1e-12)  # Ritz values never overshoot


def test_warm_start_with_v0_converges_at_once():
    W = make("random", 6)
    first = spectral_norm(W, return_vectors=True, tol=1e-10)
    again = spectral_norm(W, v0=first.v, tol=1e-8)
    assert again.converged and again.iterations <= 3
    np.testing.assert_allclose(again.value, first.value, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_and_backends_agree(backend):
    W = np.random.default_rng(7).standard_normal((4, 70, 90))
    a = spectral_norm(W, backend=backend)
    b = spectral_norm(W, backend=backend)
    np.testing.assert_array_equal(a.value, b.value)
    ref = spectral_norm(W, backend="numpy")
    np.testing.assert_allclose(a.value, ref.value, rtol=1e-12)


@pytest.mark.parametrize(
    "W, kwargs, exc, match",
    [
        (np.ones(5), {}, ValueError, "2-D"),
        (np.ones((2, 2, 2, 2)), {}, ValueError, "3-D"),
        (np.ones((0, 3)), {}, ValueError, "empty"),
        (np.array([[1.0, np.nan]]), {}, ValueError, "non-finite"),
        (np.array([[1.0, np.inf]]), {}, ValueError, "non-finite"),
        (np.ones((2, 2), np.complex128), {}, TypeError, "complex"),
        (np.ones((2, 2), np.float16), {}, TypeError, "float16"),
        (np.ones((2, 2)), {"tol": 0}, ValueError, "tol"),
        (np.ones((2, 2)), {"tol": -1e-3}, ValueError, "tol"),
        (np.ones((2, 2)), {"maxiter": 0}, ValueError, "maxiter"),
        (np.ones((2, 2)), {"maxiter": 2.5}, TypeError, "maxiter"),
        (np.ones((2, 3)), {"v0": np.ones(2)}, ValueError, "v0"),
        (np.ones((2, 3)), {"v0": np.zeros(3)}, ValueError, "v0"),
        (np.ones((2, 3)), {"v0": np.array([1.0, np.nan, 0])}, ValueError, "v0"),
        (np.ones((2, 3)), {"backend": "fortran"}, ValueError, "backend"),
    ],
)
def test_bad_input(W, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        spectral_norm(W, **kwargs)


def test_vectors_of_early_finisher_survive_a_restart_of_the_batch():
    slow = _with_singular_values(300, 300, np.sqrt(np.linspace(1, 0, 300)), 4)  # > 64 steps
    fast = np.diag(np.r_[2.0, np.ones(299)])  # converges in a few steps
    W = np.stack([fast, slow])
    res = spectral_norm(W, tol=1e-10, return_vectors=True)
    assert res.converged.all() and res.iterations[1] > 64 > res.iterations[0]
    for b in range(2):
        s, u, v = res.value[b], res.u[b], res.v[b]
        assert np.linalg.norm(W[b] @ v - s * u) <= 1e-8 * s
        assert np.linalg.norm(W[b].T @ u - s * v) <= 1e-4 * s
    np.testing.assert_allclose(res.value, truth(W), rtol=1e-10)
