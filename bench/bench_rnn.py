"""Benchmarks of the Elman RNN: exact Hessian-vector products through time.

The benchmark shape: n_in 32, hidden 128, T = 50, batch 64, 10 classes on the last step, tanh,
float32. Groups (one per kernel and shape) and their contenders:

- ``rnn hvp <shape>``: fastopt-cython, fastopt-numba, numpy (the reference kernels), torch
  (double backward through ``nn.RNN(nonlinearity="tanh", batch_first=True)`` + ``nn.Linear``),
  jax (``jit(jvp(grad(loss)))`` of a ``lax.scan`` RNN, forward-over-reverse, with ``x U`` for all
  steps hoisted out of the scan) and ``floor``: the matrix products fastopt's HVP runs, alone, on
  preallocated operands through numpy's BLAS (``floor / fastopt`` is the fraction of the
  matrix-product rate the HVP reaches; the rest is the step kernels and Python).
- ``rnn grad <shape>``: loss and gradient (BPTT): fastopt, torch, jax (``HVP / own gradient``).
- ``rnn hvp k=8 <shape>``: eight directions in one call (fastopt only).

Targets: HVP >= 3x torch, >= 1.2x jax.

Each contender runs in a pytest process of its own (the thread pools of torch, jax and numba
disturb each other), with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset::

    python bench/bench_rnn.py [--passes 2] [--stat min] [--contender NAME ...] [-k EXPR]

runs them all through ``bench/run.py``'s helpers and prints the ratio table and the target
ratios; one contender alone::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python -m pytest \\
        bench/bench_rnn.py -o python_files='bench_*.py' --benchmark-enable \\
        --contender fastopt-cython --benchmark-json=bench/results/rnn-cython.json
"""

from __future__ import annotations

import numpy as np
import pytest

# n_in, n_hidden, n_out, T, N
SHAPES = {"t50-h128": (32, 128, 10, 50, 64)}
ROUNDS = 40
HVP_CONTENDERS = ["fastopt-cython", "fastopt-numba", "numpy", "torch", "jax", "floor"]
GRAD_CONTENDERS = ["fastopt-cython", "fastopt-numba", "torch", "jax"]


def shape_name(key: str) -> str:
    n_in, n, o, T, N = SHAPES[key]
    return f"n_in={n_in} hidden={n} T={T} N={N} classes={o}"


def make_problem(key: str, k: int = 1):
    from fastopt import ElmanRNN

    n_in, n, o, T, N = SHAPES[key]
    rng = np.random.default_rng(0)
    rnn = ElmanRNN(n_in, n, o, activation="tanh", loss="cross_entropy", output="last",
                   dtype=np.float32)
    theta = rnn.init(rng, scheme="orthogonal")
    X = rng.standard_normal((N, T, n_in)).astype(np.float32)
    y = rng.integers(0, o, N)
    v = rng.standard_normal((rnn.num_params, k) if k > 1 else rnn.num_params).astype(np.float32)
    return rnn, theta, X, y, v


