"""Compiled batch-norm kernels against the float64 numpy reference: layouts, dtypes, modes."""

import numpy as np
import pytest
from conftest import compiled_backends, tolerance
from hypothesis import given
from hypothesis import strategies as st

from fastopt import _dispatch, batch_norm_backward, batch_norm_forward
from fastopt.batchnorm import _plan
from fastopt.batchnorm._plan import make_plan

BACKENDS = compiled_backends("batchnorm")
DTYPES = [np.float32, np.float64]
# (shape, axis): (N, C), (N, C, L), NCHW with per-channel and chunked plans, NCDHW,
# channels-last, a middle axis, odd sizes
LAYOUTS = [
    ((37, 5), 1),
    ((6, 9, 17), 1),
    ((4, 8, 5, 7), 1),  # inner 35 >= 16, C 8 >= 2 threads, 4 runs: per-channel plan
    ((3, 3, 6, 6), 1),  # few channels: chunked plan
    ((2, 4, 3, 4, 5), 1),
    ((5, 4, 3, 6), -1),
    ((4, 7, 6), 2),
    ((5, 6, 4), 0),
    ((9, 2, 1, 1), 1),
    ((7, 300), 1),  # rows of several 64-byte lines plus a partial vector (channels-last sweeps)
]


def make_inputs(shape, axis, dtype, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    w = rng.standard_normal(c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


def close(a, b, dtype, scale=1.0):
    np.testing.assert_allclose(a, b, rtol=tolerance(dtype) * 10, atol=tolerance(dtype) * 10 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_training_forward_and_backward_match_reference(backend, dtype, shape, axis):
    x, w, b, dy = make_inputs(shape, axis, dtype)
    ref = batch_norm_forward(x, w, b, axis=axis, backend="numpy")
    got = batch_norm_forward(x, w, b, axis=axis, backend=backend)
    assert got.y.dtype == dtype and got.mean.dtype == dtype and got.invstd.dtype == dtype
    close(got.y, ref.y, dtype, 10)
    close(got.mean, ref.mean, dtype)
    close(got.invstd, ref.invstd, dtype)
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, w, axis=axis, backend="numpy")
    ggot = batch_norm_backward(dy, x, got.mean, got.invstd, w, axis=axis, backend=backend)
    close(ggot.dx, gref.dx, dtype, 10)
    close(ggot.dweight, gref.dweight, dtype, np.sqrt(x.size))
    close(ggot.dbias, gref.dbias, dtype, np.sqrt(x.size))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", LAYOUTS[::2])
def test_eval_forward_and_backward_match_reference(backend, dtype, shape, axis):
    x, w, b, dy = make_inputs(shape, axis, dtype, seed=1)
    c = shape[axis]
    rm = np.linspace(-1, 1, c).astype(dtype)
    rv = np.linspace(0.5, 2, c).astype(dtype)
    ref = batch_norm_forward(x, w, b, axis=axis, training=False, running_mean=rm.copy(),
                             running_var=rv.copy(), backend="numpy")
    got = batch_norm_forward(x, w, b, axis=axis, training=False, running_mean=rm,
                             running_var=rv, backend=backend)
    close(got.y, ref.y, dtype, 10)
    np.testing.assert_array_equal(got.mean, rm)
    close(got.invstd, 1 / np.sqrt(rv.astype(np.float64) + 1e-5), dtype)
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, w, axis=axis, training=False,
                               backend="numpy")
    ggot = batch_norm_backward(dy, x, got.mean, got.invstd, w, axis=axis, training=False,
                               backend=backend)
    close(ggot.dx, gref.dx, dtype, 10)
    close(ggot.dweight, gref.dweight, dtype, np.sqrt(x.size))
    close(ggot.dbias, gref.dbias, dtype, np.sqrt(x.size))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("n_chunks", [1, 3])
def test_both_work_splits_agree(backend, per_channel, n_chunks):
    """Call the kernels directly with each strategy (the plan normally picks one)."""
    kernels = _dispatch.load("batchnorm", backend)
    x, w, b, dy = make_inputs((5, 6, 20), 1, np.float64, seed=3)
    w64, b64 = w.astype(float), b.astype(float)
    ref_y, ref_mean, ref_var, ref_inv = reference_forward(x, w64, b64)
    y = np.empty_like(x)
    mean, var, inv = np.empty(6), np.empty(6), np.empty(6)
    plan = _plan.Plan(per_channel, n_chunks, 2)
    kernels.forward_train(x, w64, b64, 1e-5, y, mean, var, inv, plan)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-12)
    dx = np.empty_like(x)
    dw, db = np.empty(6), np.empty(6)
    kernels.backward(dy, x, mean, inv, w64, True, dx, dw, db, plan)
    ref = reference_backward(dy, x, mean, inv, w64)
    np.testing.assert_allclose(dx, ref[0], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dw, ref[1], rtol=1e-11, atol=1e-11)


def reference_forward(x, w64, b64, eps=1e-5):
    """(y, mean, var, invstd) from the numpy reference kernel."""
    c = x.shape[1]
    y, mean, var, inv = np.empty_like(x), np.empty(c), np.empty(c), np.empty(c)
    _dispatch.load("batchnorm", "numpy").forward_train(x, w64, b64, eps, y, mean, var, inv, None)
    return y, mean, var, inv


