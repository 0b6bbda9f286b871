"""fastopt.torch's per-channel CUDA kernels (fastopt/torch/_cuda.py) type and lower for the real
CUDA target, with the argument types the op passes, on a machine without a GPU.

The simulator runs the kernels as Python, so it cannot catch a typing error of numba's CUDA
compiler; ``compile_cuda`` types and lowers to LLVM IR without a driver (it stops before NVVM).
Its device-function calls ask the current device for its compute capability, which is stubbed
here. Skips in the simulator and without numba-cuda or torch (fastopt.torch imports it).
"""

import os
from types import SimpleNamespace

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator has no CUDA compiler", allow_module_level=True)
pytest.importorskip("numba.cuda")
pytest.importorskip("torch")  # the glue lives in fastopt.torch, whose __init__ imports torch

from numba import types  # noqa: E402

compiler = pytest.importorskip("numba.cuda.compiler")
dispatcher = pytest.importorskip("numba.cuda.dispatcher")
if not hasattr(compiler, "compile_cuda") or not hasattr(dispatcher, "get_current_device"):
    pytest.skip("numba-cuda without compile_cuda/get_current_device", allow_module_level=True)

from fastopt.torch import _cuda as glue  # noqa: E402

F64 = types.Array(types.float64, 1, "C")
F64_ROW = types.Array(types.float64, 1, "A")  # a row of a scratch buffer, or a strided view
PART = types.Array(types.float64, 3, "C")
B, F = types.boolean, types.float64


@pytest.fixture(autouse=True)
def compute_capability(monkeypatch):
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=(8, 0)))


@pytest.mark.parametrize("dtype", [types.float32, types.float64], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_per_channel_kernels_lower_for_cuda(dtype, affine):
    finish_train, prepare_eval, finish_backward = glue._kernels()
    vec = types.Array(dtype, 1, "C")
    w = vec if affine else F64_ROW  # None becomes a float64 placeholder
    signatures = [
        (finish_train, (PART, F64_ROW, w, B, w, B, F, F, B, vec, vec, F, vec, vec, vec, vec,
                        F64_ROW, F64_ROW, F64_ROW)),
        (prepare_eval, (vec, vec, w, B, w, B, F, vec, vec, F64_ROW, F64_ROW, F64_ROW)),
        (finish_backward, (PART, vec, w, B, F, B, vec, vec, F64_ROW, F64_ROW, F64_ROW)),
    ]
    for kernel, sig in signatures:
        result = compiler.compile_cuda(kernel.py_func, types.void, sig, cc=(8, 0))
        assert result.signature.args == sig
