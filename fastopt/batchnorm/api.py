"""Public batch-norm functions: validate, pick the backend and the work split, call one kernel."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _dispatch
from .._threads import get_num_threads
from .._validate import (
    as_channel_vector,
    as_device_array,
    as_float_array,
    as_param,
    check_all_finite,
    check_fraction,
    check_out,
    check_positive,
    normalize_axis,
)
from ._plan import make_plan

FAMILY = "batchnorm"


class BatchNormOutput(NamedTuple):
    """Result of :func:`batch_norm_forward`.

    ``y`` has x's shape and dtype; ``mean`` and ``invstd`` (shape ``(C,)``, x's dtype) are the
    batch statistics in training mode and those of the running statistics in eval mode: exactly
    what :func:`batch_norm_backward` takes.
    """

    y: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray


class BatchNormGrads(NamedTuple):
    """Result of :func:`batch_norm_backward`: gradients w.r.t. x, weight and bias."""

    dx: np.ndarray
    dweight: np.ndarray
    dbias: np.ndarray


def _view3(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def _prefer(outer: int, channels: int, inner: int) -> str:
    """The ``"auto"`` policy, from bench/ (README): Cython for every layout.

    Cython writes the outputs of calls larger than the cache with streaming stores, which Numba
    cannot emit (10-20% off those passes); on cache-sized inputs the two compiled backends are
    within 5-10% of each other, and Cython needs no JIT compilation on first call.
    """
    del outer, channels, inner
    return "cython"


def _check_x(x: object, name: str = "x"):
    arr = as_device_array(x, name) if _dispatch.is_cuda_array(x) else as_float_array(x, name)
    if arr.ndim < 2:
        raise ValueError(
            f"{name}: expected at least 2 dimensions (N, C, ...), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: is empty (shape {arr.shape})")
    return arr


def _check_out_alias(out: np.ndarray | None, *inputs: np.ndarray) -> None:
    """out= may be exactly an input (in place) but must not partially overlap one."""
    if out is None or not isinstance(out, np.ndarray):
        return
    for arr in inputs:
        if np.may_share_memory(out, arr):
            same = (
                out.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
                and out.strides == arr.strides
            )
            if not same:
                raise ValueError("out: overlaps an input without being the same array")


def _weight_bias(weight, bias, channels: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    w = as_param(weight, "weight", channels, dtype)
    b = as_param(bias, "bias", channels, dtype)
    w64 = np.ones(channels) if w is None else w.astype(np.float64)
    b64 = np.zeros(channels) if b is None else b.astype(np.float64)
    return w64, b64


def batch_norm_forward(
    x: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    *,
    axis: int = 1,
    training: bool = True,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    out: np.ndarray | None = None,
    check_finite: bool = False,
    backend: str = "auto",
) -> BatchNormOutput:
    """Fused batch-normalization forward pass, with PyTorch's semantics.

    Training mode normalizes with the batch statistics of each channel (biased variance,
    ``invstd = 1/sqrt(var + eps)``) and, when running statistics are given, updates them in place:
    ``running_mean = (1 - momentum) * running_mean + momentum * mean`` and the same for
    ``running_var`` with the unbiased variance ``var * n / (n - 1)``. Eval mode normalizes with the
    running statistics. Statistics accumulate in float64.

    Parameters
    ----------
    x : array_like, float32 or float64, at least 2-D
        Input; the channel axis is ``axis``. Non-contiguous input is copied once.
    weight, bias : array_like of shape (C,), optional
        Affine parameters in x's dtype (default 1 and 0).
    axis : int
        Channel axis (1 for (N, C, ...), -1 for channels-last / (N, C)).
    training : bool
        Use batch statistics (True) or the running statistics (False).
    running_mean, running_var : ndarray of shape (C,), x's dtype, optional
        Running statistics, updated in place in training mode; required in eval mode.
    momentum : float in [0, 1]
        Weight of the new batch in the running statistics.
    eps : float > 0
        Added to the variance inside the square root.
    out : ndarray, optional
        Destination for y (x's shape and dtype, C-contiguous); may be x itself (in place).
    check_finite : bool
        Raise ``ValueError`` if x holds NaN or Inf (by default they propagate within their
        channel, as in PyTorch).
    backend : {"auto", "cython", "numba", "numpy", "cuda"}
        Kernel implementation; "auto" picks the faster compiled one for the layout, and
        "cuda" for device arrays (anything with ``__cuda_array_interface__``). With device
        input, y, mean and invstd are device arrays, while weight, bias and the running
        statistics stay host numpy arrays (C values, copied per call). ``backend="cuda"`` with
        host input copies x to the device and the results back.

    Returns
    -------
    BatchNormOutput
        ``(y, mean, invstd)``.

    Raises
    ------
    TypeError
        x is not float32/float64 (integer, bool, float16, complex).
    ValueError
        Bad shapes, axis, eps, momentum, out=, a single value per channel in training, missing
        running statistics in eval mode. Nothing is modified when an error is raised.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import batch_norm_forward
    >>> x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    >>> y, mean, invstd = batch_norm_forward(x)
    >>> mean
    array([4.5, 6.5], dtype=float32)
    >>> np.round(y[:, 0, 0], 4)
    array([-1.362 , -0.1513,  1.0593], dtype=float32)
    """
    x = _check_x(x)
    ax = normalize_axis(axis, x.ndim)
    outer, channels, inner = _view3(x.shape, ax)
    n = outer * inner
    eps = check_positive(eps, "eps")
    momentum = check_fraction(momentum, "momentum")
    w64, b64 = _weight_bias(weight, bias, channels, x.dtype)
    rm = as_param(running_mean, "running_mean", channels, x.dtype, writable=True)
    rv = as_param(running_var, "running_var", channels, x.dtype, writable=True)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean and running_var: give both or neither")
    if training and n == 1:
        raise ValueError(
            f"x: expected more than 1 value per channel when training, got input shape {x.shape}"
        )
    if not training and rm is None:
        raise ValueError("running_mean/running_var: required when training=False")
    out = check_out(out, x.shape, x.dtype, device=_dispatch.is_cuda_array(x))
    _check_out_alias(out, x)
    if check_finite:
        check_all_finite(_host(x), "x")
    name = _resolve(backend, x, outer, channels, inner)
    if name == "cuda":
        return _forward_cuda(x, w64, b64, outer, channels, inner, training, rm, rv, momentum, eps,
                             out)

    y = np.empty_like(x) if out is None else out
    x3 = x.reshape(outer, channels, inner)
    y3 = y.reshape(outer, channels, inner)
    plan = make_plan(outer, channels, inner, get_num_threads(), x.dtype.itemsize)
    kernels = _dispatch.load(FAMILY, name)

    if training:
        if name == "numpy":
            y3[...], mean, var, invstd = kernels.forward_train(x3, w64, b64, eps)
        else:
            mean, var, invstd = np.empty(channels), np.empty(channels), np.empty(channels)
            kernels.forward_train(x3, w64, b64, eps, y3, mean, var, invstd,
                                  plan.per_channel, plan.n_chunks, plan.n_threads, plan.stream,
                                  plan.row_block)
        if rm is not None:
            _update_running(rm, rv, mean, var, momentum, n)
    else:
        mean = rm.astype(np.float64)
        invstd = 1.0 / np.sqrt(rv.astype(np.float64) + eps)
        if name == "numpy":
            y3[...] = kernels.forward_eval(x3, mean, invstd, w64, b64)
        else:
            kernels.forward_eval(x3, *_eval_affine(mean, invstd, w64, b64), y3, plan.n_chunks,
                                 plan.n_threads, plan.stream)
    return BatchNormOutput(y, mean.astype(x.dtype), invstd.astype(x.dtype))


def _update_running(rm, rv, mean, var, momentum: float, n: int) -> None:
    rm *= 1.0 - momentum
    rm += (momentum * mean).astype(rm.dtype)
    rv *= 1.0 - momentum
    rv += (momentum * var * (n / (n - 1))).astype(rv.dtype)


def _eval_affine(mean, invstd, w64, b64) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with y = x * scale + shift for the eval forward kernels (float64)."""
    scale = invstd * w64
    return scale, b64 - mean * scale


def _host(arr):
    return arr.copy_to_host() if _dispatch.is_cuda_array(arr) else arr


def _resolve(backend: str, x, outer: int, channels: int, inner: int) -> str:
    device = _dispatch.is_cuda_array(x)
    name = _dispatch.resolve(FAMILY, backend, prefer=lambda: _prefer(outer, channels, inner),
                             cuda_input=device, supported=("cython", "numba", "numpy", "cuda"))
    if device and name != "cuda":
        raise ValueError(f"backend: {backend!r} runs on the CPU but x is a device array; use "
                         "backend='cuda' or 'auto', or copy x to the host")
    return name


def _to_device(arr):
    from numba import cuda

    return arr if _dispatch.is_cuda_array(arr) else cuda.to_device(arr)


def _forward_cuda(x, w64, b64, outer, channels, inner, training, rm, rv, momentum, eps, out):
    from numba import cuda

    kernels = _dispatch.load(FAMILY, "cuda")
    host = not _dispatch.is_cuda_array(x)
    xd = _to_device(x)
    yd = cuda.device_array(x.shape, x.dtype) if out is None or host else out
    x3, y3 = xd.reshape(outer, channels, inner), yd.reshape(outer, channels, inner)
    if training:
        mean, var, invstd = (a.copy_to_host() for a in kernels.forward_train(x3, w64, b64, eps, y3))
        if rm is not None:
            _update_running(rm, rv, mean, var, momentum, outer * inner)
    else:
        mean = rm.astype(np.float64)
        invstd = 1.0 / np.sqrt(rv.astype(np.float64) + eps)
        kernels.forward_eval(x3, *_eval_affine(mean, invstd, w64, b64), y3)
    mean, invstd = mean.astype(x.dtype), invstd.astype(x.dtype)
    if host:
        y = yd.copy_to_host() if out is None else _copy_into(out, yd)
        return BatchNormOutput(y, mean, invstd)
    return BatchNormOutput(yd, cuda.to_device(mean), cuda.to_device(invstd))


def _copy_into(out: np.ndarray, device_array) -> np.ndarray:
    out[...] = device_array.copy_to_host()
    return out


def _backward_cuda(dy, x, mean64, invstd64, w64, outer, channels, inner, training, out,
                   dtype) -> BatchNormGrads:
    from numba import cuda

    kernels = _dispatch.load(FAMILY, "cuda")
    host = not _dispatch.is_cuda_array(x)
    xd, gd = _to_device(x), _to_device(dy)
    dxd = cuda.device_array(x.shape, dtype) if out is None or host else out
    shape3 = (outer, channels, inner)
    dweight, dbias = kernels.backward(gd.reshape(*shape3), xd.reshape(*shape3), mean64, invstd64,
                                      w64, training, dxd.reshape(*shape3))
    dweight, dbias = dweight.copy_to_host().astype(dtype), dbias.copy_to_host().astype(dtype)
    if host:
        dx = dxd.copy_to_host() if out is None else _copy_into(out, dxd)
        return BatchNormGrads(dx, dweight, dbias)
    return BatchNormGrads(dxd, cuda.to_device(dweight), cuda.to_device(dbias))


def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    axis: int = 1,
    training: bool = True,
    out: np.ndarray | None = None,
    backend: str = "auto",
) -> BatchNormGrads:
    """Fused batch-normalization backward pass (PyTorch's ``native_batch_norm_backward``).

    With ``s = sum(dy)`` and ``d = sum((x - mean) * dy)`` per channel: ``dbias = s``,
    ``dweight = d * invstd`` and, in training mode,
    ``dx = (dy - s/n - (x - mean) * d * invstd**2 / n) * invstd * weight``; in eval mode the
    statistics are constants and ``dx = dy * invstd * weight``.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss w.r.t. y (x's shape and dtype).
    x : array_like
        The forward input.
    mean, invstd : array_like of shape (C,)
        As returned by :func:`batch_norm_forward` (float32 or float64).
    weight : array_like of shape (C,), optional
        Affine weight in x's dtype (default 1).
    axis : int
        Channel axis.
    training : bool
        Whether the forward pass used batch statistics.
    out : ndarray, optional
        Destination for dx; may be dy itself.
    backend : {"auto", "cython", "numba", "numpy", "cuda"}
        Kernel implementation ("cuda" for device arrays, as in :func:`batch_norm_forward`).

    Returns
    -------
    BatchNormGrads
        ``(dx, dweight, dbias)``; dweight and dbias in x's dtype, shape (C,).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import batch_norm_forward, batch_norm_backward
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
    >>> y, mean, invstd = batch_norm_forward(x)
    >>> dx, dweight, dbias = batch_norm_backward(np.ones_like(x), x, mean, invstd)
    >>> bool(np.abs(dx).max() < 1e-12), dbias
    (True, array([40., 40., 40.]))
    """
    x = _check_x(x)
    dy = _check_x(dy, "dy")
    if _dispatch.is_cuda_array(dy) != _dispatch.is_cuda_array(x):
        raise TypeError("dy and x: give both as device arrays or both as host arrays")
    if dy.shape != x.shape:
        raise ValueError(f"dy: shape {dy.shape} does not match x's shape {x.shape}")
    if dy.dtype != x.dtype:
        raise ValueError(f"dy: dtype {dy.dtype} does not match x's dtype {x.dtype}")
    ax = normalize_axis(axis, x.ndim)
    outer, channels, inner = _view3(x.shape, ax)
    mean64 = as_channel_vector(_host(mean), "mean", channels)
    invstd64 = as_channel_vector(_host(invstd), "invstd", channels)
    w = as_param(weight, "weight", channels, x.dtype)
    w64 = np.ones(channels) if w is None else w.astype(np.float64)
    out = check_out(out, x.shape, x.dtype, device=_dispatch.is_cuda_array(x))
    _check_out_alias(out, x, dy)
    name = _resolve(backend, x, outer, channels, inner)
    if name == "cuda":
        return _backward_cuda(dy, x, mean64, invstd64, w64, outer, channels, inner,
                              bool(training), out, x.dtype)

    dx = np.empty_like(x) if out is None else out
    x3 = x.reshape(outer, channels, inner)
    g3 = dy.reshape(outer, channels, inner)
    dx3 = dx.reshape(outer, channels, inner)
    kernels = _dispatch.load(FAMILY, name)
    if name == "numpy":
        dx3[...], dweight, dbias = kernels.backward(g3, x3, mean64, invstd64, w64, bool(training))
    else:
        plan = make_plan(outer, channels, inner, get_num_threads(), x.dtype.itemsize, 3)
        dweight, dbias = np.empty(channels), np.empty(channels)
        kernels.backward(g3, x3, mean64, invstd64, w64, bool(training), dx3, dweight, dbias,
                         plan.per_channel, plan.n_chunks, plan.n_threads, plan.stream,
                         plan.row_block)
    return BatchNormGrads(dx, dweight.astype(x.dtype), dbias.astype(x.dtype))
