"""Each curvature formula is written once per language (``_formulas.pxd``/``_formulas.h`` for
Cython, ``_scalar.py`` for Numba/CUDA, ``fastopt.reference.curvature`` for numpy) and used by
every model (MLP, Network, ElmanRNN): the three agree on a grid of inputs that includes ±0, huge
magnitudes, NaN and inf, as each model's kernels use them, no model keeps a copy of its own,
and all use the one table of codes (``fastopt._codes``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import MLP, _dispatch
from fastopt._codes import Activation, Loss, Mode
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
    modes = {m.name: int(m) for m in Mode}
    assert {n: getattr(_scalar, "MODE_" + n) for n in modes} == modes
    if _dispatch.available("curvature", "cython"):
        from fastopt.curvature import _cython

        assert _cython.ACTIVATION_CODES == acts
        assert _cython.LOSS_CODES == losses
        assert _cython.MODE_CODES == modes
    from fastopt.curvature import rnn

    assert rnn._MODES == {m.name.lower(): int(m) for m in Mode}


CURVATURE = Path(mlp.__file__).parent
REFERENCE = CURVATURE.parent / "reference"
# every kernel and reference file of the three models
KERNEL_FILES = [CURVATURE / name for name in (
    "_cython.pyx", "_numba.py", "_rnn_cython.pyx", "_rnn_numba.py", "_cython_network.pyx",
    "_network_numba.py", "_formulas.pxd", "_scalar.py")] + [
    REFERENCE / name for name in ("curvature.py", "rnn.py", "network.py")]
# the files that hold the one definition of each formula, per language
HOMES = {CURVATURE / "_formulas.pxd", CURVATURE / "_formulas.h", CURVATURE / "_scalar.py",
         REFERENCE / "curvature.py"}


def test_kernels_compare_codes_by_name():
    """No bare ``code == 1`` literals: the kernels of every model compare against the named
    codes (activation, loss, RNN mode)."""
    pattern = re.compile(r"\b(code|act|loss|mode)\s*(==|!=|>=|<=|>|<)\s*\d")
    for path in KERNEL_FILES:
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not hits, f"{path.name}: {hits}"


# What a copy of a formula looks like in any of the languages: its constants (the float32 tanh's
# clamp, GELU's sqrt(2/pi) and 0.044715), a definition of tanh/sigmoid/softplus/act/log-sum-exp,
# or a table of codes.
COPY_SIGNS = {
    "float32 tanh constant": re.compile(r"7\.905311|2\.76076847742355e-16"),
    "GELU constant": re.compile(r"0\.79788456|0\.044715\s*(\*|$|,|\))|=\s*0\.044715"),
    "tanh/sigmoid/softplus definition": re.compile(
        r"^\s*(cdef|cpdef|def)\b[^(]*\b_?(tanh|tanh_fast|tanh32|tanh_real|sigmoid|softplus|log1p_exp\w*)\s*\("),
    "activation definition": re.compile(r"^\s*(cdef|cpdef|def)\b[^(]*\b_?act\s*\("),
    "log-sum-exp": re.compile(r"log\(\s*ssum|np\.log\(np\.exp"),
    "table of codes": re.compile(r"^\s*_?(TANH|IDENTITY|GELU|CROSS_ENTROPY)\s*=\s*\d"),
}


def test_each_formula_has_one_definition_per_language():
    """Proof by construction that the models share the formulas: outside their homes
    (``_formulas.pxd``/``.h``, ``_scalar.py``, ``reference/curvature.py``) no file of the
    curvature family or its reference defines a formula, holds its constants or a table of
    codes; inside, each is defined once."""
    files = sorted(p for ext in ("*.py", "*.pyx", "*.pxd", "*.h")
                   for folder in (CURVATURE, REFERENCE) for p in folder.glob(ext))
    assert set(KERNEL_FILES) <= set(files)
    for path in files:
        if path in HOMES:
            continue
        lines = path.read_text().splitlines()
        for sign, pattern in COPY_SIGNS.items():
            hits = [f"{i + 1}: {line}" for i, line in enumerate(lines) if pattern.search(line)]
            assert not hits, f"{path.name} has its own {sign}: {hits}"
    for home in (CURVATURE / "_formulas.pxd", CURVATURE / "_scalar.py",
                 REFERENCE / "curvature.py"):
        text = home.read_text()
        for name in ("sigmoid", "softplus", "act", "act_row", "logistic", "log_sum_exp",
                     "activation"):
            n = len(re.findall(rf"^(?:cdef inline \w+\*? |def )_?{name}\(", text, re.M))
            assert n <= 1, f"{home.name} defines {name} {n} times"


def test_the_models_import_the_shared_formulas():
    """The kernels reach the formulas through the shared modules (a model that re-implemented
    one under another name would fail here or in the value tests below)."""
    src = {p.name: p.read_text() for p in KERNEL_FILES}
    for name in ("_rnn_cython.pyx", "_cython_network.pyx", "_cython.pyx"):
        assert "from fastopt.curvature._formulas cimport" in src[name], name
        assert "act_row" in src[name], name
    for name in ("_rnn_numba.py", "_network_numba.py"):
        assert "from ._numba import" in src[name] and "_act_row" in src[name], name
    for name in ("rnn.py", "network.py"):
        assert "from .curvature import" in src[name], name
    assert "log_sum_exp" in src["_rnn_cython.pyx"] and "_log_sum_exp" in src["_rnn_numba.py"]


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


def _model_backends(model):
    """(backend, kernel module) of ``model``'s kernels that load here, numpy last."""
    from fastopt.curvature import network, rnn

    pick = {"rnn": rnn._kernels, "network": network._kernels}[model]
    out = []
    for backend in ("cython", "numba", "numpy"):
        try:
            out.append((backend, pick(backend)))
        except RuntimeError:
            continue
    return out


