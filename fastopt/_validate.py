"""The one place for input checks and coercion (dtype, shape, axis, out=, finiteness).

Every public function validates through these helpers before any kernel runs, so that a rejected
call raises ``TypeError``/``ValueError`` naming the argument and changes nothing.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _conversion_hint(name: str, dtype: np.dtype) -> str:
    if dtype.kind in "biu":
        return f"convert with {name}.astype(np.float32) or {name}.astype(np.float64)"
    if dtype == np.float16:
        return f"float16 is not supported: compute in float32 with {name}.astype(np.float32)"
    if dtype.kind == "c":
        return f"complex input is not supported: pass {name}.real or np.abs({name}) explicitly"
    return f"convert with {name}.astype(np.float32) or {name}.astype(np.float64)"


def as_float_array(
    x: object,
    name: str,
    *,
    allow_int: bool = False,
    dtype: np.dtype | None = None,
    contiguous: bool = True,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32/float64 ndarray, without copying when it already is.

    Parameters
    ----------
    x : array_like
        Input; anything ``np.asarray`` takes.
    name : str
        Argument name used in error messages.
    allow_int : bool
        If true, integer and bool input is converted to float64 instead of rejected.
    dtype : numpy dtype, optional
        Required dtype; a float input of another float dtype raises ``ValueError``.
    contiguous : bool
        Copy non-contiguous input into a C-contiguous array (documented single copy).
    """
    arr = np.asarray(x)
    if arr.dtype.kind in "biu" and allow_int:
        arr = arr.astype(np.float64)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: dtype {arr.dtype} is not supported (expected float32 or float64); "
            + _conversion_hint(name, arr.dtype)
        )
    if dtype is not None and arr.dtype != dtype:
        raise ValueError(f"{name}: dtype {arr.dtype} does not match the expected {np.dtype(dtype)}")
    if contiguous and not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def as_device_array(x: object, name: str):
    """Validate a CUDA device array (numba, CuPy, torch, or the CUDA simulator's) without
    copying it to the host: float32/float64 and C-contiguous. Returns a numba device array."""
    from numba import cuda

    arr = x if hasattr(x, "copy_to_host") else cuda.as_cuda_array(x)
    dtype = np.dtype(arr.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: dtype {dtype} is not supported (expected float32 or float64); "
            + _conversion_hint(name, dtype)
        )
    if not arr.is_c_contiguous():
        raise ValueError(f"{name}: device arrays must be C-contiguous")
    return arr


def as_param(
    x: object, name: str, length: int, dtype: np.dtype, *, writable: bool = False
) -> np.ndarray | None:
    """Validate a per-channel vector (weight, bias, running statistics); ``None`` passes through.

    With ``writable=True`` the array is updated in place by the caller, so it must be an ndarray
    of exactly ``dtype``, shape ``(length,)``, contiguous and writeable (no silent copy).
    """
    if x is None:
        return None
    if writable:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name}: must be a numpy array to be updated in place, got "
                            f"{type(x).__name__}")
        if x.shape != (length,):
            raise ValueError(f"{name}: expected shape ({length},), got {x.shape}")
        if x.dtype != dtype:
            raise ValueError(f"{name}: dtype {x.dtype} does not match x's dtype {np.dtype(dtype)}")
        if not x.flags.c_contiguous or not x.flags.writeable:
            raise ValueError(f"{name}: must be contiguous and writeable to be updated in place")
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "f" or arr.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: dtype {arr.dtype} is not supported; expected {np.dtype(dtype)}")
    if arr.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {arr.shape}")
    if arr.dtype != dtype:
        raise ValueError(f"{name}: dtype {arr.dtype} does not match x's dtype {np.dtype(dtype)}")
    return np.ascontiguousarray(arr)


def normalize_axis(axis: object, ndim: int, name: str = "axis") -> int:
    """Map a possibly negative ``axis`` into ``[0, ndim)`` or raise ``ValueError``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name}: must be an integer, got {type(axis).__name__}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: {axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def check_out(
    out: object, shape: Sequence[int], dtype: np.dtype, name: str = "out", *, device: bool = False
) -> np.ndarray | None:
    """Validate an ``out=`` array: exact shape and dtype, C-contiguous, writeable.

    With ``device=True`` (the inputs are CUDA device arrays) ``out`` must be a device array too.
    """
    if out is None:
        return None
    if device:
        if not hasattr(out, "copy_to_host") and not hasattr(out, "__cuda_array_interface__"):
            raise TypeError(f"{name}: must be a device array when the inputs are")
        out = as_device_array(out, name)
        if out.shape != tuple(shape) or np.dtype(out.dtype) != dtype:
            raise ValueError(f"{name}: expected shape {tuple(shape)} and dtype {np.dtype(dtype)}, "
                             f"got {out.shape} and {out.dtype}")
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name}: is read-only")
    return out


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is finite and > 0 (>= 0)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: must be a real number, got {type(value).__name__}") from None
    ok = (v >= 0 if allow_zero else v > 0) and np.isfinite(v)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be finite and {bound}, got {value}")
    return v


def check_int(value: object, name: str, *, minimum: int | None = 1) -> int:
    """Return ``value`` as an int, raising unless it is an integer >= ``minimum`` (None: any)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def check_fraction(value: object, name: str) -> float:
    """Return ``value`` as a float, raising unless it is a real number in [0, 1]."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: must be a real number, got {type(value).__name__}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: must be in [0, 1], got {value}")
    return v


def check_float_dtype(dtype: object, name: str = "dtype") -> np.dtype:
    """Return ``dtype`` as a numpy dtype, raising ``TypeError`` unless float32 or float64."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {dt} is not supported (expected float32 or float64)")
    return dt


def as_channel_vector(value: object, name: str, length: int) -> np.ndarray:
    """A float32/float64 vector of shape ``(length,)`` (saved statistics), returned as float64."""
    arr = np.asarray(value)
    if arr.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: dtype {arr.dtype} is not supported; expected float32/float64")
    if arr.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {arr.shape}")
    return arr.astype(np.float64)


def as_generator(value: object, name: str) -> np.random.Generator:
    """A numpy Generator from None, an integer seed or a Generator (returned as is)."""
    if isinstance(value, np.random.Generator):
        return value
    if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        return np.random.default_rng(value)
    raise TypeError(f"{name}: must be None, an integer seed or a numpy Generator, got {value!r}")


def check_all_finite(x: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or Inf)")


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]


def reject_unsupported_subclass(value: object, name: str) -> None:
    """Refuse array subclasses whose meaning the kernels would drop: masked arrays (the mask
    would be ignored) and ``np.matrix`` (always 2-D, so it cannot take the kernels' views).
    ``np.memmap`` and other plain subclasses pass."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name}: masked arrays are not supported (the mask would be ignored); pass "
            f"{name}.filled(value) or np.asarray({name}) to use the data as it is"
        )
    if isinstance(value, np.matrix):
        raise TypeError(f"{name}: np.matrix is not supported; pass np.asarray({name})")
