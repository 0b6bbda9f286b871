"""spectral_radius against np.linalg.eigvals on the matrix classes of issue 4."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import RadiusResult, spectral_radius
from fastopt.reference.spectral import dense_spectral_radius

BACKENDS = compiled_backends("spectral") + ["numpy"]
N = 200  # above the dense cut-off (128): the Krylov path runs


def ginibre(n, seed, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal((n, n)) / np.sqrt(n)).astype(dtype)


def exact(W):
    return np.abs(np.linalg.eigvals(np.asarray(W, dtype=np.float64))).max(axis=-1)


@pytest.mark.parametrize("seed", range(12))
def test_random_ginibre_every_seed(seed):
    W = ginibre(N, seed)
    res = spectral_radius(W)
    assert isinstance(res, RadiusResult)
    assert res.converged is True and res.iterations > 0  # the Krylov path answered
    np.testing.assert_allclose(res.value, exact(W), rtol=1e-6)
    assert abs(abs(res.eigenvalue) - res.value) <= 1e-9 * res.value


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [100, 101])
def test_random_backends_and_dtypes(seed, dtype, backend):
    W = ginibre(160, seed, dtype)
    res = spectral_radius(W, backend=backend)
    assert res.converged
    np.testing.assert_allclose(res.value, exact(W), rtol=1e-6)


def _similar(D, seed):
    """Q D Q^T for a random orthogonal Q (same eigenvalues as the block-diagonal D)."""
    n = D.shape[0]
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return Q @ D @ Q.T


@pytest.mark.parametrize("backend", BACKENDS)
def test_dominant_complex_pair_reports_complex_eigenvalue(backend):
    rng = np.random.default_rng(3)
    D = np.diag(rng.uniform(-0.9, 0.9, N))
    D[:2, :2] = [[0.6, -0.8], [0.8, 0.6]]  # eigenvalues 0.6 +- 0.8i, |lambda| = 1
    W = _similar(D, 4)
    res = spectral_radius(W, backend=backend)
    assert res.converged
    np.testing.assert_allclose(res.value, 1.0, rtol=1e-6)
    np.testing.assert_allclose(res.eigenvalue, 0.6 + 0.8j, rtol=1e-6)


def test_complex_pair_nonnormal():
    W = ginibre(N, 11) * 0.5
    W[:2, :2] += [[0.0, -1.2], [1.2, 0.0]]  # pushes a conjugate pair out of the disc
    res = spectral_radius(W)
    assert res.converged and res.eigenvalue.imag > 0
    np.testing.assert_allclose(res.value, exact(W), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dominant_negative_real_eigenvalue(backend):
    rng = np.random.default_rng(5)
    D = np.diag(rng.uniform(-1.5, 1.5, N))
    D[0, 0] = -2.0
    W = _similar(D, 6) + 0.01 * ginibre(N, 7)  # slightly non-normal
    res = spectral_radius(W, backend=backend)
    assert res.converged
    np.testing.assert_allclose(res.value, exact(W), rtol=1e-6)
    assert res.eigenvalue.real < 0 and res.eigenvalue.imag == 0


@pytest.mark.parametrize("n", [50, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orthogonal_matrices(n, dtype):
    Q, _ = np.linalg.qr(np.random.default_rng(n).standard_normal((n, n)))
    for scale in (1.0, 0.5):
        res = spectral_radius((scale * Q).astype(dtype))
        assert res.converged
        np.testing.assert_allclose(res.value, scale, rtol=1e-6)


def test_batched_krylov_and_dense():
    W = np.stack([ginibre(150, s) for s in range(3)])
    res = spectral_radius(W)
    assert res.value.shape == res.eigenvalue.shape == res.converged.shape == (3,)
    assert res.converged.all()
    np.testing.assert_allclose(res.value, exact(W), rtol=1e-6)
    small = np.stack([ginibre(20, s) for s in range(4)]).astype(np.float32)
    res = spectral_radius(small)
    assert res.converged.all() and (res.iterations == 0).all()
    np.testing.assert_allclose(res.value, exact(small), rtol=1e-6)
    np.testing.assert_allclose(res.value, dense_spectral_radius(small)[0], rtol=1e-6)


def test_small_dense_path_and_integer_input():
    W = np.array([[0, -2], [2, 0]])
    res = spectral_radius(W)
    assert res.converged and res.iterations == 0
    np.testing.assert_allclose(res.value, 2.0, rtol=1e-12)
    np.testing.assert_allclose(res.eigenvalue, 2j, rtol=1e-12)


@pytest.mark.parametrize("n", [5, 200])
def test_zero_matrix(n):
    res = spectral_radius(np.zeros((n, n)))
    assert res.value == 0.0 and res.converged is True


def test_explicit_maxiter_reports_not_converged():
    W = ginibre(N, 8)
    res = spectral_radius(W, maxiter=10)
    assert res.converged is False and res.iterations == 10
    assert np.isfinite(res.value)


def test_input_not_modified_and_noncontiguous():
    W = ginibre(N, 9)
    before = W.copy()
    res = spectral_radius(W.T)
    np.testing.assert_array_equal(W, before)
    np.testing.assert_allclose(res.value, exact(W), rtol=1e-6)


@pytest.mark.parametrize(
    "W, kwargs, exc, match",
    [
        (np.ones(5), {}, ValueError, "2-D"),
        (np.ones((3, 4)), {}, ValueError, "square"),
        (np.ones((2, 3, 4)), {}, ValueError, "square"),
        (np.ones((0, 0)), {}, ValueError, "empty"),
        (np.array([[1.0, np.nan], [0, 1]]), {}, ValueError, "non-finite"),
        (np.ones((2, 2), np.complex64), {}, TypeError, "complex"),
        (np.ones((2, 2)), {"tol": 0.0}, ValueError, "tol"),
        (np.ones((2, 2)), {"maxiter": 0}, ValueError, "maxiter"),
        (np.ones((2, 2)), {"backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_input(W, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        spectral_radius(W, **kwargs)


@pytest.mark.parametrize("n", [12, 40])
def test_defective_dominant_eigenvalue_is_not_reported_converged(n):
    # Jordan block J_n(0.5) (dense path): rho = 0.5, but the eigenvalues of a matrix within
    # eps of it spread over a disc of radius ~eps**(1/n); LAPACK's error bound is infinite
    rng = np.random.default_rng(n)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    J = Q @ (0.5 * np.eye(n) + np.eye(n, k=1)) @ Q.T
    res = spectral_radius(J)
    assert res.converged is False
    assert np.isfinite(res.value)


def test_dense_path_flags_match_truth_on_normal_matrices():
    rng = np.random.default_rng(12)
    W = rng.standard_normal((6, 40, 40)) / np.sqrt(40)
    res = spectral_radius(W)
    assert res.converged.all()
    np.testing.assert_allclose(res.value, exact(W), rtol=1e-12)
