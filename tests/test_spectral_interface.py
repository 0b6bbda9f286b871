"""One kernel interface for the spectra family, and the thread team of the solvers."""

from __future__ import annotations

import inspect
import pathlib
import types

import numpy as np
import pytest
from conftest import compiled_backends

import fastopt
from fastopt import _dispatch
from fastopt.reference import spectral as ref
from fastopt.spectral import _common

KERNELS = ("wtwv", "matvec", "orth_step", "tridiag_top", "read_floor", "n_chunks", "work_shape",
           "simd_level")


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def interface_mismatches(module, reference=ref):
    """Kernel functions of ``module`` that are missing or whose signature differs from the
    reference's (names, kinds and defaults of the parameters)."""
    bad = []
    for name in KERNELS:
        fn = getattr(module, name, None)
        if fn is None:
            bad.append(f"{name}: missing")
        elif _params(fn) != _params(getattr(reference, name)):
            want = inspect.signature(getattr(reference, name))
            bad.append(f"{name}: {inspect.signature(fn)} != {want}")
    return bad


@pytest.mark.parametrize("backend", compiled_backends("spectral"))
def test_backends_have_the_reference_kernel_signatures(backend):
    assert interface_mismatches(_dispatch.load("spectral", backend)) == []


def test_the_signature_check_can_fail():
    fake = types.SimpleNamespace(**{name: getattr(ref, name) for name in KERNELS})
    fake.wtwv = lambda W, x, t, y, active, work, n_threads: None  # no n_workers
    del fake.simd_level
    bad = interface_mismatches(fake)
    assert any(b.startswith("wtwv:") for b in bad) and "simd_level: missing" in bad


def test_front_end_has_no_backend_branches():
    root = pathlib.Path(fastopt.__file__).parent / "spectral"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert 'backend ==' not in text and "backend !=" not in text, path.name


@pytest.mark.parametrize("backend", compiled_backends("spectral"))
def test_simd_level(backend):
    assert _dispatch.load("spectral", backend).simd_level() in (0, 3, 4)


@pytest.mark.parametrize("backend", compiled_backends("spectral"))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fewer_workers_give_the_same_bits(backend, dtype):
    # the work split is planned for n_threads; n_workers only says who runs it
    k = _dispatch.load("spectral", backend)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((1, 301, 77)).astype(dtype)
    x = rng.standard_normal((1, 77)).astype(dtype)
    active = np.zeros(1, np.int64)
    out = []
    for workers in (1, 2, 0):
        t, y = np.empty((1, 301), dtype), np.empty((1, 77), dtype)
        work = np.empty(k.work_shape(1, 301, 77, 3))
        k.wtwv(W, x, t, y, active, work, 3, workers)
        out.append(y.copy())
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_team_drops_to_one_worker_when_parallel_passes_stall(monkeypatch):
    monkeypatch.setattr(_common, "threads_for", lambda entries: 2)
    monkeypatch.setattr(_common, "_serial_until", [0.0])
    import time

    calls = []

    def kernel(n_threads, n_workers):  # a parallel pass that waits 3 ms at its barrier
        calls.append(n_workers)
        if n_workers > 1:
            time.sleep(3e-3)

    team = _common.Team(10**6)
    for _ in range(6):
        team.timed(kernel)
    assert calls[:3] == [2, 1, 2] and team.workers == 1 and set(calls[3:]) == {1}
    assert _common.Team(10**6).workers == 1  # the next call starts on one worker
    monkeypatch.setattr(_common, "_serial_until", [0.0])
    assert _common.Team(10**6).workers == 2


def test_team_keeps_its_threads_on_a_quiet_machine(monkeypatch):
    monkeypatch.setattr(_common, "threads_for", lambda entries: 2)
    monkeypatch.setattr(_common, "_serial_until", [0.0])
    team = _common.Team(10**6)
    for _ in range(20):
        team.timed(lambda n_threads, n_workers: None)
    assert team.workers == 2


@pytest.mark.parametrize("backend", compiled_backends("spectral"))
def test_solver_results_do_not_depend_on_the_workers(monkeypatch, backend):
    # a Team that dropped to one worker (under load) must give the same bits as two workers
    old = fastopt.get_num_threads()
    rng = np.random.default_rng(5)
    W = rng.standard_normal((400, 400)).astype(np.float32)  # 160K entries: planned for 2
    try:
        fastopt.set_num_threads(2)
        monkeypatch.setattr(_common, "STALL_RATIO", 1e9)  # never drop on timing noise
        monkeypatch.setattr(_common, "_serial_until", [0.0])
        a = fastopt.spectral_norm(W, backend=backend)
        ra = fastopt.spectral_radius(W / 20, backend=backend)
        monkeypatch.setattr(_common, "_serial_until", [float("inf")])
        assert _common.Team(W.size).workers == 1
        b = fastopt.spectral_norm(W, backend=backend)
        rb = fastopt.spectral_radius(W / 20, backend=backend)
    finally:
        fastopt.set_num_threads(old)
    assert a.value == b.value and a.iterations == b.iterations
    assert ra.value == rb.value and ra.iterations == rb.iterations
