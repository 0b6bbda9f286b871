"""MLP loss, gradient, exact HVP and Gauss-Newton products: against PyTorch, finite differences,
the numpy reference and between the compiled backends."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compiled_backends, tolerance
from hypothesis import given
from hypothesis import strategies as st

from fastopt import MLP, _dispatch, hvp_fd

ACTS = ["identity", "tanh", "sigmoid", "relu", "softplus", "gelu"]
LOSSES = ["cross_entropy", "mse", "logistic"]


def problem(act, loss, *, sizes=(4, 6, 5, 3), N=9, dtype=np.float64, seed=0, k=3):
    """A small net, a generic point (biases nonzero), data and k directions."""
    rng = np.random.default_rng(seed)
    sizes = list(sizes)
    if loss == "logistic":
        sizes[-1] = 1
    net = MLP(sizes, activation=act, loss=loss, dtype=dtype)
    theta = (net.init(rng) + 0.3 * rng.standard_normal(net.num_params)).astype(dtype)
    X = rng.standard_normal((N, sizes[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], N)
    elif loss == "mse":
        y = rng.standard_normal((N, sizes[-1])).astype(dtype)
    else:
        y = rng.integers(0, 2, N).astype(dtype)
    V = rng.standard_normal((net.num_params, k)).astype(dtype)
    return net, theta, X, y, V


def torch_outputs_fn(net, X):
    """The network's outputs as a function of a flat torch parameter vector."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    acts = {
        "identity": lambda z: z,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "relu": torch.relu,
        "softplus": F.softplus,
        "gelu": lambda z: F.gelu(z, approximate="tanh"),
    }
    Xt = torch.tensor(X)

    def outputs(t):
        a, off = Xt, 0
        for l, (n_in, n_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:], strict=True)):
            W = t[off : off + n_in * n_out].reshape(n_in, n_out)
            off += n_in * n_out
            a = a @ W + t[off : off + n_out]
            off += n_out
            if l < net.num_layers - 1:
                a = acts[net.activation](a)
        return a

    return outputs


