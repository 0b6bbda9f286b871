"""fastopt as a PyTorch backend (optional; ``import fastopt`` never imports torch).

- ``torch.ops.fastopt.batch_norm`` / ``torch.ops.fastopt.batch_norm_backward``: registered
  custom ops (``torch.library``) with fake and autograd implementations, so ``torch.compile``
  (``fullgraph=True``) and ``torch.library.opcheck`` accept them; double backward is exact.
- :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d`: drop-in subclasses of
  torch's classes on fastopt's kernels; :func:`convert` / :func:`revert` switch a whole model.
- :func:`to_mlp` / :func:`from_theta`: fastopt's exact curvature of a torch ``nn.Sequential``
  MLP; :func:`mlp_hvp`: PyTorch's double-backward HVP of a :class:`fastopt.MLP`.

See docs/torch.md.

Examples
--------
>>> import torch
>>> import fastopt.torch
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
...                             torch.nn.ReLU())
>>> model = fastopt.torch.convert(model)
>>> model(torch.randn(8, 1, 6, 6)).sum().backward()
>>> model[1].weight.grad.shape
torch.Size([4])
"""

from __future__ import annotations

from . import _ops  # noqa: F401  (registers torch.ops.fastopt.*)
from .convert import convert, revert
from .curvature import SUPPORTED_LAYERS, from_theta, mlp_hvp, to_mlp
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    FallbackWarning,
    FastBatchNorm,
    batch_norm,
)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FallbackWarning",
    "FastBatchNorm",
    "SUPPORTED_LAYERS",
    "batch_norm",
    "convert",
    "from_theta",
    "mlp_hvp",
    "revert",
    "to_mlp",
]
