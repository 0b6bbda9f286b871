"""Work split of the fused WᵀWv pass, shared by the Cython and Numba kernels and the numpy
reference (each kernel module re-exports ``n_chunks`` and ``work_shape``)."""

from __future__ import annotations


def n_chunks(n_rows: int, n_threads: int) -> int:
    """Number of row chunks (and rows of ``work``) the single-matrix path of ``wtwv`` uses."""
    return max(1, min(int(n_threads), int(n_rows)))


def work_shape(n_active: int, n: int, m: int, n_threads: int) -> tuple[int, int]:
    """Shape of the float64 ``work`` array ``wtwv`` needs."""
    return (max(int(n_active), n_chunks(n, n_threads)), 2 * int(m))
