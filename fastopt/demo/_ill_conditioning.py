"""Part 1: ill-conditioning and the step size (Goodfellow et al., Deep Learning, section 8.2.1).

A step of size eps along -g changes the loss by about ``-eps g^T g + eps^2 g^T H g / 2``: when
``g^T H g`` grows faster than ``g^T g``, a fixed learning rate stops paying off even though the
gradient does not shrink. Plain SGD on the digits, measured every epoch with the exact HVP.
"""

from __future__ import annotations

import numpy as np

from ._common import SIZES, Context, accuracy
from ._progress import progress

LEARNING_RATE = 0.5
BATCH = 32
MEASURE_EVERY = 4  # curvature along the gradient on every 4th minibatch (before its step)
# The monitor compares consecutive epochs: an epoch whose g^T H g doubled while g^T g did not
# shrink is flagged (its defaults, 10x over 10 records, suit a per-step record of long runs).
MONITOR_WINDOW = 2
MONITOR_GROWTH = 2.0


class _Curv:
    """An epoch's average of minibatch curvatures, in the shape IllConditioningMonitor reads."""

    def __init__(self, g_dot_g: float, g_h_g: float) -> None:
        self.g_dot_g, self.g_h_g = g_dot_g, g_h_g


def _train(ctx: Context, net, theta0: np.ndarray, epochs: int, lr: float | None, bar,
           record: dict, label: str) -> np.ndarray:
    """SGD from theta0. ``lr=None``: the monitor's suggested rate, updated every epoch (the
    first epoch's from the curvature at theta0)."""
    from .. import IllConditioningMonitor, curvature_along_gradient

    d = ctx.data
    rng = np.random.default_rng(ctx.seed + 1)  # the same minibatch order for both runs
    theta = theta0.copy()
    monitor = IllConditioningMonitor(window=MONITOR_WINDOW, growth=MONITOR_GROWTH)
    record.update(loss=[], test_acc=[], gg=[], ghg=[], best=[], verdict=[], lr=[],
                  drop_lr=[], drop_best=[], checkpoints=[theta.copy()])
    Xm, ym = ctx.measure_batch()
    step = lr
    if lr is None:
        step = curvature_along_gradient(net, theta, Xm, ym, backend="cython").best_step
    for epoch in range(epochs):
        order = rng.permutation(d.n_train)
        gg, ghg, drop_lr, drop_best = [], [], [], []
        for j, start in enumerate(range(0, d.n_train - BATCH + 1, BATCH)):
            idx = order[start:start + BATCH]
            Xb, yb = d.X_train[idx], d.y_train[idx]
            loss, g = net.loss_and_grad(theta, Xb, yb, backend="cython")
            if j % MEASURE_EVERY == 0:
                hg = net.hvp(theta, Xb, yb, g, backend="cython")
                gg.append(float(g @ g))
                ghg.append(float(g @ hg))
                best = gg[-1] / ghg[-1] if ghg[-1] > 0 else np.inf
                # what one step of each size really does to this minibatch's loss
                drop_lr.append(loss - net.loss(theta - step * g, Xb, yb, backend="cython"))
                if np.isfinite(best):
                    drop_best.append(loss - net.loss(theta - best * g, Xb, yb,
                                                     backend="cython"))
            theta -= step * g
            bar.update(1)
        record["lr"].append(step)
        curv = _Curv(float(np.mean(gg)), float(np.mean(ghg)))
        monitor.update(epoch, curv)
        full = net.loss(theta, d.X_train, d.y_train, backend="cython")
        acc = accuracy(net.forward(theta, d.X_test), d.y_test)
        record["loss"].append(full)
        record["test_acc"].append(acc)
        record["gg"].append(curv.g_dot_g)
        record["ghg"].append(curv.g_h_g)
        record["best"].append(monitor.suggested_lr)
        record["verdict"].append(monitor.ill_conditioned)
        record["drop_lr"].append(float(np.mean(drop_lr)))
        record["drop_best"].append(float(np.mean(drop_best)) if drop_best else np.nan)
        record["checkpoints"].append(theta.copy())
        bar.set_postfix_str(f"{label}: epoch {epoch + 1} loss {full:.3f} acc {acc:.3f}")
        if lr is None and np.isfinite(monitor.suggested_lr):
            step = monitor.suggested_lr
    record["monitor"] = monitor
    return theta


