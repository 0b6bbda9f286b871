"""Curvature: exact Hessian-vector products for MLP and layered-network losses, the objective
protocol and the diagnostics built on them."""

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
from .network import Network
from .objective import BoundObjective, Objective
from .objective import bind as bind  # fastopt.curvature.bind; too generic a top-level name
from .rnn import ElmanRNN

__all__ = [
    "MLP",
    "Network",
    "ElmanRNN",
    "Objective",
    "BoundObjective",
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
