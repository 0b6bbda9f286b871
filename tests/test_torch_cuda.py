"""fastopt's torch ops and modules on real CUDA tensors (skips without a GPU, numba-cuda or
with the simulator on).

opcheck and gradcheck on cuda, parity with torch's BatchNorm2d (cuDNN) over training and eval,
contiguous and channels-last, the CPU op's results, torch's current stream (a side stream), no
host synchronization through torch, and CuPy on the same memory as the numba views.
"""

import warnings

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch.cuda.is_available() is False", allow_module_level=True)

import torch_support  # noqa: E402
from torch_support import LAYOUTS  # noqa: E402

import fastopt.torch as ft  # noqa: E402
from fastopt.torch import _ops  # noqa: E402

if _ops.cuda_backend_problem() is not None:
    pytest.skip(_ops.cuda_backend_problem(), allow_module_level=True)

OPS = torch.ops.fastopt
DEV = torch.device("cuda", torch.cuda.current_device())


def make_x(shape, fmt, dtype, seed=0):
    return torch_support.make_x(shape, fmt, dtype, seed, DEV)


def params(c, dtype, seed=1):
    return torch_support.params(c, dtype, seed, DEV)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-11,
                                                                           atol=1e-11)


OPCHECK = [(layout, torch.float32 if i % 2 == 0 else torch.float64)
           for i, layout in enumerate(LAYOUTS)]


@pytest.mark.parametrize(("layout", "dtype"), OPCHECK, ids=lambda v: str(v))
def test_opcheck_on_cuda(layout, dtype):
    shape, fmt = layout
    x = make_x(shape, fmt, dtype).requires_grad_()
    w, b, rm, rv = params(shape[1], dtype)
    w.requires_grad_()
    for training in (True, False):
        torch.library.opcheck(OPS.batch_norm.default, (x, w, b, rm, rv, training, 0.1, 1e-5))
    y, mean, invstd, _, _ = OPS.batch_norm(x.detach(), w.detach(), b, rm, rv, True, 0.1, 1e-5)
    dy = torch.randn_like(y)
    torch.library.opcheck(OPS.batch_norm_backward.default,
                          (dy, x.detach(), w.detach(), mean, invstd, True))


@pytest.mark.parametrize(("layout", "dtype"), [(lay, dt) for lay in LAYOUTS
                                               for dt in (torch.float32, torch.float64)],
                         ids=lambda v: str(v))
