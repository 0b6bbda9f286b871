"""Benchmarks of fastopt.Network: exact HVPs through training-mode batch norm.

float32, softmax cross-entropy, MLP [784, 512, BN, tanh, 512, BN, tanh, 10], batch 256
(``SHAPES["bn"]``; ``"tiny"`` is a smoke-test shape). Groups and contenders:

- ``hvp <shape>``: fastopt-cython, fastopt-numba, numpy (the reference kernels), torch (double
  backward through ``nn.BatchNorm1d`` in training mode inside ``nn.Sequential``), jax
  (``jit(jvp(grad(loss)))`` through a hand-written train-mode batch norm) and ``floor``: the
  HVP's matrix products alone (3 for the first dense layer, 8 for each later one),
  preallocated, through numpy's BLAS.
- ``grad <shape>``: fastopt's own loss-and-gradient (the HVP should cost <= 3.5x) and torch's.
- ``hvp k=8 <shape>``: eight directions in one call.

Each contender runs in a pytest process of its own (thread pools of torch, jax and numba disturb
each other), with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset::

    python bench/bench_network.py [--passes 2] [--stat min] [-k bn]

runs every contender through ``bench/run.py``'s helpers and prints the ratio table and the
target ratios; one contender alone::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python -m pytest \\
        bench/bench_network.py -o python_files='bench_*.py' --benchmark-enable \\
        --contender fastopt-numba -k tiny
"""

from __future__ import annotations

import os

import numpy as np
import pytest

SHAPES = {
    "bn": ([784, 512, 512, 10], 256),
    "tiny": ([32, 16, 16, 4], 16),
}
ROUNDS = {"bn": 30, "tiny": 20}
HVP_CONTENDERS = ["fastopt-cython", "fastopt-numba", "numpy", "torch", "jax", "floor"]
EPS = 1e-5


def shape_name(key: str) -> str:
    sizes, N = SHAPES[key]
    inner = ", ".join(f"{n}, BN, tanh" for n in sizes[1:-1])
    return f"[{sizes[0]}, {inner}, {sizes[-1]}] N={N}"


def make_problem(key: str, k: int = 1):
    from fastopt import Network, nn

    sizes, N = SHAPES[key]
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Dense(n_in, n_out), nn.BatchNorm(n_out, eps=EPS), nn.Tanh()]
    layers.append(nn.Dense(sizes[-2], sizes[-1]))
    net = Network(layers, loss="cross_entropy", dtype=np.float32, training=True)
    rng = np.random.default_rng(0)
    theta = net.init(rng)
    X = rng.standard_normal((N, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], N)
    v = rng.standard_normal((net.num_params, k) if k > 1 else net.num_params).astype(np.float32)
    return net, theta, X, y, v


def floor_products(key: str):
    """The matrix products of one HVP as (A, B, out) triples: a dense layer whose input has
    R-streams runs [a; Ra] W (2), a V, [g; Rg] W^T (2), g V^T, Ra^T g and a^T Rg; the first
    (input X) runs X W, X V and X^T Rg."""
    sizes, N = SHAPES[key]
    rng = np.random.default_rng(1)
    f = np.float32
    triples = []
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        a = rng.standard_normal((N, n_in)).astype(f)
        W = rng.standard_normal((n_in, n_out)).astype(f)
        d = rng.standard_normal((N, n_out)).astype(f)
        WT, aT = np.ascontiguousarray(W.T), np.ascontiguousarray(a.T)
        z, g, da = np.empty((N, n_out), f), np.empty((n_in, n_out), f), np.empty((N, n_in), f)
        triples += [(a, W, z), (a, W, z), (aT, d, g)]
        if l > 0:
            triples += [(a, W, z), (aT, d, g)] + [(d, WT, da)] * 3
    return triples


def torch_model(net, theta):
    import torch

    from fastopt import nn

    mods, views = [], iter(net.unpack(theta))
    for layer in net.layers:
        if isinstance(layer, nn.Dense):
            W, b = next(views)
            lin = torch.nn.Linear(layer.n_in, layer.n_out)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T.copy()))
                lin.bias.copy_(torch.from_numpy(b.copy()))
            mods.append(lin)
        elif isinstance(layer, nn.BatchNorm):
            w, b = next(views)
            bn = torch.nn.BatchNorm1d(layer.n, eps=layer.eps)
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(w.copy()))
                bn.bias.copy_(torch.from_numpy(b.copy()))
            mods.append(bn)
        else:
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods).train()


def torch_fns(net, theta, X, y, v):
    import torch

    model = torch_model(net, theta)
    params = list(model.parameters())
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    vs = [torch.randn_like(p) for p in params]
    del v  # torch's parameter order differs from theta's; a random direction costs the same

    def loss():
        return torch.nn.functional.cross_entropy(model(Xt), yt)

    def hvp():
        grads = torch.autograd.grad(loss(), params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True))
        return torch.autograd.grad(dot, params)

    def grad():
        return torch.autograd.grad(loss(), params)

    return hvp, grad


