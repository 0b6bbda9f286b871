"""One kernel interface per model: the Network and ElmanRNN kernel modules (Cython, Numba, the
numpy reference) expose the same functions with the same parameters, and the models call only
those (as ``mlp.KERNELS`` for the MLP, checked in test_curvature_mlp.py)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from fastopt.curvature import network, rnn

# the kernels each model's front end calls, in the order it calls them
KERNELS = {
    "network": ("transpose2d", "dense_bias", "bn_forward_train", "bn_forward_eval",
                "act_forward", "loss_forward", "colsum", "bn_backward", "act_backward"),
    "rnn": ("forward_step", "output", "backward_step"),
}
FRONT_ENDS = {"network": network, "rnn": rnn}
# what the front end calls its kernel module: ``kern.dense_bias(...)``, ``mod.output(...)``
RECEIVER = {"network": "kern", "rnn": "mod"}
BACKENDS = ("cython", "numba", "numpy")


def _modules(model: str) -> dict:
    mods = {}
    for backend in BACKENDS:
        try:
            mods[backend] = FRONT_ENDS[model]._kernels(backend)
        except RuntimeError:
            continue
    return mods


def _parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _public_functions(mod) -> set[str]:
    """Public callables defined in ``mod`` itself (not imported helpers or classes)."""
    return {name for name, f in vars(mod).items()
            if callable(f) and not name.startswith("_") and not inspect.isclass(f)
            and getattr(f, "__module__", None) == mod.__name__}


@pytest.mark.parametrize("model", sorted(KERNELS))
def test_backends_expose_the_same_kernels(model):
    mods = _modules(model)
    assert "numpy" in mods and len(mods) >= 2, f"{model}: only {sorted(mods)} load"
    for kernel in KERNELS[model]:
        sigs = {b: _parameters(getattr(m, kernel)) for b, m in mods.items()
                if hasattr(m, kernel)}
        assert set(sigs) == set(mods), f"{model}.{kernel} missing in {set(mods) - set(sigs)}"
        assert len({tuple(s) for s in sigs.values()}) == 1, (model, kernel, sigs)
    for backend, mod in mods.items():
        extra = _public_functions(mod) - set(KERNELS[model])
        assert not extra, f"{model}/{backend} has public kernels outside the interface: {extra}"


@pytest.mark.parametrize("model", sorted(KERNELS))
def test_front_end_calls_only_the_interface(model):
    """Every kernel the model's front end calls is in the interface, and every interface kernel
    is called (so the list above cannot go stale)."""
    src = Path(FRONT_ENDS[model].__file__).read_text()
    called = set(re.findall(rf"\b{RECEIVER[model]}\.([a-z_0-9]+)\(", src))
    called |= set(re.findall(rf"=\s*{RECEIVER[model]}\.([a-z_0-9]+)\s*$", src, re.M))
    assert called == set(KERNELS[model]), (model, called ^ set(KERNELS[model]))


def test_parity_check_can_fail():
    """The signature comparison notices a renamed parameter (a module that differs fails)."""

    def forward_step(ZZ, RZW, XUU, b, Cb, activation, mode, has_rec, H, D1, D2, RZ, RH):
        """A kernel with one parameter renamed."""

    ref = rnn._kernels("numpy")
    assert _parameters(forward_step) != _parameters(ref.forward_step)
