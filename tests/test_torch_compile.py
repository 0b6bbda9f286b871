"""torch.compile(fullgraph=True) of a model on fastopt's ops: no graph break, eager's results.

Compiling is slow (inductor builds C++): one small model, compiled once per backend.
"""

import shutil

import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402


def make_model():
    torch.manual_seed(0)
    return ft.convert(torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 6), torch.nn.BatchNorm1d(6),
        torch.nn.Tanh(), torch.nn.Linear(6, 3)))


def step(model, x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return loss.detach(), grads


def recording_backend(graphs):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def record(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=record, bw_compiler=record)


BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor's CPU backend needs a C++ compiler"))]


@pytest.fixture(scope="module", params=BACKENDS)
def compiled(request):
    torch._dynamo.reset()
    graphs = []
    backend = recording_backend(graphs) if request.param == "aot_eager" else "inductor"
    eager, model = make_model(), make_model()
    compiled_model = torch.compile(model, backend=backend, fullgraph=True)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 2, 5, 5, generator=g),
                torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]
    results = [(step(eager, x, y), step(compiled_model, x, y)) for x, y in batches]
    eager.eval()
    model.eval()
    x = batches[0][0]
    with torch.no_grad():
        evals = (eager(x), compiled_model(x))
    return request.param, graphs, results, evals, (eager, model)


def test_compiled_training_matches_eager(compiled):
    _, _, results, _, (eager, model) = compiled
    for (loss_e, grads_e), (loss_c, grads_c) in results:
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        for gc, ge in zip(grads_c, grads_e, strict=True):
            torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-5)
    for (key, a), b in zip(eager.state_dict().items(), model.state_dict().values(),
                           strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=key)  # running stats


def test_compiled_eval_matches_eager(compiled):
    _, _, _, (want, got), _ = compiled
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_graphs_call_fastopts_ops(compiled):
    name, graphs, *_ = compiled
    if name != "aot_eager":
        pytest.skip("graphs recorded through aot_eager")
    forward, backward = graphs[0], graphs[1]
    assert "fastopt.batch_norm.default" in forward
    assert "fastopt.batch_norm_backward.default" in backward
    assert not any("aten.native_batch_norm" in t for g in graphs for t in g)


def test_compiled_double_backward_is_an_error_not_a_wrong_value():
    # Eager double backward is exact (test_torch_ops); AOTAutograd refuses it outright.
    torch._dynamo.reset()
    model = torch.compile(ft.BatchNorm1d(3), backend="aot_eager", fullgraph=True)
    x = torch.randn(5, 3, requires_grad=True)
    (g,) = torch.autograd.grad((torch.tanh(model(x)) ** 3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), x)
