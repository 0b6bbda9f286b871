"""fastopt.torch's C++ kernels (fastopt/torch/_ops.cpp): the same bits as the Python kernels,
the calls they take and the ones they leave to Python, errors, double backward."""

import itertools
import shutil

import pytest

torch = pytest.importorskip("torch")

from torch.utils import cpp_extension  # noqa: E402

import fastopt.torch as ft  # noqa: E402
from fastopt import _dispatch  # noqa: E402
from fastopt.torch import _cpp, _ops  # noqa: E402

CAN_BUILD = (_dispatch.available("batchnorm", "cython") and shutil.which("c++") is not None
             and cpp_extension.is_ninja_available())


@pytest.fixture(scope="module")
def cpp():
    module = _cpp.ensure_loaded()
    if module is None and not CAN_BUILD:
        pytest.skip(f"no C++ compiler, ninja or Cython kernels here: {_cpp.problem()}")
    assert module is not None, _cpp.problem()  # a compiler is here: the build must work
    assert module.enabled()
    yield module
    module.set_enabled(True)


def _module_run(cpp, enabled, dtype, fmt, training, affine, track, shape=(4, 3, 5, 5)):
    """Outputs, gradients, buffers and a second-order gradient of one configuration."""
    cpp.set_enabled(enabled)
    try:
        torch.manual_seed(0)
        bn = ft.BatchNorm2d(shape[1], affine=affine, track_running_stats=track).to(dtype)
        if affine:
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-1, 1)
        bn.train(training)
        if not training:
            with torch.no_grad():
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
        x = torch.randn(shape, dtype=dtype) * 3 + 1
        if fmt is not None:
            x = x.to(memory_format=fmt)
        x.requires_grad_()
        y = bn(x)
        y.backward(torch.randn_like(y))
        out = [y.detach(), x.grad]
        out += [bn.weight.grad, bn.bias.grad] if affine else []
        out += [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()] \
            if track else []
        # the mean and invstd outputs are differentiable in training mode
        x2 = x.detach().clone().requires_grad_()
        _, mean, invstd, _, _ = _ops.batch_norm_op(x2, None, None, None, None, True, 0.1, 1e-5,
                                                   "auto")
        ((mean * 2).sum() + (invstd**2).sum()).backward()
        return out + [x2.grad], y.is_contiguous(memory_format=fmt or torch.contiguous_format)
    finally:
        cpp.set_enabled(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_same_bits_as_the_python_kernels(cpp, dtype, fmt):
    for training, affine, track in itertools.product([True, False], repeat=3):
        if not training and not track:
            continue  # eval mode needs running statistics
        config = (training, affine, track)
        calls = cpp.calls()
        got, layout_kept = _module_run(cpp, True, dtype, fmt, *config)
        forward, backward = cpp.calls()
        # the C++ work ran (the module's call, the second-order probe's), not a fallback
        assert forward >= calls[0] + 2 and backward >= calls[1] + 1, config
        want, _ = _module_run(cpp, False, dtype, fmt, *config)
        assert layout_kept, config
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b), (config, (a - b).abs().max())


def _both_paths(cpp, fn):
    """fn() on the C++ kernels and on the Python kernels: (C++ result, Python result, C++ calls
    (forward, backward) of the first)."""
    before = cpp.calls()
    got = fn()
    after = cpp.calls()
    cpp.set_enabled(False)
    try:
        want = fn()
    finally:
        cpp.set_enabled(True)
    return got, want, (after[0] - before[0], after[1] - before[1])


def _assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        assert (a is None and b is None) or torch.equal(a, b), (a, b)