def torch_loss_of_outputs(net, y):
    """The mean loss as a function of the network's torch outputs."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    yt = torch.tensor(y)

    def loss_of_out(f):
        if net.loss_name == "cross_entropy":
            return F.cross_entropy(f, yt)
        if net.loss_name == "mse":
            return 0.5 * ((f - yt) ** 2).sum(dim=1).mean()
        return F.binary_cross_entropy_with_logits(f[:, 0], yt)

    return loss_of_out


def torch_loss_fn(net, X, y):
    outputs, loss_of_out = torch_outputs_fn(net, X), torch_loss_of_outputs(net, y)
    return lambda t: loss_of_out(outputs(t))


def torch_hvp(net, theta, X, y, V):
    torch = pytest.importorskip("torch")
    loss = torch_loss_fn(net, X, y)
    t = torch.tensor(theta, requires_grad=True)
    L = loss(t)
    (g,) = torch.autograd.grad(L, t, create_graph=True)
    cols = [
        torch.autograd.grad(g, t, torch.tensor(V[:, j]), retain_graph=True)[0].numpy()
        for j in range(V.shape[1])
    ]
    return float(L.detach()), g.detach().numpy(), np.stack(cols, axis=1)


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300))


# ------------------------------------------------------------------------------ parameters
def test_pack_unpack_views_and_sizes():
    net = MLP([3, 4, 2], loss="mse")
    assert net.num_params == 3 * 4 + 4 + 4 * 2 + 2
    theta = np.arange(net.num_params, dtype=np.float64)
    (W1, b1), (W2, b2) = net.unpack(theta)
    assert W1.shape == (3, 4) and b1.shape == (4,) and W2.shape == (4, 2) and b2.shape == (2,)
    assert np.shares_memory(W1, theta) and np.shares_memory(b2, theta)
    assert W1[0, 1] == 1 and b1[0] == 12 and W2[0, 0] == 16  # row-major W, then b
    np.testing.assert_array_equal(net.pack([(W1, b1), (W2, b2)]), theta)
    assert not np.shares_memory(net.pack([(W1, b1), (W2, b2)]), theta)


@pytest.mark.parametrize("scheme", ["xavier", "he", "orthogonal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_schemes(scheme, dtype):
    net = MLP([30, 20, 40], dtype=dtype)
    theta = net.init(np.random.default_rng(0), scheme=scheme)
    assert theta.dtype == dtype and theta.shape == (net.num_params,)
    (W1, b1), (W2, b2) = net.unpack(theta)
    assert not b1.any() and not b2.any()
    if scheme == "orthogonal":
        np.testing.assert_allclose(W1.T @ W1, np.eye(20), atol=1e-5)  # orthonormal columns
        np.testing.assert_allclose(W2 @ W2.T, np.eye(20), atol=1e-5)  # orthonormal rows
    elif scheme == "xavier":
        assert np.abs(W1).max() <= np.sqrt(6 / 50) and W1.std() > 0.5 * np.sqrt(2 / 50)
    else:
        assert abs(W1.std() / np.sqrt(2 / 30) - 1) < 0.15
    np.testing.assert_array_equal(theta, net.init(np.random.default_rng(0), scheme=scheme))


# ------------------------------------------------------------------------------ vs PyTorch
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS)
def test_hvp_matches_torch_double_backward(act, loss):
    net, theta, X, y, V = problem(act, loss)
    L_t, g_t, HV_t = torch_hvp(net, theta, X, y, V)
    L, g = net.loss_and_grad(theta, X, y)
    assert abs(L - L_t) <= 1e-12 * max(1.0, abs(L_t))
    assert rel_err(g, g_t) <= 1e-11
    HV = net.hvp(theta, X, y, V)
    assert rel_err(HV, HV_t) <= 1e-10
    assert rel_err(net.hvp(theta, X, y, V[:, 0]), HV_t[:, 0]) <= 1e-10


@pytest.mark.parametrize("loss", LOSSES)
def test_gnvp_matches_torch(loss):
    torch = pytest.importorskip("torch")
    net, theta, X, y, V = problem("tanh", loss)
    outputs, loss_of_out = torch_outputs_fn(net, X), torch_loss_of_outputs(net, y)

    t = torch.tensor(theta)
    f0 = outputs(t)
    cols = []
    for j in range(V.shape[1]):
        _, jv = torch.func.jvp(outputs, (t,), (torch.tensor(V[:, j]),))
        _, hjv = torch.func.jvp(torch.func.grad(loss_of_out), (f0,), (jv,))
        _, vjp = torch.func.vjp(outputs, t)
        cols.append(vjp(hjv)[0].numpy())
    G_t = np.stack(cols, axis=1)
    assert rel_err(net.gnvp(theta, X, y, V), G_t) <= 1e-10


# ------------------------------------------------------------------------------ vs finite diff
@pytest.mark.parametrize("backend", compiled_backends("curvature"))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS)
def test_hvp_matches_central_differences(act, loss, backend):
    net, theta, X, y, V = problem(act, loss, seed=1, k=2)
    if act == "relu":  # keep every pre-activation away from the kink at 0 for the difference
        theta = theta.copy()
        for _, b in net.unpack(theta)[:-1]:
            b += 3.0
    HV = net.hvp(theta, X, y, V, backend=backend)
    FD = hvp_fd(lambda t: net.loss_and_grad(t, X, y)[1], theta, V)
    assert rel_err(HV, FD) <= 1e-6


def test_gradient_matches_central_differences():
    net, theta, X, y, _ = problem("gelu", "cross_entropy", seed=2)
    _, g = net.loss_and_grad(theta, X, y)
    h = 1e-6
    E = np.eye(net.num_params)
    fd = np.array(
        [(net.loss(theta + h * e, X, y) - net.loss(theta - h * e, X, y)) / (2 * h) for e in E]
    )
    assert rel_err(g, fd) <= 1e-7


def test_loss_values_by_hand():
    # zero weights: softmax is uniform, loss log(C); logistic at 0: log 2; mse: 0.5 mean ||y||^2
    X = np.ones((4, 2))
    ce = MLP([2, 3], activation="identity", loss="cross_entropy")
    assert np.isclose(ce.loss(np.zeros(ce.num_params), X, np.array([0, 1, 2, 0])), np.log(3))
    lg = MLP([2, 1], loss="logistic")
    assert np.isclose(lg.loss(np.zeros(3), X, np.array([0.0, 1.0, 1.0, 0.0])), np.log(2))
    ms = MLP([2, 2], loss="mse")
    y = np.array([[1.0, 2.0], [0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert np.isclose(ms.loss(np.zeros(ms.num_params), X, y), 0.5 * (y**2).sum() / 4)


def test_forward_matches_torch_outputs():
    torch = pytest.importorskip("torch")
    net, theta, X, y, _ = problem("softplus", "mse")
    (W1, b1), (W2, b2), (W3, b3) = (tuple(torch.tensor(a) for a in p) for p in net.unpack(theta))
    sp = torch.nn.functional.softplus
    ref = sp(sp(torch.tensor(X) @ W1 + b1) @ W2 + b2) @ W3 + b3
    np.testing.assert_allclose(net.forward(theta, X), ref.numpy(), rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------------------ backends
@pytest.fixture(scope="module")
def backend_cases():
    """Per dtype and activation: a batch large enough that every thread gets rows (N=203)."""
    cases = {}
    for dtype in (np.float32, np.float64):
        for act, loss in [("tanh", "cross_entropy"), ("gelu", "mse"), ("softplus", "logistic"),
                          ("sigmoid", "cross_entropy"), ("relu", "mse")]:
            net, theta, X, y, V = problem(act, loss, sizes=(7, 33, 17, 4), N=203, dtype=dtype,
                                          seed=3, k=4)
            ref = (net.loss_and_grad(theta, X, y, backend="numpy"),
                   net.hvp(theta, X, y, V, backend="numpy"),
                   net.gnvp(theta, X, y, V, backend="numpy"))
            cases[(np.dtype(dtype).name, act)] = (net, theta, X, y, V, ref)
    return cases


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", compiled_backends("curvature"))
def test_backends_match_reference(backend_cases, backend, dtype):
    tol = tolerance(dtype)
    for (dt, _act), (net, theta, X, y, V, ref) in backend_cases.items():
        if dt != dtype:
            continue
        (L_r, g_r), HV_r, G_r = ref
        L, g = net.loss_and_grad(theta, X, y, backend=backend)
        assert g.dtype == dtype
        assert abs(L - L_r) <= tol * max(1.0, abs(L_r))
        assert rel_err(g, g_r) <= 4 * tol
        HV = net.hvp(theta, X, y, V, backend=backend)
        assert HV.dtype == dtype and HV.shape == V.shape
        assert rel_err(HV, HV_r) <= 4 * tol
        assert rel_err(net.gnvp(theta, X, y, V, backend=backend), G_r) <= 4 * tol
        assert abs(net.loss(theta, X, y, backend=backend) - L_r) <= tol * max(1.0, abs(L_r))


@pytest.mark.parametrize("backend", compiled_backends("curvature"))
def test_threaded_kernels_match_reference(backend_cases, backend, monkeypatch):
    # small layers run on one thread (PARALLEL_MIN_VALUES); force the threaded kernels here
    import fastopt
    from fastopt.curvature import mlp

    monkeypatch.setattr(mlp, "PARALLEL_MIN_VALUES", 0)
    old = fastopt.get_num_threads()
    fastopt.set_num_threads(2)
    try:
        for dt in ("float32", "float64"):
            net, theta, X, y, V, ref = backend_cases[(dt, "tanh")]
            tol = 4 * tolerance(dt)
            HV = net.hvp(theta, X, y, V, backend=backend)
            assert rel_err(HV, ref[1]) <= tol
            assert rel_err(net.gnvp(theta, X, y, V, backend=backend), ref[2]) <= tol
            assert rel_err(net.loss_and_grad(theta, X, y, backend=backend)[1], ref[0][1]) <= tol
            for _ in range(3):
                np.testing.assert_array_equal(net.hvp(theta, X, y, V, backend=backend), HV)
    finally:
        fastopt.set_num_threads(old)


@pytest.mark.parametrize("backend", compiled_backends("curvature"))
def test_float32_close_to_float64(backend_cases, backend):
    for act in ("tanh", "gelu"):
        net32, theta, X, y, V, _ = backend_cases[("float32", act)]
        net64 = backend_cases[("float64", act)][0]
        HV32 = net32.hvp(theta, X, y, V, backend=backend)
        # the float32 problem is the float64 one rounded: compare with the float64 result there
        HV64 = net64.hvp(theta.astype(np.float64), X.astype(np.float64),
                         y if net32.loss_name == "cross_entropy" else y.astype(np.float64),
                         V.astype(np.float64), backend=backend)
        assert rel_err(HV32, HV64) <= 1e-4


@pytest.mark.parametrize("backend", compiled_backends("curvature") + ["numpy"])
def test_batched_equals_one_at_a_time_and_is_deterministic(backend_cases, backend):
    net, theta, X, y, V, _ = backend_cases[("float64", "tanh")]
    HV = net.hvp(theta, X, y, V, backend=backend)
    for j in range(V.shape[1]):
        assert rel_err(net.hvp(theta, X, y, V[:, j], backend=backend), HV[:, j]) <= 1e-13
    for _ in range(3):  # race-free: repeated calls agree bit for bit
        np.testing.assert_array_equal(net.hvp(theta, X, y, V, backend=backend), HV)


@pytest.mark.parametrize("backend", compiled_backends("curvature"))
def test_thread_count_does_not_change_results(backend_cases, backend, monkeypatch):
    import fastopt
    from fastopt.curvature import mlp

    # these layers are below PARALLEL_MIN_VALUES: force the threaded kernels, or both calls
    # would run the same serial path and the test could not fail
    monkeypatch.setattr(mlp, "PARALLEL_MIN_VALUES", 0)
    net, theta, X, y, V, _ = backend_cases[("float64", "gelu")]
    old = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        one = net.hvp(theta, X, y, V, backend=backend)
        fastopt.set_num_threads(2)
        two = net.hvp(theta, X, y, V, backend=backend)
    finally:
        fastopt.set_num_threads(old)
    assert rel_err(two, one) <= 1e-14


def test_out_argument_and_linearity():
    net, theta, X, y, V = problem("tanh", "cross_entropy")
    out = np.empty_like(V)
    res = net.hvp(theta, X, y, V, out=out)
    assert res is out
    a, b = 2.5, -0.75
    combo = net.hvp(theta, X, y, a * V[:, 0] + b * V[:, 1])
    assert rel_err(combo, a * out[:, 0] + b * out[:, 1]) <= 1e-12
    gout = np.empty(net.num_params)
    _, g = net.loss_and_grad(theta, X, y, out=gout)
    assert g is gout


@pytest.mark.parametrize("backend", compiled_backends("curvature"))
@pytest.mark.parametrize("k", [1, 3])
def test_out_written_in_place_or_aliasing_an_input(backend, k):
    """out= is filled in place, and out= that is v itself (or theta, for the gradient) still
    gets the product of the original v: the backward reads V after writing a layer's rows."""
    net, theta, X, y, V = problem("tanh", "cross_entropy", k=k)
    V = V[:, 0].copy() if k == 1 else V
    ref = net.hvp(theta, X, y, V, backend=backend)
    out = np.full_like(V, np.nan)
    assert net.hvp(theta, X, y, V, backend=backend, out=out) is out
    np.testing.assert_array_equal(out, ref)
    Vin = V.copy()
    assert net.hvp(theta, X, y, Vin, backend=backend, out=Vin) is Vin
    np.testing.assert_array_equal(Vin, ref)
    _, gref = net.loss_and_grad(theta, X, y, backend=backend)
    th = theta.copy()
    _, g = net.loss_and_grad(th, X, y, backend=backend, out=th)
    assert g is th
    np.testing.assert_array_equal(th, gref)


