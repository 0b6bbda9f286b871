"""Bad input gets a clear error and changes nothing; inputs are never modified."""

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import BatchNorm, batch_norm_backward, batch_norm_forward

BACKENDS = compiled_backends("batchnorm") + ["numpy"]


def inputs(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5)).astype(dtype)
    return x, np.ones(3, dtype), np.zeros(3, dtype)


@pytest.mark.parametrize(
    "dtype, hint",
    [
        (np.int64, "astype"),
        (np.bool_, "astype"),
        (np.float16, "float16"),
        (np.complex64, "complex"),
    ],
)
def test_unsupported_dtypes_raise_type_error_with_hint(dtype, hint):
    with pytest.raises(TypeError, match=f"x: dtype .*{hint}"):
        batch_norm_forward(np.ones((4, 3), dtype=dtype))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weight=np.ones(4, np.float32)), "weight: expected shape"),
        (dict(bias=np.ones(2, np.float32)), "bias: expected shape"),
        (dict(weight=np.ones(3, np.float64)), "weight: dtype"),
        (dict(running_mean=np.zeros(3, np.float32), running_var=np.ones(4, np.float32)),
         "running_var: expected shape"),
        (dict(running_mean=np.zeros(3, np.float64), running_var=np.ones(3, np.float64)),
         "running_mean: dtype"),
        (dict(running_mean=np.zeros(3, np.float32)), "give both"),
        (dict(axis=3), "axis: 3 is out of range"),
        (dict(axis=-4), "axis: -4 is out of range"),
        (dict(eps=0.0), "eps: must be finite and > 0"),
        (dict(eps=-1e-5), "eps"),
        (dict(momentum=1.5), "momentum: must be in"),
        (dict(momentum=-0.1), "momentum"),
        (dict(out=np.empty((4, 3, 6), np.float32)), "out: expected shape"),
        (dict(out=np.empty((4, 3, 5), np.float64)), "out: expected dtype"),
        (dict(out=np.empty((5, 3, 4), np.float32).transpose(2, 1, 0)), "out: must be C-contig"),
        (dict(training=False), "required when training=False"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    x, w, b = inputs()
    args = dict(weight=w, bias=b)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        batch_norm_forward(x, **args)


def test_rank_and_single_value_errors():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        batch_norm_forward(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_forward(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_forward(np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="is empty"):
        batch_norm_forward(np.ones((0, 3), np.float32))
    # one value per channel is fine in eval mode
    y = batch_norm_forward(np.ones((1, 3), np.float32), training=False,
                           running_mean=np.zeros(3, np.float32),
                           running_var=np.ones(3, np.float32)).y
    assert y.shape == (1, 3)


def test_unknown_backend():
    x, w, b = inputs()
    with pytest.raises(ValueError, match="backend"):
        batch_norm_forward(x, backend="gpu")


def test_check_finite_raises_and_changes_nothing():
    x, w, b = inputs()
    x[1, 2, 3] = np.inf
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.full_like(x, 7)
    with pytest.raises(ValueError, match="non-finite"):
        batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, out=out, check_finite=True)
    assert (rm == 0).all() and (rv == 1).all() and (out == 7).all()


def test_rejected_call_changes_running_stats_nothing():
    x, w, b = inputs()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError):
        batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, eps=-1)
    with pytest.raises(ValueError):
        batch_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                           out=np.empty((2, 2), np.float32))
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_not_modified_and_read_only_inputs_work(backend):
    x, w, b = inputs()
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    for arr in (x, w, b, dy):
        arr.setflags(write=False)
    copies = [a.copy() for a in (x, w, b, dy)]
    y, mean, invstd = batch_norm_forward(x, w, b, backend=backend)
    batch_norm_backward(dy, x, mean, invstd, w, backend=backend)
    for arr, orig in zip((x, w, b, dy), copies, strict=True):
        np.testing.assert_array_equal(arr, orig)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_may_be_x_for_in_place_forward(backend):
    x, w, b = inputs()
    expected = batch_norm_forward(x, w, b, backend=backend).y
    res = batch_norm_forward(x, w, b, out=x, backend=backend)
    assert res.y is x
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_out_may_be_dy(backend):
    x, w, b = inputs()
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    y, mean, invstd = batch_norm_forward(x, w, b)
    expected = batch_norm_backward(dy, x, mean, invstd, w, backend=backend).dx
    res = batch_norm_backward(dy, x, mean, invstd, w, out=dy, backend=backend)
    assert res.dx is dy
    np.testing.assert_allclose(dy, expected, rtol=1e-6, atol=1e-6)


def test_out_partially_overlapping_input_is_rejected():
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    buf = np.empty((6, 3), np.float32)
    buf[:5] = x
    with pytest.raises(ValueError, match="overlaps"):
        batch_norm_forward(buf[:5], out=buf[1:])


def test_non_contiguous_input_is_accepted():
    x = np.random.default_rng(0).standard_normal((6, 8, 3)).astype(np.float64)
    strided = np.moveaxis(x, 2, 1)  # (6, 3, 8), not contiguous
    got = batch_norm_forward(strided, axis=1)
    ref = batch_norm_forward(np.ascontiguousarray(strided), axis=1, backend="numpy")
    np.testing.assert_allclose(got.y, ref.y, rtol=1e-12, atol=1e-12)


def test_backward_argument_errors():
    x, w, b = inputs()
    y, mean, invstd = batch_norm_forward(x, w, b)
    with pytest.raises(ValueError, match="dy: shape"):
        batch_norm_backward(np.ones((4, 3, 4), np.float32), x, mean, invstd)
    with pytest.raises(ValueError, match="dy: dtype"):
        batch_norm_backward(np.ones(x.shape), x, mean, invstd)
    with pytest.raises(ValueError, match="mean: expected shape"):
        batch_norm_backward(np.ones_like(x), x, mean[:2], invstd)
    with pytest.raises(TypeError, match="dy: dtype int"):
        batch_norm_backward(np.ones(x.shape, int), x, mean, invstd)


def test_layer_argument_errors():
    with pytest.raises(ValueError):
        BatchNorm(0)
    with pytest.raises(ValueError):
        BatchNorm(3, momentum=2.0)
    with pytest.raises(TypeError):
        BatchNorm(3, dtype=np.int32)
    bn = BatchNorm(3)
    with pytest.raises(ValueError, match="channels"):
        bn.forward(np.ones((4, 5), np.float32))
    with pytest.raises(RuntimeError, match="forward first"):
        bn.backward(np.ones((4, 3), np.float32))
    assert bn.num_batches_tracked == 0
