"""fastopt's batch norm as ``torch.library`` custom ops in the ``fastopt`` namespace.

Two functional ops, on CPU and CUDA tensors, float32/float64, any rank >= 2 with the channel
axis 1:

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

CUDA tensors (a ``"CUDA"`` kernel for each op, ``backend`` ``"auto"`` or ``"cuda"``): the same
layouts, viewed through ``__cuda_array_interface__`` as numba device arrays (no copy); torch
allocates every output and scratch buffer on x's device (its caching allocator) and fastopt's
numba.cuda kernels (``_cuda.py``) write them, queued on torch's current stream, so they are
ordered with torch's work on that stream and nothing waits on the host. Nothing is copied to
the host, not even the per-channel vectors. It needs fastopt's CUDA backend (numba-cuda and a
device, :func:`cuda_backend_problem`); without it the CUDA kernel raises a RuntimeError that
says what to install (the modules fall back to torch's kernel instead).

Autograd: the forward's backward is the fused backward op; the backward op has its own exact
backward (explicit formulas in torch operations, so every higher order is exact too, checked by
``gradgradcheck``), and the forward's ``mean``/``invstd`` outputs are differentiable functions
of ``x`` in training mode, so a double backward is the exact second derivative.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
from torch import Tensor

from .. import _dispatch
from .._validate import check_fraction, check_positive
from ..batchnorm.api import kernels_for, running_update

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


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _check_tensor(t: Tensor, name: str, device: str = "cpu") -> None:
    if t.device.type != device:
        raise ValueError(f"{name}: fastopt's batch-norm op runs on CPU and CUDA tensors, all on "
                         f"the device of x, got a tensor on {t.device}; fastopt.torch.BatchNorm* "
                         "modules fall back to PyTorch's kernel for other devices")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: fastopt's batch-norm op takes float32 or float64 tensors, got "
                        f"{t.dtype}; fastopt.torch.BatchNorm* modules fall back to PyTorch's "
                        "kernel for other dtypes")
    if t.dim() < 2:
        raise ValueError(f"{name}: expected at least 2 dimensions (N, C, ...), got shape "
                         f"{tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: is empty (shape {tuple(t.shape)})")


def _check_vector(t: Tensor | None, name: str, x: Tensor) -> None:
    if t is None:
        return
    if t.shape != (x.shape[1],):
        raise ValueError(f"{name}: expected shape ({x.shape[1]},), got {tuple(t.shape)}")
    if t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"{name}: dtype {t.dtype} on {t.device} does not match x's dtype "
                         f"{x.dtype} on {x.device}")


_CPU_BACKENDS = ("auto", "cython", "numba", "numpy")
_CUDA_BACKENDS = ("auto", "cuda")


def _check_backend(backend: str, device: str = "cpu") -> None:
    allowed = _CPU_BACKENDS if device == "cpu" else _CUDA_BACKENDS
    if backend not in allowed:
        raise ValueError(f"backend: {backend!r} is not one of "
                         f"{', '.join(map(repr, allowed))} (for {device.upper()} tensors)")


def _check_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                   running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                   momentum: float, eps: float, backend: str, device: str = "cpu") -> None:
    """Every check of the forward op's arguments, before anything is computed (a rejected call
    changes nothing); the kernels behind the op check nothing again."""
    _check_tensor(x, "x", device)
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        _check_vector(t, name, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var: give both or neither")
    if not training and running_mean is None:
        raise ValueError("running_mean/running_var: required when training=False")
    if training and x.numel() == x.shape[1]:
        raise ValueError("x: expected more than 1 value per channel when training, got input "
                         f"shape {tuple(x.shape)}")
    check_positive(eps, "eps")
    check_fraction(momentum, "momentum")
    _check_backend(backend, device)


def _check_backward(grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                    invstd: Tensor, backend: str, device: str = "cpu") -> None:
    """Every check of the backward op's arguments (the kernels check nothing again)."""
    _check_tensor(x, "x", device)
    _check_tensor(grad_out, "grad_out", device)
    if grad_out.shape != x.shape or grad_out.dtype != x.dtype:
        raise ValueError(f"grad_out: shape {tuple(grad_out.shape)} and dtype {grad_out.dtype} "
                         f"do not match x's {tuple(x.shape)} and {x.dtype}")
    _check_vector(weight, "weight", x)
    for name, t in (("mean", mean), ("invstd", invstd)):
        if (t.shape != (x.shape[1],) or t.dtype not in SUPPORTED_DTYPES or t.device != x.device
                or t.dtype != mean.dtype):
            raise ValueError(f"{name}: expected a float32/float64 tensor on {x.device} of shape "
                             f"({x.shape[1]},) (mean and invstd of one dtype), got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")
    _check_backend(backend, device)


