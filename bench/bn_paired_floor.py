"""Batch norm against its memory floor, paired call by call in one process.

``bench/run.py --family batchnorm`` times each contender in a process of its own; on a VM whose
memory bandwidth drifts by up to 1.5x between processes, the ratio of two such timings carries
that drift. Here fastopt's kernel and the floor (``_floor.py``: the same passes over the same
arrays, no arithmetic) alternate back to back in one process, on the same arrays and thread
count (Numba's OpenMP layer and the Cython kernels share one libgomp thread pool, so neither
waits for the other's threads); the ratio of each pair is taken and the median and quartiles of
the ratios are reported. Only fastopt's own code and
the floor run here, so no other library shares the process. A second forward floor widens
every value to float64 and sums it and its square in its read pass (``_floor.py``'s
``forward_floor_float64_stats``): the arithmetic float64 statistics cannot avoid, which is what
bounds inputs that stay in cache. The "float64 floor" rows (``forward_floor_float64``,
``backward_floor_float64``) add the element-wise pass's float64 arithmetic too (widen, multiply-add
with constant coefficients, narrow): the least work fastopt's kernels, which evaluate every
formula in float64, can do on those bytes.

Usage::

    python bench/bn_paired_floor.py               # the four benchmark shapes, 40 pairs each
    python bench/bn_paired_floor.py --pairs 5 --quick
    FASTOPT_SIMD=avx2 python bench/bn_paired_floor.py   # the AVX2 variant on an AVX-512 CPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _floor import (  # noqa: E402
    backward_floor,
    backward_floor_float64,
    forward_floor,
    forward_floor_float64,
    forward_floor_float64_stats,
)
from bench_batchnorm import SHAPES, make  # noqa: E402

import fastopt  # noqa: E402

QUICK_SHAPES = {"nchw-8x16x14x14": ((8, 16, 14, 14), 1), "nc-256x64": ((256, 64), 1)}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(kernel, floor, pairs: int) -> dict:
    for _ in range(3):
        kernel()
        floor()
    ratios, tk, tf = [], [], []
    for i in range(pairs):
        first, second = (kernel, floor) if i % 2 == 0 else (floor, kernel)
        a, b = _timed(first), _timed(second)
        k, f = (a, b) if i % 2 == 0 else (b, a)
        tk.append(k)
        tf.append(f)
        ratios.append(k / f)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {"kernel_ms": statistics.median(tk) * 1e3, "floor_ms": statistics.median(tf) * 1e3,
            "ratio": statistics.median(ratios), "q1": q[0], "q3": q[2]}


def measure(shape: tuple[int, ...], axis: int, backend: str, pairs: int) -> dict:
    """Paired forward and backward figures of one shape."""
    x, dy, w, b = make(shape, axis)
    y, dx = np.empty_like(x), np.empty_like(x)
    _, mean, invstd = fastopt.batch_norm_forward(x, w, b, axis=axis)
    return {
        "forward": paired(
            lambda: fastopt.batch_norm_forward(x, w, b, axis=axis, out=y, backend=backend),
            lambda: forward_floor(x, y), pairs),
        "forward (float64-stats floor)": paired(
            lambda: fastopt.batch_norm_forward(x, w, b, axis=axis, out=y, backend=backend),
            lambda: forward_floor_float64_stats(x, y), pairs),
        "forward (float64 floor)": paired(
            lambda: fastopt.batch_norm_forward(x, w, b, axis=axis, out=y, backend=backend),
            lambda: forward_floor_float64(x, y), pairs),
        "backward": paired(
            lambda: fastopt.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, out=dx,
                                                backend=backend),
            lambda: backward_floor(x, dy, dx), pairs),
        "backward (float64 floor)": paired(
            lambda: fastopt.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, out=dx,
                                                backend=backend),
            lambda: backward_floor_float64(x, dy, dx), pairs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="small shapes (a check that it runs)")
    parser.add_argument("--backend", default="cython", choices=("cython", "numba"))
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    simd = os.environ.get("FASTOPT_SIMD", "auto")
    print(f"fastopt-{args.backend} against its floor, paired in one process "
          f"(FASTOPT_SIMD={simd}, {fastopt.get_num_threads()} threads, {args.pairs} pairs)\n")
    print("| shape | pass | fastopt ms | floor ms | fastopt / floor (median) | quartiles |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (shape, axis) in shapes.items():
        for step, r in measure(shape, axis, args.backend, args.pairs).items():
            print(f"| {name} | {step} | {r['kernel_ms']:.3f} | {r['floor_ms']:.3f} | "
                  f"{r['ratio']:.2f}x | {r['q1']:.2f}-{r['q3']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
