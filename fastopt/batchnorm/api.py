"""Public batch-norm functions: validate, pick the backend and the work split, call one kernel."""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import NamedTuple

import numpy as np

from .. import _dispatch
from .._threads import get_num_threads, threads_for_call
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
    reject_unsupported_subclass,
)
from ._atomic import deferred_interrupts
from ._plan import Plan, make_plan

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
    reject_unsupported_subclass(x, name)
    arr = as_device_array(x, name) if _dispatch.is_cuda_array(x) else as_float_array(x, name)
    if arr.ndim < 2:
        raise ValueError(
            f"{name}: expected at least 2 dimensions (N, C, ...), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: is empty (shape {arr.shape})")
    return arr


def _overlap(a: object, b: object) -> bool:
    """True if host arrays a and b share memory (exactly, within a work bound; past it, assume
    they do)."""
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=1 << 20))
    except np.exceptions.TooHardError:
        return True


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b are views of exactly the same elements in the same layout (in-place use)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def check_overlap(outputs: dict, inputs: dict, in_place: dict | None = None) -> None:
    """Raise ValueError if an output overlaps an input or another output.

    ``outputs`` and ``inputs`` map argument names to the arrays the caller passed (before any
    copy); ``in_place`` maps an output name to the input names it may be exactly (same data,
    shape and strides), which is allowed."""
    in_place = in_place or {}
    names = list(outputs)
    for i, out_name in enumerate(names):
        out = outputs[out_name]
        if out is None:
            continue
        for other in names[i + 1:]:
            if _overlap(out, outputs[other]):
                raise ValueError(f"{out_name} overlaps {other} in memory; give them "
                                 "separate arrays")
        for in_name, arr in inputs.items():
            if arr is None or not _overlap(out, arr):
                continue
            if in_name in in_place.get(out_name, ()) and _same_array(out, arr):
                continue
            allowed = in_place.get(out_name, ())
            hint = (f" (it may be {' or '.join(allowed)} itself, element for element)"
                    if allowed else "")
            raise ValueError(f"{out_name} overlaps {in_name} in memory{hint}; give "
                             f"{out_name} an array of its own")


