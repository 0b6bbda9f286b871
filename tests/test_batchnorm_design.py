"""Batch-norm structure: each formula agrees across backends, every backend module has
the same kernel interface, every SIMD variant gives the same results, the C-level API works."""

import inspect
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt
from fastopt import _dispatch, batch_norm_backward, batch_norm_forward
from fastopt.batchnorm import _plan, _scalar
from fastopt.reference import batchnorm as reference

HAVE_CYTHON = _dispatch.available("batchnorm", "cython")
needs_cython = pytest.mark.skipif(not HAVE_CYTHON, reason="Cython extension not built")

# a grid with signed zeros, tiny, ordinary, huge values, Inf and NaN
GRID = np.array([0.0, -0.0, 1e-300, -3.5, 0.75, 7.0, 1e30, -1e30, 1e150, np.inf, -np.inf,
                 np.nan])


def _agree(a, b, scale=None):
    """Same NaNs, same infinities, finite values within 1e-13 relative (or the given scale)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b)), (a, b)
    fin = np.isfinite(a) & np.isfinite(b)
    other = ~fin & ~nan
    assert np.array_equal(a[other], b[other]), (a[other], b[other])
    tol = np.broadcast_to(1e-13 * np.abs(a) if scale is None else scale, a.shape)
    with np.errstate(invalid="ignore"):
        assert np.all(np.abs(a - b)[fin] <= tol[fin]), (a[fin], b[fin])


def _formula_backends():
    """name -> dict of the five scalar formulas, as Python callables of floats."""
    import numba

    out = {"python": {name: getattr(_scalar, name) for name in
                      ("channel_shift", "finish_stats", "grad_coefficients", "normalize",
                       "grad_input")}}
    out["numba"] = {name: numba.njit(f) for name, f in out["python"].items()}
    if HAVE_CYTHON:
        out["cython"] = _dispatch.load("batchnorm", "cython").formulas()
    return out


@pytest.fixture(scope="module")
def formulas():
    return _formula_backends()


def _grid_values(fn, *grids):
    mesh = np.meshgrid(*grids, indexing="ij")
    flat = [m.ravel() for m in mesh]
    with np.errstate(all="ignore"):
        return [fn(*map(float, args)) for args in zip(*flat, strict=True)], flat


def test_normalize_agrees_with_the_reference_everywhere(formulas):
    x, mean = GRID, GRID[[0, 3, 6, 9, 11]]
    scale, bias = np.array([0.5, 316.2, 1e150]), np.array([-0.0, 2.0])
    for fs in formulas.values():
        got, (xs, ms, ss, bs) = _grid_values(fs["normalize"], x, mean, scale, bias)
        with np.errstate(all="ignore"):
            want = reference.normalize(xs, ms, ss, bs)
            terms = np.abs((xs - ms) * ss) + np.abs(bs)
        _agree(got, want, 1e-15 * np.where(np.isfinite(terms), terms, 0) + 1e-300)


def test_constant_channel_cancels_exactly(formulas):
    for name, fs in formulas.items():
        for v in (7.0, 1e30, -3.5e300):
            assert fs["normalize"](v, v, 1e150, 0.25) == 0.25, name
            a, b, c = fs["grad_coefficients"](3.0, 0.0, 1e150, 1.0, 4.0, True)
            assert np.isfinite(fs["grad_input"](1.0, v, v, a, b, c)), name


def test_stats_and_coefficients_agree_across_backends(formulas):
    names = list(formulas)
    s_grid = np.array([0.0, -0.0, 2.5, -1e30, np.nan])
    for fname, grids in [
        ("channel_shift", (GRID,)),
        ("finish_stats", (s_grid, np.array([0.0, 4.0, 1e60, np.nan]), GRID[[0, 4, 6, 11]],
                          np.array([3.0, 1e6]), np.array([1e-5, 1e-300]))),
        ("grad_coefficients", (s_grid, s_grid, np.array([0.5, 1e150]),
                               np.array([1.0, -0.0, 3.0]), np.array([4.0, 1e6]),
                               np.array([0.0, 1.0]))),
    ]:
        first, _ = _grid_values(formulas[names[0]][fname], *grids)
        for other in names[1:]:
            got, _ = _grid_values(formulas[other][fname], *grids)
            _agree(np.array(got, float), np.array(first, float))


def test_grad_input_matches_the_reference_formula(formulas):
    rng = np.random.default_rng(0)
    g, x = rng.standard_normal(50), rng.standard_normal(50) * 10 + 3
    x[:3] = [0.0, -0.0, 1e20]
    mean, invstd, weight, n = 3.0, 0.7, -1.3, 50.0
    s, d = g.sum(), ((x - mean) * g).sum()
    for training in (True, False):
        want = reference.grad_input(g, x, mean, invstd, weight, s, d, n, training)
        scale = np.abs(g * invstd * weight) + np.abs((x - mean) * d * invstd**3 * weight / n) + 1
        for fs in formulas.values():
            a, b, c = fs["grad_coefficients"](s, d, invstd, weight, n, training)
            got = [fs["grad_input"](gi, xi, mean, a, b, c) for gi, xi in zip(g, x, strict=True)]
            _agree(got, want, 1e-14 * scale)
        nan = formulas["python"]["grad_input"](np.nan, 1.0, 0.0, 1.0, 1.0, 0.0)
        assert np.isnan(nan)


@pytest.mark.cudasim
def test_cuda_uses_the_shared_formulas():
    """The CUDA kernels compile _scalar's functions as device functions (no copy of their own)."""
    from fastopt.batchnorm import _cuda

    src = inspect.getsource(_cuda)
    for name in ("normalize", "grad_input", "grad_coefficients", "finish_stats"):
        assert f"_scalar.{name}" in src
    assert "* scale[c] +" not in src and "* ca[c] +" not in src


