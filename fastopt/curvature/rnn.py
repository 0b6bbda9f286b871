"""The Elman RNN: loss, gradient by backpropagation through time, exact Hessian-vector and
Gauss-Newton-vector products by the R-operator through time.

``h_t = act(h_{t-1} W + x_t U + b)`` (``h_0 = 0``), ``f_t = h_t V + c``; the loss is on the last
output or averaged over every step. The HVP runs four passes over the T steps (forward, R-forward,
backward, R-backward), fused in pairs: one time loop forward (h and the k R-streams Rh) and one
backward (delta and the k R delta). Per step, two matrix products go through BLAS (numpy's
matmul) on ``(N, n)`` blocks and one fused element-wise kernel (``_rnn_cython.pyx`` /
``_rnn_numba.py`` / ``fastopt.reference.rnn``) does everything between them:

forward step s (h_s -> h_{s+1}), with ``[W | W'_1 .. W'_k]`` laid out side by side::

    ZZ  = h_s @ [W | W'_1 .. W'_k]          (N, 1 + k, n)
    RZW = [Rh_s,1 .. Rh_s,k] @ W             (N k, n)
    z = ZZ_0 + x U + b,  Rz_j = ZZ_j + RZW_j + x U'_j + b'_j,  h = act(z),  Rh_j = act'(z) Rz_j

backward step s, with ``[W^T | W'^T_1 .. W'^T_k]``::

    A = delta_{s+1} @ [W^T | W'^T_1 ..]      B = [R delta_{s+1,j}] @ W^T
    g = A_0 + (e V^T),   delta = g act'(z)
    Rg_j = A_j + B_j + (Re_j V^T + e V'^T_j),  R delta_j = Rg_j act'(z) + g act''(z) Rz_j

Everything that does not recur (``x [U | U']`` for all steps, the outputs and their loss terms,
the parameter products ``sum_t [h_{t-1} | x_t]^T R delta_t``, ``sum_t Rh_{t-1}^T delta_t``, ...)
runs as one large product over all T N rows. Hidden states and inputs are stored time-major and
side by side, ``HX[s] = [h_s | x_{s+1}]`` of shape ``(T + 1, N, n_hidden + n_in)``, so that
``[W; U]`` (contiguous in ``theta``) gets its gradient from one product ``HX^T @ delta``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType

import numpy as np

from .. import _dispatch
from .._codes import Activation, Loss, Mode
from .._validate import (
    as_float_array,
    as_generator,
    check_all_finite,
    check_choice,
    check_float_dtype,
    check_int,
    check_out,
)
from ._workspace import ThreadWorkspace
from .objective import check_class_labels, check_v

__all__ = ["ElmanRNN"]

ACTIVATIONS = Activation.names()
LOSSES = ("cross_entropy", "mse")
OUTPUTS = ("last", "all")
INIT_SCHEMES = ("orthogonal", "identity", "xavier", "normal")
REDUCTIONS = ("norm", "mean")
PARAM_NAMES = ("W", "U", "b", "V", "c")

_MODES = {m.name.lower(): int(m) for m in Mode}
_KERNELS = {
    "cython": "fastopt.curvature._rnn_cython",
    "numba": "fastopt.curvature._rnn_numba",
    "numpy": "fastopt.reference.rnn",
}
_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}


def _load(name: str) -> ModuleType:
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        raise RuntimeError(_failed[name])
    try:
        module = importlib.import_module(_KERNELS[name])
    except ImportError as exc:
        hint = ("the Cython extensions are not built: run "
                "`python setup.py build_ext --inplace` or reinstall" if name == "cython" else "")
        _failed[name] = f"backend {name!r} is not available for ElmanRNN: {exc}. {hint}".strip()
        raise RuntimeError(_failed[name]) from exc
    _loaded[name] = module
    return module


def _kernels(backend: str) -> ModuleType:
    """The time-step kernel module for ``backend`` ("auto": Cython, else Numba, else numpy)."""
    if backend not in _dispatch.BACKENDS:
        raise ValueError(
            f"backend: {backend!r} is not one of {', '.join(map(repr, _dispatch.BACKENDS))}")
    if backend == "cuda":
        raise ValueError("backend: 'cuda' is not implemented for ElmanRNN "
                         "(choose from 'auto', 'cython', 'numba', 'numpy')")
    if backend == "auto":
        for name in ("cython", "numba"):
            try:
                return _load(name)
            except RuntimeError:
                continue
        return _load("numpy")
    return _load(backend)


class ElmanRNN(ThreadWorkspace):
    """An Elman (vanilla) recurrent network whose parameters are one flat vector ``theta``.

    ``h_t = act(h_{t-1} W + x_t U + b)`` for ``t = 1..T`` with ``h_0 = 0``, outputs
    ``f_t = h_t V + c``. With ``output="last"`` the loss is that of ``f_T``, averaged over the
    batch; with ``output="all"`` it is averaged over the batch and the T steps (every step's output
    has a target). ``theta`` holds ``W (n_hidden, n_hidden)``, ``U (n_in, n_hidden)``,
    ``b (n_hidden,)``, ``V (n_hidden, n_out)``, ``c (n_out,)`` in that order, each row-major
    (so ``[W; U]`` is one contiguous ``(n_hidden + n_in, n_hidden)`` block).

    Parameters
    ----------
    n_in, n_hidden, n_out : int
        Input, hidden-state and output widths (>= 1).
    activation : {"identity", "tanh", "sigmoid", "relu", "softplus", "gelu"}
        Activation of the hidden state (as :class:`fastopt.MLP`'s; ReLU's second derivative is
        taken as 0).
    loss : {"cross_entropy", "mse"}
        ``"cross_entropy"``: softmax cross-entropy with integer labels in ``[0, n_out)`` (needs
        ``n_out >= 2``); ``"mse"``: ``0.5 * ||f - y||^2`` per output.
    output : {"last", "all"}
        Loss on the last step's output only, or averaged over every step's.
    dtype : {np.float64, np.float32}
        Dtype of ``theta``, ``X``, ``v`` and of the computation (losses and bias sums accumulate
        in float64). Inputs of the other float dtype raise ``ValueError``.

    Notes
    -----
    Inputs ``X`` have shape ``(N, T, n_in)`` (batch first, as ``torch.nn.RNN(batch_first=True)``).
    Targets ``y``: cross-entropy, ``(N,)`` integer labels (``output="last"``) or ``(N, T)``
    (``"all"``); mse, ``(N, n_out)`` or ``(N, T, n_out)`` (``(N,)`` / ``(N, T)`` when
    ``n_out == 1``).

    All methods validate their input and never modify it; ``backend=`` (``"auto"``,
    ``"cython"``, ``"numba"``, ``"numpy"``) selects the element-wise time-step kernels, the
    matrix products always run through numpy's BLAS. Each thread keeps its scratch buffers
    between calls (about ``T N (n_hidden (5 + 4k) + n_in)`` values for k directions);
    :meth:`clear_workspace` frees them. The step kernels run on one thread (a step has
    ``N (1 + k) n_hidden`` values, far below where threading pays off next to BLAS).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import ElmanRNN
    >>> rnn = ElmanRNN(3, 5, 2)
    >>> rnn.num_params     # W 25 + U 15 + b 5 + V 10 + c 2
    57
    >>> theta = rnn.init(np.random.default_rng(0))
    >>> X = np.random.default_rng(1).standard_normal((4, 6, 3))      # N=4 sequences, T=6 steps
    >>> y = np.array([0, 1, 1, 0])
    >>> loss, g = rnn.loss_and_grad(theta, X, y)
    >>> hg = rnn.hvp(theta, X, y, g)                                 # H g, exact
    >>> u = np.random.default_rng(2).standard_normal(rnn.num_params)
    >>> bool(np.isclose(u @ hg, g @ rnn.hvp(theta, X, y, u)))        # H is symmetric
    True
    >>> rnn.grad_norms_through_time(theta, X, y).shape               # ||dL/dh_t||, t = 1..T
    (6,)
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_out: int,
        *,
        activation: str = "tanh",
        loss: str = "cross_entropy",
        output: str = "last",
        dtype: type | np.dtype = np.float64,
    ) -> None:
        self.n_in = check_int(n_in, "n_in")
        self.n_hidden = check_int(n_hidden, "n_hidden")
        self.n_out = check_int(n_out, "n_out")
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        self.loss_name = check_choice(loss, "loss", LOSSES)
        self.output = check_choice(output, "output", OUTPUTS)
        self.dtype = check_float_dtype(dtype)
        if self.loss_name == "cross_entropy" and self.n_out < 2:
            raise ValueError(
                f"n_out: 'cross_entropy' needs at least 2 outputs (classes), got {self.n_out}")
        self._act_code = int(Activation[self.activation.upper()])
        self._loss_code = int(Loss[self.loss_name.upper()])
        n, m, o = self.n_hidden, self.n_in, self.n_out
        sizes = {"W": n * n, "U": m * n, "b": n, "V": n * o, "c": o}
        self._slices = {}
        off = 0
        for name in PARAM_NAMES:
            self._slices[name] = slice(off, off + sizes[name])
            off += sizes[name]
        self.num_params = off
        self._shapes = {"W": (n, n), "U": (m, n), "b": (n,), "V": (n, o), "c": (o,)}
        self._tls = threading.local()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_tls"]  # scratch buffers are per thread and not part of the model
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._tls = threading.local()

    def __repr__(self) -> str:
        return (f"ElmanRNN({self.n_in}, {self.n_hidden}, {self.n_out}, "
                f"activation={self.activation!r}, loss={self.loss_name!r}, "
                f"output={self.output!r}, dtype=np.{self.dtype.name})")

    # ------------------------------------------------------------------ parameters
    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Views ``{"W", "U", "b", "V", "c"}`` into ``theta`` (writing to them writes to ``theta``).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN
        >>> rnn = ElmanRNN(2, 3, 4, loss="mse")
        >>> {k: a.shape for k, a in rnn.unpack(np.zeros(rnn.num_params)).items()}
        {'W': (3, 3), 'U': (2, 3), 'b': (3,), 'V': (3, 4), 'c': (4,)}
        """
        theta = self._check_theta(theta, contiguous=False)
        if not theta.flags.c_contiguous:
            raise ValueError("theta: must be contiguous to be unpacked into views")
        return self._views(theta)

    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[self._slices[name]].reshape(self._shapes[name]) for name in PARAM_NAMES}

    def pack(self, params: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> np.ndarray:
        """Flat ``theta`` (a new array of the model's dtype) from ``W, U, b, V, c``.

        ``params``: a mapping with those keys (as :meth:`unpack` returns) or a sequence of the
        five arrays in that order.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN
        >>> rnn = ElmanRNN(2, 3, 1, loss="mse")
        >>> theta = np.arange(rnn.num_params, dtype=float)
        >>> bool(np.array_equal(rnn.pack(rnn.unpack(theta)), theta))
        True
        """
        if isinstance(params, Mapping):
            missing = [k for k in PARAM_NAMES if k not in params]
            extra = [k for k in params if k not in PARAM_NAMES]
            if missing or extra:
                raise ValueError(f"params: expected the keys {PARAM_NAMES}, missing {missing}, "
                                 f"unexpected {extra}")
            arrays = [params[k] for k in PARAM_NAMES]
        else:
            if isinstance(params, (str, bytes)) or len(params) != len(PARAM_NAMES):
                raise ValueError(f"params: expected a mapping or 5 arrays {PARAM_NAMES}")
            arrays = list(params)
        theta = np.empty(self.num_params, dtype=self.dtype)
        for name, a in zip(PARAM_NAMES, arrays, strict=True):
            a = as_float_array(a, f"params[{name!r}]", allow_int=True)
            if a.shape != self._shapes[name]:
                raise ValueError(
                    f"params[{name!r}]: expected shape {self._shapes[name]}, got {a.shape}")
            check_all_finite(a, f"params[{name!r}]")
            theta[self._slices[name]] = a.ravel()
        return theta

    def init(self, rng: np.random.Generator | int | None = None, scheme: str = "orthogonal",
             *, spectral_radius: float | None = None, W: np.ndarray | None = None
             ) -> np.ndarray:
        """Random parameters: the recurrent ``W`` by ``scheme``, ``U`` and ``V`` Xavier-uniform
        (``±sqrt(6 / (fan_in + fan_out))``), biases zero.

        Parameters
        ----------
        rng : int or numpy.random.Generator, optional
            Seed or generator (``W`` is drawn first, then ``U``, then ``V``).
        scheme : {"orthogonal", "identity", "xavier", "normal"}
            ``"orthogonal"``: :func:`fastopt.init.orthogonal` (every ``|lambda| = 1``);
            ``"identity"``: ``I`` (IRNN, :func:`fastopt.init.identity_recurrent`); ``"xavier"``:
            uniform on ``±sqrt(3 / n_hidden)``; ``"normal"``: ``N(0, 1 / n_hidden)`` entries
            (spectral radius near 1 for large ``n_hidden``).
        spectral_radius : float, optional
            Rescale ``W`` to this spectral radius (:func:`fastopt.init.scale_to_spectral_radius`).
        W : array_like, optional
            Use this ``(n_hidden, n_hidden)`` recurrent matrix instead of drawing one (e.g. from
            :mod:`fastopt.init`); ``spectral_radius`` still applies.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN, spectral_radius
        >>> rnn = ElmanRNN(2, 16, 3)
        >>> theta = rnn.init(0, scheme="normal", spectral_radius=0.9)
        >>> round(spectral_radius(rnn.unpack(theta)["W"]).value, 6)
        0.9
        >>> Wr = rnn.unpack(rnn.init(0, scheme="orthogonal"))["W"]
        >>> bool(np.allclose(Wr @ Wr.T, np.eye(16)))
        True
        """
        from .. import init as fo_init

        scheme = check_choice(scheme, "scheme", INIT_SCHEMES)
        rng = as_generator(rng, "rng")
        n, m, o = self.n_hidden, self.n_in, self.n_out
        if W is not None:
            Wr = as_float_array(W, "W", allow_int=True).astype(np.float64)
            if Wr.shape != (n, n):
                raise ValueError(f"W: expected shape {(n, n)}, got {Wr.shape}")
            check_all_finite(Wr, "W")
        elif scheme == "orthogonal":
            Wr = fo_init.orthogonal((n, n), rng=rng)
        elif scheme == "identity":
            Wr = fo_init.identity_recurrent(n)
        elif scheme == "xavier":
            lim = np.sqrt(3.0 / n)
            Wr = rng.uniform(-lim, lim, size=(n, n))
        else:
            Wr = rng.standard_normal((n, n)) / np.sqrt(n)
        if spectral_radius is not None:
            Wr = fo_init.scale_to_spectral_radius(Wr, spectral_radius)
        lim_u = np.sqrt(6.0 / (m + n))
        lim_v = np.sqrt(6.0 / (n + o))
        U = rng.uniform(-lim_u, lim_u, size=(m, n))
        V = rng.uniform(-lim_v, lim_v, size=(n, o))
        return self.pack({"W": Wr, "U": U, "b": np.zeros(n), "V": V, "c": np.zeros(o)})

    # ------------------------------------------------------------------ validation
    def _check_theta(self, theta: object, *, contiguous: bool = True) -> np.ndarray:
        theta = as_float_array(theta, "theta", dtype=self.dtype, contiguous=contiguous)
        if theta.shape != (self.num_params,):
            raise ValueError(
                f"theta: expected shape ({self.num_params},) for {self!r}, got {theta.shape}")
        return theta

    def _check_X(self, X: object) -> np.ndarray:
        X = as_float_array(X, "X", dtype=self.dtype)
        if X.ndim != 3:
            raise ValueError(
                f"X: expected a 3-D array (N, T, {self.n_in}) of N sequences of T steps, "
                f"got shape {X.shape}")
        if X.shape[2] != self.n_in:
            raise ValueError(f"X: expected {self.n_in} features per step (n_in), "
                             f"got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X: empty batch (0 sequences); the loss is an average over them")
        if X.shape[1] == 0:
            raise ValueError("X: sequences of length 0 (T = 0); an RNN needs at least one step")
        check_all_finite(X, "X")
        return X

    def _check_y(self, y: object, N: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64 (M,), targets (M, n_out)) with the M output rows in the kernels' order:
        the N samples for ``output="last"``, time-major (step, then sample) for ``"all"``."""
        y = np.asarray(y)
        o = self.n_out
        rows = (N,) if self.output == "last" else (N, T)
        what = "one per sequence" if self.output == "last" else "one per sequence and step"
        empty_l = np.empty(0, dtype=np.int64)
        empty_y = np.empty((0, 0), dtype=self.dtype)
        if self.loss_name == "cross_entropy":
            check_class_labels(y, o)
            if y.shape != rows:
                raise ValueError(f"y: expected shape {rows} (labels {what}, output="
                                 f"{self.output!r}), got {y.shape}")
            labels = np.ascontiguousarray(y if self.output == "last" else y.T, dtype=np.int64)
            if not labels.flags.writeable:  # the Numba kernels would compile again for it
                labels = labels.copy()
            return labels.reshape(-1), empty_y
        if y.dtype.kind in "biu":
            y = y.astype(self.dtype)
        y = as_float_array(y, "y", dtype=self.dtype, contiguous=False)
        if o == 1 and y.shape == rows:
            y = y.reshape(*rows, 1)
        if y.shape != (*rows, o):
            raise ValueError(f"y: expected shape {(*rows, o)} for mse with output="
                             f"{self.output!r}, got {y.shape}")
        check_all_finite(y, "y")
        Y = np.ascontiguousarray(y if self.output == "last" else y.transpose(1, 0, 2))
        if not Y.flags.writeable:
            Y = Y.copy()
        return empty_l, Y.reshape(-1, o)

    def _prepare(self, theta, X, y):
        """Validated ``(theta, X, labels, Y)`` for :meth:`_run` (the diagnostics call it once and
        ``_run`` many times, as with :class:`fastopt.MLP`)."""
        theta = self._check_theta(theta)
        check_all_finite(theta, "theta")
        X = self._check_X(X)
        labels, Y = self._check_y(y, X.shape[0], X.shape[1])
        return theta, X, labels, Y

    # ------------------------------------------------------------------ core
    def _run(self, theta, X, labels, Y, V, mode, backend, dest=None, grad_h=None):
        """Forward (+ backward (+ R passes)) through time. ``mode``: "loss", "grad", "hvp",
        "gnvp"; ``V`` (P, k) for the products. Returns ``(loss, grad or None, products or
        None)``. ``dest``: a validated ``out=``, written in place when it shares no memory with
        the inputs. ``grad_h``: an optional ``(T, N, n_hidden)`` array that receives
        ``dL/dh_t`` (mode "grad")."""
        mod = _kernels(backend)
        code = _MODES[mode]
        dt = self.dtype
        ws = self._workspace()

        def buf(key: str, shape: tuple[int, ...], dtype: np.dtype = dt) -> np.ndarray:
            # reused across calls: fresh arrays are fresh pages, and first-touch page faults
            # cost more than the step kernels
            a = ws.get(key)
            if a is None or a.shape != shape or a.dtype != dtype:
                a = ws[key] = np.empty(shape, dtype)
            return a

        N, T, m = X.shape
        n, o = self.n_hidden, self.n_out
        k = V.shape[1] if code in (Mode.HVP, Mode.GNVP) else 0
        kk = 1 + k
        TN = T * N
        last = self.output == "last"
        M = N if last else TN
        p = self._views(theta)
        W, U, b, Vo, c = (p[name] for name in PARAM_NAMES)
        e2, e3 = np.empty((0, 0), dt), np.empty((0, 0, 0), dt)
        f64 = np.dtype(np.float64)

        # directions, laid out beside the weights they perturb: [W | W'_1 .. W'_k] etc.
        if k:
            q = {name: V[self._slices[name]].reshape(*self._shapes[name], k)
                 for name in PARAM_NAMES}
            WWc = buf("WWc", (n, kk, n))
            WWc[:, 0, :] = W
            np.copyto(WWc[:, 1:, :], q["W"].transpose(0, 2, 1))
            UUc = buf("UUc", (m, kk, n))
            UUc[:, 0, :] = U
            np.copyto(UUc[:, 1:, :], q["U"].transpose(0, 2, 1))
            VVc = buf("VVc", (n, kk, o))
            VVc[:, 0, :] = Vo
            np.copyto(VVc[:, 1:, :], q["V"].transpose(0, 2, 1))
            Cb = buf("Cb", (k, n))
            np.copyto(Cb, q["b"].T)
            Cc = buf("Cc", (k, o))
            np.copyto(Cc, q["c"].T)
            WWc2, UUc2, VVc2 = (a.reshape(a.shape[0], -1) for a in (WWc, UUc, VVc))
        else:
            WWc2, UUc2, VVc2 = W, U, Vo
            Cb, Cc = e2, e2

        # ---- inputs, time-major, beside the hidden states: HX[s] = [h_s | x_{s+1}]
        HX = buf("HX", (T + 1, N, n + m))
        HX[0, :, :n] = 0
        HX[T, :, n:] = 0
        np.copyto(HX[:T, :, n:], X.transpose(1, 0, 2))
        XUU = buf("XUU", (T, N, kk, n))
        np.matmul(HX[:T, :, n:].reshape(TN, m), UUc2, out=XUU.reshape(TN, kk * n))

        # ---- forward and R-forward, one time loop
        D1 = buf("D1", (T, N, n)) if code != Mode.LOSS else None
        D2 = buf("D2", (T, N, n)) if code == Mode.HVP else None
        RZ = buf("RZ", (T, N, k, n)) if code == Mode.HVP else None
        RH = buf("RH", (T, N, k, n)) if k else None
        ZZ = buf("ZZ", (N, kk, n))
        ZZ2 = ZZ.reshape(N, kk * n)
        RZW = buf("RZW", (N, k, n)) if k else e3
        RZW2 = RZW.reshape(N * k, n) if k else None
        act = self._act_code
        fstep = mod.forward_step
        for s in range(T):
            if s:
                np.matmul(HX[s, :, :n], WWc2, out=ZZ2)
                if k:
                    np.matmul(RH[s - 1].reshape(N * k, n), W, out=RZW2)
            fstep(ZZ, RZW, XUU[s], b, Cb, act, code, s > 0, HX[s + 1, :, :n],
                  D1[s] if D1 is not None else e2, D2[s] if D2 is not None else e2,
                  RZ[s] if RZ is not None else e3, RH[s] if RH is not None else e3)

        # ---- outputs: every step's in one product (output="all") or the last one's
        Hrows = HX[T, :, :n] if last else HX[1:, :, :n].reshape(TN, n)
        FF = buf("FF", (M, kk, o))
        np.matmul(Hrows, VVc2, out=FF.reshape(M, kk * o))
        if k:
            RHrows = RH[T - 1] if last else RH.reshape(TN, k, n)
            RFV = buf("RFV", (M, k, o))
            np.matmul(RHrows.reshape(M * k, n), Vo, out=RFV.reshape(M * k, o))
        else:
            RFV = e3
        E = buf("E", (M, o)) if code != Mode.LOSS else e2
        RE = buf("RE", (M, k, o)) if k else e3
        losses = buf("losses", (M,), f64)
        Sc = buf("Sc", (kk, o), f64)
        mod.output(FF, RFV, c, Cc, self._loss_code, code, labels, Y, E, RE, losses, Sc, 1.0 / M)
        loss = float(losses.sum() / M)
        if code == Mode.LOSS:
            return loss, None, None

        # ---- backward and R-backward through time, one time loop
        hvp = code == Mode.HVP
        if code in (Mode.GRAD, Mode.HVP):  # output backward: e [V^T | V'^T_1 ..] (gradient: e V^T)
            if hvp:
                VTc = buf("VTc", (o, kk, n))
                VTc[:, 0, :] = Vo.T
                np.copyto(VTc[:, 1:, :], q["V"].transpose(1, 2, 0))
                VTc2 = VTc.reshape(o, kk * n)
                WTc = buf("WTc", (n, kk, n))
                WTc[:, 0, :] = W.T
                np.copyto(WTc[:, 1:, :], q["W"].transpose(1, 2, 0))
                WTc2 = WTc.reshape(n, kk * n)
            else:
                VTc2, WTc2 = Vo.T, W.T
            EA = buf("EA", (M, kk, n))
            np.matmul(E, VTc2, out=EA.reshape(M, kk * n))
            A = buf("A", (N, kk, n))
            A2 = A.reshape(N, kk * n)
            Dl = buf("Delta", (T, N, n))
        else:
            EA = A = e3
            Dl = None
        if k:
            EB = buf("EB", (M, k, n))
            np.matmul(RE.reshape(M * k, o), Vo.T, out=EB.reshape(M * k, n))
            B = buf("B", (N, k, n))
            B2 = B.reshape(N * k, n)
            RDl = buf("RDelta", (T, N, k, n))
        else:
            EB = B = e3
            RDl = None
        S = buf("S", (max(k, 1), n), f64)
        S[...] = 0
        G = grad_h
        bstep = mod.backward_step
        for s in range(T - 1, -1, -1):
            rec = s < T - 1
            has_out = not last or s == T - 1
            if rec:
                if Dl is not None:
                    np.matmul(Dl[s + 1], WTc2, out=A2)
                if k:
                    np.matmul(RDl[s + 1].reshape(N * k, n), W.T, out=B2)
            if has_out and not last:
                ea = EA[s * N:(s + 1) * N] if EA.size else e3
                eb = EB[s * N:(s + 1) * N] if k else e3
            else:
                ea, eb = EA, EB
            bstep(A, B, ea, eb, D1[s], D2[s] if D2 is not None else e2,
                  RZ[s] if RZ is not None else e3, code, rec, has_out,
                  Dl[s] if Dl is not None else e2, RDl[s] if RDl is not None else e3,
                  G[s] if G is not None else e2, S)

        # ---- parameter products over all T N rows
        if dest is not None and any(np.may_share_memory(dest, a) for a in (theta, X, V, Y)):
            dest = None
        P = self.num_params
        sl = self._slices
        nWU = (n + m) * n
        HXrows = HX[:T].reshape(TN, n + m)
        if code == Mode.GRAD:
            result = np.empty(P, dt) if dest is None else dest
            np.matmul(HXrows.T, Dl.reshape(TN, n), out=result[:nWU].reshape(n + m, n))
            result[sl["b"]] = S[0]
            np.matmul(Hrows.T, E, out=result[sl["V"]].reshape(n, o))
            result[sl["c"]] = Sc[0]
            return loss, result, None

        result = np.empty((P, k), dt) if dest is None else dest.reshape(P, k)
        GWU = buf("GWU", (n + m, k, n))
        np.matmul(HXrows.T, RDl.reshape(TN, k * n), out=GWU.reshape(n + m, k * n))
        GV = buf("GV", (n, k, o))
        np.matmul(Hrows.T, RE.reshape(M, k * o), out=GV.reshape(n, k * o))
        outWU = result[:nWU].reshape(n + m, n, k)
        outV = result[sl["V"]].reshape(n, o, k)
        if k == 1:
            outWU[:, :, 0] = GWU[:, 0, :]
            outV[:, :, 0] = GV[:, 0, :]
        else:
            np.copyto(outWU, GWU.transpose(0, 2, 1))
            np.copyto(outV, GV.transpose(0, 2, 1))
        if hvp:
            # the second-order terms of the weights: sum_t Rh_{t-1}^T delta_t, sum Rh_t^T e_t
            if T > 1:
                GR = buf("GR", (k, n, n))
                np.matmul(RH[:T - 1].reshape((T - 1) * N, k * n).T, Dl[1:].reshape((T - 1) * N, n),
                          out=GR.reshape(k * n, n))
                outWU[:n] += GR.transpose(1, 2, 0)
            GRV = buf("GRV", (k, n, o))
            np.matmul(RHrows.reshape(M, k * n).T, E, out=GRV.reshape(k * n, o))
            outV += GRV.transpose(1, 2, 0)
        result[sl["b"]] = S.T
        result[sl["c"]] = Sc[1:].T
        return loss, None, result

    # ------------------------------------------------------------------ public
    def forward(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Outputs ``f_t = h_t V + c`` (logits for cross-entropy): ``(N, n_out)`` for
        ``output="last"`` (``f_T``), ``(N, T, n_out)`` for ``"all"``. Plain numpy, in the
        model's dtype.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN
        >>> rnn = ElmanRNN(2, 4, 3, output="all")
        >>> rnn.forward(rnn.init(0), np.ones((5, 7, 2))).shape
        (5, 7, 3)
        """
        from ..reference.curvature import activation

        theta = self._check_theta(theta)
        check_all_finite(theta, "theta")
        X = self._check_X(X)
        p = self._views(theta)
        N, T, _ = X.shape
        h = np.zeros((N, self.n_hidden), self.dtype)
        outs = []
        for t in range(T):
            h = activation(self._act_code, h @ p["W"] + X[:, t, :] @ p["U"] + p["b"])[0]
            if self.output == "all" or t == T - 1:
                outs.append(h @ p["V"] + p["c"])
        return outs[0] if self.output == "last" else np.stack(outs, axis=1)

    def loss(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, *,
             backend: str = "auto") -> float:
        """Loss at ``theta``: the mean over the batch (and over the steps for ``output="all"``).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN
        >>> rnn = ElmanRNN(2, 3, 4)
        >>> round(rnn.loss(np.zeros(rnn.num_params), np.ones((2, 5, 2)), np.array([0, 3])), 6)
        1.386294
        """
        theta, X, labels, Y = self._prepare(theta, X, y)
        return self._run(theta, X, labels, Y, None, "loss", backend)[0]

    def loss_and_grad(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, *,
                      backend: str = "auto", out: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
        """Loss and its gradient (backpropagation through time), shape ``(num_params,)``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN
        >>> rnn = ElmanRNN(1, 1, 1, activation="identity", loss="mse")
        >>> theta = rnn.pack({"W": [[0.5]], "U": [[1.0]], "b": [0.0], "V": [[1.0]], "c": [0.0]})
        >>> loss, g = rnn.loss_and_grad(theta, np.ones((1, 2, 1)), np.zeros(1))
        >>> loss, g.tolist()     # h_2 = 0.5 + 1 = 1.5, loss 0.5 * 1.5^2
        (1.125, [1.5, 2.25, 2.25, 2.25, 1.5])
        """
        theta, X, labels, Y = self._prepare(theta, X, y)
        out = check_out(out, (self.num_params,), self.dtype)
        loss, grad, _ = self._run(theta, X, labels, Y, None, "grad", backend, out)
        if out is not None and grad is not out:  # out shared memory with an input
            out[...] = grad
            grad = out
        return loss, grad

    def _product(self, theta, X, y, v, mode, backend, out):
        theta, X, labels, Y = self._prepare(theta, X, y)
        V, single = check_v(v, self.num_params, self.dtype)
        shape = (self.num_params,) if single else V.shape
        out = check_out(out, shape, self.dtype)
        _, _, hv = self._run(theta, X, labels, Y, V, mode, backend, out)
        if out is not None:
            if not np.may_share_memory(hv, out):  # out shared memory with an input
                out[...] = hv.reshape(out.shape)
            return out
        return hv[:, 0] if single else hv

    def hvp(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, v: np.ndarray, *,
            backend: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
        """Exact Hessian-vector product ``H v`` of the loss (R-operator through time).

        Parameters
        ----------
        theta, X, y : array_like
            Parameters ``(num_params,)``, inputs ``(N, T, n_in)`` and targets (see the class).
        v : array_like
            One direction ``(num_params,)`` or k directions as columns ``(num_params, k)``; the
            k products share the forward and backward passes.
        backend : {"auto", "cython", "numba", "numpy"}
            Element-wise kernels to use.
        out : ndarray, optional
            Array of ``v``'s shape and the model dtype to write the result to.

        Returns
        -------
        ndarray
            ``H v``, same shape as ``v``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN
        >>> rnn = ElmanRNN(1, 1, 1, activation="identity", loss="mse")
        >>> theta = rnn.pack({"W": [[0.0]], "U": [[1.0]], "b": [0.0], "V": [[1.0]], "c": [0.0]})
        >>> H = rnn.hvp(theta, np.ones((1, 1, 1)), np.zeros(1), np.eye(5))   # one step
        >>> H[1:, 1:]      # d^2/d(U, b, V, c) of 0.5 (V (U + b) + c)^2 at U=V=1, b=c=0
        array([[1., 1., 2., 1.],
               [1., 1., 2., 1.],
               [2., 2., 1., 1.],
               [1., 1., 1., 1.]])
        """
        return self._product(theta, X, y, v, "hvp", backend, out)

    def gnvp(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, v: np.ndarray, *,
             backend: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
        """Gauss-Newton-vector product ``J^T H_loss J v`` (positive semidefinite curvature).

        Same arguments as :meth:`hvp`. ``J`` is the Jacobian of the outputs (every step's for
        ``output="all"``) with respect to ``theta``, ``H_loss`` the Hessian of the loss with
        respect to them.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN
        >>> rnn = ElmanRNN(2, 3, 2, loss="mse")
        >>> theta = rnn.init(0)
        >>> X, y = np.ones((4, 3, 2)), np.zeros((4, 2))
        >>> G = rnn.gnvp(theta, X, y, np.eye(rnn.num_params))
        >>> bool(np.linalg.eigvalsh(G).min() > -1e-12)    # PSD
        True
        """
        return self._product(theta, X, y, v, "gnvp", backend, out)

    def grad_norms_through_time(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, *,
                                reduction: str = "norm", backend: str = "auto") -> np.ndarray:
        """``||dL/dh_t||`` for ``t = 1..T``: the vanishing or exploding gradient seen directly.

        ``dL/dh_t`` is the total derivative of the loss with respect to the hidden state after
        step t (through this step's output, for ``output="all"``, and every later step), as
        backpropagation through time computes it.

        Parameters
        ----------
        theta, X, y : array_like
            As for :meth:`loss`.
        reduction : {"norm", "mean"}
            ``"norm"``: the Frobenius norm of the stacked ``(N, n_hidden)`` gradient of the batch
            loss ``L``; ``"mean"``: the mean over the N sequences of
            ``||d loss_i / d h_t,i||``, ``loss_i`` being sequence i's own loss (``L`` is their
            mean, so this is ``N`` times the mean row norm of the first).
        backend : {"auto", "cython", "numba", "numpy"}

        Returns
        -------
        ndarray, shape (T,)
            float64; entry ``t - 1`` belongs to ``h_t``. With ``output="last"`` and a linear
            activation, ``dL/dh_{t-1} = dL/dh_t W^T``: the ratio of consecutive entries tends to
            the spectral radius of W (:func:`fastopt.gradient_flow`'s ``rate``).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import ElmanRNN, init
        >>> rnn = ElmanRNN(2, 8, 2, activation="identity")
        >>> theta = rnn.init(0, W=0.5 * init.orthogonal((8, 8), rng=0))
        >>> X, y = np.ones((3, 4, 2)), np.array([0, 1, 1])
        >>> g = rnn.grad_norms_through_time(theta, X, y)
        >>> np.round(g / g[-1], 6)            # W = 0.5 Q: exactly 0.5 per step back
        array([0.125, 0.25 , 0.5  , 1.   ])
        """
        reduction = check_choice(reduction, "reduction", REDUCTIONS)
        theta, X, labels, Y = self._prepare(theta, X, y)
        N, T, _ = X.shape
        G = np.empty((T, N, self.n_hidden), self.dtype)
        self._run(theta, X, labels, Y, None, "grad", backend, grad_h=G)
        sq = np.einsum("tio,tio->ti", G, G, dtype=np.float64)
        if reduction == "norm":
            return np.sqrt(sq.sum(axis=1))
        return N * np.sqrt(sq).mean(axis=1)
