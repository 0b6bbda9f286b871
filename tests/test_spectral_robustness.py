"""Reliability of the spectra family: every input gets a right answer or a clear error.

Classes: starting vectors of any finite nonzero scale (spectral_norm, lanczos_extremes),
init.scale_to_spectral_radius under/overflow, clear errors (init, every public function),
masked arrays refused, SpectralNormState updates atomically (threads, KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest
from conftest import compiled_backends

import fastopt.init as init
from fastopt import (
    SpectralNormState,
    gradient_flow,
    lanczos_extremes,
    spectral_norm,
    spectral_radius,
)

BACKENDS = compiled_backends("spectral") + ["numpy"]


# --- starting vectors of extreme scale -----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e200, 1e-50, 1e-170, 1e-300, 1e300])
def test_spectral_norm_start_vector_of_any_scale(scale, dtype, backend):
    W = np.random.default_rng(0).standard_normal((50, 40)).astype(dtype)
    want = np.linalg.norm(W.astype(np.float64), 2)
    res = spectral_norm(W, v0=np.full(40, scale), backend=backend, return_vectors=True)
    assert res.converged
    np.testing.assert_allclose(res.value, want, rtol=1e-5 if dtype == np.float32 else 1e-9)
    assert np.isfinite(res.v).all() and abs(np.linalg.norm(res.v) - 1) < 1e-5


def test_spectral_norm_batched_start_vectors_of_mixed_scale():
    W = np.random.default_rng(1).standard_normal((3, 30, 20))
    v0 = np.ones((3, 20)) * np.array([[1e-200], [1.0], [1e200]])
    res = spectral_norm(W, v0=v0)
    assert res.converged.all()
    np.testing.assert_allclose(res.value, np.linalg.norm(W, 2, axis=(1, 2)), rtol=1e-9)


def test_start_vector_in_the_null_space_is_not_a_converged_zero():
    # W v0 = 0: the Krylov space is invariant at once; 0 is exact only for that subspace
    W = np.diag([3.0, 0.0, 0.0])
    res = spectral_norm(W, v0=np.array([0.0, 1.0, 0.0]))
    assert res.converged and res.value == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("scale", [1e200, 1e-170, 1e-300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lanczos_start_vector_of_any_scale(scale, dtype):
    A = np.diag(np.arange(1.0, 31.0))
    res = lanczos_extremes(lambda v: A @ v, 30, v0=np.full(30, scale), dtype=dtype, tol=1e-5)
    assert res.converged
    np.testing.assert_allclose([res.largest[0], res.smallest[0]], [30.0, 1.0], rtol=1e-4)


def test_lanczos_tridiagonal_start_vector_of_any_scale():
    from fastopt.spectral.lanczos import lanczos_tridiagonal

    d = np.array([1.0, 2.0, 3.0])
    for scale in (1e200, 1e-300):
        alpha, beta = lanczos_tridiagonal(lambda v: d * v, np.full(3, scale), 5)
        T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        np.testing.assert_allclose(np.linalg.eigvalsh(T), d, atol=1e-12)


# --- scale_to_spectral_radius under/overflow -----------------------------------------------


@pytest.mark.parametrize(
    "dtype, entry, rho",
    [(np.float32, 1e30, 1e-30), (np.float32, 1e-30, 1e30), (np.float32, 1e-20, 1e-20),
     (np.float64, 1e300, 1e-300), (np.float64, 1e-300, 1e300)],
)
def test_scale_to_spectral_radius_extreme_factors_are_right(dtype, entry, rho):
    W = (np.eye(3) * entry).astype(dtype)
    S = init.scale_to_spectral_radius(W, rho)
    assert S.dtype == dtype
    np.testing.assert_allclose(np.diag(S).astype(np.float64), rho, rtol=1e-6)


def test_scale_to_spectral_radius_random_float32_tiny_target():
    W = np.random.default_rng(2).standard_normal((160, 160)).astype(np.float32) * np.float32(1e30)
    S = init.scale_to_spectral_radius(W, 1e-30)
    rho = np.abs(np.linalg.eigvals(S.astype(np.float64))).max()
    np.testing.assert_allclose(rho, 1e-30, rtol=1e-5)


@pytest.mark.parametrize("rho, word", [(1e-45, "underflows"), (1e39, "overflows")])
def test_scale_to_spectral_radius_unrepresentable_raises(rho, word):
    with pytest.raises(ValueError, match=f"rho.*{word} float32"):
        init.scale_to_spectral_radius(np.eye(3, dtype=np.float32), rho)


# --- clear errors ---------------------------------------------------------------------------

W2 = np.ones((3, 3))

BAD_CALLS = [
    (lambda: init.orthogonal(3), TypeError, r"shape.*int 3"),
    (lambda: init.orthogonal("3x3"), TypeError, "shape"),
    (lambda: init.orthogonal((3, 2.5)), TypeError, "shape"),
    (lambda: init.orthogonal((3, 3), gain="2"), TypeError, "gain"),
    (lambda: init.orthogonal((3, 3), dtype=None), TypeError, "dtype"),
    (lambda: init.orthogonal((3, 3), dtype="nonsense"), TypeError, "dtype"),
    (lambda: init.identity_recurrent(3, "2"), TypeError, r"scale.*str"),
    (lambda: init.identity_recurrent(3, None), TypeError, "scale"),
    (lambda: init.identity_recurrent(3, 1.0, dtype=np.int64), TypeError, "dtype"),
    (lambda: init.scale_to_spectral_radius(W2, "0.9"), TypeError, "rho"),
    (lambda: init.scale_to_spectral_radius(W2, np.inf), ValueError, "rho"),
    (lambda: spectral_norm(W2, tol="1e-6"), TypeError, "tol"),
    (lambda: spectral_norm(W2, tol=True), TypeError, "tol"),
    (lambda: spectral_norm(W2, return_vectors="yes"), TypeError, "return_vectors"),
    (lambda: spectral_norm(W2, v0="abc"), TypeError, "v0"),
    (lambda: spectral_radius(W2, tol="1e-6"), TypeError, "tol"),
    (lambda: spectral_radius(W2, maxiter="10"), TypeError, "maxiter"),
    (lambda: lanczos_extremes(lambda v: v, 3, tol="1e-6"), TypeError, "tol"),
    (lambda: lanczos_extremes(lambda v: v, 3, dtype=None), TypeError, "dtype"),
    (lambda: lanczos_extremes(lambda v: v, 3, v0=np.full(3, np.nan)), ValueError, "v0"),
    (lambda: SpectralNormState(3), TypeError, r"shape.*int 3"),
    (lambda: SpectralNormState((3, 3), eps="1e-12"), TypeError, "eps"),
    (lambda: SpectralNormState((3, 3), dtype=None), TypeError, "dtype"),
    (lambda: gradient_flow(W2, steps="5"), TypeError, "steps"),
]


@pytest.mark.parametrize("call, exc, match", BAD_CALLS)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


MASKED = np.ma.array(np.eye(4) * 2, mask=np.eye(4, dtype=bool))


@pytest.mark.parametrize(
    "call",
    [
        lambda: spectral_norm(MASKED),
        lambda: spectral_radius(MASKED),
        lambda: gradient_flow(MASKED),
        lambda: init.scale_to_spectral_radius(MASKED, 1.0),
        lambda: SpectralNormState((4, 4), dtype=np.float64).sigma(MASKED),
        lambda: spectral_norm(np.eye(4), v0=np.ma.array(np.ones(4), mask=[1, 0, 0, 0])),
    ],
)
def test_masked_arrays_are_refused(call):
    with pytest.raises(TypeError, match="masked"):
        call()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_np_matrix_input_gives_the_ndarray_answer():
    M = np.matrix([[3.0, 0.0], [0.0, 1.0]])
    assert spectral_norm(M).value == pytest.approx(3.0)
    assert spectral_radius(M).value == pytest.approx(3.0)
    assert type(init.scale_to_spectral_radius(M, 1.0)) is np.ndarray


# --- SpectralNormState updates atomically --------------------------------------------------


def _slow_weight(n=400, seed=0):
    # sigma_1 / sigma_2 = 1.001: u and v keep moving for hundreds of power iterations
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((n, n)))[0]
    Vt = np.linalg.qr(rng.standard_normal((n, n)))[0]
    s = np.linspace(1.0, 0.5, n)
    s[0] = 1.001
    return (U * s) @ Vt


def test_state_shared_by_threads_equals_sequential_calls():
    W = _slow_weight()
    shared = SpectralNormState(W.shape, dtype=np.float64, seed=0)
    alone = SpectralNormState(W.shape, dtype=np.float64, seed=0)
    n_threads, calls = 8, 25
    barrier = threading.Barrier(n_threads)

    def worker():
        barrier.wait()
        for _ in range(calls):
            shared.sigma(W)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(n_threads * calls):
        alone.sigma(W)
    # every call happened whole: the same power iteration applied 200 times, in any order
    np.testing.assert_array_equal(shared.u, alone.u)
    np.testing.assert_array_equal(shared.v, alone.v)


def _interrupt_after(seconds):
    signal.setitimer(signal.ITIMER_REAL, seconds)


def test_keyboard_interrupt_leaves_the_state_before_or_after_the_call():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    W = _slow_weight(300, 1)
    state = SpectralNormState(W.shape, dtype=np.float64, seed=0, n_power_iterations=4)
    probe = SpectralNormState(W.shape, dtype=np.float64, seed=0, n_power_iterations=4)
    rng = np.random.default_rng(0)
    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    interrupted = 0
    try:
        for _ in range(150):
            before_u, before_v = state.u.copy(), state.v.copy()
            try:
                armed[0] = True
                _interrupt_after(float(rng.uniform(1e-5, 2e-3)))
                state.sigma(W)
                armed[0] = False
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            probe.u[...] = before_u
            probe.v[...] = before_v
            probe.sigma(W)
            unchanged = np.array_equal(state.u, before_u) and np.array_equal(state.v, before_v)
            whole = np.array_equal(state.u, probe.u) and np.array_equal(state.v, probe.v)
            assert unchanged or whole
    finally:
        signal.signal(signal.SIGALRM, old)
    assert interrupted > 10  # the test did interrupt calls


def test_converged_needs_the_residual_checked_in_the_working_dtype(monkeypatch):
    # the recurrence's estimate alone does not make a result converged: the final pass does
    from fastopt.spectral import api

    W = np.random.default_rng(3).standard_normal((2, 40, 30)).astype(np.float32)
    assert spectral_norm(W).converged.all()
    monkeypatch.setattr(api, "checked_residual",
                        lambda W3, kern, vecs, team: np.array([0.0, np.inf]))
    assert spectral_norm(W).converged.tolist() == [True, False]
