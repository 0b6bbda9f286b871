"""Benchmarks of the spectra family (float32): spectral norm, batched spectral norm, spectral
radius, and the fused W^T W v pass against its read-bandwidth floor.

Run one contender per process (thread pools of numpy/OpenBLAS, OpenMP and Numba disturb each
other), unsetting OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE so numpy's BLAS runs at full speed::

    for c in fastopt-cython fastopt-numba numpy scipy torch floor; do
      env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python -m pytest \\
        bench/bench_spectral.py -o python_files='bench_*.py' --benchmark-enable \\
        --contender $c --benchmark-json=bench/results/spectral-$c.json -q
    done

Groups (``benchmark.group``): ``spectral_norm 1024x1024``, ``spectral_norm 64x256x256``,
``spectral_radius 1024x1024``, ``wtwv 1024x1024``, ``wtwv 4096x4096``, ``wtwv 64x256x256``.
Contenders: fastopt-cython / fastopt-numba (tol 1e-6), numpy (LAPACK: ``np.linalg.norm(W, 2)``,
batched ``np.linalg.norm(W, 2, axis=(1, 2))``, ``np.linalg.eigvals``; for the fused pass two
BLAS calls ``W.T @ (W @ x)``), scipy (``svds(k=1)``, ``eigs(k=6, ncv=40)``), torch
(``torch.linalg.matrix_norm(ord=2)``) and floor (one parallel read of ``W``, same threads).

Speed beside busy-loop neighbours: ``bench/bench_under_load_spectral.py``; the C
loops alone: ``make -f bench/c/spectral.mk run``.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import _dispatch, get_num_threads, spectral_norm, spectral_radius

F32 = np.float32


def _matrix(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(F32)


def _backend(contender):
    return {"fastopt-cython": "cython", "fastopt-numba": "numba"}[contender]


@pytest.fixture(scope="module", autouse=True)
def _warm_thread_team(request):
    """Run the thread team of each fastopt backend this process times until its wake-ups are
    fast (up to 3 s each) before anything is timed.

    On the shared development machine a fresh process's 2-thread team (OpenMP for Cython, the
    Numba pool) was seen to stall for 8-16 ms per parallel region for the first 0.5-3 s; this
    keeps that out of the first benchmarks' numbers.
    """
    import time

    wanted = set(request.config.getoption("--contender")) or {"fastopt-cython", "floor"}
    backends = []
    if wanted & {"fastopt-cython", "floor"}:
        backends.append("cython")
    if "fastopt-numba" in wanted:
        backends.append("numba")
    a = np.ones(1 << 20, dtype=F32)
    nt = get_num_threads()
    for name in backends:
        if not _dispatch.available("spectral", name):
            continue
        kern = _dispatch.load("spectral", name)
        kern.read_floor(a, nt)  # compile (numba) outside the clock
        stop = time.perf_counter() + 3.0
        fast = 0
        while time.perf_counter() < stop and fast < 200:
            t0 = time.perf_counter()
            kern.read_floor(a, nt)
            fast = fast + 1 if time.perf_counter() - t0 < 2e-4 else 0


def _run(benchmark, fn, rounds):
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize(
    "contender", ["fastopt-cython", "fastopt-numba", "numpy", "scipy", "torch"], indirect=True
)
def test_spectral_norm_1024(benchmark, contender):
    benchmark.group = "spectral_norm 1024x1024"
    W = _matrix((1024, 1024))
    if contender.startswith("fastopt"):
        be = _backend(contender)
        res = _run(benchmark, lambda: spectral_norm(W, tol=1e-6, backend=be), 20)
        assert res.converged
        benchmark.extra_info["iterations"] = res.iterations
    elif contender == "numpy":
        _run(benchmark, lambda: np.linalg.norm(W, 2), 5)
    elif contender == "scipy":
        from scipy.sparse.linalg import svds

        _run(benchmark, lambda: svds(W, k=1, return_singular_vectors=False), 10)
    else:
        import torch

        T = torch.from_numpy(W)
        _run(benchmark, lambda: torch.linalg.matrix_norm(T, ord=2), 5)


@pytest.mark.parametrize(
    "contender", ["fastopt-cython", "fastopt-numba", "numpy", "torch"], indirect=True
)
def test_spectral_norm_batched(benchmark, contender):
    benchmark.group = "spectral_norm 64x256x256"
    W = _matrix((64, 256, 256))
    if contender.startswith("fastopt"):
        be = _backend(contender)
        res = _run(benchmark, lambda: spectral_norm(W, tol=1e-6, backend=be), 10)
        assert res.converged.all()
        benchmark.extra_info["iterations"] = int(res.iterations.max())
    elif contender == "numpy":
        _run(benchmark, lambda: np.linalg.norm(W, 2, axis=(1, 2)), 3)
    else:
        import torch

        T = torch.from_numpy(W)
        _run(benchmark, lambda: torch.linalg.matrix_norm(T, ord=2), 3)


@pytest.mark.parametrize(
    "contender", ["fastopt-cython", "fastopt-numba", "numpy", "scipy"], indirect=True
)
def test_spectral_radius_1024(benchmark, contender):
    benchmark.group = "spectral_radius 1024x1024"
    W = _matrix((1024, 1024), seed=1, scale=1 / 32)  # N(0, 1/n): eigenvalues fill the unit disc
    if contender.startswith("fastopt"):
        be = _backend(contender)
        res = _run(benchmark, lambda: spectral_radius(W, tol=1e-6, backend=be), 10)
        true = np.abs(np.linalg.eigvals(W.astype(np.float64))).max()  # after timing: no BLAS
        assert res.converged and abs(res.value - true) <= 1e-6 * true, (res, true)
        benchmark.extra_info["iterations"] = res.iterations
    elif contender == "numpy":
        _run(benchmark, lambda: np.abs(np.linalg.eigvals(W)).max(), 3)
    else:
        from scipy.sparse.linalg import eigs

        _run(benchmark, lambda: eigs(W, k=6, ncv=40, return_eigenvectors=False), 10)


WTWV_SHAPES = [(1, 1024, 1024), (1, 4096, 4096), (64, 256, 256)]


def _shape_name(shape):
    return "x".join(map(str, shape[1:] if shape[0] == 1 else shape))


@pytest.mark.parametrize("shape", WTWV_SHAPES, ids=_shape_name)
@pytest.mark.parametrize(
    "contender", ["fastopt-cython", "fastopt-numba", "numpy", "floor"], indirect=True
)
def test_wtwv(benchmark, contender, shape):
    """One fused pass ``y = W^T (W x)`` per matrix (W read once) vs the read floor."""
    benchmark.group = f"wtwv {_shape_name(shape)}"
    B, n, m = shape
    W = _matrix(shape, seed=2)
    x = _matrix((B, m), seed=3)
    benchmark.extra_info["bytes"] = W.nbytes
    nt = get_num_threads()
    if contender == "numpy":
        if B == 1:
            _run(benchmark, lambda: W[0].T @ (W[0] @ x[0]), 50)
        else:
            _run(benchmark, lambda: np.matmul(
                W.transpose(0, 2, 1), np.matmul(W, x[:, :, None])), 50)
        return
    if contender == "floor":
        if not _dispatch.available("spectral", "cython"):
            pytest.skip("the floor uses the Cython read kernel")
        kern = _dispatch.load("spectral", "cython")
        flat = W.reshape(-1)
        _run(benchmark, lambda: kern.read_floor(flat, nt), 50)
        return
    kern = _dispatch.load("spectral", _backend(contender))
    t = np.empty((B, n), F32)
    y = np.empty((B, m), F32)
    active = np.arange(B, dtype=np.int64)
    work = np.empty(kern.work_shape(B, n, m, nt))
    kern.wtwv(W, x, t, y, active, work, nt)
    ref = np.einsum("bij,bi->bj", W.astype(np.float64), np.einsum("bij,bj->bi", W, x))
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    _run(benchmark, lambda: kern.wtwv(W, x, t, y, active, work, nt), 50)