def run(ctx: Context) -> str:
    from .. import MLP

    d = ctx.data
    epochs = ctx.epochs
    net = MLP(SIZES, activation="tanh", loss="cross_entropy")
    theta0 = net.init(np.random.default_rng(ctx.seed))
    ctx.say(f"MLP {SIZES} tanh + softmax cross-entropy, {net.num_params} parameters; plain SGD, "
            f"learning rate {LEARNING_RATE}, minibatch {BATCH}, {epochs} epochs on "
            f"{d.n_train} training images ({len(d.y_test)} held out).")
    ctx.say(f"Every {MEASURE_EVERY}th minibatch, before its step: g^T g and g^T H g (one exact "
            "HVP), the best step g^T g / g^T H g, and the loss drop of the step actually taken.")
    steps = epochs * (d.n_train // BATCH)
    bar = progress(2 * steps, "part 1: SGD", enabled=ctx.progress_enabled)
    fixed: dict = {}
    suggested: dict = {}
    try:
        _train(ctx, net, theta0, epochs, LEARNING_RATE, bar, fixed, f"lr {LEARNING_RATE}")
        _train(ctx, net, theta0, epochs, None, bar, suggested, "suggested lr")
    finally:
        bar.close()

    ctx.say(f"{'epoch':>5} {'train loss':>10} {'test acc':>8} {'g^T g':>9} {'g^T H g':>9} "
            f"{'best step':>9} {'ill-cond.':>9} {'drop at lr':>10} {'at best':>9}")
    for e in range(epochs):
        ctx.say(f"{e + 1:5d} {fixed['loss'][e]:10.4f} {fixed['test_acc'][e]:8.3f} "
                f"{fixed['gg'][e]:9.2e} {fixed['ghg'][e]:9.2e} {fixed['best'][e]:9.3f} "
                f"{'yes' if fixed['verdict'][e] else 'no':>9} {fixed['drop_lr'][e]:10.2e} "
                f"{fixed['drop_best'][e]:9.2e}")
    gg_ratio = fixed["gg"][-1] / fixed["gg"][0]
    ghg_ratio = fixed["ghg"][-1] / fixed["ghg"][0]
    loss_ratio = fixed["loss"][-1] / fixed["loss"][0]
    ctx.say(f"From epoch 1 to {epochs}: training loss x{loss_ratio:.3g}, minibatch g^T g "
            f"x{gg_ratio:.3g}, g^T H g x{ghg_ratio:.3g}; the best step went from "
            f"{fixed['best'][0]:.3f} to {fixed['best'][-1]:.3f} (learning rate {LEARNING_RATE}).")
    flagged = [e + 1 for e, v in enumerate(fixed["verdict"]) if v]
    verdict = (f"ill-conditioned at epochs {flagged} (g^T H g grew {MONITOR_GROWTH:g}x or more "
               "in an epoch while g^T g did not shrink)" if flagged else
               f"never flagged (g^T H g never grew {MONITOR_GROWTH:g}x in an epoch while g^T g "
               "held)")
    ctx.say(f"IllConditioningMonitor(window={MONITOR_WINDOW}, growth={MONITOR_GROWTH:g}): "
            f"{verdict}; suggested learning rate at the end "
            f"{fixed['monitor'].suggested_lr:.3f}.")
    ctx.say(f"What the suggested rate would have done: SGD restarted from the same weights with "
            f"the monitor's suggestion each epoch (rates {min(suggested['lr']):.3f} to "
            f"{max(suggested['lr']):.3f}) ends at training loss {suggested['loss'][-1]:.4f}, "
            f"test accuracy {suggested['test_acc'][-1]:.3f} (fixed rate: "
            f"{fixed['loss'][-1]:.4f}, {fixed['test_acc'][-1]:.3f}).")
    ctx.shared["part1"] = {"net": net, "checkpoints": fixed["checkpoints"], "record": fixed,
                           "theta0": theta0}
    if ctx.figures is not None:
        path = ctx.figure_path("1_ill_conditioning.png")
        ctx.figures.ill_conditioning(path, fixed, suggested, LEARNING_RATE, BATCH)
        ctx.say(f"figure: {path}")
    over = sum(1 for b in fixed["best"] if b < LEARNING_RATE)
    return (f"part 1: g^T g x{gg_ratio:.2g} and g^T H g x{ghg_ratio:.2g} over training, "
            f"ill-conditioned epochs {flagged or 'none'}; lr {LEARNING_RATE} above the best step "
            f"in {over}/{epochs} epochs, suggested lr {fixed['monitor'].suggested_lr:.3f}; test "
            f"accuracy {fixed['test_acc'][-1]:.3f}")
