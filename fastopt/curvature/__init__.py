"""Curvature: exact Hessian-vector products for MLP losses and the diagnostics built on them."""

from .mlp import MLP

__all__ = ["MLP"]
