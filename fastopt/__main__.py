"""Command line: ``python -m fastopt demo|bench|info``."""

from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastopt``."""
    parser = argparse.ArgumentParser(prog="python -m fastopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, available backends, threads, SIMD level")
    demo = sub.add_parser(
        "demo", help="the challenges of training (ill-conditioning, saddles, batch norm, "
        "recurrent initialization) measured on the UCI digits, with figures")
    demo.add_argument("--out", metavar="DIR", default=None,
                      help="folder for the PNG figures (default: a new ./fastopt-demo/)")
    demo.add_argument("--epochs", metavar="N", type=_positive_int, default=None,
                      help="training epochs of parts 1-3 (default 20, 5 with --quick)")
    demo.add_argument("--quick", action="store_true", help="fewer epochs and probes (seconds)")
    demo.add_argument("--seed", metavar="S", type=int, default=0,
                      help="seed of the split, initial weights and minibatch order (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench = sub.add_parser(
        "bench", help="--quick: one ratio table of every kernel family against the numpy "
        "reference (and PyTorch, SciPy, JAX when installed); otherwise bench/run.py of a "
        "source checkout")
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="--quick: the short report that runs from an installed package; "
                       "anything else: arguments for bench/run.py")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        # everything after "bench" belongs to bench/run.py (pytest's options such as -k), which
        # argparse would try to parse as its own
        from .bench_quick import run_bench, run_quick_bench

        return run_quick_bench() if argv[1:] == ["--quick"] else run_bench(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "info":
        from ._info import info_text

        print(info_text())
        return 0
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(out=args.out, epochs=args.epochs, quick=args.quick, seed=args.seed,
                        progress=False if args.no_progress else None)
    return 0  # not reached: "bench" is handled before parsing


if __name__ == "__main__":
    sys.exit(main())
