"""Per-call overhead of fastopt.torch.BatchNorm2d against torch's, interleaved in one process.

``bench/bench_torch.py --only overhead`` times each contender in a process of its own, and on a
VM whose speed drifts between processes the difference of two such timings carries the drift.
Here torch's module, fastopt's module on its C++ kernels and fastopt's module on its Python
kernels alone (``fastopt.torch._cpp``'s kernels switched off) take turns: forward + backward of
an (8, 16, 4, 4) float32 input, ``--calls`` calls per turn, ``--rounds`` rounds, the minimum per
contender.

Usage::

    python bench/torch_overhead_interleaved.py [--rounds 20] [--calls 500]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import fastopt.torch as ft
from fastopt.torch import _cpp


def round_robin(cases: dict, calls: int, rounds: int) -> dict:
    """Minimum µs per call of each case, the cases alternating round by round."""
    for f in cases.values():
        for _ in range(100):
            f()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, f in cases.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args(argv)
    module = _cpp.ensure_loaded()
    if module is None:
        print(f"fastopt.torch's C++ kernels do not run here: {_cpp.problem()}")
        return 1
    x = torch.randn(8, 16, 4, 4, requires_grad=True)
    g = torch.randn(8, 16, 4, 4)
    torch_bn, fastopt_bn = torch.nn.BatchNorm2d(16), ft.BatchNorm2d(16)

    def python_kernels():
        module.set_enabled(False)
        try:
            torch.autograd.backward(fastopt_bn(x), g)
        finally:
            module.set_enabled(True)

    best = round_robin({
        "torch's module": lambda: torch.autograd.backward(torch_bn(x), g),
        "fastopt, C++ kernels": lambda: torch.autograd.backward(fastopt_bn(x), g),
        "fastopt, Python kernels": python_kernels,
    }, args.calls, args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward "
          "of BatchNorm2d (8, 16, 4, 4) float32, min of the rounds\n")
    print("| contender | µs (fwd + bwd) |\n| --- | --- |")
    for name, us in best.items():
        print(f"| {name} | {us:.1f} |")
    extra = (best["fastopt, C++ kernels"] - best["torch's module"]) / 2
    print(f"\nfastopt's module minus torch's: {extra:.1f} µs per call (forward or backward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
