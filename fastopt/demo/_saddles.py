"""Part 2: saddle points and minima (Goodfellow et al., section 8.2.3; Dauphin et al., 2014).

Both ends of the Hessian spectrum by Lanczos on exact HVPs, along part 1's training run; a
linear autoencoder of the digits at the origin, the textbook saddle (Baldi and Hornik, 1989);
the Hessian's eigenvalue density at the start and at the end of training.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._common import Context
from ._progress import progress

CODE = 8  # width of the linear autoencoder's code layer


def _extremes(net, theta, X, y):
    from .. import hessian_extremes

    with warnings.catch_warnings():  # a loose tolerance on purpose: say so, do not warn
        warnings.simplefilter("ignore", RuntimeWarning)
        return hessian_extremes(net, theta, X, y, tol=1e-3, maxiter=120, backend="cython")


def _autoencoder_saddle(ctx: Context) -> dict:
    """A linear autoencoder 64 -> CODE -> 64 of the centred digits at theta = 0, and its
    deeper sibling 64 -> CODE -> CODE -> 64: both ends of the Hessian, and the loss along the
    eigenvectors of the shallow one's extreme eigenvalues."""
    from .. import MLP, lanczos_extremes

    X = ctx.data.X_train[:512]
    X = X - X.mean(axis=0)  # centred, so theta = 0 is a critical point (zero bias gradients)
    shallow = MLP([64, CODE, 64], activation="identity", loss="mse")
    deep = MLP([64, CODE, CODE, 64], activation="identity", loss="mse")
    origin = np.zeros(shallow.num_params)
    ext_shallow = _extremes(shallow, origin, X, X)
    ext_deep = _extremes(deep, np.zeros(deep.num_params), X, X)
    grad_norm = float(np.linalg.norm(shallow.loss_and_grad(origin, X, X)[1]))
    res = lanczos_extremes(lambda v: shallow.hvp(origin, X, X, v, backend="cython"),
                           shallow.num_params, which="both", tol=1e-6, seed=ctx.seed)
    t = np.linspace(-1.5, 1.5, 61)
    along = {}
    for name, vec in (("min", res.smallest_vectors[:, 0]), ("max", res.largest_vectors[:, 0])):
        along[name] = np.array([shallow.loss(s * vec, X, X) for s in t]) - shallow.loss(origin,
                                                                                        X, X)
    # the deep one along a rank-one path through its three weight matrices: x -> s^3 x u u^T
    # (u the top principal direction), flat to second order at 0, falling at third order
    u = np.linalg.svd(X, full_matrices=False)[2][0]
    e1 = np.eye(CODE)[0]
    deep_along = []
    for s in t:
        layers = [(s * np.outer(u, e1), np.zeros(CODE)), (s * np.outer(e1, e1), np.zeros(CODE)),
                  (s * np.outer(e1, u), np.zeros(64))]
        deep_along.append(deep.loss(deep.pack(layers), X, X))
    along["deep"] = np.array(deep_along) - deep.loss(np.zeros(deep.num_params), X, X)
    # the scalar network y = w2 * w1 * x fitted to y = x: the saddle of every linear network
    # in two coordinates, for the picture
    tiny = MLP([1, 1, 1], activation="identity", loss="mse")
    xs = np.linspace(-1, 1, 21).reshape(-1, 1)
    grid = np.linspace(-1.6, 1.6, 65)
    surface = np.array([[tiny.loss(np.array([w1, 0.0, w2, 0.0]), xs, xs[:, 0]) for w1 in grid]
                        for w2 in grid])
    return {"shallow": ext_shallow, "deep": ext_deep, "grad_norm": grad_norm, "t": t,
            "along": along, "lambda": (res.smallest[0], res.largest[0]), "grid": grid,
            "surface": surface}


def run(ctx: Context) -> str:
    from .. import spectral_density

    part1 = ctx.shared.get("part1")
    if part1 is None:
        return "part 2: skipped (needs part 1's training run)"
    net, checkpoints = part1["net"], part1["checkpoints"]
    Xm, ym = ctx.measure_batch()
    epochs = len(checkpoints) - 1
    which = sorted({0, epochs // 4, epochs // 2, (3 * epochs) // 4, epochs})
    n_vectors, steps = (2, 30) if ctx.quick else (3, 60)
    bar = progress(len(which) + 2 * n_vectors + 2, "part 2: Lanczos", enabled=ctx.progress_enabled)
    rows = []
    try:
        for e in which:
            rows.append((e, _extremes(net, checkpoints[e], Xm, ym)))
            bar.update(1)
        densities = {}
        for label, e in (("start", 0), ("end", epochs)):
            densities[label] = spectral_density(net, checkpoints[e], Xm, ym, n_vectors=n_vectors,
                                                steps=steps, seed=ctx.seed, backend="cython")
            bar.update(n_vectors)
        saddle = _autoencoder_saddle(ctx)
        bar.update(2)
    finally:
        bar.close()
    ctx.shared["part2_lambda_max"] = {e: ext.lambda_max for e, ext in rows}
    ctx.say(f"Hessian of part 1's loss on {len(ym)} training images, both ends by Lanczos on "
            "exact HVPs (relative tolerance 1e-3):")
    ctx.say(f"{'epoch':>5} {'lambda_max':>11} {'lambda_min':>11} {'|min|/max':>9} "
            f"{'HVPs':>5}  kind")
    for e, ext in rows:
        ratio = abs(ext.lambda_min) / ext.lambda_max if ext.lambda_max > 0 else np.nan
        ctx.say(f"{e:5d} {ext.lambda_max:11.4e} {ext.lambda_min:11.4e} {ratio:9.2e} "
                f"{ext.iterations:5d}  {ext.kind}")
    s, dp = saddle["shallow"], saddle["deep"]
    ctx.say(f"Linear autoencoder 64-{CODE}-64 of the centred digits at theta = 0: |gradient| "
            f"{saddle['grad_norm']:.1e}, lambda_max {s.lambda_max:.3e}, lambda_min "
            f"{s.lambda_min:.3e} -> {s.kind}: the loss falls along the lambda_min eigenvector.")
    ctx.say(f"One layer deeper, 64-{CODE}-{CODE}-64 at theta = 0: lambda_max {dp.lambda_max:.3e}, "
            f"lambda_min {dp.lambda_min:.1e} -> {dp.kind!r} to a second-order test: only the "
            "output bias is curved (lambda 1); along every weight direction the second "
            "derivative vanishes and the loss falls at third order: a higher-order saddle.")
    for label, sd in densities.items():
        used = sd.weights > 0
        top = float(sd.nodes[used].max())
        neg_mass = float(sd.weights[used & (sd.nodes < -0.01 * top)].sum()
                         / sd.weights.shape[0])
        ctx.say(f"Spectral density at the {label} ({n_vectors} probes x {steps} Lanczos steps): "
                f"eigenvalues in [{sd.nodes[used].min():.3e}, {top:.3e}], share of the "
                f"spectrum below -1% of lambda_max {neg_mass:.3f}")
    if ctx.figures is not None:
        path = ctx.figure_path("2_saddles.png")
        ctx.figures.saddles(path, rows, densities, saddle, CODE)
        ctx.say(f"figure: {path}")
    start, end = rows[0][1], rows[-1][1]
    return (f"part 2: lambda_max {start.lambda_max:.3g} -> {end.lambda_max:.3g}, lambda_min "
            f"{start.lambda_min:.3g} -> {end.lambda_min:.3g} ({start.kind} -> {end.kind}); "
            f"linear autoencoder at 0: {s.kind} (lambda_min {s.lambda_min:.3g})")
