"""Environment report for ``python -m fastopt info``."""

from __future__ import annotations

import importlib
import platform


def simd_level() -> str:
    """Best SIMD instruction set the CPU reports (x86 flags from /proc/cpuinfo, else LLVM's CPU)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        flags = []
    for flag, label in (
        ("avx512f", "AVX-512"),
        ("avx2", "AVX2"),
        ("avx", "AVX"),
        ("sse4_2", "SSE4.2"),
    ):
        if flag in flags:
            return label
    return platform.machine() or "unknown"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def family_variants() -> dict[str, str]:
    """SIMD variant each family's compiled kernels run, for families whose Cython module has a
    ``simd_level()`` function (``"avx512"``, ``"avx2"``, ``"baseline"``)."""
    variants: dict[str, str] = {}
    for family in ("batchnorm", "spectral", "curvature"):
        try:
            module = importlib.import_module(f"fastopt.{family}._cython")
        except ImportError:
            continue
        level = getattr(module, "simd_level", None)
        if callable(level):
            value = level()  # a name, or fo_simd_level()'s number (4, 3, 0)
            variants[family] = {4: "avx512", 3: "avx2", 0: "baseline"}.get(value, str(value))
    return variants


def backend_report() -> dict[str, str]:
    """One line of status per backend: available or why not."""
    report: dict[str, str] = {}
    cython_mods = []
    for family in ("batchnorm", "spectral", "curvature"):
        try:
            importlib.import_module(f"fastopt.{family}._cython")
            cython_mods.append(family)
        except ImportError:
            pass
    report["cython"] = (
        f"built ({', '.join(cython_mods)})" if cython_mods else "not built (pip install -e .)"
    )
    try:
        import numba

        report["numba"] = f"numba {numba.__version__}"
    except ImportError:  # pragma: no cover - numba is a dependency
        report["numba"] = "not installed"
    report["numpy"] = "reference (always available)"
    try:
        from numba import cuda

        if cuda.is_available():
            report["cuda"] = f"available ({cuda.get_current_device().name})"
        elif _simulator():
            report["cuda"] = "simulator (NUMBA_ENABLE_CUDASIM=1)"
        else:
            report["cuda"] = "no CUDA device"
    except Exception as exc:  # numba-cuda missing or driver error
        report["cuda"] = f"unavailable ({type(exc).__name__})"
    return report


def _simulator() -> bool:
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def info_text() -> str:
    """The text printed by ``python -m fastopt info``."""
    import numpy as np

    from . import __version__
    from ._threads import get_num_threads

    lines = [
        f"fastopt {__version__}",
        f"python {platform.python_version()}, numpy {np.__version__}",
        f"threads: {get_num_threads()}",
        f"CPU: {cpu_model()}",
        f"SIMD: {simd_level()}",
        "backends:",
    ]
    lines += [f"  {name:7s} {status}" for name, status in backend_report().items()]
    variants = family_variants()
    if variants:
        lines.append("kernel variants (batch norm's follow FASTOPT_SIMD=avx512|avx2|baseline; "
                     "the others' clones follow the CPU):")
        lines += [f"  {family:9s} {level}" for family, level in variants.items()]
    return "\n".join(lines)
