"""Shared fixtures: backends, hypothesis profile, optional libraries."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from fastopt import _dispatch

# Numba compiles on the first example; keep the example count CI-sized (2 cores, < 10 minutes).
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FASTOPT_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("ci")

COMPILED = ("cython", "numba")


def compiled_backends(family: str) -> list:
    """pytest params for the compiled backends of a family; unavailable ones are skipped."""
    params = []
    for name in COMPILED:
        marks = []
        if not _dispatch.available(family, name):
            marks.append(pytest.mark.skip(reason=f"{name} backend of {family} unavailable"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(scope="session", autouse=True)
def _fastopt_torch_cpp():
    """fastopt.torch's C++ kernels, compiled (first run on a machine) and installed once per
    session where torch is installed, so every torch test runs them whatever the test order
    (tests/test_torch_cpp.py compares them with the Python kernels)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    from fastopt.torch import _cpp

    _cpp.ensure_loaded()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def tolerance(dtype) -> float:
    """Relative tolerance for comparing a backend with the float64 reference."""
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-11
