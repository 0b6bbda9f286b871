"""Fused batch normalization: forward (training and eval), backward, a stateful layer."""

from .api import BatchNormGrads, BatchNormOutput, batch_norm_backward, batch_norm_forward
from .layer import BatchNorm

__all__ = [
    "BatchNorm",
    "BatchNormGrads",
    "BatchNormOutput",
    "batch_norm_backward",
    "batch_norm_forward",
]
