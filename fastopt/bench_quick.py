"""``python -m fastopt bench --quick``: one ratio table of every kernel family, from an installed
package.

Each row times one contender on an embedded shape: fastopt's Cython and Numba backends, the numpy
reference (``backend="numpy"``, the float64-checked oracle in ``fastopt/reference/``) and, when
installed, PyTorch, SciPy and JAX (and LAPACK through ``numpy.linalg`` for the spectra). The
ratio column is the numpy reference's time over the contender's (above 1: faster), the error
column the largest difference from the reference's result. Timings are medians of a few calls in
one process on whatever machine runs it: indicative only. ``python -m fastopt bench`` (from a
source checkout) runs the real benchmarks in bench/, one process per contender.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["Row", "quick_rows", "run_bench", "run_quick_bench"]


class Row(NamedTuple):
    """One line of the table: the operation, the contender, its median time in ms and the
    largest absolute difference from the numpy reference's result.

    Examples
    --------
    >>> from fastopt.bench_quick import Row
    >>> Row("HVP", "fastopt cython", 1.5, 2e-7).ms
    1.5
    """

    operation: str
    contender: str
    ms: float
    error: float


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (Numba compiles here on a cold cache, JAX traces)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, np.float64))))


def _compiled_backends(family: str) -> list[str]:
    from . import _dispatch

    return [b for b in ("cython", "numba") if _dispatch.available(family, b)]


def bench_batchnorm(quick: bool, repeats: int) -> list[Row]:
    from . import batch_norm_backward, batch_norm_forward

    shape = (32, 64, 16, 16) if quick else (64, 128, 28, 28)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    fwd, bwd = f"batch norm forward {shape} f32", f"batch norm backward {shape} f32"
    ref = batch_norm_forward(x, w, b, backend="numpy")
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, w, backend="numpy")
    rows = [
        Row(fwd, "numpy reference", _median_ms(
            lambda: batch_norm_forward(x, w, b, backend="numpy"), 2), 0.0),
        Row(bwd, "numpy reference", _median_ms(
            lambda: batch_norm_backward(dy, x, ref.mean, ref.invstd, w, backend="numpy"), 2), 0.0),
    ]
    y, dx = np.empty_like(x), np.empty_like(x)
    for be in _compiled_backends("batchnorm"):
        out = batch_norm_forward(x, w, b, backend=be)
        g = batch_norm_backward(dy, x, out.mean, out.invstd, w, backend=be)
        rows.append(Row(fwd, f"fastopt {be}", _median_ms(
            lambda be=be: batch_norm_forward(x, w, b, out=y, backend=be), repeats),
            _max_err(out.y, ref.y)))
        rows.append(Row(bwd, f"fastopt {be}", _median_ms(
            lambda be=be, o=out: batch_norm_backward(dy, x, o.mean, o.invstd, w, out=dx,
                                                     backend=be), repeats),
            _max_err(g.dx, gref.dx)))
    if _installed("torch"):
        import torch

        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        native = torch.ops.aten.native_batch_norm
        ty, m, inv = native(tx, tw, tb, None, None, True, 0.1, 1e-5)
        tdx = torch.ops.aten.native_batch_norm_backward(
            tdy, tx, tw, None, None, m, inv, True, 1e-5, [True, True, True])[0]
        rows.append(Row(fwd, "torch", _median_ms(
            lambda: native(tx, tw, tb, None, None, True, 0.1, 1e-5), repeats),
            _max_err(ty.numpy(), ref.y)))
        rows.append(Row(bwd, "torch", _median_ms(
            lambda: torch.ops.aten.native_batch_norm_backward(
                tdy, tx, tw, None, None, m, inv, True, 1e-5, [True, True, True]), repeats),
            _max_err(tdx.numpy(), gref.dx)))
    if _installed("jax"):
        import jax
        import jax.numpy as jnp

        def bn(xj, wj, bj):
            mean = xj.mean(axis=(0, 2, 3), keepdims=True)
            var = ((xj - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
            return ((xj - mean) * jax.lax.rsqrt(var + 1e-5) * wj[None, :, None, None]
                    + bj[None, :, None, None])

        jf = jax.jit(bn)
        jb = jax.jit(lambda xj, wj, bj, g: jax.vjp(bn, xj, wj, bj)[1](g)[0])
        jx, jw, jbias, jdy = (jnp.asarray(a) for a in (x, w, b, dy))
        rows.append(Row(fwd, "jax (jit)", _median_ms(
            lambda: jf(jx, jw, jbias).block_until_ready(), repeats),
            _max_err(jf(jx, jw, jbias), ref.y)))
        rows.append(Row(bwd, "jax (jit vjp)", _median_ms(
            lambda: jb(jx, jw, jbias, jdy).block_until_ready(), repeats),
            _max_err(jb(jx, jw, jbias, jdy), gref.dx)))
    return rows


def bench_spectral(quick: bool, repeats: int) -> list[Row]:
    from . import spectral_norm, spectral_radius

    n = 256 if quick else 1024
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    W64 = W.astype(np.float64)
    sig, rad = f"spectral norm sigma_1 ({n}, {n}) f32", f"spectral radius rho ({n}, {n}) f32"
    s_ref = spectral_norm(W, backend="numpy").value
    r_ref = spectral_radius(W, backend="numpy").value
    rows = [
        Row(sig, "numpy reference", _median_ms(lambda: spectral_norm(W, backend="numpy"), 2), 0.0),
        Row(rad, "numpy reference", _median_ms(lambda: spectral_radius(W, backend="numpy"), 2),
            0.0),
    ]
    for be in _compiled_backends("spectral"):
        rows.append(Row(sig, f"fastopt {be}", _median_ms(
            lambda be=be: spectral_norm(W, backend=be), repeats),
            abs(spectral_norm(W, backend=be).value - s_ref)))
        rows.append(Row(rad, f"fastopt {be}", _median_ms(
            lambda be=be: spectral_radius(W, backend=be), repeats),
            abs(spectral_radius(W, backend=be).value - r_ref)))
    rows.append(Row(sig, "numpy.linalg.norm(W, 2)", _median_ms(
        lambda: np.linalg.norm(W64, 2), 1), abs(np.linalg.norm(W64, 2) - s_ref)))
    rows.append(Row(rad, "numpy.linalg.eigvals", _median_ms(
        lambda: np.linalg.eigvals(W64), 1), abs(np.abs(np.linalg.eigvals(W64)).max() - r_ref)))
    if _installed("scipy"):
        from scipy.sparse.linalg import eigs, svds

        rows.append(Row(sig, "scipy svds(k=1)", _median_ms(
            lambda: svds(W, k=1, return_singular_vectors=False), repeats),
            abs(float(svds(W, k=1, return_singular_vectors=False)[0]) - s_ref)))
        rows.append(Row(rad, "scipy eigs(k=1)", _median_ms(
            lambda: eigs(W, k=1, which="LM", return_eigenvectors=False), repeats),
            abs(float(np.abs(eigs(W, k=1, which="LM", return_eigenvectors=False)).max())
                - r_ref)))
    if _installed("torch"):
        import torch

        tW = torch.from_numpy(W)
        rows.append(Row(sig, "torch.linalg.matrix_norm(ord=2)", _median_ms(
            lambda: torch.linalg.matrix_norm(tW, ord=2), repeats),
            abs(float(torch.linalg.matrix_norm(tW, ord=2)) - s_ref)))
        rows.append(Row(rad, "torch.linalg.eigvals", _median_ms(
            lambda: torch.linalg.eigvals(tW), 1),
            abs(float(torch.linalg.eigvals(tW).abs().max()) - r_ref)))
    if _installed("jax"):
        import jax.numpy as jnp

        jW = jnp.asarray(W)
        rows.append(Row(sig, "jax.numpy.linalg.norm(ord=2)", _median_ms(
            lambda: jnp.linalg.norm(jW, 2).block_until_ready(), repeats),
            abs(float(jnp.linalg.norm(jW, 2)) - s_ref)))
    return rows


def bench_curvature(quick: bool, repeats: int) -> list[Row]:
    from . import MLP

    sizes = [64, 128, 128, 10]
    batch = 512
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    net = MLP(sizes, activation="tanh", loss="cross_entropy", dtype=np.float32)
    theta = net.init(rng)
    v = rng.standard_normal(net.num_params).astype(np.float32)
    op = f"HVP of MLP {sizes} tanh, batch {batch} f32"
    ref = net.hvp(theta, X, y, v, backend="numpy")
    rows = [Row(op, "numpy reference", _median_ms(
        lambda: net.hvp(theta, X, y, v, backend="numpy"), repeats), 0.0)]
    for be in _compiled_backends("curvature"):
        rows.append(Row(op, f"fastopt {be}", _median_ms(
            lambda be=be: net.hvp(theta, X, y, v, backend=be), repeats),
            _max_err(net.hvp(theta, X, y, v, backend=be), ref)))
    if _installed("torch"):
        from .torch import mlp_hvp

        run = mlp_hvp(net, theta, X, y, v)
        hv = np.concatenate([t.detach().numpy().ravel() for t in run()])
        rows.append(Row(op, "torch double backward", _median_ms(run, repeats),
                        _max_err(hv, ref)))
    if _installed("jax"):
        import jax
        import jax.numpy as jnp

        shapes = [(W.shape, b.shape) for W, b in net.unpack(theta)]
        Xj, yj = jnp.asarray(X), jnp.asarray(y)

        def loss(t):
            a, off = Xj, 0
            for l, ((sw, sb)) in enumerate(shapes):
                W = t[off:off + sw[0] * sw[1]].reshape(sw)
                off += sw[0] * sw[1]
                b = t[off:off + sb[0]]
                off += sb[0]
                a = a @ W + b
                if l < len(shapes) - 1:
                    a = jnp.tanh(a)
            logp = jax.nn.log_softmax(a, axis=1)
            return -jnp.take_along_axis(logp, yj[:, None], axis=1).mean()

        hvp = jax.jit(lambda t, u: jax.jvp(jax.grad(loss), (t,), (u,))[1])
        tj, vj = jnp.asarray(theta), jnp.asarray(v)
        rows.append(Row(op, "jax (jit jvp of grad)", _median_ms(
            lambda: hvp(tj, vj).block_until_ready(), repeats), _max_err(hvp(tj, vj), ref)))
    return rows


FAMILIES: list[Callable[[bool, int], list[Row]]] = [bench_batchnorm, bench_spectral,
                                                    bench_curvature]


def quick_rows(quick: bool = True, repeats: int | None = None) -> tuple[list[Row], list[str]]:
    """Every family's rows, and one line per family that failed (the others still run).

    Examples
    --------
    >>> from fastopt.bench_quick import format_table, quick_rows
    >>> rows, failures = quick_rows(repeats=3)          # doctest: +SKIP
    >>> for line in format_table(rows):               # doctest: +SKIP
    ...     print(line)
    """
    repeats = repeats if repeats is not None else (5 if quick else 20)
    rows, failures = [], []
    for family in FAMILIES:
        try:
            rows.extend(family(quick, repeats))
        except Exception as exc:  # report and go on with the other families
            failures.append(f"{family.__name__} failed: {type(exc).__name__}: {exc}")
    return rows, failures


def format_table(rows: list[Row]) -> list[str]:
    """The rows as one table, grouped by operation, each ratio against the numpy reference.

    Examples
    --------
    >>> from fastopt.bench_quick import Row, format_table
    >>> for line in format_table([Row("op", "numpy reference", 10.0, 0.0),
    ...                           Row("op", "fastopt cython", 2.0, 1e-7)]):
    ...     print(line)
    contender                 ms x numpy ref max |diff|
    op
      numpy reference     10.000        1.00
      fastopt cython       2.000        5.00    1.0e-07
    """
    width = max(len(r.contender) for r in rows) + 2 if rows else 10
    lines = [f"{'contender':{width}s} {'ms':>10} {'x numpy ref':>11} {'max |diff|':>10}"]
    ops: dict[str, list[Row]] = {}
    for r in rows:
        ops.setdefault(r.operation, []).append(r)
    for op, group in ops.items():
        ref = next((r.ms for r in group if r.contender == "numpy reference"), float("nan"))
        lines.append(op)
        for r in group:
            err = "" if r.contender == "numpy reference" else f"{r.error:10.1e}"
            lines.append(f"  {r.contender:{width - 2}s} {r.ms:10.3f} {ref / r.ms:11.2f} {err}")
    return lines


def run_quick_bench(quick: bool = True) -> int:
    """Print the ratio table; return a process exit code (1 if a family failed).

    Examples
    --------
    >>> from fastopt.bench_quick import run_quick_bench
    >>> run_quick_bench()                               # doctest: +SKIP
    """
    from ._info import info_text

    print(info_text())
    print()
    start = time.perf_counter()
    rows, failures = quick_rows(quick)
    for line in format_table(rows):
        print(line)
    for line in failures:
        print(line)
    print(f"({time.perf_counter() - start:.1f} s; medians of a few calls in one process: "
          "indicative only, see bench/ for the real benchmarks)")
    return 1 if failures else 0


def run_bench(args: list[str]) -> int:
    """Run bench/run.py from a source checkout (benchmarks are not installed with the package)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    if not script.exists():
        print("bench/run.py not found: `python -m fastopt bench` runs the full benchmarks from a "
              "source checkout; `python -m fastopt bench --quick` runs anywhere")
        return 2
    return subprocess.call([sys.executable, str(script), *args])
