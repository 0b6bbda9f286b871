"""Result types of the spectra family (one module, so every solver returns the same types)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["LanczosResult", "RadiusResult", "SpectralResult"]


class SpectralResult(NamedTuple):
    """Result of :func:`spectral_norm`.

    Attributes
    ----------
    value : float or ndarray
        Largest singular value sigma_1 (float64; shape ``(B,)`` for a batch).
    u, v : ndarray or None
        Left and right singular vectors (unit norm, ``W v = value * u``); ``None`` unless
        ``return_vectors=True``. Shapes ``(n,)``/``(m,)`` or ``(B, n)``/``(B, m)``.
    iterations : int or ndarray
        Passes over ``W`` (one fused ``W^T W v`` pass each).
    converged : bool or ndarray
        Whether the relative residual reached ``tol``.
    residual : float or ndarray
        Relative residual ``||W^T u - value v|| / value`` of the returned triplet as estimated by
        the Lanczos recurrence (0 for the zero matrix or an exhausted Krylov space).
    """

    value: float | np.ndarray
    u: np.ndarray | None
    v: np.ndarray | None
    iterations: int | np.ndarray
    converged: bool | np.ndarray
    residual: float | np.ndarray


class RadiusResult(NamedTuple):
    """Result of :func:`spectral_radius`.

    Attributes
    ----------
    value : float or ndarray
        Spectral radius ``max |lambda|`` (float64; shape ``(B,)`` for a batch).
    eigenvalue : complex or ndarray
        A dominant eigenvalue (complex128; of a conjugate pair the one with positive imaginary
        part). NaN when the radius was certified by the singular-value bracket
        ``sigma_min <= |lambda| <= sigma_max`` (then every eigenvalue is dominant to ``tol``).
    iterations : int or ndarray
        Matrix-vector products spent (0 when LAPACK answered directly).
    converged : bool or ndarray
        Whether ``value`` is accurate to ``tol`` (relative).
    """

    value: float | np.ndarray
    eigenvalue: complex | np.ndarray
    iterations: int | np.ndarray
    converged: bool | np.ndarray

class LanczosResult(NamedTuple):
    """Extreme eigenpairs found by :func:`lanczos_extremes`.

    ``largest`` is sorted in descending order, ``smallest`` in ascending order; either is ``None``
    when ``which`` did not ask for it, and so are the matching ``*_vectors`` (shape ``(n, k)``).
    ``residual`` is the largest ``||A y - theta y||`` over the returned pairs (unit vectors y),
    ``iterations`` the number of operator applications.
    """

    largest: np.ndarray | None
    smallest: np.ndarray | None
    largest_vectors: np.ndarray | None
    smallest_vectors: np.ndarray | None
    iterations: int
    converged: bool
    residual: float
