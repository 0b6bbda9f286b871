"""Each curvature formula is written once per language (``_formulas.pxd`` for Cython,
``_scalar.py`` for Numba/CUDA, the numpy reference): the three agree on a grid of inputs that
includes ±0, huge magnitudes, NaN and inf, and use the one table of codes (``fastopt._codes``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import MLP, _dispatch
from fastopt._codes import Activation, Loss
from fastopt.curvature import _scalar, mlp
from fastopt.reference import curvature as reference

SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 9.99, -9.99, 10.0, -10.0, 1e4, -1e4,
           1e30, -1e30, 1e200, -1e200, np.nan, np.inf, -np.inf]
GRID = np.concatenate([np.array(SPECIAL), np.linspace(-12, 12, 481)])
# agreement "to rounding": the libm and numpy tanh differ by an ulp or two, and GELU's second
# derivative amplifies that ~100x by cancellation; float32 tanh is the 3-ulp rational
TOL = {np.dtype(np.float64): 2e-13, np.dtype(np.float32): 3e-5}


def backends():
    return compiled_backends("curvature") + ["numpy"]


def _same(a, b, tol):
    """Equal to ``tol`` relative to max(1, |b|), NaN where b is NaN, and the same infinities."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = (a == b) | (np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b)))
    return both_nan | close


def _activation(backend, code, z):
    mod = _dispatch.load("curvature", backend)
    s, d1, d2 = (np.full_like(z, 7.0) for _ in range(3))
    with np.errstate(all="ignore"):
        mod._formula_activation(int(code), z, s, d1, d2)
    return s, d1, d2


# ------------------------------------------------------------------------------ codes
def test_one_table_of_codes():
    acts = {m.name: int(m) for m in Activation}
    losses = {m.name: int(m) for m in Loss}
    assert mlp.ACTIVATIONS == Activation.names() and mlp.LOSSES == Loss.names()
    assert {n: getattr(_scalar, n) for n in acts} == acts
    assert {n: getattr(_scalar, n) for n in losses} == losses
    if _dispatch.available("curvature", "cython"):
        from fastopt.curvature import _cython

        assert _cython.ACTIVATION_CODES == acts
        assert _cython.LOSS_CODES == losses


def test_kernels_compare_codes_by_name():
    """No bare ``code == 1`` literals: the kernels compare against the named codes."""
    root = Path(mlp.__file__).parent
    pattern = re.compile(r"\b(code|act|loss)\s*==\s*\d")
    for path in (root / "_numba.py", root / "_scalar.py", root / "_cython.pyx",
                 root / "_formulas.pxd", root.parent / "reference" / "curvature.py"):
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not hits, f"{path.name}: {hits}"


# ------------------------------------------------------------------------------ activations
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("code", list(Activation), ids=lambda c: c.name.lower())
def test_activation_agrees_with_reference(backend, dtype, code):
    with np.errstate(over="ignore"):
        z = GRID.astype(dtype)
    got = _activation(backend, code, z)
    want = reference.activation(code, z)
    for name, a, b in zip(("value", "d1", "d2"), got, want, strict=True):
        assert a.dtype == dtype
        ok = _same(a, b, TOL[np.dtype(dtype)])
        assert ok.all(), f"{name} at z={z[~ok]}: {a[~ok]} vs reference {b[~ok]}"
        # where the reference is finite every backend is (GELU at huge |z| gave NaN in Cython)
        assert np.isfinite(a[np.isfinite(b)]).all()


@pytest.mark.parametrize("code", list(Activation), ids=lambda c: c.name.lower())
def test_plain_scalar_formulas_match_reference(code):
    """The Python source that Numba and CUDA compile, run as plain Python, in float64."""
    plain = _scalar.compiled(lambda f: f)
    with np.errstate(all="ignore"):
        want = reference.activation(code, GRID)
    for i, z in enumerate(GRID):
        got = plain.act(int(code), float(z))
        for j in range(3):
            assert _same(got[j], want[j][i], TOL[np.dtype(np.float64)]), (z, j, got, want[j][i])


