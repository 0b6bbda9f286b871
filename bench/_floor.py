"""Streaming kernels that measure the memory-bandwidth floor in the same run as the contenders.

Numba, parallel over fixed chunks, float32 in and out; the same thread count as fastopt's kernels.
"""

from __future__ import annotations

import numba as nb
import numpy as np

FAST = {"reassoc", "contract", "nsz"}


@nb.njit(parallel=True, fastmath=FAST, cache=True)
def read_pass(x):
    """Sum of a flat array: one read of x."""
    n = x.size
    chunks = 64
    part = np.zeros(chunks)
    for k in nb.prange(chunks):
        s = 0.0
        for i in range(k * n // chunks, (k + 1) * n // chunks):
            s += x[i]
        part[k] = s
    return part.sum()


@nb.njit(parallel=True, fastmath=FAST, cache=True)
def read_write_pass(x, y):
    """y = 2 x: one read of x, one write of y."""
    n = x.size
    chunks = 64
    for k in nb.prange(chunks):
        for i in range(k * n // chunks, (k + 1) * n // chunks):
            y[i] = 2 * x[i]


@nb.njit(parallel=True, fastmath=FAST, cache=True)
def read_read_write_pass(a, b, out):
    """out = a + b: two reads, one write."""
    n = a.size
    chunks = 64
    for k in nb.prange(chunks):
        for i in range(k * n // chunks, (k + 1) * n // chunks):
            out[i] = a[i] + b[i]


def forward_floor(x: np.ndarray, y: np.ndarray) -> None:
    """Batch-norm forward floor: a read pass plus a read-write pass of x's size."""
    read_pass(x.reshape(-1))
    read_write_pass(x.reshape(-1), y.reshape(-1))


def backward_floor(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """Batch-norm backward floor: two read passes plus a read-read-write pass."""
    read_pass(x.reshape(-1))
    read_pass(dy.reshape(-1))
    read_read_write_pass(x.reshape(-1), dy.reshape(-1), dx.reshape(-1))
