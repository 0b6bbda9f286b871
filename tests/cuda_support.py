"""What the CUDA test files share: the skip without a device or the simulator, and thread blocks
shrunk so that multi-block paths run on the tiny shapes the simulator can afford."""

import contextlib
import os

import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def require_device_or_simulator():
    """``numba.cuda``; skips the calling test module without numba-cuda, or without both a CUDA
    device and the simulator."""
    cuda = pytest.importorskip("numba.cuda")
    if not SIM and not cuda.is_available():
        pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)
    return cuda


@contextlib.contextmanager
def shrunk_blocks(module, simulator: dict, device: dict):
    """Set ``module``'s launch constants to ``simulator`` (in the simulator) or ``device``
    values for the block, then restore them."""
    values = simulator if SIM else device
    old = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(module, name, value)