def _as64(t: Tensor | None, channels: int, fill: float) -> np.ndarray:
    """A per-channel tensor as the float64 numpy vector the kernels take (fill where None)."""
    if t is None:
        return np.full(channels, fill)
    return t.detach().numpy().astype(np.float64)


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


def _kernel_output(x: Tensor, empty) -> tuple[Tensor, Tensor, int]:
    """``(out, written, axis)``: ``out = empty(x)`` (x's shape, dtype and layout), the
    C-contiguous tensor the kernels write and its channel axis. ``written`` views ``out``'s
    memory for contiguous and channels-last layouts; for any other dense layout it is a C-order
    tensor of its own, to be copied into ``out`` afterwards."""
    out = empty(x)
    view = _channel_view(out)
    if view is None:
        return out, torch.empty(x.shape, dtype=x.dtype, device=x.device), 1
    return out, view[0], view[1]


def _shape3(t: Tensor, axis: int) -> tuple[int, int, int]:
    """(outer, C, inner) of a C-contiguous tensor with its channels on ``axis`` (1 or last)."""
    shape = t.shape
    if axis == 1:
        return shape[0], shape[1], math.prod(shape[2:])
    return math.prod(shape[:-1]), shape[-1], 1


def _address(t: Tensor | None) -> int:
    """The data address of a C-contiguous tensor (0 for None): the Cython kernels' argument."""
    return 0 if t is None else t.data_ptr()


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _batch_norm_cpu(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                    running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                    momentum: float, eps: float, backend: str = "auto"
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Batch-norm forward with fastopt's fused kernels (see the module docstring)."""
    _check_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, backend)
    y, yv, axis = _kernel_output(x, _empty_like)
    xv = _as_layout(x, axis)
    outer, channels, inner = _shape3(xv, axis)
    kernels, plan = kernels_for(outer, channels, inner, x.element_size(), 2, backend)
    mean, invstd = x.new_empty(channels), x.new_empty(channels)
    stats = np.empty((3, channels))  # float64 mean, var, invstd
    w, b = _contiguous(weight), _contiguous(bias)
    rm = None if training else _contiguous(running_mean)
    rv = None if training else _contiguous(running_var)
    if hasattr(kernels, "forward_at"):  # addresses: no numpy views to build (Cython)
        kernels.forward_at(xv.data_ptr(), yv.data_ptr(), outer, channels, inner,
                           x.dtype == torch.float32, _address(w), _address(b), training,
                           _address(rm), _address(rv), eps, stats.ctypes.data, mean.data_ptr(),
                           invstd.data_ptr(), plan)
    else:
        x3 = _np(xv).reshape(outer, channels, inner)
        y3 = yv.numpy().reshape(outer, channels, inner)
        w64, b64 = _as64(weight, channels, 1.0), _as64(bias, channels, 0.0)
        if training:
            kernels.forward_train(x3, w64, b64, eps, y3, stats[0], stats[1], stats[2], plan)
        else:
            stats[0] = _np(rm)
            stats[2] = 1.0 / np.sqrt(_np(rv).astype(np.float64) + eps)
            kernels.forward_eval(x3, stats[0], stats[2], w64, b64, y3, plan)
        mean.copy_(torch.from_numpy(stats[0]))
        invstd.copy_(torch.from_numpy(stats[2]))
    if yv.data_ptr() != y.data_ptr():  # computed in C order: into y's strides
        y.copy_(yv)
    if training and running_mean is not None:
        new_rm, new_rv = running_update(_np(running_mean), _np(running_var), stats[0], stats[1],
                                        momentum, outer * inner)
        return y, mean, invstd, torch.from_numpy(new_rm), torch.from_numpy(new_rv)
    return y, mean, invstd, _empty_stats(x), _empty_stats(x)


