"""The demo's figures (matplotlib's object interface: no pyplot state, no GUI backend).

Imported only when matplotlib is installed (``pip install fastopt[plot]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110
BLUE, ORANGE, GREEN, RED, PURPLE, GREY = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                          "#7f7f7f")
COLORS = [BLUE, ORANGE, GREEN, RED, PURPLE, "#8c564b"]


def _figure(rows: int, cols: int, title: str, size: tuple[float, float]
            ) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    fig.suptitle(title, fontsize=13, fontweight="bold")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _save(fig: Figure, path: Path) -> None:
    for ax in fig.axes:  # epochs are whole numbers
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=DPI)


def ill_conditioning(path: Path, fixed: dict, suggested: dict, lr: float, batch: int) -> None:
    epochs = np.arange(1, len(fixed["loss"]) + 1)
    fig, (a, b, c, d) = _figure(2, 2, "Part 1 - ill-conditioning: SGD on the UCI digits, "
                                f"MLP 64-32-32-10 tanh, minibatch {batch}", (12, 8.5))
    a.semilogy(epochs, fixed["loss"], "o-", color=BLUE, label=f"training loss, lr {lr}")
    a.semilogy(epochs, suggested["loss"], "s--", color=ORANGE,
               label="training loss, suggested lr")
    a.set(title="Loss and accuracy per epoch", xlabel="epoch",
          ylabel="training cross-entropy (nats, log scale)")
    a2 = a.twinx()
    a2.plot(epochs, 100 * np.asarray(fixed["test_acc"]), "^:", color=BLUE, alpha=0.6,
            label=f"test accuracy, lr {lr}")
    a2.plot(epochs, 100 * np.asarray(suggested["test_acc"]), "v:", color=ORANGE, alpha=0.6,
            label="test accuracy, suggested lr")
    a2.set_ylabel("test accuracy (%)")
    lines = a.get_legend_handles_labels()
    lines2 = a2.get_legend_handles_labels()
    a.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")

    b.semilogy(epochs, fixed["gg"], "o-", color=GREEN, label=r"$g^\top g$")
    b.semilogy(epochs, fixed["ghg"], "s-", color=RED, label=r"$g^\top H g$")
    for e, flag in zip(epochs, fixed["verdict"], strict=True):
        if flag:
            b.axvspan(e - 0.5, e + 0.5, color=RED, alpha=0.1, lw=0)
    b.set(title="Gradient and curvature along it (minibatch mean per epoch)",
          xlabel="epoch", ylabel="value (log scale)")
    b.legend(fontsize=9, title="shaded: monitor says ill-conditioned" if any(fixed["verdict"])
             else "monitor never flagged", title_fontsize=8)

    c.semilogy(epochs, fixed["best"], "o-", color=PURPLE,
               label=r"best step $g^\top g / g^\top H g$ (suggested lr)")
    c.semilogy(epochs, 2 * np.asarray(fixed["best"]), ":", color=PURPLE, alpha=0.6,
               label="2 x best step: the quadratic model predicts no decrease above")
    c.axhline(lr, color=BLUE, ls="--", label=f"learning rate used ({lr})")
    c.set(title="Step sizes along -g", xlabel="epoch", ylabel="step size (log scale)")
    top = max(2 * np.nanmax(fixed["best"]), lr)
    c.set_ylim(top=top * 4)  # room for the legend above the curves
    c.legend(fontsize=8, loc="upper right")

    d.plot(epochs, fixed["drop_lr"], "o-", color=BLUE, label=f"step of the learning rate {lr}")
    d.plot(epochs, fixed["drop_best"], "s--", color=PURPLE, label="step of the best size")
    drops = np.concatenate([fixed["drop_lr"], fixed["drop_best"]])
    drops = drops[np.isfinite(drops)]
    if drops.size and drops.min() > 0:
        d.set_yscale("log")
        scale = "log scale"
    else:  # a step that raised the loss: keep the sign visible
        d.set_yscale("symlog", linthresh=1e-3)
        d.axhline(0, color=GREY, lw=1)
        scale = "symmetric log scale"
    d.set(title="What one step does to its minibatch's loss (mean per epoch)", xlabel="epoch",
          ylabel=f"loss decrease J(θ) - J(θ - ε g) (nats, {scale})")
    d.legend(fontsize=9)
    _save(fig, path)


def saddles(path: Path, rows: list, densities: dict, saddle: dict, code: int) -> None:
    fig, (a, b, c, d) = _figure(2, 2, "Part 2 - saddles and minima: the Hessian along "
                                "part 1's run, and a linear network's saddle", (12, 8.5))
    ep = np.array([e for e, _ in rows])
    lmax = np.array([x.lambda_max for _, x in rows])
    lmin = np.array([x.lambda_min for _, x in rows])
    a.semilogy(ep, lmax, "o-", color=RED, label=r"$\lambda_{max}$")
    a.semilogy(ep, np.abs(lmin), "s-", color=BLUE, label=r"$|\lambda_{min}|$ ($\lambda_{min}<0$)")
    for e, x in rows:
        a.annotate(x.kind, (e, x.lambda_max), textcoords="offset points", xytext=(0, 7),
                   ha="center", fontsize=8)
    a.set(title="Extreme Hessian eigenvalues during training", xlabel="epoch",
          ylabel="eigenvalue magnitude (log scale)")
    a.legend(fontsize=9)

    for (label, sd), color in zip(densities.items(), (BLUE, RED), strict=False):
        b.semilogy(sd.grid, np.maximum(sd.density, 1e-8), color=color,
                   label=f"{label} of training")
    b.set_ylim(bottom=1e-4)
    b.axvline(0, color=GREY, lw=1)
    b.set(title="Hessian eigenvalue density (stochastic Lanczos quadrature)",
          xlabel="eigenvalue", ylabel="density (log scale)")
    b.legend(fontsize=9)

    grid, surf = saddle["grid"], saddle["surface"]
    cs = c.contourf(grid, grid, surf, levels=20, cmap="viridis")
    c.contour(grid, grid, surf, levels=20, colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=c, label="loss (mean squared error)")
    c.plot([0], [0], "r*", ms=14, label="saddle at the origin")
    c.plot(grid, 1 / np.where(np.abs(grid) < 0.55, np.nan, grid), "w--", lw=1,
           label=r"minima $w_1 w_2 = 1$")
    c.set_xlim(grid[0], grid[-1])
    c.set_ylim(grid[0], grid[-1])
    c.set(title=r"Loss of $y = w_2 w_1 x$ fitting $y = x$", xlabel=r"$w_1$", ylabel=r"$w_2$")
    c.legend(fontsize=8, loc="lower right")

    lo, hi = saddle["lambda"]
    d.plot(saddle["t"], saddle["along"]["max"], color=RED,
           label=rf"along the $\lambda_{{max}}$ eigenvector ({hi:.2f})")
    d.plot(saddle["t"], saddle["along"]["min"], color=BLUE,
           label=rf"along the $\lambda_{{min}}$ eigenvector ({lo:.2f})")
    d.plot(saddle["t"], saddle["along"]["deep"], color=PURPLE, ls="--",
           label=f"64-{code}-{code}-64 along a rank-one path (Hessian 0: third order)")
    d.axhline(0, color=GREY, lw=1)
    d.set_ylim(-0.5, 1.3)
    d.set(title="Linear autoencoders of the digits, from θ = 0",
          xlabel="step s from θ = 0 (unit directions; rank-one path: s per layer)",
          ylabel="loss change from θ = 0 (MSE)")
    d.legend(fontsize=9)
    _save(fig, path)


def batchnorm(path: Path, rec: dict, sharp: dict, lr: float, method: str) -> None:
    fig, (a, b, c) = _figure(1, 3, "Part 3 - batch normalization: the same MLP 64-32-32-10 "
                             f"with and without batch norm, SGD lr {lr}", (15, 4.8))
    epochs = np.arange(1, len(rec["loss_plain"]) + 1)
    a.semilogy(epochs, rec["loss_plain"], "o-", color=BLUE, label="plain")
    a.semilogy(epochs, rec["loss_bn"], "s-", color=GREEN, label="batch norm")
    a.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy (nats, log scale)")
    a.legend(fontsize=9)
    b.plot(epochs, 100 * np.asarray(rec["acc_plain"]), "o-", color=BLUE, label="plain")
    b.plot(epochs, 100 * np.asarray(rec["acc_bn"]), "s-", color=GREEN,
           label="batch norm (running statistics)")
    b.set(title="Test accuracy (450 held-out digits)", xlabel="epoch", ylabel="accuracy (%)")
    b.legend(fontsize=9)
    c.plot(sharp["epoch"], sharp["plain"], "o-", color=BLUE, label="plain (exact HVP)")
    c.plot(sharp["epoch"], sharp["bn"], "s-", color=GREEN,
           label="batch norm (" + method.split(" (")[0].replace(" HVPs", " HVP") + ")")
    c.axhline(2 / lr, color=RED, ls="--", label=f"2 / lr = {2 / lr:g}")
    c.set(title=r"Sharpness $\lambda_{max}$ of the Hessian (256 images)", xlabel="epoch",
          ylabel=r"$\lambda_{max}$ (nats per unit$^2$ of θ)")
    c.set_ylim(bottom=0)
    c.legend(fontsize=9)
    _save(fig, path)


def recurrent(path: Path, rows: list, grads: dict | None, steps: int) -> None:
    n = len(rows[0]["eig"])
    k = len(rows)
    bottom = ["flow"] * k if grads is None else ["flow"] * (k - k // 2) + ["grad"] * (k // 2)
    fig = Figure(figsize=(3.1 * k, 8.4), layout="constrained")
    ax = fig.subplot_mosaic([[f"eig{i}" for i in range(k)], bottom],
                            height_ratios=[1, 1.35])
    fig.suptitle(f"Part 4 - recurrent matrices and initialization: a {n} x {n} W five ways",
                 fontsize=13, fontweight="bold")
    circle = np.linspace(0, 2 * np.pi, 400)
    for i, (r, color) in enumerate(zip(rows, COLORS, strict=False)):
        a = ax[f"eig{i}"]
        a.plot(np.cos(circle), np.sin(circle), color="k", lw=1)
        a.scatter(r["eig"].real, r["eig"].imag, s=18, color=color, zorder=3)
        a.set_aspect("equal")
        a.set_xlim(-1.45, 1.45)
        a.set_ylim(-1.45, 1.45)
        a.grid(True, alpha=0.3)
        a.set_title(f"{r['label']}\n" + rf"$\sigma_1$ {r['sigma']:.2f}, $\rho$ {r['rho']:.2f}: "
                    f"{r['flow'].regime}", fontsize=9)
        a.set_xlabel("Re(eigenvalue)", fontsize=8)
        if np.ptp(r["eig"].real) < 1e-12 and np.ptp(r["eig"].imag) < 1e-12:
            a.annotate(f"all {n} eigenvalues\nequal {r['eig'][0].real:g}",
                       (r["eig"][0].real, 0), xytext=(-0.9, 0.25), fontsize=8,
                       arrowprops={"arrowstyle": "->", "color": GREY})
        if i == 0:
            a.set_ylabel("Im(eigenvalue)\n(black: unit circle)", fontsize=8)
    b = ax["flow"]
    t = np.arange(1, steps + 1)
    styles = ["-", "-", "-", "-", "--"]
    for r, color, ls in zip(rows, COLORS, styles, strict=False):
        b.semilogy(t, r["flow"].norms, color=color, lw=2, ls=ls,
                   label=f"{r['label']}: {r['flow'].regime}")
    b.axhline(1, color=GREY, lw=1)
    b.grid(True, alpha=0.3)
    b.set(title=r"$\|W^t\|_2$, the linear part of backpropagation through t steps",
          xlabel="time steps t", ylabel=r"$\|W^t\|_2$ (log scale)")
    b.legend(fontsize=8)
    if grads is not None:
        c = ax["grad"]
        for (label, g), color, ls in zip(grads.items(), COLORS, styles, strict=False):
            c.semilogy(np.arange(1, len(g) + 1), g, color=color, lw=2, ls=ls, label=label)
        c.grid(True, alpha=0.3)
        c.set(title=r"Elman RNN reading digits pixel by pixel: $\|\partial L/\partial h_t\|$",
              xlabel="time step t (pixel)", ylabel="gradient norm (log scale)")
        c.legend(fontsize=8)
    _save(fig, path)


def symmetry(path: Path, before: np.ndarray, after: np.ndarray, sizes: list) -> None:
    fig, (a,) = _figure(1, 1, "Part 5 - weight-space symmetry:\nthe straight path between two "
                        "independently trained networks", (8, 5.5))
    a.plot(np.linspace(0, 1, len(before)), before, "o-", color=RED,
           label="straight path, hidden units as trained")
    a.plot(np.linspace(0, 1, len(after)), after, "s-", color=GREEN,
           label="after aligning the hidden units (fastopt.symmetry.align)")
    a.set(title=f"MLP {'-'.join(map(str, sizes))} on the digits",
          xlabel=r"interpolation t in $(1 - t)\,\theta_a + t\,\theta_b$",
          ylabel="training loss (cross-entropy, nats)")
    a.legend(fontsize=9)
    _save(fig, path)
