"""Spectra of (recurrent) weight matrices: spectral norm and radius, gradient-flow regime,
spectral-norm state for training, Lanczos for symmetric operators (see ``docs/spectral.md``)."""

from .api import RadiusResult, SpectralResult, spectral_norm, spectral_radius
from .lanczos import LanczosResult, lanczos_extremes

__all__ = [
    "LanczosResult",
    "RadiusResult",
    "SpectralResult",
    "lanczos_extremes",
    "spectral_norm",
    "spectral_radius",
]
