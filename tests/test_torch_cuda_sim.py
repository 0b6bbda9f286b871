"""The CUDA glue of ``torch.ops.fastopt.batch_norm*`` (fastopt/torch/_cuda.py) on the CUDA
simulator's device arrays, against the CPU ops.

Run with ``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cudasim tests/test_torch_cuda_sim.py``
(on a machine with a GPU it runs on the device instead). ``THREADS_PER_BLOCK`` is shrunk so that
every multi-block path (several partial-sum blocks, several per-channel blocks) runs on tiny
inputs.
"""

import os

import numpy as np
import pytest
from cuda_support import require_device_or_simulator, shrunk_blocks

torch = pytest.importorskip("torch")
cuda = require_device_or_simulator()

import fastopt.torch  # noqa: E402, F401  (registers torch.ops.fastopt.*)
from fastopt.torch import _cuda as glue  # noqa: E402

pytestmark = pytest.mark.cudasim
OPS = torch.ops.fastopt


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    from fastopt.batchnorm import _cuda

    with shrunk_blocks(_cuda, {"THREADS_PER_BLOCK": 4}, {"THREADS_PER_BLOCK": 32}):
        yield


# (shape, layout): "runs" (inner > 1), "rows" (inner == 1), channels-last (N...C memory)
CASES = [((3, 5, 7), "contiguous"), ((9, 5), "contiguous"), ((2, 5, 3, 2), "channels_last")]


