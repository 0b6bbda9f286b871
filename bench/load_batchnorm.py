"""Batch norm under load: each call beside busy-loop neighbour processes, default threads vs one.

The bound: with every CPU kept busy by other processes, no call may take more than 1.5x
its single-thread time measured under the same load. Run::

    python bench/load_batchnorm.py                 # neighbours = CPUs, both backends
    python bench/load_batchnorm.py --neighbours 0  # the same on a quiet machine
    python bench/load_batchnorm.py --no-load-aware # the behaviour before (FASTOPT_LOAD_AWARE=0)

For every (backend, call, shape) the script alternates rounds of the default thread count and of
``set_num_threads(1)`` in one process (so that both see the same load), reports the median times
and their ratio, and exits with status 1 if a ratio exceeds ``--bound``. The neighbours are
started first and stopped at the end. This is a standalone script (not part of bench/run.py),
since its contenders must share the load rather than run one after another.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's fastopt

SHAPES = {
    "nchw-64x64x16x16": ((64, 64, 16, 16), 1),
    "nc-4096x256": ((4096, 256), 1),
    "nhwc-32x16x16x64": ((32, 16, 16, 64), -1),
    "nchw-32x128x28x28": ((32, 128, 28, 28), 1),
}


def _busy() -> None:  # pragma: no cover - runs in the neighbour processes
    while True:
        pass


def _median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(backend: str, rounds: int, shapes: dict) -> list[tuple[str, float, float]]:
    import numpy as np

    import fastopt

    rows = []
    default = fastopt.get_num_threads()
    for name, (shape, axis) in shapes.items():
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        y, dx = np.empty_like(x), np.empty_like(x)
        f = fastopt.batch_norm_forward(x, axis=axis, backend=backend)
        calls = {
            "forward": lambda x=x, y=y, axis=axis: fastopt.batch_norm_forward(
                x, axis=axis, out=y, backend=backend),
            "backward": lambda x=x, dy=dy, dx=dx, axis=axis, f=f: fastopt.batch_norm_backward(
                dy, x, f.mean, f.invstd, axis=axis, out=dx, backend=backend),
        }
        for call, fn in calls.items():
            fn()  # compile / warm up
            many, one = [], []
            for _ in range(5):  # interleaved passes: both see the same load
                fastopt.set_num_threads(default)
                many.append(_median_ms(fn, rounds))
                fastopt.set_num_threads(1)
                one.append(_median_ms(fn, rounds))
            fastopt.set_num_threads(default)
            rows.append((f"{backend:6s} {call:8s} {name}", min(many), min(one)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--neighbours", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--bound", type=float, default=1.5)
    parser.add_argument("--backend", action="append", default=None)
    parser.add_argument("--no-load-aware", action="store_true",
                        help="FASTOPT_LOAD_AWARE=0: every call runs the configured threads")
    parser.add_argument("-k", default="", help="only shapes whose name contains this")
    args = parser.parse_args()
    if args.no_load_aware:
        os.environ["FASTOPT_LOAD_AWARE"] = "0"
    shapes = {k: v for k, v in SHAPES.items() if args.k in k}
    neighbours = [mp.Process(target=_busy, daemon=True) for _ in range(args.neighbours)]
    for p in neighbours:
        p.start()
    try:
        time.sleep(0.5)
        rows = []
        for backend in args.backend or ["cython", "numba"]:
            rows += measure(backend, args.rounds, shapes)
    finally:
        for p in neighbours:
            p.terminate()
            p.join()
    import fastopt

    print(f"{args.neighbours} busy neighbours, {fastopt.get_num_threads()} threads by default, "
          f"load-aware {'off' if args.no_load_aware else 'on'}")
    print(f"{'call':40s} {'default ms':>11s} {'1 thread ms':>12s} {'ratio':>6s}")
    worst = 0.0
    for name, many, one in rows:
        ratio = many / one
        worst = max(worst, ratio)
        flag = "" if ratio <= args.bound else "  > bound"
        print(f"{name:40s} {many:11.3f} {one:12.3f} {ratio:6.2f}{flag}")
    print(f"worst ratio {worst:.2f} (bound {args.bound})")
    return 0 if worst <= args.bound else 1


if __name__ == "__main__":
    sys.exit(main())