def jax_hvp(net, theta, X, y, v):
    import jax
    import jax.numpy as jnp

    params = [tuple(jnp.asarray(a) for a in pair) for pair in net.unpack(theta)]
    vs = [tuple(jnp.asarray(a) for a in pair) for pair in net.unpack(v)]
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    n_dense = sum(1 for _ in net.layers if type(_).__name__ == "Dense")

    def loss(p):
        a = Xj
        it = iter(p)
        for _ in range(n_dense - 1):
            W, b = next(it)
            z = a @ W + b
            g, beta = next(it)
            mu = jnp.mean(z, axis=0)
            var = jnp.mean((z - mu) ** 2, axis=0)  # biased: training-mode batch norm
            a = jnp.tanh((z - mu) / jnp.sqrt(var + EPS) * g + beta)
        W, b = next(it)
        logp = jax.nn.log_softmax(a @ W + b)
        return -jnp.mean(jnp.take_along_axis(logp, yj[:, None], axis=1))

    hvp = jax.jit(lambda p, t: jax.jvp(jax.grad(loss), (p,), (t,))[1])
    return lambda: jax.block_until_ready(hvp(params, vs))


def hvp_callable(contender: str, key: str, k: int = 1):
    net, theta, X, y, v = make_problem(key, k)
    if contender in ("fastopt-cython", "fastopt-numba", "numpy"):
        backend = {"fastopt-cython": "cython", "fastopt-numba": "numba"}.get(contender, "numpy")
        return lambda: net.hvp(theta, X, y, v, backend=backend)
    if contender == "floor":
        triples = floor_products(key)

        def run():
            for A, B, out in triples:
                np.matmul(A, B, out=out)

        return run
    if contender == "torch":
        return torch_fns(net, theta, X, y, v)[0]
    if contender == "jax":
        return jax_hvp(net, theta, X, y, v)
    raise ValueError(contender)


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("contender", HVP_CONTENDERS, indirect=True)
def test_hvp(benchmark, contender, key):
    benchmark.group = f"hvp {shape_name(key)}"
    fn = hvp_callable(contender, key)
    fn()  # compile / warm up (numba, jax) outside the timing
    benchmark.pedantic(fn, rounds=ROUNDS[key], warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("contender", ["fastopt-cython", "fastopt-numba", "torch"],
                         indirect=True)
def test_grad(benchmark, contender, key):
    benchmark.group = f"grad {shape_name(key)}"
    net, theta, X, y, v = make_problem(key)
    if contender == "torch":
        fn = torch_fns(net, theta, X, y, v)[1]
    else:
        backend = contender.split("-")[1]
        fn = lambda: net.loss_and_grad(theta, X, y, backend=backend)  # noqa: E731
    fn()
    benchmark.pedantic(fn, rounds=ROUNDS[key], warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("contender", ["fastopt-cython", "fastopt-numba"], indirect=True)
def test_hvp_k8(benchmark, contender, key):
    benchmark.group = f"hvp k=8 {shape_name(key)}"
    fn = hvp_callable(contender, key, k=8)
    fn()
    benchmark.pedantic(fn, rounds=max(3, ROUNDS[key] // 2), warmup_rounds=1, iterations=1)


def ratios(table: dict[str, dict[str, float]]) -> str:
    """The target ratios: HVP speedup over torch and jax, HVP / own gradient, floor share."""
    lines = []
    for key in SHAPES:
        s = shape_name(key)
        h, gr, h8 = (table.get(f"{g} {s}", {}) for g in ("hvp", "grad", "hvp k=8"))
        for c in ("fastopt-cython", "fastopt-numba"):
            if c not in h:
                continue
            parts = [f"{s} {c}:"]
            parts += [f"{h[o] / h[c]:.2f}x faster than {o} (target {t});"
                      for o, t in (("torch", ">= 5"), ("jax", ">= 1.2")) if o in h]
            if c in gr:
                parts.append(f"hvp/own grad {h[c] / gr[c]:.2f} (target <= 3.5);")
            if "floor" in h:
                parts.append(f"{h['floor'] / h[c]:.0%} of the matmul rate;")
            if c in h8:
                parts.append(f"k=8/k=1 {h8[c] / h[c]:.2f}")
            lines.append(" ".join(parts))
    return "\n".join(lines)


def main(argv: list[str]) -> int:  # pragma: no cover - the driver
    """``python bench/run.py --family network`` (every contender in its own process, then the
    table and :func:`ratios`)."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run

    return run.main(["--family", "network", *argv])


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))
