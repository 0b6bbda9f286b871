"""Spectrum-aware initializers of recurrent matrices (public as ``fastopt.init``)."""

from __future__ import annotations

import numpy as np

from .._validate import (
    as_float_array,
    as_generator,
    check_float_dtype,
    check_int,
    check_positive,
)
from .api import spectral_radius

__all__ = ["identity_recurrent", "orthogonal", "scale_to_spectral_radius"]


def orthogonal(
    shape: tuple[int, ...],
    gain: float = 1.0,
    rng: object = None,
    *,
    dtype: type | np.dtype = np.float64,
) -> np.ndarray:
    """(Semi-)orthogonal matrix, as ``torch.nn.init.orthogonal_``: every singular value is ``gain``.

    The array is viewed as ``(shape[0], prod(shape[1:]))``; its rows (if fewer) or columns are
    orthonormal, times ``gain``. A square recurrent matrix then has every ``|lambda| = gain``:
    gradients neither vanish nor explode through the linear part.

    Parameters
    ----------
    shape : tuple of int
        At least 2 dimensions, each >= 1.
    gain : float
        Scale (>= 0).
    rng : int or numpy.random.Generator, optional
        Seed or generator (QR of a standard normal matrix, signs fixed by ``diag(R)``).
    dtype : {np.float64, np.float32}
        dtype of the result.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.init import orthogonal
    >>> Q = orthogonal((4, 4), rng=0)
    >>> bool(np.allclose(Q @ Q.T, np.eye(4)))
    True
    >>> orthogonal((2, 5), gain=2.0, rng=1).shape
    (2, 5)
    """
    shape = tuple(check_int(s, "shape", minimum=1) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape: needs at least 2 dimensions, got {shape}")
    gain = check_positive(gain, "gain", allow_zero=True)
    dtype = check_float_dtype(dtype)
    rows, cols = shape[0], int(np.prod(shape[1:]))
    flat = as_generator(rng, "rng").standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


def scale_to_spectral_radius(W: object, rho: float) -> np.ndarray:
    """``W`` rescaled so that its spectral radius is ``rho`` (a new array, ``W`` unchanged).

    Echo-state and recurrent networks are commonly initialized at ``rho`` slightly below 1.
    The radius comes from :func:`fastopt.spectral_radius` (accurate to 1e-6 relative).

    Parameters
    ----------
    W : array_like, shape (n, n)
        Square float32/float64 matrix (integers are computed in float64).
    rho : float
        Target spectral radius (>= 0).

    Raises
    ------
    ValueError
        If ``W`` has spectral radius 0 (nilpotent: no scaling reaches ``rho > 0``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.init import scale_to_spectral_radius
    >>> W = np.array([[0.0, 2.0], [-2.0, 0.0]])
    >>> scale_to_spectral_radius(W, 0.9)
    array([[ 0. ,  0.9],
           [-0.9,  0. ]])
    """
    arr = as_float_array(W, "W", allow_int=True)
    if arr.ndim != 2:
        raise ValueError(f"W: expected a square 2-D matrix, got shape {arr.shape}")
    rho = check_positive(rho, "rho", allow_zero=True)
    radius = spectral_radius(arr).value
    if radius == 0:
        if rho == 0:
            return arr.copy()
        raise ValueError("W: has spectral radius 0 (nilpotent); it cannot be scaled to rho > 0")
    return arr * arr.dtype.type(rho / radius)


def identity_recurrent(
    n: int, scale: float = 1.0, *, dtype: type | np.dtype = np.float64
) -> np.ndarray:
    """``scale * I`` (IRNN, Le et al. 2015): a ReLU RNN that starts by copying its state.

    Examples
    --------
    >>> from fastopt.init import identity_recurrent
    >>> identity_recurrent(2, 0.5)
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    n = check_int(n, "n", minimum=1)
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"scale: must be finite, got {scale}")
    dtype = check_float_dtype(dtype)
    return (scale * np.eye(n)).astype(dtype)
