"""Time of fastopt.symmetry.align (weight matching) on two [784, 1024, 1024, 10] float32 MLPs,
and the loss barrier before/after alignment of two MLPs [64, 256, 256, 10] trained on the digits.

Run as a script (one process; numpy's BLAS at full speed)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bench_symmetry.py

Three pairs are aligned: independent random initialisations (the worst case: no structure, the
most coordinate-ascent sweeps), a permuted copy with 1% noise, and a permuted exact copy.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fastopt import MLP
from fastopt.datasets import load_digits
from fastopt.symmetry import align, interpolation_barrier, permute


def _best(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def align_times() -> list[str]:
    net = MLP([784, 1024, 1024, 10], activation="relu", dtype=np.float32)
    rng = np.random.default_rng(0)
    a = net.init(0)
    shuffle = [rng.permutation(1024), rng.permutation(1024)]
    noisy = permute(net, a, shuffle)
    noisy = noisy + (0.01 * rng.standard_normal(noisy.size)).astype(np.float32)
    pairs = {"independent random inits": net.init(1), "permuted copy + 1% noise": noisy,
             "permuted exact copy": permute(net, a, shuffle)}
    lines = ["| pair | align (weights) s |", "|---|---|"]
    for name, b in pairs.items():
        lines.append(f"| {name} | {_best(lambda b=b: align(net, a, b)):.3f} |")
    return lines


def digits_barrier(width: int = 256, epochs: int = 30) -> list[str]:
    X, y = load_digits()
    order = np.random.default_rng(0).permutation(len(X))
    train, test = order[:1400], order[1400:]
    net = MLP([64, width, width, 10], activation="relu")

    def sgd(seed):
        theta = net.init(seed)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            batches = rng.permutation(train)
            for i in range(0, len(batches), 64):
                b = batches[i:i + 64]
                theta -= 0.1 * net.loss_and_grad(theta, X[b], y[b])[1]
        return theta

    a, b = sgd(1), sgd(2)
    lines = ["| data | method | barrier before | barrier after | min test accuracy before | "
             "min test accuracy after |", "|---|---|---|---|---|---|"]
    for method in ("weights", "activations"):
        r = interpolation_barrier(net, a, b, X[train], y[train], points=25, align=method)
        rt = interpolation_barrier(net, a, b, X[test], y[test], points=25, align=method)
        lines.append(f"| train | {method} | {r.barrier:.3f} | {r.aligned_barrier:.3f} | "
                     f"{rt.accuracy.min():.3f} | {rt.aligned_accuracy.min():.3f} |")
    return lines


if __name__ == "__main__":
    print("\n".join(align_times()))
    if "--quick" not in sys.argv:
        print()
        print("\n".join(digits_barrier()))
