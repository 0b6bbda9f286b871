"""The fixed-tree reduction of per-shard results.

Shard results are combined pairwise in shard order, ``((s0 + s1) + (s2 + s3)) + ...``, the odd
one out of a level carried up unchanged. The tree depends only on the number of shards, never on
which worker computed what or when, so the float64 sums are bit-identical for any cluster; the
local reference (:func:`tree_reduce` on plain values) and the distributed reduction (on futures)
run the same code and build the same tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np


class ShardSum(NamedTuple):
    """A partial sum over shards: ``loss`` = sum of shard loss * shard size (float64),
    ``vector`` = sum of shard result * shard size (float64 ndarray) or None (loss only)."""

    loss: float
    vector: np.ndarray | None


def combine(a: ShardSum, b: ShardSum) -> ShardSum:
    """``a + b`` of two partial sums, in float64 (the one operation of every tree node).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.distributed._reduce import ShardSum, combine
    >>> combine(ShardSum(1.0, np.array([1.0, 2.0])), ShardSum(2.0, np.array([3.0, 4.0])))
    ShardSum(loss=3.0, vector=array([4., 6.]))
    """
    vector = None if a.vector is None else np.add(a.vector, b.vector)
    return ShardSum(a.loss + b.loss, vector)


def tree_reduce(items: Sequence[Any], pair: Callable[[Any, Any, int, int], Any]) -> Any:
    """Reduce ``items`` by the fixed pairwise tree; ``pair(left, right, level, index)`` makes a
    node (the sum itself locally, a future of it on a cluster).

    Examples
    --------
    >>> from fastopt.distributed._reduce import tree_reduce
    >>> tree_reduce(list("abcde"), lambda a, b, level, i: f"({a}{b})")
    '(((ab)(cd))e)'
    """
    level = list(items)
    if not level:
        raise ValueError("items: nothing to reduce (no shards)")
    depth = 0
    while len(level) > 1:
        nxt = [pair(level[j], level[j + 1], depth, j // 2) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        depth += 1
    return level[0]
