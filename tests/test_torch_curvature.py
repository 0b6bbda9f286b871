"""fastopt.torch.to_mlp / from_theta: fastopt's exact curvature of a user's torch MLP agrees
with torch's double backward on the original module."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.func import functional_call, jvp, vjp  # noqa: E402

import fastopt.torch as ft  # noqa: E402

nn = torch.nn
ACTS = {
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "softplus": nn.Softplus,
    "gelu": lambda: nn.GELU(approximate="tanh"), "identity": nn.Identity,
}
LOSSES = {
    "cross_entropy": (nn.CrossEntropyLoss(), 3),
    "mse": ("mse", 2),
    "logistic": (nn.BCEWithLogitsLoss(), 1),
}


def make(act, n_out, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), ACTS[act](), nn.Linear(5, 3), ACTS[act](),
                         nn.Linear(3, n_out)).double()


def data(loss, n_out, n=7):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, n_out, (n,), generator=g)
    elif loss == "mse":
        y = torch.randn(n, n_out, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, 2, (n,), generator=g).double()
    return X, y


def torch_loss(loss, out, y):
    if loss == "cross_entropy":
        return nn.functional.cross_entropy(out, y)
    if loss == "mse":
        return 0.5 * ((out - y) ** 2).sum(1).mean()
    return nn.functional.binary_cross_entropy_with_logits(out[:, 0], y)


def to_fastopt_layout(model, tensors):
    """Per-parameter tensors in model.parameters() order -> fastopt's flat layout."""
    parts = []
    for (name, _), t in zip(model.named_parameters(), tensors, strict=True):
        parts.append((t.T if name.endswith("weight") else t).detach().numpy().ravel())
    return np.concatenate(parts)


def from_fastopt_layout(model, vec):
    out, off = [], 0
    for name, p in model.named_parameters():
        shape = p.shape[::-1] if name.endswith("weight") else p.shape
        chunk = torch.from_numpy(vec[off:off + p.numel()].reshape(shape).copy())
        out.append(chunk.T.contiguous() if name.endswith("weight") else chunk)
        off += p.numel()
    return out


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("act", list(ACTS))
def test_gradient_hvp_and_gnvp_match_torch(act, loss):
    loss_arg, n_out = LOSSES[loss]
    model = make(act, n_out)
    X, y = data(loss, n_out)
    net, theta = ft.to_mlp(model, loss_arg)
    assert net.activation == act and net.loss_name == loss and theta.dtype == np.float64
    v = np.random.default_rng(5).standard_normal(net.num_params)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    def loss_of(p):
        return torch_loss(loss, functional_call(model, p, (X,)), y)

    value = loss_of(params)
    grads = torch.autograd.grad(value, list(params.values()), create_graph=True)
    hv = torch.autograd.grad(grads, list(params.values()), from_fastopt_layout(model, v))
    fo_loss, fo_grad = net.loss_and_grad(theta, X.numpy(), y.numpy())
    assert abs(fo_loss - value.item()) <= 1e-12 * max(1.0, abs(value.item()))
    np.testing.assert_allclose(fo_grad, to_fastopt_layout(model, grads), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(net.hvp(theta, X.numpy(), y.numpy(), v),
                               to_fastopt_layout(model, hv), rtol=1e-10, atol=1e-12)

    # Gauss-Newton: J^T H_out J v with torch.func on the original module.
    detached = {k: t.detach() for k, t in params.items()}
    vt = dict(zip(names, from_fastopt_layout(model, v), strict=True))

    def outputs(p):
        return functional_call(model, p, (X,))

    out, jv = jvp(outputs, (detached,), (vt,))
    out = out.detach().requires_grad_()
    (g_out,) = torch.autograd.grad(torch_loss(loss, out, y), out, create_graph=True)
    (h_jv,) = torch.autograd.grad(g_out, out, jv)
    (ggn,) = vjp(outputs, detached)[1](h_jv),
    ggn = [ggn[0][k] for k in names]
    np.testing.assert_allclose(net.gnvp(theta, X.numpy(), y.numpy(), v),
                               to_fastopt_layout(model, ggn), rtol=1e-10, atol=1e-12)


def test_from_theta_round_trip_and_float32():
    model = make("tanh", 3)
    net, theta = ft.to_mlp(model)
    before = [p.detach().clone() for p in model.parameters()]
    ft.from_theta(model, theta * 2)
    for p, q in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), 2 * q)
    ft.from_theta(model, torch.from_numpy(theta))
    _, again = ft.to_mlp(model)
    np.testing.assert_array_equal(again, theta)
    net32, theta32 = ft.to_mlp(model.float(), "cross_entropy")
    assert net32.dtype == np.float32 and theta32.dtype == np.float32
    with pytest.raises(ValueError, match=r"shape \(55,\)"):
        ft.from_theta(model, theta[:-1])


def test_parameters_to_vector_is_not_fastopts_layout():
    # Why to_mlp exists: torch's flat vector has the right length and the wrong order.
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    net, theta = ft.to_mlp(model)
    naive = nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
    assert naive.size == theta.size and not np.allclose(naive, theta)


def test_nested_sequential_and_identity_layers():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), nn.Identity(),
                          nn.Linear(3, 2)).double()
    net, theta = ft.to_mlp(model, "mse")
    X = torch.randn(4, 2, dtype=torch.float64)
    np.testing.assert_allclose(net.forward(theta, X.numpy()), model(X).detach().numpy(),
                               rtol=1e-12)
    linear = ft.to_mlp(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2)), "mse")[0]
    assert linear.activation == "identity"


@pytest.mark.parametrize(("model", "match"), [
    (nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(), nn.Linear(3, 2)), "LeakyReLU"),
    (nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 2)), "approximate"),
    (nn.Sequential(nn.Linear(2, 3), nn.Softplus(beta=2), nn.Linear(3, 2)), "beta"),
    (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)),
     "one activation"),
    (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2), nn.Sigmoid()), "last Linear"),
    (nn.Sequential(nn.Linear(2, 3, bias=False), nn.Tanh(), nn.Linear(3, 2)), "bias"),
    (nn.Sequential(nn.Conv1d(1, 1, 1)), "Conv1d"),
    (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Tanh(), nn.Linear(3, 2)), "another"),
])
def test_unsupported_layers_are_named(model, match):
    with pytest.raises(ValueError, match=match) as err:
        ft.to_mlp(model)
    if match in ("LeakyReLU", "Conv1d"):
        assert "Tanh" in str(err.value) and "GELU" in str(err.value)  # lists what works


def test_bad_model_and_loss():
    with pytest.raises(TypeError, match="nn.Sequential"):
        ft.to_mlp(nn.Linear(2, 2))
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="MSELoss"):
        ft.to_mlp(model, nn.MSELoss())
    with pytest.raises(ValueError, match="label_smoothing"):
        ft.to_mlp(model, nn.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(ValueError, match="loss"):
        ft.to_mlp(model, "hinge")
