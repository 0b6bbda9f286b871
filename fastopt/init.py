"""Spectrum-aware initializers of recurrent matrices (``fastopt.init``).

See :mod:`fastopt.spectral.init`: ``orthogonal``, ``scale_to_spectral_radius``,
``identity_recurrent``.
"""

from .spectral.init import identity_recurrent, orthogonal, scale_to_spectral_radius

__all__ = ["identity_recurrent", "orthogonal", "scale_to_spectral_radius"]