def test_gnvp_is_symmetric_psd_and_equals_hvp_for_one_linear_layer():
    net, theta, X, y, V = problem("tanh", "cross_entropy", k=4)
    G = net.gnvp(theta, X, y, V)
    M = V.T @ G
    np.testing.assert_allclose(M, M.T, rtol=1e-12, atol=1e-14)
    assert np.linalg.eigvalsh((M + M.T) / 2).min() >= -1e-12
    lin = MLP([4, 3], loss="cross_entropy")
    th = lin.init(0)
    Vl = np.random.default_rng(0).standard_normal((lin.num_params, 2))
    assert rel_err(lin.gnvp(th, X, y, Vl), lin.hvp(th, X, y, Vl)) <= 1e-13


def test_non_contiguous_inputs_and_inputs_unchanged():
    net, theta, X, y, V = problem("sigmoid", "mse")
    Xf = np.asfortranarray(X)
    Vs = np.repeat(V, 2, axis=1)[:, ::2]  # strided view
    copies = [a.copy() for a in (theta, Xf, y, Vs)]
    HV = net.hvp(theta, Xf, y, Vs)
    np.testing.assert_array_equal(HV, net.hvp(theta, X, y, V))
    for a, c in zip((theta, Xf, y, Vs), copies, strict=True):
        np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------------------------ properties
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    N=st.integers(1, 7),
    act=st.sampled_from(ACTS),
    loss=st.sampled_from(LOSSES),
    seed=st.integers(0, 2**16),
)
def test_hvp_symmetric_and_backends_agree_on_random_nets(sizes, N, act, loss, seed):
    sizes = list(sizes)
    if loss == "logistic":
        sizes[-1] = 1
    elif loss == "cross_entropy":
        sizes[-1] = max(2, sizes[-1])
    rng = np.random.default_rng(seed)
    net = MLP(sizes, activation=act, loss=loss)
    theta = net.init(rng) + 0.5 * rng.standard_normal(net.num_params)
    X = rng.standard_normal((N, sizes[0]))
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], N)
    elif loss == "mse":
        y = rng.standard_normal((N, sizes[-1]))
    else:
        y = rng.random(N)
    UV = rng.standard_normal((net.num_params, 2))
    ref = net.hvp(theta, X, y, UV, backend="numpy")
    scale = max(np.abs(ref).max(), 1e-300) * np.abs(UV).max() * net.num_params
    # u^T H v == v^T H u
    assert abs(UV[:, 0] @ ref[:, 1] - UV[:, 1] @ ref[:, 0]) <= 1e-12 * scale
    for backend in ("cython", "numba"):
        if _dispatch.available("curvature", backend):
            assert rel_err(net.hvp(theta, X, y, UV, backend=backend), ref) <= 1e-11 or (
                np.abs(ref).max() == 0 and not net.hvp(theta, X, y, UV, backend=backend).any()
            )


