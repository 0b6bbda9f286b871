"""numba.cuda batch-norm kernels for device arrays (and the CUDA simulator).

Same contract as the CPU kernels, on device arrays viewed as ``(outer, C, inner)``:

1. partial sums per (block, channel) in float64 (a fixed tree reduction in shared memory, or one
   thread per channel walking rows for ``inner == 1`` so that reads coalesce);
2. one thread per channel combines the partials in block order (deterministic) with the scalar
   helpers shared with the Numba CPU kernels (``_scalar.py``);
3. an element-wise pass writes y (or dx).

The three entry points have the interface of every batch-norm backend (``_cython``,
``_numba``, ``fastopt.reference.batchnorm``), with x, y, dy, dx on the device and the per-channel
vectors, inputs and outputs alike, host float64 arrays.

``THREADS_PER_BLOCK`` (a power of two) is read when kernels are first built; tests shrink it so
that multi-block logic runs on tiny inputs in the simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda, float64

from . import _scalar

THREADS_PER_BLOCK = 256
MAX_PARTIAL_BLOCKS = 64


@cache
def _kernels(tpb: int):
    """Compile (lazily, once per block size) the kernels for ``tpb`` threads per block."""
    shift_of = cuda.jit(device=True)(_scalar.channel_shift)
    finish = cuda.jit(device=True)(_scalar.finish_stats)
    sum_partials = cuda.jit(device=True)(_scalar.sum_partials)
    coefficients = cuda.jit(device=True)(_scalar.grad_coefficients)
    normalize = cuda.jit(device=True)(_scalar.normalize)
    grad_input = cuda.jit(device=True)(_scalar.grad_input)

    @cuda.jit(device=True)
    def block_sum2(a, b, sh_a, sh_b):
        t = cuda.threadIdx.x
        sh_a[t] = a
        sh_b[t] = b
        cuda.syncthreads()
        step = tpb // 2
        while step > 0:
            if t < step:
                sh_a[t] += sh_a[t + step]
                sh_b[t] += sh_b[t + step]
            cuda.syncthreads()
            step //= 2

    @cuda.jit(device=True)
    def channel_of(j, C, inner):
        """(o, c, i) of flat index j of an (outer, C, inner) array."""
        o = j // (C * inner)
        r = j - o * C * inner
        c = r // inner
        return o, c, r - c * inner

    @cuda.jit
    def shifts_kernel(x, shifts):
        c = cuda.grid(1)
        if c < shifts.shape[0]:
            shifts[c] = shift_of(float64(x[0, c, 0]))

    @cuda.jit
    def sums_runs(x, shifts, part):
        # grid (C, blocks): block `blk` of channel c strides over the channel's outer*inner values
        c = cuda.blockIdx.x
        blk = cuda.blockIdx.y
        outer, _, inner = x.shape
        n = outer * inner
        s1 = 0.0
        s2 = 0.0
        j = blk * tpb + cuda.threadIdx.x
        while j < n:
            o = j // inner
            v = float64(x[o, c, j - o * inner]) - shifts[c]
            s1 += v
            s2 += v * v
            j += cuda.gridDim.y * tpb
        sh_a = cuda.shared.array(tpb, float64)
        sh_b = cuda.shared.array(tpb, float64)
        block_sum2(s1, s2, sh_a, sh_b)
        if cuda.threadIdx.x == 0:
            part[blk, 0, c] = sh_a[0]
            part[blk, 1, c] = sh_b[0]

    @cuda.jit
    def sums_rows(x, shifts, part):
        # inner == 1: thread per channel, block row `blk` walks rows blk, blk + gridDim.y, ...
        c = cuda.blockIdx.x * tpb + cuda.threadIdx.x
        blk = cuda.blockIdx.y
        if c >= x.shape[1]:
            return
        s1 = 0.0
        s2 = 0.0
        for o in range(blk, x.shape[0], cuda.gridDim.y):
            v = float64(x[o, c, 0]) - shifts[c]
            s1 += v
            s2 += v * v
        part[blk, 0, c] = s1
        part[blk, 1, c] = s2

    @cuda.jit
    def finish_kernel(part, shifts, weight, n, eps, mean, var, invstd, scale):
        c = cuda.grid(1)
        if c >= mean.shape[0]:
            return
        s1, s2 = sum_partials(part, c)
        m, v, inv = finish(s1, s2, shifts[c], n, eps)
        mean[c] = m
        var[c] = v
        invstd[c] = inv
        scale[c] = inv * weight[c]

    @cuda.jit
    def normalize_kernel(x, y, mean, scale, bias):
        outer, C, inner = x.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for j in range(start, outer * C * inner, stride):
            o, c, i = channel_of(j, C, inner)
            y[o, c, i] = normalize(float64(x[o, c, i]), mean[c], scale[c], bias[c])

    @cuda.jit
    def grad_sums_runs(dy, x, mean, part):
        c = cuda.blockIdx.x
        blk = cuda.blockIdx.y
        outer, _, inner = x.shape
        n = outer * inner
        s = 0.0
        d = 0.0
        j = blk * tpb + cuda.threadIdx.x
        while j < n:
            o = j // inner
            i = j - o * inner
            g = float64(dy[o, c, i])
            s += g
            d += (float64(x[o, c, i]) - mean[c]) * g
            j += cuda.gridDim.y * tpb
        sh_a = cuda.shared.array(tpb, float64)
        sh_b = cuda.shared.array(tpb, float64)
        block_sum2(s, d, sh_a, sh_b)
        if cuda.threadIdx.x == 0:
            part[blk, 0, c] = sh_a[0]
            part[blk, 1, c] = sh_b[0]

    @cuda.jit
    def grad_sums_rows(dy, x, mean, part):
        c = cuda.blockIdx.x * tpb + cuda.threadIdx.x
        blk = cuda.blockIdx.y
        if c >= x.shape[1]:
            return
        s = 0.0
        d = 0.0
        for o in range(blk, x.shape[0], cuda.gridDim.y):
            g = float64(dy[o, c, 0])
            s += g
            d += (float64(x[o, c, 0]) - mean[c]) * g
        part[blk, 0, c] = s
        part[blk, 1, c] = d

    @cuda.jit
    def grad_finish_kernel(part, mean, invstd, weight, n, training, dweight, dbias, ca, cb, cc):
        c = cuda.grid(1)
        if c >= dbias.shape[0]:
            return
        s, d = sum_partials(part, c)
        dbias[c] = s
        dweight[c] = d * invstd[c]
        a, b, e = coefficients(s, d, invstd[c], weight[c], n, training)
        ca[c] = a
        cb[c] = b
        cc[c] = e

    @cuda.jit
    def grad_input_kernel(dy, x, dx, mean, ca, cb, cc):
        outer, C, inner = x.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for j in range(start, outer * C * inner, stride):
            o, c, i = channel_of(j, C, inner)
            dx[o, c, i] = grad_input(float64(dy[o, c, i]), float64(x[o, c, i]), mean[c], ca[c],
                                     cb[c], cc[c])

    return dict(
        shifts=shifts_kernel, sums_runs=sums_runs, sums_rows=sums_rows, finish=finish_kernel,
        normalize=normalize_kernel, grad_sums_runs=grad_sums_runs, grad_sums_rows=grad_sums_rows,
        grad_finish=grad_finish_kernel, grad_input=grad_input_kernel,
    )


def _grids(outer: int, channels: int, inner: int, tpb: int):
    """Launch shapes: partial-sum grid, partial blocks, per-channel grid, element-wise grid."""
    n = outer * inner
    if inner == 1:
        blocks = max(1, min(MAX_PARTIAL_BLOCKS, outer))
        partial_grid = (math.ceil(channels / tpb), blocks)
    else:
        blocks = max(1, min(MAX_PARTIAL_BLOCKS, math.ceil(n / (4 * tpb))))
        partial_grid = (channels, blocks)
    per_channel = math.ceil(channels / tpb)
    elementwise = max(1, min(65535, math.ceil(outer * channels * inner / tpb)))
    return partial_grid, blocks, per_channel, elementwise


def forward_train(x, weight, bias, eps, y, mean, var, invstd, plan):
    """Training forward: x, y device arrays; weight, bias host float64; OUT host float64 mean,
    var, invstd (copied back). ``plan`` is accepted for the shared interface and ignored."""
    del plan
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    outer, channels, inner = x.shape
    partial_grid, blocks, per_c, elementwise = _grids(outer, channels, inner, tpb)
    w, b = cuda.to_device(weight), cuda.to_device(bias)
    shifts = cuda.device_array(channels, np.float64)
    part = cuda.device_array((blocks, 2, channels), np.float64)
    dmean, dvar, dinvstd, scale = (cuda.device_array(channels, np.float64) for _ in range(4))
    k["shifts"][per_c, tpb](x, shifts)
    sums = k["sums_rows"] if inner == 1 else k["sums_runs"]
    sums[partial_grid, tpb](x, shifts, part)
    k["finish"][per_c, tpb](part, shifts, w, float(outer * inner), eps, dmean, dvar, dinvstd,
                            scale)
    k["normalize"][elementwise, tpb](x, y, dmean, scale, b)
    dmean.copy_to_host(mean)
    dvar.copy_to_host(var)
    dinvstd.copy_to_host(invstd)


def forward_eval(x, mean, invstd, weight, bias, y, plan):
    """Normalize device arrays with host float64 statistics:
    y = (x - mean) * invstd * weight + bias."""
    del plan
    scale = invstd * weight
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    _, _, _, elementwise = _grids(*x.shape, tpb)
    k["normalize"][elementwise, tpb](x, y, cuda.to_device(mean), cuda.to_device(scale),
                                     cuda.to_device(bias))


def backward(dy, x, mean, invstd, weight, training, dx, dweight, dbias, plan):
    """Backward: dy, x, dx device arrays; mean/invstd/weight host float64 vectors; OUT host
    float64 dweight, dbias (copied back)."""
    del plan
    tpb = THREADS_PER_BLOCK
    k = _kernels(tpb)
    outer, channels, inner = x.shape
    partial_grid, blocks, per_c, elementwise = _grids(outer, channels, inner, tpb)
    m, inv, w = cuda.to_device(mean), cuda.to_device(invstd), cuda.to_device(weight)
    part = cuda.device_array((blocks, 2, channels), np.float64)
    ddweight, ddbias, ca, cb, cc = (cuda.device_array(channels, np.float64) for _ in range(5))
    sums = k["grad_sums_rows"] if inner == 1 else k["grad_sums_runs"]
    sums[partial_grid, tpb](dy, x, m, part)
    k["grad_finish"][per_c, tpb](part, m, inv, w, float(outer * inner), bool(training), ddweight,
                                 ddbias, ca, cb, cc)
    k["grad_input"][elementwise, tpb](dy, x, dx, m, ca, cb, cc)
    ddweight.copy_to_host(dweight)
    ddbias.copy_to_host(dbias)
