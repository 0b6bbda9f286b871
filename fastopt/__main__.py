"""Command line: ``python -m fastopt demo|bench|info``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastopt``."""
    parser = argparse.ArgumentParser(prog="python -m fastopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, available backends, threads, SIMD level")
    demo = sub.add_parser("demo", help="accuracy and speed report of every kernel family")
    demo.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    bench = sub.add_parser("bench", help="run the benchmark suites (needs the bench extra)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for bench/run.py")
    args = parser.parse_args(argv)

    if args.command == "info":
        from ._info import info_text

        print(info_text())
        return 0
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(quick=args.quick)
    from .demo import run_bench

    return run_bench(args.args)


if __name__ == "__main__":
    sys.exit(main())
