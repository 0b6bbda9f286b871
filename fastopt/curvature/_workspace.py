"""Per-thread scratch buffers of the curvature models (MLP, Network, ElmanRNN)."""

from __future__ import annotations

import numpy as np


class ThreadWorkspace:
    """Mixin: scratch buffers each calling thread keeps between calls, so repeated products do
    not page-fault fresh memory. The model creates ``self._tls = threading.local()`` in
    ``__init__`` and ``__setstate__`` (thread-local state does not pickle)."""

    def _workspace(self) -> dict[str, np.ndarray]:
        ws = getattr(self._tls, "buffers", None)
        if ws is None:
            ws = self._tls.buffers = {}
        return ws

    def clear_workspace(self) -> None:
        """Free the scratch buffers this thread keeps between calls.

        Examples
        --------
        >>> import numpy as np
        >>> from fastopt import MLP
        >>> net = MLP([3, 4, 2])
        >>> _ = net.loss_and_grad(net.init(0), np.ones((5, 3)), np.array([0, 1, 1, 0, 1]))
        >>> net.clear_workspace()   # the next call allocates its buffers again
        """
        self._tls.buffers = {}
