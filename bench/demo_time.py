"""Wall and CPU time of ``python -m fastopt demo`` (``--quick`` and full) with a cold Numba cache.

Usage::

    python bench/demo_time.py                 # both modes, 2 cores (taskset when available)
    python bench/demo_time.py --cores 0-3 --repeat 3

Each run is a fresh process with ``NUMBA_CACHE_DIR`` pointing to a new empty folder (so nothing
is compiled ahead), figures written to a temporary folder. The budget: the full demo
under 60 s, ``--quick`` under 15 s, on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(quick: bool, cores: str | None) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(tmp) / "numba-cache"),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "fastopt", "demo", "--out", str(Path(tmp) / "figs"),
               "--no-progress", *(["--quick"] if quick else [])]
        if cores and shutil.which("taskset"):
            cmd = ["taskset", "-c", cores, *cmd]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="0,1", help="taskset core list (default 0,1)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for quick, budget in ((True, 15.0), (False, 60.0)):
        for _ in range(args.repeat):
            wall, cpu = run_once(quick, args.cores)
            mode = "--quick" if quick else "full   "
            print(f"demo {mode}: wall {wall:6.1f} s, CPU {cpu:6.1f} s (budget {budget:.0f} s"
                  f" wall){'' if wall <= budget else '  OVER BUDGET'}", flush=True)


if __name__ == "__main__":
    main()
