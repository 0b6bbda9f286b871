"""fastopt as a PyTorch backend: per-call overhead, batch-norm speed, a training step.

Usage::

    python bench/bench_torch.py               # the benchmark shapes (slow: big tensors, compiles)
    python bench/bench_torch.py --quick       # small shapes: checks that everything runs
    python bench/bench_torch.py --only overhead --only bn
    python bench/bench_torch.py --no-compile  # skip the torch.compile contenders
    python bench/bench_torch.py --threads 1   # torch's and fastopt's thread count (default: all)

Every contender runs in a fresh process of its own (``--child``), because PyTorch's, Numba's
and OpenMP's thread pools disturb each other in one process; the parent prints a table.

- ``overhead``: forward + backward (training) of a small BatchNorm2d input, (8, 16, 4, 4)
  float32: torch's module, fastopt's module (through the registered ops, whose small CPU calls
  run fastopt/torch/_ops.cpp), the same with the C++ kernels off (``fastopt-python``) and
  fastopt's numpy functions alone (the kernels plus their validation, no torch). The per-call
  overhead of the op is (module time - numpy-function time) / 2 calls (forward, backward).
  Three no-op
  contenders compute nothing behind the same module: ``noop-custom-op`` (torch.library.custom_op
  with register_autograd), ``noop-library-op`` (registered as fastopt's ops are) and
  ``noop-cpp-op`` (CPU and Autograd kernels in C++, ``cpp/noop_bn_op.cpp``, compiled on the
  spot; "failed" where no C++ compiler or ninja is found).
- ``bn``: forward + backward of BatchNorm2d in training mode, float32, (128, 256, 28, 28), NCHW
  and channels-last: torch's native module against fastopt's.
- ``step``: one training step (forward, backward, SGD) of a conv-BN-ReLU network, batch 64,
  32x32, 64 channels, with torch's and with fastopt's batch norm, eager and
  ``torch.compile`` (inductor); the same network with every BatchNorm2d replaced by Identity
  gives the fraction of the step batch norm takes: (t - t_without_bn) / t.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------ child side
def _timeit(fn, rounds: int, warmup: int = 3, inner: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return {"median": statistics.median(times), "min": min(times)}


def _child_overhead(spec: dict) -> dict:
    import numpy as np
    import torch

    shape, rounds = tuple(spec["shape"]), spec["rounds"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_()
    dy = torch.randn(shape, generator=g)
    if spec["contender"] == "numpy-functions":
        from fastopt import batch_norm_backward, batch_norm_forward

        xn, dyn = x.detach().numpy(), dy.numpy()
        c = shape[1]
        w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)

        def run():
            _, mean, invstd = batch_norm_forward(xn, w, b, running_mean=rm, running_var=rv)
            batch_norm_backward(dyn, xn, mean, invstd, w)

        return _timeit(run, rounds, inner=20)
    if spec["contender"] == "torch":
        bn = torch.nn.BatchNorm2d(shape[1])
    elif spec["contender"] == "noop-custom-op":
        bn = _noop_custom_op_module(shape[1])
    elif spec["contender"] == "noop-library-op":
        bn = _noop_library_op_module(shape[1])
    elif spec["contender"] == "noop-cpp-op":
        bn = _noop_cpp_op_module(shape[1])
    else:
        import fastopt.torch
        from fastopt.torch import _cpp

        bn = fastopt.torch.BatchNorm2d(shape[1])
        module = _cpp.ensure_loaded()
        if spec["contender"] == "fastopt-python":  # the C++ kernels off: Python kernels only
            if module is None:
                raise RuntimeError(f"fastopt.torch's C++ kernels do not run: {_cpp.problem()}")
            module.set_enabled(False)

    def step():
        bn(x).backward(dy)

    return _timeit(step, rounds, inner=20)


def _noop_custom_op_module(channels: int):
    """The floor of any batch norm written in Python behind torch.library: a module whose op
    (registered with torch.library.custom_op and register_autograd, as torch's docs show)
    computes nothing; forward + backward of it is the dispatch and autograd cost alone."""
    import torch

    @torch.library.custom_op("fastopt_bench::noop_bn", mutates_args=(),
                             schema="(Tensor x, Tensor weight, Tensor bias) -> "
                                    "(Tensor, Tensor, Tensor)")
    def noop_bn(x, weight, bias):
        return torch.empty_like(x), x.new_empty(x.shape[1]), x.new_empty(x.shape[1])

    @torch.library.custom_op("fastopt_bench::noop_bn_backward", mutates_args=(),
                             schema="(Tensor g, Tensor x, Tensor weight) -> "
                                    "(Tensor, Tensor, Tensor)")
    def noop_bn_backward(g, x, weight):
        return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])

    def backward(ctx, gy, _gm, _gi):
        x, weight = ctx.saved_tensors
        return noop_bn_backward(gy, x, weight)

    torch.library.register_autograd("fastopt_bench::noop_bn", backward, setup_context=setup)

    class NoopBatchNorm(torch.nn.BatchNorm2d):
        def forward(self, x):
            return noop_bn(x, self.weight, self.bias)[0]

    return NoopBatchNorm(channels)


def _noop_library_op_module(channels: int):
    """The floor of fastopt's own registration: ops defined with torch.library.Library, an
    Autograd kernel (with the dispatch key set) around an autograd.Function that calls the CPU
    kernel directly, as fastopt/torch/_ops.py does; the kernels compute nothing."""
    import torch

    lib = torch.library.Library("fastopt_bench_lib", "DEF")
    lib.define("bn(Tensor x, Tensor? weight, Tensor? bias) -> (Tensor, Tensor, Tensor)")
    lib.define("bn_backward(Tensor g, Tensor x, Tensor? weight) -> (Tensor, Tensor, Tensor)")

    def bn_cpu(x, weight, bias):
        return torch.empty_like(x), x.new_empty(x.shape[1]), x.new_empty(x.shape[1])

    def bn_backward_cpu(g, x, weight):
        return torch.empty_like(x), x.new_empty(x.shape[1]), x.new_empty(x.shape[1])

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, keyset):
            ctx.save_for_backward(x, weight)
            return bn_cpu(x, weight, bias)

        @staticmethod
        def backward(ctx, gy, _gm, _gi):
            x, weight = ctx.saved_tensors
            return (*torch.ops.fastopt_bench_lib.bn_backward.default(gy, x, weight), None)

    def bn_autograd(keyset, x, weight, bias):
        return Function.apply(x, weight, bias, keyset)

    def bn_backward_autograd(keyset, g, x, weight):
        return bn_backward_cpu(g, x, weight)

    lib.impl("bn", bn_cpu, "CPU")
    lib.impl("bn_backward", bn_backward_cpu, "CPU")
    lib.impl("bn", bn_autograd, "Autograd", with_keyset=True)
    lib.impl("bn_backward", bn_backward_autograd, "Autograd", with_keyset=True)
    op = torch.ops.fastopt_bench_lib.bn.default

    class NoopBatchNorm(torch.nn.BatchNorm2d):
        def forward(self, x):
            return op(x, self.weight, self.bias)[0]

    NoopBatchNorm.lib = lib  # keep the registration alive
    return NoopBatchNorm(channels)


def _noop_cpp_op_module(channels: int):
    """The same no-op structure with everything below ``torch.ops`` in C++ (``cpp/noop_bn_op.cpp``,
    compiled here with torch.utils.cpp_extension: needs a C++ compiler and ninja). The module
    keeps the Python bookkeeping fastopt's module does (input check, num_batches_tracked)."""
    import tempfile

    import torch
    from torch.utils import cpp_extension

    build = Path(tempfile.gettempdir()) / "fastopt_bench_cpp"
    build.mkdir(exist_ok=True)
    cpp_extension.load("fastopt_bench_cpp", [str(HERE / "cpp" / "noop_bn_op.cpp")],
                       build_directory=str(build), is_python_module=False,
                       extra_cflags=["-O2"])
    op = torch.ops.fastopt_bench_cpp.bn.default

    class NoopBatchNorm(torch.nn.BatchNorm2d):
        def forward(self, x):
            self._check_input_dim(x)
            if self.training and self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            return op(x, self.weight)[0]

    return NoopBatchNorm(channels)


def _child_bn(spec: dict) -> dict:
    import torch

    shape, rounds = tuple(spec["shape"]), spec["rounds"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    dy = torch.randn(shape, generator=g)
    if spec["layout"] == "channels_last":
        x, dy = (t.to(memory_format=torch.channels_last) for t in (x, dy))
    x.requires_grad_()
    if spec["contender"] == "torch":
        bn = torch.nn.BatchNorm2d(shape[1])
    else:
        import fastopt.torch

        bn = fastopt.torch.BatchNorm2d(shape[1])

    def step():
        x.grad = None
        bn(x).backward(dy)

    return _timeit(step, rounds, warmup=2)


def _network(channels: int, batch_norm: str):
    import torch

    def bn(c):
        if batch_norm == "none":
            return torch.nn.Identity()
        return torch.nn.BatchNorm2d(c)

    layers = [torch.nn.Conv2d(3, channels, 3, padding=1), bn(channels), torch.nn.ReLU()]
    for _ in range(3):
        layers += [torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False), bn(channels),
                   torch.nn.ReLU()]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 10)]
    model = torch.nn.Sequential(*layers)
    if batch_norm == "fastopt":
        import fastopt.torch

        model = fastopt.torch.convert(model)
    return model