# ------------------------------------------------------------------------------ layout kernels
def _kernels(backend):
    return _dispatch.load("curvature", backend)  # "numpy": fastopt.reference.curvature


@pytest.mark.parametrize("backend", compiled_backends("curvature") + ["numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 5), (2, 5, 1), (1, 70, 33), (4, 32, 64),
                                   (2, 3, 100)])
def test_batched_transpose_exact(backend, dtype, shape):
    """dst[i] = a[i].T (+ b[i].T) bit for bit, for views with padded rows and tile edges."""
    mod = _kernels(backend)
    rng = np.random.default_rng(7)
    B, R, C = shape
    a = rng.standard_normal((B, R, C + 3)).astype(dtype)[:, :, 1 : 1 + C]  # strided rows
    bb = rng.standard_normal((R, B, C)).astype(dtype).transpose(1, 0, 2)  # permuted view
    empty = np.empty((0, 0, 0), dtype)
    dst = np.full((B, C + 2, R), np.nan, dtype)[:, 1 : 1 + C, :]
    mod.batched_transpose(a, empty, dst, 1)
    np.testing.assert_array_equal(dst, a.transpose(0, 2, 1))
    mod.batched_transpose(a, bb, dst, 1)
    np.testing.assert_array_equal(dst, a.transpose(0, 2, 1) + bb.transpose(0, 2, 1))


