"""fastopt: compiled kernels (Cython and Numba) for the hard parts of training neural networks.

Families (each with its own ``__all__``, re-exported here):

- batch normalization: ``batch_norm_forward``, ``batch_norm_backward``, ``BatchNorm``;
- spectra of (recurrent) weight matrices: ``spectral_norm``, ``spectral_radius``,
  ``lanczos_extremes``, ``gradient_flow``, ``SpectralNormState`` and ``fastopt.init``;
- curvature: ``MLP`` with exact Hessian-vector products and the diagnostics built on them.

Importing compiles nothing: Numba kernels compile on first call (cached on disk), the Cython
extensions are built at install time.
"""

from __future__ import annotations

from ._capi import get_include
from ._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["__version__", "get_include", "get_num_threads", "set_num_threads"]


def _export(module) -> None:
    for name in module.__all__:
        globals()[name] = getattr(module, name)
    __all__.extend(module.__all__)


def _load_families() -> None:
    import importlib

    for family in ("batchnorm", "spectral", "curvature"):
        module = importlib.import_module(f"fastopt.{family}")
        if hasattr(module, "__all__"):
            _export(module)


_load_families()

from . import datasets, nn, symmetry  # noqa: E402, F401  (fastopt.nn.Dense, ...)
