"""The spectra family's C-level API: a downstream extension cimports it from
``fastopt.get_include()``, calls it without the GIL and matches the Python kernels.
(The batch-norm family's is in tests/test_batchnorm_design.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt
from fastopt import _dispatch

EXT = textwrap.dedent("""
    # cython: language_level=3
    import numpy as np
    from fastopt.spectral._cython cimport wtwv_f32, wtwv_f64, matvec_f64

    def run64(double[:, ::1] W, double[::1] x, int n_threads):
        cdef Py_ssize_t n = W.shape[0], m = W.shape[1]
        t = np.empty(n); y = np.empty(m); z = np.empty(n)
        cdef double[::1] tv = t, yv = y, zv = z
        cdef int status
        with nogil:
            status = wtwv_f64(&W[0, 0], n, m, &x[0], &tv[0], &yv[0], n_threads)
            status = status + matvec_f64(&W[0, 0], n, m, &x[0], &zv[0], n_threads)
        return status, t, y, z

    def run32(float[:, ::1] W, float[::1] x, int n_threads):
        cdef Py_ssize_t n = W.shape[0], m = W.shape[1]
        t = np.empty(n, np.float32); y = np.empty(m, np.float32)
        cdef float[::1] tv = t, yv = y
        cdef int status
        with nogil:
            status = wtwv_f32(&W[0, 0], n, m, &x[0], &tv[0], &yv[0], n_threads)
        return status, t, y
""")


@pytest.mark.skipif(not _dispatch.available("spectral", "cython"),
                    reason="Cython extensions not built")
def test_downstream_extension_cimports_the_spectral_kernels(tmp_path):
    pytest.importorskip("Cython")
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    (tmp_path / "fo_spectral_user.pyx").write_text(EXT)
    (tmp_path / "setup.py").write_text(textwrap.dedent(f"""
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension, setup
        setup(ext_modules=cythonize(
            [Extension("fo_spectral_user", ["fo_spectral_user.pyx"],
                       include_dirs=[numpy.get_include()])],
            include_path=[{fastopt.get_include()!r}]))
    """))
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                           cwd=tmp_path, capture_output=True, text=True)
    if build.returncode != 0 and "command 'gcc' failed" in build.stderr + build.stdout:
        pytest.skip("the C compiler failed")
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import fo_spectral_user
    finally:
        sys.path.remove(str(tmp_path))
    kernels = _dispatch.load("spectral", "cython")
    rng = np.random.default_rng(3)
    W, x = rng.standard_normal((37, 23)), rng.standard_normal(23)
    for n_threads in (1, 2, 3):
        status, t, y, z = fo_spectral_user.run64(W, x, n_threads)
        assert status == 0
        np.testing.assert_allclose(t, W @ x, rtol=1e-13)
        np.testing.assert_allclose(z, W @ x, rtol=1e-13)
        np.testing.assert_allclose(y, W.T @ (W @ x), rtol=1e-12)
    # one thread: the same bits as the Python-level kernel
    t_py, y_py = np.empty((1, 37)), np.empty((1, 23))
    work = np.zeros(kernels.work_shape(1, 37, 23, 1))
    kernels.wtwv(W[None], x[None], t_py, y_py, np.zeros(1, np.int64), work, 1)
    _, t, y, _ = fo_spectral_user.run64(W, x, 1)
    np.testing.assert_array_equal(y, y_py[0])
    status, t32, y32 = fo_spectral_user.run32(W.astype(np.float32), x.astype(np.float32), 2)
    assert status == 0
    np.testing.assert_allclose(y32, W.T @ (W @ x), rtol=1e-4)
