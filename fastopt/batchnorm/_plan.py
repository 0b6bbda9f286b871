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

``stream``: the Cython element-wise passes write their output with non-temporal stores, which
skip the read-for-ownership of every output line and leave the cache to the inputs, when the
arrays one call touches (forward: x and y; backward: x, dy and dx) are larger than the
last-level cache together. Below that, plain stores leave the output in cache for the next call
or layer (measured on (4096, 1024) and (64, 64, 32, 32) float32: the backward's 48 MiB is
10-13% faster streamed, the forward's 32 MiB not consistently). Contiguous runs shorter than
``STREAM_MIN_RUN_BYTES`` are not worth it. The Numba kernels, and the Cython kernels' baseline
variant (CPUs without AVX2), ignore the flag.

``row_block``: the channels-last sums sweep 4 rows at a time when their input fits in the
last-level cache (the float64 partial sums stay in registers: (4096, 1024) backward sums 0.84 vs
1.08 ms one row at a time), one row at a time when it streams from memory (sweeping several rows
at once reads DRAM at about 2/3 of the speed of one: (100352, 256) backward sums 10.3 vs 6.7 ms,
read floor 6.5 ms; C harness, float32, 2 threads). Both backends honor it; it changes the
summation order, so results are deterministic for a given shape, thread count and cache size.
"""

from __future__ import annotations

import glob
from typing import NamedTuple

MIN_RUN = 16  # shortest contiguous run (values) worth a per-channel strided walk
MAX_RUNS = 16  # most runs per channel slab for the per-channel strategy
MIN_PARALLEL = 1 << 15  # below this many values, waking threads costs more than it saves
STREAM_MIN_RUN_BYTES = 256
DEFAULT_CACHE_BYTES = 32 << 20


def parse_cache_size(text: str) -> int | None:
    """Bytes in a sysfs cache size such as ``"32768K"`` or ``"1M"``; None if unreadable."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    return int(digits) * scale if digits.isdigit() else None


def _last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), or ``DEFAULT_CACHE_BYTES`` if unknown."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                size = parse_cache_size(f.read())
        except OSError:
            continue
        if size:
            sizes.append(size)
    return max(sizes, default=DEFAULT_CACHE_BYTES)


CACHE_BYTES = _last_level_cache_bytes()

class Plan(NamedTuple):
    """Work split for one call: strategy flag, chunk count for ``chunked``, threads to use,
    whether the element-wise pass streams its output past the cache (``stream``), and the rows
    per sweep of the channels-last sums (``row_block``)."""

    per_channel: bool
    n_chunks: int
    n_threads: int
    stream: bool = False
    row_block: int = 4


def make_plan(outer: int, channels: int, inner: int, n_threads: int, itemsize: int,
              n_arrays: int = 2) -> Plan:
    """Choose the strategy for an array viewed as ``(outer, channels, inner)`` of ``itemsize``-byte
    values, for a call that touches ``n_arrays`` arrays of that size (forward 2, backward 3)."""
    if outer * channels * inner < MIN_PARALLEL:
        n_threads = 1
    per_channel = inner >= MIN_RUN and outer <= MAX_RUNS and channels >= 2 * n_threads
    # a few chunks per thread balance the load; more only add partial-sum traffic (measured)
    n_chunks = max(1, min(outer, max(8, 2 * n_threads)))
    run_bytes = (channels if inner == 1 else inner) * itemsize  # contiguous output per store run
    nbytes = outer * channels * inner * itemsize
    stream = run_bytes >= STREAM_MIN_RUN_BYTES and n_arrays * nbytes > CACHE_BYTES
    # the sums pass reads every array of the call but the output
    row_block = 1 if (n_arrays - 1) * nbytes > CACHE_BYTES else 4
    return Plan(per_channel, n_chunks, n_threads, stream, row_block)
