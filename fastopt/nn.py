"""Layer specifications for :class:`fastopt.Network` (descriptions, not stateful layers).

A network is a list of these: :class:`Dense`, :class:`BatchNorm` and the element-wise
activations :class:`Tanh`, :class:`Sigmoid`, :class:`ReLU`, :class:`Softplus`, :class:`GELU` (tanh
form) and :class:`Identity`. They hold shapes and hyperparameters only; the parameters live in
the network's flat ``theta`` (Dense: ``W`` (n_in, n_out) row-major then ``b``; BatchNorm:
``weight`` then ``bias``) and the running statistics in the :class:`~fastopt.Network`.

Examples
--------
>>> from fastopt import nn
>>> layers = [nn.Dense(4, 8), nn.BatchNorm(8), nn.Tanh(), nn.Dense(8, 3)]
>>> [layer.num_params for layer in layers]
[40, 16, 0, 27]
"""

from __future__ import annotations

from dataclasses import dataclass

from ._codes import Activation
from ._validate import check_fraction, check_int, check_positive

__all__ = ["Layer", "Dense", "BatchNorm", "ActivationLayer", "Tanh", "Sigmoid", "ReLU",
           "Softplus", "GELU", "Identity"]


class Layer:
    """Base of the layer specifications: ``num_params`` and the widths it maps between."""

    num_params: int = 0

    def out_width(self, n_in: int) -> int:
        """Width of the output for an input of width ``n_in`` (raises if they do not fit)."""
        return n_in


@dataclass(frozen=True)
class Dense(Layer):
    """Affine layer ``a @ W + b`` with ``W`` of shape ``(n_in, n_out)``.

    Examples
    --------
    >>> from fastopt.nn import Dense
    >>> Dense(3, 2).num_params
    8
    """

    n_in: int
    n_out: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_in", check_int(self.n_in, "Dense.n_in"))
        object.__setattr__(self, "n_out", check_int(self.n_out, "Dense.n_out"))

    @property
    def num_params(self) -> int:  # type: ignore[override]
        return self.n_in * self.n_out + self.n_out

    def out_width(self, n_in: int) -> int:
        if n_in != self.n_in:
            raise ValueError(f"Dense({self.n_in}, {self.n_out}): input width is {n_in}")
        return self.n_out


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalization over the batch axis of ``(N, n)`` activations (``nn.BatchNorm1d``).

    Training mode normalizes with the batch statistics (biased variance) and the network's
    curvature products differentiate through them; eval mode uses the running statistics held
    by the network. Parameters in ``theta``: ``weight`` (n) then ``bias`` (n).

    Parameters
    ----------
    n : int
        Number of features (channels).
    eps : float
        Added to the variance inside the square root (> 0).
    momentum : float or None
        Weight of a new batch in the running statistics (PyTorch's convention); None: the
        cumulative average over the batches tracked.

    Examples
    --------
    >>> from fastopt.nn import BatchNorm
    >>> BatchNorm(5, eps=1e-3).num_params
    10
    """

    n: int
    eps: float = 1e-5
    momentum: float | None = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", check_int(self.n, "BatchNorm.n"))
        object.__setattr__(self, "eps", check_positive(self.eps, "BatchNorm.eps"))
        if self.momentum is not None:
            object.__setattr__(self, "momentum",
                               check_fraction(self.momentum, "BatchNorm.momentum"))

    @property
    def num_params(self) -> int:  # type: ignore[override]
        return 2 * self.n

    def out_width(self, n_in: int) -> int:
        if n_in != self.n:
            raise ValueError(f"BatchNorm({self.n}): input width is {n_in}")
        return self.n


@dataclass(frozen=True)
class ActivationLayer(Layer):
    """An element-wise activation (base of :class:`Tanh` and the others); ``code`` is its
    :class:`fastopt._codes.Activation`."""

    @property
    def code(self) -> Activation:
        return Activation[_ACT_NAMES[type(self)]]


@dataclass(frozen=True)
class Tanh(ActivationLayer):
    """``tanh``."""


@dataclass(frozen=True)
class Sigmoid(ActivationLayer):
    """``1 / (1 + exp(-z))``."""


@dataclass(frozen=True)
class ReLU(ActivationLayer):
    """``max(z, 0)`` (second derivative taken as 0, as autodiff frameworks do)."""


@dataclass(frozen=True)
class Softplus(ActivationLayer):
    """``log(1 + exp(z))``."""


@dataclass(frozen=True)
class GELU(ActivationLayer):
    """GELU, tanh form: ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))``
    (``torch.nn.GELU(approximate="tanh")``)."""


@dataclass(frozen=True)
class Identity(ActivationLayer):
    """``z``."""


_ACT_NAMES = {Tanh: "TANH", Sigmoid: "SIGMOID", ReLU: "RELU", Softplus: "SOFTPLUS",
              GELU: "GELU", Identity: "IDENTITY"}
ACTIVATION_LAYERS = {code: cls for cls, code in
                     ((c, Activation[n]) for c, n in _ACT_NAMES.items())}
