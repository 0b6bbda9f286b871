"""lanczos_extremes against dense eigensolvers."""

import numpy as np
import pytest

from fastopt import lanczos_extremes


def sym(n, seed):
    m = np.random.default_rng(seed).standard_normal((n, n))
    return (m + m.T) / 2


@pytest.mark.parametrize("seed", range(4))
def test_both_ends_match_eigvalsh(seed):
    A = sym(200, seed)
    res = lanczos_extremes(lambda v: A @ v, 200, k=2, tol=1e-9)
    ev = np.linalg.eigvalsh(A)
    assert res.converged
    np.testing.assert_allclose(res.largest, ev[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(res.smallest, ev[:2], rtol=1e-8)
    # returned vectors are eigenvectors to the reported residual
    y = res.largest_vectors[:, 0]
    assert np.linalg.norm(A @ y - res.largest[0] * y) <= 10 * res.residual + 1e-12


def test_which_largest_only_and_float32():
    A = sym(120, 7)
    res = lanczos_extremes(lambda v: A @ v, 120, which="largest", dtype=np.float32, tol=1e-4)
    assert res.smallest is None and res.smallest_vectors is None
    assert res.largest_vectors.dtype == np.float32
    np.testing.assert_allclose(res.largest[0], np.linalg.eigvalsh(A)[-1], rtol=1e-4)


def test_zero_operator_is_exact_and_converged():
    res = lanczos_extremes(lambda v: 0 * v, 10)
    assert res.converged is True
    assert res.largest[0] == 0 and res.smallest[0] == 0


def test_small_operator_is_solved_exactly():
    A = np.diag([3.0, -1.0, 2.0])
    res = lanczos_extremes(lambda v: A @ v, 3)
    assert res.converged
    np.testing.assert_allclose([res.largest[0], res.smallest[0]], [3.0, -1.0], atol=1e-12)


def test_maxiter_too_small_reports_not_converged():
    A = sym(300, 3)
    res = lanczos_extremes(lambda v: A @ v, 300, maxiter=5, tol=1e-12)
    assert res.iterations == 5 and res.converged is False


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(n=0), ValueError),
        (dict(tol=0), ValueError),
        (dict(tol=-1), ValueError),
        (dict(maxiter=0), ValueError),
        (dict(which="middle"), ValueError),
        (dict(k=20), ValueError),
        (dict(dtype=np.int32), TypeError),
        (dict(v0=np.zeros(10)), ValueError),
    ],
)
def test_bad_arguments(kwargs, exc):
    args = dict(n=10)
    args.update(kwargs)
    n = args.pop("n")
    with pytest.raises(exc):
        lanczos_extremes(lambda v: v, n, **args)


def test_bad_matvec_output():
    with pytest.raises(ValueError, match="matvec: returned shape"):
        lanczos_extremes(lambda v: v[:-1], 10)
    with pytest.raises(ValueError, match="non-finite"):
        lanczos_extremes(lambda v: v * np.nan, 10)


@pytest.mark.parametrize(
    "v0, match",
    [
        (np.zeros(10), "nonzero"),
        (np.array([1.0, np.nan, 2.0]), "finite"),
        (np.ones((3, 3)), "shape"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_tridiagonal_rejects_bad_start_vectors(v0, match):
    from fastopt.spectral.lanczos import lanczos_tridiagonal

    with pytest.raises((ValueError, TypeError), match=match):
        lanczos_tridiagonal(lambda v: v, v0, 3)
    with pytest.raises(TypeError, match="callable"):
        lanczos_tridiagonal(None, np.ones(3), 3)
