"""fastopt's batch norm as ``torch.library`` custom ops in the ``fastopt`` namespace.

Two functional ops, both CPU, float32/float64, any rank >= 2 with the channel axis 1:

- ``torch.ops.fastopt.batch_norm(x, weight, bias, running_mean, running_var, training,
  momentum, eps, backend) -> (y, mean, invstd, new_running_mean, new_running_var)``: the
  forward in training or eval mode. Custom ops with an autograd formula must not mutate their
  inputs, so the updated running statistics come back as new tensors (empty when none are
  updated) and the caller copies them into its buffers, as ``torch.compile``'s functional form
  of ``native_batch_norm`` does.
- ``torch.ops.fastopt.batch_norm_backward(grad_out, x, weight, mean, invstd, training,
  backend) -> (grad_x, grad_weight, grad_bias)``: fastopt's fused backward.

Memory layout: a tensor whose memory is C-contiguous goes to fastopt as it is (``axis=1``); a
tensor whose dimensions in the order ``(0, 2, ..., ndim-1, 1)`` are contiguous (``channels_last``
for 4-D, ``channels_last_3d`` for 5-D, the transpose of a contiguous (N, L, C) for 3-D) goes as
that channels-last array with ``axis=-1``; neither copies. Outputs take the input's layout
(``torch.empty_like``). Only other strides (a slice, an expanded gradient) are copied once.

Autograd: the forward's backward is the fused backward op; the backward op has its own exact
backward (explicit formulas in torch operations, so every higher order is exact too, checked by
``gradgradcheck``), and the forward's ``mean``/``invstd`` outputs are differentiable functions
of ``x`` in training mode, so a double backward is the exact second derivative.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..batchnorm.api import batch_norm_backward as _np_backward
from ..batchnorm.api import batch_norm_forward as _np_forward

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _perm_last(ndim: int) -> tuple[int, ...]:
    """(0, 2, ..., ndim-1, 1): NC... -> N...C."""
    return (0, *range(2, ndim), 1)


def _channel_view(t: Tensor) -> tuple[Tensor, int] | None:
    """(a tensor with C-contiguous memory sharing t's, fastopt's channel axis), or None."""
    if t.is_contiguous():
        return t, 1
    p = t.permute(_perm_last(t.dim()))
    if p.is_contiguous():
        return p, -1
    return None


def _as_layout(t: Tensor, axis: int) -> Tensor:
    """t's values as a C-contiguous tensor in the layout of ``axis`` (copied only if needed)."""
    if axis == 1:
        return t.contiguous()
    return t.permute(_perm_last(t.dim())).contiguous()


def _np(t: Tensor | None):
    if t is None:
        return None
    return t.detach().numpy() if t.requires_grad else t.numpy()


def _check_tensor(t: Tensor, name: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name}: fastopt's batch-norm op runs on CPU tensors, got a tensor on "
                         f"{t.device}; fastopt.torch.BatchNorm* modules fall back to PyTorch's "
                         "kernel for other devices")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: fastopt's batch-norm op takes float32 or float64 tensors, got "
                        f"{t.dtype}; fastopt.torch.BatchNorm* modules fall back to PyTorch's "
                        "kernel for other dtypes")
    if t.dim() < 2:
        raise ValueError(f"{name}: expected at least 2 dimensions (N, C, ...), got shape "
                         f"{tuple(t.shape)}")


def _empty_like(x: Tensor) -> Tensor:
    """torch.empty_like(x) (same shape, dtype and dense layout) in memory numpy allocates.

    A large tensor from torch's CPU allocator is fresh memory from the OS on every call, and its
    first write takes a page fault per 4 KiB; numpy's allocator asks for transparent huge pages,
    which made a (128, 256, 28, 28) float32 output 2-3x cheaper to fill. Small tensors and
    layouts other than contiguous and channels-last keep torch's allocator."""
    if x.numel() * x.element_size() < (1 << 21):
        return torch.empty_like(x)
    dtype = torch.empty((), dtype=x.dtype).numpy().dtype
    if x.is_contiguous():
        return torch.from_numpy(np.empty(tuple(x.shape), dtype=dtype))
    perm = _perm_last(x.dim())
    if x.permute(perm).is_contiguous():
        inverse = [perm.index(i) for i in range(x.dim())]
        stored = np.empty(tuple(x.shape[i] for i in perm), dtype=dtype)
        return torch.from_numpy(stored).permute(inverse)
    return torch.empty_like(x)


