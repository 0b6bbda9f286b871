"""fastopt's C++ kernels for the batch-norm ops on CPU tensors (``_ops.cpp``), compiled on first
use with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; about a minute, once per
machine and torch version, cached in torch's extension directory) and installed next to the
Python kernels of ``_ops.py``. They remove the Python glue from small calls, where it costs
several times the kernel; they give the same bits as the Python kernels, which keep every other
call (and every input check). Without a compiler, or with ``FASTOPT_TORCH_CPP=0``, the Python
kernels run everything.

``fastopt.torch``'s modules call :func:`ensure_loaded` on their first forward (never while
``torch.compile`` traces).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from types import ModuleType

_LOCK = threading.Lock()
TRIED = False  # ensure_loaded ran (read by the modules before calling it)
_MODULE: ModuleType | None = None
_PROBLEM: str | None = None


def ensure_loaded() -> ModuleType | None:
    """Compile (first time), load and install the C++ kernels; the extension module, or None
    when they cannot run here (:func:`problem` says why)."""
    global TRIED, _MODULE, _PROBLEM
    with _LOCK:
        if TRIED:
            return _MODULE
        try:
            _MODULE = _load()
        except Exception as exc:  # no compiler, no ninja, no Cython kernels: the Python path
            _PROBLEM = f"{type(exc).__name__}: {exc}"
        TRIED = True
        return _MODULE


def problem() -> str | None:
    """Why the C++ kernels are not in use (None when they are, or were not tried yet)."""
    return _PROBLEM


def _load() -> ModuleType | None:
    global _PROBLEM
    if os.environ.get("FASTOPT_TORCH_CPP") == "0":
        _PROBLEM = "FASTOPT_TORCH_CPP=0 is set"
        return None
    import torch
    from torch.utils import cpp_extension

    from .. import _dispatch
    from . import _ops

    if not cpp_extension.is_ninja_available():
        _PROBLEM = "ninja is not installed (pip install ninja)"
        return None
    kernels = _dispatch.load("batchnorm", "cython")
    # one build per torch version: a build against another torch's headers must not be loaded
    name = "fastopt_torch_ops_" + re.sub(r"\W", "_", torch.__version__)
    built = Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so"
    if not built.exists():  # a minute of silence would look like a hang
        print("fastopt.torch: compiling the C++ batch-norm kernels (once per machine and torch "
              "version, about a minute)", file=sys.stderr, flush=True)
    module = cpp_extension.load(name, [str(Path(__file__).with_name("_ops.cpp"))],
                                # no contraction into fused multiply-adds: the running update
                                # must round as numpy's separate multiply and add do
                                extra_cflags=["-O2", "-ffp-contract=off"], verbose=False)
    capi = kernels.__pyx_capi__
    module.install(capi["forward_addr"], capi["backward_addr"], _ops._cpp_plan,
                   _ops._batch_norm_cpu, _ops._batch_norm_backward_cpu,
                   _ops._batch_norm_autograd, _ops._batch_norm_backward_autograd)
    return module
