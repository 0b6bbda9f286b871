"""GPU path of the spectra family, on a GPU or in the simulator (``NUMBA_ENABLE_CUDASIM=1``).

Without either, the device tests skip; the tests of the import and of the error without a device
always run (in fresh processes). In the simulator every CUDA thread is a Python thread: shapes are
tiny and ``THREADS_PER_BLOCK``/``TARGET_BLOCKS`` are shrunk so that multi-block paths run.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from fastopt import SpectralNormState, spectral_norm, spectral_radius

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _have_cuda() -> bool:
    try:
        from numba import cuda
    except ImportError:
        return False
    return SIM or cuda.is_available()


needs_cuda = pytest.mark.skipif(not _have_cuda(),
                                reason="no CUDA device and NUMBA_ENABLE_CUDASIM is not set")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, cwd=os.path.dirname(os.path.dirname(fastopt.__file__)))


def test_import_fastopt_imports_no_cuda():
    r = _run("import sys, fastopt; import fastopt.spectral, fastopt.curvature\n"
             "bad = [m for m in sys.modules if m.startswith(('numba.cuda', 'cupy', 'torch'))]\n"
             "assert not bad, bad")
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(SIM or _have_cuda(), reason="a CUDA device or the simulator is present")
def test_cuda_backend_without_device_says_what_to_install():
    r = _run("import numpy as np, fastopt\n"
             "try:\n    fastopt.spectral_norm(np.eye(3), backend='cuda')\n"
             "except RuntimeError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert "install" in r.stdout and "NUMBA_ENABLE_CUDASIM" in r.stdout


# ----------------------------------------------------------------------------- device tests
@pytest.fixture(scope="module")
def cuda():
    if not _have_cuda():
        pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set")
    from numba import cuda as numba_cuda

    from fastopt.spectral import _cuda

    old = _cuda.THREADS_PER_BLOCK, _cuda.TARGET_BLOCKS
    _cuda.THREADS_PER_BLOCK, _cuda.TARGET_BLOCKS = (4, 3) if SIM else (64, 7)
    yield numba_cuda
    _cuda.THREADS_PER_BLOCK, _cuda.TARGET_BLOCKS = old


def _tol(dtype):
    return 1e-5 if dtype == np.float32 else 1e-10


pytestmark = pytest.mark.cudasim


@needs_cuda
@pytest.mark.parametrize("shape, dtype", [((8, 6), np.float32), ((6, 9), np.float64),
                                          ((5, 1), np.float32), ((1, 5), np.float64)])
def test_spectral_norm_device_matches_host(cuda, shape, dtype):
    W = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    ref = spectral_norm(W, return_vectors=True, backend="numpy")
    got = spectral_norm(cuda.to_device(W), return_vectors=True)
    assert isinstance(got.value, float) and isinstance(got.converged, bool)
    assert isinstance(got.iterations, int) and got.converged
    assert hasattr(got.u, "copy_to_host") and hasattr(got.v, "copy_to_host")  # stays on device
    sigma = np.linalg.norm(W.astype(np.float64), 2)
    assert abs(got.value - sigma) <= _tol(dtype) * sigma
    assert abs(got.value - ref.value) <= _tol(dtype) * sigma
    u, v = got.u.copy_to_host(), got.v.copy_to_host()
    assert u.dtype == dtype and u.shape == (shape[0],) and v.shape == (shape[1],)
    np.testing.assert_allclose(W.astype(np.float64) @ v, got.value * u, atol=1e-3 * sigma)


@needs_cuda
def test_batched_spectral_norm_and_warm_start(cuda):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3, 5, 4))
    W[1] = 0.0  # the zero matrix in a batch
    W[2] *= 1e-30  # rescaled exactly on the device
    got = spectral_norm(cuda.to_device(W), tol=1e-10, return_vectors=True)
    assert hasattr(got.value, "copy_to_host")
    value = got.value.copy_to_host()
    np.testing.assert_allclose(value, np.linalg.norm(W, 2, axis=(1, 2)), rtol=1e-9)
    assert got.converged.all() and got.iterations.dtype == np.int64
    assert got.u.shape == (3, 5) and got.v.shape == (3, 4)
    warm = spectral_norm(cuda.to_device(W), tol=1e-10, v0=got.v)  # device v0
    assert warm.converged.all() and (warm.iterations <= 2).all()
    host_v0 = spectral_norm(cuda.to_device(W[0]), v0=np.ones(4))
    assert abs(host_v0.value - value[0]) <= 1e-6 * value[0]


@needs_cuda
def test_cuda_backend_with_host_input_returns_host_arrays(cuda):
    W = np.random.default_rng(2).standard_normal((2, 6, 4)).astype(np.float32)
    got = spectral_norm(W, backend="cuda", return_vectors=True)
    assert isinstance(got.value, np.ndarray) and isinstance(got.u, np.ndarray)
    np.testing.assert_allclose(got.value, np.linalg.norm(W.astype(float), 2, axis=(1, 2)),
                               rtol=1e-5)


@needs_cuda
def test_device_input_errors(cuda):
    Wd = cuda.to_device(np.ones((4, 3)))
    with pytest.raises(ValueError, match="device array"):
        spectral_norm(Wd, backend="cython")
    with pytest.raises(TypeError, match="int"):
        spectral_norm(cuda.to_device(np.ones((4, 3), np.int32)))
    with pytest.raises(ValueError, match="NaN"):
        spectral_norm(cuda.to_device(np.array([[1.0, np.nan], [0.0, 1.0]])))
    with pytest.raises(ValueError, match="square"):
        spectral_radius(Wd)
    with pytest.raises(ValueError, match="3-D"):
        spectral_norm(cuda.to_device(np.ones(3)))


@needs_cuda
def test_kernels_match_numba(cuda):
    from fastopt.spectral import _cuda, _numba

    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        W = rng.standard_normal((3, 9, 6)).astype(dtype)
        x = rng.standard_normal((3, 6)).astype(dtype)
        active = np.array([0, 2], dtype=np.int64)
        t, y = np.zeros((3, 9), dtype), np.zeros((3, 6), dtype)
        _cuda.wtwv(cuda.to_device(W), x, t, y, active, None)
        t2, y2 = np.zeros((3, 9), dtype), np.zeros((3, 6), dtype)
        _numba.wtwv(W, x, t2, y2, active, np.empty(_numba.work_shape(2, 9, 6, 1)), 1)
        np.testing.assert_allclose(t, t2, rtol=_tol(dtype), atol=_tol(dtype))
        np.testing.assert_allclose(y, y2, rtol=_tol(dtype), atol=_tol(dtype))
        assert not t[1].any() and not y[1].any()  # inactive rows untouched
        xs = rng.standard_normal((3, 6)).astype(dtype)
        Ws = cuda.to_device(np.ascontiguousarray(W[:, :6, :]))
        y3, y4 = np.zeros((3, 6), dtype), np.zeros((3, 6), dtype)
        _cuda.matvec(Ws, xs, y3, active)
        _numba.matvec(np.ascontiguousarray(W[:, :6, :]), xs, y4, active, 1)
        np.testing.assert_allclose(y3, y4, rtol=_tol(dtype), atol=_tol(dtype))
    k = 7
    alpha, beta = rng.standard_normal((3, k + 1)), rng.standard_normal((3, k + 1))
    th, s2 = np.zeros(3), np.zeros(3)
    th2, s22 = np.zeros(3), np.zeros(3)
    act = np.array([0, 1, 2], dtype=np.int64)
    _cuda.tridiag_top(alpha, beta, k, act, th, s2, np.zeros((3, k + 1)))
    _numba.tridiag_top(alpha, beta, k, act, th2, s22, np.zeros((3, k + 1)), 1)
    np.testing.assert_array_equal(th, th2)  # the same scalar helpers
    np.testing.assert_allclose(s2, s22, rtol=1e-12)


@needs_cuda
def test_spectral_radius_device(cuda, monkeypatch):
    from fastopt.spectral import api

    rng = np.random.default_rng(4)
    W = rng.standard_normal((6, 6))
    small = spectral_radius(cuda.to_device(W))  # LAPACK path (order <= 128)
    ref = max(abs(np.linalg.eigvals(W)))
    assert small.converged and abs(small.value - ref) <= 1e-9 * ref
    monkeypatch.setattr(api, "DENSE_RADIUS_N", 4)  # the Krylov path with device matvecs
    got = spectral_radius(cuda.to_device(W))
    assert got.converged and abs(got.value - ref) <= 1e-6 * ref
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    both = spectral_radius(cuda.to_device(np.stack([3.0 * Q, W]).astype(np.float32)))
    np.testing.assert_allclose(both.value, [3.0, ref], rtol=1e-5)  # bracket, then Arnoldi


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spectral_norm_state_device(cuda, dtype):
    W = np.random.default_rng(5).standard_normal((6, 2, 3)).astype(dtype)
    host = SpectralNormState(W.shape, dtype=dtype, n_power_iterations=2, seed=0)
    dev = SpectralNormState(W.shape, dtype=dtype, n_power_iterations=2, seed=0)
    s_host = host.sigma(W)
    s_dev = dev.sigma(cuda.to_device(W))
    assert isinstance(s_dev, float)
    assert abs(s_host - s_dev) <= _tol(dtype) * s_host
    np.testing.assert_allclose(dev.u, host.u, rtol=_tol(dtype) * 10, atol=_tol(dtype))
    n_host = host.normalize(W)
    n_dev = dev.normalize(cuda.to_device(W))
    assert hasattr(n_dev, "copy_to_host") and n_dev.shape == W.shape
    np.testing.assert_allclose(n_dev.copy_to_host(), n_host, rtol=_tol(dtype) * 10,
                               atol=_tol(dtype))
    with pytest.raises(ValueError, match="shape"):
        dev.sigma(cuda.to_device(np.ones((6, 6), dtype)))
    with pytest.raises(ValueError, match="dtype"):
        dev.sigma(cuda.to_device(np.ones(W.shape, np.float64 if dtype == np.float32
                                         else np.float32)))