def _child_step(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    batch, size, channels = spec["batch"], spec["size"], spec["channels"]
    model = _network(channels, spec["bn"])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    forward = torch.compile(model, fullgraph=True) if spec["compiled"] else model

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    step()  # compiles when compiled
    first = time.perf_counter() - t0
    result = _timeit(step, spec["rounds"], warmup=2)
    result["first_call"] = first
    return result


CHILDREN = {"overhead": _child_overhead, "bn": _child_bn, "step": _child_step}


# ------------------------------------------------------------------ parent side
def _specs(quick: bool, only: list[str], compile_: bool) -> list[dict]:
    specs = []
    if "overhead" in only:
        for contender in ("torch", "fastopt", "fastopt-python", "numpy-functions",
                          "noop-custom-op", "noop-library-op", "noop-cpp-op"):
            specs.append({"bench": "overhead", "contender": contender, "shape": [8, 16, 4, 4],
                          "rounds": 10 if quick else 50})
    if "bn" in only:
        shape = [8, 32, 14, 14] if quick else [128, 256, 28, 28]
        for layout in ("nchw", "channels_last"):
            for contender in ("torch", "fastopt"):
                specs.append({"bench": "bn", "contender": contender, "shape": shape,
                              "layout": layout, "rounds": 5 if quick else 20})
    if "step" in only:
        dims = {"batch": 8, "size": 16, "channels": 16} if quick else \
            {"batch": 64, "size": 32, "channels": 64}
        for compiled in ([False, True] if compile_ else [False]):
            for bn in ("torch", "fastopt", "none"):
                specs.append({"bench": "step", "contender": f"{bn}-bn", "bn": bn,
                              "compiled": compiled, "rounds": 5 if quick else 20, **dims})
    return specs


def _run_child(spec: dict) -> dict:
    unset = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent),
                                                      env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return {"error": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ms(r: dict) -> str:
    return f"{r['median'] * 1e3:.3f}" if "median" in r else "failed"


def report(results: list[tuple[dict, dict]]) -> str:
    lines = []
    over = {s["contender"]: r for s, r in results if s["bench"] == "overhead"}
    if over:
        lines += ["## per-call overhead: BatchNorm2d forward + backward, (8, 16, 4, 4) float32",
                  "", "| contender | median µs (fwd + bwd) |", "|---|---|"]
        lines += [f"| {k} | {v['median'] * 1e6:.1f} |" for k, v in over.items() if "median" in v]
        if all("median" in over.get(k, {}) for k in ("torch", "fastopt", "numpy-functions")):
            t, f, n = (over[k]["median"] * 1e6 for k in ("torch", "fastopt", "numpy-functions"))
            lines += ["", f"- op overhead over fastopt's numpy functions: {(f - n) / 2:.1f} µs "
                      "per call", f"- fastopt's module minus torch's module: {(f - t) / 2:.1f} µs"
                      " per call", f"- fastopt's numpy functions (validation + kernels): "
                      f"{n / 2:.1f} µs per call"]
            if "median" in over.get("noop-custom-op", {}):
                z = over["noop-custom-op"]["median"] * 1e6
                lines += [f"- a no-op torch.library.custom_op with register_autograd (the floor "
                          f"of a Python op): {z:.1f} µs fwd + bwd; fastopt's module minus it: "
                          f"{(f - z) / 2:.1f} µs per call"]
            if "median" in over.get("noop-library-op", {}):
                z = over["noop-library-op"]["median"] * 1e6
                lines += [f"- a no-op op registered as fastopt's are (Library, Autograd kernel, "
                          f"Function): {z:.1f} µs fwd + bwd, {(z - t) / 2:.1f} µs per call over "
                          f"torch's module; fastopt's module minus it: {(f - z) / 2:.1f} µs per "
                          "call"]
            if "median" in over.get("noop-cpp-op", {}):
                z = over["noop-cpp-op"]["median"] * 1e6
                lines += [f"- the same no-op with CPU and Autograd kernels in C++: {z:.1f} µs "
                          f"fwd + bwd, {(z - t) / 2:.1f} µs per call over torch's module"]
            lines.append("")
    bn = {(s["layout"], s["contender"]): (s, r) for s, r in results if s["bench"] == "bn"}
    if bn:
        lines += ["## BatchNorm2d training forward + backward, float32", "",
                  "| shape | layout | torch ms | fastopt ms | speedup |", "|---|---|---|---|---|"]
        for layout in ("nchw", "channels_last"):
            if (layout, "torch") in bn and (layout, "fastopt") in bn:
                (s, rt), (_, rf) = bn[(layout, "torch")], bn[(layout, "fastopt")]
                ratio = (f"{rt['median'] / rf['median']:.2f}x" if "median" in rt and
                         "median" in rf else "")
                lines.append(f"| {tuple(s['shape'])} | {layout} | {_ms(rt)} | {_ms(rf)} | "
                             f"{ratio} |")
        lines.append("")
    steps = [(s, r) for s, r in results if s["bench"] == "step"]
    if steps:
        s0 = steps[0][0]
        lines += [f"## training step, conv-BN-ReLU, batch {s0['batch']}, {s0['size']}x"
                  f"{s0['size']}, {s0['channels']} channels", "",
                  "| mode | batch norm | step ms | first call s | batch-norm share |",
                  "|---|---|---|---|---|"]
        for compiled in (False, True):
            rows = {s["bn"]: r for s, r in steps if s["compiled"] == compiled}
            if not rows:
                continue
            none = rows.get("none", {}).get("median")
            for name in ("torch", "fastopt", "none"):
                r = rows.get(name, {})
                if "median" not in r:
                    continue
                share = (f"{(r['median'] - none) / r['median']:.0%}" if none and name != "none"
                         else "")
                lines.append(f"| {'compiled' if compiled else 'eager'} | {name} | {_ms(r)} | "
                             f"{r['first_call']:.1f} | {share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    parser.add_argument("--only", action="append", choices=tuple(CHILDREN))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, help="torch's and fastopt's thread count")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        if spec.get("threads"):
            import torch

            import fastopt

            torch.set_num_threads(spec["threads"])
            fastopt.set_num_threads(spec["threads"])
        print(json.dumps(CHILDREN[spec["bench"]](spec)))
        return 0
    results = []
    for spec in _specs(args.quick, args.only or list(CHILDREN), not args.no_compile):
        spec["threads"] = args.threads
        print(f"running {json.dumps(spec)} ...", file=sys.stderr, flush=True)
        results.append((spec, _run_child(spec)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
