"""fastopt's exact curvature for a user's own PyTorch MLP: ``to_mlp`` / ``from_theta``, and
PyTorch's double-backward HVP of a :class:`~fastopt.MLP` (``mlp_hvp``) to compare with.

``torch.nn.Linear`` stores ``W`` as ``(out, in)``; fastopt's flat ``theta`` holds each layer's
``W`` as ``(in, out)`` row-major followed by ``b``. The two layouts have the same length, so
``torch.nn.utils.parameters_to_vector(model)`` handed to :class:`~fastopt.MLP` runs and gives a
silently wrong loss; :func:`to_mlp` does the transposes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..curvature.mlp import MLP

__all__ = ["to_mlp", "from_theta", "mlp_hvp", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = ("Linear (with bias)", "Tanh", "Sigmoid", "ReLU", "Softplus(beta=1)",
                    'GELU(approximate="tanh")', "Identity")

_SIMPLE = {torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid", torch.nn.ReLU: "relu"}


def _supported() -> str:
    return ("fastopt.torch.to_mlp supports an nn.Sequential of " + ", ".join(SUPPORTED_LAYERS)
            + ": Linear layers with one activation type between them and none after the last")


def _activation(layer: torch.nn.Module, where: str) -> str | None:
    """fastopt's activation name for a torch activation module (None for Identity)."""
    if isinstance(layer, torch.nn.Identity):
        return None
    for cls, name in _SIMPLE.items():
        if type(layer) is cls:
            return name
    if type(layer) is torch.nn.Softplus:
        # Above `threshold` torch's softplus is linear: off from log1p(exp(z)) by < 2.1e-9
        # at the default threshold 20, larger for a smaller threshold.
        if layer.beta != 1 or layer.threshold < 20:
            raise ValueError(f"model: {where} is {layer}; fastopt's softplus is "
                             "log(1 + exp(z)): use Softplus(beta=1) with threshold >= 20")
        return "softplus"
    if type(layer) is torch.nn.GELU:
        if layer.approximate != "tanh":
            raise ValueError(f"model: {where} is {layer}; fastopt's GELU is the tanh form, "
                             'use nn.GELU(approximate="tanh")')
        return "gelu"
    raise ValueError(f"model: {where} is {type(layer).__name__} ({layer}), which "
                     f"{_supported()}")


