"""Benchmark of fastopt.distributed: the cost of one distributed HVP on a LocalCluster against
local execution of the same shards.

MLP [784, 256, 256, 10], float32, tanh, softmax cross-entropy, on N = 60,000 synthetic samples
(defaults; ``--sizes``, ``--samples``). Contenders, each in a process of its own (``--contender``):

- ``local``: the same shard tasks and the same reduction tree in one process, sequentially, on
  one thread (fastopt's kernels and BLAS, as each task on a worker): ``T_local``;
- ``dask-W``: ``ShardedObjective`` on a ``LocalCluster`` of W single-threaded worker processes
  (127.0.0.1): ``T_W``. Its result is checked to be bit-identical to ``local``'s.

Figures per shard count: median seconds per HVP (the same theta in every call, as in a Lanczos
run; and a new theta in every call, which adds its broadcast), and the overhead
``T_W / (T_local / W) - 1`` over perfect division of the local work among W workers (the target
of the target: below 15% at W = 2). The shard counts show the per-task cost (``--shards``). The
overhead splits into ``busy``: the busiest worker's task compute (Dask's task stream) over
``T_local / W`` (load imbalance, slower kernels in the workers) and ``sched``: ``T_W`` over that
compute (scheduling, transfers, the client).

Usage (the machine should be quiet: W workers need W free cores, plus a little for the client
and the scheduler)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_distributed.py
    python bench/bench_distributed.py --samples 2000 --sizes 64 32 10 --repeats 2   # smoke run
    python bench/bench_distributed.py --workers 1 2 4 --shards 8 32 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the worktree's fastopt (also for the workers, via spawn)


def _problem(sizes, n):
    from fastopt import MLP

    rng = np.random.default_rng(0)
    net = MLP(sizes, activation="tanh", loss="cross_entropy", dtype=np.float32)
    theta = net.init(rng)
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    v = rng.standard_normal(net.num_params).astype(np.float32)
    return net, theta, X, y, v


def _shard_size(n, shards):
    return -(-n // shards)


def _median_time(fn, repeats):
    fn()  # warm-up: workspaces, imports, the first transfer of theta
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def run_local(args):
    from fastopt.distributed.sharded import _local_result, _OneThread

    net, theta, X, y, v = _problem(args.sizes, args.samples)
    out = {}
    with _OneThread():
        for shards in args.shards:
            size = _shard_size(args.samples, shards)
            parts = [(X[i:i + size], y[i:i + size]) for i in range(0, args.samples, size)]
            med, best = _median_time(lambda p=parts: _local_result(net, p, "hvp", theta, v),
                                     args.repeats)
            total = _local_result(net, parts, "hvp", theta, v)
            res = (total.vector / args.samples).astype(np.float32)  # as ShardedObjective.hvp
            out[str(shards)] = {"median": med, "min": best, "checksum": _digest(res)}
    return out


def _busiest_worker(client, fn):
    """Seconds of task compute on the busiest worker during ``fn()`` (Dask's task stream)."""
    from collections import defaultdict

    from distributed import get_task_stream

    with get_task_stream(client=client) as stream:
        fn()
    per_worker = defaultdict(float)
    for task in stream.data:
        for ss in task["startstops"]:
            if ss["action"] == "compute":
                per_worker[task["worker"]] += ss["stop"] - ss["start"]
    return max(per_worker.values())


def run_dask(args, workers):
    from distributed import Client, LocalCluster

    from fastopt.distributed import ShardedObjective
    from fastopt.distributed._cluster import LOOPBACK_HTTP

    net, theta, X, y, v = _problem(args.sizes, args.samples)
    out = {}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs=LOOPBACK_HTTP) as cluster, \
            Client(cluster) as client:
        for shards in args.shards:
            size = _shard_size(args.samples, shards)
            with ShardedObjective(net, X, y, client=client, shard_size=size,
                                  progress=False) as obj:
                med, best = _median_time(lambda o=obj: o.hvp(theta, v), args.repeats)
                thetas = iter([theta + np.float32(1e-3 * i) for i in range(args.repeats + 1)])
                med_new, _ = _median_time(lambda o=obj, t=thetas: o.hvp(next(t), v), args.repeats)
                res = obj.hvp(theta, v)
                busy = float(np.median([_busiest_worker(client, lambda o=obj: o.hvp(theta, v))
                                        for _ in range(args.repeats)]))
                out[str(shards)] = {"median": med, "min": best, "median_new_theta": med_new,
                                    "busiest_compute": busy, "checksum": _digest(res)}
    return out


def _digest(a):
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()[:16]


def _child(contender, args):
    cmd = [sys.executable, __file__, "--contender", contender, "--samples", str(args.samples),
           "--repeats", str(args.repeats), "--sizes", *map(str, args.sizes),
           "--shards", *map(str, args.shards)]
    unset = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{contender} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 256, 256, 10])
    ap.add_argument("--samples", type=int, default=60_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shards", type=int, nargs="+", default=[2, 8, 30, 120])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--contender", help="run one contender here and print its JSON")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    if args.contender:
        if args.contender == "local":
            res = run_local(args)
        else:
            res = run_dask(args, int(args.contender.split("-")[1]))
        print(json.dumps(res))
        return

    results = {"local": _child("local", args)}
    for w in args.workers:
        results[f"dask-{w}"] = _child(f"dask-{w}", args)
    print(f"MLP {args.sizes} float32, N = {args.samples}, one HVP (median of {args.repeats}; "
          f"overhead = T_W / (T_local / W) - 1)")
    head = f"{'shards':>7} {'rows':>7} {'local s':>9}"
    for w in args.workers:
        head += f" {f'W={w} s':>9} {'new θ s':>9} {'overhead':>9} {'busy':>7} {'sched':>7}"
    print(head)
    for shards in args.shards:
        loc = results["local"][str(shards)]
        line = f"{shards:>7} {_shard_size(args.samples, shards):>7} {loc['median']:>9.4f}"
        for w in args.workers:
            d = results[f"dask-{w}"][str(shards)]
            if d["checksum"] != loc["checksum"]:
                raise SystemExit(f"dask-{w}, {shards} shards: result differs from local")
            over = d["median"] / (loc["median"] / w) - 1
            busy = d["busiest_compute"] / (loc["median"] / w) - 1
            sched = d["median"] / d["busiest_compute"] - 1
            line += (f" {d['median']:>9.4f} {d['median_new_theta']:>9.4f} {over:>9.1%}"
                     f" {busy:>7.1%} {sched:>7.1%}")
        print(line)
    print("every distributed result is bit-identical to the local one")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
