"""Bad input to the curvature family: clear errors, nothing modified."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import MLP


@pytest.fixture
def ce():
    rng = np.random.default_rng(0)
    net = MLP([3, 4, 3], loss="cross_entropy")
    theta = net.init(rng)
    X = rng.standard_normal((6, 3))
    y = np.array([0, 1, 2, 2, 1, 0])
    v = rng.standard_normal(net.num_params)
    return net, theta, X, y, v


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"sizes": [3]}, ValueError, "at least 2"),
        ({"sizes": [3, 0, 2]}, ValueError, ">= 1"),
        ({"sizes": [3, 2.5]}, TypeError, "integers"),
        ({"sizes": "32"}, TypeError, "sequence"),
        ({"sizes": [3, 2], "activation": "swish"}, ValueError, "activation"),
        ({"sizes": [3, 2], "loss": "hinge"}, ValueError, "loss"),
        ({"sizes": [3, 2], "loss": "logistic"}, ValueError, "one output"),
        ({"sizes": [3, 1], "loss": "cross_entropy"}, ValueError, "at least 2 outputs"),
        ({"sizes": [3, 2], "dtype": np.float16}, TypeError, "float16"),
        ({"sizes": [3, 2], "dtype": np.int32}, TypeError, "dtype"),
    ],
)
def test_bad_model(kwargs, exc, match):
    sizes = kwargs.pop("sizes")
    with pytest.raises(exc, match=match):
        MLP(sizes, **kwargs)


def test_wrong_theta_and_v(ce):
    net, theta, X, y, v = ce
    with pytest.raises(ValueError, match=r"theta: expected shape \(31,\)"):
        net.loss(theta[:-1], X, y)
    with pytest.raises(ValueError, match="theta"):
        net.hvp(theta.reshape(1, -1), X, y, v)
    with pytest.raises(ValueError, match=r"v: expected shape \(31,\) or \(31, k\)"):
        net.hvp(theta, X, y, v[:-1])
    with pytest.raises(ValueError, match="v: expected shape"):
        net.hvp(theta, X, y, np.zeros((net.num_params, 0)))
    with pytest.raises(ValueError, match="v: expected shape"):
        net.gnvp(theta, X, y, np.zeros((net.num_params, 2, 1)))
    with pytest.raises(ValueError, match="v: contains 1 non-finite"):
        bad = v.copy()
        bad[3] = np.inf
        net.hvp(theta, X, y, bad)
    with pytest.raises(ValueError, match="does not match"):
        net.hvp(theta.astype(np.float32), X, y, v)
    with pytest.raises(TypeError, match="theta: dtype int64"):
        net.loss(np.zeros(net.num_params, dtype=np.int64), X, y)
    with pytest.raises(ValueError, match="out"):
        net.hvp(theta, X, y, v, out=np.empty(3))


def test_nan_in_theta_or_X(ce):
    net, theta, X, y, v = ce
    t = theta.copy()
    t[0] = np.nan
    with pytest.raises(ValueError, match="theta: contains 1 non-finite"):
        net.loss_and_grad(t, X, y)
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(ValueError, match="X: contains 1 non-finite"):
        net.hvp(theta, Xn, y, v)


def test_X_shape_and_empty_batch(ce):
    net, theta, X, y, v = ce
    with pytest.raises(ValueError, match="X: expected 3 columns"):
        net.loss(theta, X[:, :2], y)
    with pytest.raises(ValueError, match="X: expected a 2-D"):
        net.loss(theta, X[0], y)
    with pytest.raises(ValueError, match="empty batch"):
        net.hvp(theta, X[:0], y[:0], v)


def test_labels(ce):
    net, theta, X, y, v = ce
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        net.loss(theta, X, np.array([0, 1, 3, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        net.hvp(theta, X, np.array([0, -1, 2, 0, 0, 0]), v)
    with pytest.raises(TypeError, match="integer class labels"):
        net.loss(theta, X, y.astype(np.float64))
    with pytest.raises(TypeError, match="integer class labels"):
        net.loss(theta, X, y.astype(bool))
    with pytest.raises(ValueError, match=r"y: expected shape \(6,\)"):
        net.loss(theta, X, y[:5])
    lg = MLP([3, 1], loss="logistic")
    with pytest.raises(ValueError, match=r"logistic labels must lie in \[0, 1\]"):
        lg.loss(np.zeros(4), X, np.array([0, 1, 2, 0, 1, 0]))
    with pytest.raises(ValueError, match="y: expected shape"):
        lg.loss(np.zeros(4), X, np.zeros((6, 2)))
    ms = MLP([3, 2], loss="mse")
    with pytest.raises(ValueError, match=r"y: expected shape \(6, 2\)"):
        ms.loss(np.zeros(8), X, np.zeros(6))
    with pytest.raises(ValueError, match="y: contains"):
        ms.loss(np.zeros(8), X, np.full((6, 2), np.nan))


def test_backend_and_scheme(ce):
    net, theta, X, y, v = ce
    with pytest.raises(ValueError, match="backend"):
        net.hvp(theta, X, y, v, backend="fortran")
    with pytest.raises(ValueError, match="not implemented"):
        net.hvp(theta, X, y, v, backend="cuda")
    with pytest.raises(ValueError, match="scheme"):
        net.init(0, scheme="lecun")
    with pytest.raises(ValueError, match="layers"):
        net.pack([(np.zeros((3, 4)), np.zeros(4))])
    with pytest.raises(ValueError, match=r"layers\[1\]\[0\]: expected shape"):
        net.pack([(np.zeros((3, 4)), np.zeros(4)), (np.zeros((3, 4)), np.zeros(3))])


@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
def test_inputs_never_modified(ce, backend):
    from fastopt import _dispatch

    if not _dispatch.available("curvature", backend):
        pytest.skip(f"{backend} unavailable")
    net, theta, X, y, v = ce
    V = np.stack([v, -v], axis=1)
    args = [theta, X, y, V]
    copies = [a.copy() for a in args]
    net.loss_and_grad(theta, X, y, backend=backend)
    net.hvp(theta, X, y, V, backend=backend)
    net.gnvp(theta, X, y, V[:, 0], backend=backend)
    for a, c in zip(args, copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_nothing_written_to_out_on_error(ce):
    net, theta, X, y, v = ce
    out = np.full(net.num_params, 7.0)
    with pytest.raises(ValueError):
        net.hvp(theta, X, np.array([0, 1, 9, 0, 0, 0]), v, out=out)
    assert (out == 7.0).all()


@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
@pytest.mark.parametrize("kind", ["frozen", "memmap"])
def test_read_only_inputs_work(ce, backend, kind, tmp_path):
    """Read-only theta, X, y, v (a frozen array, np.memmap(mode="r")) give the results of
    writable ones in every method (the Cython kernels take const memoryviews)."""
    from fastopt import _dispatch

    if not _dispatch.available("curvature", backend):
        pytest.skip(f"{backend} unavailable")
    net, theta, X, y, v = ce
    V = np.stack([v, -2 * v], axis=1)

    def read_only(a, name):
        if kind == "frozen":
            r = a.copy()
            r.flags.writeable = False
            return r
        path = tmp_path / f"{name}.bin"
        a.tofile(path)
        return np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)

    ro = [read_only(a, n) for a, n in ((theta, "theta"), (X, "X"), (y, "y"), (V, "V"),
                                       (v, "v"))]
    t, Xr, yr, Vr, vr = ro
    assert not any(a.flags.writeable for a in ro)
    assert net.loss(t, Xr, yr, backend=backend) == net.loss(theta, X, y, backend=backend)
    L, g = net.loss_and_grad(t, Xr, yr, backend=backend)
    L0, g0 = net.loss_and_grad(theta, X, y, backend=backend)
    assert L == L0
    np.testing.assert_array_equal(g, g0)
    for method in (net.hvp, net.gnvp):
        np.testing.assert_array_equal(method(t, Xr, yr, Vr, backend=backend),
                                      method(theta, X, y, V, backend=backend))
        np.testing.assert_array_equal(method(t, Xr, yr, vr, backend=backend),
                                      method(theta, X, y, v, backend=backend))
    mse = MLP([3, 2], loss="mse")
    th = mse.init(0)
    Y = np.random.default_rng(1).standard_normal((6, 2))
    Yr, thr = read_only(Y, "Y"), read_only(th, "th")
    np.testing.assert_array_equal(mse.hvp(thr, Xr, Yr, np.eye(mse.num_params), backend=backend),
                                  mse.hvp(th, X, Y, np.eye(mse.num_params), backend=backend))


def test_array_subclasses_refused_or_honoured(ce):
    """np.matrix and masked arrays (whose mask would be dropped silently) get a TypeError naming
    the argument, as inputs and as out=."""
    net, theta, X, y, v = ce
    V = np.stack([v, -v], axis=1)
    with pytest.raises(TypeError, match="out: np.matrix"):
        net.hvp(theta, X, y, V, out=np.asmatrix(np.empty_like(V)))
    with pytest.raises(TypeError, match="out: np.matrix"):
        net.loss_and_grad(theta, X, y, out=np.asmatrix(np.empty(net.num_params)))
    masked = {"theta": np.ma.masked_array(theta, mask=theta > 0),
              "X": np.ma.masked_array(X, mask=X > 1), "y": np.ma.masked_array(y, mask=y == 2),
              "v": np.ma.masked_array(v, mask=v > 0)}
    args = {"theta": theta, "X": X, "y": y, "v": v}
    for name, m in masked.items():
        with pytest.raises(TypeError, match=f"{name}: masked arrays are not supported"):
            net.hvp(**{**args, name: m})
    with pytest.raises(TypeError, match="out: masked arrays"):
        net.hvp(theta, X, y, v, out=np.ma.masked_array(np.empty_like(v)))
    with pytest.raises(TypeError, match=r"X: np.matrix is not supported; pass np.asarray"):
        net.hvp(theta, np.asmatrix(X), y, V)


def test_dtype_mismatch_names_argument_and_model_dtype():
    net = MLP([3, 2], loss="mse", dtype=np.float32)
    theta = net.init(0)
    X = np.ones((4, 3), np.float32)
    Y = np.zeros((4, 2), np.float32)
    for name, bad in (("theta", theta.astype(np.float64)), ("X", X.astype(np.float64)),
                      ("y", Y.astype(np.float64))):
        args = {"theta": theta, "X": X, "y": Y, **{name: bad}}
        with pytest.raises(ValueError, match=rf"{name}: dtype float64 does not match the "
                                             r"model's dtype float32 .*astype\(np.float32\)"):
            net.loss(**args)
    with pytest.raises(ValueError, match=r"v: dtype float64 does not match the model's"):
        net.hvp(theta, X, Y, np.ones(net.num_params))


@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
@pytest.mark.parametrize("k", [1, 3])
def test_interrupted_call_leaves_out_untouched(ce, backend, k, monkeypatch):
    """A KeyboardInterrupt in the middle of the backward pass (after the output layer's rows
    are computed) leaves out= as it was, and the next call on the same workspace is right."""
    from fastopt import _dispatch

    if not _dispatch.available("curvature", backend):
        pytest.skip(f"{backend} unavailable")
    net, theta, X, y, v = ce
    V = v if k == 1 else np.random.default_rng(5).standard_normal((net.num_params, k))
    ref = net.hvp(theta, X, y, V, backend=backend)
    gref = net.loss_and_grad(theta, X, y, backend=backend)[1]
    mod = _dispatch.load("curvature", backend)

    def interrupted(*args):
        raise KeyboardInterrupt

    out = np.full_like(V, 7.0)
    gout = np.full(net.num_params, 7.0)
    with monkeypatch.context() as mp:
        mp.setattr(mod, "hidden_backward", interrupted)
        with pytest.raises(KeyboardInterrupt):
            net.hvp(theta, X, y, V, backend=backend, out=out)
        with pytest.raises(KeyboardInterrupt):
            net.loss_and_grad(theta, X, y, backend=backend, out=gout)
    assert (out == 7.0).all() and (gout == 7.0).all()
    np.testing.assert_array_equal(net.hvp(theta, X, y, V, backend=backend, out=out), ref)
    np.testing.assert_array_equal(net.loss_and_grad(theta, X, y, backend=backend)[1], gref)


def test_one_model_shared_by_threads():
    """8 threads calling one MLP (per-thread workspaces) get the sequential results bit for
    bit, each into its own out= and all into one shared out= (whole results only)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    net = MLP([5, 16, 16, 3], activation="gelu")
    theta = net.init(rng)
    X = rng.standard_normal((40, 5))
    y = rng.integers(0, 3, 40)
    Vs = [rng.standard_normal((net.num_params, 2)) for _ in range(8)]
    want = [net.hvp(theta, X, y, V) for V in Vs]
    shared = np.empty((net.num_params, 2))

    def work(i):
        got = [net.hvp(theta, X, y, Vs[i], out=np.empty_like(Vs[i])) for _ in range(5)]
        net.hvp(theta, X, y, Vs[0], out=shared)
        return got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, got in enumerate(results):
        for g in got:
            np.testing.assert_array_equal(g, want[i])
    np.testing.assert_array_equal(shared, want[0])


