"""Spectra of (recurrent) weight matrices."""

from .lanczos import LanczosResult, lanczos_extremes

__all__ = ["LanczosResult", "lanczos_extremes"]
