"""Spectra of (recurrent) weight matrices: spectral norm and radius, gradient-flow regime,
spectral-norm state for training, Lanczos for symmetric operators (see ``docs/spectral.md``)."""

# make ``import fastopt; fastopt.init.orthogonal(...)`` work (the module is fastopt/init.py)
from .. import init as _init  # noqa: F401
from .api import RadiusResult, SpectralResult, spectral_norm, spectral_radius
from .lanczos import LanczosResult, lanczos_extremes
from .training import GradientFlow, SpectralNormState, gradient_flow

__all__ = [
    "GradientFlow",
    "LanczosResult",
    "RadiusResult",
    "SpectralNormState",
    "SpectralResult",
    "gradient_flow",
    "lanczos_extremes",
    "spectral_norm",
    "spectral_radius",
]
