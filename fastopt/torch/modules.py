"""Drop-in ``BatchNorm1d``/``2d``/``3d`` modules and a functional ``batch_norm`` on fastopt's ops.

The classes subclass torch's own ``BatchNorm1d``/``2d``/``3d`` (hence ``_BatchNorm``), so they
take torch's constructor arguments, have its parameters, buffers, ``state_dict`` keys, input
checks and ``train()``/``eval()`` behaviour, and ``isinstance(m, torch.nn.BatchNorm2d)`` stays
true; only ``forward`` differs. They are module-level classes: ``pickle``, ``torch.save`` /
``torch.load`` and ``copy.deepcopy`` work.

CUDA tensors go to fastopt's numba.cuda kernels (zero-copy, on torch's current stream) when
fastopt's CUDA backend can run (numba-cuda installed, a CUDA device found). Inputs fastopt's
kernels cannot take (float16, bfloat16, CUDA without that backend, other devices, parameters of
another dtype or device) go to PyTorch's own kernel instead, with one :class:`FallbackWarning`
per module whose message says why (and what to install); nothing is copied to the CPU.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _cpp, _ops

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "FallbackWarning", "batch_norm",
           "FastBatchNorm"]


class FallbackWarning(UserWarning):
    """An input fastopt's kernels do not take went to PyTorch's batch norm instead."""


_SUPPORTED = "float32/float64 on CPU, or on CUDA with numba-cuda"


def _unsupported(x: Tensor, *tensors: Tensor | None) -> str | None:
    """Why fastopt's op cannot take these tensors (None when it can)."""
    dtype = x.dtype
    if x.is_cpu and dtype in _ops.SUPPORTED_DTYPES and all(
            t is None or (t.is_cpu and t.dtype == dtype) for t in tensors):
        return None
    device = x.device.type
    if device != "cpu":
        if device != "cuda":
            return f"input on {x.device}"
        problem = _ops.cuda_backend_problem()
        if problem is not None:
            return f"input on {x.device} ({problem})"
    if x.dtype not in _ops.SUPPORTED_DTYPES:
        return f"input dtype {x.dtype}"
    dtype, where = x.dtype, x.device
    for t in tensors:
        if t is not None and (t.dtype != dtype or t.device != where):
            return (f"a parameter or buffer of dtype {t.dtype} on {t.device} with {x.dtype} "
                    f"input on {x.device}")
    return None


def batch_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
               running_mean: Tensor | None = None, running_var: Tensor | None = None,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
               backend: str = "auto") -> Tensor:
    """``torch.nn.functional.batch_norm`` on fastopt's registered ops (float32/float64, CPU or
    CUDA).

    Note the argument order: ``weight`` and ``bias`` come before the running statistics
    (pass them by keyword to be safe). In training mode the running statistics, when given,
    are updated in place as PyTorch does. Channel axis 1, any rank >= 2; contiguous and
    channels-last tensors go to the kernels without copies. CUDA tensors go to fastopt's
    numba.cuda kernels when its CUDA backend can run (numba-cuda and a device). Inputs the
    kernels do not take (float16, bfloat16, CUDA without that backend, other devices) go to
    ``torch.nn.functional.batch_norm`` with a :class:`FallbackWarning` saying why.

    Parameters
    ----------
    x : Tensor (N, C, ...)
    weight, bias : Tensor (C,), optional
    running_mean, running_var : Tensor (C,), optional
        Required when ``training`` is False.
    training : bool
    momentum : float
    eps : float
    backend : {"auto", "cython", "numba", "numpy", "cuda"}
        fastopt's kernel implementation: a CPU one for CPU tensors, ``"auto"`` or ``"cuda"``
        for CUDA tensors (another name is a ValueError).

    Returns
    -------
    Tensor
        The normalized ``x`` (x's shape, dtype and memory layout).

    Examples
    --------
    >>> import torch
    >>> from fastopt.torch import batch_norm
    >>> x = torch.randn(6, 3, 4, dtype=torch.float64)
    >>> y = batch_norm(x)
    >>> bool(y.mean(dim=(0, 2)).abs().max() < 1e-12)
    True
    """
    if not _cpp.TRIED and not torch.compiler.is_compiling():
        _cpp.ensure_loaded()
    why = _unsupported(x, weight, bias, running_mean, running_var)
    if why is not None:
        warnings.warn(f"fastopt.torch.batch_norm: {why} is not supported by fastopt's kernels "
                      f"({_SUPPORTED}); using torch.nn.functional.batch_norm",
                      FallbackWarning, stacklevel=2)
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    y, _, _, new_rm, new_rv = _ops.batch_norm_op(
        x, weight, bias, running_mean, running_var, training, momentum, eps, backend)
    if training and running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(new_rm)
            if running_var is not None:
                running_var.copy_(new_rv)
    return y


