"""The child-process runner of the GPU benchmarks (bench_gpu.py, bench_torch_cuda.py).

Each contender runs in a process of its own: ``script --one CASE CONTENDER --repeat N
[--dry-run]``, with the checkout on ``PYTHONPATH`` and ``NUMBA_ENABLE_CUDASIM`` removed (a
benchmark must not time the simulator); the child prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_child(script: str, case: str, contender: str, repeat: int, dry: bool) -> dict:
    """The child's JSON result, or ``{"error": [last line of its output]}``."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(script).resolve()), "--one", case, contender,
           "--repeat", str(repeat)] + (["--dry-run"] if dry else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]}
    return json.loads(lines[-1])


def parse_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The drivers' command line: ``--one CASE CONTENDER`` (a child), ``--repeat``,
    ``--dry-run``, ``--json``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--one", nargs=2, metavar=("CASE", "CONTENDER"))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def run_cases(script: str, cases: dict, args: argparse.Namespace, width: int) -> dict:
    """Every (case, contender) of ``cases`` in a child process of its own, printed as it ends."""
    results = {}
    for case, contenders in cases.items():
        for contender in contenders:
            results[(case, contender)] = r = run_child(script, case, contender, args.repeat,
                                                       args.dry_run)
            print(f"  {case:17s} {contender:{width}s} {json.dumps(r)}", flush=True)
    return results


def write_json(path: Path | None, results: dict) -> None:
    """The results as ``{"case|contender": result}`` (nothing when path is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"{c}|{k}": v for (c, k), v in results.items()}, indent=1))