def reference_backward(dy, x, mean, inv, w64, training=True):
    """(dx, dweight, dbias) from the numpy reference kernel."""
    c = x.shape[1]
    dx, dw, db = np.empty_like(x), np.empty(c), np.empty(c)
    _dispatch.load("batchnorm", "numpy").backward(dy, x, mean, inv, w64, training, dx, dw, db,
                                                  None)
    return dx, dw, db


def at_offset(shape, dtype, offset_bytes):
    """An empty array whose data starts ``offset_bytes`` past a 64-byte boundary."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(n + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset_bytes
    return raw[start:start + n].view(dtype).reshape(shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer, C, inner, per_channel, row_block",
                         [(69, 300, 1, False, 4), (69, 300, 1, False, 1), (21, 37, 1, False, 4),
                          (3, 5, 1, False, 4), (7, 5, 37, False, 4), (3, 6, 70, True, 4)])
def test_sweeps_agree_for_any_address_stream_and_thread_count(backend, dtype, outer, C, inner,
                                                              per_channel, row_block):
    """Channels-last row sweeps (inner == 1): 4-row sum blocks plus tail rows (3 chunks of 23
    rows) or one row at a time, rows of several 64-byte lines (C = 300), rows that are not a
    multiple of 64 bytes; runs of inner > 1 (chunked and per channel) with a streaming head,
    body and tail. Inputs and outputs at every alignment, in place or not, streamed or not, on
    1 or 2 threads: bitwise equal results, and equal to the reference."""
    kernels = _dispatch.load("batchnorm", backend)
    rng = np.random.default_rng(4)
    x0 = (rng.standard_normal((outer, C, inner)) * 3 + 5).astype(dtype)
    dy0 = rng.standard_normal((outer, C, inner)).astype(dtype)
    w64, b64 = rng.standard_normal(C), rng.standard_normal(C)

    def run(offset, stream, n_threads, in_place):
        x = at_offset(x0.shape, dtype, offset)
        x[...] = x0
        dy = at_offset(x0.shape, dtype, offset)
        dy[...] = dy0
        mean, var, inv, dw, db = (np.empty(C) for _ in range(5))
        ye = at_offset(x0.shape, dtype, offset)
        zero, one = np.zeros(C), np.ones(C)
        kernels.forward_eval(x, zero, one, w64, b64, ye,
                             _plan.Plan(per_channel, 3, n_threads, stream))
        dx = dy if in_place else at_offset(x0.shape, dtype, offset)
        y = x if in_place else at_offset(x0.shape, dtype, offset)
        plan = _plan.Plan(per_channel, 3, n_threads, stream, row_block)
        kernels.forward_train(x, w64, b64, 1e-5, y, mean, var, inv, plan)
        y = y.copy()
        x[...] = x0  # the in-place forward overwrote x
        kernels.backward(dy, x, mean, inv, w64, True, dx, dw, db, plan)
        return y, mean, var, dx.copy(), dw, db, ye.copy()

    first = run(0, False, 1, False)
    for args in [(4, False, 2, False), (16, True, 2, False), (8, True, 1, True),
                 (0, True, 2, True)]:
        for a, b in zip(first, run(*args), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"offset/stream/threads/in-place {args}")
    y, mean, var, dx, dw, db, ye = first
    ref_y, ref_mean, ref_var, ref_inv = reference_forward(x0, w64, b64)
    close(y, ref_y, dtype, 10)
    np.testing.assert_allclose(var, ref_var, rtol=1e-12 if dtype == np.float64 else 1e-6)
    close(dx, reference_backward(dy0, x0, ref_mean, ref_inv, w64)[0], dtype, 10)
    close(ye, x0 * w64[:, None] + b64[:, None], dtype, 10)


def test_plan_streams_only_when_the_call_outgrows_the_cache():
    rows = _plan.CACHE_BYTES // 4 // 1024  # float32 rows of 1024 values filling the cache
    assert not make_plan(rows // 2, 1024, 1, 2, 4).stream  # forward: x and y just fit
    assert make_plan(rows // 2, 1024, 1, 2, 4, n_arrays=3).stream  # backward: x, dy, dx do not
    assert make_plan(rows, 1024, 1, 2, 4).stream
    assert not make_plan(rows, 1024, 1, 2, 1).stream  # a quarter of the bytes
    assert not make_plan(rows * 1024, 3, 1, 2, 4).stream  # rows too short to stream
    assert make_plan(rows * 1024 // (256 * 784) + 1, 256, 784, 2, 4).stream  # NCHW runs of 3 KiB
    assert not make_plan(rows * 1024 // 8, 4, 8, 2, 4).stream  # runs of 32 bytes


def test_cache_size_parsing():
    assert _plan.parse_cache_size("32768K\n") == 32 << 20
    assert _plan.parse_cache_size("1M") == 1 << 20
    assert _plan.parse_cache_size("512") == 512
    assert _plan.parse_cache_size("") is None
    assert _plan.parse_cache_size("unknown") is None
    assert _plan.CACHE_BYTES > 0


def test_plan_sums_one_row_at_a_time_only_when_the_input_streams_from_memory():
    rows = _plan.CACHE_BYTES // 4 // 1024
    assert make_plan(rows, 1024, 1, 2, 4).row_block == 4  # forward: x fits
    assert make_plan(rows, 1024, 1, 2, 4, n_arrays=3).row_block == 1  # backward: x + dy do not
    assert make_plan(rows // 2, 1024, 1, 2, 4, n_arrays=3).row_block == 4
    assert make_plan(2 * rows, 1024, 1, 2, 4).row_block == 1


def test_plan_chooses_per_channel_only_with_long_runs_and_many_channels():
    assert make_plan(8, 512, 196, 2, 4).per_channel
    assert not make_plan(128, 256, 784, 2, 4).per_channel  # many runs per slab: rows stream faster
    assert not make_plan(128, 3, 784, 2, 4).per_channel
    assert not make_plan(4096, 1024, 1, 2, 4).per_channel
    assert make_plan(5, 6, 20, 2, 4).n_chunks == 5
    assert make_plan(5, 6, 20, 2, 4).n_threads == 1  # too small to be worth a second thread
    assert make_plan(128, 256, 784, 2, 4).n_threads == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_large_offset_keeps_variance(backend):
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((64, 4, 8, 8))).astype(np.float32)
    got = batch_norm_forward(x, backend=backend)
    var64 = x.astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(1 / got.invstd.astype(np.float64) ** 2 - 1e-5, var64, rtol=1e-4)
    assert np.abs(got.y.astype(np.float64).std(axis=(0, 2, 3)) - 1).max() < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [1, -1])
def test_nan_stays_in_its_channel(backend, axis):
    x, w, b, dy = make_inputs((6, 5, 4, 4), 1, np.float32, seed=4)
    if axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    idx = [1, 1, 1, 1]
    idx[axis] = 2
    x[tuple(idx)] = np.nan
    got = batch_norm_forward(x, axis=axis, backend=backend)
    nan_channels = np.isnan(np.moveaxis(got.y, axis, 0)).all(axis=(1, 2, 3))
    np.testing.assert_array_equal(nan_channels, [False, False, True, False, False])
    assert np.isnan(got.mean[2]) and np.isfinite(np.delete(got.mean, 2)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inf_channel_matches_torch_semantics(backend):
    x, *_ = make_inputs((4, 3, 5), 1, np.float64, seed=5)
    x[1, 0, 2] = np.inf
    got = batch_norm_forward(x, backend=backend)
    assert got.mean[0] == np.inf  # as PyTorch: mean Inf, variance NaN
    assert np.isnan(got.y[:, 0]).all() and np.isfinite(got.y[:, 1:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_for_a_thread_count(backend):
    import fastopt

    # large enough for two threads; the chunk count does not depend on the thread count (<= 4),
    # so results are even bitwise identical across thread counts
    x, w, b, dy = make_inputs((64, 3, 200), 1, np.float32, seed=6)
    first = batch_norm_forward(x, w, b, backend=backend)
    again = batch_norm_forward(x.copy(), w, b, backend=backend)
    np.testing.assert_array_equal(first.y, again.y)
    g1 = batch_norm_backward(dy, x, first.mean, first.invstd, w, backend=backend)
    old = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        one = batch_norm_forward(x, w, b, backend=backend)
        g2 = batch_norm_backward(dy, x, first.mean, first.invstd, w, backend=backend)
    finally:
        fastopt.set_num_threads(old)
    np.testing.assert_array_equal(one.y, first.y)
    np.testing.assert_array_equal(g1.dweight, g2.dweight)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    data=st.data(),
    ndim=st.integers(2, 4),
    dtype=st.sampled_from(DTYPES),
    training=st.booleans(),
)
def test_random_shapes_match_reference(backend, data, ndim, dtype, training):
    shape = tuple(data.draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    if training and np.prod(shape) // shape[axis] < 2:
        shape = (2,) + shape[1:] if axis % ndim != 0 else shape[:1] + (2,) + shape[2:]
    x, w, b, dy = make_inputs(shape, axis, dtype, seed=data.draw(st.integers(0, 99)))
    c = shape[axis]
    stats = dict(running_mean=np.zeros(c, dtype), running_var=np.ones(c, dtype))
    ref_stats = {k: v.copy() for k, v in stats.items()}
    ref = batch_norm_forward(x, w, b, axis=axis, training=training, backend="numpy", **ref_stats)
    got = batch_norm_forward(x, w, b, axis=axis, training=training, backend=backend, **stats)
    close(got.y, ref.y, dtype, 100)
    close(stats["running_var"], ref_stats["running_var"], dtype)
    gref = batch_norm_backward(dy, x, ref.mean, ref.invstd, w, axis=axis, training=training,
                               backend="numpy")
    ggot = batch_norm_backward(dy, x, got.mean, got.invstd, w, axis=axis, training=training,
                               backend=backend)
    close(ggot.dx, gref.dx, dtype, 100)