def _model_activation(model, mod, code, z):
    """Activation ``code`` with its derivatives on z through ``model``'s forward kernel."""
    n, dt = z.shape[0], z.dtype
    s, d1, d2 = (np.full((1, n), 7.0, dt) for _ in range(3))
    with np.errstate(all="ignore"):
        if model == "rnn":
            e3 = np.empty((1, 0, n), dt)
            mod.forward_step(np.zeros((1, 1, n), dt), e3, z.reshape(1, 1, n), np.zeros(n, dt),
                             np.empty((0, n), dt), int(code), int(Mode.HVP), False, s, d1, d2,
                             e3, e3)
        else:
            out = np.full((1, 1, n), 7.0, dt)
            mod.act_forward(z.reshape(1, 1, n), int(code), 2, out, d1, d2)
            s = out[:, 0, :]
    return s[0], d1[0], d2[0]


@pytest.mark.parametrize("model", ["rnn", "network"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_as_each_model_uses_it(model, dtype):
    """The RNN's time step and the Network's activation layer, every backend, every code, on
    the grid of extreme inputs: the same values as the reference's ``activation``."""
    with np.errstate(over="ignore"):
        z = GRID.astype(dtype)
    for backend, mod in _model_backends(model):
        for code in Activation:
            got = _model_activation(model, mod, code, z)
            want = reference.activation(code, z)
            for name, a, b in zip(("value", "d1", "d2"), got, want, strict=True):
                assert a.dtype == dtype
                ok = _same(a, b, TOL[np.dtype(dtype)])
                assert ok.all(), (f"{model}/{backend} {code.name} {name} at z={z[~ok]}: "
                                  f"{a[~ok]} vs reference {b[~ok]}")
                assert np.isfinite(a[np.isfinite(b)]).all(), (model, backend, code.name, name)


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


CE_ROWS = np.array([[0.0, 0.0, 0.0], [1e4, -1e4, 0.0], [-1e30, 0.0, 1e30], [3.0, 3.0, -1e30],
                    [-0.0, 1e-30, -1e-30], [50.0, 49.0, -50.0]])
CE_LABELS = np.array([0, 1, 2, 0, 1, 2], np.int64)


def _cross_entropy(model, mod, Z, R):
    """(loss per row (or their sum), dloss/df, H_loss R) of the logits Z (N, n) and R-logits
    R (N, k, n) through ``model``'s output kernel, unscaled."""
    N, k, n = R.shape
    dt = Z.dtype
    F = np.concatenate([Z[:, None, :], R], axis=1)  # (N, 1 + k, n)
    if model == "mlp":
        D = np.full((N, 1 + k, n), np.nan, dt)
        losses = np.full(N, np.nan)
        mod.output_forward(Z[:, None, :], np.zeros(n, dt), R, np.zeros((k, n), dt),
                           int(Loss.CROSS_ENTROPY), 2, CE_LABELS, np.empty((0, 0), dt), D,
                           losses, 1)
        return losses, D[:, 0] * N, D[:, 1:] * N
    if model == "rnn":
        E = np.full((N, n), np.nan, dt)
        RE = np.full((N, k, n), np.nan, dt)
        losses = np.full(N, np.nan)
        Sc = np.full((1 + k, n), np.nan)
        mod.output(F, np.zeros((N, k, n), dt), np.zeros(n, dt), np.zeros((k, n), dt),
                   int(Loss.CROSS_ENTROPY), int(Mode.HVP), CE_LABELS, np.empty((0, 0), dt), E,
                   RE, losses, Sc, 1.0)
        np.testing.assert_allclose(Sc[0], E.sum(axis=0, dtype=np.float64), rtol=1e-6, atol=1e-6)
        return losses, E, RE
    D = np.full((N, 1 + k, n), np.nan, dt)
    total = mod.loss_forward(F, int(Loss.CROSS_ENTROPY), 2, CE_LABELS, np.empty((0, 0), dt), D)
    return np.array([total]), D[:, 0] * N, D[:, 1:] * N


def _ce_cases():
    cases = [("mlp", b, _dispatch.load("curvature", b)) for b in ("cython", "numba", "numpy")
             if _dispatch.available("curvature", b)]
    for model in ("rnn", "network"):
        cases += [(model, b, m) for b, m in _model_backends(model)]
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_as_each_model_uses_it(dtype):
    """The output kernels of the MLP, the RNN and the Network (every backend): softmax, loss,
    gradient and loss-Hessian on extreme logit rows, against a float64 log-sum-exp written out
    here."""
    Z = CE_ROWS.astype(dtype)
    R = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(dtype)  # 2 R-directions
    f = Z.astype(np.float64)
    m = f.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(f - m).sum(axis=1))
    p = np.exp(f - lse[:, None])
    grad = p.copy()
    grad[np.arange(6), CE_LABELS] -= 1
    pr = np.einsum("io,ijo->ij", p, R)
    hv = p[:, None, :] * (R - pr[:, :, None])
    want_loss = lse - f[np.arange(6), CE_LABELS]
    tol = TOL[np.dtype(dtype)]
    for model, backend, mod in _ce_cases():
        losses, g, h = _cross_entropy(model, mod, Z, R)
        if losses.size == 1:
            want = np.array([want_loss.sum()])
        else:
            want = want_loss
        assert _same(losses, want, tol).all(), (model, backend, losses, want)
        assert np.isfinite(g).all() and np.isfinite(h).all(), (model, backend)
        assert _same(g, grad, tol).all(), (model, backend, g, grad)
        assert _same(h, hv, tol).all(), (model, backend, h, hv)


def test_log_sum_exp_in_every_language():
    """The one log-sum-exp per language: ``_scalar.log_sum_exp`` (plain Python and compiled by
    Numba) and the reference's, on rows with ±0, huge, NaN and inf entries."""
    rows = [[0.0], [-0.0, 0.0], [1e300, 1e300], [-1e300, 1e-300], [1e30, -1e30, 0.0],
            [np.inf, 0.0], [-np.inf, 0.0], [np.nan, 1.0], [709.0, 710.0], [-745.0, -746.0]]
    plain = _scalar.compiled(lambda f: f)
    fns = [plain.log_sum_exp]
    if _dispatch.available("curvature", "numba"):
        from fastopt.curvature import _numba

        fns.append(_numba._log_sum_exp)
    for row in rows:
        z = np.array(row)
        with np.errstate(all="ignore"):
            want = reference.log_sum_exp(z[None, :])[0]
            for fn in fns:
                got, shift, total = fn(z, np.zeros_like(z))
                assert _same(got, want, TOL[np.dtype(np.float64)]), (row, got, want)
                # the softmax's pieces: exp(f - shift) / total, lse = shift + log(total)
                assert _same(shift + np.log(total), want, TOL[np.dtype(np.float64)]), row
                # the bias is summed in float64, before the shift
                got_b = fn(z.astype(np.float32), np.full(z.size, 0.5, np.float32))[0]
                z64 = z.astype(np.float32).astype(np.float64)
                want_b = reference.log_sum_exp(z64[None] + 0.5)[0]
                assert _same(got_b, want_b, TOL[np.dtype(np.float64)]), (row, got_b, want_b)


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_with_huge_parameters_is_finite_on_every_backend(dtype):
    """A parity case: GELU pre-activations of 1e11 in float32 (1e110 in float64) gave a
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
