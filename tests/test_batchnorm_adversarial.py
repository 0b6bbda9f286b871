"""Reliability of batch norm: constant and huge channels, memory overlap, shared layers and
interrupts, clear errors. Every class on every CPU backend."""

import threading

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import BatchNorm, batch_norm_backward, batch_norm_forward
from fastopt.batchnorm import layer as layer_module

BACKENDS = compiled_backends("batchnorm") + ["numpy"]


# ---------------------------------------------------------------- constant / huge channels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value, eps", [(1e30, 1e-5), (7.0, 1e-30), (7.0, 1e-300),
                                        (-3e38, 1e-5)])
@pytest.mark.parametrize("shape, axis", [((4, 2, 8), 1), ((16, 3), 1), ((5, 3, 6, 4), -1),
                                         ((3, 2, 40), 1)])
def test_constant_channels_normalize_to_the_bias(backend, value, eps, shape, axis):
    x = np.full(shape, value, np.float32)
    c = shape[axis]
    bias = np.arange(c, dtype=np.float32)
    with np.errstate(over="ignore"):
        got = batch_norm_forward(x, None, bias, axis=axis, eps=eps, backend=backend)
    want = np.broadcast_to(np.expand_dims(bias, tuple(i for i in range(len(shape))
                                                     if i != axis % len(shape))), shape)
    np.testing.assert_array_equal(got.y, want)
    if not np.isfinite(got.invstd).all():  # 1/sqrt(eps) overflows float32: nothing to check
        return
    dy = np.ones(shape, np.float32)
    g = batch_norm_backward(dy, x, got.mean, got.invstd, axis=axis, backend=backend)
    assert np.isfinite(g.dx).all() and np.abs(g.dx).max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, axis", [((64, 40), 1), ((6, 5, 5, 40), -1), ((9, 40, 33), 1)])
