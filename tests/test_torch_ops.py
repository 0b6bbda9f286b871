"""fastopt's torch.library ops: opcheck, gradcheck/gradgradcheck, layouts without copies."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_support import LAYOUTS, make_x, params  # noqa: E402

import fastopt.torch  # noqa: E402, F401  (registers torch.ops.fastopt.*)
from fastopt import _dispatch  # noqa: E402
from fastopt.torch import _cpp, _ops  # noqa: E402

HAVE_CYTHON = _dispatch.available("batchnorm", "cython")


@pytest.fixture(autouse=True, params=["cpp", "python"])
def kernels(request):
    """Every test on the C++ kernels (_ops.cpp) and on the Python kernels alone."""
    module = _cpp.ensure_loaded()
    if module is None:
        if request.param == "cpp":
            pytest.skip(f"fastopt.torch's C++ kernels do not run here: {_cpp.problem()}")
        yield request.param
        return
    module.set_enabled(request.param == "cpp")
    try:
        yield request.param
    finally:
        module.set_enabled(True)

OPS = torch.ops.fastopt

def ids(layout):
    shape, fmt = layout
    return f"{'x'.join(map(str, shape))}-{fmt if isinstance(fmt, str) else fmt or 'contig'}"


# Each layout once, the dtypes alternating (opcheck compiles: keep the matrix small).
OPCHECK = [(layout, torch.float32 if i % 2 == 0 else torch.float64)
           for i, layout in enumerate(LAYOUTS)] + [(LAYOUTS[4], torch.float64)]


@pytest.mark.parametrize(("layout", "dtype"), OPCHECK,
                         ids=[f"{ids(lay)}-{dt}" for lay, dt in OPCHECK])
def test_opcheck_forward_and_backward(layout, dtype):
    shape, fmt = layout
    x = make_x(shape, fmt, dtype).requires_grad_()
    w, b, rm, rv = params(shape[1], dtype)
    w.requires_grad_()
    b.requires_grad_()
    for training in (True, False):
        torch.library.opcheck(OPS.batch_norm.default, (x, w, b, rm, rv, training, 0.1, 1e-5))
    if len(shape) == 3:
        torch.library.opcheck(OPS.batch_norm.default,
                              (x, None, None, None, None, True, 0.1, 1e-5))
    _, mean, invstd, _, _ = OPS.batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
    dy = make_x(shape, fmt, dtype, seed=5)
    torch.library.opcheck(OPS.batch_norm_backward.default,
                          (dy, x.detach(), w.detach(), mean, invstd, True))


@pytest.mark.parametrize("layout", LAYOUTS[1:], ids=ids)
@pytest.mark.parametrize("training", [True, False])
def test_matches_torch_and_keeps_layout(layout, training):
    shape, fmt = layout
    x = make_x(shape, fmt, torch.float64)
    w, b, rm, rv = params(shape[1], torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    wa, wb = w.clone().requires_grad_(), w.clone().requires_grad_()
    rm_t, rv_t = rm.clone(), rv.clone()
    y, _, _, new_rm, new_rv = OPS.batch_norm(xa, wa, b, rm, rv, training, 0.1, 1e-5)
    y_t = torch.nn.functional.batch_norm(xb, rm_t, rv_t, wb, b, training, 0.1, 1e-5)
    assert y.stride() == x.stride()  # output in the input's memory layout
    torch.testing.assert_close(y, y_t, rtol=1e-12, atol=1e-12)
    if training:
        torch.testing.assert_close(new_rm, rm_t, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(new_rv, rv_t, rtol=1e-14, atol=1e-14)
    else:
        assert new_rm.numel() == 0 and new_rv.numel() == 0
    dy = make_x(shape, fmt, torch.float64, seed=9)
    y.backward(dy)
    y_t.backward(dy)
    assert xa.grad.stride() == x.stride()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(wa.grad, wb.grad, rtol=1e-11, atol=1e-11)


@pytest.mark.skipif(not HAVE_CYTHON, reason="the Cython extensions are not built")
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_contiguous_and_channels_last_reach_the_kernel_without_copies(monkeypatch, fmt,
                                                                     kernels):
    if kernels == "cpp":
        pytest.skip("the C++ kernels call the address entry points themselves (test_torch_cpp)")
    seen = {}
    real_kernels_for = _ops.kernels_for

    class Spy:  # records the addresses the op hands to the Cython kernels
        def __init__(self, kernels):
            self.kernels = kernels

        def forward_at(self, x, y, outer, c, inner, *args):
            seen["fwd"] = (x, y, (outer, c, inner))
            return self.kernels.forward_at(x, y, outer, c, inner, *args)

        def backward_at(self, dy, x, outer, c, inner, *args):
            seen["bwd"] = (dy, x, args[6], (outer, c, inner))
            return self.kernels.backward_at(dy, x, outer, c, inner, *args)

    def kernels_for(*args):
        kernels, plan = real_kernels_for(*args)
        return Spy(kernels), plan

    monkeypatch.setattr(_ops, "kernels_for", kernels_for)
    x = make_x((4, 3, 5, 6), fmt, torch.float32).requires_grad_()
    dy = make_x((4, 3, 5, 6), fmt, torch.float32, seed=3)
    y = fastopt.torch.batch_norm(x)
    y.backward(dy)
    want = (4, 3, 30) if fmt is None else (4 * 5 * 6, 3, 1)  # channels-last: (N*H*W, C, 1)
    xa, ya, shape = seen["fwd"]
    assert shape == want and xa == x.data_ptr() and ya == y.data_ptr()
    ga, xa2, dxa, shape2 = seen["bwd"]
    assert shape2 == want and xa2 == x.data_ptr()
    assert ga == dy.data_ptr() and dxa == x.grad.data_ptr()



@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_gradcheck_and_exact_double_backward(training, fmt):
    x = make_x((4, 3, 3, 2), fmt, torch.float64).requires_grad_()
    w, b, rm, rv = params(3, torch.float64)
    w.requires_grad_()
    b.requires_grad_()

    def f(x, w, b):
        y, mean, invstd, _, _ = OPS.batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5)
        return (y, mean, invstd) if training else y

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_backward_op_gradcheck_in_every_input():
    # The backward op on its own: (grad_out, x, weight, mean, invstd) all independent inputs.
    x = make_x((5, 3, 4), None, torch.float64)
    w, _, _, _ = params(3, torch.float64)
    dy = make_x((5, 3, 4), None, torch.float64, seed=2)
    mean = torch.randn(3, dtype=torch.float64)
    invstd = torch.rand(3, dtype=torch.float64) + 0.5
    inputs = [t.clone().requires_grad_() for t in (dy, x, w, mean, invstd)]
    for training in (True, False):
        def f(*a, training=training):
            return OPS.batch_norm_backward(*a, training)
        assert torch.autograd.gradcheck(f, inputs)
        assert torch.autograd.gradgradcheck(f, inputs)


def test_second_derivative_matches_a_composite_reference():
    # A loss whose Hessian-vector product goes through batch norm's statistics.
    x = make_x((6, 3, 4), None, torch.float64).requires_grad_()
    w, b, _, _ = params(3, torch.float64)
    v = torch.randn_like(x)

    def ref_bn(x):
        mean = x.mean(dim=(0, 2), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * w.view(1, 3, 1) + b.view(1, 3, 1)

    def hvp(fn):
        loss = (torch.tanh(fn(x)) ** 3).sum()
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (hv,) = torch.autograd.grad(g, x, v)
        return g.detach(), hv

    g, hv = hvp(lambda t: fastopt.torch.batch_norm(t, w, b))
    g_ref, hv_ref = hvp(ref_bn)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hv, hv_ref, rtol=1e-9, atol=1e-11)


def test_bad_inputs_to_the_op():
    with pytest.raises(TypeError, match="float16"):
        OPS.batch_norm(torch.randn(4, 3).half(), None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="running_mean"):
        OPS.batch_norm(torch.randn(4, 3), None, None, None, None, False, 0.1, 1e-5)
    with pytest.raises(ValueError, match="more than 1 value"):
        OPS.batch_norm(torch.randn(1, 3), None, None, None, None, True, 0.1, 1e-5)
    rm = torch.zeros(3)
    with pytest.raises(ValueError):
        OPS.batch_norm(torch.randn(4, 3), None, None, rm, torch.ones(3), True, 1.5, 1e-5)
    assert np.array_equal(rm.numpy(), np.zeros(3))  # a rejected call changes nothing
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"weight: expected shape \(3,\)"):
        OPS.batch_norm(x, torch.ones(4), None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="bias: dtype torch.float64"):
        OPS.batch_norm(x, None, torch.zeros(3, dtype=torch.float64), None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="give both or neither"):
        OPS.batch_norm(x, None, None, rm, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="eps"):
        OPS.batch_norm(x, None, None, None, None, True, 0.1, 0.0)
    with pytest.raises(ValueError, match="backend: 'cuda'"):
        OPS.batch_norm(x, None, None, None, None, True, 0.1, 1e-5, "cuda")
    with pytest.raises(ValueError, match="is empty"):
        OPS.batch_norm(torch.randn(0, 3), None, None, None, None, True, 0.1, 1e-5)
    _, mean, invstd, _, _ = OPS.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="grad_out: shape"):
        OPS.batch_norm_backward(torch.randn(4, 4), x, None, mean, invstd, True)
    with pytest.raises(ValueError, match="invstd: expected"):
        OPS.batch_norm_backward(torch.randn(4, 3), x, None, mean, invstd[:2], True)


def test_a_call_without_a_graph_skips_autograd_and_matches_one_with_it(monkeypatch):
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y0, m0, i0, _, _ = OPS.batch_norm(x, w, None, None, None, True, 0.1, 1e-5)
    y1, m1, i1, _, _ = OPS.batch_norm(x, w, None, None, None, True, 0.1, 1e-5)
    assert y0.grad_fn is None and not y0.requires_grad
    assert y1.grad_fn is not None and m1.grad_fn is not None
    for a, b in ((y0, y1), (m0, m1), (i0, i1)):
        assert torch.equal(a, b.detach())
    # a first-order backward records no graph through the backward op: its Function is skipped
    calls = []
    real_apply = _ops._BatchNormBackwardFunction.apply
    monkeypatch.setattr(_ops._BatchNormBackwardFunction, "apply",
                        lambda *a: calls.append(1) or real_apply(*a))
    (gx,) = torch.autograd.grad(y1.sum() + (y1 ** 2).sum(), x, retain_graph=True)
    assert gx.grad_fn is None and calls == []
    (gx2,) = torch.autograd.grad((y1 ** 2).sum(), x, create_graph=True)  # a graph: it is used
    assert gx2.grad_fn is not None and calls == [1]


@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_the_op_gives_the_numpy_functions_values_bit_for_bit(backend, dtype, training):
    if backend == "cython" and not HAVE_CYTHON:
        pytest.skip("the Cython extensions are not built")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, 3, 5, generator=g, dtype=dtype) * 3 + 1
    dy = torch.randn(6, 4, 3, 5, generator=g, dtype=dtype)
    w, b = torch.rand(4, generator=g, dtype=dtype) + 0.5, torch.randn(4, generator=g, dtype=dtype)
    rm, rv = torch.randn(4, generator=g, dtype=dtype), torch.rand(4, generator=g, dtype=dtype) + 1
    rm0, rv0 = rm.clone(), rv.clone()
    y, mean, invstd, new_rm, new_rv = OPS.batch_norm(x, w, b, rm, rv, training, 0.3, 1e-3,
                                                     backend)
    dx, dw, db = OPS.batch_norm_backward(dy, x, w, mean, invstd, training, backend)
    rm_np, rv_np = rm.numpy().copy(), rv.numpy().copy()
    want = fastopt.batch_norm_forward(x.numpy(), w.numpy(), b.numpy(), training=training,
                                      running_mean=rm_np, running_var=rv_np, momentum=0.3,
                                      eps=1e-3, backend=backend)
    grads = fastopt.batch_norm_backward(dy.numpy(), x.numpy(), want.mean, want.invstd,
                                        w.numpy(), training=training, backend=backend)
    for got, ref in ((y, want.y), (mean, want.mean), (invstd, want.invstd), (dx, grads.dx),
                     (dw, grads.dweight), (db, grads.dbias)):
        assert np.array_equal(got.numpy(), ref)
    if training:
        assert np.array_equal(new_rm.numpy(), rm_np) and np.array_equal(new_rv.numpy(), rv_np)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)  # the op itself is functional


def test_other_dense_layouts_are_computed_in_c_order_and_copied_into_x_strides():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64).transpose(2, 3)
    x = x.contiguous().transpose(2, 3)  # (N, C, H, W) with (N, C, W, H) memory: neither layout
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    y = OPS.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)[0]
    (dx,) = torch.autograd.grad(y, x, dy)
    xr = x.detach().clone().requires_grad_()
    yr = torch.nn.functional.batch_norm(xr, None, None, training=True)
    (dxr,) = torch.autograd.grad(yr, xr, dy)
    assert y.stride() == x.stride() and dx.stride() == x.stride()
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, dxr, rtol=1e-10, atol=1e-12)
