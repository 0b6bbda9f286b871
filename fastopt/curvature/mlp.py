"""The MLP model: loss, gradient, exact Hessian-vector and Gauss-Newton-vector products.

The Hessian-vector product is Pearlmutter's R-operator: one forward pass, one R-forward pass, one
backward pass and one R-backward pass, all k directions at once. Matrix products go through BLAS
(numpy's matmul); everything between them is one fused element-wise kernel per layer and pass
(``_cython.pyx`` / ``_numba.py`` / ``fastopt.reference.curvature``).

Streams are stored interleaved as ``(N, 1 + k, n)`` arrays (slot 0: forward value, slot 1 + j:
R-stream of direction j), so that ``[a; Ra_1; ...; Ra_k] @ W`` and
``[delta; R delta_1; ...] @ W.T`` each run as one GEMM on an ``(N (1 + k), n)`` matrix, and
``a.T @ [delta | R delta_1 | ...]`` as one GEMM on an ``(N, (1 + k) n)`` matrix. Per hidden layer
the HVP runs six GEMMs whatever k is.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from .. import _dispatch
from .._codes import Activation, Loss
from .._threads import get_num_threads, threads_for_call
from .._validate import (
    as_float_array,
    as_generator,
    as_model_array,
    check_all_finite,
    check_choice,
    check_float_dtype,
    check_int,
    check_out,
    reject_unsupported_subclass,
)
from ._workspace import ThreadWorkspace
from .objective import check_targets, dense_init

__all__ = ["MLP", "ACTIVATIONS", "LOSSES"]

# names in code order, from the one table of codes (fastopt._codes)
ACTIVATIONS = Activation.names()
LOSSES = Loss.names()
INIT_SCHEMES = ("xavier", "he", "orthogonal")

# The kernel interface every curvature backend module (``_cython``, ``_numba``, the numpy
# reference) implements with the same signature, writing into caller-provided outputs; _run
# calls only these (tests/test_curvature_mlp.py checks the signatures match).
KERNELS = ("hidden_forward", "output_forward", "hidden_backward", "colsum", "batched_transpose",
           "_formula_activation", "_formula_logistic")


# Element-wise passes with fewer values than this run on one thread. BLAS already uses every
# core for the matrix products in between, and a thread team left spinning after a parallel
# region (OpenMP for Cython, Numba's pool) steals the cores the next BLAS call needs: measured on
# the 2-core machine, threading the passes made the HVP of MLP [64, 128, 128, 10] with k = 8 go
# from 10 ms to 116 ms (median), and of MLP [784, 1024, 1024, 1024, 10] from 230 to 361 ms. Single-
# threaded passes cost about 1 ns per value, a few percent of the products' time; only passes
# big enough to amortize a contended hand-over (2^24 values, ~16 ms) are threaded.
PARALLEL_MIN_VALUES = 1 << 24

# Results reach a caller's out= in one copy under this lock, so a call fills out= whole or not
# at all: an interrupt (KeyboardInterrupt) or a concurrent call cannot leave it half-written.
_OUT_LOCK = threading.Lock()


@functools.cache
def _blas_controller():
    """threadpoolctl's controller of the loaded BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


