"""Every public function has a docstring, and every docstring example runs."""

import doctest
import importlib
import pkgutil

import pytest

import fastopt

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(fastopt.__path__, "fastopt.")
    if not m.name.endswith(("._cython", "._cuda", "__main__"))
)


# module (or package) -> the optional package it imports (fastopt.distributed.sharded's
# examples also start a dask cluster)
NEEDS = {"fastopt.torch": "torch", "fastopt.distributed.sharded": "distributed",
         "fastopt.demo._plots": "matplotlib"}


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    for prefix, package in NEEDS.items():  # modules that import an optional package
        if name == prefix or name.startswith(prefix + "."):
            pytest.importorskip(package)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize("name", fastopt.__all__)
def test_public_names_are_documented(name):
    obj = getattr(fastopt, name)
    if name == "__version__":
        return
    assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name
