"""Matrix products of the curvature GPU path through the array library the inputs came from.

:func:`matmul` computes ``out = op(A) @ op(B)`` on numba device arrays (``op``: optional
transpose) without leaving the device:

- CuPy inputs: ``cupy.matmul`` on zero-copy views (cuBLAS);
- torch CUDA inputs: ``torch.matmul(..., out=)`` on zero-copy views (cuBLAS);
- plain numba device arrays (and the CUDA simulator, where neither CuPy nor torch's CUDA
  exists): fastopt's own numba.cuda kernel (``_cuda.matmul_kernel``: one thread per output,
  float64 sums). It is correct on a real GPU too, but far from cuBLAS: pass CuPy arrays or torch
  tensors for speed.
"""

from __future__ import annotations

import numpy as np
from numba import cuda  # this module is imported on device paths only


def matmul(lib: str | None, A, B, out, ta: bool = False, tb: bool = False) -> None:
    """``out[...] = op(A) @ op(B)`` for 2-D device arrays, with the library ``lib`` (see
    :func:`fastopt._device.matrix_library`)."""
    if lib == "torch":
        import torch

        a = torch.as_tensor(A, device="cuda")
        b = torch.as_tensor(B, device="cuda")
        o = torch.as_tensor(out, device="cuda")
        torch.matmul(a.T if ta else a, b.T if tb else b, out=o)
        return
    if lib == "cupy":
        import cupy

        a, b, o = cupy.asarray(A), cupy.asarray(B), cupy.asarray(out)
        cupy.matmul(a.T if ta else a, b.T if tb else b, out=o)
        return
    from . import _cuda

    _cuda.matmul(A, B, out, ta, tb)


def column_dots(A, B):
    """``sum_p A[p, j] * B[p, j]`` for each column ``j`` of two ``(P, k)`` device arrays, summed in
    float64 on the device; returns a host ``(k,)`` float64 array (``k`` floats cross the bus).

    One block per column: fixed-order strided partial sums, then a shared-memory tree, so the
    result is deterministic for a given ``_cuda.THREADS_PER_BLOCK`` (a power of two)."""
    from . import _cuda

    P, k = A.shape
    out = cuda.device_array(max(k, 1), np.float64)
    if k:
        tpb = _cuda.THREADS_PER_BLOCK
        _cuda._kernels(tpb)["column_dot"][k, tpb](A, B, out)
    return out.copy_to_host()[:k]
