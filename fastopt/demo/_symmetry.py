"""Part 5 (optional): weight-space symmetry (Entezari et al., 2022; Ainsworth et al., 2023).

Two copies of part 1's network trained from different initial weights reach the same loss but
sit in different permutations of their hidden units; the straight path between them crosses a
loss barrier that aligning the hidden units (``fastopt.symmetry.align``) removes or shrinks.
"""

from __future__ import annotations

import numpy as np

from ._common import Context
from ._progress import progress


def _losses_and_barrier(result) -> tuple[np.ndarray, float]:
    """(losses along the path, barrier) from interpolation_barrier's result, whether it is a
    named tuple / object with ``losses`` and ``barrier``, a dict, or a plain pair."""
    if isinstance(result, dict):
        losses, barrier = result["losses"], result["barrier"]
    elif hasattr(result, "losses") and hasattr(result, "barrier"):
        losses, barrier = result.losses, result.barrier
    else:
        losses, barrier = result[0], result[1]
    return np.asarray(losses, dtype=float), float(barrier)


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
    import fastopt

    symmetry = getattr(fastopt, "symmetry", None)
    if symmetry is None:
        try:
            import importlib

            symmetry = importlib.import_module("fastopt.symmetry")
        except ImportError:
            symmetry = None
    if symmetry is None or not hasattr(symmetry, "interpolation_barrier"):
        ctx.say("  (needs fastopt.symmetry: interpolation_barrier and align, the weight-space "
                "symmetry issue)")
        return "part 5: skipped (needs fastopt.symmetry)"
    part1 = ctx.shared.get("part1")
    if part1 is None:
        return "part 5: skipped (needs part 1's training run)"
    net, theta_a = part1["net"], part1["checkpoints"][-1]
    epochs = len(part1["checkpoints"]) - 1
    bar = progress(epochs + 2, "part 5: second network", enabled=ctx.progress_enabled)
    try:
        theta_b = _train_plain(ctx, net, net.init(np.random.default_rng(ctx.seed + 100)),
                               epochs, bar)
        d = ctx.data
        points = 25
        before = _losses_and_barrier(symmetry.interpolation_barrier(
            net, theta_a, theta_b, d.X_train, d.y_train, points=points))
        bar.update(1)
        aligned = symmetry.align(net, theta_a, theta_b)
        if isinstance(aligned, tuple):  # (theta, permutations)
            aligned = aligned[0]
        after = _losses_and_barrier(symmetry.interpolation_barrier(
            net, theta_a, np.asarray(aligned), d.X_train, d.y_train, points=points))
        bar.update(1)
    except Exception as exc:  # an API that differs from the one coded against: say so
        bar.close()
        ctx.say(f"  (needs a working fastopt.symmetry: {type(exc).__name__}: {exc})")
        return "part 5: skipped (fastopt.symmetry failed)"
    bar.close()
    ctx.say(f"Two MLPs {net.sizes} trained {epochs} epochs from different initial weights; "
            f"training loss along the straight path between them ({points} points):")
    ctx.say(f"  barrier before aligning the hidden units {before[1]:.4f} nats (highest loss "
            f"{before[0].max():.4f}), after align {after[1]:.4f} (highest {after[0].max():.4f})")
    if ctx.figures is not None:
        path = ctx.figure_path("5_symmetry.png")
        ctx.figures.symmetry(path, before[0], after[0], net.sizes)
        ctx.say(f"figure: {path}")
    return f"part 5: loss barrier {before[1]:.3g} before alignment, {after[1]:.3g} after"
