"""The CUDA side of ``torch.ops.fastopt.batch_norm*``, on numba device arrays only.

Nothing here imports torch: the op's CUDA kernel (``_ops.py``) views torch's tensors as numba
device arrays (``__cuda_array_interface__``, no copy), allocates every output and scratch buffer
with torch's caching allocator and calls :func:`forward` / :func:`backward`, which launch
fastopt's batch-norm kernels (``fastopt/batchnorm/_cuda.py``: partial sums, element-wise
passes) and three small per-channel kernels of their own on the given stream. Unlike the public
device path of ``batch_norm_forward`` (host weight, bias and running statistics, statistics
copied to the host per call), every per-channel vector stays on the device here: a call makes
no host transfer and never waits for the device. The same functions run in the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) on the simulator's arrays, which is how CI tests them.

Results follow the CPU op's: statistics accumulate in float64, the outputs ``mean``/``invstd``/
``dweight``/``dbias`` are the float64 values rounded once to their arrays' dtype. One difference:
the running-statistics update is computed in float64 and rounded once, where the CPU op rounds
each term to float32 for float32 buffers (a few ulp apart at most).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
from numba import cuda, float64

from ..batchnorm import _cuda, _scalar


def _shape3(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _device_array(shape, dtype):
    return cuda.device_array(shape, np.dtype(dtype))


@cache
def _kernels():
    """The per-channel kernels (compiled on first use)."""
    finish = cuda.jit(device=True)(_scalar.finish_stats)
    sum_partials = cuda.jit(device=True)(_scalar.sum_partials)
    coefficients = cuda.jit(device=True)(_scalar.grad_coefficients)

    @cuda.jit(device=True)
    def store_channel(c, m, inv, weight, has_weight, bias, has_bias, mean_out, invstd_out,
                      mean64, scale64, bias64):
        # channel c's statistics (x's dtype) and the normalization's float64 coefficients
        mean64[c] = m
        scale64[c] = inv * (float64(weight[c]) if has_weight else 1.0)
        bias64[c] = float64(bias[c]) if has_bias else 0.0
        mean_out[c] = m
        invstd_out[c] = inv

    @cuda.jit
    def finish_train(part, shifts, weight, has_weight, bias, has_bias, n, eps, track,
                     running_mean, running_var, momentum, mean_out, invstd_out, new_mean,
                     new_var, mean64, scale64, bias64):
        c = cuda.grid(1)
        if c >= mean_out.shape[0]:
            return
        s1, s2 = sum_partials(part, c)
        m, v, inv = finish(s1, s2, shifts[c], n, eps)
        store_channel(c, m, inv, weight, has_weight, bias, has_bias, mean_out, invstd_out,
                      mean64, scale64, bias64)
        if track:
            new_mean[c] = float64(running_mean[c]) * (1.0 - momentum) + momentum * m
            new_var[c] = (float64(running_var[c]) * (1.0 - momentum)
                          + momentum * v * (n / (n - 1.0)))

    @cuda.jit
    def prepare_eval(running_mean, running_var, weight, has_weight, bias, has_bias, eps,
                     mean_out, invstd_out, mean64, scale64, bias64):
        c = cuda.grid(1)
        if c >= mean_out.shape[0]:
            return
        m = float64(running_mean[c])
        inv = 1.0 / math.sqrt(float64(running_var[c]) + eps)
        store_channel(c, m, inv, weight, has_weight, bias, has_bias, mean_out, invstd_out,
                      mean64, scale64, bias64)

    @cuda.jit
    def finish_backward(part, invstd, weight, has_weight, n, training, dweight, dbias, ca, cb,
                        cc):
        c = cuda.grid(1)
        if c >= dbias.shape[0]:
            return
        s, d = sum_partials(part, c)
        inv = float64(invstd[c])
        w = float64(weight[c]) if has_weight else 1.0
        dbias[c] = s
        dweight[c] = d * inv
        a, b, e = coefficients(s, d, inv, w, n, training)
        ca[c] = a
        cb[c] = b
        cc[c] = e

    return finish_train, prepare_eval, finish_backward


def forward(x, weight, bias, running_mean, running_var, training: bool, momentum: float,
            eps: float, axis: int, y, mean, invstd, new_running_mean=None,
            new_running_var=None, empty: Callable = _device_array, stream=0) -> None:
    """Batch-norm forward on device arrays, already checked by the caller.

    ``x`` and ``y``: C-contiguous, one shape and float dtype, channel axis ``axis``; ``weight``,
    ``bias``: (C,) or None; ``running_mean``/``running_var``: (C,), both or neither, required
    when not training (read only). Written: ``y``; ``mean``/``invstd`` ((C,), the batch
    statistics in training, those of the running statistics in eval); in training with running
    statistics, ``new_running_mean``/``new_running_var`` ((C,)) get the updated values.
    ``empty(shape, dtype)`` allocates the float64 scratch (a numba device array); every kernel
    goes to ``stream``.
    """
    outer, channels, inner = _shape3(tuple(x.shape), axis)
    x3, y3 = x.reshape(outer, channels, inner), y.reshape(outer, channels, inner)
    tpb = _cuda.THREADS_PER_BLOCK
    k = _cuda._kernels(tpb)
    finish_train, prepare_eval, _ = _kernels()
    partial_grid, blocks, per_channel, elementwise = _cuda._grids(outer, channels, inner, tpb)
    scratch = empty((4, channels), np.float64)
    shifts, mean64, scale64, bias64 = scratch[0], scratch[1], scratch[2], scratch[3]
    # None becomes a flag and a placeholder array the kernel never reads (or writes).
    w, b = (mean64 if weight is None else weight), (mean64 if bias is None else bias)
    if training:
        part = empty((blocks, 2, channels), np.float64)
        track = running_mean is not None
        rm, rv = (running_mean, running_var) if track else (mean64, mean64)
        nrm, nrv = (new_running_mean, new_running_var) if track else (mean64, mean64)
        k["shifts"][per_channel, tpb, stream](x3, shifts)
        sums = k["sums_rows"] if inner == 1 else k["sums_runs"]
        sums[partial_grid, tpb, stream](x3, shifts, part)
        finish_train[per_channel, tpb, stream](
            part, shifts, w, weight is not None, b, bias is not None, float(outer * inner),
            float(eps), track, rm, rv, float(momentum), mean, invstd, nrm, nrv, mean64, scale64,
            bias64)
    else:
        prepare_eval[per_channel, tpb, stream](
            running_mean, running_var, w, weight is not None, b, bias is not None, float(eps),
            mean, invstd, mean64, scale64, bias64)
    k["normalize"][elementwise, tpb, stream](x3, y3, mean64, scale64, bias64)


def backward(dy, x, weight, mean, invstd, training: bool, axis: int, dx, dweight, dbias,
             empty: Callable = _device_array, stream=0) -> None:
    """fastopt's fused batch-norm backward on device arrays, already checked by the caller.

    ``dy``, ``x``, ``dx``: C-contiguous, one shape and float dtype, channel axis ``axis``;
    ``weight``: (C,) or None; ``mean``/``invstd``: (C,) float32/float64. Written: ``dx`` and
    the (C,) ``dweight``/``dbias``. ``empty`` and ``stream`` as in :func:`forward`.
    """
    outer, channels, inner = _shape3(tuple(x.shape), axis)
    shape3 = (outer, channels, inner)
    dy3, x3, dx3 = dy.reshape(shape3), x.reshape(shape3), dx.reshape(shape3)
    tpb = _cuda.THREADS_PER_BLOCK
    k = _cuda._kernels(tpb)
    _, _, finish_backward = _kernels()
    partial_grid, blocks, per_channel, elementwise = _cuda._grids(outer, channels, inner, tpb)
    part = empty((blocks, 2, channels), np.float64)
    coef = empty((3, channels), np.float64)
    ca, cb, cc = coef[0], coef[1], coef[2]
    sums = k["grad_sums_rows"] if inner == 1 else k["grad_sums_runs"]
    sums[partial_grid, tpb, stream](dy3, x3, mean, part)
    finish_backward[per_channel, tpb, stream](
        part, invstd, ca if weight is None else weight, weight is not None,
        float(outer * inner), bool(training), dweight, dbias, ca, cb, cc)
    k["grad_input"][elementwise, tpb, stream](dy3, x3, dx3, mean, ca, cb, cc)
