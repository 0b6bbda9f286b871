"""Zero-copy interop of device arrays: numba.cuda device arrays (and the CUDA simulator's),
CuPy arrays and PyTorch CUDA tensors.

The GPU paths compute on numba device arrays. :func:`to_numba` views any input through
``__cuda_array_interface__`` (no copy; a torch tensor that requires grad is detached first) and
:func:`like` turns a numba result back into the kind of array the caller passed in, again without
a copy (CuPy: ``cupy.asarray``; torch: ``torch.as_tensor(..., device="cuda")``). Nothing here is
imported by ``import fastopt``; numba.cuda, CuPy and torch are imported on first use only.

Streams: the kernels run on numba's default (legacy) stream, which orders against every other
blocking stream, including torch's and CuPy's default streams. Work queued by the caller on a
non-blocking stream must be synchronized by the caller first.
"""

from __future__ import annotations

import numpy as np

KINDS = ("numba", "cupy", "torch")


def kind_of(x: object) -> str:
    """``"torch"``, ``"cupy"`` or ``"numba"`` (numba device arrays, the simulator's, and any
    other object with ``__cuda_array_interface__``)."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    return "numba"


def to_numba(x: object):
    """A numba device array viewing the same memory as ``x`` (no copy)."""
    if hasattr(x, "copy_to_host"):  # numba's own (and the simulator's) device arrays
        return x
    if kind_of(x) == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()  # torch refuses __cuda_array_interface__ on tensors that require grad
    from numba import cuda

    return cuda.as_cuda_array(x)


def like(result, kind: str):
    """The numba device array ``result`` as an array of ``kind`` (see :func:`kind_of`), sharing
    its memory."""
    if result is None or kind == "numba":
        return result
    if kind == "cupy":
        import cupy

        return cupy.asarray(result)
    import torch

    return torch.as_tensor(result, device="cuda")


def device_array(shape, dtype):
    """An uninitialized numba device array."""
    from numba import cuda

    return cuda.device_array(shape, np.dtype(dtype))


def empty(shape, dtype, kind: str):
    """An uninitialized numba device array whose memory comes from the allocator of ``kind``'s
    library (torch's and CuPy's caching pools: no cudaMalloc per call), or numba's."""
    if kind == "torch":
        import torch

        t = torch.empty(tuple(shape), dtype=getattr(torch, np.dtype(dtype).name), device="cuda")
        return to_numba(t)  # the view keeps the tensor alive
    if kind == "cupy":
        import cupy

        return to_numba(cupy.empty(tuple(shape), dtype=np.dtype(dtype)))
    return device_array(shape, dtype)


def to_device(host: np.ndarray):
    """Copy a host array to a new numba device array."""
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(host))


def copy(x):
    """A new numba device array holding a copy of the numba device array ``x`` (device to
    device; nothing crosses the bus)."""
    from numba import cuda

    out = cuda.device_array(tuple(x.shape), np.dtype(x.dtype))
    out.copy_to_device(x)
    return out


def matrix_library(kind: str):
    """The array library whose matrix products serve inputs of ``kind``: ``"cupy"``, ``"torch"``,
    or ``None`` for plain numba device arrays (then fastopt's own numba.cuda matmul kernel, the
    only option in the simulator, where neither CuPy nor torch's CUDA exists)."""
    if kind in ("cupy", "torch"):
        return kind
    return None
