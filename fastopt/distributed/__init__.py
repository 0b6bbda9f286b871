"""Full-dataset curvature on a Dask cluster (optional extra ``fastopt[dask]``).

:class:`ShardedObjective` wraps a fastopt curvature model and a dataset sharded across the
workers of ``dask.distributed``: its ``loss``, ``loss_and_grad``, ``hvp`` and ``gnvp`` are the
averages over the whole dataset, combined in a fixed tree order (bit-identical on any number of
workers), and every curvature diagnostic accepts it in place of ``(model, X, y)``. See
docs/distributed.md. Importing this package imports neither dask nor distributed.
"""

from ._progress import ProgressInfo
from .sharded import ShardedObjective

__all__ = ["ShardedObjective", "ProgressInfo"]
