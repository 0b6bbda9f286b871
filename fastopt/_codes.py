"""The one table of activation and loss codes shared by every backend.

Kernels take these as small integers (Cython ``cdef enum``, Numba literals compare against
``int(Activation.TANH)``, the numpy reference branches on the member); Python code uses the
names. The order is part of the kernels' ABI: append, never reorder.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Activation", "Loss", "Mode"]


class Activation(IntEnum):
    """Element-wise activation functions of the curvature models."""

    IDENTITY = 0
    TANH = 1
    SIGMOID = 2
    RELU = 3
    SOFTPLUS = 4
    GELU = 5  # tanh approximation, as torch's GELU(approximate="tanh")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(member.name.lower() for member in cls)


class Loss(IntEnum):
    """Losses of the curvature models (mean over the batch)."""

    CROSS_ENTROPY = 0
    MSE = 1
    LOGISTIC = 2

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(member.name.lower() for member in cls)


class Mode(IntEnum):
    """What one call of the ElmanRNN time-step kernels computes."""

    LOSS = 0
    GRAD = 1
    HVP = 2  # Hessian-vector product
    GNVP = 3  # Gauss-Newton-vector product

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(member.name.lower() for member in cls)
