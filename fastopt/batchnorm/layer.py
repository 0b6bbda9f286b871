"""``BatchNorm``: a stateful numpy layer (like ``torch.nn.BatchNorm*d``) over the fused kernels."""

from __future__ import annotations

import threading

import numpy as np

from .._validate import (
    check_float_dtype,
    check_fraction,
    check_int,
    check_positive,
    normalize_axis,
)
from ._atomic import deferred_interrupts
from .api import BatchNormGrads, batch_norm_backward, batch_norm_forward


class BatchNorm:
    """Batch normalization layer with affine parameters and running statistics.

    Holds ``weight`` (ones), ``bias`` (zeros), ``running_mean`` (zeros), ``running_var`` (ones)
    and ``num_batches_tracked``, all numpy arrays of ``dtype``, and remembers what its
    ``backward`` needs from the last ``forward`` (x itself, not a copy: do not modify it in
    between). Semantics are PyTorch's ``BatchNorm*d``: ``momentum=None`` uses the cumulative
    average ``1 / num_batches_tracked``; with ``track_running_stats=False`` batch statistics are
    used in eval mode too.

    A layer may be shared by threads: each ``forward`` reads and updates the running statistics,
    ``num_batches_tracked`` and what ``backward`` needs as one step (under a lock; the kernel
    writes temporaries that are committed together), and an interrupt (KeyboardInterrupt) leaves
    the state of before or after the call, never a mix.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    axis : int
        Channel axis of the inputs (1 for NCHW, -1 for channels-last).
    eps : float
        Added to the variance inside the square root.
    momentum : float or None
        Weight of each new batch in the running statistics; None: cumulative average.
    affine : bool
        Learnable weight and bias (otherwise both are None and ``grad_weight`` stays None).
    track_running_stats : bool
        Keep running statistics.
    dtype : float32 or float64
        Dtype of the parameters and the accepted inputs.
    backend : str
        Kernel backend passed to the functions ("auto" by default).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import BatchNorm
    >>> bn = BatchNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((16, 3, 4, 4)).astype(np.float32)
    >>> y = bn.forward(x)
    >>> bn.num_batches_tracked
    1
    >>> dx = bn.backward(np.ones_like(y))
    >>> bn.grad_bias
    array([256., 256., 256.], dtype=float32)
    """

    def __init__(
        self,
        num_features: int,
        *,
        axis: int = 1,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: type | np.dtype = np.float32,
        backend: str = "auto",
    ) -> None:
        self.num_features = check_int(num_features, "num_features", minimum=1)
        self.axis = check_int(axis, "axis", minimum=None)
        self.eps = check_positive(eps, "eps")
        self.momentum = None if momentum is None else check_fraction(momentum, "momentum")
        self.dtype = check_float_dtype(dtype)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.backend = backend
        c = self.num_features
        self.weight = np.ones(c, self.dtype) if affine else None
        self.bias = np.zeros(c, self.dtype) if affine else None
        self.grad_weight: np.ndarray | None = None
        self.grad_bias: np.ndarray | None = None
        if track_running_stats:
            self.running_mean: np.ndarray | None = np.zeros(c, self.dtype)
            self.running_var: np.ndarray | None = np.ones(c, self.dtype)
        else:
            self.running_mean = self.running_var = None
        self.num_batches_tracked = 0
        self._saved: tuple | None = None
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, batch counter to 0."""
        with self._lock, deferred_interrupts():
            if self.track_running_stats:
                self.running_mean[...] = 0
                self.running_var[...] = 1
            self.num_batches_tracked = 0

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Normalize ``x`` (training: batch statistics and running-stat update; eval: running)."""
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if isinstance(x, np.ndarray) and x.dtype != self.dtype and x.dtype.kind == "f":
            raise ValueError(
                f"x: dtype {x.dtype} does not match the layer's dtype {self.dtype}; convert with "
                f"x.astype(np.{self.dtype.name}) or create BatchNorm(..., dtype=np.{x.dtype.name})"
            )
        if x.ndim >= 2:
            ax = normalize_axis(self.axis, x.ndim)
            if x.shape[ax] != self.num_features:
                raise ValueError(
                    f"x: has {x.shape[ax]} channels on axis {self.axis}, expected "
                    f"{self.num_features}"
                )
        use_batch = training or not self.track_running_stats
        update = training and self.track_running_stats
        with self._lock:
            momentum = 0.0 if self.momentum is None else float(self.momentum)
            if update and self.momentum is None:
                momentum = 1.0 / (self.num_batches_tracked + 1)
            stats = update or not use_batch
            # the kernel updates copies; they are committed below with the counter
            rm = self.running_mean.copy() if stats else None
            rv = self.running_var.copy() if stats else None
            out = batch_norm_forward(
                x,
                self.weight,
                self.bias,
                axis=self.axis,
                training=use_batch,
                running_mean=rm,
                running_var=rv,
                momentum=momentum,
                eps=self.eps,
                backend=self.backend,
            )
            saved = (np.ascontiguousarray(x), out.mean, out.invstd, use_batch)
            with deferred_interrupts():  # only after a successful call: a rejected one changes
                if update:  # nothing
                    self.running_mean[...] = rm
                    self.running_var[...] = rv
                    self.num_batches_tracked += 1
                self._saved = saved
        return out.y

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. the last forward's input; stores ``grad_weight`` and ``grad_bias``."""
        with self._lock:
            saved = self._saved
        if saved is None:
            raise RuntimeError("backward: call forward first")
        x, mean, invstd, use_batch = saved
        grads: BatchNormGrads = batch_norm_backward(
            dy, x, mean, invstd, self.weight, axis=self.axis, training=use_batch,
            backend=self.backend,
        )
        if self.affine:
            with self._lock:
                self.grad_weight, self.grad_bias = grads.dweight, grads.dbias
        return grads.dx

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, axis={self.axis}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, dtype={self.dtype.name})"
        )
