"""Batch norm: fastopt (Cython, Numba) vs the numpy reference vs PyTorch vs the bandwidth floor.

float32; run through ``python bench/run.py --family batchnorm`` so that each contender gets a
process of its own. The floor contender streams x with fastopt's thread count: forward = a read
pass + a read-write pass; backward = two read passes + a read-read-write pass.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastopt

SHAPES = {
    "nchw-128x256x28x28": ((128, 256, 28, 28), 1),
    "nc-4096x1024": ((4096, 1024), 1),
    "nhwc-128x28x28x256": ((128, 28, 28, 256), -1),
    "nchw-64x64x32x32": ((64, 64, 32, 32), 1),
}
CONTENDERS = ["fastopt-cython", "fastopt-numba", "numpy", "torch", "floor"]


def make(shape, axis):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    c = shape[axis]
    return x, dy, np.ones(c, np.float32), np.zeros(c, np.float32)


def run(benchmark, fn, rounds):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=2)


def setup_torch(x, dy, w, b, axis):
    import torch

    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    if axis == -1 and x.ndim == 4:  # NHWC memory as a channels_last NCHW tensor
        tx, tdy = tx.permute(0, 3, 1, 2), tdy.permute(0, 3, 1, 2)
    return torch, tx, tdy, torch.from_numpy(w), torch.from_numpy(b)


@pytest.mark.parametrize("contender", CONTENDERS, indirect=True)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_forward(benchmark, contender, shape_name):
    shape, axis = SHAPES[shape_name]
    benchmark.group = f"bn-forward {shape_name}"
    x, dy, w, b = make(shape, axis)
    y = np.empty_like(x)
    rounds = 3 if contender == "numpy" else 20
    if contender.startswith("fastopt"):
        backend = contender.split("-")[1]
        run(benchmark, lambda: fastopt.batch_norm_forward(x, w, b, axis=axis, out=y,
                                                          backend=backend), rounds)
    elif contender == "numpy":
        run(benchmark, lambda: fastopt.batch_norm_forward(x, w, b, axis=axis, backend="numpy"),
            rounds)
    elif contender == "torch":
        torch, tx, _, tw, tb = setup_torch(x, dy, w, b, axis)
        run(benchmark, lambda: torch.ops.aten.native_batch_norm(tx, tw, tb, None, None, True,
                                                                 0.1, 1e-5), rounds)
    else:
        from _floor import forward_floor

        run(benchmark, lambda: forward_floor(x, y), rounds)


@pytest.mark.parametrize("contender", CONTENDERS, indirect=True)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_backward(benchmark, contender, shape_name):
    shape, axis = SHAPES[shape_name]
    benchmark.group = f"bn-backward {shape_name}"
    x, dy, w, b = make(shape, axis)
    dx = np.empty_like(x)
    rounds = 3 if contender == "numpy" else 20
    if contender.startswith("fastopt") or contender == "numpy":
        backend = contender.split("-")[1] if contender != "numpy" else "numpy"
        _, mean, invstd = fastopt.batch_norm_forward(x, w, b, axis=axis)
        kwargs = dict(axis=axis, backend=backend, out=dx if backend != "numpy" else None)
        run(benchmark, lambda: fastopt.batch_norm_backward(dy, x, mean, invstd, w, **kwargs),
            rounds)
    elif contender == "torch":
        torch, tx, tdy, tw, tb = setup_torch(x, dy, w, b, axis)
        _, mean, invstd = torch.ops.aten.native_batch_norm(tx, tw, tb, None, None, True, 0.1,
                                                           1e-5)
        mask = [True, True, True]
        run(benchmark, lambda: torch.ops.aten.native_batch_norm_backward(
            tdy, tx, tw, None, None, mean, invstd, True, 1e-5, mask), rounds)
    else:
        from _floor import backward_floor

        run(benchmark, lambda: backward_floor(x, dy, dx), rounds)