def test_limits_at_extremes():
    """Values a reader can check by hand: saturation, zeros and NaN propagation."""
    z = np.array([-np.inf, -1e30, -0.0, 0.0, 1e30, np.inf, np.nan])
    s, d1, d2 = reference.activation(Activation.GELU, z)
    np.testing.assert_array_equal(s[:6], [0, 0, 0, 0, 1e30, np.inf])
    np.testing.assert_array_equal(d1[:6], [0, 0, 0.5, 0.5, 1, 1])
    assert np.isnan(s[6]) and np.isnan(d1[6])
    s, d1, d2 = reference.activation(Activation.RELU, z)
    np.testing.assert_array_equal(s[:6], [0, 0, 0, 0, 1e30, np.inf])
    assert np.isnan(s[6]) and d1[6] == 0 and not d2.any()
    s, d1, _ = reference.activation(Activation.SOFTPLUS, z)
    np.testing.assert_array_equal(s[[0, 1, 4, 5]], [0, 0, 1e30, np.inf])
    np.testing.assert_array_equal(d1[[0, 1, 4, 5]], [0, 0, 1, 1])


# ------------------------------------------------------------------------------ loss pieces
@pytest.mark.parametrize("backend", backends())
def test_logistic_pieces_agree_with_reference(backend):
    mod = _dispatch.load("curvature", backend)
    f = np.repeat(GRID, 3)
    y = np.tile([0.0, 1.0, 0.25], GRID.size)
    out = [np.full_like(f, 7.0) for _ in range(3)]
    with np.errstate(all="ignore"):
        mod._formula_logistic(f, y, *out)
        want = reference.logistic(f, y)
    for name, a, b in zip(("loss", "grad", "curv"), out, want, strict=True):
        ok = _same(a, b, TOL[np.dtype(np.float64)])
        assert ok.all(), f"{name} at f={f[~ok]}: {a[~ok]} vs {b[~ok]}"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_pieces_agree(backend, dtype):
    """output_forward's softmax, loss, gradient and loss-Hessian on extreme logit rows, against
    a float64 log-sum-exp written out here."""
    mod = _dispatch.load("curvature", backend)
    rows = np.array([[0.0, 0.0, 0.0], [1e4, -1e4, 0.0], [-1e30, 0.0, 1e30], [3.0, 3.0, -1e30],
                     [-0.0, 1e-30, -1e-30], [50.0, 49.0, -50.0]])
    Z = rows.astype(dtype).reshape(6, 1, 3)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int64)
    R = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(dtype)  # 2 R-directions
    D = np.full((6, 3, 3), np.nan, dtype)
    losses = np.full(6, np.nan)
    mod.output_forward(Z, np.zeros(3, dtype), R, np.zeros((2, 3), dtype), int(Loss.CROSS_ENTROPY),
                       2, labels, np.empty((0, 0), dtype), D, losses, 1)
    f = Z[:, 0, :].astype(np.float64)
    m = f.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(f - m).sum(axis=1))
    p = np.exp(f - lse[:, None])
    grad = p.copy()
    grad[np.arange(6), labels] -= 1
    pr = np.einsum("io,ijo->ij", p, R)
    hv = p[:, None, :] * (R - pr[:, :, None])
    tol = TOL[np.dtype(dtype)]
    assert _same(losses, lse - f[np.arange(6), labels], tol).all()
    assert np.isfinite(D).all()
    assert _same(D[:, 0, :] * 6, grad, tol).all()
    assert _same(D[:, 1:, :] * 6, hv, tol).all()


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_with_huge_parameters_is_finite_on_every_backend(dtype):
    """Issue 16's parity case: GELU pre-activations of 1e11 in float32 (1e110 in float64) gave a
    NaN second derivative in Cython (and numpy) where Numba's was finite."""
    scale = 1e11 if dtype == np.float32 else 1e110
    net = MLP([3, 4, 2], activation="gelu", loss="mse", dtype=dtype)
    rng = np.random.default_rng(0)
    theta = net.init(rng).astype(dtype)
    W, b = net.unpack(theta)[0]
    W *= scale
    b[:] = [scale, -scale, 2 * scale, -2 * scale]
    X = rng.standard_normal((5, 3)).astype(dtype)
    y = rng.standard_normal((5, 2)).astype(dtype)
    V = rng.standard_normal((net.num_params, 2)).astype(dtype)
    ref = net.hvp(theta, X, y, V, backend="numpy")
    assert np.isfinite(ref).all()
    for backend in ("cython", "numba"):
        if _dispatch.available("curvature", backend):
            hv = net.hvp(theta, X, y, V, backend=backend)
            assert np.isfinite(hv).all(), backend
            np.testing.assert_allclose(hv, ref, rtol=TOL[np.dtype(dtype)] * 10,
                                       atol=1e-6 * np.abs(ref).max())