@pytest.mark.parametrize("with_weight, with_bias", [(True, False), (False, True)])
def test_weight_or_bias_alone(cpp, with_weight, with_bias):
    def fn():
        torch.manual_seed(2)
        x = torch.randn(5, 3, 4, requires_grad=True)
        w = (torch.rand(3) + 0.5).requires_grad_() if with_weight else None
        b = torch.randn(3).requires_grad_() if with_bias else None
        y = _ops.batch_norm_op(x, w, b, None, None, True, 0.1, 1e-5, "auto")[0]
        y.backward(torch.randn_like(y))
        return [y.detach(), x.grad, None if w is None else w.grad, None if b is None else b.grad]

    got, want, calls = _both_paths(cpp, fn)
    assert calls == (1, 1)
    _assert_same(got, want)


def test_backward_with_float64_statistics_of_float32_input(cpp):
    def fn():
        torch.manual_seed(3)
        x, g = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
        mean, invstd = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
        return _ops.batch_norm_backward_op(g, x, torch.rand(4), mean, invstd, True, "auto")

    got, want, calls = _both_paths(cpp, fn)
    assert calls == (0, 1)
    _assert_same(got, want)


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0.37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_statistics_over_steps(cpp, momentum, dtype):
    def fn():
        torch.manual_seed(4)
        rm, rv = torch.randn(3, dtype=dtype), torch.rand(3, dtype=dtype) + 0.5
        for _ in range(4):
            x = torch.randn(7, 3, 2, dtype=dtype) * 3 + 2
            _, _, _, rm, rv = _ops.batch_norm_op(x, None, None, rm, rv, True, momentum, 1e-5,
                                                 "auto")
        return [rm, rv]

    got, want, calls = _both_paths(cpp, fn)
    assert calls == (4, 0)
    _assert_same(got, want)


def test_non_contiguous_weight_goes_to_python_with_the_same_result(cpp):
    def fn():
        torch.manual_seed(5)
        x = torch.randn(4, 3, 5)
        w = torch.rand(6)[::2]  # a strided view
        return _ops.batch_norm_op(x, w, None, None, None, True, 0.1, 1e-5, "auto")[:3]

    got, want, calls = _both_paths(cpp, fn)
    assert calls == (0, 0)
    _assert_same(got, want)


def test_compiled_autograd_runs_the_cpp_node(cpp):
    dynamo = pytest.importorskip("torch._dynamo")
    bn = ft.BatchNorm1d(3)
    x = torch.randn(8, 3, requires_grad=True)
    want = torch.autograd.grad(bn(x).square().sum(), x)[0]
    with dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
        got = torch.autograd.grad(bn(x).square().sum(), x)[0]
    torch.testing.assert_close(got, want)


def test_momentum_none_and_running_statistics_match(cpp):
    results = []
    for enabled in (True, False):
        cpp.set_enabled(enabled)
        torch.manual_seed(1)
        bn = ft.BatchNorm1d(6, momentum=None)
        for _ in range(3):
            bn(torch.randn(10, 6) * 2 - 1)
        results.append((bn.running_mean.clone(), bn.running_var.clone()))
    cpp.set_enabled(True)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def _op_calls(cpp, *args):
    before = cpp.calls()
    out = _ops.batch_norm_op(*args)
    return out, cpp.calls()[0] - before[0]


@pytest.mark.parametrize("case", ["numba", "large", "strided"])
def test_calls_the_python_kernels_take(cpp, case):
    """Other backends, large inputs and other strides go to the Python kernels: same values,
    no C++ work counted."""
    x = torch.randn(4, 3, 6, 6)
    backend = "auto"
    if case == "numba":
        if not _dispatch.available("batchnorm", "numba"):
            pytest.skip("numba backend unavailable")
        backend = "numba"
    elif case == "large":
        x = torch.randn(64, 8, 32, 32)  # 2 MiB of float32
    else:
        x = torch.randn(4, 6, 6, 3).permute(0, 3, 2, 1)  # neither contiguous nor channels-last
    args = (x, None, None, None, None, True, 0.1, 1e-5, backend)
    x.requires_grad_()
    dy = torch.randn_like(x)

    def fn():
        x.grad = None
        y, mean, invstd, _, _ = _ops.batch_norm_op(*args)
        y.backward(dy)
        return [y.detach(), mean.detach(), invstd.detach(), x.grad]

    got, want, calls = _both_paths(cpp, fn)
    assert calls == (0, 0)
    _assert_same(got, want)


