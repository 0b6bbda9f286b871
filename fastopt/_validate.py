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


def reject_masked(x: object, name: str) -> None:
    """Raise ``TypeError`` for a masked array: ``np.asarray`` would drop its mask silently."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name}: masked arrays are not supported (the mask would be ignored); pass "
            f"{name}.filled(value) or {name}.compressed() explicitly"
        )


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
    reject_masked(x, name)
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
    reject_masked(x, name)
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


# --- checks added for the spectra family; generic, usable by every family -------


def check_real(
    value: object, name: str, *, positive: bool = False, nonnegative: bool = False
) -> float:
    """Return ``value`` as a finite float; ``TypeError`` unless it is a real number (strings,
    bools, complex and arrays of more than one value are refused), ``ValueError`` unless finite
    (and > 0 with ``positive``, >= 0 with ``nonnegative``)."""
    ok_type = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok_type and isinstance(value, np.ndarray) and value.ndim == 0:
        ok_type = value.dtype.kind in "iuf"
    if not ok_type:
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    v = float(value)  # type: ignore[arg-type]
    if not np.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name}: must be >= 0, got {value!r}")
    return v


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` as a bool; ``TypeError`` unless it is a bool (or numpy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_shape(value: object, name: str, *, min_ndim: int = 1) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ints >= 1 with at least ``min_ndim`` entries."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        hint = f" (for a square matrix write ({value}, {value}))" if isinstance(
            value, numbers.Integral) and not isinstance(value, bool) else ""
        raise TypeError(
            f"{name}: expected a tuple of at least {min_ndim} positive integers, got "
            f"{type(value).__name__} {value!r}{hint}"
        )
    dims = []
    for d in value:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{name}: expected a tuple of integers, got {tuple(value)!r}")
        if d < 1:
            raise ValueError(f"{name}: every dimension must be >= 1, got {tuple(value)!r}")
        dims.append(int(d))
    if len(dims) < min_ndim:
        raise ValueError(f"{name}: needs at least {min_ndim} dimensions, got {tuple(dims)!r}")
    return tuple(dims)


def check_dtype_arg(dtype: object, name: str = "dtype") -> np.dtype:
    """:func:`check_float_dtype` with a clear ``TypeError`` for what numpy cannot read as a
    dtype (and for ``None``, which numpy would read as float64)."""
    if dtype is None:
        raise TypeError(f"{name}: expected np.float32 or np.float64, got None")
    try:
        np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: expected np.float32 or np.float64, got {dtype!r}") from None
    return check_float_dtype(dtype, name)


def as_matrix_stack(
    W: object, name: str = "W", *, square: bool = False
) -> tuple[np.ndarray, bool]:
    """Validate a matrix or a stack of matrices: return it as a C-contiguous float32/float64
    ``(B, n, m)`` array (integers and bools in float64) and whether it was batched (3-D)."""
    reject_masked(W, name)
    arr = as_float_array(W, name, allow_int=True)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2-D matrix (n, m) or a 3-D batch (B, n, m), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: is empty (shape {arr.shape})")
    shape = tuple(arr.shape)  # the simulator's shapes do not take negative indices
    if square and shape[-1] != shape[-2]:
        raise ValueError(f"{name}: must be square, got shape {arr.shape}")
    check_all_finite(arr, name)
    batched = arr.ndim == 3
    return (arr if batched else arr[None]), batched


def check_operator_output(w: object, name: str, n: int, iteration: int) -> np.ndarray:
    """The result of a caller's operator (``matvec(v)``) as an ndarray of shape ``(n,)``, real
    and finite; ``ValueError``/``TypeError`` naming the operator and the iteration otherwise."""
    arr = np.asarray(w)
    if arr.shape != (n,):
        raise ValueError(f"{name}: returned shape {arr.shape}, expected ({n},)")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: returned dtype {arr.dtype} at iteration {iteration}, expected "
                        f"a real array")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: returned non-finite values at iteration {iteration}")
    return arr


def as_start_vectors(v0: object, name: str, rows: int, m: int) -> np.ndarray:
    """Validate a starting vector of length ``m`` (or ``rows`` of them, shape ``(rows, m)``):
    real, finite, nonzero. Returned as float64 of shape ``(rows, m)``; any finite nonzero scale
    is accepted (normalize with :func:`fastopt.spectral._lanczos_core.unit_rows`)."""
    reject_masked(v0, name)
    arr = np.asarray(v0)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: dtype {arr.dtype} is not supported (expected a real array)")
    arr = arr.astype(np.float64)
    if arr.shape == (m,):
        arr = np.broadcast_to(arr, (rows, m))
    elif arr.shape != (rows, m):
        want = f"({m},)" if rows == 1 else f"({m},) or ({rows}, {m})"
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains non-finite values")
    if not np.any(arr != 0, axis=1).all():
        raise ValueError(f"{name}: must be nonzero (for every matrix of the batch)")
    return np.ascontiguousarray(arr)


def reject_unsupported_subclass(value: object, name: str) -> None:
    """Refuse array subclasses whose meaning the kernels would drop: masked arrays (the mask
    would be ignored) and ``np.matrix`` (always 2-D, so it cannot take the kernels' views).
    ``np.memmap`` and other plain subclasses pass."""
    reject_masked(value, name)
    if isinstance(value, np.matrix):
        raise TypeError(f"{name}: np.matrix is not supported; pass np.asarray({name})")


def as_model_array(x: object, name: str, dtype: np.dtype, owner: object, *,
                   contiguous: bool = True) -> np.ndarray:
    """``x`` as a float array of a model's ``dtype`` (the curvature models' inputs).

    Masked arrays and ``np.matrix`` are refused (:func:`reject_unsupported_subclass`); another
    float dtype raises ``ValueError`` naming the argument, the model (``repr(owner)``) and the
    conversion. Non-contiguous input is copied once unless ``contiguous=False``.
    """
    reject_unsupported_subclass(x, name)
    arr = as_float_array(x, name, contiguous=contiguous)
    if arr.dtype != dtype:
        raise ValueError(
            f"{name}: dtype {arr.dtype} does not match the model's dtype {np.dtype(dtype)} "
            f"({owner!r}); convert with {name}.astype(np.{np.dtype(dtype)})"
        )
    return arr


def as_device_stack(arr, name: str = "W", *, square: bool = False):
    """Validate a numba device array as a matrix or a stack of matrices without copying it to
    the host: float32/float64, C-contiguous, 2-D or 3-D, non-empty (square if asked). Returns
    ``(stack (B, n, m), batched)``; finiteness is checked on the device by the caller."""
    arr = as_device_array(arr, name)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D matrix or a 3-D stack (B, n, m), got "
                         f"{arr.ndim}-D with shape {tuple(arr.shape)}")
    if 0 in arr.shape:
        raise ValueError(f"{name}: empty matrix (shape {tuple(arr.shape)})")
    shape = tuple(arr.shape)  # the simulator's shapes do not take negative indices
    if square and shape[-1] != shape[-2]:
        raise ValueError(f"{name}: expected square matrices, got shape {tuple(arr.shape)}")
    batched = arr.ndim == 3
    return (arr if batched else arr.reshape(1, *arr.shape)), batched
