"""Test-only entry points of the MLP's kernel interface (``mlp.KERNELS``'s ``_formula_*``),
written once: each backend module binds them to its own ``hidden_forward`` / ``output_forward``
(``functools.partial``), so that tests/test_formulas.py evaluates the formulas through the very
row loops the kernels run."""

from __future__ import annotations

import numpy as np

from .._codes import Loss


def formula_activation(hidden_forward, code, z, s, d1, d2):
    """Activation ``code`` with its derivatives on the 1-D array ``z`` into ``s``, ``d1``,
    ``d2``, through ``hidden_forward`` (one row, no bias, no R-streams)."""
    n, dt = z.shape[0], z.dtype
    hidden_forward(z.reshape(1, 1, n), np.zeros(n, dt), np.empty((1, 0, n), dt),
                   np.empty((0, n), dt), int(code), 2, s.reshape(1, 1, n), d1.reshape(1, n),
                   d2.reshape(1, n), np.empty((1, 0, n), dt), 1)


def formula_logistic(output_forward, f, y, loss, grad, curv):
    """The logistic loss pieces at the float64 logits ``f`` and labels ``y``, one
    ``output_forward`` call per entry (N = 1, so nothing is rescaled)."""
    D = np.empty((1, 2, 1))
    one = np.ones((1, 1, 1))
    for i in range(f.shape[0]):
        output_forward(f[i : i + 1].reshape(1, 1, 1), np.zeros(1), one, np.zeros((1, 1)),
                       int(Loss.LOGISTIC), 2, np.empty(0, np.int64), y[i : i + 1].reshape(1, 1),
                       D, loss[i : i + 1], 1)
        grad[i] = D[0, 0, 0]
        curv[i] = D[0, 1, 0]
