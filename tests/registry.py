"""One registry of fastopt's public array functions, driving the cross-cutting tests.

Each entry says how to build a call's array inputs from a random generator and a dtype, how to
call the function on one backend, and which backends it has. tests/test_registry.py runs every
entry on every backend through the same checks (bottleneck's pattern): inputs not modified,
read-only inputs, every memory layout, big-endian input, zero-size input, random input from
hypothesis. A new public function gets an entry here and all of those checks at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import fastopt
from fastopt import init

CPU = ("cython", "numba", "numpy")


@dataclass(frozen=True)
class Entry:
    name: str
    make: Callable[[np.random.Generator, np.dtype], dict[str, np.ndarray]]
    call: Callable[..., object]  # call(backend, **arrays)
    backends: tuple[str, ...] = CPU
    # names of arrays whose layout the checks vary (all by default)
    layout_args: tuple[str, ...] | None = None
    # names of arrays that may have a zero-size dimension in the zero-size check
    zero_args: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.name


def flat_result(result: object) -> list[np.ndarray]:
    """The arrays and numbers of a result (NamedTuples, tuples, arrays, floats), flattened."""
    if result is None:
        return []
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, (float, int, np.floating, np.integer, bool, np.bool_)):
        return [np.asarray(result)]
    if isinstance(result, tuple):
        return [a for item in result for a in flat_result(item)]
    if isinstance(result, (list,)):
        return [a for item in result for a in flat_result(item)]
    if isinstance(result, str):
        return []
    fields = getattr(result, "__dict__", None)
    if fields:
        return [a for v in fields.values() for a in flat_result(v)]
    return []


# ----------------------------------------------------------------------------- batch norm
def _bn_x(rng, dtype):
    return {"x": rng.standard_normal((4, 3, 5)).astype(dtype),
            "weight": rng.uniform(0.5, 1.5, 3).astype(dtype),
            "bias": rng.standard_normal(3).astype(dtype)}


def _bn_backward(rng, dtype):
    arrays = _bn_x(rng, dtype)
    y = fastopt.batch_norm_forward(arrays["x"], arrays["weight"], arrays["bias"],
                                   backend="numpy")
    arrays.pop("bias")
    arrays["dy"] = rng.standard_normal(arrays["x"].shape).astype(dtype)
    arrays["mean"], arrays["invstd"] = y.mean, y.invstd
    return arrays


# ----------------------------------------------------------------------------- spectra
def _matrix(rng, dtype):
    return {"W": rng.standard_normal((7, 5)).astype(dtype)}


def _square(rng, dtype):
    return {"W": (rng.standard_normal((6, 6)) / 3).astype(dtype)}


def _batch(rng, dtype):
    return {"W": rng.standard_normal((3, 6, 4)).astype(dtype)}


# ----------------------------------------------------------------------------- curvature
_NET = {np.dtype(np.float64): fastopt.MLP([4, 5, 3], activation="tanh", dtype=np.float64),
        np.dtype(np.float32): fastopt.MLP([4, 5, 3], activation="tanh", dtype=np.float32)}


def _net_inputs(rng, dtype):
    net = _NET[np.dtype(dtype)]
    return {"theta": (net.init(rng) + 0.1).astype(dtype),
            "X": rng.standard_normal((6, 4)).astype(dtype),
            "y": rng.integers(0, 3, 6),
            "v": rng.standard_normal(net.num_params).astype(dtype)}


def _net_inputs_k(rng, dtype):
    arrays = _net_inputs(rng, dtype)
    arrays["v"] = rng.standard_normal((len(arrays["v"]), 3)).astype(dtype)
    return arrays


_BN_NET = {np.dtype(dt): fastopt.Network(
    [fastopt.nn.Dense(4, 5), fastopt.nn.BatchNorm(5), fastopt.nn.Tanh(), fastopt.nn.Dense(5, 3)],
    dtype=dt) for dt in (np.float64, np.float32)}
_RNN = {np.dtype(dt): fastopt.ElmanRNN(2, 4, 3, dtype=dt) for dt in (np.float64, np.float32)}


def _bn_net_inputs(rng, dtype):
    net = _BN_NET[np.dtype(dtype)]
    return {"theta": (net.init(rng) + 0.1).astype(dtype),
            "X": rng.standard_normal((6, 4)).astype(dtype),
            "y": rng.integers(0, 3, 6),
            "v": rng.standard_normal(net.num_params).astype(dtype)}


def _rnn_inputs(rng, dtype):
    net = _RNN[np.dtype(dtype)]
    return {"theta": net.init(rng).astype(dtype),
            "X": rng.standard_normal((5, 3, 2)).astype(dtype),
            "y": rng.integers(0, 3, 5),
            "v": rng.standard_normal(net.num_params).astype(dtype)}


def _model_call(models, method):
    def call(backend, theta, X, y, v):
        net = models[np.dtype(theta.dtype.newbyteorder("="))]
        if method in ("loss", "loss_and_grad"):
            return getattr(net, method)(theta, X, y, backend=backend)
        return getattr(net, method)(theta, X, y, v, backend=backend)
    return call


def _mlp_call(method):
    def call(backend, theta, X, y, v):
        net = _NET[np.dtype(theta.dtype.newbyteorder("="))]
        if method in ("loss", "loss_and_grad"):
            return getattr(net, method)(theta, X, y, backend=backend)
        return getattr(net, method)(theta, X, y, v, backend=backend)
    return call


def _diag_call(fn, **kwargs):
    def call(backend, theta, X, y, v):
        net = _NET[np.dtype(theta.dtype.newbyteorder("="))]
        return fn(net, theta, X, y, backend=backend, **kwargs)
    return call


REGISTRY: tuple[Entry, ...] = (
    Entry("batch_norm_forward", _bn_x,
          lambda backend, x, weight, bias: fastopt.batch_norm_forward(
              x, weight, bias, backend=backend), zero_args=("x",)),
    Entry("batch_norm_forward(eval)", _bn_x,
          lambda backend, x, weight, bias: fastopt.batch_norm_forward(
              x, weight, bias, training=False, running_mean=np.zeros(3, x.dtype.newbyteorder("=")),
              running_var=np.ones(3, x.dtype.newbyteorder("=")), backend=backend),
          zero_args=("x",)),
    Entry("batch_norm_forward(axis=-1)", lambda rng, dt: {
        "x": rng.standard_normal((6, 5)).astype(dt), "weight": np.ones(5, dt),
        "bias": np.zeros(5, dt)},
        lambda backend, x, weight, bias: fastopt.batch_norm_forward(
            x, weight, bias, axis=-1, backend=backend), zero_args=("x",)),
    Entry("batch_norm_backward", _bn_backward,
          lambda backend, dy, x, mean, invstd, weight: fastopt.batch_norm_backward(
              dy, x, mean, invstd, weight, backend=backend), zero_args=("dy", "x")),
    Entry("spectral_norm", _matrix,
          lambda backend, W: fastopt.spectral_norm(W, tol=1e-10, backend=backend),
          zero_args=("W",)),
    Entry("spectral_norm(batched)", _batch,
          lambda backend, W: fastopt.spectral_norm(W, tol=1e-10, backend=backend),
          zero_args=("W",)),
    Entry("spectral_radius", _square,
          lambda backend, W: fastopt.spectral_radius(W, tol=1e-10, backend=backend),
          zero_args=("W",)),
    Entry("gradient_flow", _square, lambda backend, W: fastopt.gradient_flow(W, steps=5),
          backends=("none",), zero_args=("W",)),
    Entry("init.scale_to_spectral_radius", _square,
          lambda backend, W: init.scale_to_spectral_radius(W, 0.9), backends=("none",),
          zero_args=("W",)),
    Entry("MLP.loss", _net_inputs, _mlp_call("loss"), zero_args=("X",)),
    Entry("MLP.loss_and_grad", _net_inputs, _mlp_call("loss_and_grad"), zero_args=("X",)),
    Entry("MLP.hvp", _net_inputs, _mlp_call("hvp"), zero_args=("X",)),
    Entry("MLP.hvp(k=3)", _net_inputs_k, _mlp_call("hvp"), zero_args=("X", "v")),
    Entry("MLP.gnvp", _net_inputs, _mlp_call("gnvp"), zero_args=("X",)),
    Entry("Network.loss_and_grad", _bn_net_inputs, _model_call(_BN_NET, "loss_and_grad"),
          zero_args=("X",)),
    Entry("Network.hvp", _bn_net_inputs, _model_call(_BN_NET, "hvp"), zero_args=("X",)),
    Entry("Network.gnvp", _bn_net_inputs, _model_call(_BN_NET, "gnvp"), zero_args=("X",)),
    Entry("ElmanRNN.loss_and_grad", _rnn_inputs, _model_call(_RNN, "loss_and_grad"),
          zero_args=("X",)),
    Entry("ElmanRNN.hvp", _rnn_inputs, _model_call(_RNN, "hvp"), zero_args=("X",)),
    Entry("ElmanRNN.gnvp", _rnn_inputs, _model_call(_RNN, "gnvp"), zero_args=("X",)),
    Entry("symmetry.canonicalize", _net_inputs,
          lambda backend, theta, X, y, v: fastopt.symmetry.canonicalize(
              _NET[np.dtype(theta.dtype.newbyteorder("="))], theta), backends=("none",)),
    Entry("curvature_along_gradient", _net_inputs,
          _diag_call(fastopt.curvature_along_gradient), zero_args=("X",)),
    Entry("hessian_extremes", _net_inputs,
          _diag_call(fastopt.hessian_extremes, tol=1e-8), zero_args=("X",)),
    Entry("hutchinson_trace", _net_inputs,
          _diag_call(fastopt.hutchinson_trace, samples=4, batch=2), zero_args=("X",)),
    Entry("spectral_density", _net_inputs,
          _diag_call(fastopt.spectral_density, n_vectors=1, steps=5, n_grid=16),
          zero_args=("X",)),
)