def _inputs(shape, layout, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    w = torch.rand(c, generator=g, dtype=dtype) + 0.5
    b = torch.randn(c, generator=g, dtype=dtype)
    rm = torch.randn(c, generator=g, dtype=dtype)
    rv = torch.rand(c, generator=g, dtype=dtype) + 0.5
    dy = torch.randn(shape, generator=g, dtype=dtype)
    if layout == "channels_last":
        dy = dy.to(memory_format=torch.channels_last)
    return x, w, b, rm, rv, dy


def _device(t):
    """A simulator device array of t's memory in fastopt's layout, and the channel axis."""
    if t is None:
        return None
    if t.dim() > 1 and not t.is_contiguous():  # channels-last: the N...C array, axis -1
        return cuda.to_device(t.permute(0, *range(2, t.dim()), 1).contiguous().numpy()), \
            t.dim() - 1
    return cuda.to_device(t.numpy()), 1


def _vec(t):
    return None if t is None else _device(t)[0]


def _host_nc(device_array, like):
    """A device result (fastopt's layout) as a tensor in like's (N, C, ...) indexing."""
    arr = torch.from_numpy(device_array.copy_to_host())
    if like.dim() > 1 and not like.is_contiguous():
        return arr.permute(0, like.dim() - 1, *range(1, like.dim() - 1))
    return arr


def _close(got, want, dtype):
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "layout"), CASES)
@pytest.mark.parametrize("mode", ["train", "train-no-stats", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_glue_matches_cpu_op(shape, layout, dtype, mode, affine):
    x, w, b, rm, rv, dy = _inputs(shape, layout, dtype)
    if not affine:
        w = b = None
    training = mode != "eval"
    if mode == "train-no-stats":
        rm = rv = None
    want = OPS.batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5)
    xd, axis = _device(x)
    c = shape[1]
    npdt = np.float32 if dtype == torch.float32 else np.float64
    y = cuda.device_array(xd.shape, npdt)
    mean, invstd = cuda.device_array(c, npdt), cuda.device_array(c, npdt)
    track = training and rm is not None
    new_rm = cuda.device_array(c, npdt) if track else None
    new_rv = cuda.device_array(c, npdt) if track else None
    rm_d, rv_d = _vec(rm), _vec(rv)
    glue.forward(xd, _vec(w), _vec(b), rm_d, rv_d, training, 0.1, 1e-5, axis, y, mean,
                      invstd, new_rm, new_rv)
    _close(_host_nc(y, x), want[0], dtype)
    _close(torch.from_numpy(mean.copy_to_host()), want[1], dtype)
    _close(torch.from_numpy(invstd.copy_to_host()), want[2], dtype)
    if track:
        _close(torch.from_numpy(new_rm.copy_to_host()), want[3], dtype)
        _close(torch.from_numpy(new_rv.copy_to_host()), want[4], dtype)
    if rm is not None:  # the running statistics are read, never written
        np.testing.assert_array_equal(rm_d.copy_to_host(), rm.numpy())
        np.testing.assert_array_equal(rv_d.copy_to_host(), rv.numpy())

    gwant = OPS.batch_norm_backward(dy, x, w, want[1], want[2], training)
    dyd, _ = _device(dy)
    dx = cuda.device_array(xd.shape, npdt)
    dw, db = cuda.device_array(c, npdt), cuda.device_array(c, npdt)
    glue.backward(dyd, xd, _vec(w), mean, invstd, training, axis, dx, dw, db)
    _close(_host_nc(dx, x), gwant[0], dtype)
    _close(torch.from_numpy(dw.copy_to_host()), gwant[1], dtype)
    _close(torch.from_numpy(db.copy_to_host()), gwant[2], dtype)


def test_glue_uses_the_given_allocator_and_stream():
    """Scratch comes from ``empty`` (torch's allocator in the op), kernels go to ``stream``."""
    x, w, b, rm, rv, dy = _inputs((4, 3, 5), "contiguous", torch.float64)
    shapes = []

    def empty(shape, dtype):
        shapes.append(tuple(shape))
        return cuda.device_array(shape, dtype)

    xd = cuda.to_device(x.numpy())
    y = cuda.device_array(xd.shape, np.float64)
    mean, invstd = cuda.device_array(3, np.float64), cuda.device_array(3, np.float64)
    glue.forward(xd, _vec(w), _vec(b), None, None, True, 0.1, 1e-5, 1, y, mean, invstd,
                      empty=empty, stream=cuda.stream())
    assert shapes and all(s[-1] == 3 for s in shapes)
    want = OPS.batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
    _close(torch.from_numpy(y.copy_to_host()), want[0], torch.float64)


# ---------------------------------------------------------------- the op's CUDA kernel itself
@pytest.fixture
def emulated_cuda(monkeypatch):
    """The op's CUDA kernels (``_batch_norm_cuda`` / ``_batch_norm_backward_cuda``) run on CPU
    tensors in the simulator: the numba views become simulator arrays wrapping the tensors'
    own memory (no copy, so a kernel's writes land in torch's outputs, as on a GPU), the device
    checks accept CPU tensors, the stream is the default one. Everything else — layouts,
    output allocation, running statistics, copy-back of permuted layouts — is the real code."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("emulates CUDA tensors with the simulator's arrays")
    import contextlib
    from collections import defaultdict
    from types import SimpleNamespace

    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from fastopt.torch import _ops

    shim = SimpleNamespace(gpus=defaultdict(contextlib.nullcontext))
    check_forward, check_backward = _ops._check_forward, _ops._check_backward
    monkeypatch.setattr(_ops, "_cuda_modules", lambda: (shim, glue))
    monkeypatch.setattr(_ops, "_numba_view", lambda t: FakeCUDAArray(t.detach().numpy()))
    monkeypatch.setattr(_ops, "_numba_stream", lambda device: 0)

    def on_cpu(check):  # the CUDA kernel's checks ("cuda" last) with CPU tensors accepted
        return lambda *a: check(*a[:-1], "cpu") if a[-1] == "cuda" else check(*a)

    monkeypatch.setattr(_ops, "_check_forward", on_cpu(check_forward))
    monkeypatch.setattr(_ops, "_check_backward", on_cpu(check_backward))
    return _ops


LAYOUTS = [((6, 3), None), ((3, 5, 7), None), ((3, 5, 7), "transposed"),
           ((2, 5, 3, 2), torch.channels_last), ((2, 3, 2, 2, 3), torch.channels_last_3d),
           ((2, 5, 3, 2), "permuted")]


def _layout(t, fmt):
    if fmt is None:
        return t
    if fmt == "transposed":  # (N, C, L) with (N, L, C) memory
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if fmt == "permuted":  # dense, neither contiguous nor channels-last: computed, copied back
        return t.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return t.to(memory_format=fmt)


@pytest.mark.parametrize(("shape", "fmt"), LAYOUTS, ids=lambda v: str(v))
def test_op_cuda_kernels_match_cpu_kernels(emulated_cuda, shape, fmt):
    _ops = emulated_cuda
    for dtype, training in ((torch.float32, True), (torch.float64, False),
                            (torch.float64, True)):
        x, w, b, rm, rv, dy = _inputs(shape, "contiguous", dtype, seed=3)
        x, dy = _layout(x, fmt), _layout(dy, fmt)
        x_before, rm_before = x.clone(), rm.clone()
        got = _ops._batch_norm_cuda(x, w, b, rm, rv, training, 0.1, 1e-5)
        want = _ops._batch_norm_cpu(x, w, b, rm, rv, training, 0.1, 1e-5)
        assert got[0].stride() == x.stride()  # the output keeps the input's layout
        for g, e in zip(got, want, strict=True):
            _close(g, e, dtype)
        assert torch.equal(x, x_before) and torch.equal(rm, rm_before)  # inputs untouched
        gx = _ops._batch_norm_backward_cuda(dy, x, w, got[1], got[2], training)
        ex = _ops._batch_norm_backward_cpu(dy, x, w, want[1], want[2], training)
        assert gx[0].stride() == x.stride()
        for g, e in zip(gx, ex, strict=True):
            _close(g, e, dtype)
    # no affine parameters, no running statistics
    got = _ops._batch_norm_cuda(x, None, None, None, None, True, 0.1, 1e-5)
    want = _ops._batch_norm_cpu(x, None, None, None, None, True, 0.1, 1e-5)
    for g, e in zip(got, want, strict=True):
        _close(g, e, x.dtype)
    gx = _ops._batch_norm_backward_cuda(dy, x, None, got[1], got[2], True)
    ex = _ops._batch_norm_backward_cpu(dy, x, None, want[1], want[2], True)
    for g, e in zip(gx, ex, strict=True):
        _close(g, e, x.dtype)


def test_op_cuda_kernel_checks_before_computing(emulated_cuda):
    _ops = emulated_cuda
    x = torch.randn(4, 3, 2)
    with pytest.raises(ValueError, match="weight"):
        _ops._batch_norm_cuda(x, torch.ones(4), None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="more than 1 value"):
        _ops._batch_norm_cuda(torch.randn(1, 3), None, None, None, None, True, 0.1, 1e-5)