@pytest.mark.parametrize("backend", compiled_backends("curvature") + ["numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_colsum_matches_float64_sum(backend, dtype, n_threads):
    """Column sums of a row-strided slice (as mlp.py passes) over several column blocks."""
    mod = _kernels(backend)
    D = np.random.default_rng(3).standard_normal((37, 3, 300)).astype(dtype)
    Dsel = D[:, 1:, :].reshape(37, 600)
    out = np.full(600, np.nan)
    mod.colsum(Dsel, out, n_threads)
    np.testing.assert_allclose(out, Dsel.astype(np.float64).sum(axis=0), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("backend", compiled_backends("curvature") + ["numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("first", [0, 1])
def test_hidden_backward_sums_equal_colsum(backend, dtype, n_threads, first):
    """hidden_backward's fused column sums are what a separate colsum pass gives, bit for bit,
    and D is the same with or without them."""
    mod = _kernels(backend)
    rng = np.random.default_rng(11)
    N, k, n = 29, 3, 300
    DA = rng.standard_normal((N, 1 + k, n)).astype(dtype)
    DV, RZ = (rng.standard_normal((N, k, n)).astype(dtype) for _ in range(2))
    D1, D2 = (rng.standard_normal((N, n)).astype(dtype) for _ in range(2))
    D_ref, D = np.empty_like(DA), np.empty_like(DA)
    mod.hidden_backward(DA, DV, D1, D2, RZ, 0, D_ref, np.empty(0), first, n_threads)
    S = np.full((1 + k - first) * n, np.nan)
    mod.hidden_backward(DA, DV, D1, D2, RZ, 0, D, S, first, n_threads)
    np.testing.assert_array_equal(D, D_ref)
    ref = np.empty_like(S)
    mod.colsum(D_ref[:, first:, :].reshape(N, -1), ref, 1)
    np.testing.assert_array_equal(S, ref)
    if backend != "numpy":  # the compiled kernels write through raw pointers: sizes checked
        with pytest.raises(ValueError, match="S must have"):
            mod.hidden_backward(DA, DV, D1, D2, RZ, 0, D, np.empty(5), first, n_threads)


# ------------------------------------------------------------------------------ interface
def test_backends_expose_one_kernel_interface():
    """Every backend module has each kernel of mlp.KERNELS with the same parameters, no other
    public kernel, and mlp.py never branches on the backend's name."""
    import inspect
    import re
    from pathlib import Path

    from fastopt.curvature import mlp
    from fastopt.reference import curvature as reference

    names = [b for b in ("cython", "numba", "numpy") if _dispatch.available("curvature", b)]
    assert "numpy" in names and len(names) >= 2
    mods = {b: _dispatch.load("curvature", b) for b in names}
    for kernel in mlp.KERNELS:
        sigs = {b: list(inspect.signature(getattr(m, kernel)).parameters) for b, m in mods.items()}
        assert len({tuple(s) for s in sigs.values()}) == 1, (kernel, sigs)
    for b, m in mods.items():
        public = {n for n, f in vars(m).items()
                  if callable(f) and not n.startswith("_") and getattr(f, "__module__", None)
                  == m.__name__}
        allowed = set(mlp.KERNELS) | {"simd_level"} | set(reference.FORMULAS)
        assert public <= allowed, (b, public)
    src = Path(mlp.__file__).read_text()
    assert not re.search(r"(backend|\bname) (==|!=|in) ", src)