def _cpp_plan(outer: int, channels: int, inner: int, itemsize: int, n_arrays: int,
              backend: str) -> tuple[bool, int, int, bool, int] | None:
    """The work plan's fields for a call of ``_ops.cpp``'s CPU kernels, or None when ``backend``
    resolves to kernels without address entry points (numba, numpy): the Python kernel then."""
    kernels, plan = kernels_for(outer, channels, inner, itemsize, n_arrays, backend)
    if not hasattr(kernels, "forward_at"):
        return None
    return plan.per_channel, plan.n_chunks, plan.n_threads, plan.stream, plan.row_block


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
    _check_backward(grad_out, x, weight, mean, invstd, backend)
    dx, dxv, axis = _kernel_output(x, _empty_like)
    xv = _as_layout(x, axis)
    gv = _as_layout(grad_out, axis)
    outer, channels, inner = _shape3(xv, axis)
    kernels, plan = kernels_for(outer, channels, inner, x.element_size(), 3, backend)
    dw, db = x.new_empty(channels), x.new_empty(channels)
    if hasattr(kernels, "backward_at"):  # addresses: no numpy views to build (Cython)
        m, s, w = mean.contiguous(), invstd.contiguous(), _contiguous(weight)
        kernels.backward_at(gv.data_ptr(), xv.data_ptr(), outer, channels, inner,
                            x.dtype == torch.float32, m.data_ptr(), s.data_ptr(),
                            mean.dtype == torch.float32, _address(w), training, dxv.data_ptr(),
                            dw.data_ptr(), db.data_ptr(), plan)
    else:
        shape3 = (outer, channels, inner)
        dw64, db64 = np.empty(channels), np.empty(channels)
        kernels.backward(_np(gv).reshape(shape3), _np(xv).reshape(shape3),
                         _as64(mean, channels, 0.0), _as64(invstd, channels, 1.0),
                         _as64(weight, channels, 1.0), bool(training),
                         dxv.numpy().reshape(shape3), dw64, db64, plan)
        dw.copy_(torch.from_numpy(dw64))
        db.copy_(torch.from_numpy(db64))
    if dxv.data_ptr() != dx.data_ptr():  # computed in C order: into dx's strides
        dx.copy_(dxv)
    return dx, dw, db


def _batch_norm_backward_fake(grad_out, x, weight, mean, invstd, training, backend="auto"):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,)), x.new_empty((c,))


# ------------------------------------------------------------------ CUDA
@torch.compiler.assume_constant_result
def cuda_backend_problem() -> str | None:
    """Why fastopt's CUDA kernels cannot run on torch's CUDA tensors in this process (None when
    they can): fastopt's own check (``fastopt._dispatch``: numba-cuda importable and a CUDA
    device found), plus the CUDA simulator, which cannot address torch's device memory.

    Computed once per process. ``torch.compile`` takes the result as a constant (the modules
    call this while being traced; tracing into the import machinery would break the graph)."""
    return _cuda_backend_problem()


@functools.cache
def _cuda_backend_problem() -> str | None:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return ("NUMBA_ENABLE_CUDASIM=1 is set, and numba's CUDA simulator cannot run on torch's "
                "CUDA memory (unset it to use fastopt's CUDA kernels)")
    try:
        _dispatch.load("batchnorm", "cuda")
    except RuntimeError as exc:
        return (f"fastopt's CUDA backend is not available ({exc.__cause__ or exc}); install "
                "numba-cuda (`pip install numba-cuda`, fastopt's `cuda` extra) next to a CUDA "
                "driver to run fastopt's CUDA kernels on torch's CUDA tensors")
    return None


@functools.cache
def _cuda_modules():
    """(numba.cuda, the numba-array glue), imported on the first CUDA call; RuntimeError with
    :func:`cuda_backend_problem`'s reason when fastopt's CUDA kernels cannot run."""
    problem = cuda_backend_problem()
    if problem is not None:
        raise RuntimeError(f"fastopt::batch_norm on a CUDA tensor: {problem}")
    from numba import cuda

    from . import _cuda as glue

    return cuda, glue


def _numba_view(t: Tensor):
    """A numba device array on t's memory (no copy; torch refuses to export a tensor that
    requires grad, hence the detach)."""
    return _cuda_modules()[0].as_cuda_array(t.detach())


