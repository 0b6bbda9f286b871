"""Build the Cython extensions of fastopt (every ``fastopt/**/*.pyx``) with -O3 and OpenMP.

The default build is portable: the compiler's baseline target (x86-64), with the hot C loops
compiled again for AVX2 and AVX-512 and picked at run time (``fastopt/_simd.h``), so a wheel built
on one x86-64 machine runs, at full speed, on any other. ``FASTOPT_MARCH=native`` (or another
``-march`` value) builds for one CPU instead, without run-time dispatch: faster to compile, and
the result runs only on CPUs with that instruction set.
"""

import glob
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/O2", "/openmp"]
    # Reassociation lets GCC vectorize float64 reductions; NaN/Inf semantics are kept
    # (no -ffinite-math-only), and a given binary sums in a fixed order.
    args = ["-O3", "-fopenmp", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
            "-fno-trapping-math",
            # let GCC vectorize loops that need more runtime overlap checks than its default 10
            "--param=vect-max-version-for-alias-checks=64",
            "-Wno-unreachable-code"]
    march = os.environ.get("FASTOPT_MARCH", "")
    if march and march not in ("none", "portable"):
        args += [f"-march={march}", "-DFO_NO_CLONES"]  # one target: nothing to dispatch
    return args


def extensions() -> list[Extension]:
    link = [] if sys.platform == "win32" else ["-fopenmp"]
    exts = []
    for pyx in sorted(glob.glob("fastopt/**/*.pyx", recursive=True)):
        name = pyx[:-4].replace(os.sep, ".").replace("/", ".")
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=[np.get_include(), "fastopt", os.path.dirname(pyx)],
                extra_compile_args=compile_args(),
                extra_link_args=link,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions())