def _empty_stats(x: Tensor) -> Tensor:
    return x.new_empty((0,))


# Registered with torch.library's low-level Library (define/impl) rather than the
# torch.library.custom_op decorator: the dispatcher then calls the CPU kernel directly, without
# custom_op's per-call Python wrappers (return-alias checks, a dynamo-disable frame), which
# cost about as much as fastopt's own validation on a small input.
_LIB = torch.library.Library("fastopt", "DEF")
_LIB.define("batch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, "
            "Tensor? running_var, bool training, float momentum, float eps, "
            "str backend='auto') -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
            tags=(torch.Tag.pt2_compliant_tag,))
_LIB.define("batch_norm_backward(Tensor grad_out, Tensor x, Tensor? weight, Tensor mean, "
            "Tensor invstd, bool training, str backend='auto') -> (Tensor, Tensor, Tensor)",
            tags=(torch.Tag.pt2_compliant_tag,))


def _batch_norm_cpu(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                    running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                    momentum: float, eps: float, backend: str = "auto"
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Batch-norm forward with fastopt's fused kernels (see the module docstring)."""
    _check_tensor(x, "x")
    y = _empty_like(x)
    view = _channel_view(y)
    target = y
    if view is None:  # a dense but permuted x: compute in C order, copy into x's strides
        target = torch.empty(x.shape, dtype=x.dtype)
        view = (target, 1)
    yv, axis = view
    xv = _as_layout(x, axis)
    track = training and running_mean is not None
    new_rm = running_mean.clone() if track else _empty_stats(x)
    new_rv = running_var.clone() if track and running_var is not None else _empty_stats(x)
    rm = new_rm if track else (None if training else running_mean)
    rv = new_rv if track else (None if training else running_var)
    _, mean, invstd = _np_forward(
        _np(xv), _np(weight), _np(bias), axis=axis, training=training,
        running_mean=_np(rm), running_var=_np(rv), momentum=momentum, eps=eps,
        out=yv.numpy(), backend=backend)
    if target is not y:
        y.copy_(target)
    return y, torch.from_numpy(mean), torch.from_numpy(invstd), new_rm, new_rv


def _batch_norm_fake(x, weight, bias, running_mean, running_var, training, momentum, eps,
                     backend="auto"):
    c = x.shape[1]
    track = training and running_mean is not None
    new_rm = torch.empty_like(running_mean) if track else _empty_stats(x)
    new_rv = torch.empty_like(running_var) if track and running_var is not None \
        else _empty_stats(x)
    return torch.empty_like(x), x.new_empty((c,)), x.new_empty((c,)), new_rm, new_rv


def _batch_norm_backward_cpu(grad_out: Tensor, x: Tensor, weight: Tensor | None,
                             mean: Tensor, invstd: Tensor, training: bool, backend: str = "auto"
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """fastopt's fused batch-norm backward: (grad_x, grad_weight, grad_bias)."""
    _check_tensor(x, "x")
    dx = _empty_like(x)
    view = _channel_view(dx)
    target = dx
    if view is None:
        target = torch.empty(x.shape, dtype=x.dtype)
        view = (target, 1)
    dxv, axis = view
    xv = _as_layout(x, axis)
    gv = _as_layout(grad_out, axis)
    _, dw, db = _np_backward(_np(gv), _np(xv), _np(mean), _np(invstd), _np(weight), axis=axis,
                             training=training, out=dxv.numpy(), backend=backend)
    if target is not dx:
        dx.copy_(target)
    return dx, torch.from_numpy(dw), torch.from_numpy(db)


def _batch_norm_backward_fake(grad_out, x, weight, mean, invstd, training, backend="auto"):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,)), x.new_empty((c,))


