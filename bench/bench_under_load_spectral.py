"""spectral_norm and spectral_radius beside busy-loop neighbours (speed under load).

Starts one ``while True: pass`` process per CPU this process may use (two on a 2-core machine),
then times each solver alternately with fastopt's default thread count and with
``set_num_threads(1)``, in this one process under the same load, and prints the ratio
default / one-thread (the bound is 1.5x). A quiet-machine run of the same calls comes first
(``--no-quiet`` skips it) so the two regimes can be compared in one run::

    PYTHONPATH=. python bench/bench_under_load_spectral.py                 # 600x600 float32
    PYTHONPATH=. python bench/bench_under_load_spectral.py --n 200 --reps 5 --backend numba
    PYTHONPATH=. python bench/bench_under_load_spectral.py --check         # exit 1 above 1.5x

Not a pytest suite (it needs the whole machine); bench/run.py does not run it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

import fastopt
from fastopt import spectral_norm, spectral_radius

BOUND = 1.5


def _spin() -> None:  # pragma: no cover - runs in the neighbour processes
    while True:
        pass


def _cases(n: int, backend: str):
    rng = np.random.default_rng(0)
    Wn = rng.standard_normal((n, n)).astype(np.float32)
    Wr = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    return {
        f"spectral_norm {n}x{n} float32": lambda: spectral_norm(Wn, backend=backend),
        f"spectral_radius {n}x{n} float32": lambda: spectral_radius(Wr, backend=backend),
    }


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(cases, reps: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds with the default thread count and with one thread, alternating rounds."""
    default = fastopt.get_num_threads()
    out = {}
    for name, fn in cases.items():
        fn()  # compile / warm
        multi, single = [], []
        for _ in range(rounds):
            fastopt.set_num_threads(default)
            multi.append(_median_time(fn, reps))
            fastopt.set_num_threads(1)
            single.append(_median_time(fn, reps))
        fastopt.set_num_threads(default)
        out[name] = (statistics.median(multi), statistics.median(single))
    return out


def report(title: str, results) -> float:
    print(f"\n{title} (threads: {fastopt.get_num_threads()})")
    worst = 0.0
    for name, (multi, single) in results.items():
        ratio = multi / single
        worst = max(worst, ratio)
        print(f"  {name:36s} default {1e3 * multi:8.2f} ms  1 thread {1e3 * single:8.2f} ms"
              f"  ratio {ratio:5.2f}x")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--reps", type=int, default=9, help="calls per median")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--neighbours", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-quiet", action="store_true", help="skip the run without neighbours")
    ap.add_argument("--check", action="store_true", help=f"exit 1 if a ratio exceeds {BOUND}")
    args = ap.parse_args()
    cases = _cases(args.n, args.backend)
    if not args.no_quiet:
        report("quiet", measure(cases, args.reps, args.rounds))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spin, daemon=True) for _ in range(args.neighbours)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.5)
        worst = report(f"under load ({args.neighbours} busy-loop neighbours)",
                       measure(cases, args.reps, args.rounds))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
    print(f"\nworst default/one-thread ratio under load: {worst:.2f}x (bound {BOUND}x)")
    return 1 if args.check and worst > BOUND else 0


if __name__ == "__main__":
    sys.exit(main())
