"""Routing of CUDA tensors in fastopt.torch, on any machine (no GPU needed).

CUDA-device tensors come from torch's FakeTensorMode (real tensor metadata, no memory); no torch
kernel can run on them in a CPU-only build, so the two destinations, fastopt's op and torch's
``F.batch_norm``, are replaced by recorders: these tests check which one a call reaches, and
with which warning, not the arithmetic (tests/test_torch_cuda.py does that on a GPU).
"""

import warnings

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import fastopt.torch as ft  # noqa: E402
from fastopt import _dispatch  # noqa: E402
from fastopt.torch import _ops, modules  # noqa: E402

INSTALL_HINT = "install numba-cuda"


@pytest.fixture
def fake_cuda():
    """A float32 (4, 3, 2, 2) input and a BatchNorm2d in eval mode, all on a fake cuda:0."""
    with FakeTensorMode():
        x = torch.randn(4, 3, 2, 2, device="cuda")
        x16 = torch.randn(4, 3, 2, 2, device="cuda", dtype=torch.float16)
        bn = ft.BatchNorm2d(3, device="cuda", backend="cython").eval()
    assert x.device.type == "cuda" and bn.weight.device.type == "cuda"
    return x, x16, bn


@pytest.fixture
def recorders(monkeypatch):
    """Replace fastopt's op and torch's F.batch_norm by recorders; returns their call lists."""
    calls = {"fastopt": [], "torch": []}

    def op(x, weight, bias, rm, rv, training, momentum, eps, backend):
        calls["fastopt"].append(dict(x=x, training=training, backend=backend))
        return x, None, None, None, None

    def torch_bn(x, *args, **kwargs):
        calls["torch"].append(x)
        return x

    monkeypatch.setattr(_ops, "batch_norm_op", op)
    monkeypatch.setattr(torch.nn.functional, "batch_norm", torch_bn)
    monkeypatch.setattr(modules.F, "batch_norm", torch_bn)
    return calls


def _problem(monkeypatch, text):
    monkeypatch.setattr(_ops, "cuda_backend_problem", lambda: text)


def test_backend_problem_is_dispatchs_check(monkeypatch):
    """cuda_backend_problem is None exactly when fastopt._dispatch loads the CUDA kernels (and
    the simulator is off); otherwise it says what to install."""
    _ops._cuda_backend_problem.cache_clear()
    try:
        problem = _ops.cuda_backend_problem()
        loads = _dispatch.available("batchnorm", "cuda")
        import os

        simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
        assert (problem is None) == (loads and not simulator)
        if simulator:
            assert "NUMBA_ENABLE_CUDASIM" in problem

        def missing(family, backend):
            raise RuntimeError("backend 'cuda' is not available: No module named 'numba.cuda'")

        _ops._cuda_backend_problem.cache_clear()
        monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
        monkeypatch.setattr(_dispatch, "load", missing)
        problem = _ops.cuda_backend_problem()
        assert "No module named 'numba.cuda'" in problem and INSTALL_HINT in problem
    finally:
        _ops._cuda_backend_problem.cache_clear()


def test_cuda_op_without_backend_raises_what_to_install(monkeypatch, fake_cuda):
    x, _, _ = fake_cuda
    _ops._cuda_modules.cache_clear()
    _problem(monkeypatch, f"no CUDA device; {INSTALL_HINT}")
    with pytest.raises(RuntimeError, match=INSTALL_HINT):
        _ops._batch_norm_cuda(x, None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="backend"):  # a CPU kernel name for a CUDA tensor
        _ops._batch_norm_cuda(x, None, None, None, None, True, 0.1, 1e-5, "cython")
    _ops._cuda_modules.cache_clear()


def test_decision_for_cuda_input(monkeypatch, fake_cuda):
    x, x16, bn = fake_cuda
    params = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    _problem(monkeypatch, None)
    assert modules._unsupported(x, *params) is None
    assert "float16" in modules._unsupported(x16, *params)
    cpu_weight = torch.ones(3)
    assert "cpu" in modules._unsupported(x, cpu_weight)
    _problem(monkeypatch, f"numba-cuda is not installed; {INSTALL_HINT}")
    why = modules._unsupported(x, *params)
    assert "cuda:0" in why and INSTALL_HINT in why


def test_module_routes_cuda_to_fastopt_when_the_backend_runs(monkeypatch, fake_cuda,
                                                             recorders):
    x, _, bn = fake_cuda
    _problem(monkeypatch, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.FallbackWarning)
        assert bn(x) is x
        assert ft.batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                             training=False, backend="cuda") is x
    assert recorders["torch"] == []
    assert [c["backend"] for c in recorders["fastopt"]] == ["cuda", "cuda"]  # not "cython"
    assert all(c["x"] is x and c["training"] is False for c in recorders["fastopt"])


def test_module_falls_back_once_with_what_to_install(monkeypatch, fake_cuda, recorders):
    x, _, bn = fake_cuda
    _problem(monkeypatch, f"numba-cuda is not installed; {INSTALL_HINT}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert bn(x) is x  # torch's kernel got the CUDA tensor itself: no copy to the CPU
        ft.batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, training=False)
    fallback = [str(w.message) for w in caught if issubclass(w.category, ft.FallbackWarning)]
    assert len(fallback) == 2  # once for the module, once for the functional call
    assert all(INSTALL_HINT in m and "cuda:0" in m for m in fallback)
    assert recorders["fastopt"] == [] and recorders["torch"] == [x] * 4


def test_autograd_kernel_calls_the_cuda_kernel_directly():
    """Below autograd, a plain CUDA key set goes straight to the CUDA kernel (as CPU goes to
    the CPU kernel); anything else (a Python mode, fake tensors) is redispatched."""
    K = torch._C.DispatchKey
    keys = torch._C.DispatchKeySet
    called = []

    class Op:
        def redispatch(self, keyset, *args):
            called.append(("redispatch", args))

    def cpu(*args):
        called.append(("cpu", args))

    def cuda(*args):
        called.append(("cuda", args))

    _ops._below_autograd(Op(), cpu, keys(K.CUDA) | keys(K.AutogradCUDA), (1,), cuda)
    _ops._below_autograd(Op(), cpu, keys(K.CPU) | keys(K.AutogradCPU), (2,), cuda)
    _ops._below_autograd(Op(), cpu, keys(K.CUDA) | keys(K.Python) | keys(K.AutogradCUDA), (3,),
                         cuda)
    assert called == [("cuda", (1,)), ("cpu", (2,)), ("redispatch", (3,))]


def test_backend_check_does_not_break_a_compiled_graph():
    """The modules call cuda_backend_problem for CUDA input while torch.compile traces them: it
    must be a constant to dynamo, not a graph break (fullgraph=True would fail)."""
    expected = _ops.cuda_backend_problem()

    def f(x):
        return x + (1.0 if _ops.cuda_backend_problem() is None else 2.0)

    y = torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(3))
    assert torch.equal(y, torch.full((3,), 1.0 if expected is None else 2.0))