def _weight_bias(weight, bias, channels: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    reject_unsupported_subclass(weight, "weight")
    reject_unsupported_subclass(bias, "bias")
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
        Destination for y (x's shape and dtype, C-contiguous); may be exactly x (in place), must
        not otherwise share memory with an input or the running statistics.
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
        x is not float32/float64 (integer, bool, float16, complex); a masked array or an
        ``np.matrix`` for any argument.
    ValueError
        Bad shapes, axis, eps, momentum, out=, a single value per channel in training, missing
        running statistics in eval mode; an output (out, running_mean, running_var) that shares
        memory with an input or with another output (out may be exactly x). Nothing is modified
        when an error is raised.

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
    given = dict(x=x, weight=weight, bias=bias)
    for name, value in (("running_mean", running_mean), ("running_var", running_var),
                        ("out", out)):
        reject_unsupported_subclass(value, name)
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
    # against the arrays as given (a non-contiguous x was copied above)
    check_overlap(dict(out=out, running_mean=rm, running_var=rv), given, {"out": ("x",)})
    if check_finite:
        check_all_finite(_host(x), "x")
    name = _resolve(backend, x, outer, channels, inner)
    kernels = _dispatch.load(FAMILY, name)
    plan = _plan_for(outer, channels, inner, x.dtype.itemsize, 2)
    device = name == "cuda"
    if device:
        from numba import cuda

        host = not _dispatch.is_cuda_array(x)
        x = _to_device(x)
        y = cuda.device_array(x.shape, x.dtype) if out is None or host else out
    else:
        y = np.empty_like(x) if out is None else out
    mean, invstd = _run_forward(kernels, x.reshape(outer, channels, inner), w64, b64, training,
                                rm, rv, momentum, eps, y.reshape(outer, channels, inner), plan)
    mean, invstd = mean.astype(x.dtype), invstd.astype(x.dtype)
    if device:
        if host:
            y = y.copy_to_host() if out is None else _copy_into(out, y)
            return BatchNormOutput(y, mean, invstd)
        return BatchNormOutput(y, cuda.to_device(mean), cuda.to_device(invstd))
    return BatchNormOutput(y, mean, invstd)


def _run_forward(kernels, x3, w64, b64, training: bool, rm, rv, momentum: float, eps: float,
                 y3, plan) -> tuple[np.ndarray, np.ndarray]:
    """The forward on validated (outer, C, inner) arrays: y3 filled, running statistics
    updated; returns the float64 (mean, invstd)."""
    channels = x3.shape[1]
    if training:
        mean, var, invstd = np.empty(channels), np.empty(channels), np.empty(channels)
        kernels.forward_train(x3, w64, b64, eps, y3, mean, var, invstd, plan)
        if rm is not None:
            _update_running(rm, rv, mean, var, momentum, x3.shape[0] * x3.shape[2])
    else:
        mean = rm.astype(np.float64)
        invstd = 1.0 / np.sqrt(rv.astype(np.float64) + eps)
        kernels.forward_eval(x3, mean, invstd, w64, b64, y3, plan)
    return mean, invstd


def kernels_for(outer: int, channels: int, inner: int, itemsize: int, n_arrays: int,
                backend: str) -> tuple[ModuleType, Plan]:
    """The host kernel module and the work plan of a call on an (outer, C, inner) array, for a
    front end that holds its own buffers and has checked its inputs (fastopt.torch's op).
    ``n_arrays``: 2 for a forward, 3 for a backward; ``backend``: "auto" or a CPU backend."""
    name = _dispatch.resolve(FAMILY, backend, prefer=lambda: _prefer(outer, channels, inner),
                             cuda_input=False, supported=("cython", "numba", "numpy"))
    return _dispatch.load(FAMILY, name), _plan_for(outer, channels, inner, itemsize, n_arrays)


_cached_plan = functools.lru_cache(maxsize=256)(make_plan)


def _plan_for(outer: int, channels: int, inner: int, itemsize: int, n_arrays: int):
    """The work split for the configured thread count (which fixes the results), run on the
    threads other processes leave free (``threads_for_call``)."""
    plan = _cached_plan(outer, channels, inner, get_num_threads(), itemsize, n_arrays)
    return plan._replace(n_threads=threads_for_call(plan.n_threads))


def running_update(rm: np.ndarray, rv: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   momentum: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The updated running statistics as new arrays (rm's dtype): ``(1 - momentum) * rm +
    momentum * mean`` and the same for rv with the unbiased batch variance ``var * n / (n - 1)``
    (float64 mean and var, rounded to rm's dtype before the sum)."""
    new_mean = rm * (1.0 - momentum)
    new_mean += (momentum * mean).astype(rm.dtype)
    new_var = rv * (1.0 - momentum)
    new_var += (momentum * var * (n / (n - 1))).astype(rv.dtype)
    return new_mean, new_var


def _update_running(rm, rv, mean, var, momentum: float, n: int) -> None:
    """The running-statistics update, computed into temporaries, then committed together (an
    interrupt lands before or after the commit, never between the two arrays)."""
    new_mean, new_var = running_update(rm, rv, mean, var, momentum, n)
    with deferred_interrupts():
        rm[...] = new_mean
        rv[...] = new_var


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


def _copy_into(out: np.ndarray, device_array) -> np.ndarray:
    out[...] = device_array.copy_to_host()
    return out


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
        Destination for dx; may be exactly dy or x (in place), must not otherwise share memory
        with an input (ValueError).
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
    given = dict(dy=dy, x=x, mean=mean, invstd=invstd, weight=weight)
    reject_unsupported_subclass(out, "out")
    reject_unsupported_subclass(weight, "weight")
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
    check_overlap(dict(out=out), given, {"out": ("dy", "x")})
    name = _resolve(backend, x, outer, channels, inner)
    kernels = _dispatch.load(FAMILY, name)
    plan = _plan_for(outer, channels, inner, x.dtype.itemsize, 3)
    device = name == "cuda"
    if device:
        from numba import cuda

        host = not _dispatch.is_cuda_array(x)
        x, dy = _to_device(x), _to_device(dy)
        dx = cuda.device_array(x.shape, x.dtype) if out is None or host else out
    else:
        dx = np.empty_like(x) if out is None else out
    shape3 = (outer, channels, inner)
    dweight, dbias = np.empty(channels), np.empty(channels)
    kernels.backward(dy.reshape(shape3), x.reshape(shape3), mean64, invstd64, w64,
                     bool(training), dx.reshape(shape3), dweight, dbias, plan)
    dweight, dbias = dweight.astype(x.dtype), dbias.astype(x.dtype)
    if device:
        if host:
            dx = dx.copy_to_host() if out is None else _copy_into(out, dx)
            return BatchNormGrads(dx, dweight, dbias)
        return BatchNormGrads(dx, cuda.to_device(dweight), cuda.to_device(dbias))
    return BatchNormGrads(dx, dweight, dbias)