def _flatten(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    out = []
    for name, layer in model.named_children():
        if isinstance(layer, torch.nn.Sequential):
            out += [(f"{name}.{sub}", m) for sub, m in _flatten(layer)]
        else:
            out.append((name, layer))
    return out


def _parse(model: object) -> tuple[list[torch.nn.Linear], str]:
    """The Linear layers of ``model`` and its (single) hidden activation."""
    if not isinstance(model, torch.nn.Sequential):
        raise TypeError(f"model: expected a torch.nn.Sequential, got {type(model).__name__}; "
                        f"{_supported()}")
    linears: list[torch.nn.Linear] = []
    acts: list[tuple[str, str]] = []  # (where, activation) of every gap between Linears
    pending: tuple[str, str] | None = None
    for name, layer in _flatten(model):
        where = f"layer {name!r}"
        if type(layer) is torch.nn.Linear:
            if layer.bias is None:
                raise ValueError(f"model: {where} is {layer}; fastopt.MLP layers have a bias "
                                 "(use bias=True)")
            if linears:
                acts.append(pending or (where, "identity"))
            linears.append(layer)
            pending = None
            continue
        act = _activation(layer, where)
        if act is None:
            continue
        if not linears:
            raise ValueError(f"model: {where} ({layer}) comes before the first Linear; "
                             f"{_supported()}")
        if pending is not None:
            raise ValueError(f"model: {where} ({layer}) follows another activation; "
                             f"{_supported()}")
        pending = (where, act)
    if not linears:
        raise ValueError(f"model: has no Linear layer; {_supported()}")
    if pending is not None:
        raise ValueError(f"model: {pending[0]} ({pending[1]}) follows the last Linear; "
                         "fastopt.MLP's last layer is linear: move the output activation into "
                         "the loss (e.g. BCEWithLogitsLoss instead of Sigmoid + BCELoss)")
    kinds = {a for _, a in acts}
    if len(kinds) > 1:
        listing = ", ".join(f"{w}: {a}" for w, a in acts)
        raise ValueError(f"model: fastopt.MLP uses one activation for every hidden layer, got "
                         f"{listing}")
    for i, (a, b) in enumerate(zip(linears[:-1], linears[1:], strict=False)):
        if a.out_features != b.in_features:
            raise ValueError(f"model: Linear {i} has {a.out_features} outputs but Linear {i + 1} "
                             f"takes {b.in_features} inputs")
    dtypes = {p.dtype for lin in linears for p in lin.parameters()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise TypeError(f"model: parameters must all be float32 or all float64, got "
                        f"{sorted(str(d) for d in dtypes)}")
    return linears, (kinds.pop() if kinds else "identity")


def _loss_name(loss: object) -> str:
    from ..curvature.mlp import LOSSES

    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES} or a torch loss module, got "
                             f"{loss!r}")
        return loss
    if type(loss) is torch.nn.CrossEntropyLoss:
        if (loss.reduction != "mean" or loss.weight is not None or loss.label_smoothing != 0):
            raise ValueError("loss: CrossEntropyLoss is supported with reduction='mean', no "
                             "weight and label_smoothing=0")
        return "cross_entropy"
    if type(loss) is torch.nn.BCEWithLogitsLoss:
        if loss.reduction != "mean" or loss.weight is not None or loss.pos_weight is not None:
            raise ValueError("loss: BCEWithLogitsLoss is supported with reduction='mean' and no "
                             "weight or pos_weight")
        return "logistic"
    if type(loss) is torch.nn.MSELoss:
        raise ValueError("loss: torch's MSELoss averages over every output value; fastopt's "
                         "'mse' is 0.5 * ||f(x) - y||^2 averaged over samples "
                         "(MSELoss(reduction='sum') / (2 N)). Pass loss='mse' if that is the "
                         "loss you mean")
    raise ValueError(f"loss: expected one of {LOSSES}, CrossEntropyLoss or BCEWithLogitsLoss, "
                     f"got {loss!r}")


def to_mlp(model: torch.nn.Module, loss: str | torch.nn.Module = "cross_entropy"
           ) -> tuple[MLP, np.ndarray]:
    """fastopt's :class:`~fastopt.MLP` of a torch ``nn.Sequential`` and its flat ``theta``.

    Parameters
    ----------
    model : torch.nn.Sequential
        ``Linear`` layers (with bias) and one activation type between them: ``Tanh``,
        ``Sigmoid``, ``ReLU``, ``Softplus`` (beta 1), ``GELU(approximate="tanh")``; ``Identity``
        layers (and no activation) mean the identity; nested ``Sequential`` are flattened. No
        activation after the last ``Linear``.
    loss : {"cross_entropy", "mse", "logistic"} or torch loss module
        ``nn.CrossEntropyLoss()`` and ``nn.BCEWithLogitsLoss()`` (mean reduction) are accepted;
        ``"mse"`` is ``0.5 * ||f(x) - y||^2`` averaged over samples (not ``nn.MSELoss``).

    Returns
    -------
    net : fastopt.MLP
        In the parameters' dtype (float32 or float64).
    theta : ndarray
        A copy of the parameters in fastopt's layout (each ``W`` transposed to (in, out)).

    Raises
    ------
    ValueError
        An unsupported layer (named, with the supported list) or loss.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from fastopt.torch import to_mlp
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
    ...                             torch.nn.Linear(4, 2)).double()
    >>> net, theta = to_mlp(model, torch.nn.CrossEntropyLoss())
    >>> X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    >>> want = torch.nn.functional.cross_entropy(model(X), y).item()
    >>> bool(np.isclose(net.loss(theta, X.numpy(), y.numpy()), want))
    True
    """
    linears, activation = _parse(model)
    name = _loss_name(loss)
    dtype = linears[0].weight.dtype
    sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
    net = MLP(sizes, activation=activation, loss=name,
              dtype=np.float64 if dtype == torch.float64 else np.float32)
    with torch.no_grad():
        theta = net.pack([(lin.weight.detach().cpu().numpy().T, lin.bias.detach().cpu().numpy())
                          for lin in linears])
    return net, theta