def test_numba_scalar_act_matches_reference():
    """``_numba._act(code, z) -> (value, d1, d2)``, the compiled formula other curvature models
    call from their own kernels, in float64 on the grid, every code."""
    if not _dispatch.available("curvature", "numba"):
        pytest.skip("numba unavailable")
    from numba import njit

    from fastopt.curvature import _numba

    @njit
    def table(codes, z, out):
        for c in range(codes.shape[0]):
            for i in range(z.shape[0]):
                s, d1, d2 = _numba._act(codes[c], z[i])
                out[c, 0, i] = s
                out[c, 1, i] = d1
                out[c, 2, i] = d2

    codes = np.array([int(c) for c in Activation], np.int64)
    out = np.empty((codes.size, 3, GRID.size))
    table(codes, GRID, out)
    for c, code in enumerate(Activation):
        with np.errstate(all="ignore"):
            want = reference.activation(code, GRID)
        for j in range(3):
            ok = _same(out[c, j], want[j], TOL[np.dtype(np.float64)])
            assert ok.all(), (code.name, j, GRID[~ok], out[c, j][~ok], want[j][~ok])


def test_simd_level_names_the_clone():
    if not _dispatch.available("curvature", "cython"):
        pytest.skip("cython unavailable")
    from fastopt.curvature import _cython

    assert _cython.simd_level() in ("avx512", "avx2", "baseline")


_CUDA_SCRIPT = """
import numpy as np
from numba import cuda
from fastopt.curvature import _scalar
from fastopt.reference import curvature as reference
dev = _scalar.compiled(cuda.jit(device=True))

@cuda.jit
def table(code, z, out):
    i = cuda.grid(1)
    if i < z.shape[0]:
        s, d1, d2 = dev.act(code, z[i])
        out[0, i] = s
        out[1, i] = d1
        out[2, i] = d2

z = np.frombuffer(bytes.fromhex({grid!r}), np.float64).copy()
for code in range({n_codes}):
    out = np.empty((3, z.size))
    table[1, z.size](code, z, out)
    with np.errstate(all="ignore"):
        want = np.stack(reference.activation(code, z))
    ok = np.isclose(out, want, rtol=2e-13, atol=2e-13, equal_nan=True) | (out == want)
    assert ok.all(), (code, z[~ok.all(axis=0)])
print("ok")
"""


def test_formulas_compile_for_cuda_device_functions():
    """``_scalar.compiled(cuda.jit(device=True))`` gives device functions that agree with the
    reference (in the CUDA simulator, in a fresh process: it must be enabled before import)."""
    pytest.importorskip("numba.cuda")
    import os
    import subprocess
    import sys

    root = Path(mlp.__file__).parents[2]
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    grid = np.concatenate([SPECIAL, GRID[len(SPECIAL)::24]]).tobytes().hex()  # NaN, inf too
    code = _CUDA_SCRIPT.format(grid=grid, n_codes=len(Activation))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
