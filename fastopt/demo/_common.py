"""What every part of the demo shares: the data split, the settings, printing, figure files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

#: the widths of the demo's networks: small, so every part runs in seconds on two cores
HIDDEN = 32
SIZES = [64, HIDDEN, HIDDEN, 10]


@dataclasses.dataclass
class Digits:
    """The UCI digits split once for every part: pixels in [0, 1], integer labels."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_train(self) -> int:
        return len(self.y_train)


def split_digits(seed: int, test_fraction: float = 0.25) -> Digits:
    """The shipped digits, shuffled by ``seed`` and split into training and test sets per class
    (every digit keeps the same share in both)."""
    from ..datasets import load_digits

    X, y = load_digits()
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    train_idx = rng.permutation(np.flatnonzero(~test))
    test_idx = np.flatnonzero(test)
    return Digits(X[train_idx], y[train_idx], X[test_idx], y[test_idx])


@dataclasses.dataclass
class Context:
    """Settings of one demo run and what the parts hand to each other."""

    out: Path
    epochs: int
    quick: bool
    seed: int
    data: Digits
    figures: Any  # the _plots module when matplotlib is installed, else None
    progress_enabled: bool | None = None
    shared: dict = dataclasses.field(default_factory=dict)
    written: list = dataclasses.field(default_factory=list)

    def say(self, line: str = "") -> None:
        print(line, flush=True)

    def figure_path(self, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        self.written.append(path)
        return path

    def measure_batch(self, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """A fixed slice of the training set on which curvature is measured (the same for
        every part, so figures compare like with like)."""
        d = self.data
        return d.X_train[:size], d.y_train[:size]


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))