def test_one_constant_channel_among_ordinary_ones(backend, shape, axis):
    """The row sweeps fold the mean into the constant unless a channel needs the subtraction:
    a call with one such channel must still get every channel right."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    index = [slice(None)] * len(shape)
    index[axis] = 3
    x[tuple(index)] = 1e30
    bias = np.linspace(-1, 1, 40).astype(np.float32)
    got = batch_norm_forward(x, None, bias, axis=axis, backend=backend)
    ref = batch_norm_forward(x, None, bias, axis=axis, backend="numpy")
    assert (np.moveaxis(got.y, axis, 0)[3] == bias[3]).all()
    np.testing.assert_allclose(got.y, ref.y, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(shape).astype(np.float32)
    g = batch_norm_backward(dy, x, got.mean, got.invstd, axis=axis, backend=backend)
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, axis=axis, backend="numpy")
    np.testing.assert_allclose(g.dx, gref.dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_offset_channel_matches_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (1e30 + 1e25 * rng.standard_normal((8, 3, 16))).astype(np.float32)
    got = batch_norm_forward(x, backend=backend)
    want = torch.nn.functional.batch_norm(torch.from_numpy(x.astype(np.float64)), None, None,
                                          training=True).numpy()
    np.testing.assert_allclose(got.y, want, atol=2e-3)


# ---------------------------------------------------------------- memory overlap


def _cases():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4, 5)).astype(np.float32)
    return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_stats_sharing_memory_are_rejected(backend):
    x = _cases()
    rm = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="running_mean overlaps running_var"):
        batch_norm_forward(x, running_mean=rm, running_var=rm, backend=backend)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="out overlaps running_mean"):
        batch_norm_forward(x, running_mean=out[0, 0, :4], running_var=np.ones(4, np.float32),
                           out=out, backend=backend)
    w = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="running_var overlaps weight"):
        batch_norm_forward(x, w, running_mean=np.zeros(4, np.float32), running_var=w,
                           backend=backend)
    assert (w == 1).all() and (rm == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_overlapping_a_non_contiguous_x_is_rejected(backend):
    buf = np.random.default_rng(2).standard_normal((6, 4, 10)).astype(np.float32)
    x = buf[:, :, ::2]  # non-contiguous: the API copies it, the check must see buf
    before = buf.copy()
    out = buf[:, :, 5:].copy()
    out_view = np.ascontiguousarray(buf[:, :, :5])  # a copy: no overlap, accepted
    batch_norm_forward(x, out=out_view, backend=backend)
    flat = buf.reshape(-1)[: x.size].reshape(x.shape)  # contiguous, overlaps x's memory
    with pytest.raises(ValueError, match="out overlaps x"):
        batch_norm_forward(x, out=flat, backend=backend)
    np.testing.assert_array_equal(buf, before)
    del out


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_out_may_be_dy_but_not_a_shifted_view(backend):
    x = _cases()
    f = batch_norm_forward(x, backend=backend)
    buf = np.random.default_rng(3).standard_normal(x.size + 4).astype(np.float32)
    dy = buf[:-4].reshape(x.shape)
    with pytest.raises(ValueError, match="out overlaps dy"):
        batch_norm_backward(dy, x, f.mean, f.invstd, out=buf[4:].reshape(x.shape),
                            backend=backend)
    want = batch_norm_backward(dy.copy(), x, f.mean, f.invstd, backend=backend).dx
    got = batch_norm_backward(dy, x, f.mean, f.invstd, out=dy, backend=backend).dx
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- shared state


def test_layer_shared_by_threads_keeps_the_cumulative_average():
    bn = BatchNorm(3, momentum=None)
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((8, 3, 4)).astype(np.float32) + i for i in range(32)]

    def work(chunk):
        for xb in chunk:
            bn.forward(xb)

    threads = [threading.Thread(target=work, args=(batches[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bn.num_batches_tracked == 32
    want = np.mean([xb.mean(axis=(0, 2)) for xb in batches], axis=0)
    np.testing.assert_allclose(bn.running_mean, want, rtol=1e-5)


def test_interrupt_leaves_the_layer_state_whole(monkeypatch):
    bn = BatchNorm(2, momentum=None)
    x = np.random.default_rng(5).standard_normal((4, 2, 3)).astype(np.float32)
    bn.forward(x)
    before = (bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked)
    real = layer_module.batch_norm_forward

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the kernel ran and updated its temporaries
        raise KeyboardInterrupt

    monkeypatch.setattr(layer_module, "batch_norm_forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bn.forward(x + 5)
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    assert bn.num_batches_tracked == before[2]


def test_interrupt_during_a_commit_is_delivered_after_it():
    import os
    import signal

    from fastopt.batchnorm._atomic import deferred_interrupts

    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            done.append(1)  # still runs: the interrupt waits for the block's end
    assert done == [1]


# ---------------------------------------------------------------- clear errors


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_matrix_and_masked_arrays_get_clear_errors(backend):
    x = _cases()[:, :, 0].copy()
    with pytest.raises(TypeError, match="out: np.matrix"):
        batch_norm_forward(x, out=np.asmatrix(np.empty_like(x)), backend=backend)
    with pytest.raises(TypeError, match="x: masked arrays"):
        batch_norm_forward(np.ma.masked_array(x, mask=x > 0), backend=backend)
    with pytest.raises(TypeError, match="weight: masked arrays"):
        batch_norm_forward(x, np.ma.masked_array(np.ones(4, np.float32)), backend=backend)
    f = batch_norm_forward(x, backend=backend)
    with pytest.raises(TypeError, match="dy: masked arrays"):
        batch_norm_backward(np.ma.masked_array(x), x, f.mean, f.invstd, backend=backend)


def test_layer_dtype_mismatch_names_x_and_the_fix():
    bn = BatchNorm(4, dtype=np.float32)
    with pytest.raises(ValueError, match=r"x: dtype float64 does not match the layer's dtype "
                                         r"float32; convert with x.astype\(np.float32\)"):
        bn.forward(np.zeros((3, 4)))
    assert bn.num_batches_tracked == 0


# ---------------------------------------------------------------- speed under load


def test_threads_for_call_leaves_busy_cpus_to_their_processes(monkeypatch):
    from fastopt import _threads

    monkeypatch.setattr(_threads, "_default_cpus", lambda: 4)
    monkeypatch.setattr(_threads, "_own_running_tids", lambda: {"1", "2"})
    for running, want in [(2, 4), (3, 3), (5, 1), (40, 1)]:
        monkeypatch.setattr(_threads, "_running_tasks", lambda path, r=running: r)
        for _ in range(2):  # the smaller of two looks: a load shows in both
            monkeypatch.setitem(_threads._load_state, "at", -1.0)
            got = _threads.threads_for_call(4)
        assert got == want, running
    monkeypatch.setattr(_threads, "_running_tasks", lambda path: 2)  # the load is gone
    monkeypatch.setitem(_threads._load_state, "at", -1.0)
    assert _threads.threads_for_call(4) == 4
    assert _threads.threads_for_call(1) == 1


def test_a_passing_task_takes_no_thread(monkeypatch):
    import time

    from fastopt import _threads

    monkeypatch.setattr(_threads, "_default_cpus", lambda: 2)
    monkeypatch.setattr(_threads, "_own_running_tids", lambda: {"1"})
    monkeypatch.setattr(_threads, "_running_tasks", lambda path: 1)
    monkeypatch.setitem(_threads._load_state, "at", -1.0)
    assert _threads.threads_for_call(2) == 2
    monkeypatch.setattr(_threads, "_running_tasks", lambda path: 2)  # one look sees a task
    monkeypatch.setitem(_threads._load_state, "at", time.monotonic() - 0.2)
    assert _threads.threads_for_call(2) == 2


@pytest.mark.parametrize("backend", compiled_backends("batchnorm"))
def test_results_follow_the_configured_threads_not_the_running_ones(backend, monkeypatch):
    from fastopt import _threads

    x = np.random.default_rng(8).standard_normal((64, 300)).astype(np.float32)
    monkeypatch.setattr(_threads, "free_cpus", lambda: 64)
    full = batch_norm_forward(x, backend=backend)
    monkeypatch.setattr(_threads, "free_cpus", lambda: 1)
    loaded = batch_norm_forward(x, backend=backend)
    np.testing.assert_array_equal(full.y, loaded.y)
    np.testing.assert_array_equal(full.mean, loaded.mean)
