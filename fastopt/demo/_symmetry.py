"""Part 5 (optional): weight-space symmetry (Entezari et al., 2022; Ainsworth et al., 2023).

Two copies of part 1's network trained from different initial weights reach the same loss but
sit in different permutations of their hidden units; the straight path between them crosses a
loss barrier that aligning the hidden units (``fastopt.symmetry.align``) removes or shrinks.
"""

from __future__ import annotations

import numpy as np

from ._common import Context
from ._progress import progress


def _train_plain(ctx: Context, net, theta: np.ndarray, epochs: int, bar) -> np.ndarray:
    from ._ill_conditioning import BATCH, LEARNING_RATE

    d = ctx.data
    rng = np.random.default_rng(ctx.seed + 2)
    theta = theta.copy()
    for _ in range(epochs):
        order = rng.permutation(d.n_train)
        for j in range(d.n_train // BATCH):
            idx = order[j * BATCH:(j + 1) * BATCH]
            theta -= LEARNING_RATE * net.loss_and_grad(theta, d.X_train[idx], d.y_train[idx],
                                                       backend="cython")[1]
        bar.update(1)
    return theta


def run(ctx: Context) -> str:
    from ..symmetry import count_equivalent, interpolation_barrier

    part1 = ctx.shared.get("part1")
    if part1 is None:
        return "part 5: skipped (needs part 1's training run)"
    net, theta_a = part1["net"], part1["checkpoints"][-1]
    epochs = len(part1["checkpoints"]) - 1
    bar = progress(epochs + 1, "part 5: second network", enabled=ctx.progress_enabled)
    theta_b = _train_plain(ctx, net, net.init(np.random.default_rng(ctx.seed + 100)), epochs,
                           bar)
    d = ctx.data
    points = 25
    path = interpolation_barrier(net, theta_a, theta_b, d.X_train, d.y_train, points=points,
                                 align="weights", backend="cython")
    bar.update(1)
    bar.close()
    equivalent = count_equivalent(net)
    ctx.say(f"Two MLPs {net.sizes} trained {epochs} epochs from different initial weights; each "
            f"has 10^{equivalent.log10:.0f} equivalent parameter vectors (unit permutations and "
            f"tanh sign flips). Training loss along the straight path between them ({points} "
            "points):")
    ctx.say(f"  barrier before aligning the hidden units {path.barrier:.4f} nats (highest loss "
            f"{path.loss.max():.4f}, lowest accuracy {path.accuracy.min():.3f}); after "
            f"fastopt.symmetry.align (weight matching) {path.aligned_barrier:.4f} (highest "
            f"{path.aligned_loss.max():.4f}, lowest accuracy {path.aligned_accuracy.min():.3f})")
    if ctx.figures is not None:
        figure = ctx.figure_path("5_symmetry.png")
        ctx.figures.symmetry(figure, path.loss, path.aligned_loss, net.sizes)
        ctx.say(f"figure: {figure}")
    return (f"part 5: loss barrier {path.barrier:.3g} before alignment, "
            f"{path.aligned_barrier:.3g} after")
