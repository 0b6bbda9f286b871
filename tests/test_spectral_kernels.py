"""The compiled kernels of the spectra family against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import _dispatch
from fastopt.reference import spectral as ref

BACKENDS = compiled_backends("spectral")
SHAPES = [(1, 37, 300), (5, 64, 48), (3, 9, 1), (2, 1, 513)]


def kernels(backend):
    return _dispatch.load("spectral", backend)


def data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    B, n, m = shape
    return rng.standard_normal(shape).astype(dtype), rng.standard_normal((B, m)).astype(dtype)


def rtol(dtype):
    return 2e-6 if dtype == np.float32 else 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_wtwv_matches_reference(shape, dtype, backend, n_threads):
    k = kernels(backend)
    W, x = data(shape, dtype)
    B, n, m = shape
    active = np.arange(B, dtype=np.int64)[::2].copy()  # every other matrix
    t = np.full((B, n), 7, dtype)
    y = np.full((B, m), 7, dtype)
    work = np.empty(k.work_shape(len(active), n, m, n_threads))
    k.wtwv(W, x, t, y, active, work, n_threads)
    tr = np.zeros((B, n))
    yr = np.zeros((B, m))
    ref.wtwv(W, x, tr, yr, active, None, 1)
    scale = np.abs(W).max() ** 2 * np.abs(x).max() * n * m
    np.testing.assert_allclose(t[active], tr[active], rtol=rtol(dtype), atol=rtol(dtype) * scale)
    np.testing.assert_allclose(y[active], yr[active], rtol=rtol(dtype), atol=rtol(dtype) * scale)
    skipped = np.setdiff1d(np.arange(B), active)
    assert (t[skipped] == 7).all() and (y[skipped] == 7).all()  # inactive matrices untouched
    # deterministic for a given thread count
    y2 = np.empty_like(y)
    y2[:] = 7
    k.wtwv(W, x, t, y2, active, work, n_threads)
    np.testing.assert_array_equal(y2, y)


def numba_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


@pytest.mark.skipif(numba_threads() < 2, reason="needs 2 Numba threads to tell 1 from 2")
def test_numba_kernels_run_on_the_callers_thread_count():
    """The caller sizes ``work`` for its ``n_threads``; the Numba wrapper must not substitute the
    global count (a larger global count made the split kernel write past ``work``)."""
    import numba

    import fastopt

    k = kernels("numba")
    W, x = data((1, 64, 40), np.float64)
    old = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        work = np.empty(k.work_shape(1, 64, 40, 2))
        t, y = np.empty((1, 64)), np.empty((1, 40))
        k.wtwv(W, x, t, y, np.zeros(1, np.int64), work, 2)
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
        assert numba.get_num_threads() == 2  # not the global count of 1
    finally:
        fastopt.set_num_threads(old)
    np.testing.assert_allclose(y[0], W[0].T @ (W[0] @ x[0]), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matvec_matches_reference(shape, dtype, backend):
    k = kernels(backend)
    W, x = data(shape, dtype, 1)
    B, n, m = shape
    active = np.arange(B, dtype=np.int64)
    y = np.empty((B, n), dtype)
    k.matvec(W, x, y, active, 2)
    yr = np.empty((B, n))
    ref.matvec(W, x, yr, active, 1)
    np.testing.assert_allclose(y, yr, rtol=rtol(dtype), atol=rtol(dtype) * m * 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orth_step_orthogonalizes(dtype, backend):
    k = kernels(backend)
    rng = np.random.default_rng(2)
    B, ncv, m, j = 3, 6, 50, 3
    V = np.zeros((B, ncv + 1, m), dtype)
    for b in range(B):
        V[b, : j + 1] = np.linalg.qr(rng.standard_normal((m, j + 1)))[0].T
    w = rng.standard_normal((B, m)).astype(dtype)
    w0 = w.astype(np.float64)
    h = np.zeros((B, 2 * (ncv + 1)))
    beta = np.zeros(B)
    active = np.array([0, 2], dtype=np.int64)
    k.orth_step(V, j, w, h, beta, active, 2)
    for b in active:
        basis = V[b, : j + 1].astype(np.float64)
        np.testing.assert_allclose(h[b, : j + 1], basis @ w0[b], rtol=1e-5, atol=1e-5)
        assert np.abs(basis @ V[b, j + 1].astype(np.float64)).max() < 10 * np.finfo(dtype).eps
        np.testing.assert_allclose(np.linalg.norm(V[b, j + 1].astype(np.float64)), 1, rtol=1e-5)
        resid = w0[b] - h[b, : j + 1] @ basis
        np.testing.assert_allclose(beta[b], np.linalg.norm(resid), rtol=1e-5)
    assert (V[1, j + 1] == 0).all()  # inactive matrix untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_floor(backend):
    a = np.arange(1000, dtype=np.float32)
    assert kernels(backend).read_floor(a, 2) == pytest.approx(float(a.sum()))


def test_kernels_do_not_compile_at_import():
    import subprocess
    import sys

    code = (
        "import fastopt, fastopt.spectral._numba as k; "
        "print(sum(len(f.signatures) for f in (k._dot, k._wtwv_rows, k._wtwv_batch, "
        "k._wtwv_split, k._matvec, k._orth, k._read_floor, k._sum, k._tridiag_top)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"  # nothing compiled (or loaded from cache) at import


@pytest.mark.parametrize("backend", BACKENDS)
def test_tridiag_top_matches_eigh(backend):
    k = kernels(backend)
    rng = np.random.default_rng(4)
    for K, offdiag in [(1, 1.0), (2, 1.0), (9, 1.0), (40, 1e-3), (60, 1e-9), (25, 0.0)]:
        B = 4
        alpha = rng.standard_normal((B, K + 1)) * 3
        beta = np.abs(rng.standard_normal((B, K + 1))) * offdiag
        theta = np.zeros(B)
        s2 = np.zeros(B)
        active = np.array([0, 1, 3], dtype=np.int64)
        k.tridiag_top(alpha, beta, K, active, theta, s2, np.zeros((B, K + 1)), 2)
        for b in active:
            T = np.diag(alpha[b, :K]) + np.diag(beta[b, : K - 1], 1) + np.diag(beta[b, : K - 1], -1)
            ev, S = np.linalg.eigh(T)
            np.testing.assert_allclose(theta[b], ev[-1], rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(np.sqrt(s2[b]), abs(S[-1, -1]), atol=1e-6)
        assert theta[2] == 0 and s2[2] == 0  # inactive: untouched
    zero = np.zeros((1, 5))
    theta = np.ones(1)
    s2 = np.zeros(1)
    k.tridiag_top(zero, zero, 5, np.zeros(1, np.int64), theta, s2, np.zeros((1, 5)), 1)
    assert theta[0] == 0.0


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_every_backend_sizes_work_like_the_shared_plan(backend):
    from fastopt.spectral import _plan

    k = kernels(backend)
    # one formula for every backend: the kernels re-export the plan's functions
    assert k.work_shape is _plan.work_shape and k.n_chunks is _plan.n_chunks
    for args in [(1, 37, 300, 1), (1, 37, 300, 2), (5, 3, 8, 4), (0, 1, 1, 3)]:
        assert tuple(k.work_shape(*args)) == _plan.work_shape(*args)
        assert k.n_chunks(args[1], args[3]) == _plan.n_chunks(args[1], args[3])
