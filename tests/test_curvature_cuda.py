"""GPU path of MLP.loss / loss_and_grad / hvp / gnvp, on a GPU or in the simulator
(``NUMBA_ENABLE_CUDASIM=1``); skipped without either.

In the simulator (no CuPy, no torch CUDA) the matrix products run through fastopt's numba.cuda
matmul kernel; every element-wise kernel runs with ``THREADS_PER_BLOCK = 4`` and 2 x 2 matmul
tiles so that multi-block launches run. Shapes are tiny: the simulator is slow.
"""


import numpy as np
import pytest
from cuda_support import require_device_or_simulator, shrunk_blocks

from fastopt import MLP

pytestmark = pytest.mark.cudasim

cuda = require_device_or_simulator()


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    from fastopt.curvature import _cuda

    with shrunk_blocks(_cuda, {"THREADS_PER_BLOCK": 4, "MATMUL_TILE": 2},
                       {"THREADS_PER_BLOCK": 32, "MATMUL_TILE": 8}):
        yield


def _problem(loss, sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    net = MLP(sizes, activation="tanh", loss=loss, dtype=dtype)
    theta = net.init(seed)
    X = rng.standard_normal((5, sizes[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], 5)
    elif loss == "mse":
        y = rng.standard_normal((5, sizes[-1])).astype(dtype)
    else:
        y = rng.random(5).astype(dtype)
    V = rng.standard_normal((net.num_params, 2)).astype(dtype)
    return net, theta, X, y, V


def _tol(dtype):
    return 2e-5 if dtype == np.float32 else 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss, sizes", [("cross_entropy", [3, 4, 2]), ("mse", [3, 4, 3, 2]),
                                         ("logistic", [3, 4, 1])])
def test_device_products_match_reference(loss, sizes, dtype):
    net, theta, X, y, V = _problem(loss, sizes, dtype)
    td, Xd, Vd = cuda.to_device(theta), cuda.to_device(X), cuda.to_device(V)
    yd = cuda.to_device(y.astype(np.int64) if loss == "cross_entropy" else y)
    tol = _tol(dtype)
    assert abs(net.loss(td, Xd, yd) - net.loss(theta, X, y, backend="numpy")) <= tol
    loss_d, g_d = net.loss_and_grad(td, Xd, yd)
    loss_h, g_h = net.loss_and_grad(theta, X, y, backend="numpy")
    assert isinstance(loss_d, float) and abs(loss_d - loss_h) <= tol
    assert hasattr(g_d, "copy_to_host")  # device in, device out
    np.testing.assert_allclose(g_d.copy_to_host(), g_h, rtol=tol, atol=tol)
    h_d = net.hvp(td, Xd, yd, Vd)
    assert tuple(h_d.shape) == V.shape
    np.testing.assert_allclose(h_d.copy_to_host(), net.hvp(theta, X, y, V, backend="numpy"),
                               rtol=tol * 10, atol=tol * 10)
    gn_d = net.gnvp(td, Xd, yd, cuda.to_device(V[:, 0].copy()))
    assert tuple(gn_d.shape) == (net.num_params,)
    np.testing.assert_allclose(gn_d.copy_to_host(),
                               net.gnvp(theta, X, y, V[:, 0], backend="numpy"),
                               rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("activation", ["relu", "gelu", "sigmoid", "softplus", "identity"])
def test_activations_and_host_side_arguments(activation):
    rng = np.random.default_rng(1)
    net = MLP([3, 4, 2], activation=activation, loss="cross_entropy")
    theta = net.init(1)
    X = rng.standard_normal((5, 3))
    y = rng.integers(0, 2, 5)
    v = rng.standard_normal(net.num_params)
    got = net.hvp(cuda.to_device(theta), X, y, v)  # X, y, v on the host: copied once
    np.testing.assert_allclose(got.copy_to_host(), net.hvp(theta, X, y, v, backend="numpy"),
                               rtol=1e-12, atol=1e-12)


def test_matmul_kernel_and_stats():
    from fastopt.curvature import _cuda

    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    for ta, tb in [(False, False), (True, False), (False, True), (True, True)]:
        a = A.T.copy() if ta else A
        b = B.T.copy() if tb else B
        C = cuda.device_array((5, 4))
        _cuda.matmul(cuda.to_device(a), cuda.to_device(b), C, ta, tb)
        np.testing.assert_allclose(C.copy_to_host(), A @ B, rtol=1e-13)
    x = np.array([[1.0, -3.0, 2.0], [0.5, 7.0, -1.0]])
    assert _cuda.stats(cuda.to_device(x)) == (False, -3.0, 7.0)
    x[1, 1] = np.inf
    assert _cuda.stats(cuda.to_device(x))[0]


def test_device_input_errors():
    net, theta, X, y, V = _problem("cross_entropy", [3, 4, 2], np.float64)
    td, Xd = cuda.to_device(theta), cuda.to_device(X)
    with pytest.raises(ValueError, match="device array"):
        net.hvp(td, Xd, y, V, backend="cython")
    with pytest.raises(TypeError, match="model dtype"):
        net.loss_and_grad(cuda.to_device(theta.astype(np.float32)), Xd, y)
    with pytest.raises(ValueError, match="theta: expected shape"):
        net.loss_and_grad(cuda.to_device(theta[:-1].copy()), Xd, y)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="X: contains NaN"):
        net.loss_and_grad(td, cuda.to_device(bad), y)
    with pytest.raises(ValueError, match="labels must lie"):
        net.loss_and_grad(td, Xd, cuda.to_device(np.array([0, 1, 2, 0, 1])))
    with pytest.raises(TypeError, match="integer class labels"):
        net.loss_and_grad(td, Xd, cuda.to_device(np.zeros(5)))
    with pytest.raises(ValueError, match="v: expected shape"):
        net.hvp(td, Xd, y, cuda.to_device(np.ones(3)))
    with pytest.raises(TypeError, match="out"):
        net.hvp(td, Xd, y, V, out=np.empty_like(V))


def test_single_direction_and_interop_helpers():
    from fastopt import _device

    net, theta, X, y, V = _problem("cross_entropy", [3, 4, 3, 2], np.float64, seed=3)
    v = V[:, 1].copy()
    got = net.hvp(cuda.to_device(theta), cuda.to_device(X), y, cuda.to_device(v))
    assert tuple(got.shape) == (net.num_params,)
    np.testing.assert_allclose(got.copy_to_host(), net.hvp(theta, X, y, v, backend="numpy"),
                               rtol=1e-12, atol=1e-12)
    d = cuda.to_device(v)
    assert _device.kind_of(d) == "numba" and _device.to_numba(d) is d
    assert _device.like(d, "numba") is d and _device.matrix_library("numba") is None