def _numba_view_or_none(t: Tensor | None):
    return None if t is None else _numba_view(t)


_STREAMS: dict[tuple[int, int], object] = {}


def _numba_stream(device: torch.device):
    """torch's current stream on ``device`` as a numba stream: fastopt's kernels are queued
    where torch queues its own work, so they are ordered with it and nothing waits on the host.
    """
    key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    stream = _STREAMS.get(key)
    if stream is None:
        if len(_STREAMS) > 64:  # streams come and go; handles may be reused
            _STREAMS.clear()
        stream = _STREAMS[key] = _cuda_modules()[0].external_stream(key[1])
    return stream


def _scratch_allocator(device: torch.device):
    """``empty(shape, dtype)`` for the glue: torch's caching allocator (on the current stream,
    where the kernels run), seen as a numba array that keeps the tensor alive."""
    def empty(shape, dtype):
        dt = getattr(torch, np.dtype(dtype).name)
        return _numba_view(torch.empty(tuple(shape), dtype=dt, device=device))
    return empty


def _batch_norm_cuda(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                     running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                     momentum: float, eps: float, backend: str = "auto"
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward op on CUDA tensors: torch allocates every output on x's device and fastopt's
    numba.cuda kernels fill them through zero-copy views, on torch's current stream."""
    _check_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, backend,
                   "cuda")
    cuda, glue = _cuda_modules()
    y, yv, axis = _kernel_output(x, torch.empty_like)
    xv = _as_layout(x, axis)
    channels = x.shape[1]
    mean, invstd = x.new_empty((channels,)), x.new_empty((channels,))
    track = training and running_mean is not None
    new_rm = torch.empty_like(running_mean) if track else _empty_stats(x)
    new_rv = torch.empty_like(running_var) if track else _empty_stats(x)
    with cuda.gpus[x.device.index]:
        v, vn = _numba_view, _numba_view_or_none
        glue.forward(v(xv), vn(weight), vn(bias), vn(running_mean), vn(running_var), training,
                     momentum, eps, 1 if axis == 1 else xv.dim() - 1, v(yv), v(mean), v(invstd),
                     v(new_rm) if track else None, v(new_rv) if track else None,
                     empty=_scratch_allocator(x.device), stream=_numba_stream(x.device))
    if yv.data_ptr() != y.data_ptr():  # computed in C order: into y's strides
        y.copy_(yv)
    return y, mean, invstd, new_rm, new_rv


