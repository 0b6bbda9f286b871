"""Curvature diagnostics on device arrays (MLP with device theta, X, y; objectives bound to
device data), on a GPU or in the simulator (``NUMBA_ENABLE_CUDASIM=1``); skipped without either.

Every diagnostic is compared with the same call on the host arrays (same seed, same Lanczos
start, same probes), float32 and float64, ``curvature="hessian"`` and ``"ggn"``. As in
``test_curvature_cuda.py`` the kernels run with 4-thread blocks and 2 x 2 matmul tiles (so that
multi-block launches and block reductions run) on tiny models: the simulator is slow, about a
third of a second per pass, so the Lanczos tests use MLP [2, 2, 1] (9 parameters).
"""

import warnings

import numpy as np
import pytest
from cuda_support import require_device_or_simulator, shrunk_blocks

from fastopt import (
    MLP,
    Curvature,
    IllConditioningMonitor,
    curvature_along_gradient,
    hessian_extremes,
    hessian_operator,
    hutchinson_trace,
    spectral_density,
)
from fastopt.curvature.objective import bind

pytestmark = pytest.mark.cudasim

cuda = require_device_or_simulator()

DTYPES = [np.float32, np.float64]
CURVATURES = ["hessian", "ggn"]


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    from fastopt.curvature import _cuda

    with shrunk_blocks(_cuda, {"THREADS_PER_BLOCK": 4, "MATMUL_TILE": 2},
                       {"THREADS_PER_BLOCK": 32, "MATMUL_TILE": 8}):
        yield


