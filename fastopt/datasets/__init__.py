"""Small data sets shipped inside fastopt, so examples, the demo and tests run with no network."""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["load_digits"]


def load_digits(*, dtype: type | np.dtype = np.float64, images: bool = False,
                scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits: 1,797 8x8 grey images of the digits 0-9.

    Parameters
    ----------
    dtype : float dtype
        dtype of the returned pixels.
    images : bool
        Return X as (1797, 8, 8) instead of (1797, 64).
    scale : bool
        Divide the pixel counts (integers 0-16) by 16, so X lies in [0, 1].

    Returns
    -------
    X : ndarray, (1797, 64) or (1797, 8, 8)
    y : ndarray of int64, (1797,), the digit of each image.

    Source and license (CC BY 4.0): ``fastopt/datasets/DIGITS_LICENSE.txt``.

    Examples
    --------
    >>> from fastopt.datasets import load_digits
    >>> X, y = load_digits()
    >>> X.shape, y.shape, int(y.max())
    ((1797, 64), (1797,), 9)
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
    with resources.files(__name__).joinpath("digits.npz").open("rb") as fh:
        data = np.load(fh)
        pixels, target = data["images"], data["target"]
    X = pixels.astype(dtype)
    if scale:
        X /= dtype.type(16)
    if not images:
        X = X.reshape(len(X), 64)
    return X, target.astype(np.int64)
