"""Curvature: exact Hessian-vector products for MLP losses and the diagnostics built on them."""

from .diagnostics import (
    Curvature,
    HessianExtremes,
    IllConditioningMonitor,
    SpectralDensity,
    TraceEstimate,
    curvature_along_gradient,
    hessian_extremes,
    hessian_operator,
    hutchinson_trace,
    hvp_fd,
    spectral_density,
)
from .mlp import MLP
from .rnn import ElmanRNN

__all__ = [
    "MLP",
    "ElmanRNN",
    "hvp_fd",
    "hessian_operator",
    "Curvature",
    "curvature_along_gradient",
    "IllConditioningMonitor",
    "HessianExtremes",
    "hessian_extremes",
    "TraceEstimate",
    "hutchinson_trace",
    "SpectralDensity",
    "spectral_density",
]
