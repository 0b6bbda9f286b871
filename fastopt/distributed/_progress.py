"""Progress of the distributed products: a callback and, on a terminal, a tqdm bar."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NamedTuple


class ProgressInfo(NamedTuple):
    """What a :class:`~fastopt.distributed.ShardedObjective` reports after each distributed call.

    Attributes
    ----------
    call : str
        ``"loss"``, ``"loss_and_grad"``, ``"hvp"`` or ``"gnvp"``.
    calls : int
        Distributed calls made so far by this objective (this one included).
    products : int
        Curvature products (Hessian- or Gauss-Newton-vector, one per direction) so far; one
        Lanczos iteration of ``hessian_extremes`` or ``spectral_density`` is one product.
    directions : int
        Directions in this call (0 for the loss and the gradient).
    seconds : float
        Wall time of this call on the client.
    """

    call: str
    calls: int
    products: int
    directions: int
    seconds: float


def _wants_bar(progress: object) -> bool:
    if progress is True:
        return True
    if progress is None:  # automatic: only where someone watches, a terminal or a notebook
        stream = sys.stderr
        if getattr(stream, "isatty", None) and stream.isatty():
            return True
        return "ipykernel" in sys.modules
    return False


class Reporter:
    """Counts calls and products; forwards them to the callback and the bar (if any)."""

    def __init__(self, progress: bool | Callable[[ProgressInfo], object] | None) -> None:
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise TypeError(
                "progress: expected None (a bar on a terminal), True, False or a callable "
                f"taking a ProgressInfo, got {type(progress).__name__}"
            )
        self.callback = progress if callable(progress) else None
        self.calls = 0
        self.products = 0
        self._bar = None
        if _wants_bar(progress):
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is optional: the callback still works
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(desc="fastopt.distributed", unit=" products", leave=False)

    def report(self, call: str, directions: int, seconds: float) -> None:
        self.calls += 1
        self.products += directions
        if self._bar is not None:
            self._bar.update(directions)
            self._bar.set_postfix_str(f"{self.calls} calls, last {call} {seconds:.2f} s",
                                      refresh=False)
        if self.callback is not None:
            self.callback(ProgressInfo(call, self.calls, self.products, directions, seconds))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