# ---------------------------------------------------------------- one kernel interface

KERNELS = ("forward_train", "forward_eval", "backward")


def _modules():
    mods = {"numpy": reference, "numba": _dispatch.load("batchnorm", "numba")}
    if HAVE_CYTHON:
        mods["cython"] = _dispatch.load("batchnorm", "cython")
    try:
        import importlib

        mods["cuda"] = importlib.import_module("fastopt.batchnorm._cuda")
    except Exception:  # numba-cuda missing: its signatures are checked where it is installed
        pass
    return mods


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_backend_has_the_same_kernel_signatures():
    mods = _modules()
    assert len(mods) >= 2
    want = {k: _params(getattr(reference, k)) for k in KERNELS}
    for name, mod in mods.items():
        for k in KERNELS:
            assert _params(getattr(mod, k)) == want[k], f"{name}.{k}"


def test_signature_check_can_fail():
    def forward_eval(x, mean, scale, bias, y, plan):  # one argument apart
        pass

    assert _params(forward_eval) != _params(reference.forward_eval)


def test_api_has_no_backend_branches():
    from fastopt.batchnorm import api

    src = inspect.getsource(api)
    assert 'name == "numpy"' not in src and "backend == " not in src


@pytest.mark.parametrize("backend", ["numpy", "numba"] + (["cython"] if HAVE_CYTHON else []))
def test_kernels_write_into_the_callers_outputs(backend):
    mod = _dispatch.load("batchnorm", backend)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    y, mean, var, inv = np.full_like(x, np.nan), *(np.full(4, np.nan) for _ in range(3))
    plan = _plan.make_plan(3, 4, 5, 1, 8)
    assert mod.forward_train(x, w, b, 1e-5, y, mean, var, inv, plan) is None
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-12)
    assert np.isfinite(y).all()


# ---------------------------------------------------------------- SIMD variants