def _problem(sizes, loss, dtype, seed=0):
    """(net, host (theta, X, y), device (theta, X, y)) with a batch of 5."""
    rng = np.random.default_rng(seed)
    net = MLP(sizes, activation="tanh", loss=loss, dtype=dtype)
    theta = net.init(seed)
    X = rng.standard_normal((5, sizes[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], 5).astype(np.int64)
    else:
        y = rng.random(5).astype(dtype)
    host = (theta, X, y)
    return net, host, tuple(cuda.to_device(a) for a in host)


def _rtol(dtype):
    return 2e-5 if dtype == np.float32 else 1e-11


def _close(a, b, dtype, scale=1.0):
    assert isinstance(a, float)
    assert abs(a - b) <= _rtol(dtype) * max(abs(b), scale), (a, b)


@pytest.mark.parametrize("curvature", CURVATURES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_curvature_along_gradient_and_monitor(dtype, curvature):
    net, host, dev = _problem([3, 4, 2], "cross_entropy", dtype)
    got = curvature_along_gradient(net, *dev, curvature=curvature)
    want = curvature_along_gradient(net, *host, curvature=curvature)
    assert isinstance(got, Curvature)
    for a, b in zip(got, want, strict=True):
        _close(a, b, dtype)
    assert got.predicted_change(0.1) == pytest.approx(want.predicted_change(0.1),
                                                      rel=10 * _rtol(dtype))
    mon_d, mon_h = IllConditioningMonitor(window=2), IllConditioningMonitor(window=2)
    mon_d.update(0, got)
    mon_h.update(0, want)
    assert mon_d.suggested_lr == pytest.approx(mon_h.suggested_lr, rel=10 * _rtol(dtype))
    np.testing.assert_allclose(mon_d.history["g_h_g"], mon_h.history["g_h_g"],
                               rtol=10 * _rtol(dtype))


@pytest.mark.parametrize("curvature", CURVATURES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_extremes_matches_host(dtype, curvature):
    net, host, dev = _problem([2, 2, 1], "logistic", dtype)
    got = hessian_extremes(net, *dev, curvature=curvature)
    want = hessian_extremes(net, *host, curvature=curvature)
    scale = max(abs(want.lambda_max), abs(want.lambda_min))
    _close(got.lambda_max, want.lambda_max, dtype, 10 * scale)
    _close(got.lambda_min, want.lambda_min, dtype, 10 * scale)
    assert (got.kind, got.iterations, got.converged) == (want.kind, want.iterations,
                                                        want.converged)
    assert isinstance(got.iterations, int) and isinstance(got.converged, bool)
    for r in (got.residual_max, got.residual_min):  # rounding level, like the host's
        assert isinstance(r, float) and r <= 1e3 * np.finfo(dtype).eps * scale
    if curvature == "ggn":
        assert got.lambda_min >= -1e3 * np.finfo(dtype).eps * scale  # G is PSD


def test_hessian_extremes_not_converged_warns_like_host(monkeypatch):
    from fastopt import _device

    net, host, dev = _problem([2, 2, 1], "logistic", np.float64)
    sent = []
    to_device = _device.to_device
    monkeypatch.setattr(_device, "to_device",
                        lambda a: sent.append(np.shape(a)) or to_device(a))

    def refuse(*args, **kwargs):
        raise AssertionError("theta, X or y was copied to the host")

    for a in dev:
        a.copy_to_host = refuse  # the data never come back
    with pytest.warns(RuntimeWarning, match="did not reach"):
        got = hessian_extremes(net, *dev, maxiter=3)
    monkeypatch.undo()
    for a in dev:
        del a.copy_to_host
    # only the Lanczos vectors went to the device (3 steps, then the 2 Ritz vectors at once)
    P = net.num_params
    assert sent == [(P, 1)] * 3 + [(P, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = hessian_extremes(net, *host, maxiter=3)
    assert got.converged is False and got.iterations == want.iterations == 3
    _close(got.lambda_max, want.lambda_max, np.float64)
    _close(got.residual_max, want.residual_max, np.float64, 1.0)


@pytest.mark.parametrize("curvature", CURVATURES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hutchinson_trace_matches_host(dtype, curvature):
    net, host, dev = _problem([2, 2, 1], "logistic", dtype)
    got = hutchinson_trace(net, *dev, samples=4, batch=2, seed=3, curvature=curvature)
    want = hutchinson_trace(net, *host, samples=4, batch=2, seed=3, curvature=curvature)
    assert (got.samples, got.exact) == (want.samples, want.exact) == (4, False)
    _close(got.estimate, want.estimate, dtype, 1.0)
    _close(got.std_error, want.std_error, dtype, 1.0)
    got = hutchinson_trace(net, *dev, exact=True, batch=5, curvature=curvature)
    want = hutchinson_trace(net, *host, exact=True, batch=5, curvature=curvature)
    assert (got.samples, got.exact, got.std_error) == (net.num_params, True, 0.0)
    _close(got.estimate, want.estimate, dtype, 1.0)


@pytest.mark.parametrize("dtype, curvature", [(np.float64, "hessian"), (np.float32, "ggn")])
def test_spectral_density_matches_host(dtype, curvature):
    net, host, dev = _problem([2, 2, 1], "logistic", dtype)
    kw = dict(n_vectors=2, steps=3, n_grid=16, seed=1, curvature=curvature)
    got, want = spectral_density(net, *dev, **kw), spectral_density(net, *host, **kw)
    for a, b in zip(got[:4], want[:4], strict=True):
        assert isinstance(a, np.ndarray) and a.shape == b.shape  # host arrays, as on the host
        np.testing.assert_allclose(a, b, rtol=100 * _rtol(dtype),
                                   atol=100 * _rtol(dtype) * np.abs(b).max())
    assert got.sigma == pytest.approx(want.sigma, rel=100 * _rtol(dtype))


def test_hessian_operator_on_device_data():
    pytest.importorskip("scipy")
    net, host, dev = _problem([3, 4, 2], "cross_entropy", np.float64, seed=2)
    theta, X, y = host
    Xd = cuda.to_device(X)
    H = hessian_operator(net, dev[0], Xd, dev[2])
    Xd.copy_to_device(np.zeros_like(X))  # the operator keeps its own device copy
    rng = np.random.default_rng(0)
    V = rng.standard_normal((net.num_params, 2))
    np.testing.assert_allclose(H @ V, net.hvp(theta, X, y, V, backend="numpy"), rtol=1e-11,
                               atol=1e-12)
    hv = H @ (V[:, 0] + 1j * V[:, 1])
    np.testing.assert_allclose(hv.real, net.hvp(theta, X, y, V[:, 0], backend="numpy"),
                               rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(hv.imag, net.hvp(theta, X, y, V[:, 1], backend="numpy"),
                               rtol=1e-11, atol=1e-12)
    G = hessian_operator(net, *dev, curvature="ggn")
    assert G.dtype == np.float64 and G.shape == (net.num_params,) * 2
    np.testing.assert_allclose(G.matvec(V[:, 0]), net.gnvp(theta, X, y, V[:, 0],
                                                           backend="numpy"),
                               rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bound_objective_on_device_data(dtype):
    net, host, dev = _problem([3, 4, 2], "cross_entropy", dtype, seed=4)
    theta, X, y = host
    obj = bind(net, dev[1], dev[2])
    assert obj.device
    td = dev[0]
    tol = 10 * _rtol(dtype)
    loss, g = obj.loss_and_grad(td)
    assert isinstance(loss, float) and hasattr(g, "copy_to_host")  # device in, device out
    loss_h, g_h = net.loss_and_grad(theta, X, y, backend="numpy")
    assert abs(loss - loss_h) <= tol and abs(obj.loss(td) - loss_h) <= tol
    np.testing.assert_allclose(g.copy_to_host(), g_h, rtol=tol, atol=tol)
    V = np.random.default_rng(1).standard_normal((net.num_params, 2)).astype(dtype)
    hv = obj.hvp(td, cuda.to_device(V[:, 0].copy()))
    assert tuple(hv.shape) == (net.num_params,)
    np.testing.assert_allclose(hv.copy_to_host(), net.hvp(theta, X, y, V[:, 0], backend="numpy"),
                               rtol=tol, atol=tol)
    gv = obj.curvature_product(td, cuda.to_device(V), "ggn")
    np.testing.assert_allclose(gv.copy_to_host(), net.gnvp(theta, X, y, V, backend="numpy"),
                               rtol=tol, atol=tol)
    got = curvature_along_gradient(obj, td, curvature="ggn")
    want = curvature_along_gradient(bind(net, X, y), theta, curvature="ggn")
    for a, b in zip(got, want, strict=True):
        _close(a, b, dtype)
    got = hutchinson_trace(obj, td, samples=2, batch=2)
    _close(got.estimate, hutchinson_trace(net, *host, samples=2, batch=2).estimate, dtype, 1.0)


class _DeviceObjective:
    """A user objective computing on device arrays (here through the MLP's own device path)."""

    def __init__(self, net, X, y):
        self.net, self.X, self.y = net, X, y
        self.num_params, self.dtype = net.num_params, net.dtype
        self.seen = []

    def loss_and_grad(self, theta):
        return self.net.loss_and_grad(theta, self.X, self.y)

    def hvp(self, theta, v):
        self.seen.append(type(v).__name__)
        return self.net.hvp(theta, self.X, self.y, v)

    def gnvp(self, theta, v):
        return self.net.gnvp(theta, self.X, self.y, v)


def test_user_objective_with_device_theta():
    net, host, dev = _problem([3, 4, 2], "cross_entropy", np.float64, seed=5)
    obj = _DeviceObjective(net, dev[1], dev[2])
    got = curvature_along_gradient(obj, dev[0])
    want = curvature_along_gradient(net, *host)
    for a, b in zip(got, want, strict=True):
        _close(a, b, np.float64)
    assert obj.seen and all(name != "ndarray" for name in obj.seen)  # v reached it on device
    got = hutchinson_trace(obj, dev[0], samples=4, batch=4, seed=2, curvature="ggn")
    want = hutchinson_trace(net, *host, samples=4, batch=4, seed=2, curvature="ggn")
    _close(got.estimate, want.estimate, np.float64, 1.0)


def test_mixed_host_and_device_arguments_are_refused():
    net, host, dev = _problem([3, 4, 2], "cross_entropy", np.float64)
    theta, X, y = host
    td, Xd, yd = dev
    with pytest.raises(TypeError, match=r"X and y: theta is a device array .* move X and y to "
                                        r"the device"):
        curvature_along_gradient(net, td, X, y)
    with pytest.raises(TypeError, match=r"theta: X and y are device arrays but theta is on the "
                                        r"host; .* move theta to the device"):
        hessian_extremes(net, theta, Xd, yd)
    with pytest.raises(TypeError, match=r"y: theta and X are device arrays but y is on the host"):
        hutchinson_trace(net, td, Xd, y)
    with pytest.raises(TypeError, match=r"y: X is a device array but y is on the host"):
        bind(net, Xd, y)
    obj = bind(net, Xd, yd)
    with pytest.raises(TypeError, match="theta: the batch X, y is on the device but theta is a "
                                        "host ndarray; move theta to the device"):
        obj.loss(theta)
    with pytest.raises(TypeError, match="theta: the batch X, y is on the device"):
        curvature_along_gradient(obj, theta)
    with pytest.raises(TypeError, match="v: the data are on the device but v is a host"):
        obj.hvp(td, np.ones(net.num_params))
    with pytest.raises(ValueError, match=r"v: expected shape \(26,\) or \(26, k\)"):
        obj.hvp(td, cuda.to_device(np.ones(3)))
    host_obj = bind(net, X, y)
    with pytest.raises(TypeError, match="objective is bound to host data"):
        host_obj.hvp(td, np.ones(net.num_params))
    with pytest.raises(TypeError, match="objective is bound to host data"):
        hessian_extremes(host_obj, td)
    with pytest.raises(TypeError, match="model dtype float64"):
        curvature_along_gradient(net, cuda.to_device(theta.astype(np.float32)), Xd, yd)
    with pytest.raises(ValueError, match=r"theta: expected shape \(26,\)"):
        curvature_along_gradient(net, cuda.to_device(theta[:-1].copy()), Xd, yd)
    bad = theta.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="theta: contains NaN or Inf"):
        hutchinson_trace(net, cuda.to_device(bad), Xd, yd)
    with pytest.raises(ValueError, match="runs on the CPU but X is a device array"):
        hessian_extremes(net, td, Xd, yd, backend="cython")
    from fastopt import hvp_fd

    with pytest.raises(TypeError, match="theta: hvp_fd .* takes host arrays"):
        hvp_fd(net, td, np.ones(net.num_params), X=Xd, y=yd)


def test_models_without_a_gpu_path_are_refused():
    from fastopt import Network, nn

    net = Network([nn.Dense(3, 4), nn.Tanh(), nn.Dense(4, 2)], loss="cross_entropy")
    Xd = cuda.to_device(np.zeros((5, 3)))
    yd = cuda.to_device(np.zeros(5, np.int64))
    with pytest.raises(TypeError, match="Network computes on the host"):
        curvature_along_gradient(net, cuda.to_device(np.zeros(net.num_params)), Xd, yd)
    with pytest.raises(TypeError, match="Network computes on the host"):
        bind(net, Xd, yd)