_blas_lock = threading.Lock()
_blas_state: dict = {"calls": 0, "limiter": None}


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    """Run the block with BLAS on at most ``n`` threads (then restore its count).

    The products of a call follow fastopt's thread count for the call (``threads_for_call``):
    under load it drops to the CPUs other processes leave free, where an OpenBLAS team waiting
    at its barriers for descheduled threads makes each product many times slower. BLAS's count
    is process-wide: the first of concurrent calls sets it, the last one out restores it.
    """
    ctl = _blas_controller()
    if ctl is None:
        yield
        return
    with _blas_lock:
        if _blas_state["calls"] == 0 and any(lib.num_threads > n for lib in ctl.lib_controllers):
            _blas_state["limiter"] = ctl.limit(limits=n)
        _blas_state["calls"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["calls"] -= 1
            if _blas_state["calls"] == 0 and _blas_state["limiter"] is not None:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


class MLP(ThreadWorkspace):
    """A multilayer perceptron whose parameters are one flat vector ``theta``.

    Layer ``l`` computes ``act(a @ W_l + b_l)`` (the last layer has no activation); the loss is
    averaged over the batch. ``theta`` holds, for each layer in order, ``W`` of shape
    ``(n_in, n_out)`` row-major, then ``b`` of shape ``(n_out,)``.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``[n_input, hidden..., n_output]`` (at least two entries, all >= 1).
    activation : {"identity", "tanh", "sigmoid", "relu", "softplus", "gelu"}
        Hidden-layer activation; ``"gelu"`` is the tanh form
        ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))``. ReLU's second derivative is taken
        as 0 everywhere (as autodiff frameworks do).
    loss : {"cross_entropy", "mse", "logistic"}
        ``"cross_entropy"``: softmax cross-entropy with integer labels in ``[0, n_output)``
        (needs ``n_output >= 2``); ``"mse"``: ``0.5 * ||f(x) - y||^2`` per sample, ``y`` of shape
        ``(N, n_output)`` (or ``(N,)`` when ``n_output == 1``); ``"logistic"``: binary
        cross-entropy on one output logit, ``y`` of shape ``(N,)`` or ``(N, 1)`` with values in
        ``[0, 1]`` (0/1 labels; soft labels are accepted).
    dtype : {np.float64, np.float32}
        Dtype of ``theta``, ``X``, ``v`` and of the computation (losses and bias-gradient sums
        accumulate in float64). Inputs of the other float dtype raise ``ValueError``.

    Notes
    -----
    Each thread that calls the model keeps scratch buffers between calls (the activations and
    R-streams of every layer, about ``(1 + k) * N * sum(sizes[1:])`` values for k directions)
    so that repeated calls do not page-fault fresh memory; :meth:`clear_workspace` frees them.
    Returned arrays are always new (or ``out=``).

    All methods validate their input and never modify it; the products, the loss and the
    gradient take ``backend=`` (``"auto"``, ``"cython"``, ``"numba"``, ``"numpy"``) selecting the
    element-wise kernels (:meth:`forward` always runs the numpy reference); the matrix
    products always run through numpy's BLAS. ``X`` and ``y`` that are not C-contiguous are
    copied once.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> net = MLP([3, 5, 2], activation="tanh", loss="cross_entropy")
    >>> net.num_params
    32
    >>> theta = net.init(np.random.default_rng(0))
    >>> X = np.random.default_rng(1).standard_normal((8, 3))
    >>> y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    >>> loss, g = net.loss_and_grad(theta, X, y)
    >>> hg = net.hvp(theta, X, y, g)           # H g, exact
    >>> u = np.random.default_rng(2).standard_normal(net.num_params)
    >>> bool(np.isclose(u @ hg, g @ net.hvp(theta, X, y, u)))   # H is symmetric
    True
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        activation: str = "tanh",
        loss: str = "cross_entropy",
        dtype: type | np.dtype = np.float64,
    ) -> None:
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence | np.ndarray):
            raise TypeError(f"sizes: must be a sequence of integers, got {type(sizes).__name__}")
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes: needs at least 2 entries (input and output), got {sizes}")
        self.sizes = [check_int(s, f"sizes[{i}] (layer widths are integers >= 1)")
                      for i, s in enumerate(sizes)]
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        self.loss_name = check_choice(loss, "loss", LOSSES)
        self.dtype = check_float_dtype(dtype)
        n_out = self.sizes[-1]
        if self.loss_name == "logistic" and n_out != 1:
            raise ValueError(f"loss: 'logistic' needs one output, got sizes[-1]={n_out}")
        if self.loss_name == "cross_entropy" and n_out < 2:
            raise ValueError(
                f"loss: 'cross_entropy' needs at least 2 outputs (classes), got sizes[-1]={n_out};"
                " use loss='logistic' for a binary problem with one logit"
            )
        self._act_code = int(Activation[self.activation.upper()])
        self._loss_code = int(Loss[self.loss_name.upper()])
        self._offsets = []
        off = 0
        for n_in, n_o in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            self._offsets.append((off, off + n_in * n_o, off + n_in * n_o + n_o))
            off += n_in * n_o + n_o
        self.num_params = off
        self._tls = threading.local()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_tls"]  # scratch buffers are per thread and not part of the model
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._tls = threading.local()

    def __repr__(self) -> str:
        return (
            f"MLP({self.sizes}, activation={self.activation!r}, loss={self.loss_name!r}, "
            f"dtype=np.{self.dtype.name})"
        )

    @property
    def num_layers(self) -> int:
        """Number of dense layers (``len(sizes) - 1``)."""
        return len(self.sizes) - 1

    # ------------------------------------------------------------------ parameters
    def unpack(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-layer ``(W, b)`` views into ``theta`` (writing to them writes to ``theta``).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([2, 3, 1], loss="mse")
        >>> [(W.shape, b.shape) for W, b in net.unpack(np.zeros(net.num_params))]
        [((2, 3), (3,)), ((3, 1), (1,))]
        """
        theta = self._check_theta(theta, contiguous=False)
        if not theta.flags.c_contiguous:
            raise ValueError("theta: must be contiguous to be unpacked into views")
        return self._views(theta)

    def _views(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``unpack`` for a theta that is already validated and contiguous."""
        return [(theta[o0:o1].reshape(n_in, n_o), theta[o1:o2])
                for (n_in, n_o), (o0, o1, o2) in zip(
                    zip(self.sizes[:-1], self.sizes[1:], strict=True), self._offsets,
                    strict=True)]

    def pack(self, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Flat ``theta`` (a new array of the model's dtype) from per-layer ``(W, b)``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([2, 3, 1], loss="mse")
        >>> theta = np.arange(net.num_params, dtype=float)
        >>> bool(np.array_equal(net.pack(net.unpack(theta)), theta))
        True
        """
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise TypeError(f"layers: must be a sequence of (W, b) pairs, got "
                            f"{type(layers).__name__}")
        if len(layers) != self.num_layers:
            raise ValueError(f"layers: expected {self.num_layers} (W, b) pairs, got {len(layers)}")
        theta = np.empty(self.num_params, dtype=self.dtype)
        for l, (pair, (n_in, n_o), (o0, o1, o2)) in enumerate(
            zip(layers, zip(self.sizes[:-1], self.sizes[1:], strict=True), self._offsets,
                strict=True)
        ):
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise TypeError(f"layers[{l}]: must be a (W, b) pair, got {type(pair).__name__}")
            W, b = pair
            W = as_float_array(W, f"layers[{l}][0]", allow_int=True)
            b = as_float_array(b, f"layers[{l}][1]", allow_int=True)
            if W.shape != (n_in, n_o):
                raise ValueError(f"layers[{l}][0]: expected shape {(n_in, n_o)}, got {W.shape}")
            if b.shape != (n_o,):
                raise ValueError(f"layers[{l}][1]: expected shape {(n_o,)}, got {b.shape}")
            theta[o0:o1] = W.ravel()
            theta[o1:o2] = b
        return theta

    def init(self, rng: np.random.Generator | int | None = None, scheme: str = "xavier"
             ) -> np.ndarray:
        """Random parameters: weights by ``scheme``, biases zero.

        ``"xavier"``: uniform on ``±sqrt(6 / (n_in + n_out))``; ``"he"``: normal with standard
        deviation ``sqrt(2 / n_in)``; ``"orthogonal"``: orthonormal rows or columns (QR of a
        Gaussian matrix, sign-corrected).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([4, 4, 2])
        >>> W, b = net.unpack(net.init(0, scheme="orthogonal"))[0]
        >>> bool(np.allclose(W.T @ W, np.eye(4)))
        True
        """
        scheme = check_choice(scheme, "scheme", INIT_SCHEMES)
        rng = as_generator(rng, "rng")
        layers = []
        for n_in, n_o in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            W = dense_init(rng, scheme, n_in, n_o)
            layers.append((W, np.zeros(n_o)))
        return self.pack(layers)

    # ------------------------------------------------------------------ validation
    def _as_model_array(self, x: object, name: str, *, contiguous: bool = True) -> np.ndarray:
        return as_model_array(x, name, self.dtype, self, contiguous=contiguous)

    def _check_theta(self, theta: object, *, contiguous: bool = True) -> np.ndarray:
        theta = self._as_model_array(theta, "theta", contiguous=contiguous)
        if theta.shape != (self.num_params,):
            raise ValueError(
                f"theta: expected shape ({self.num_params},) for {self!r}, got {theta.shape}"
            )
        return theta

    def _check_X(self, X: object) -> np.ndarray:
        X = self._as_model_array(X, "X")
        if X.ndim != 2:
            raise ValueError(f"X: expected a 2-D array (N, {self.sizes[0]}), got shape {X.shape}")
        if X.shape[1] != self.sizes[0]:
            raise ValueError(
                f"X: expected {self.sizes[0]} columns (sizes[0]), got shape {X.shape}"
            )
        if X.shape[0] == 0:
            raise ValueError("X: empty batch (0 samples); the loss is an average over samples")
        check_all_finite(X, "X")
        return X

    def _check_y(self, y: object, N: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64 (N,) or empty, targets (N, n_out) of dtype or empty)."""
        reject_unsupported_subclass(y, "y")
        return check_targets(y, N, self.sizes[-1], self.loss_name, self.dtype,
                             self._as_model_array)

    def _check_v(self, v: object) -> tuple[np.ndarray, bool]:
        v = self._as_model_array(v, "v")
        P = self.num_params
        if v.ndim == 1 and v.shape[0] == P:
            return v.reshape(P, 1), True
        if v.ndim == 2 and v.shape[0] == P and v.shape[1] >= 1:
            return v, False
        raise ValueError(f"v: expected shape ({P},) or ({P}, k) with k >= 1, got {v.shape}")

    def _prepare(self, theta, X, y):
        theta = self._check_theta(theta)
        check_all_finite(theta, "theta")
        X = self._check_X(X)
        labels, Y = self._check_y(y, X.shape[0])
        return theta, X, labels, Y

    # ------------------------------------------------------------------ core
    def _run(self, theta, X, labels, Y, V, mode, backend, out=None):
        """Forward (+ backward (+ R passes)) on validated inputs. mode: "loss", "grad", "hvp",
        "gnvp". Returns (loss, gradient or None, products or None); with a validated ``out=``
        the gradient or products go there, in one copy at the end (see ``_OUT_LOCK``)."""
        # "auto": Cython first. bench/bench_curvature.py: the two compiled backends are within
        # noise on the benchmark shapes (the GEMMs dominate) and Cython has no JIT latency.
        name = _dispatch.resolve("curvature", backend)
        mod = _dispatch.load("curvature", name)
        n_call = threads_for_call(get_num_threads())
        with _blas_threads(n_call):
            loss, grad, prod = self._passes(mod, n_call, theta, X, labels, Y, V, mode,
                                            out is not None)
        result = grad if grad is not None else prod
        if out is not None and result is not None:
            with _OUT_LOCK:
                np.copyto(out, result.reshape(out.shape))
            result = out
        return (loss, None, result) if prod is not None else (loss, result, None)

    def _passes(self, mod, nt_all, theta, X, labels, Y, V, mode, scratch_result):
        """The passes of ``_run`` with kernel module ``mod``; the result is a new array, or a
        workspace buffer when ``scratch_result`` (it is copied to ``out=`` right after)."""

        def nt(values: int) -> int:
            return nt_all if values >= PARALLEL_MIN_VALUES else 1

        dt = self.dtype
        ws = self._workspace()

        def buf(key: str, shape: tuple[int, ...], dtype: np.dtype = dt) -> np.ndarray:
            # Scratch arrays are reused across calls: fresh ones would be fresh pages from the
            # OS, and first-touch page faults cost more than the kernels (6x on the small
            # benchmark shape).
            a = ws.get(key)
            if a is None or a.shape != shape or a.dtype != dtype:
                a = ws[key] = np.empty(shape, dtype)
            return a

        N = X.shape[0]
        need = {"loss": 0, "grad": 1, "hvp": 2, "gnvp": 2}[mode]
        k = V.shape[1] if need == 2 else 0
        kk = 1 + k
        layers = self._views(theta)
        L = len(layers)
        dummy2 = np.empty((0, 0), dt)
        dummy3 = np.empty((0, 0, 0), dt)

        Vc, VTc, Cs = [], [], []
        if k:
            for l, ((n_in, n_o), (o0, o1, o2)) in enumerate(zip(
                zip(self.sizes[:-1], self.sizes[1:], strict=True), self._offsets, strict=True
            )):
                if k == 1:  # V_l is already laid out as [V_1]; BLAS reads V_l^T in place
                    Vl = V[o0:o1].reshape(n_in, n_o)
                    Vc.append(Vl)
                    VTc.append(Vl.T)
                    Cs.append(V[o1:o2].reshape(1, n_o))
                    continue
                # V_l is (n_in, n_o, k); the products need [V_1 .. V_k] (n_in, k n_o) and
                # [V_1^T .. V_k^T] (n_o, k n_in), which no strides of V_l express: one copy
                # each. The second is a plain transpose of V_l as (n_in, n_o k), through the
                # tiled kernel (numpy's strided copy reads it down 4 KiB-apart columns, 5x
                # slower); the first, (n_o, k) blocks, is fine in numpy.
                Vl = V[o0:o1].reshape(n_in, n_o, k)
                vc = buf(f"Vc{l}", (n_in, k, n_o))
                np.copyto(vc, Vl.transpose(0, 2, 1))
                Vc.append(vc.reshape(n_in, k * n_o))
                if mode == "hvp" and l > 0:
                    vt = buf(f"VTc{l}", (n_o * k, n_in))
                    mod.batched_transpose(V[o0:o1].reshape(1, n_in, n_o * k), dummy3,
                                          vt.reshape(1, n_o * k, n_in), 1)
                    VTc.append(vt.reshape(n_o, k * n_in))
                else:
                    VTc.append(None)
                c = buf(f"C{l}", (k, n_o))
                np.copyto(c, V[o1:o2].T)
                Cs.append(c)

        # ---- forward and R-forward
        Ain = X.reshape(N, 1, X.shape[1])
        inputs, caches = [], []
        for l, (W, b) in enumerate(layers):
            n_in, n_o = W.shape
            kz = Ain.shape[1]
            Z = buf(f"Z{l}", (N * kz, n_o))
            np.matmul(Ain.reshape(N * kz, n_in), W, out=Z)
            Z = Z.reshape(N, kz, n_o)
            if k:
                AV = buf(f"AV{l}", (N, k * n_o))
                np.matmul(Ain[:, 0, :], Vc[l], out=AV)
                AV = AV.reshape(N, k, n_o)
                C = Cs[l]
            else:
                AV, C = np.empty((N, 0, n_o), dt), np.empty((0, n_o), dt)
            inputs.append(Ain)
            if l < L - 1:
                A = buf(f"A{l}", (N, kk, n_o))
                D1 = buf(f"D1{l}", (N, n_o)) if need >= 1 else dummy2
                D2 = buf(f"D2{l}", (N, n_o)) if need == 2 else dummy2
                RZ = buf(f"RZ{l}", (N, k, n_o)) if need == 2 else dummy3
                mod.hidden_forward(Z, b, AV, C, self._act_code, need, A, D1, D2, RZ, nt(A.size))
                caches.append((D1, D2, RZ))
                Ain = A
            else:
                D = buf("Dout", (N, kk, n_o)) if need >= 1 else dummy3
                losses = buf("losses", (N,), np.dtype(np.float64))
                mod.output_forward(
                    Z, b, AV, C, self._loss_code, need, labels, Y, D, losses, nt(Z.size)
                )
        loss = float(losses.sum() / N)
        if need == 0:
            return loss, None, None

        # ---- backward and R-backward
        # The products' weight/bias terms need only the streams that are returned: the gradient
        # (slot 0) for mode "grad", the R-streams (slots 1..k) for "hvp"/"gnvp" -- the HVP does
        # not pay for the gradient's a^T delta.
        first = 1 if k else 0
        shape = (self.num_params, k) if k else (self.num_params,)
        # a workspace result is never a caller's array, so the backward, which reads V after
        # writing a layer's rows, cannot see its own output even when out= aliases v
        result = buf("result", shape) if scratch_result else np.empty(shape, dt)
        out = result.reshape(self.num_params, -1)
        m = kk - first
        gn = 1 if mode == "gnvp" else 0
        S = buf("S", (m * max(self.sizes[1:]),), np.dtype(np.float64))
        have_sums = False  # S already holds the column sums of D (from hidden_backward)
        for l in range(L - 1, -1, -1):
            W, _ = layers[l]
            n_in, n_o = W.shape
            o0, o1, o2 = self._offsets[l]
            Ain = inputs[l]
            kz = Ain.shape[1]
            Dsel = D[:, first:, :].reshape(N, m * n_o)
            G = buf(f"G{l}", (n_in, m * n_o))
            np.matmul(Ain[:, 0, :].T, Dsel, out=G)
            G = G.reshape(n_in, m, n_o)
            Sl = S[: m * n_o]
            if not have_sums:
                mod.colsum(Dsel, Sl, nt(Dsel.size))
            outW = out[o0:o1].reshape(n_in, n_o, m)
            # outW (n_in, n_o, m) = G^T (+ Gr^T) per input row: a transpose of (m, n_o) blocks;
            # for m > 1 through the tiled kernel (numpy's strided add was 2x slower).
            if mode == "hvp" and kz > 1:
                Gr = buf(f"Gr{l}", (k * n_in, n_o))
                np.matmul(Ain[:, 1:, :].reshape(N, k * n_in).T, D[:, 0, :], out=Gr)
                Grt = Gr.reshape(k, n_in, n_o).transpose(1, 0, 2)
                if m > 1:
                    mod.batched_transpose(G, Grt, outW, 1)
                else:
                    np.add(G.transpose(0, 2, 1), Grt.transpose(0, 2, 1), out=outW)
            elif m > 1:
                mod.batched_transpose(G, dummy3, outW, 1)
            else:
                outW[...] = G.transpose(0, 2, 1)
            out[o1:o2] = Sl.reshape(m, n_o).T
            if l > 0:
                DA = buf(f"DA{l}", (N * kk, n_in))
                np.matmul(D.reshape(N * kk, n_o), W.T, out=DA)
                DA = DA.reshape(N, kk, n_in)
                if mode == "hvp" and k:
                    DV = buf(f"DV{l}", (N, k * n_in))
                    np.matmul(D[:, 0, :], VTc[l], out=DV)
                    DV = DV.reshape(N, k, n_in)
                else:
                    DV = dummy3
                D1, D2, RZ = caches[l - 1]
                Dn = buf(f"D{l}", (N, kk, n_in))
                # also the bias products of layer l - 1 (column sums of Dn's returned streams),
                # in the same pass when it is serial, while each row is in L1 (a separate
                # colsum pass re-read Dn from L2/L3)
                mod.hidden_backward(DA, DV, D1, D2, RZ, gn, Dn, S[: m * n_in], first,
                                    nt(Dn.size))
                have_sums = True
                D = Dn
        return (loss, None, result) if k else (loss, result, None)

    # ------------------------------------------------------------------ public
    def forward(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Network outputs (logits for the classification losses), shape ``(N, sizes[-1])``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([2, 4, 3])
        >>> net.forward(net.init(0), np.ones((5, 2))).shape
        (5, 3)
        """
        from ..reference.curvature import activation

        theta = self._check_theta(theta)
        check_all_finite(theta, "theta")
        a = self._check_X(X)
        layers = self.unpack(theta)
        for l, (W, b) in enumerate(layers):
            z = a @ W + b
            a = activation(self._act_code, z)[0] if l < len(layers) - 1 else z
        return a

    def loss(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, *,
             backend: str = "auto") -> float:
        """Batch-averaged loss at ``theta``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([2, 3], activation="identity", loss="cross_entropy")
        >>> round(net.loss(np.zeros(net.num_params), np.ones((4, 2)), np.array([0, 1, 2, 0])), 6)
        1.098612
        """
        if _dispatch.is_cuda_array(theta):
            return self._device_call(theta, X, y, None, "loss", backend, None)[0]
        theta, X, labels, Y = self._prepare(theta, X, y)
        return self._run(theta, X, labels, Y, None, "loss", backend)[0]

    def loss_and_grad(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, *,
                      backend: str = "auto", out: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
        """Loss and its gradient with respect to ``theta`` (shape ``(num_params,)``).

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([1, 1], activation="identity", loss="mse")
        >>> loss, g = net.loss_and_grad(np.array([2.0, 0.0]), np.array([[1.0], [2.0]]),
        ...                             np.array([1.0, 2.0]))
        >>> loss, g.tolist()         # 0.5*mean((x)^2) and its gradient in (w, b)
        (1.25, [2.5, 1.5])
        """
        if _dispatch.is_cuda_array(theta):
            return self._device_call(theta, X, y, None, "grad", backend, out)
        theta, X, labels, Y = self._prepare(theta, X, y)
        reject_unsupported_subclass(out, "out")
        out = check_out(out, (self.num_params,), self.dtype)
        loss, grad, _ = self._run(theta, X, labels, Y, None, "grad", backend, out)
        return loss, grad

    def _product(self, theta, X, y, v, mode, backend, out):
        if _dispatch.is_cuda_array(theta):
            return self._device_call(theta, X, y, v, mode, backend, out)[1]
        theta, X, labels, Y = self._prepare(theta, X, y)
        V, single = self._check_v(v)
        check_all_finite(V, "v")
        shape = (self.num_params,) if single else V.shape
        reject_unsupported_subclass(out, "out")
        out = check_out(out, shape, self.dtype)
        _, _, hv = self._run(theta, X, labels, Y, V, mode, backend, out)
        if out is not None:
            return out
        return hv[:, 0] if single else hv

    def hvp(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, v: np.ndarray, *,
            backend: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
        """Exact Hessian-vector product ``H v`` of the loss at ``theta`` (R-operator).

        Parameters
        ----------
        theta, X, y : array_like
            Parameters ``(num_params,)``, inputs ``(N, sizes[0])`` and targets (see the class).
        v : array_like
            One direction ``(num_params,)`` or k directions as columns ``(num_params, k)``; the
            k products share the forward and backward passes and run as one batch of GEMMs.
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
        >>> from fastopt import MLP
        >>> net = MLP([2, 1], activation="identity", loss="mse")   # least squares
        >>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> net.hvp(np.zeros(3), X, np.zeros(2), np.eye(3))         # H = [X 1]^T [X 1] / N
        array([[0.5, 0. , 0.5],
               [0. , 2. , 1. ],
               [0.5, 1. , 1. ]])
        """
        return self._product(theta, X, y, v, "hvp", backend, out)

    def gnvp(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, v: np.ndarray, *,
             backend: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
        """Gauss-Newton-vector product ``J^T H_loss J v`` (positive semidefinite curvature).

        Same arguments as :meth:`hvp`. ``J`` is the Jacobian of the network outputs with respect
        to ``theta`` and ``H_loss`` the Hessian of the loss with respect to the outputs; it drops
        the second-order terms of the network from the Hessian.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([2, 1], activation="identity", loss="mse")   # linear: G == H
        >>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
        >>> v = np.array([1.0, -1.0, 0.5])
        >>> bool(np.allclose(net.gnvp(np.zeros(3), X, np.zeros(2), v),
        ...                  net.hvp(np.zeros(3), X, np.zeros(2), v)))
        True
        """
        return self._product(theta, X, y, v, "gnvp", backend, out)


# ------------------------------------------------------------------ device arrays (GPU path)
# theta a device array (numba.cuda, CuPy, torch CUDA): the passes run in fastopt.curvature._cuda
# (numba.cuda element-wise kernels, GEMMs through the inputs' array library); X, y and v may be
# device arrays of any kind or host arrays (copied to the device once). The result is a device
# array of theta's kind; the loss a host float.


def _device_input(net, x, name, shape_check):
    """A validated device array of the model dtype for argument ``name`` (host input: the host
    checks, then one copy to the device)."""
    from .. import _device
    from .._validate import as_device_array
    from . import _cuda

    if not _dispatch.is_cuda_array(x):
        return _device.to_device(shape_check(x))
    arr = as_device_array(_device.to_numba(x), name)
    if np.dtype(arr.dtype) != net.dtype:
        raise TypeError(f"{name}: dtype {arr.dtype} does not match the model dtype "
                        f"{net.dtype.name}; convert it on the device first")
    shape_check(arr)
    bad, _, _ = _cuda.stats(arr)
    if bad:
        raise ValueError(f"{name}: contains NaN or Inf")
    return arr


def _device_call(self, theta, X, y, v, mode, backend, out):
    """loss / loss_and_grad / hvp / gnvp on device input; returns (loss, result)."""
    from .. import _device

    _dispatch.resolve_device("curvature", backend, "theta")
    if out is not None:
        raise TypeError("out: not supported with device arrays (the result is a new device "
                        "array of theta's kind)")
    from . import _cuda

    kind = _device.kind_of(theta)
    P = self.num_params

    def theta_shape(a):
        if isinstance(a, np.ndarray) or not hasattr(a, "copy_to_host"):
            a = self._check_theta(a)
            check_all_finite(a, "theta")
            return a
        if tuple(a.shape) != (P,):
            raise ValueError(f"theta: expected shape ({P},) for {self!r}, got {tuple(a.shape)}")
        return a

    def X_shape(a):
        if isinstance(a, np.ndarray) or not hasattr(a, "copy_to_host"):
            return self._check_X(a)
        shp = tuple(a.shape)
        if len(shp) != 2 or shp[1] != self.sizes[0] or shp[0] == 0:
            raise ValueError(f"X: expected a non-empty 2-D array (N, {self.sizes[0]}), got "
                             f"shape {shp}")
        return a

    theta_d = _device_input(self, theta, "theta", theta_shape)
    X_d = _device_input(self, X, "X", X_shape)
    N = X_d.shape[0]
    labels_d, Y_d = _device_targets(self, y, N)
    V_d = None
    single = False
    if v is not None:
        def v_shape(a):
            if isinstance(a, np.ndarray) or not hasattr(a, "copy_to_host"):
                Vh, _ = self._check_v(a)
                check_all_finite(Vh, "v")
                return Vh
            shp = tuple(a.shape)
            if not ((len(shp) == 1 and shp[0] == P) or (len(shp) == 2 and shp[0] == P
                                                         and shp[1] >= 1)):
                raise ValueError(f"v: expected shape ({P},) or ({P}, k) with k >= 1, got {shp}")
            return a

        single = len(tuple(getattr(v, "shape", np.shape(v)))) == 1
        V_d = _device_input(self, v, "v", v_shape)
        V_d = V_d.reshape(P, 1) if len(tuple(V_d.shape)) == 1 else V_d
    loss, result = _cuda.passes(self, theta_d, X_d, labels_d, Y_d, V_d, mode, kind)
    if result is not None and single:
        result = result.reshape(P)
    return loss, _device.like(result, kind)


def _device_targets(net, y, N):
    """(labels int64 device (N,) or None, targets device (N, n_out) or None)."""
    from .. import _device
    from .._validate import as_device_array  # noqa: F401  (floats go through _device_input)
    from . import _cuda

    if not _dispatch.is_cuda_array(y):
        labels, Y = net._check_y(y, N)
        if net.loss_name == "cross_entropy":
            return _device.to_device(labels), None
        return None, _device.to_device(Y)
    arr = _device.to_numba(y)
    n_out = net.sizes[-1]
    shp = tuple(arr.shape)
    if net.loss_name == "cross_entropy":
        dt = np.dtype(arr.dtype)
        if dt.kind not in "iu" or dt == np.bool_:
            raise TypeError(f"y: cross_entropy needs integer class labels, got dtype {dt}")
        if shp != (N,):
            raise ValueError(f"y: expected shape ({N},) (one label per sample), got {shp}")
        _, lo, hi = _cuda.stats(arr)
        if lo < 0 or hi >= n_out:
            raise ValueError(f"y: labels must lie in [0, {n_out}), got values in "
                             f"[{lo:g}, {hi:g}]")
        if dt != np.int64:
            raise TypeError(f"y: device labels must be int64, got {dt}")
        return arr, None
    want = (N, n_out) if net.loss_name == "mse" else (N, 1)
    if shp == (N,) and want[1] == 1:
        arr = arr.reshape(N, 1)
        shp = (N, 1)

    def y_shape(a):
        if tuple(a.shape) != want:
            raise ValueError(f"y: expected shape {want} for {net.loss_name}, got {shp}")
        return a

    Y = _device_input(net, arr, "y", y_shape)
    if net.loss_name == "logistic":
        _, lo, hi = _cuda.stats(Y)
        if lo < 0 or hi > 1:
            raise ValueError(f"y: logistic labels must lie in [0, 1], got values in "
                             f"[{lo:g}, {hi:g}]")
    return None, Y


MLP._device_call = _device_call