def test_blas_follows_the_call_thread_count(ce, monkeypatch):
    """With set_num_threads(1) the products run on one BLAS thread (threadpoolctl), and BLAS
    gets its own count back after the call, also after an error in the middle."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import fastopt
    from fastopt import _dispatch
    from fastopt.curvature import mlp

    # numpy's BLAS, loaded with numpy, is among the libraries the cached controller knows
    # (scipy's, which Numba may load later, is not used by np.matmul)
    known = {lib.filepath for lib in mlp._blas_controller().lib_controllers}
    assert any("numpy" in path or "scipy_openblas64" in path for path in known)

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["filepath"] in known]

    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs one thread here")
    net, theta, X, y, v = ce
    mod = _dispatch.load("curvature", "numpy")
    seen = []
    real = mod.hidden_backward

    def spy(*args):
        seen.append(blas_threads())
        return real(*args)

    monkeypatch.setattr(mod, "hidden_backward", spy)
    old = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        net.hvp(theta, X, y, v, backend="numpy")
    finally:
        fastopt.set_num_threads(old)
    assert seen and all(max(s) == 1 for s in seen)
    assert blas_threads() == before

    def failing(*args):
        raise RuntimeError("in the middle")

    monkeypatch.setattr(mod, "hidden_backward", failing)
    try:
        fastopt.set_num_threads(1)
        with pytest.raises(RuntimeError, match="in the middle"):
            net.hvp(theta, X, y, v, backend="numpy")
    finally:
        fastopt.set_num_threads(old)
    assert blas_threads() == before


def test_pack_needs_pairs():
    net = MLP([3, 2], loss="mse")
    with pytest.raises(TypeError, match="layers: must be a sequence of"):
        net.pack(5)
    with pytest.raises(TypeError, match=r"layers\[0\]: must be a \(W, b\) pair"):
        net.pack([np.zeros((3, 2))])