def test_cuda_op_matches_cpu_op(layout, dtype):
    shape, fmt = layout
    x = make_x(shape, fmt, dtype)
    w, b, rm, rv = params(shape[1], dtype)
    dy = torch.randn_like(x)
    for training in (True, False):
        got = OPS.batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5)
        want = OPS.batch_norm(x.cpu(), w.cpu(), b.cpu(), rm.cpu(), rv.cpu(), training, 0.1,
                              1e-5)
        assert got[0].device == x.device and got[0].stride() == x.stride()
        for g, e in zip(got, want, strict=True):
            torch.testing.assert_close(g.cpu(), e, **tol(dtype))
        gx = OPS.batch_norm_backward(dy, x, w, got[1], got[2], training)
        ex = OPS.batch_norm_backward(dy.cpu(), x.cpu(), w.cpu(), want[1], want[2], training)
        assert gx[0].stride() == x.stride()
        for g, e in zip(gx, ex, strict=True):
            torch.testing.assert_close(g.cpu(), e, **tol(dtype))


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=str)
def test_gradcheck_and_gradgradcheck_on_cuda(fmt):
    x = make_x((3, 2, 2, 3), fmt, torch.float64).requires_grad_()
    w, b, rm, rv = params(2, torch.float64)
    w.requires_grad_()
    b.requires_grad_()

    def f(x, w, b):
        return ft.batch_norm(x, w, b, rm.clone(), rv.clone(), training=True)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x, w, b: ft.batch_norm(x, w, b, rm, rv, training=False), (x, w, b))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_matches_torch_batchnorm2d_on_cuda(channels_last, momentum):
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(8, momentum=momentum).to(DEV)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    fast = ft.BatchNorm2d(8, momentum=momentum).to(DEV)
    fast.load_state_dict(ref.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.FallbackWarning)  # the GPU path, no fallback
        for step in range(3):
            x = (torch.randn(16, 8, 5, 7, device=DEV) * 3 + 1).to(memory_format=fmt)
            xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
            yr, yf = ref(xr), fast(xf)
            assert yf.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(yf, yr, rtol=1e-5, atol=1e-5)
            g = torch.randn_like(yr)
            yr.backward(g)
            yf.backward(g)
            torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-5)
            assert xf.grad.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(fast.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fast.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
            assert int(fast.num_batches_tracked) == step + 1
        ref.eval()
        fast.eval()
        x = torch.randn(4, 8, 3, 3, device=DEV).to(memory_format=fmt)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_half_precision_on_cuda_falls_back_once():
    bn = ft.BatchNorm2d(3).to(DEV).half()
    x = torch.randn(4, 3, 2, 2, device=DEV, dtype=torch.float16)
    with pytest.warns(ft.FallbackWarning, match="float16"):
        y = bn(x)
    assert y.device == x.device and y.dtype == torch.float16


def test_side_stream_orders_with_torch_work():
    """The kernels go to torch's current stream: a result produced just before on a side
    stream is read after it is written, and torch's next work there sees fastopt's output."""
    a = torch.randn(2048, 2048, device=DEV)
    bn = ft.BatchNorm1d(2048).to(DEV)
    ref = torch.nn.BatchNorm1d(2048).to(DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x = a @ a  # long enough that unordered kernels would read stale memory
            y = bn(x)
            z = y * 2  # torch work queued after fastopt's
        yr = ref(x)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(z, yr * 2, rtol=1e-4, atol=1e-4)


def test_no_host_synchronization_through_torch():
    bn = ft.BatchNorm2d(8).to(DEV)
    x = torch.randn(4, 8, 6, 6, device=DEV, requires_grad=True)
    bn(x).sum().backward()  # compile and load once, before watching
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = bn(x)
        y.backward(torch.ones_like(y))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_views_are_zero_copy_and_cupy_shares_them():
    x = torch.randn(4, 3, 5, device=DEV, requires_grad=True)
    view = _ops._numba_view(x)  # a tensor that requires grad is detached first
    assert view.device_ctypes_pointer.value == x.data_ptr()
    assert view.shape == tuple(x.shape)
    cupy = pytest.importorskip("cupy")
    c = cupy.asarray(view)
    assert c.data.ptr == x.data_ptr()
    c[0, 0, 0] = 42.0
    torch.cuda.synchronize()
    assert float(x[0, 0, 0]) == 42.0


def test_compile_fullgraph_aot_eager_on_cuda():
    bn = ft.BatchNorm2d(4).to(DEV)
    ref = ft.BatchNorm2d(4).to(DEV)
    compiled = torch.compile(bn, backend="aot_eager", fullgraph=True)
    x = torch.randn(8, 4, 3, 3, device=DEV)
    torch.testing.assert_close(compiled(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, ref.running_var)


def test_converted_network_trains_like_torch_on_cuda():
    """convert() of a conv-BN-ReLU network on the GPU: same losses as torch's over SGD steps."""
    import copy

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).to(DEV)
    fast = ft.convert(copy.deepcopy(net))
    assert isinstance(fast[1], ft.BatchNorm2d) and fast[1].weight.device == DEV
    x = torch.randn(16, 3, 8, 8, device=DEV)
    labels = torch.randint(0, 4, (16,), device=DEV)
    losses = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.FallbackWarning)
        for name, model in (("torch", net), ("fastopt", fast)):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            losses[name] = []
            for _ in range(5):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), labels)
                loss.backward()
                opt.step()
                losses[name].append(loss.item())
    torch.testing.assert_close(losses["fastopt"], losses["torch"], rtol=1e-4, atol=1e-5)
