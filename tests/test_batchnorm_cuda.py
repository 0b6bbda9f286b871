"""CUDA batch-norm kernels, on a GPU or in the simulator (``NUMBA_ENABLE_CUDASIM=1``).

Without either, these tests skip. In the simulator every CUDA thread is a Python thread: shapes are
tiny and ``THREADS_PER_BLOCK`` is shrunk to 4 so that multi-block reductions run.
"""


import numpy as np
import pytest
from cuda_support import require_device_or_simulator, shrunk_blocks

from fastopt import batch_norm_backward, batch_norm_forward

pytestmark = pytest.mark.cudasim

cuda = require_device_or_simulator()


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    from fastopt.batchnorm import _cuda

    with shrunk_blocks(_cuda, {"THREADS_PER_BLOCK": 4}, {"THREADS_PER_BLOCK": 64}):
        yield


CASES = [((5, 3, 7), 1), ((9, 4), 1), ((3, 4, 2, 5), -1), ((2, 3, 20), 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", CASES)
def test_device_arrays_match_reference(shape, axis, dtype):
    rng = np.random.default_rng(0)
    c = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    ref = batch_norm_forward(x, w, b, axis=axis, running_mean=rm_ref, running_var=rv_ref,
                             backend="numpy")
    xd = cuda.to_device(x)
    got = batch_norm_forward(xd, w, b, axis=axis, running_mean=rm, running_var=rv)
    assert hasattr(got.y, "copy_to_host")  # device in, device out
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got.y.copy_to_host(), ref.y, rtol=tol, atol=tol)
    np.testing.assert_allclose(got.mean.copy_to_host(), ref.mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, rv_ref, rtol=tol)
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, w, axis=axis, backend="numpy")
    g = batch_norm_backward(cuda.to_device(dy), xd, got.mean, got.invstd, w, axis=axis)
    np.testing.assert_allclose(g.dx.copy_to_host(), gref.dx, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(g.dweight.copy_to_host(), gref.dweight, rtol=tol * 10,
                               atol=tol * 10)
    np.testing.assert_allclose(g.dbias.copy_to_host(), gref.dbias, rtol=tol * 10, atol=tol * 10)


def test_eval_mode_and_host_input_with_cuda_backend():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    rm, rv = rng.standard_normal(3).astype(np.float32), np.full(3, 2.0, np.float32)
    ref = batch_norm_forward(x, training=False, running_mean=rm, running_var=rv, backend="numpy")
    got = batch_norm_forward(x, training=False, running_mean=rm, running_var=rv, backend="cuda")
    assert isinstance(got.y, np.ndarray)  # host in, host out
    np.testing.assert_allclose(got.y, ref.y, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, training=False, backend="numpy")
    g = batch_norm_backward(dy, x, got.mean, got.invstd, training=False, backend="cuda")
    np.testing.assert_allclose(g.dx, gref.dx, rtol=1e-6, atol=1e-6)


def test_device_input_errors():
    xd = cuda.to_device(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="device array"):
        batch_norm_forward(xd, backend="cython")
    with pytest.raises(TypeError, match="int"):
        batch_norm_forward(cuda.to_device(np.ones((4, 3), np.int32)))
    with pytest.raises(TypeError, match="both as device arrays"):
        batch_norm_backward(np.ones((4, 3), np.float32), xd, np.zeros(3), np.ones(3))
