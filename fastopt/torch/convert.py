"""Switch a model's batch norms to fastopt's modules and back, keeping their state."""

from __future__ import annotations

import torch

from . import modules

__all__ = ["convert", "revert"]

_TO_FASTOPT = {
    torch.nn.BatchNorm1d: modules.BatchNorm1d,
    torch.nn.BatchNorm2d: modules.BatchNorm2d,
    torch.nn.BatchNorm3d: modules.BatchNorm3d,
}
_TO_TORCH = {fast: plain for plain, fast in _TO_FASTOPT.items()}


def _swap(module: torch.nn.Module, cls: type, **kwargs) -> torch.nn.Module:
    """A ``cls`` module sharing ``module``'s parameters and buffers (as
    ``SyncBatchNorm.convert_sync_batchnorm`` does: an optimizer built before keeps working)."""
    new = cls(module.num_features, module.eps, module.momentum, module.affine,
              module.track_running_stats, device="meta", **kwargs)
    new.weight, new.bias = module.weight, module.bias
    new.running_mean, new.running_var = module.running_mean, module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    new.training = module.training
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def _walk(module: torch.nn.Module, table: dict, kwargs: dict) -> torch.nn.Module:
    cls = table.get(type(module))
    out = _swap(module, cls, **kwargs) if cls is not None else module
    for name, child in module.named_children():
        out.add_module(name, _walk(child, table, kwargs))
    return out


def convert(model: torch.nn.Module, *, backend: str = "auto") -> torch.nn.Module:
    """Replace every ``torch.nn.BatchNorm1d``/``2d``/``3d`` in ``model`` by fastopt's module.

    Works like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: children are replaced in
    place and the (possibly new) root is returned; the new modules share the old ones'
    parameters and buffers (so an optimizer created before still trains them) and keep their
    ``training`` flag. Only modules of exactly these torch types are replaced (subclasses,
    ``SyncBatchNorm`` and fastopt's own modules are left alone). The state dict keys do not
    change: a state dict saved before or after loads into either model.

    Parameters
    ----------
    model : torch.nn.Module
    backend : {"auto", "cython", "numba", "numpy"}
        fastopt's kernel implementation for the new modules.

    Returns
    -------
    torch.nn.Module
        ``model`` itself, or the new module when ``model`` is a batch norm.

    Examples
    --------
    >>> import torch
    >>> import fastopt.torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    >>> net = fastopt.torch.convert(net)
    >>> type(net[1]).__module__, isinstance(net[1], torch.nn.BatchNorm2d)
    ('fastopt.torch.modules', True)
    >>> type(fastopt.torch.revert(net)[1]) is torch.nn.BatchNorm2d
    True
    """
    return _walk(model, _TO_FASTOPT, {"backend": backend})


def revert(model: torch.nn.Module) -> torch.nn.Module:
    """The inverse of :func:`convert`: fastopt's ``BatchNorm1d``/``2d``/``3d`` back to torch's.

    Examples
    --------
    >>> import torch
    >>> import fastopt.torch
    >>> bn = fastopt.torch.revert(fastopt.torch.BatchNorm1d(3))
    >>> type(bn) is torch.nn.BatchNorm1d
    True
    """
    return _walk(model, _TO_TORCH, {})
