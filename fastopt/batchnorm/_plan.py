"""How a batch-norm call is split into parallel work; shared by the Cython and Numba kernels.

Two strategies (both backends implement both, chosen here so that they agree):

- ``per_channel``: one thread owns whole channels and runs the statistics pass and the normalize
  pass back to back on the channel's slab (``outer`` runs of ``inner`` contiguous values), so the
  second pass reads the slab from cache. Measured on this machine it only pays when the slab has
  few runs (``outer <= MAX_RUNS``): a slab of many short runs at a large stride (a typical NCHW
  batch) streams at about half the speed of whole rows, and its runs, whose stride is often a
  multiple of 4 KiB, conflict in the cache sets (bench/, README).
- ``chunked``: the ``outer`` rows (each ``C * inner`` contiguous values) are split into a fixed
  number of chunks; each chunk accumulates per-channel float64 partial sums, which are combined in
  chunk order (deterministic for a given thread count), then a second parallel pass normalizes.
  Used for channels-last / (N, C) input (``inner == 1``), few channels, or short runs.

``stream``: the Cython row sweeps (``inner == 1``) write outputs of at least ``STREAM_MIN_BYTES``
with non-temporal stores, which skip the read-for-ownership of every output line and leave the
cache to the inputs; rows shorter than ``STREAM_MIN_ROW_BYTES`` are not worth the detour through
the kernel's tile buffer. The Numba kernels ignore the flag.
"""

from __future__ import annotations

from typing import NamedTuple

MIN_RUN = 16  # shortest contiguous run (values) worth a per-channel strided walk
MAX_RUNS = 16  # most runs per channel slab for the per-channel strategy
MIN_PARALLEL = 1 << 15  # below this many values, waking threads costs more than it saves
# Outputs of at least this many bytes are written with non-temporal stores (Cython, channels-last
# rows): a quarter of this machine's 32 MiB L3. On (4096, 1024) float32 (16 MiB out) this cut the
# forward by ~20% and the dx pass by ~10%; smaller outputs stay in cache for the next layer.
STREAM_MIN_BYTES = 8 << 20
STREAM_MIN_ROW_BYTES = 256


class Plan(NamedTuple):
    """Work split for one call: strategy flag, chunk count for ``chunked``, threads to use, and
    whether the element-wise pass streams its output past the cache (``stream``)."""

    per_channel: bool
    n_chunks: int
    n_threads: int
    stream: bool = False


def make_plan(outer: int, channels: int, inner: int, n_threads: int, itemsize: int) -> Plan:
    """Choose the strategy for an array viewed as ``(outer, channels, inner)`` of ``itemsize``-byte
    values."""
    if outer * channels * inner < MIN_PARALLEL:
        n_threads = 1
    per_channel = inner >= MIN_RUN and outer <= MAX_RUNS and channels >= 2 * n_threads
    # a few chunks per thread balance the load; more only add partial-sum traffic (measured)
    n_chunks = max(1, min(outer, max(8, 2 * n_threads)))
    stream = (inner == 1 and channels * itemsize >= STREAM_MIN_ROW_BYTES
              and outer * channels * itemsize >= STREAM_MIN_BYTES)
    return Plan(per_channel, n_chunks, n_threads, stream)