def floor_products(rnn, T: int, N: int, rng: np.random.Generator):
    """The matrix products of one fastopt HVP (k = 1, loss on the last step), as (A, B, out)
    triples of the same shapes, layouts and reuse: every step reads its own rows of the state
    arrays and the same weight blocks, as ``ElmanRNN._run`` does (fresh weights per step would
    measure cache misses that the HVP does not have)."""
    f = np.float32
    n, m, o = rnn.n_hidden, rnn.n_in, rnn.n_out

    def mat(*shape):
        return rng.standard_normal(shape).astype(f)

    HX, RH = mat(T + 1, N, n + m), mat(T, N, n)  # [h | x] and Rh per step
    Dl, RDl = mat(T, N, n), mat(T, N, n)  # delta and R delta per step
    WWc, W, WTc = mat(n, 2 * n), mat(n, n), mat(n, 2 * n)
    UUc, VVc, V, VTc = mat(m, 2 * n), mat(n, 2 * o), mat(n, o), mat(o, 2 * n)
    ZZ, RZW = np.empty((N, 2 * n), f), np.empty((N, n), f)
    E, RE = mat(N, o), mat(N, o)
    triples = [(HX[:T, :, n:].reshape(T * N, m), UUc, np.empty((T * N, 2 * n), f))]
    for s in range(1, T):  # forward: h [W | W'], Rh W
        triples += [(HX[s, :, :n], WWc, ZZ), (RH[s - 1], W, RZW)]
    triples += [(HX[T, :, :n], VVc, np.empty((N, 2 * o), f)), (RH[T - 1], V, np.empty((N, o), f))]
    triples += [(E, VTc, np.empty((N, 2 * n), f)), (RE, V.T, np.empty((N, n), f))]
    for s in range(T - 2, -1, -1):  # backward: delta [W^T | W'^T], R delta W^T
        triples += [(Dl[s + 1], WTc, ZZ), (RDl[s + 1], W.T, RZW)]
    triples += [(HX[:T].reshape(T * N, n + m).T, RDl.reshape(T * N, n), np.empty((n + m, n), f)),
                (RH[:T - 1].reshape((T - 1) * N, n).T, Dl[1:].reshape((T - 1) * N, n),
                 np.empty((n, n), f))]  # [h|x]^T R delta, Rh^T delta
    triples += [(HX[T, :, :n].T, RE, np.empty((n, o), f)), (RH[T - 1].T, E, np.empty((n, o), f))]
    return triples


def torch_callables(rnn, theta, X, y, v):
    """(hvp, grad) closures: double backward through nn.RNN + nn.Linear holding the weights."""
    import torch

    p = rnn.unpack(theta)
    net = torch.nn.RNN(rnn.n_in, rnn.n_hidden, nonlinearity="tanh", batch_first=True)
    head = torch.nn.Linear(rnn.n_hidden, rnn.n_out)
    with torch.no_grad():  # torch: h_t = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)
        net.weight_hh_l0.copy_(torch.from_numpy(p["W"].T.copy()))
        net.weight_ih_l0.copy_(torch.from_numpy(p["U"].T.copy()))
        net.bias_ih_l0.copy_(torch.from_numpy(p["b"]))
        net.bias_hh_l0.zero_()
        head.weight.copy_(torch.from_numpy(p["V"].T.copy()))
        head.bias.copy_(torch.from_numpy(p["c"]))
    params = [net.weight_hh_l0, net.weight_ih_l0, net.bias_ih_l0, head.weight, head.bias]
    q = rnn.unpack(v)
    vs = [torch.from_numpy(np.ascontiguousarray(a))
          for a in (q["W"].T, q["U"].T, q["b"], q["V"].T, q["c"])]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def loss():
        hs, _ = net(Xt)
        return torch.nn.functional.cross_entropy(head(hs[:, -1]), yt)

    def hvp():
        g = torch.autograd.grad(loss(), params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, vs, strict=True))
        return torch.autograd.grad(dot, params)

    def grad():
        return torch.autograd.grad(loss(), params)

    return hvp, grad


def jax_callables(rnn, theta, X, y, v):
    """(hvp, grad) closures: jit(jvp(grad)) and jit(grad) of a lax.scan RNN."""
    import jax
    import jax.numpy as jnp

    names = ("W", "U", "b", "V", "c")
    params = tuple(jnp.asarray(rnn.unpack(theta)[k]) for k in names)
    tangents = tuple(jnp.asarray(rnn.unpack(v)[k]) for k in names)
    Xs = jnp.asarray(np.ascontiguousarray(X.transpose(1, 0, 2)))  # time-major for the scan
    yj = jnp.asarray(y)
    N = X.shape[0]

    def loss(p):
        W, U, b, V, c = p
        XU = Xs @ U + b  # every step's input term in one product

        def step(h, xu):
            return jnp.tanh(h @ W + xu), None

        h, _ = jax.lax.scan(step, jnp.zeros((N, W.shape[0]), Xs.dtype), XU)
        logp = jax.nn.log_softmax(h @ V + c)
        return -jnp.mean(jnp.take_along_axis(logp, yj[:, None], axis=1))

    hvp_fn = jax.jit(lambda p, t: jax.jvp(jax.grad(loss), (p,), (t,))[1])
    grad_fn = jax.jit(jax.grad(loss))
    return (lambda: jax.block_until_ready(hvp_fn(params, tangents)),
            lambda: jax.block_until_ready(grad_fn(params)))


