"""``Network``: a sequence of layers (dense, batch norm, activations) with exact curvature.

Loss, gradient, exact Hessian-vector products (Pearlmutter's R-operator) and Gauss-Newton-vector
products of a feed-forward network given as a list of :mod:`fastopt.nn` layer specs, with
batch normalization in training mode differentiated through the batch statistics (the R-forward
carries ``R mean`` and ``R var`` through the normalization; the R-backward differentiates batch
norm's backward) or in eval mode (running statistics as constants).

Streams are interleaved ``(N, 1 + k, n)`` arrays as in :class:`~fastopt.MLP` (slot 0 the forward
value, slot ``1 + j`` the R-stream of direction j), so that each dense layer's products run as a
few GEMMs through numpy's BLAS whatever k is; between them one element-wise kernel per layer and
pass (``_cython_network.pyx``, ``_network_numba.py`` or the numpy reference
``fastopt.reference.network``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .._codes import Loss
from .._validate import (
    as_float_array,
    as_generator,
    check_all_finite,
    check_choice,
    check_float_dtype,
    check_out,
)
from ..nn import ActivationLayer, BatchNorm, Dense, Layer
from ._workspace import ThreadWorkspace
from .objective import _Prepared, check_finite, check_targets, check_v, dense_init

__all__ = ["Network"]

LOSSES = Loss.names()
INIT_SCHEMES = ("xavier", "he", "orthogonal")
NETWORK_BACKENDS = ("auto", "cython", "numba", "numpy")

_kernel_modules: dict[str, object] = {}


def _kernels(backend: str):
    """The element-wise kernel module for ``backend`` ("auto": Cython, else Numba, else numpy;
    Cython first because it needs no JIT compilation, and the two are within noise of each
    other where BLAS dominates)."""
    if backend not in NETWORK_BACKENDS:
        raise ValueError(f"backend: {backend!r} is not implemented for Network (choose from "
                         f"{', '.join(map(repr, NETWORK_BACKENDS))})")
    if backend == "auto":
        for name in ("cython", "numba"):
            try:
                return _kernels(name)
            except RuntimeError:
                continue
        return _kernels("numpy")
    mod = _kernel_modules.get(backend)
    if mod is None:
        try:
            if backend == "cython":
                from . import _cython_network as mod
            elif backend == "numba":
                from . import _network_numba as mod
            else:
                from ..reference import network as mod
        except ImportError as exc:
            hint = (" (the Cython extensions are not built: python setup.py build_ext --inplace)"
                    if backend == "cython" else "")
            raise RuntimeError(f"backend {backend!r} is not available for Network: "
                               f"{exc}{hint}") from exc
        _kernel_modules[backend] = mod
    return mod


def _check_out(out: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """``check_out`` that also refuses ndarray subclasses (``np.matrix`` cannot be reshaped to
    the per-layer blocks the products are written through)."""
    if out is not None and isinstance(out, np.ndarray) and type(out) is not np.ndarray:
        raise TypeError(f"out: must be a plain numpy.ndarray, got {type(out).__name__}; pass "
                        "np.asarray(out)")
    return check_out(out, shape, dtype)


class Network(ThreadWorkspace):
    """A feed-forward network of :mod:`fastopt.nn` layers whose parameters are one flat vector.

    Same conventions as :class:`~fastopt.MLP` (an MLP is the network ``[Dense, act, Dense, act,
    ..., Dense]`` and gives the same results): ``theta`` holds the parameters layer by layer
    (:class:`~fastopt.nn.Dense`: ``W`` of shape ``(n_in, n_out)`` row-major, then ``b``;
    :class:`~fastopt.nn.BatchNorm`: ``weight``, then ``bias``), the loss is averaged over the
    batch, and every method validates its input and never modifies it.

    Parameters
    ----------
    layers : sequence of fastopt.nn.Layer
        The layers in order; the first is a ``Dense`` or a ``BatchNorm`` (it fixes the input
        width), and consecutive widths must match.
    loss : {"cross_entropy", "mse", "logistic"}
        As for :class:`~fastopt.MLP`, on the last layer's output.
    dtype : {np.float64, np.float32}
        Dtype of ``theta``, ``X``, ``v`` and of the computation (per-channel reductions and the
        loss accumulate in float64).
    training : bool
        Mode of the batch-norm layers (also set by :meth:`train` / :meth:`eval`).

    Notes
    -----
    **Training mode** (PyTorch's ``model.train()``): each batch-norm layer normalizes with the
    mean and biased variance of the batch it is given, so these statistics are functions of
    ``theta``, and ``loss``, ``loss_and_grad``, ``hvp`` and ``gnvp`` are the exact derivatives of
    that function: the loss SGD descends. A training-mode batch needs ``N >= 2``.

    **Eval mode** (``model.eval()``): batch norm uses the running statistics as constants.

    **Running statistics** are held by the network, not in ``theta``: per batch-norm layer a
    running mean (zeros) and running variance (ones) of the model dtype, and one
    ``num_batches_tracked`` counter. They change only when asked: ``forward`` or
    ``loss_and_grad`` with ``update_running_stats=True`` (training mode), with PyTorch's update
    ``r = (1 - momentum) r + momentum * batch`` (the unbiased variance ``var * N / (N - 1)``;
    ``momentum=None``: the cumulative average ``1 / num_batches_tracked``). Curvature products
    never change them (a Lanczos run makes hundreds of calls). An update is atomic (all layers
    and the counter replaced in one step under a lock); products read one consistent snapshot.
    :attr:`running_stats`, :meth:`set_running_stats` and :meth:`reset_running_stats` read and
    write them.

    ``backend=``: ``"auto"`` (Cython when built, else Numba), ``"cython"``, ``"numba"`` or
    ``"numpy"`` select the element-wise kernels; the matrix products run through numpy's BLAS.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import Network, nn
    >>> net = Network([nn.Dense(3, 6), nn.BatchNorm(6), nn.Tanh(), nn.Dense(6, 2)])
    >>> net.num_params
    50
    >>> theta = net.init(np.random.default_rng(0))
    >>> X = np.random.default_rng(1).standard_normal((8, 3))
    >>> y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    >>> loss, g = net.loss_and_grad(theta, X, y, backend="numpy")
    >>> u = np.random.default_rng(2).standard_normal(net.num_params)
    >>> hg = net.hvp(theta, X, y, g, backend="numpy")
    >>> bool(np.isclose(u @ hg, g @ net.hvp(theta, X, y, u, backend="numpy")))  # symmetric
    True
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        loss: str = "cross_entropy",
        dtype: type | np.dtype = np.float64,
        training: bool = True,
    ) -> None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise TypeError(f"layers: must be a sequence of fastopt.nn layers, got "
                            f"{type(layers).__name__}")
        layers = list(layers)
        if not layers:
            raise ValueError("layers: needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Dense, BatchNorm, ActivationLayer)):
                raise TypeError(f"layers[{i}]: expected a fastopt.nn layer (Dense, BatchNorm, "
                                f"Tanh, ...), got {type(layer).__name__}")
        first = layers[0]
        if not isinstance(first, (Dense, BatchNorm)):
            raise ValueError(f"layers[0]: must be Dense or BatchNorm (it fixes the input width), "
                             f"got {type(first).__name__}")
        self.layers = tuple(layers)
        self.n_in = first.n_in if isinstance(first, Dense) else first.n
        width = self.n_in
        self.widths = [width]
        self._offsets: list[int | None] = []
        off = 0
        for i, layer in enumerate(layers):
            try:
                width = layer.out_width(width)
            except ValueError as exc:
                raise ValueError(f"layers[{i}]: {exc}") from None
            self.widths.append(width)
            self._offsets.append(off if layer.num_params else None)
            off += layer.num_params
        self.num_params = off
        self.n_out = width
        self.loss_name = check_choice(loss, "loss", LOSSES)
        self.dtype = check_float_dtype(dtype)
        if self.loss_name == "logistic" and self.n_out != 1:
            raise ValueError(f"loss: 'logistic' needs one output, got {self.n_out}")
        if self.loss_name == "cross_entropy" and self.n_out < 2:
            raise ValueError(
                f"loss: 'cross_entropy' needs at least 2 outputs (classes), got {self.n_out}; "
                "use loss='logistic' for a binary problem with one logit"
            )
        self._loss_code = int(Loss[self.loss_name.upper()])
        self._bn_index = [i for i, layer in enumerate(layers) if isinstance(layer, BatchNorm)]
        self.training = bool(training)
        self._lock = threading.Lock()
        self._tls = threading.local()
        self.reset_running_stats()

    # ------------------------------------------------------------------ state
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_tls"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._tls = threading.local()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        mode = "training" if self.training else "eval"
        return (f"Network({list(self.layers)!r}, loss={self.loss_name!r}, "
                f"dtype=np.{self.dtype.name}, {mode})")

    def train(self, mode: bool = True) -> Network:
        """Set training mode (batch statistics); returns the network (as ``torch.nn.Module``).

        Examples
        --------
        >>> from fastopt import Network, nn
        >>> Network([nn.Dense(2, 2)], loss="mse").eval().train().training
        True
        """
        self.training = bool(mode)
        return self

    def eval(self) -> Network:
        """Set eval mode (running statistics as constants); returns the network.

        Examples
        --------
        >>> from fastopt import Network, nn
        >>> Network([nn.BatchNorm(2)], loss="mse").eval().training
        False
        """
        return self.train(False)

    def reset_running_stats(self) -> None:
        """Running means to 0, variances to 1, ``num_batches_tracked`` to 0.

        Examples
        --------
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 3), nn.BatchNorm(3)], loss="mse")
        >>> net.reset_running_stats(); net.num_batches_tracked
        0
        """
        stats = tuple((np.zeros(self.layers[i].n, self.dtype), np.ones(self.layers[i].n,
                       self.dtype)) for i in self._bn_index)
        with self._lock:
            self._state = (0, stats)

    @property
    def num_batches_tracked(self) -> int:
        """Training batches folded into the running statistics so far."""
        return self._state[0]

    @property
    def running_stats(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Copies of ``(running_mean, running_var)`` of each batch-norm layer, in order."""
        return [(m.copy(), v.copy()) for m, v in self._state[1]]

    def set_running_stats(self, stats: Sequence[tuple[np.ndarray, np.ndarray]], *,
                          num_batches_tracked: int | None = None) -> None:
        """Replace the running statistics (copied; validated first, then set in one step).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 3), nn.BatchNorm(3)], loss="mse")
        >>> net.set_running_stats([(np.ones(3), 2 * np.ones(3))])
        >>> net.running_stats[0][1]
        array([2., 2., 2.])
        """
        if len(stats) != len(self._bn_index):
            raise ValueError(f"stats: expected {len(self._bn_index)} (mean, var) pairs, got "
                             f"{len(stats)}")
        new = []
        for j, (i, pair) in enumerate(zip(self._bn_index, stats, strict=True)):
            n = self.layers[i].n
            m, v = (as_float_array(a, f"stats[{j}][{t}]", allow_int=True).astype(self.dtype)
                    for t, a in enumerate(pair))
            if m.shape != (n,) or v.shape != (n,):
                raise ValueError(f"stats[{j}]: expected two arrays of shape ({n},), got "
                                 f"{m.shape} and {v.shape}")
            check_all_finite(m, f"stats[{j}][0]")
            if not np.isfinite(v).all() or (v < 0).any():
                raise ValueError(f"stats[{j}][1]: running variances must be finite and >= 0")
            new.append((m.copy(), v.copy()))
        with self._lock:
            count = self._state[0] if num_batches_tracked is None else int(num_batches_tracked)
            self._state = (count, tuple(new))

    def _update_running(self, batch_stats: list[tuple[np.ndarray, np.ndarray]], N: int) -> None:
        with self._lock:
            count, old = self._state
            new = []
            for i, (rm, rv), (mean, var) in zip(self._bn_index, old, batch_stats, strict=True):
                mom = self.layers[i].momentum
                mom = 1.0 / (count + 1) if mom is None else mom
                new.append((
                    ((1 - mom) * rm.astype(np.float64) + mom * mean).astype(self.dtype),
                    ((1 - mom) * rv.astype(np.float64) + mom * var * (N / (N - 1))
                     ).astype(self.dtype),
                ))
            self._state = (count + 1, tuple(new))

    # ------------------------------------------------------------------ parameters
    @property
    def param_layers(self) -> list[int]:
        """Indices of the layers with parameters (Dense, BatchNorm), the order of ``theta``."""
        return [i for i, off in enumerate(self._offsets) if off is not None]

    def _views(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for i in self.param_layers:
            layer, off = self.layers[i], self._offsets[i]
            if isinstance(layer, Dense):
                n_in, n_o = layer.n_in, layer.n_out
                out.append((theta[off:off + n_in * n_o].reshape(n_in, n_o),
                            theta[off + n_in * n_o:off + n_in * n_o + n_o]))
            else:
                out.append((theta[off:off + layer.n], theta[off + layer.n:off + 2 * layer.n]))
        return out

    def unpack(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``(W, b)`` per Dense and ``(weight, bias)`` per BatchNorm layer, in order.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 3), nn.BatchNorm(3), nn.ReLU(), nn.Dense(3, 1)],
        ...               loss="mse")
        >>> [(a.shape, b.shape) for a, b in net.unpack(np.zeros(net.num_params))]
        [((2, 3), (3,)), ((3,), (3,)), ((3, 1), (1,))]
        """
        theta = self._check_theta(theta, contiguous=False)
        if not theta.flags.c_contiguous:
            raise ValueError("theta: must be contiguous to be unpacked into views")
        return self._views(theta)

    def pack(self, params: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Flat ``theta`` (a new array of the model dtype) from per-layer pairs (as unpacked).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 3), nn.BatchNorm(3), nn.Dense(3, 1)], loss="mse")
        >>> theta = np.arange(net.num_params, dtype=float)
        >>> bool(np.array_equal(net.pack(net.unpack(theta)), theta))
        True
        """
        idx = self.param_layers
        if len(params) != len(idx):
            raise ValueError(f"params: expected {len(idx)} pairs (one per Dense/BatchNorm "
                             f"layer), got {len(params)}")
        theta = np.zeros(self.num_params, self.dtype)
        for j, (pair, view) in enumerate(zip(params, self._views(theta), strict=True)):
            for t, (a, v) in enumerate(zip(pair, view, strict=True)):
                a = as_float_array(a, f"params[{j}][{t}]", allow_int=True)
                if a.shape != v.shape:
                    raise ValueError(f"params[{j}][{t}]: expected shape {v.shape}, got {a.shape}")
                v[...] = a
        return theta

    def init(self, rng: np.random.Generator | int | None = None, scheme: str = "xavier"
             ) -> np.ndarray:
        """Random parameters: Dense weights by ``scheme`` (as :meth:`MLP.init`), biases 0,
        batch-norm weights 1 and biases 0 (PyTorch's defaults).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 3), nn.BatchNorm(3)], loss="mse")
        >>> net.unpack(net.init(0))[1][0]
        array([1., 1., 1.])
        """
        scheme = check_choice(scheme, "scheme", INIT_SCHEMES)
        rng = as_generator(rng, "rng")
        params = []
        for i in self.param_layers:
            layer = self.layers[i]
            if isinstance(layer, BatchNorm):
                params.append((np.ones(layer.n), np.zeros(layer.n)))
                continue
            n_in, n_o = layer.n_in, layer.n_out
            W = dense_init(rng, scheme, n_in, n_o)
            params.append((W, np.zeros(n_o)))
        return self.pack(params)

    # ------------------------------------------------------------------ validation
    def _check_theta(self, theta: object, *, contiguous: bool = True) -> np.ndarray:
        theta = as_float_array(theta, "theta", dtype=self.dtype, contiguous=contiguous)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta: expected shape ({self.num_params},) for this network, got "
                             f"{theta.shape}")
        return theta

    def _check_X(self, X: object, training: bool) -> np.ndarray:
        X = as_float_array(X, "X", dtype=self.dtype)
        if X.ndim != 2:
            raise ValueError(f"X: expected a 2-D array (N, {self.n_in}), got shape {X.shape}")
        if X.shape[1] != self.n_in:
            raise ValueError(f"X: expected {self.n_in} columns (the first layer's input width), "
                             f"got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X: empty batch (0 samples); the loss is an average over samples")
        if training and self._bn_index and X.shape[0] < 2:
            raise ValueError(
                f"X: a batch of {X.shape[0]} sample cannot be batch-normalized in training mode "
                "(its variance is 0); use N >= 2 or eval mode"
            )
        check_finite(X, "X")
        return X

    def _prepare(self, theta, X, y):
        training = self.training
        theta = self._check_theta(theta)
        check_finite(theta, "theta")
        X = self._check_X(X, training)
        labels, Y = check_targets(y, X.shape[0], self.n_out, self.loss_name, self.dtype)
        return theta, X, labels, Y, training, self._state[1]

    def _prepared(self, X, y, backend, copy):
        """The validated-once hook of :func:`fastopt.curvature.objective.prepare`."""
        return _PreparedNetwork(self, X, y, backend, copy)

    # ------------------------------------------------------------------ core
    def _run(self, theta, X, labels, Y, V, mode, backend, training, stats, dest=None):
        """Forward (+ backward (+ R passes)); mode "forward", "loss", "grad", "hvp", "gnvp".
        Returns (loss, gradient, product, batch statistics, outputs)."""
        kern = _kernels(backend)
        dt = self.dtype
        ws = self._workspace()

        def buf(key, shape, dtype=dt):
            a = ws.get(key)
            if a is None or a.shape != shape or a.dtype != dtype:
                a = ws[key] = np.empty(shape, dtype)
            return a

        N = X.shape[0]
        need = {"forward": 0, "loss": 0, "grad": 1, "hvp": 2, "gnvp": 2}[mode]
        k = V.shape[1] if need == 2 else 0
        kk = 1 + k
        hvp = mode == "hvp"
        empty2 = np.empty((0, 0), dt)
        empty3 = np.empty((N, 0, 0), dt)

        # ---- forward and R-forward
        S = X.reshape(N, 1, self.n_in)
        if k and not isinstance(self.layers[0], Dense):  # R x = 0 for a layer that needs it
            S0 = buf("S0", (N, kk, self.n_in))
            S0[...] = 0
            S0[:, 0, :] = X
            S = S0
        caches = []
        batch_stats = []
        bn_j = 0
        for li, layer in enumerate(self.layers):
            off = self._offsets[li]
            if isinstance(layer, Dense):
                n_in, n_o = layer.n_in, layer.n_out
                W = theta[off:off + n_in * n_o].reshape(n_in, n_o)
                b = theta[off + n_in * n_o:off + n_in * n_o + n_o]
                kin = S.shape[1]
                Z = buf(f"Z{li}", (N * kin, n_o))
                np.matmul(S.reshape(N * kin, n_in), W, out=Z)
                Z = Z.reshape(N, kin, n_o)
                VT = None
                if k:
                    Vl = V[off:off + n_in * n_o]
                    if k == 1:
                        Vc = Vl.reshape(n_in, n_o)
                        C = V[off + n_in * n_o:off + n_in * n_o + n_o].reshape(1, n_o)
                        VT = Vc.T
                    else:
                        V3 = Vl.reshape(n_in, n_o, k)
                        vc = buf(f"Vc{li}", (n_in, k, n_o))
                        np.copyto(vc, V3.transpose(0, 2, 1))
                        Vc = vc.reshape(n_in, k * n_o)
                        C = np.ascontiguousarray(V[off + n_in * n_o:off + n_in * n_o + n_o].T)
                        if hvp and li > 0:  # [V_1^T .. V_k^T]: V_l as (n_in, n_o k), transposed
                            vt = buf(f"VT{li}", (n_o * k, n_in))
                            kern.transpose2d(Vl.reshape(n_in, n_o * k), vt)
                            VT = vt.reshape(n_o, k * n_in)
                    AV = buf(f"AV{li}", (N, k * n_o))
                    np.matmul(S[:, 0, :], Vc, out=AV)
                    AV = AV.reshape(N, k, n_o)
                else:
                    AV, C = np.empty((N, 0, n_o), dt), np.empty((0, n_o), dt)
                out = Z if kin == kk else buf(f"S{li}", (N, kk, n_o))
                kern.dense_bias(Z, b, AV, C, out)
                caches.append((S, W, VT))
                S = out
            elif isinstance(layer, BatchNorm):
                n = layer.n
                gamma, beta = theta[off:off + n], theta[off + n:off + 2 * n]
                if k:
                    VG = np.ascontiguousarray(V[off:off + n].T)
                    VB = np.ascontiguousarray(V[off + n:off + 2 * n].T)
                else:
                    VG = VB = np.empty((0, n), dt)
                out = buf(f"S{li}", (N, kk, n))
                XH = buf(f"XH{li}", (N, n))
                RXH = buf(f"RXH{li}", (N, k, n))
                if training:
                    mean, var, invstd = np.empty(n), np.empty(n), np.empty(n)
                    c = np.empty((k, n))
                    kern.bn_forward_train(S, layer.eps, gamma, beta, VG, VB, out, XH, RXH,
                                          mean, var, invstd, c)
                    batch_stats.append((mean, var))
                else:
                    rm, rv = stats[bn_j]
                    mean = rm.astype(np.float64)
                    invstd = 1.0 / np.sqrt(rv.astype(np.float64) + layer.eps)
                    c = np.empty((0, n))
                    kern.bn_forward_eval(S, mean, invstd, gamma, beta, VG, VB, out, XH, RXH)
                bn_j += 1
                caches.append((XH, invstd, gamma, RXH, c, VG))
                S = out
            else:
                n = self.widths[li]
                out = buf(f"S{li}", (N, kk, n))
                D1 = buf(f"D1{li}", (N, n)) if need >= 1 else empty2
                D2 = buf(f"D2{li}", (N, n)) if hvp else empty2
                kern.act_forward(S, int(layer.code), 2 if hvp else min(need, 1), out, D1, D2)
                caches.append((D1, D2, S))
                S = out
        if mode == "forward":
            return None, None, None, batch_stats, S[:, 0, :].copy()
        D = buf("Dout", (N, kk, self.n_out)) if need >= 1 else empty3
        loss = kern.loss_forward(S, self._loss_code, need, labels, Y, D) / N
        if need == 0:
            return loss, None, None, batch_stats, None

        # ---- backward and R-backward
        # "grad": slot 0 only; "hvp": slot 0 (the gradient) drives the R-backward of slots
        # 1..k, only those are returned; "gnvp": the plain backward (J^T) of slots 1..k alone.
        if mode == "gnvp":
            G = buf("Dgn", (N, k, self.n_out))
            np.copyto(G, D[:, 1:, :])
        else:
            G = D
        rmode = 1 if hvp else 0
        first = 1 if hvp else 0
        m_ret = G.shape[1] - first
        if dest is not None and any(np.may_share_memory(dest, a) for a in (theta, X, V, Y)):
            dest = None
        result = (np.empty((self.num_params, k) if k else self.num_params, dt) if dest is None
                  else dest)
        res = result.reshape(self.num_params, -1)
        for li in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[li]
            off = self._offsets[li]
            m = G.shape[1]
            if isinstance(layer, Dense):
                S_in, W, VT = caches[li]
                n_in, n_o = layer.n_in, layer.n_out
                a = S_in[:, 0, :]
                Gsel = G[:, first:, :].reshape(N, m_ret * n_o)
                outW = res[off:off + n_in * n_o].reshape(n_in, n_o, m_ret)
                if m_ret == 1:
                    np.matmul(a.T, Gsel, out=outW.reshape(n_in, n_o))
                else:
                    Gw = buf(f"Gw{li}", (n_in, m_ret * n_o))
                    np.matmul(a.T, Gsel, out=Gw)
                    outW[...] = Gw.reshape(n_in, m_ret, n_o).transpose(0, 2, 1)
                if rmode and S_in.shape[1] > 1:
                    Gr = buf(f"Gr{li}", (k * n_in, n_o))
                    np.matmul(S_in[:, 1:, :].reshape(N, k * n_in).T, G[:, 0, :], out=Gr)
                    # one strided add per direction: the 3-D transposed add read Gr 1 MB apart
                    for j, Grj in enumerate(Gr.reshape(k, n_in, n_o)):
                        outW[:, :, j] += Grj
                cs = np.empty((m_ret, n_o))
                kern.colsum(G, first, cs)
                res[off + n_in * n_o:off + n_in * n_o + n_o] = cs.T
                if li > 0:
                    DA = buf(f"DA{li}", (N * m, n_in))
                    np.matmul(G.reshape(N * m, n_o), W.T, out=DA)
                    DA = DA.reshape(N, m, n_in)
                    if rmode and k:
                        DV = buf(f"DV{li}", (N, k * n_in))
                        np.matmul(G[:, 0, :], VT, out=DV)
                        DA[:, 1:, :] += DV.reshape(N, k, n_in)
                    G = DA
            elif isinstance(layer, BatchNorm):
                XH, invstd, gamma, RXH, c, VG = caches[li]
                n = layer.n
                out = buf(f"G{li}", (N, m, n))
                dgamma = np.empty((m_ret, n))
                dbeta = np.empty((m_ret, n))
                kern.bn_backward(G, XH, invstd, gamma, RXH, c, VG, training, rmode, out,
                                 dgamma, dbeta)
                res[off:off + n] = dgamma.T
                res[off + n:off + 2 * n] = dbeta.T
                G = out
            else:
                D1, D2, Z = caches[li]
                out = buf(f"G{li}", (N, m, self.widths[li]))
                kern.act_backward(G, D1, D2, Z, rmode, out)
                G = out
        if k:
            return loss, None, result, batch_stats, None
        return loss, result, None, batch_stats, None

    # ------------------------------------------------------------------ public
    def forward(self, theta: np.ndarray, X: np.ndarray, *, update_running_stats: bool = False,
                backend: str = "auto") -> np.ndarray:
        """Network outputs (logits for the classification losses), shape ``(N, n_out)``.

        In training mode with ``update_running_stats=True`` the batch statistics are folded
        into the running statistics (after the pass succeeded).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 4), nn.BatchNorm(4), nn.Tanh(), nn.Dense(4, 3)])
        >>> net.forward(net.init(0), np.ones((5, 2)), backend="numpy").shape
        (5, 3)
        """
        training = self.training
        theta = self._check_theta(theta)
        check_finite(theta, "theta")
        X = self._check_X(X, training)
        _, _, _, bstats, out = self._run(theta, X, None, None, None, "forward", backend,
                                         training, self._state[1])
        if update_running_stats and training and self._bn_index:
            self._update_running(bstats, X.shape[0])
        return out

    def loss(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, *,
             backend: str = "auto") -> float:
        """Batch-averaged loss at ``theta``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 3)], loss="cross_entropy")
        >>> round(net.loss(np.zeros(9), np.ones((4, 2)), np.array([0, 1, 2, 0]),
        ...                backend="numpy"), 6)
        1.098612
        """
        theta, X, labels, Y, training, stats = self._prepare(theta, X, y)
        return self._run(theta, X, labels, Y, None, "loss", backend, training, stats)[0]

    def loss_and_grad(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, *,
                      backend: str = "auto", out: np.ndarray | None = None,
                      update_running_stats: bool = False) -> tuple[float, np.ndarray]:
        """Loss and its gradient with respect to ``theta`` (shape ``(num_params,)``).

        ``update_running_stats=True`` (training mode) also folds this batch's statistics into
        the running statistics, as one training step of PyTorch would.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(1, 1)], loss="mse")
        >>> loss, g = net.loss_and_grad(np.array([2.0, 0.0]), np.array([[1.0], [2.0]]),
        ...                             np.array([1.0, 2.0]), backend="numpy")
        >>> loss, g.tolist()
        (1.25, [2.5, 1.5])
        """
        theta, X, labels, Y, training, stats = self._prepare(theta, X, y)
        out = _check_out(out, (self.num_params,), self.dtype)
        loss, grad, _, bstats, _ = self._run(theta, X, labels, Y, None, "grad", backend,
                                             training, stats, out)
        if out is not None and grad is not out:
            out[...] = grad
            grad = out
        if update_running_stats and training and self._bn_index:
            self._update_running(bstats, X.shape[0])
        return loss, grad

    def _product(self, theta, X, y, v, mode, backend, out):
        theta, X, labels, Y, training, stats = self._prepare(theta, X, y)
        V, single = check_v(v, self.num_params, self.dtype)
        shape = (self.num_params,) if single else V.shape
        out = _check_out(out, shape, self.dtype)
        hv = self._run(theta, X, labels, Y, V, mode, backend, training, stats, out)[2]
        if out is not None:
            if hv is not out:
                out[...] = hv.reshape(out.shape)
            return out
        return hv[:, 0] if single else hv

    def hvp(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, v: np.ndarray, *,
            backend: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
        """Exact Hessian-vector product ``H v`` (R-operator; through the batch statistics in
        training mode).

        Parameters
        ----------
        theta, X, y : array_like
            Parameters ``(num_params,)``, inputs ``(N, n_in)`` and targets (as for the MLP).
        v : array_like
            One direction ``(num_params,)`` or k directions as columns ``(num_params, k)``,
            all in one pass.
        backend : {"auto", "cython", "numba", "numpy"}
            Element-wise kernels.
        out : ndarray, optional
            Destination of ``v``'s shape and the model dtype.

        Returns
        -------
        ndarray
            ``H v``, shape of ``v``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 1)], loss="mse")
        >>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> net.hvp(np.zeros(3), X, np.zeros(2), np.eye(3), backend="numpy")
        array([[0.5, 0. , 0.5],
               [0. , 2. , 1. ],
               [0.5, 1. , 1. ]])
        """
        return self._product(theta, X, y, v, "hvp", backend, out)

    def gnvp(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, v: np.ndarray, *,
             backend: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
        """Generalized Gauss-Newton-vector product ``J^T H_loss J v`` (positive semidefinite).

        ``J`` is the Jacobian of the outputs with respect to ``theta`` (through the batch
        statistics in training mode); same arguments as :meth:`hvp`.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import Network, nn
        >>> net = Network([nn.Dense(2, 1)], loss="mse")          # linear: G == H
        >>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> v = np.array([1.0, -1.0, 0.5])
        >>> bool(np.allclose(net.gnvp(np.zeros(3), X, np.zeros(2), v, backend="numpy"),
        ...                  net.hvp(np.zeros(3), X, np.zeros(2), v, backend="numpy")))
        True
        """
        return self._product(theta, X, y, v, "gnvp", backend, out)


class _PreparedNetwork(_Prepared):
    """A network and one batch validated once; the mode and running statistics are those at
    preparation (an operator built on it does not change when the network's state does)."""

    def __init__(self, net: Network, X, y, backend: str, copy: bool) -> None:
        self.model = net
        self.num_params = net.num_params
        self.dtype = net.dtype
        self.training = net.training
        self.stats = net._state[1]  # immutable snapshot: updates replace the tuple
        X = net._check_X(X, self.training)
        labels, Y = check_targets(y, X.shape[0], net.n_out, net.loss_name, net.dtype)
        if copy:
            X, labels, Y = X.copy(), labels.copy(), Y.copy()
        self.X, self.labels, self.Y, self.backend = X, labels, Y, backend
        _kernels(backend)  # an unknown backend fails here, not later

    def check_theta(self, theta):
        theta = self.model._check_theta(theta)
        check_finite(theta, "theta")
        return theta

    def run(self, theta, V, mode):
        if V is not None and V.shape[1] == 0:
            return None, None, np.empty((self.num_params, 0), self.dtype)
        loss, g, hv, _, _ = self.model._run(theta, self.X, self.labels, self.Y, V, mode,
                                            self.backend, self.training, self.stats)
        return loss, g, hv
