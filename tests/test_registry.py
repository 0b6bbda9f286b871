"""Cross-cutting checks of every public array function (tests/registry.py), on every backend.

- inputs are never modified, and read-only inputs give the same result;
- Fortran-ordered, strided and negatively strided inputs give the contiguous result;
- big-endian float32 (``>f4``) works, or raises a TypeError that says how to convert;
- masked arrays with a mask are refused (nothing honours a mask, so none may ignore one);
- a zero-size dimension gives a clear ValueError naming the argument, or a result;
- random inputs (values from tiny to huge, NaN, Inf) give a result or a ValueError/TypeError,
  never another exception and never a crash.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from registry import REGISTRY, Entry, flat_result

from fastopt import _dispatch

FAMILY = {"batch_norm": "batchnorm", "spectral": "spectral", "gradient": "spectral",
          "init": "spectral"}
DTYPES = (np.float64, np.float32)


def _family(entry: Entry) -> str:
    for prefix, family in FAMILY.items():
        if entry.name.startswith(prefix):
            return family
    return "curvature"


def _cases():
    for entry in REGISTRY:
        for backend in entry.backends:
            marks = []
            if backend in ("cython", "numba") and not _dispatch.available(_family(entry),
                                                                          backend):
                marks.append(pytest.mark.skip(reason=f"{backend} unavailable"))
            yield pytest.param(entry, backend, id=f"{entry.name}-{backend}", marks=marks)


CASES = list(_cases())


def _call(entry: Entry, backend: str, arrays: dict[str, np.ndarray]):
    return entry.call(None if backend == "none" else backend, **arrays)


def _assert_same(result, expected, dtype, *, exact: bool = False):
    got, want = flat_result(result), flat_result(expected)
    assert len(got) == len(want)
    tol = 0 if exact else (64 * np.finfo(dtype).eps)
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape
        if g.dtype.kind in "fc":
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * max(1.0, float(
                np.nanmax(np.abs(w), initial=0.0))) if np.isfinite(w).any() else 0.0)
        else:
            np.testing.assert_array_equal(g, w)


def _inputs(entry: Entry, dtype, seed: int = 0) -> dict[str, np.ndarray]:
    return entry.make(np.random.default_rng(seed), np.dtype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize(("entry", "backend"), CASES)
def test_inputs_not_modified_and_read_only_inputs_work(entry, backend, dtype):
    arrays = _inputs(entry, dtype)
    before = {k: v.copy() for k, v in arrays.items()}
    expected = _call(entry, backend, arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{entry.name} modified {k}")
    frozen = {k: v.copy() for k, v in arrays.items()}
    for v in frozen.values():
        v.flags.writeable = False
    _assert_same(_call(entry, backend, frozen), expected, dtype, exact=True)


def _relayout(a: np.ndarray, layout: str) -> np.ndarray:
    if a.dtype.kind != "f" or a.ndim == 0:
        return a
    if layout == "fortran":
        return np.asfortranarray(a) if a.ndim >= 2 else a
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    flipped = np.ascontiguousarray(np.flip(a))
    return np.flip(flipped)  # negative strides in every axis, same values


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative"])
@pytest.mark.parametrize(("entry", "backend"), CASES)
def test_every_layout_gives_the_contiguous_result(entry, backend, layout):
    dtype = np.float64
    arrays = _inputs(entry, dtype)
    expected = _call(entry, backend, arrays)
    moved = {k: _relayout(v, layout) for k, v in arrays.items()}
    for k, v in moved.items():
        np.testing.assert_array_equal(v, arrays[k])
    _assert_same(_call(entry, backend, moved), expected, dtype)


@pytest.mark.parametrize(("entry", "backend"), CASES)
def test_big_endian_float32_works_or_says_how_to_convert(entry, backend):
    arrays = _inputs(entry, np.float32)
    expected = _call(entry, backend, arrays)
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) if v.dtype.kind == "f" else v
               for k, v in arrays.items()}
    try:
        result = _call(entry, backend, swapped)
    except TypeError as exc:
        assert "astype" in str(exc) or "byte order" in str(exc), str(exc)
        return
    _assert_same(result, expected, np.float32)


@pytest.mark.parametrize(("entry", "backend"), CASES)
def test_masked_arrays_are_refused(entry, backend):
    arrays = _inputs(entry, np.float64)
    name = next(k for k, v in arrays.items() if v.dtype.kind == "f")
    mask = np.zeros(arrays[name].shape, bool)
    mask.flat[0] = True
    arrays[name] = np.ma.masked_array(arrays[name], mask=mask)
    with pytest.raises((TypeError, ValueError), match=name):
        _call(entry, backend, arrays)


@pytest.mark.parametrize(("entry", "backend"), CASES)
def test_zero_size_dimensions_are_refused_clearly_or_give_a_result(entry, backend):
    for name in entry.zero_args:
        arrays = _inputs(entry, np.float64)
        shape = list(arrays[name].shape)
        shape[0] = 0
        arrays[name] = np.zeros(shape, arrays[name].dtype)
        if name == "X" and "y" in arrays:
            arrays["y"] = arrays["y"][:0]
        if name == "x" and "dy" in arrays:
            arrays["dy"] = np.zeros(shape, arrays["dy"].dtype)
        if name == "dy" and "x" in arrays:
            arrays["x"] = np.zeros(shape, arrays["x"].dtype)
        try:
            result = _call(entry, backend, arrays)
        except ValueError as exc:
            assert any(k in str(exc) for k in arrays), f"{entry.name}: {exc}"
            continue
        flat_result(result)  # a result: it must at least be well formed


SPECIALS = st.sampled_from([0.0, -0.0, 1e-300, 1e-30, 1e30, 1e300, np.nan, np.inf, -np.inf])


@pytest.mark.parametrize(("entry", "backend"), [c for c in CASES if c.values[1] != "numpy"])
@settings(max_examples=15)
@given(data=st.data())
def test_random_inputs_give_a_result_or_a_clear_error(entry, backend, data):
    dtype = data.draw(st.sampled_from(DTYPES))
    arrays = _inputs(entry, dtype, seed=data.draw(st.integers(0, 3)))
    floats = [k for k, v in arrays.items() if v.dtype.kind == "f"]
    name = data.draw(st.sampled_from(floats))
    a = arrays[name].copy()
    scale = data.draw(st.sampled_from([1e-30, 1.0, 1e30]))
    with np.errstate(all="ignore"):
        a = (a * scale).astype(a.dtype)
        for _ in range(data.draw(st.integers(0, 3))):
            a.flat[data.draw(st.integers(0, a.size - 1))] = data.draw(SPECIALS)
    arrays[name] = a
    try:
        with np.errstate(all="ignore"):
            flat_result(_call(entry, backend, arrays))
    except (ValueError, TypeError) as exc:
        assert str(exc)
