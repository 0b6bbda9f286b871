"""fastopt.torch's BatchNorm2d on CUDA tensors (the registered ops' CUDA kernels) vs torch's own
BatchNorm2d (cuDNN).

One command; without a CUDA GPU (torch.cuda.is_available() false) or without fastopt's CUDA
backend it prints why and exits 0::

    env -u NUMBA_ENABLE_CUDASIM PYTHONPATH=. python bench/bench_torch_cuda.py [--repeat 20]
    PYTHONPATH=. python bench/bench_torch_cuda.py --dry-run --repeat 2   # CPU, tiny: checks it

Cases (float32, training mode, forward + backward through the module, as a training step runs
it):

- ``bn-nchw`` / ``bn-channels_last``: (128, 256, 28, 28), contiguous and channels-last;
  fraction of the device's copy bandwidth measured in the same run (bytes counted: 3 reads +
  2 writes of x-sized arrays, the minimum for forward + backward);
- ``overhead``: (8, 16, 4, 4), where the time is the host's per-call cost (Python, the
  dispatcher, numba's launches), not the device's.

Each contender runs in a process of its own (``--one CASE CONTENDER``); the parent prints the
median time of each, and the speed ratio against torch's module (> 1: fastopt faster).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from _gpu_child import parse_args, run_cases, write_json  # bench/: the script's directory

CASES = {
    "floor-bandwidth": ("floor",),
    "bn-nchw": ("torch", "fastopt"),
    "bn-channels_last": ("torch", "fastopt"),
    "overhead": ("torch", "fastopt"),
}
FULL = dict(bn=(128, 256, 28, 28), small=(8, 16, 4, 4), bw_bytes=1 << 30)
DRY = dict(bn=(4, 3, 5, 5), small=(8, 16, 4, 4), bw_bytes=1 << 20)


def _one(case: str, contender: str, repeat: int, dry: bool) -> dict:
    import warnings

    import torch

    device = "cpu" if dry else "cuda"
    shapes = DRY if dry else FULL
    torch.backends.cudnn.allow_tf32 = False

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def measure(fn, inner=1):
        for _ in range(3):  # compilation, caches, cuDNN's algorithm choice
            fn()
        sync()
        times = []
        for _ in range(repeat):
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            times.append((time.perf_counter() - t0) / inner)
        return statistics.median(times)

    gen = torch.Generator().manual_seed(0)
    info: dict = {}
    if case == "floor-bandwidth":
        n = shapes["bw_bytes"] // 4
        x = torch.randn(n, generator=gen).to(device)
        y = torch.empty_like(x)
        info["seconds"] = measure(lambda: y.copy_(x))
        info["bandwidth"] = 2 * n * 4 / info["seconds"]
        return info
    shape = shapes["small"] if case == "overhead" else shapes["bn"]
    fmt = torch.channels_last if case == "bn-channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=gen).to(device).to(memory_format=fmt).requires_grad_()
    dy = torch.randn(shape, generator=gen).to(device).to(memory_format=fmt)
    import fastopt.torch as ft

    module = torch.nn.BatchNorm2d if contender == "torch" else ft.BatchNorm2d
    bn = module(shape[1]).to(device)
    with warnings.catch_warnings():
        # a fallback to torch's kernel would make the fastopt figure void
        warnings.simplefilter("error", ft.FallbackWarning)

        def run():
            bn(x).backward(dy)

        info["seconds"] = measure(run, inner=20 if case == "overhead" else 1)
    if case != "overhead":
        info["bytes"] = 5 * x.numel() * 4
    return info


def main(argv=None) -> int:
    args = parse_args(__doc__.split("\n")[0], argv)
    if args.one:
        print(json.dumps(_one(*args.one, args.repeat, args.dry_run)))
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("bench_torch_cuda: skipped (no CUDA GPU: torch.cuda.is_available() is False)")
            return 0
        os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
        from fastopt.torch import _ops

        problem = _ops.cuda_backend_problem()
        if problem is not None:
            print(f"bench_torch_cuda: skipped ({problem})")
            return 0
        print(f"device: {torch.cuda.get_device_name()}")
    results = run_cases(__file__, CASES, args, 8)
    bw = results[("floor-bandwidth", "floor")].get("bandwidth")
    print(f"\nsame-run copy bandwidth: {bw / 1e9 if bw else float('nan'):.0f} GB/s\n")
    print(f"{'case':17s} {'contender':9s} {'ms':>9s} {'vs torch':>9s} {'of bandwidth':>13s}")
    for case, contenders in CASES.items():
        if case.startswith("floor"):
            continue
        base = results[(case, "torch")].get("seconds")
        for contender in contenders:
            r = results[(case, contender)]
            if "seconds" not in r:
                print(f"{case:17s} {contender:9s} {r}")
                continue
            t = r["seconds"]
            ratio = base / t if base else float("nan")
            frac = r["bytes"] / t / bw if "bytes" in r and bw else float("nan")
            print(f"{case:17s} {contender:9s} {t * 1e3:9.3f} {ratio:8.2f}x {frac:13.1%}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