def test_small_contiguous_call_runs_in_cpp(cpp):
    _, fast = _op_calls(cpp, torch.randn(4, 3, 5), None, None, None, None, True, 0.1, 1e-5,
                        "auto")
    assert fast == 1


def test_expanded_gradient_is_copied_once_with_the_same_result(cpp):
    x = torch.randn(4, 3, 5, requires_grad=True)
    before = cpp.calls()[1]
    ft.batch_norm(x).sum().backward()  # grad_out is an expanded (stride 0) tensor
    assert cpp.calls()[1] == before + 1
    got = x.grad.clone()
    x.grad = None
    cpp.set_enabled(False)
    try:
        ft.batch_norm(x).sum().backward()
    finally:
        cpp.set_enabled(True)
    assert torch.equal(got, x.grad)


@pytest.mark.parametrize("call, error, match", [
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), torch.ones(4), None, None, None, True,
                                0.1, 1e-5, "auto"), ValueError, "weight: expected shape"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), None, None, torch.zeros(3), None, True,
                                0.1, 1e-5, "auto"), ValueError, "give both or neither"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), None, None, None, None, True, 0.1, -1.0,
                                "auto"), ValueError, "eps"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), None, None, None, None, True, 0.1, 1e-5,
                                "fortran"), ValueError, "backend"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5).half(), None, None, None, None, True, 0.1,
                                1e-5, "auto"), TypeError, "float32 or float64"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), None, None, None, None, True,
                                float("nan"), 1e-5, "auto"), ValueError, "momentum"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), None, None, None, None, True, -0.5, 1e-5,
                                "auto"), ValueError, "momentum"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), None, None, None, None, True, 0.1,
                                float("inf"), "auto"), ValueError, "eps"),
    (lambda: _ops.batch_norm_op(torch.randn(4, 3, 5), None, None, None, None, True, 0.1,
                                float("nan"), "auto"), ValueError, "eps"),
    (lambda: _ops.batch_norm_op(torch.randn(1, 3), None, None, None, None, True, 0.1, 1e-5,
                                "auto"), ValueError, "more than 1 value per channel"),
    (lambda: _ops.batch_norm_backward_op(torch.randn(4, 3, 5), torch.randn(4, 3, 6), None,
                                         torch.zeros(3), torch.ones(3), True, "auto"),
     ValueError, "grad_out"),
])
def test_rejected_calls_raise_the_python_kernels_errors(cpp, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_double_backward_is_exact_through_the_cpp_node(cpp):
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    bn = ft.BatchNorm1d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)

    def f(x, w, b):
        return _ops.batch_norm_op(x, w, b, None, None, True, 0.1, 1e-5, "auto")[0]

    args = (x, bn.weight, bn.bias)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("FASTOPT_TORCH_CPP", "0")
    monkeypatch.setattr(_cpp, "_PROBLEM", None)
    assert _cpp._load() is None
    assert "FASTOPT_TORCH_CPP=0" in _cpp.problem()


def test_threads_share_the_kernels(cpp):
    """Calls from several Python threads (each C++ call takes and drops the GIL around the
    kernel) finish, and give what one thread gives."""
    import threading

    x = torch.randn(4, 8, 5, 5)
    results, errors = {}, []

    def work(i):
        try:
            xi = x.clone().requires_grad_()
            bn = ft.BatchNorm2d(8)
            for _ in range(30):
                xi.grad = None
                bn(xi).square().sum().backward()
            results[i] = xi.grad
        except Exception as exc:  # reported below
            errors.append(exc)

    work("alone")
    want = results.pop("alone")
    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    for got in results.values():
        assert torch.equal(got, want)
