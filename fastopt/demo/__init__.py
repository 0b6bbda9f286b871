"""``python -m fastopt demo``: the challenges of training seen on a real training run.

Four parts on the UCI handwritten digits (shipped with fastopt), each measured with fastopt's
kernels and summarised in one line, with a figure per part when matplotlib is installed:

1. ill-conditioning and the step size: g^T g, g^T H g, the best step and the
   ``IllConditioningMonitor`` over an SGD run (and what its suggested rate would have done);
2. saddles and minima: both ends of the Hessian spectrum during training, a linear
   autoencoder's saddle at the origin, the Hessian's eigenvalue density at start and end;
3. batch normalization: the same network with and without batch norm, trained side by side,
   loss curves and sharpness;
4. recurrent matrices and initialization: five initialisations of a recurrent W, their
   spectral norm and radius, regime, ``||W^t||`` over t and eigenvalues;
5. (when ``fastopt.symmetry`` is available) the loss barrier between two trained networks
   before and after aligning their hidden units.

The speed report that ``demo`` printed before is ``python -m fastopt bench --quick``.
"""

from __future__ import annotations

import importlib.util
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import _batchnorm, _ill_conditioning, _recurrent, _saddles, _symmetry
from ._common import Context, split_digits

__all__ = ["PARTS", "default_out_dir", "run_demo"]

DEFAULT_EPOCHS = 20
QUICK_EPOCHS = 5

#: (title, function) of every part, in order; each prints its report and returns its summary
PARTS: list[tuple[str, Callable[[Context], str]]] = [
    ("Part 1 - ill-conditioning and the step size", _ill_conditioning.run),
    ("Part 2 - saddle points and minima", _saddles.run),
    ("Part 3 - batch normalization", _batchnorm.run),
    ("Part 4 - recurrent matrices and initialization", _recurrent.run),
    ("Part 5 - weight-space symmetry (optional)", _symmetry.run),
]


def default_out_dir(base: Path | str = ".") -> Path:
    """``fastopt-demo/`` in ``base``, or ``fastopt-demo-2/``, ``-3/``, ... when it already holds
    files: a run never overwrites an earlier run's figures.

    Examples
    --------
    >>> import tempfile
    >>> from fastopt.demo import default_out_dir
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     default_out_dir(tmp).name
    'fastopt-demo'
    """
    base = Path(base)
    candidate = base / "fastopt-demo"
    n = 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = base / f"fastopt-demo-{n}"
    return candidate


def _figures_module():
    if importlib.util.find_spec("matplotlib") is None:
        return None
    from . import _plots

    return _plots


def run_demo(*, out: Path | str | None = None, epochs: int | None = None, quick: bool = False,
             seed: int = 0, progress: bool | None = None, parts: list[int] | None = None) -> int:
    """Run the demo, print every part's report and summary; return a process exit code.

    Parameters
    ----------
    out : path, optional
        Folder for the PNG figures (created when needed); default :func:`default_out_dir`.
    epochs : int, optional
        Training epochs of parts 1-3 (default 20; 5 with ``quick``).
    quick : bool
        Fewer epochs and Lanczos probes: the whole demo in a few seconds.
    seed : int
        Seed of the data split, the initial weights and the minibatch order.
    progress : bool, optional
        Progress bars; default: when stdout is a terminal.
    parts : list of int, optional
        The parts to run (1-5); default all. Parts 2 and 5 use part 1's training run.

    Returns
    -------
    int
        0 when every part ran, 1 when one failed (its error is printed; the others still run).

    Examples
    --------
    >>> import contextlib, io, tempfile
    >>> from fastopt.demo import run_demo
    >>> with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()) as log:
    ...     status = run_demo(out=tmp, parts=[4], progress=False)   # part 4 only: a second
    >>> status, "[part 4: Gaussian N(0, 1/n) exploding, orthogonal stable" in log.getvalue()
    (0, True)
    """
    from .. import __version__

    if epochs is None:
        epochs = QUICK_EPOCHS if quick else DEFAULT_EPOCHS
    if int(epochs) < 1:
        raise ValueError(f"epochs: must be >= 1, got {epochs}")
    epochs = int(epochs)
    figures = _figures_module()
    out_dir = Path(out) if out is not None else default_out_dir()
    data = split_digits(seed)
    ctx = Context(out=out_dir, epochs=epochs, quick=quick, seed=seed, data=data,
                  figures=figures, progress_enabled=progress)
    ctx.say(f"fastopt {__version__} demo: the challenges of training on the UCI digits "
            f"({data.n_train} training / {len(data.y_test)} test images, 8x8 pixels, 10 "
            f"classes), {epochs} epochs, seed {seed}{', quick' if quick else ''}.")
    if figures is None:
        ctx.say("Figures need matplotlib: pip install 'fastopt[plot]' (or pip install "
                "matplotlib); every number is printed without it.")
    summaries = []
    status = 0
    start_all = time.perf_counter()
    for number, (title, part) in enumerate(PARTS, start=1):
        if parts is not None and number not in parts:
            continue
        ctx.say()
        ctx.say(f"== {title} ==")
        start = time.perf_counter()
        try:
            summary = part(ctx)
        except Exception as exc:  # report it and go on with the other parts
            traceback.print_exc()
            summary = f"part {number}: failed ({type(exc).__name__}: {exc})"
            status = 1
        ctx.say(f"[{summary}] ({time.perf_counter() - start:.1f} s)")
        summaries.append(summary)
    ctx.say()
    ctx.say(f"== Summary ({time.perf_counter() - start_all:.1f} s) ==")
    for summary in summaries:
        ctx.say(summary)
    if figures is not None and ctx.written:
        ctx.say(f"{len(ctx.written)} figures written to {out_dir.resolve()}/")
    elif figures is None:
        ctx.say("No figures written (matplotlib is not installed: pip install 'fastopt[plot]').")
    else:
        ctx.say("No figures written.")
    return status
