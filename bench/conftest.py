"""Benchmark conventions shared by every ``bench/bench_<family>.py`` suite.

- Every benchmark takes a parameter named ``contender``: ``fastopt-cython``, ``fastopt-numba``,
  ``numpy`` (the reference), ``torch``, ``jax``, ``scipy`` or ``floor`` (a bandwidth/FLOP floor).
- Each benchmark sets ``benchmark.group`` to ``"<kernel> <shape>"``: the report compares the
  contenders of one group.
- ``bench/run.py`` runs each contender in a pytest process of its own
  (``--contender NAME``), because PyTorch's, JAX's and Numba's thread pools disturb each other
  in one process, then merges the JSON files into a ratio table.
"""

from __future__ import annotations

import importlib.util

import pytest

OPTIONAL = {"torch": "torch", "jax": "jax", "scipy": "scipy"}


def pytest_addoption(parser):
    parser.addoption(
        "--contender",
        action="append",
        default=[],
        help="run only these contenders (repeatable); default: all",
    )


def pytest_collection_modifyitems(config, items):
    wanted = set(config.getoption("--contender"))
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("contender") if callspec else None
        if wanted and name not in wanted:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def contender(request):
    name = request.param
    module = OPTIONAL.get(name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    if name == "fastopt-cython":
        from fastopt import _dispatch

        families = ("batchnorm", "spectral", "curvature")
        if not any(_dispatch.available(f, "cython") for f in families):
            pytest.skip("Cython extensions not built")
    return name