# ------------------------------------------------------------------ autograd
def _channel_shape(x: Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _reduce_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _forward_setup(ctx, inputs, output) -> None:
    x, weight, _bias, _rm, _rv, training, _momentum, _eps, backend = inputs
    _y, mean, invstd, new_rm, new_rv = output
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(new_rm, new_rv)
    if not training:  # eval: the statistics are those of the buffers, not functions of x
        ctx.mark_non_differentiable(mean, invstd)
    ctx.save_for_backward(x, weight, mean, invstd)
    ctx.training = training
    ctx.backend = backend


def _forward_backward(ctx, grad_y, grad_mean, grad_invstd, _grm, _grv):
    x, weight, mean, invstd = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = dw = db = None
    if grad_y is not None:
        dx, dw, db = torch.ops.fastopt.batch_norm_backward(
            grad_y, x, weight, mean, invstd, ctx.training, ctx.backend)
    if ctx.training and (grad_mean is not None or grad_invstd is not None):
        # mean = sum(x)/n and invstd = (var + eps)^(-1/2): d mean/dx = 1/n,
        # d invstd/dx = -invstd^3 (x - mean)/n.
        shape = _channel_shape(x)
        n = x.numel() // x.shape[1]
        extra = torch.zeros_like(x)
        if grad_mean is not None:
            extra = extra + (grad_mean / n).view(shape)
        if grad_invstd is not None:
            extra = extra - (grad_invstd * invstd**3 / n).view(shape) * (x - mean.view(shape))
        dx = extra if dx is None else dx + extra
    if dx is None:
        dx = torch.zeros_like(x)
    return (dx if need_x else None, dw if need_w else None, db if need_b else None,
            None, None, None, None, None, None)


def _backward_setup(ctx, inputs, output) -> None:
    grad_out, x, weight, mean, invstd, training, backend = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_out, x, weight, mean, invstd)
    ctx.training = training


def _backward_backward(ctx, a, beta, gamma):
    """Exact vector-Jacobian product of the backward map (grad_out, x, mean, invstd, weight) ->
    (dx, dweight, dbias), in differentiable torch operations (so higher orders stay exact).

    Per channel, with u = x - mean, r = invstd, w = weight, g = grad_out, n values per channel,
    s = sum g, d = sum u g and cotangents (a, beta, gamma) of (dx, dweight, dbias):
    training: dx = w r (g - s/n - u d r^2/n), dweight = d r, dbias = s;
    eval: dx = w r g, dweight = d r, dbias = s.
    """
    g, x, weight, mean, invstd = ctx.saved_tensors
    shape = _channel_shape(x)
    dims = _reduce_dims(x)
    n = x.numel() // x.shape[1]
    r = invstd.view(shape)
    w = torch.ones_like(r) if weight is None else weight.view(shape)
    u = x - mean.view(shape)

    def csum(t):
        return t.sum(dims, keepdim=True)

    zero = torch.zeros_like(r)
    s, d = csum(g), csum(u * g)
    A = csum(a) if a is not None else zero
    P = csum(a * u) if a is not None else zero
    ag = csum(a * g) if a is not None else zero
    beta_ = beta.view(shape) if beta is not None else zero
    gamma_ = gamma.view(shape) if gamma is not None else zero
    a_ = a if a is not None else zero
    if ctx.training:
        T1 = ag - s * A / n
        d_g = w * r * (a_ - A / n - u * r * r * P / n) + beta_ * r * u + gamma_
        d_x = -w * r**3 * (g * P + d * a_) / n + beta_ * r * g
        d_mean = w * r**3 * (s * P + d * A) / n - beta_ * r * s
        d_r = w * T1 - 3 * w * r * r * d * P / n + beta_ * d
        d_w = r * T1 - r**3 * d * P / n
    else:
        d_g = w * r * a_ + beta_ * r * u + gamma_
        d_x = beta_ * r * g
        d_mean = -beta_ * r * s
        d_r = w * ag + beta_ * d
        d_w = r * ag
    need = ctx.needs_input_grad
    return (d_g.expand_as(g) if need[0] else None, d_x.expand_as(x) if need[1] else None,
            d_w.view(-1) if need[2] and weight is not None else None,
            d_mean.view(-1) if need[3] else None, d_r.view(-1) if need[4] else None,
            None, None)


_LIB.impl("batch_norm", _batch_norm_cpu, "CPU")
_LIB.impl("batch_norm_backward", _batch_norm_backward_cpu, "CPU")
torch.library.register_fake("fastopt::batch_norm", _batch_norm_fake, lib=_LIB)
torch.library.register_fake("fastopt::batch_norm_backward", _batch_norm_backward_fake, lib=_LIB)
torch.library.register_autograd("fastopt::batch_norm", _forward_backward,
                                setup_context=_forward_setup, lib=_LIB)
torch.library.register_autograd("fastopt::batch_norm_backward", _backward_backward,
                                setup_context=_backward_setup, lib=_LIB)
batch_norm_op = torch.ops.fastopt.batch_norm.default
batch_norm_backward_op = torch.ops.fastopt.batch_norm_backward.default
