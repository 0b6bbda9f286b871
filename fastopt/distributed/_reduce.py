"""The fixed-tree reduction of per-shard results.

Shard results are combined in shard order by a tree of fan-in ``FAN_IN`` (8): each node sums
up to 8 consecutive partial sums left to right, ``(((s0 + s1) + s2) + ... + s7)``, a lone last
one is carried up a level unchanged. The depth is ``ceil(log8(shards))`` (each level is one
more task hop per call). The tree depends only on the number of shards, never on
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


FAN_IN = 8


def combine(*parts: ShardSum) -> ShardSum:
    """The sum of partial sums, left to right in float64 (the one operation of every node).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.distributed._reduce import ShardSum, combine
    >>> combine(ShardSum(1.0, np.array([1.0, 2.0])), ShardSum(2.0, np.array([3.0, 4.0])))
    ShardSum(loss=3.0, vector=array([4., 6.]))
    """
    loss = parts[0].loss
    vector = None if parts[0].vector is None else parts[0].vector.copy()
    for p in parts[1:]:
        loss += p.loss
        if vector is not None:
            vector += p.vector
    return ShardSum(loss, vector)


def tree_reduce(items: Sequence[Any], node: Callable[..., Any], fan_in: int = FAN_IN) -> Any:
    """Reduce ``items`` by the fixed tree; ``node(level, index, *children)`` makes a node (the
    sum itself locally, a future of it on a cluster).

    Examples
    --------
    >>> from fastopt.distributed._reduce import tree_reduce
    >>> tree_reduce(list("abcde"), lambda level, i, *c: "(" + "".join(c) + ")", fan_in=2)
    '(((ab)(cd))e)'
    >>> tree_reduce(list("abcdefghij"), lambda level, i, *c: "(" + "".join(c) + ")")
    '((abcdefgh)(ij))'
    """
    level = list(items)
    if not level:
        raise ValueError("items: nothing to reduce (no shards)")
    depth = 0
    while len(level) > 1:
        groups = [level[j:j + fan_in] for j in range(0, len(level), fan_in)]
        level = [g[0] if len(g) == 1 else node(depth, i, *g) for i, g in enumerate(groups)]
        depth += 1
    return level[0]
