"""Optional PyTorch adapter: fastopt's batch-norm kernels as an autograd Function and a Module,
and PyTorch's own double-backward HVP of an :class:`~fastopt.MLP` (``mlp_hvp``) to compare with.

Imports torch lazily (``import fastopt`` never does). CPU tensors are shared with numpy without
copies (``Tensor.numpy()`` / ``torch.from_numpy``); non-contiguous tensors are made contiguous
once. Channels-last NCHW tensors (``memory_format=torch.channels_last``) are handed over as NHWC
memory with ``axis=-1``, again without copying.

Examples
--------
>>> import torch
>>> from fastopt.torch import FastBatchNorm
>>> bn = FastBatchNorm(3)
>>> x = torch.randn(8, 3, 4, 4, requires_grad=True)
>>> bn(x).sum().backward()
>>> x.grad.shape
torch.Size([8, 3, 4, 4])
"""

from __future__ import annotations

from typing import Any

from .batchnorm.api import batch_norm_backward, batch_norm_forward


def _torch():
    import torch

    return torch


def _as_numpy(t, channels_last: bool):
    """(numpy array, axis) sharing memory with a CPU tensor."""
    if channels_last:
        return t.permute(0, 2, 3, 1).contiguous().detach().numpy(), -1
    return t.contiguous().detach().numpy(), 1


def _is_channels_last(t) -> bool:
    torch = _torch()
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


def _function_class():
    torch = _torch()

    class BatchNormFunction(torch.autograd.Function):
        """Training-mode batch norm with fastopt's fused forward and backward kernels."""

        @staticmethod
        def forward(ctx: Any, x, weight, bias, running_mean, running_var, training: bool,
                    momentum: float, eps: float, backend: str):
            cl = _is_channels_last(x)
            xn, axis = _as_numpy(x, cl)
            w = weight.detach().numpy() if weight is not None else None
            b = bias.detach().numpy() if bias is not None else None
            rm = running_mean.numpy() if running_mean is not None else None
            rv = running_var.numpy() if running_var is not None else None
            use_batch = training or rm is None
            y, mean, invstd = batch_norm_forward(
                xn, w, b, axis=axis, training=use_batch,
                running_mean=rm if (training or not use_batch) else None,
                running_var=rv if (training or not use_batch) else None,
                momentum=momentum, eps=eps, backend=backend)
            ctx.save_for_backward(x, weight)
            ctx.stats = (mean, invstd, use_batch, axis, cl, backend)
            out = torch.from_numpy(y)
            return out.permute(0, 3, 1, 2) if cl else out

        @staticmethod
        def backward(ctx: Any, grad_out):
            x, weight = ctx.saved_tensors
            mean, invstd, use_batch, axis, cl, backend = ctx.stats
            xn, _ = _as_numpy(x, cl)
            gn, _ = _as_numpy(grad_out, cl)
            w = weight.detach().numpy() if weight is not None else None
            dx, dw, db = batch_norm_backward(gn, xn, mean, invstd, w, axis=axis,
                                             training=use_batch, backend=backend)
            dx_t = torch.from_numpy(dx)
            if cl:
                dx_t = dx_t.permute(0, 3, 1, 2)
            dw_t = torch.from_numpy(dw) if weight is not None else None
            db_t = torch.from_numpy(db) if weight is not None else None
            return dx_t, dw_t, db_t, None, None, None, None, None, None

    return BatchNormFunction


_FUNCTION = None


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
               backend: str = "auto"):
    """Drop-in for ``torch.nn.functional.batch_norm`` on CPU tensors (float32/float64).

    Channel axis 1; NCHW tensors in channels-last memory format are handled without copies.
    """
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _function_class()
    if x.is_cuda:
        raise ValueError("x: fastopt.torch handles CPU tensors; use torch's own kernels on GPU")
    return _FUNCTION.apply(x, weight, bias, running_mean, running_var, training, momentum, eps,
                           backend)


def FastBatchNorm(num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                  affine: bool = True, track_running_stats: bool = True,
                  dtype=None, backend: str = "auto"):
    """A ``torch.nn.BatchNorm2d``-compatible module (any rank, channel axis 1) on fastopt kernels.

    Returns an instance of a subclass of ``torch.nn.modules.batchnorm._BatchNorm``, so
    ``state_dict``, ``train()``/``eval()`` and ``momentum=None`` behave exactly as in PyTorch.
    """
    torch = _torch()

    class _FastBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
        def _check_input_dim(self, x):
            if x.dim() < 2:
                raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

        def forward(self, x):
            factor = 0.0 if self.momentum is None else self.momentum
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
            use_batch = self.training or self.running_mean is None
            return batch_norm(
                x, self.weight, self.bias,
                self.running_mean if (not self.training or self.track_running_stats) else None,
                self.running_var if (not self.training or self.track_running_stats) else None,
                use_batch, factor, self.eps, backend)

    kwargs = {"dtype": dtype} if dtype is not None else {}
    return _FastBatchNorm(num_features, eps, momentum, affine, track_running_stats, **kwargs)


__all__ = ["FastBatchNorm", "batch_norm"]


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
    torch = _torch()
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
