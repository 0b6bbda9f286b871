"""The one place for backend selection: names, availability, the ``"auto"`` policy hook.

Kernel modules are found by convention: ``fastopt.<family>._cython`` (compiled extension),
``fastopt.<family>._numba``, ``fastopt.<family>._cuda`` and ``fastopt.reference.<family>``
(backend ``"numpy"``). They are imported on first use, so ``import fastopt`` compiles nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

BACKENDS = ("auto", "cython", "numba", "numpy", "cuda")

_modules: dict[tuple[str, str], ModuleType] = {}
_failures: dict[tuple[str, str], str] = {}


def _module_name(family: str, backend: str) -> str:
    if backend == "numpy":
        return f"fastopt.reference.{family}"
    return f"fastopt.{family}._{backend}"


def load(family: str, backend: str) -> ModuleType:
    """Import and return the kernel module of ``family`` for ``backend``.

    Raises
    ------
    RuntimeError
        If the backend cannot be loaded (extension not built, numba-cuda not installed, ...).
    """
    key = (family, backend)
    if key in _modules:
        return _modules[key]
    if key in _failures:
        raise RuntimeError(_failures[key])
    try:
        if backend == "cuda":
            from numba import cuda  # noqa: F401  (numba-cuda provides it)

            _require_device(cuda)
        module = importlib.import_module(_module_name(family, backend))
    except ImportError as exc:
        hint = {
            "cython": "the Cython extensions are not built: reinstall with `pip install -e .`",
            "cuda": "install the cuda extra (`pip install -e .[cuda]`) and a CUDA driver, or set "
            "NUMBA_ENABLE_CUDASIM=1 to run CUDA kernels in the simulator",
        }.get(backend, "")
        msg = f"backend {backend!r} is not available for {family}: {exc}. {hint}".strip()
        _failures[key] = msg
        raise RuntimeError(msg) from exc
    _modules[key] = module
    return module


def _require_device(cuda) -> None:
    """Raise ImportError (turned into load's actionable RuntimeError) when numba-cuda is
    installed but neither a CUDA device nor the simulator is there: a kernel launch would
    otherwise fail deep inside numba."""
    import os

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return
    if not cuda.is_available():
        raise ImportError("numba-cuda is installed but no CUDA device or driver was found "
                          "(numba.cuda.is_available() is False)")


def available(family: str, backend: str) -> bool:
    """True if ``load(family, backend)`` succeeds."""
    try:
        load(family, backend)
    except RuntimeError:
        return False
    return True


def is_cuda_array(x: object) -> bool:
    """True for device arrays (numba.cuda, CuPy, torch CUDA tensors, the CUDA simulator's)."""
    return hasattr(x, "__cuda_array_interface__") or type(x).__name__ == "FakeCUDAArray"


def resolve(
    family: str,
    backend: str,
    *,
    prefer: Callable[[], str] | None = None,
    cuda_input: bool = False,
    supported: tuple[str, ...] = ("cython", "numba", "numpy"),
) -> str:
    """Return the concrete backend name for a call.

    Parameters
    ----------
    family : str
        Kernel family (``"batchnorm"``, ``"spectral"``, ``"curvature"``).
    backend : str
        What the caller asked for: one of :data:`BACKENDS`.
    prefer : callable, optional
        The family's ``"auto"`` policy: returns the preferred compiled CPU backend for this call
        (from the benchmark data); the other compiled backend is the fallback.
    cuda_input : bool
        The inputs are device arrays: ``"auto"`` then means ``"cuda"``.
    supported : tuple of str
        Backends this function implements.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        if cuda_input:
            backend = "cuda"
        else:
            first = prefer() if prefer is not None else "cython"
            order = [first] + [b for b in ("cython", "numba") if b != first]
            for candidate in order:
                if candidate in supported and available(family, candidate):
                    return candidate
            return "numpy"
    if backend not in supported:
        raise ValueError(
            f"backend: {backend!r} is not implemented for this function "
            f"(choose from {', '.join(map(repr, supported))})"
        )
    load(family, backend)  # raises a clear RuntimeError if unavailable
    return backend


def wants_device(x: object, backend: str) -> bool:
    """True when a call takes the GPU path: ``x`` is a device array or ``backend="cuda"``."""
    return backend == "cuda" or is_cuda_array(x)


def resolve_device(family: str, backend: str, argument: str) -> None:
    """Check ``backend`` for a call whose ``argument`` is a device array: ``"auto"`` and
    ``"cuda"`` pass (the CUDA kernels must load); a CPU backend raises a ValueError."""
    chosen = resolve(family, backend, cuda_input=True,
                     supported=("cython", "numba", "numpy", "cuda"))
    if chosen != "cuda":
        raise ValueError(f"backend: {backend!r} runs on the CPU but {argument} is a device array; "
                         f"use backend='cuda' or 'auto', or copy {argument} to the host")
