"""Run the benchmark suites with one process per contender and print a ratio table.

Usage::

    python bench/run.py                       # every family, every contender
    python bench/run.py --family batchnorm -k nchw
    python bench/run.py --contender fastopt-cython --contender torch
    python bench/run.py --family batchnorm --passes 3   # best median of 3 interleaved passes
    python bench/run.py --family batchnorm --isolate    # every benchmark in a fresh process

PyTorch's, JAX's and Numba's thread pools disturb each other in one process, so each contender runs
in a pytest process of its own (``--contender NAME``) writing its own JSON file; this script then
merges the groups. ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` are removed from the children's
environment so that numpy's BLAS runs at full speed (these variables are set on our machines for
old OpenBLAS builds).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = ("batchnorm", "spectral", "curvature", "network", "rnn")
CONTENDERS = ("fastopt-cython", "fastopt-numba", "numpy", "torch", "jax", "scipy", "floor")
BASELINES = ("torch", "jax", "scipy", "numpy")


def _pytest(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o",
           "python_files=bench_*.py", "-o", "addopts=", *args]
    return subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True)


def run_one(family: str, contender: str, extra: list[str], outdir: Path, tag: str = "",
            isolate: bool = False) -> list[Path]:
    """Run one family's suite for one contender; JSON result files (one per benchmark with
    ``isolate``, which gives every benchmark a fresh process: earlier benchmarks' arrays change
    where later ones land in memory, which moved the same kernel by up to 60%)."""
    suite = HERE / f"bench_{family}.py"
    if not suite.exists():
        return []
    unset = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    selection = ["--contender", contender, *extra]
    targets = [str(suite)]
    if isolate:
        listing = _pytest(["--collect-only", "-q", str(suite), *selection], env).stdout
        targets = [line for line in listing.splitlines() if "::" in line]
    outs = []
    for i, target in enumerate(targets):
        out = outdir / f"{family}-{contender}{tag}{f'-{i}' if isolate else ''}.json"
        out.unlink(missing_ok=True)
        proc = _pytest([target, "-q", "--benchmark-enable", f"--benchmark-json={out}",
                        *selection], env)
        if proc.returncode not in (0, 5):  # 5: nothing collected for this contender
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        if out.exists():
            outs.append(out)
    return outs


def merge(paths: list[Path], stat: str = "median") -> dict[str, dict[str, float]]:
    """group -> contender -> seconds: the lowest ``stat`` ("median" or "min" of a pass's rounds)
    over repeated passes."""
    table: dict[str, dict[str, float]] = {}
    for path in paths:
        text = path.read_text()
        if not text.strip():  # contender had no benchmark in this suite
            continue
        for bench in json.loads(text)["benchmarks"]:
            contender = bench["params"].get("contender")
            row = table.setdefault(bench["group"], {})
            value = bench["stats"][stat]
            row[contender] = min(value, row.get(contender, value))
    return table


def report(table: dict[str, dict[str, float]], stat: str = "median") -> str:
    """Markdown table of times, speedups against the first baseline present, and floor / time."""
    lines = [
        f"| group | contender | {stat} ms | speedup vs baseline | floor time / time |",
        "|---|---|---|---|---|",
    ]
    for group in sorted(table):
        row = table[group]
        base_name = next((b for b in BASELINES if b in row), None)
        floor = row.get("floor")
        for contender in CONTENDERS:
            if contender not in row:
                continue
            t = row[contender]
            ratio = f"{row[base_name] / t:.2f}x ({base_name})" if base_name else ""
            frac = f"{floor / t:.0%}" if floor and contender != "floor" else ""
            lines.append(f"| {group} | {contender} | {t * 1e3:.3f} | {ratio} | {frac} |")
    return "\n".join(lines)


def _suite(family: str):
    """The ``bench_<family>`` module (imported for its optional ``ratios(table)``)."""
    for path in (HERE, HERE.parent):  # the suites import fastopt from this checkout too
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module(f"bench_{family}")


def main(argv: list[str] | None = None) -> int:
    """Entry point (also reached by ``python -m fastopt bench``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--contender", action="append", choices=CONTENDERS)
    parser.add_argument("-k", help="pytest -k expression (e.g. a shape name)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--passes", type=int, default=1,
                        help="run every contender this many times, interleaved, and keep the "
                        "lowest median (a process's memory placement moves timings by 10-50%%)")
    parser.add_argument("--isolate", action="store_true",
                        help="run every benchmark in a process of its own")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="statistic of each pass's rounds to compare ('min': the least "
                        "disturbed round, on a machine shared with other jobs)")
    args = parser.parse_args(argv)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    extra = ["-k", args.k] if args.k else []
    paths = []
    for family in args.family or FAMILIES:
        for rep in range(args.passes):
            for contender in args.contender or CONTENDERS:
                print(f"running {family} / {contender} (pass {rep + 1}) ...", file=sys.stderr,
                      flush=True)
                paths += run_one(family, contender, extra, outdir, tag=f"-{rep}",
                                 isolate=args.isolate)
    table = merge(paths, args.stat)
    text = report(table, args.stat)
    for family in args.family or FAMILIES:  # a suite's own ratios, e.g. the curvature targets
        extra = getattr(_suite(family), "ratios", None)
        if extra is not None and (lines := extra(table)):
            text += f"\n\n{family}:\n{lines}"
    (outdir / "report.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
