"""The child-process runner of the GPU benchmarks (bench_gpu.py, bench_torch_cuda.py).

Each contender runs in a process of its own: ``script --one CASE CONTENDER --repeat N
[--dry-run]``, with the checkout on ``PYTHONPATH`` and ``NUMBA_ENABLE_CUDASIM`` removed (a
benchmark must not time the simulator); the child prints one JSON line.
"""

from __future__ import annotations

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
