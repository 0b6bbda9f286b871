"""Spectrum-aware initializers of recurrent matrices (public as ``fastopt.init``)."""

from __future__ import annotations

import numpy as np

from .._validate import (
    as_float_array,
    as_generator,
    check_dtype_arg,
    check_int,
    check_real,
    check_shape,
    reject_masked,
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
    shape = check_shape(shape, "shape", min_ndim=2)
    gain = check_real(gain, "gain", nonnegative=True)
    dtype = check_dtype_arg(dtype)
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
        If ``W`` has spectral radius 0 (nilpotent: no scaling reaches ``rho > 0``), or if the
        scaled matrix is not representable in ``W``'s dtype (it would overflow, or its largest
        entry would fall below the smallest normal number and lose its precision).
    TypeError
        ``W`` masked, complex or of an unsupported dtype; ``rho`` not a real number.

    The factor ``rho / radius`` is applied as a mantissa and a power of two (``np.ldexp``), so
    it neither under- nor overflows on its own: ``(np.eye(3) * 1e30).astype(np.float32)``
    scales to ``1e-30`` exactly.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.init import scale_to_spectral_radius
    >>> W = np.array([[0.0, 2.0], [-2.0, 0.0]])
    >>> scale_to_spectral_radius(W, 0.9)
    array([[ 0. ,  0.9],
           [-0.9,  0. ]])
    """
    reject_masked(W, "W")
    arr = as_float_array(W, "W", allow_int=True)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"W: expected a square 2-D matrix, got shape {arr.shape}")
    rho = check_real(rho, "rho", nonnegative=True)
    radius = spectral_radius(arr).value
    if radius == 0:
        if rho == 0:
            return arr.copy()
        raise ValueError("W: has spectral radius 0 (nilpotent); it cannot be scaled to rho > 0")
    if rho == 0:
        return np.zeros_like(arr)
    # rho / radius as mantissa * 2**ex: the quotient itself may under- or overflow
    m_rho, e_rho = np.frexp(rho)
    m_rad, e_rad = np.frexp(radius)
    with np.errstate(over="ignore", under="ignore"):
        out = np.ldexp(arr.astype(np.float64) * (m_rho / m_rad), int(e_rho) - int(e_rad))
        out = out.astype(arr.dtype)
    info = np.finfo(arr.dtype)
    amax = float(np.abs(out).max())
    if not np.isfinite(amax):
        raise ValueError(
            f"rho: {rho:g} times W / {radius:.6g} (its spectral radius) overflows {arr.dtype}"
            f" (largest finite {info.max:.3g}); compute in float64 or choose a smaller rho"
        )
    if amax < info.tiny:
        raise ValueError(
            f"rho: {rho:g} times W / {radius:.6g} (its spectral radius) underflows {arr.dtype}"
            f" (its largest entry would be {amax:.3g} < {info.tiny:.3g}, the smallest normal "
            f"number); compute in float64 or choose a larger rho"
        )
    return out


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
    scale = check_real(scale, "scale")
    dtype = check_dtype_arg(dtype)
    return (scale * np.eye(n)).astype(dtype)
