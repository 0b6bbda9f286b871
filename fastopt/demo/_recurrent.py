"""Part 4: recurrent matrices and initialization (Pascanu et al., 2013; Le et al., 2015).

Backpropagation through t steps of ``h_t = act(h_{t-1} W + x_t U + b)`` multiplies the gradient
by ``W^T`` (and activation derivatives) t times, so ``||W^t||`` decides whether gradients
vanish or explode. A recurrent W initialised five ways: spectral norm, spectral radius, regime,
``||W^t||`` over t, eigenvalues against the unit circle; and, with ``fastopt.ElmanRNN``, the
gradient norm through time of an RNN reading the digits pixel by pixel (64 steps).
"""

from __future__ import annotations

import numpy as np

from ._common import Context
from ._progress import progress

N_HIDDEN = 32  # gradient_flow's norms are exact up to 32 units (a 32-vector block spans R^n)
STEPS = 64  # the number of pixels of a digit read one at a time


def initialisations(n: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """(label, activation, W) for each initialisation of an n x n recurrent matrix."""
    from .. import init

    gauss = np.random.default_rng(seed).standard_normal((n, n)) / np.sqrt(n)
    return [
        ("Gaussian N(0, 1/n)", "tanh", gauss),
        ("orthogonal", "tanh", init.orthogonal((n, n), rng=seed)),
        ("Gaussian scaled to rho 0.9", "tanh", init.scale_to_spectral_radius(gauss, 0.9)),
        ("Gaussian scaled to rho 1.1", "tanh", init.scale_to_spectral_radius(gauss, 1.1)),
        ("identity (IRNN, ReLU)", "relu", init.identity_recurrent(n)),
    ]


def _rnn_gradients(ctx: Context, inits) -> dict[str, np.ndarray]:
    """||dL/dh_t|| over t of an Elman RNN on the digits read pixel by pixel, for each W."""
    from .. import ElmanRNN

    X = ctx.data.X_train[:256].reshape(-1, STEPS, 1)
    y = ctx.data.y_train[:256]
    rng = np.random.default_rng(ctx.seed)
    U = rng.standard_normal((1, N_HIDDEN))
    V = rng.standard_normal((N_HIDDEN, 10)) / np.sqrt(N_HIDDEN)
    out = {}
    for label, act, W in inits:
        rnn = ElmanRNN(1, N_HIDDEN, 10, activation=act, loss="cross_entropy", output="last")
        theta = rnn.pack([W, U, np.zeros(N_HIDDEN), V, np.zeros(10)])
        out[label] = rnn.grad_norms_through_time(theta, X, y, backend="cython")
    return out


def run(ctx: Context) -> str:
    from .. import gradient_flow, spectral_norm, spectral_radius

    inits = initialisations(N_HIDDEN, ctx.seed)
    bar = progress(len(inits) + 1, "part 4: spectra", enabled=ctx.progress_enabled)
    rows = []
    try:
        for label, act, W in inits:
            sigma = spectral_norm(W, tol=1e-10).value
            rho = spectral_radius(W).value
            flow = gradient_flow(W, steps=STEPS, activation=act)
            rows.append({"label": label, "activation": act, "sigma": sigma, "rho": rho,
                         "flow": flow, "eig": np.linalg.eigvals(W)})
            bar.update(1)
        grads = _rnn_gradients(ctx, inits)
        bar.update(1)
    finally:
        bar.close()
    ctx.say(f"Recurrent W, {N_HIDDEN} x {N_HIDDEN}, five initialisations; ||W^t|| for t = 1.."
            f"{STEPS} by fastopt.gradient_flow (exact at this size):")
    ctx.say(f"{'initialisation':28s} {'act':>4} {'sigma_1':>8} {'rho':>7} {'rate':>7} "
            f"{'||W^' + str(STEPS) + '||':>10}  regime")
    for r in rows:
        f = r["flow"]
        ctx.say(f"{r['label']:28s} {r['activation']:>4} {r['sigma']:8.4f} {r['rho']:7.4f} "
                f"{f.rate:7.4f} {f.norms[-1]:10.3e}  {f.regime}")
    ctx.say("sigma_1 < 1 guarantees vanishing gradients through the linear part; sigma_1 > 1 "
            "with rho < 1 only grows for a while (the Gaussian scaled to rho 0.9: ||W^t|| "
            f"peaks at {rows[2]['flow'].norms.max():.2f} before it decays).")
    ctx.say(f"Elman RNN reading each digit pixel by pixel ({STEPS} steps), 256 images, "
            "||dL/dh_t|| at t = 1 (first pixel) relative to t = T (last):")
    for label, g in grads.items():
        ctx.say(f"  {label:28s} {g[0] / g[-1]:10.3e}")
    if ctx.figures is not None:
        path = ctx.figure_path("4_recurrent.png")
        ctx.figures.recurrent(path, rows, grads, STEPS)
        ctx.say(f"figure: {path}")
    regimes = ", ".join(f"{r['label'].split(' (')[0]} {r['flow'].regime}" for r in rows)
    return f"part 4: {regimes}"
