"""``python -m fastopt demo``: a short accuracy and speed report of every kernel family.

Each section checks a compiled result against the float64 numpy reference (and PyTorch when it is
installed) and times it on an embedded default shape. Timings are medians of a few calls on
whatever machine runs the demo: indicative only; bench/ holds the real benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (Numba compiles here on a cold cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def demo_batchnorm(quick: bool) -> list[str]:
    """Batch-norm section: max error vs the reference and times vs numpy (and PyTorch)."""
    from . import _dispatch, batch_norm_backward, batch_norm_forward

    shape = (32, 64, 16, 16) if quick else (64, 128, 28, 28)
    repeats = 3 if quick else 10
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    lines = [f"batch norm, float32 NCHW {shape}"]
    ref = batch_norm_forward(x, w, b, backend="numpy")
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, w, backend="numpy")
    t_ref_f = _median_ms(lambda: batch_norm_forward(x, w, b, backend="numpy"), 2)
    t_ref_b = _median_ms(lambda: batch_norm_backward(dy, x, ref.mean, ref.invstd, w,
                                                     backend="numpy"), 2)
    lines.append(f"  {'numpy reference':16s} forward {t_ref_f:8.2f} ms   "
                 f"backward {t_ref_b:8.2f} ms")
    y, dx = np.empty_like(x), np.empty_like(x)
    for backend in ("cython", "numba"):
        if not _dispatch.available("batchnorm", backend):
            lines.append(f"  {backend:16s} unavailable")
            continue
        out = batch_norm_forward(x, w, b, backend=backend)
        g = batch_norm_backward(dy, x, out.mean, out.invstd, w, backend=backend)
        err = max(np.abs(out.y - ref.y).max(), np.abs(g.dx - gref.dx).max())
        tf = _median_ms(lambda be=backend: batch_norm_forward(x, w, b, out=y, backend=be),
                        repeats)
        tb = _median_ms(lambda be=backend, o=out: batch_norm_backward(
            dy, x, o.mean, o.invstd, w, out=dx, backend=be), repeats)
        lines.append(f"  {'fastopt-' + backend:16s} forward {tf:8.2f} ms   backward {tb:8.2f} ms"
                     f"   max |error| vs reference {err:.1e}")
    torch = _torch()
    if torch is not None:
        tx, tw, tb_ = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        fwd = torch.ops.aten.native_batch_norm
        _, m, inv = fwd(tx, tw, tb_, None, None, True, 0.1, 1e-5)
        tdy = torch.from_numpy(dy)
        tf = _median_ms(lambda: fwd(tx, tw, tb_, None, None, True, 0.1, 1e-5), repeats)
        tb = _median_ms(lambda: torch.ops.aten.native_batch_norm_backward(
            tdy, tx, tw, None, None, m, inv, True, 1e-5, [True, True, True]), repeats)
        lines.append(f"  {'torch':16s} forward {tf:8.2f} ms   backward {tb:8.2f} ms")
    return lines


def demo_spectral(quick: bool) -> list[str]:
    """Spectra section: sigma_1 and rho of a random recurrent matrix vs LAPACK, and its regime."""
    from . import gradient_flow, init, spectral_norm, spectral_radius

    n = 256 if quick else 1024
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    W64 = W.astype(np.float64)
    lines = [f"spectra, float32 random recurrent W ({n}, {n}) ~ N(0, 1/n)"]
    sigma = spectral_norm(W)
    sigma_ref = np.linalg.norm(W64, 2)
    t_ours = _median_ms(lambda: spectral_norm(W), 3)
    t_ref = _median_ms(lambda: np.linalg.norm(W64, 2), 1)
    lines.append(f"  spectral_norm   {sigma.value:.6f} (LAPACK {sigma_ref:.6f}), "
                 f"{sigma.iterations} iterations, {t_ours:.1f} ms vs np.linalg.norm {t_ref:.1f} ms")
    rho = spectral_radius(W)
    rho_ref = np.abs(np.linalg.eigvals(W64)).max()
    t_ours = _median_ms(lambda: spectral_radius(W), 3)
    t_ref = _median_ms(lambda: np.linalg.eigvals(W64), 1)
    lines.append(f"  spectral_radius {rho.value:.6f} (LAPACK {rho_ref:.6f}), converged "
                 f"{bool(rho.converged)}, {t_ours:.1f} ms vs np.linalg.eigvals {t_ref:.1f} ms")
    for name, M in (("random W", W), ("0.9 x orthogonal", 0.9 * init.orthogonal((n, n), rng=1)),
                    ("1.1 x orthogonal", 1.1 * init.orthogonal((n, n), rng=1))):
        flow = gradient_flow(M, steps=50, activation="tanh")
        lines.append(f"  gradient_flow   {name:17s} rate {flow.rate:.3f}/step, ||W^50|| "
                     f"{flow.norms[-1]:.2e}: {flow.regime}")
    return lines


def demo_curvature(quick: bool) -> list[str]:
    """Curvature section: exact HVP vs finite differences and PyTorch; diagnostics; a saddle."""
    from . import MLP, curvature_along_gradient, hessian_extremes, hvp_fd

    sizes = [64, 128, 128, 10]
    batch = 512
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    net = MLP(sizes, activation="tanh", loss="cross_entropy", dtype=np.float32)
    theta = net.init(rng)
    v = rng.standard_normal(net.num_params).astype(np.float32)
    lines = [f"curvature, float32 MLP {sizes} tanh + cross-entropy, batch {batch}, "
             f"{net.num_params} parameters"]
    net64 = MLP(sizes, activation="tanh", loss="cross_entropy")
    th64, v64, X64 = theta.astype(np.float64), v.astype(np.float64), X.astype(np.float64)
    exact = net64.hvp(th64, X64, y, v64)
    approx = hvp_fd(lambda t: net64.loss_and_grad(t, X64, y)[1], th64, v64)
    rel = np.linalg.norm(exact - approx) / np.linalg.norm(exact)
    t_hvp = _median_ms(lambda: net.hvp(theta, X, y, v), 5 if quick else 20)
    t_grad = _median_ms(lambda: net.loss_and_grad(theta, X, y), 5 if quick else 20)
    lines.append(f"  hvp {t_hvp:.2f} ms (gradient {t_grad:.2f} ms); float64 hvp vs central "
                 f"differences: relative difference {rel:.1e}")
    torch = _torch()
    if torch is not None:
        from .torch import mlp_hvp

        torch_hvp = mlp_hvp(net, theta, X, y, v)
        t_torch = _median_ms(torch_hvp, 5 if quick else 20)
        lines.append(f"  torch double-backward hvp {t_torch:.2f} ms")
    c = curvature_along_gradient(net64, th64, X64, y)
    lines.append(f"  g^T g {c.g_dot_g:.3e}, g^T H g {c.g_h_g:.3e}, best step {c.best_step:.3f}, "
                 f"predicted change at that step {c.predicted_change(c.best_step):.3e}")
    ext = hessian_extremes(net64, th64, X64[:128], y[:128], tol=1e-4)
    lines.append(f"  Hessian extremes at init: lambda_max {ext.lambda_max:.3e}, lambda_min "
                 f"{ext.lambda_min:.3e} -> {ext.kind}")
    lin = MLP([2, 2, 2], activation="identity", loss="mse")
    Xl = np.random.default_rng(1).standard_normal((64, 2))
    origin = np.zeros(lin.num_params)
    ext = hessian_extremes(lin, origin, Xl, Xl)
    lines.append(f"  two-layer linear net fitting y = x, at the origin: {ext.kind} "
                 f"(lambda_min {ext.lambda_min:.3f}, lambda_max {ext.lambda_max:.3f})")
    return lines


SECTIONS: list[Callable[[bool], list[str]]] = [demo_batchnorm, demo_spectral, demo_curvature]


def run_demo(quick: bool = False) -> int:
    """Print every section's report; return a process exit code (1 if a section failed)."""
    from ._info import info_text

    print(info_text())
    status = 0
    for section in SECTIONS:
        print()
        try:
            for line in section(quick):
                print(line, flush=True)
        except Exception as exc:  # report and go on with the other families
            print(f"  {section.__name__} failed: {type(exc).__name__}: {exc}")
            status = 1
    return status


def run_bench(args: list[str]) -> int:
    """Run bench/run.py from a source checkout (benchmarks are not installed with the package)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    if not script.exists():
        print("bench/run.py not found: run `python -m fastopt bench` from a source checkout")
        return 2
    return subprocess.call([sys.executable, str(script), *args])