def hvp_callable(contender: str, key: str, k: int = 1):
    rnn, theta, X, y, v = make_problem(key, k)
    if contender in ("fastopt-cython", "fastopt-numba", "numpy"):
        backend = {"fastopt-cython": "cython", "fastopt-numba": "numba"}.get(contender, "numpy")
        return lambda: rnn.hvp(theta, X, y, v, backend=backend)
    if contender == "floor":
        _, _, _, T, N = SHAPES[key]
        triples = floor_products(rnn, T, N, np.random.default_rng(1))

        def run():
            for A, B, out in triples:
                np.matmul(A, B, out=out)

        return run
    if contender == "torch":
        return torch_callables(rnn, theta, X, y, v)[0]
    if contender == "jax":
        return jax_callables(rnn, theta, X, y, v)[0]
    raise ValueError(contender)


def grad_callable(contender: str, key: str):
    rnn, theta, X, y, v = make_problem(key)
    if contender.startswith("fastopt-"):
        backend = contender.split("-")[1]
        return lambda: rnn.loss_and_grad(theta, X, y, backend=backend)
    if contender == "torch":
        return torch_callables(rnn, theta, X, y, v)[1]
    if contender == "jax":
        return jax_callables(rnn, theta, X, y, v)[1]
    raise ValueError(contender)


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("contender", HVP_CONTENDERS, indirect=True)
def test_rnn_hvp(benchmark, contender, key):
    benchmark.group = f"rnn hvp {shape_name(key)}"
    fn = hvp_callable(contender, key)
    fn()  # compile / warm up (numba, jax) outside the timing
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("contender", GRAD_CONTENDERS, indirect=True)
def test_rnn_grad(benchmark, contender, key):
    benchmark.group = f"rnn grad {shape_name(key)}"
    fn = grad_callable(contender, key)
    fn()
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("contender", ["fastopt-cython", "fastopt-numba"], indirect=True)
def test_rnn_hvp_k8(benchmark, contender, key):
    benchmark.group = f"rnn hvp k=8 {shape_name(key)}"
    fn = hvp_callable(contender, key, k=8)
    fn()
    benchmark.pedantic(fn, rounds=ROUNDS // 2, warmup_rounds=1, iterations=1)


def ratios(table: dict[str, dict[str, float]]) -> str:
    """The target ratios from ``run.merge``'s table (group -> contender -> seconds)."""
    lines = []
    for key in SHAPES:
        s = shape_name(key)
        h, gr, h8 = (table.get(f"{g} {s}", {}) for g in ("rnn hvp", "rnn grad", "rnn hvp k=8"))
        for c in ("fastopt-cython", "fastopt-numba"):
            if c not in h:
                continue
            parts = [f"{s} {c}:"]
            parts += [f"{h[o] / h[c]:.2f}x faster than {o} (target {t});"
                      for o, t in (("torch", "3x"), ("jax", "1.2x")) if o in h]
            if "floor" in h:
                parts.append(f"{h['floor'] / h[c]:.0%} of the matmul rate;")
            if c in gr:
                parts.append(f"hvp/grad {h[c] / gr[c]:.2f};")
            if c in h8:
                parts.append(f"k=8/k=1 {h8[c] / h[c]:.2f}")
            lines.append(" ".join(parts))
        for o in ("torch", "jax"):
            if o in h and o in gr:
                lines.append(f"{s} {o}: hvp {h[o] * 1e3:.1f} ms, grad {gr[o] * 1e3:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str]) -> int:  # pragma: no cover - the driver
    """``python bench/run.py --family rnn`` (every contender in its own process, then the
    table and :func:`ratios`)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run

    return run.main(["--family", "rnn", *argv])


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))