def _batch_norm_backward_cuda(grad_out: Tensor, x: Tensor, weight: Tensor | None,
                              mean: Tensor, invstd: Tensor, training: bool, backend: str = "auto"
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """The backward op on CUDA tensors (as :func:`_batch_norm_cuda`)."""
    _check_backward(grad_out, x, weight, mean, invstd, backend, "cuda")
    cuda, glue = _cuda_modules()
    dx, dxv, axis = _kernel_output(x, torch.empty_like)
    xv = _as_layout(x, axis)
    gv = _as_layout(grad_out, axis)
    channels = x.shape[1]
    dw, db = x.new_empty((channels,)), x.new_empty((channels,))
    with cuda.gpus[x.device.index]:
        v = _numba_view
        glue.backward(v(gv), v(xv), _numba_view_or_none(weight), v(mean), v(invstd), training,
                      1 if axis == 1 else xv.dim() - 1, v(dxv), v(dw), v(db),
                      empty=_scratch_allocator(x.device), stream=_numba_stream(x.device))
    if dxv.data_ptr() != dx.data_ptr():  # computed in C order: into dx's strides
        dx.copy_(dxv)
    return dx, dw, db


# ------------------------------------------------------------------ autograd
def _channel_shape(x: Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _reduce_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _forward_setup(ctx, inputs, output) -> None:
    x, weight, _bias, _rm, _rv, training, _momentum, _eps, backend = inputs
    _y, mean, invstd, new_rm, new_rv = output
    ctx.set_materialize_grads(False)
    if training:
        ctx.mark_non_differentiable(new_rm, new_rv)
    else:  # eval: the statistics are those of the buffers, not functions of x (one call: a
        # second mark_non_differentiable replaces the first)
        ctx.mark_non_differentiable(mean, invstd, new_rm, new_rv)
    ctx.save_for_backward(x, weight, mean, invstd)
    ctx.training = training
    ctx.backend = backend


def _forward_backward(ctx, grad_y, grad_mean, grad_invstd, _grm, _grv):
    x, weight, mean, invstd = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = dw = db = None
    if grad_y is not None:
        dx, dw, db = batch_norm_backward_op(grad_y, x, weight, mean, invstd, ctx.training,
                                            ctx.backend)
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


_AFTER_AUTOGRAD = torch._C._after_autograd_keyset


_CPU_KEY = torch._C.DispatchKey.CPU
_CUDA_KEY = torch._C.DispatchKey.CUDA


def _below_autograd(op, cpu_kernel, keyset, args, cuda_kernel=None):
    """The op's kernel below autograd. When that is the CPU (or CUDA) kernel (no fake tensors,
    modes or functionalization in the key set) it is called directly: the dispatcher's Python
    round trip to the same function costs more than fastopt's kernel on a small input."""
    below = keyset & _AFTER_AUTOGRAD
    key = below.highestPriorityTypeId()
    if key == _CPU_KEY:
        return cpu_kernel(*args)
    if key == _CUDA_KEY:
        return cuda_kernel(*args)
    return op.redispatch(below, *args)


class _BatchNormFunction(torch.autograd.Function):
    """The forward op's autograd: the op below autograd, then its saved state."""

    @staticmethod
    def forward(ctx, *args_and_keyset):
        *args, keyset = args_and_keyset
        output = _below_autograd(batch_norm_op, _batch_norm_cpu, keyset, args, _batch_norm_cuda)
        _forward_setup(ctx, args, output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        return (*_forward_backward(ctx, *grads), None)


class _BatchNormBackwardFunction(torch.autograd.Function):
    """The backward op's autograd (what makes a double backward exact)."""

    @staticmethod
    def forward(ctx, *args_and_keyset):
        *args, keyset = args_and_keyset
        output = _below_autograd(batch_norm_backward_op, _batch_norm_backward_cpu, keyset, args,
                                 _batch_norm_backward_cuda)
        _backward_setup(ctx, args, output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        return (*_backward_backward(ctx, *grads), None)


def _needs_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _batch_norm_autograd(keyset, x, weight, bias, running_mean, running_var, training, momentum,
                         eps, backend="auto"):
    args = (x, weight, bias, running_mean, running_var, training, momentum, eps, backend)
    if _needs_graph(x, weight, bias):
        return _BatchNormFunction.apply(*args, keyset)
    # no graph to record
    return _below_autograd(batch_norm_op, _batch_norm_cpu, keyset, args, _batch_norm_cuda)


def _batch_norm_backward_autograd(keyset, grad_out, x, weight, mean, invstd, training,
                                  backend="auto"):
    args = (grad_out, x, weight, mean, invstd, training, backend)
    if _needs_graph(grad_out, x, weight, mean, invstd):
        return _BatchNormBackwardFunction.apply(*args, keyset)
    return _below_autograd(batch_norm_backward_op, _batch_norm_backward_cpu, keyset, args,
                           _batch_norm_backward_cuda)


_LIB.impl("batch_norm", _batch_norm_cpu, "CPU")
_LIB.impl("batch_norm_backward", _batch_norm_backward_cpu, "CPU")
_LIB.impl("batch_norm", _batch_norm_cuda, "CUDA")
_LIB.impl("batch_norm_backward", _batch_norm_backward_cuda, "CUDA")
torch.library.register_fake("fastopt::batch_norm", _batch_norm_fake, lib=_LIB)
torch.library.register_fake("fastopt::batch_norm_backward", _batch_norm_backward_fake, lib=_LIB)
# Autograd kernels registered directly, with the setup inside forward: register_autograd and a
# separate setup_context both bind every call's arguments with inspect.signature, which cost
# about 100 us per small call.
_LIB.impl("batch_norm", _batch_norm_autograd, "Autograd", with_keyset=True)
_LIB.impl("batch_norm_backward", _batch_norm_backward_autograd, "Autograd", with_keyset=True)
batch_norm_op = torch.ops.fastopt.batch_norm.default
batch_norm_backward_op = torch.ops.fastopt.batch_norm_backward.default
