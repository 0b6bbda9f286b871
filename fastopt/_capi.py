"""Where the ``.pxd`` files of fastopt's C-level (Cython) API are installed."""

from __future__ import annotations

import os

# The C-level entry points each family ships, as ``cimport``-able .pxd modules. A family adds
# its own line here and a test beside tests/test_batchnorm_design.py's downstream extension.
PXD_MODULES = {
    "batchnorm": "fastopt.batchnorm._cython",  # forward_train_f32/f64, backward_f32/f64
    "spectral": "fastopt.spectral._cython",  # wtwv_f32/f64, matvec_f32/f64
}


def get_include() -> str:
    """Directory to put on a downstream Cython build's include path to ``cimport`` fastopt.

    It holds the package's ``.pxd`` files (``fastopt/batchnorm/_cython.pxd``: ``nogil`` entry
    points of the batch-norm kernels, ``forward_train_f32`` and friends;
    ``fastopt/spectral/_cython.pxd``: the fused ``W^T W x`` pass and ``W x``) and the C headers
    they need. Pass it as ``include_path`` to ``cythonize`` and as an include directory of the
    extension.

    Examples
    --------
    >>> import os, fastopt
    >>> os.path.isfile(os.path.join(fastopt.get_include(), "fastopt", "batchnorm", "_cython.pxd"))
    True
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
