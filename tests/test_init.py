"""fastopt.init: spectrum-aware initializers of recurrent matrices."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt.init as init
from fastopt import spectral_radius


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (7, 3), (4, 2, 3)])
def test_orthogonal_singular_values_equal_gain(shape):
    Q = init.orthogonal(shape, gain=1.5, rng=0)
    assert Q.shape == shape and Q.dtype == np.float64
    s = np.linalg.svd(Q.reshape(shape[0], -1), compute_uv=False)
    np.testing.assert_allclose(s, 1.5, rtol=1e-12)


def test_orthogonal_reproducible_and_dtype():
    a = init.orthogonal((6, 6), rng=3)
    b = init.orthogonal((6, 6), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, init.orthogonal((6, 6), rng=4))
    assert init.orthogonal((6, 6), rng=0, dtype=np.float32).dtype == np.float32
    rho = spectral_radius(init.orthogonal((200, 200), gain=0.7, rng=1)).value
    np.testing.assert_allclose(rho, 0.7, rtol=1e-6)


def test_orthogonal_bad_input():
    with pytest.raises(ValueError, match="2 dimensions"):
        init.orthogonal((5,))
    with pytest.raises(ValueError, match="shape"):
        init.orthogonal((0, 3))
    with pytest.raises(ValueError, match="gain"):
        init.orthogonal((3, 3), gain=-1)
    with pytest.raises(TypeError, match="rng"):
        init.orthogonal((3, 3), rng="seed")


@pytest.mark.parametrize("n", [30, 160])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_to_spectral_radius(n, dtype):
    W = np.random.default_rng(n).standard_normal((n, n)).astype(dtype)
    before = W.copy()
    S = init.scale_to_spectral_radius(W, 0.95)
    np.testing.assert_array_equal(W, before)
    assert S.dtype == dtype
    rho = np.abs(np.linalg.eigvals(S.astype(np.float64))).max()
    np.testing.assert_allclose(rho, 0.95, rtol=1e-5 if dtype == np.float32 else 1e-6)


def test_scale_to_spectral_radius_errors():
    with pytest.raises(ValueError, match="nilpotent"):
        init.scale_to_spectral_radius(np.eye(4, k=1), 0.9)
    S = np.eye(3, k=1)
    np.testing.assert_array_equal(init.scale_to_spectral_radius(S, 0.0), S)
    with pytest.raises(ValueError, match="rho"):
        init.scale_to_spectral_radius(np.eye(3), -1.0)
    with pytest.raises(ValueError, match="square"):
        init.scale_to_spectral_radius(np.ones((2, 3)), 1.0)


def test_identity_recurrent():
    np.testing.assert_array_equal(init.identity_recurrent(3, 0.5), 0.5 * np.eye(3))
    assert init.identity_recurrent(2, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="n"):
        init.identity_recurrent(0)
    with pytest.raises(ValueError, match="scale"):
        init.identity_recurrent(2, np.nan)


def test_module_is_reachable_from_package():
    import fastopt

    assert fastopt.init is init and set(init.__all__) == {
        "orthogonal",
        "scale_to_spectral_radius",
        "identity_recurrent",
    }


def test_fastopt_init_available_after_plain_import():
    import subprocess
    import sys

    code = "import fastopt; print(fastopt.init.identity_recurrent(2, 3.0).trace())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "6.0"