@needs_cython
def test_every_simd_variant_gives_the_same_results():
    kernels = _dispatch.load("batchnorm", "cython")
    original = kernels.simd_level()
    rng = np.random.default_rng(2)
    cases = [((7, 300), 1), ((3, 6, 70), 1), ((2, 5, 3, 37), 1), ((40, 9), -1)]
    results = {}
    try:
        for level in ("baseline", "avx2", "avx512"):
            ran = kernels.set_simd_level(level)
            if ran != level:
                continue
            out = []
            for shape, axis in cases:
                for dtype in (np.float32, np.float64):
                    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
                    dy = np.random.default_rng(3).standard_normal(shape).astype(dtype)
                    x = (np.random.default_rng(4).standard_normal(shape) * 3 + 1).astype(dtype)
                    f = batch_norm_forward(x, axis=axis, backend="cython")
                    g = batch_norm_backward(dy, x, f.mean, f.invstd, axis=axis,
                                            backend="cython")
                    out += [f.y, f.mean, f.invstd, g.dx, g.dweight, g.dbias]
            results[level] = out
    finally:
        kernels.set_simd_level(original)
    assert "baseline" in results
    base = results["baseline"]
    for level, out in results.items():
        for a, b in zip(base, out, strict=True):
            tol = 1e-5 if a.dtype == np.float32 else 1e-12
            np.testing.assert_allclose(b, a, rtol=tol, atol=tol, err_msg=level)


@needs_cython
def test_fastopt_simd_environment_variable_lowers_the_variant():
    code = "from fastopt.batchnorm import _cython; print(_cython.simd_level())"
    env = dict(os.environ, FASTOPT_SIMD="baseline")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert got.stdout.strip() == "baseline", got.stderr
    from fastopt._info import family_variants

    assert family_variants()["batchnorm"] in ("avx512", "avx2", "baseline")


# ---------------------------------------------------------------- C-level (Cython) API

EXT = """
# cython: language_level=3
from fastopt.batchnorm._cython cimport forward_train_f64, backward_f64
import numpy as np

def run(double[:, :, ::1] x, double[:, :, ::1] dy):
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef double[::1] w = np.ones(C), b = np.zeros(C), mean = np.empty(C), var = np.empty(C)
    cdef double[::1] inv = np.empty(C), dw = np.empty(C), db = np.empty(C)
    cdef double[:, :, ::1] y = np.empty_like(np.asarray(x)), dx = np.empty_like(np.asarray(x))
    cdef int status
    with nogil:
        status = forward_train_f64(&x[0, 0, 0], outer, C, inner, &w[0], &b[0], 1e-5,
                                   &y[0, 0, 0], &mean[0], &var[0], &inv[0], 2)
        status |= backward_f64(&dy[0, 0, 0], &x[0, 0, 0], outer, C, inner, &mean[0], &inv[0],
                               &w[0], True, &dx[0, 0, 0], &dw[0], &db[0], 2)
    return status, np.asarray(y), np.asarray(mean), np.asarray(inv), np.asarray(dx)
"""


def test_every_listed_pxd_is_shipped_beside_get_include():
    from fastopt._capi import PXD_MODULES

    for module in PXD_MODULES.values():
        path = os.path.join(fastopt.get_include(), *module.split(".")) + ".pxd"
        assert os.path.isfile(path), path


@needs_cython
@pytest.mark.slow
def test_downstream_extension_cimports_the_kernels(tmp_path):
    pytest.importorskip("Cython")
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    (tmp_path / "fo_user.pyx").write_text(EXT)
    (tmp_path / "setup.py").write_text(textwrap.dedent(f"""
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension, setup
        setup(ext_modules=cythonize(
            [Extension("fo_user", ["fo_user.pyx"], include_dirs=[numpy.get_include()])],
            include_path=[{fastopt.get_include()!r}]))
    """))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                           cwd=tmp_path, capture_output=True, text=True)
    if build.returncode != 0 and "command 'gcc' failed" in build.stderr + build.stdout:
        pytest.skip("the C compiler failed")
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import fo_user
    finally:
        sys.path.remove(str(tmp_path))
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((6, 3, 10)), rng.standard_normal((6, 3, 10))
    status, y, mean, inv, dx = fo_user.run(x, dy)
    assert status == 0
    want = batch_norm_forward(x)
    np.testing.assert_allclose(y, want.y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, want.mean, rtol=1e-12)
    np.testing.assert_allclose(dx, batch_norm_backward(dy, x, want.mean, want.invstd).dx,
                               rtol=1e-11, atol=1e-12)
