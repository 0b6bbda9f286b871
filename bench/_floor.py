"""Streaming kernels that measure the memory-bandwidth floor in the same run as the contenders.

Numba, parallel over fixed chunks, float32 in and out, fastopt's thread count. The inner loops
take slices and loop over ``range(len)``: indexing with ``range(lo, hi)`` keeps Numba's
negative-index check in the loop and blocks vectorization.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from fastopt._threads import apply_numba_threads

FAST = {"reassoc", "contract", "nsz"}
CHUNKS = 64


@nb.njit(fastmath=FAST, cache=True)
def _sum(x, lo, hi):
    x = x[lo:hi]
    s = 0.0
    for i in range(x.size):
        s += x[i]
    return s


@nb.njit(fastmath=FAST, cache=True)
def _moments64(x, lo, hi):
    x = x[lo:hi]
    s1 = 0.0
    s2 = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s1 += v
        s2 += v * v
    return s1 + s2


@nb.njit(fastmath=FAST, cache=True)
def _scale(x, y, lo, hi):
    x = x[lo:hi]
    y = y[lo:hi]
    for i in range(x.size):
        y[i] = 2 * x[i]


@nb.njit(fastmath=FAST, cache=True)
def _add(a, b, out, lo, hi):
    a = a[lo:hi]
    b = b[lo:hi]
    out = out[lo:hi]
    for i in range(a.size):
        out[i] = a[i] + b[i]


@nb.njit(fastmath=FAST, cache=True)
def _grad_moments64(g, x, lo, hi):
    g = g[lo:hi]
    x = x[lo:hi]
    s1 = 0.0
    s2 = 0.0
    for i in range(g.size):
        v = np.float64(g[i])
        s1 += v
        s2 += np.float64(x[i]) * v
    return s1 + s2


@nb.njit(fastmath=FAST, cache=True)
def _affine64(x, y, lo, hi):
    x = x[lo:hi]
    y = y[lo:hi]
    for i in range(x.size):
        y[i] = np.float64(x[i]) * 1.5 + 0.25


@nb.njit(fastmath=FAST, cache=True)
def _affine64_pair(g, x, out, lo, hi):
    g = g[lo:hi]
    x = x[lo:hi]
    out = out[lo:hi]
    for i in range(g.size):
        out[i] = np.float64(g[i]) * 1.5 + (np.float64(x[i]) * 0.5 + 0.25)


@nb.njit(parallel=True, cache=True)
def read_pass(x):
    """Sum of a flat array: one read of x."""
    n = x.size
    part = np.zeros(CHUNKS)
    for k in nb.prange(CHUNKS):
        part[k] = _sum(x, k * n // CHUNKS, (k + 1) * n // CHUNKS)
    return part.sum()


@nb.njit(parallel=True, cache=True)
def read_moments64_pass(x):
    """One read of x that widens every value to float64 and sums it and its square: the least
    arithmetic float64 batch statistics take (no shift, no per-channel split)."""
    n = x.size
    part = np.zeros(CHUNKS)
    for k in nb.prange(CHUNKS):
        part[k] = _moments64(x, k * n // CHUNKS, (k + 1) * n // CHUNKS)
    return part.sum()


@nb.njit(parallel=True, cache=True)
def read_write_pass(x, y):
    """y = 2 x: one read of x, one write of y."""
    n = x.size
    for k in nb.prange(CHUNKS):
        _scale(x, y, k * n // CHUNKS, (k + 1) * n // CHUNKS)


@nb.njit(parallel=True, cache=True)
def read_read_write_pass(a, b, out):
    """out = a + b: two reads, one write."""
    n = a.size
    for k in nb.prange(CHUNKS):
        _add(a, b, out, k * n // CHUNKS, (k + 1) * n // CHUNKS)


@nb.njit(parallel=True, cache=True)
def read_grad_moments64_pass(g, x):
    """One read of g and x, widening both to float64 and summing g and x g."""
    n = g.size
    part = np.zeros(CHUNKS)
    for k in nb.prange(CHUNKS):
        part[k] = _grad_moments64(g, x, k * n // CHUNKS, (k + 1) * n // CHUNKS)
    return part.sum()


@nb.njit(parallel=True, cache=True)
def affine64_pass(x, y):
    """y = x * 1.5 + 0.25 evaluated in float64: the widening, one multiply-add and the narrowing
    of fastopt's normalize pass, with constant coefficients."""
    n = x.size
    for k in nb.prange(CHUNKS):
        _affine64(x, y, k * n // CHUNKS, (k + 1) * n // CHUNKS)


@nb.njit(parallel=True, cache=True)
def affine64_pair_pass(g, x, out):
    """out = g * 1.5 + (x * 0.5 + 0.25) in float64: the arithmetic of fastopt's dx pass."""
    n = g.size
    for k in nb.prange(CHUNKS):
        _affine64_pair(g, x, out, k * n // CHUNKS, (k + 1) * n // CHUNKS)


def forward_floor(x: np.ndarray, y: np.ndarray) -> None:
    """Batch-norm forward floor: a read pass plus a read-write pass of x's size."""
    apply_numba_threads()
    read_pass(x.reshape(-1))
    read_write_pass(x.reshape(-1), y.reshape(-1))


def forward_floor_float64_stats(x: np.ndarray, y: np.ndarray) -> None:
    """The forward floor with float64 statistics: a widening moments pass plus a read-write
    pass (for inputs that stay in cache, where the widening costs more than the read)."""
    apply_numba_threads()
    read_moments64_pass(x.reshape(-1))
    read_write_pass(x.reshape(-1), y.reshape(-1))


def backward_floor(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """Batch-norm backward floor: two read passes plus a read-read-write pass."""
    apply_numba_threads()
    read_pass(x.reshape(-1))
    read_pass(dy.reshape(-1))
    read_read_write_pass(x.reshape(-1), dy.reshape(-1), dx.reshape(-1))


def forward_floor_float64(x: np.ndarray, y: np.ndarray) -> None:
    """The forward's bytes and its float64 arithmetic: the widening moments pass, then a pass that
    widens x, multiplies and adds in float64 and narrows into y. Constant coefficients, so it is
    still below fastopt's work (no per-channel coefficients, no shift)."""
    apply_numba_threads()
    read_moments64_pass(x.reshape(-1))
    affine64_pass(x.reshape(-1), y.reshape(-1))


def backward_floor_float64(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """The backward's bytes and its float64 arithmetic: one pass widening dy and x and summing dy
    and x dy, then dx = dy a + (x b + c) in float64 with constant a, b, c."""
    apply_numba_threads()
    read_grad_moments64_pass(dy.reshape(-1), x.reshape(-1))
    affine64_pair_pass(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