def from_theta(model: torch.nn.Module, theta: Any) -> torch.nn.Module:
    """Write a flat fastopt ``theta`` (from :func:`to_mlp`'s layout) into ``model``'s layers.

    Parameters
    ----------
    model : torch.nn.Sequential
        A model :func:`to_mlp` accepts.
    theta : array_like or Tensor of shape (num_params,)

    Returns
    -------
    torch.nn.Module
        ``model``, with its Linear weights and biases overwritten in place.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from fastopt.torch import from_theta, to_mlp
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> net, theta = to_mlp(model, "mse")
    >>> _ = from_theta(model, np.zeros_like(theta))
    >>> float(model[0].weight.abs().sum())
    0.0
    """
    linears, _ = _parse(model)
    if isinstance(theta, torch.Tensor):
        theta = theta.detach().cpu().numpy()
    theta = np.asarray(theta)
    if theta.dtype.kind != "f":
        raise TypeError(f"theta: expected a float array, got dtype {theta.dtype}")
    total = sum(lin.weight.numel() + lin.bias.numel() for lin in linears)
    if theta.shape != (total,):
        raise ValueError(f"theta: expected shape ({total},) for this model, got {theta.shape}")
    off = 0
    with torch.no_grad():
        for lin in linears:
            n_out, n_in = lin.weight.shape
            W = theta[off:off + n_in * n_out].reshape(n_in, n_out)
            off += n_in * n_out
            b = theta[off:off + n_out]
            off += n_out
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
    return model


def mlp_hvp(net: Any, theta: Any, X: Any, y: Any, v: Any):
    """A callable computing the HVP of ``net``'s loss at ``theta`` along ``v`` with PyTorch's
    double backward (per-layer tensors, ``addmm``): the comparison the demo and the benchmarks
    time against :meth:`fastopt.MLP.hvp`. Returns the per-layer gradient tensors ``(W, b, ...)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> from fastopt.torch import mlp_hvp
    >>> net = MLP([3, 4, 2])
    >>> theta, v = net.init(0), np.ones(net.num_params)
    >>> X, y = np.ones((5, 3)), np.array([0, 1, 1, 0, 1])
    >>> hv = np.concatenate([t.numpy().ravel() for t in mlp_hvp(net, theta, X, y, v)()])
    >>> bool(np.allclose(hv, net.hvp(theta, X, y, v)))
    True
    """
    F = torch.nn.functional
    acts = {"identity": lambda z: z, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "relu": torch.relu, "softplus": F.softplus,
            "gelu": lambda z: F.gelu(z, approximate="tanh")}
    act = acts[net.activation]
    params = [torch.tensor(a.copy(), requires_grad=True) for pair in net.unpack(theta)
              for a in pair]
    vs = [torch.tensor(a.copy()) for pair in net.unpack(v) for a in pair]
    Xt, yt = torch.tensor(X), torch.tensor(y)
    L = net.num_layers

    def loss_of(out):
        if net.loss_name == "cross_entropy":
            return F.cross_entropy(out, yt)
        if net.loss_name == "mse":
            return 0.5 * ((out - yt) ** 2).sum(dim=1).mean()
        return F.binary_cross_entropy_with_logits(out[:, 0], yt)

    def run():
        a = Xt
        for l in range(L):
            a = torch.addmm(params[2 * l + 1], a, params[2 * l])
            if l < L - 1:
                a = act(a)
        grads = torch.autograd.grad(loss_of(a), params, create_graph=True)
        return torch.autograd.grad(grads, params, vs)

    return run
