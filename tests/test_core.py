"""Package-level behaviour: threads, dispatch, info, lazy import."""

import subprocess
import sys

import pytest

import fastopt
from fastopt import _dispatch
from fastopt._info import info_text


def test_set_get_num_threads_roundtrip():
    old = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        assert fastopt.get_num_threads() == 1
    finally:
        fastopt.set_num_threads(old)


@pytest.mark.parametrize("bad", [0, -3])
def test_set_num_threads_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="n must be >= 1"):
        fastopt.set_num_threads(bad)


@pytest.mark.parametrize("bad", [1.5, "2", True])
def test_set_num_threads_rejects_non_integers(bad):
    with pytest.raises(TypeError):
        fastopt.set_num_threads(bad)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend: 'fortran'"):
        _dispatch.resolve("batchnorm", "fortran")


def test_info_lists_backends():
    text = info_text()
    for word in ("fastopt", "threads:", "SIMD:", "cython", "numba", "cuda"):
        assert word in text


def test_import_compiles_nothing():
    code = (
        "import sys, fastopt; "
        "print(any(m.startswith('fastopt.') and m.endswith(('_numba', '_cuda')) "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_is_explicit_and_resolves():
    for name in fastopt.__all__:
        assert hasattr(fastopt, name), name