class _Fastopt:
    """The forward shared by the fastopt modules (mixed in before torch's class)."""

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def extra_repr(self) -> str:
        text = super().extra_repr()
        backend = getattr(self, "backend", "auto")
        return text if backend == "auto" else f"{text}, backend={backend!r}"

    def _fallback(self, x: Tensor, why: str) -> Tensor:
        if not getattr(self, "_fastopt_warned", False):
            self._fastopt_warned = True
            # The module's id makes each module's message distinct, so Python's warning
            # registry (one per call site) does not swallow a second module's warning.
            warnings.warn(f"{type(self).__name__}({self.num_features}) at {id(self):#x}: {why} "
                          f"is not supported by fastopt's kernels ({_SUPPORTED}); this module "
                          "uses PyTorch's batch norm for such inputs (warned once per module)",
                          FallbackWarning, stacklevel=3)
        return super().forward(x)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (torch's parameter name)
        if not _cpp.TRIED and not torch.compiler.is_compiling():
            _cpp.ensure_loaded()
        self._check_input_dim(input)
        # each parameter and buffer read once: nn.Module's attribute lookup is per-call cost
        weight, bias, rm, rv = self.weight, self.bias, self.running_mean, self.running_var
        why = _unsupported(input, weight, bias, rm, rv)
        if why is not None:
            return self._fallback(input, why)
        # Exactly torch's _BatchNorm.forward bookkeeping.
        training, momentum = self.training, self.momentum
        factor = 0.0 if momentum is None else momentum
        if training and self.track_running_stats:
            tracked = self.num_batches_tracked
            if tracked is not None:
                tracked.add_(1)
                if momentum is None:  # cumulative moving average
                    factor = 1.0 / float(tracked)
        use_batch = training or (rm is None and rv is None)
        if training and not self.track_running_stats:
            rm = rv = None
        # The module's backend names a CPU kernel; CUDA input always takes the CUDA kernels.
        backend = getattr(self, "backend", "auto") if input.is_cpu else "cuda"
        y, _, _, new_rm, new_rv = _ops.batch_norm_op(
            input, weight, bias, rm, rv, use_batch, factor, self.eps, backend)
        if use_batch and rm is not None:  # buffers: no autograd history to record
            rm.copy_(new_rm)
            rv.copy_(new_rv)
        return y


class BatchNorm1d(_Fastopt, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on fastopt's kernels: (N, C) or (N, C, L) input.

    Same constructor arguments as torch's class, plus a keyword-only ``backend``
    (``"auto"``, ``"cython"``, ``"numba"``, ``"numpy"``) for fastopt's CPU kernels; CUDA input
    always takes fastopt's CUDA kernels (or torch's, with a warning, where they cannot run).

    Examples
    --------
    >>> import torch
    >>> from fastopt.torch import BatchNorm1d
    >>> bn = BatchNorm1d(4)
    >>> bn(torch.randn(8, 4)).shape
    torch.Size([8, 4])
    """


class BatchNorm2d(_Fastopt, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on fastopt's kernels: (N, C, H, W) input, contiguous or
    channels-last (handed to the kernels as NHWC memory, no copy).

    Same constructor arguments as torch's class, plus a keyword-only ``backend``.

    Examples
    --------
    >>> import torch
    >>> from fastopt.torch import BatchNorm2d
    >>> bn = BatchNorm2d(3)
    >>> x = torch.randn(8, 3, 5, 5).to(memory_format=torch.channels_last)
    >>> y = bn(x)
    >>> y.is_contiguous(memory_format=torch.channels_last), list(bn.state_dict())
    (True, ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'])
    """


class BatchNorm3d(_Fastopt, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` on fastopt's kernels: (N, C, D, H, W) input, contiguous or
    ``channels_last_3d``.

    Same constructor arguments as torch's class, plus a keyword-only ``backend``.

    Examples
    --------
    >>> import torch
    >>> from fastopt.torch import BatchNorm3d
    >>> BatchNorm3d(2, affine=False)(torch.randn(3, 2, 2, 2, 2)).shape
    torch.Size([3, 2, 2, 2, 2])
    """


class _AnyRankBatchNorm(_Fastopt, torch.nn.modules.batchnorm._BatchNorm):
    """The module :func:`FastBatchNorm` returns: any rank >= 2, channel axis 1."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


def FastBatchNorm(num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                  affine: bool = True, track_running_stats: bool = True,
                  dtype: torch.dtype | None = None, backend: str = "auto") -> torch.nn.Module:
    """Deprecated: use :class:`BatchNorm1d`, :class:`BatchNorm2d` or :class:`BatchNorm3d`.

    Returns a batch-norm module of any input rank >= 2 (a ``_BatchNorm`` subclass, now
    module-level and so picklable) and emits a ``DeprecationWarning``.

    Examples
    --------
    >>> import warnings
    >>> import torch
    >>> from fastopt.torch import FastBatchNorm
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     bn = FastBatchNorm(3)
    >>> bn(torch.randn(8, 3, 4, 4)).shape
    torch.Size([8, 3, 4, 4])
    """
    warnings.warn("fastopt.torch.FastBatchNorm is deprecated: use fastopt.torch.BatchNorm1d, "
                  "BatchNorm2d or BatchNorm3d (drop-in for torch's), or fastopt.torch.convert",
                  DeprecationWarning, stacklevel=2)
    return _AnyRankBatchNorm(num_features, eps, momentum, affine, track_running_stats,
                             dtype=dtype, backend=backend)
