"""The critical-batch study's PNGs (matplotlib, Agg).

- ``steps_to_target.png``: steps to the target at each batch size's best lr against batch
  size, log-log, one line per optimizer (mean over seeds, bars from the lowest to the highest
  seed), with the perfect-scaling line through the smallest batch that reached the target
  (dashed: doubling the batch halves the steps) and the fitted ``S_min (1 + B_noise / B)``
  (dotted): the layout of Shallue et al.'s Figure 1;
- ``best_lr.png``: the best lr against batch size, log-log, one panel per optimizer, with the
  linear and the square-root scaling rules drawn through the smallest batch's best lr;
- ``noise_scale.png``: the smoothed gradient noise scale ``B_simple`` over training, one line
  per noise run, with each optimizer's fitted ``B_noise`` as a horizontal line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from adaact_dist.study.critical_results import BatchPoint, CriticalBatch
from adaact_dist.study.plotting import optimizer_color, pyplot, save


def plot_steps_to_target(
    points: dict[str, list[BatchPoint]], fits: dict[str, CriticalBatch], target: float, out: Path
) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, series in points.items():
        color = optimizer_color(name)
        done = [p for p in series if p.mean_steps is not None]
        if not done:
            continue
        sizes = [p.batch_size for p in done]
        means = [p.mean_steps for p in done]
        low = [m - min(p.steps) for m, p in zip(means, done)]
        high = [max(p.steps) - m for m, p in zip(means, done)]
        ax.errorbar(sizes, means, yerr=[low, high], fmt="o-", color=color, label=name, capsize=3)
        first = done[0]
        ax.plot(
            sizes,
            [first.mean_steps * first.batch_size / b for b in sizes],
            "--",
            color=color,
            alpha=0.45,
            linewidth=1,
        )
        fit = fits[name].fit if name in fits else None
        if fit is not None:
            grid = [sizes[0] * (sizes[-1] / sizes[0]) ** (i / 50) for i in range(51)]
            ax.plot(grid, [fit.steps(b) for b in grid], ":", color=color, linewidth=1.5)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"steps to {target:g}% validation top-1 (best lr)")
    ax.set_title(
        "dashed: perfect scaling from each curve's first point; dotted: S_min (1 + B_noise/B)"
    )
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    return save(fig, out / "steps_to_target.png", legend_from=ax)


def plot_best_lr(points: dict[str, list[BatchPoint]], out: Path) -> Path:
    plt = pyplot()
    names = [n for n, series in points.items() if series]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        series = points[name]
        sizes = [p.batch_size for p in series]
        lrs = [p.lr for p in series]
        reached = [p.mean_steps is not None for p in series]
        ax.plot(sizes, lrs, "-", color=optimizer_color(name), label=name)
        ax.plot(
            [b for b, r in zip(sizes, reached) if r],
            [lr for lr, r in zip(lrs, reached) if r],
            "o",
            color=optimizer_color(name),
        )
        ax.plot(
            [b for b, r in zip(sizes, reached) if not r],
            [lr for lr, r in zip(lrs, reached) if not r],
            "x",
            color=optimizer_color(name),
        )
        base_b, base_lr = sizes[0], lrs[0]
        ax.plot(sizes, [base_lr * b / base_b for b in sizes], "--", color="0.4", label="linear")
        ax.plot(
            sizes, [base_lr * math.sqrt(b / base_b) for b in sizes], ":", color="0.4", label="sqrt"
        )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("best lr (x: target not reached)")
    return save(fig, out / "best_lr.png", legend_from=axes[0][0])


def plot_noise_scale(
    rows: Sequence[dict], fits: dict[str, CriticalBatch], out: Path
) -> Path | None:
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        runs.setdefault((row["optimizer"], row["batch_size"], row["micro_batch_size"]), []).append(
            row
        )
    for (name, batch, micro), series in runs.items():
        color = optimizer_color(name)
        ax.plot(
            [r["step"] + 1 for r in series],
            [r["b_simple"] for r in series],
            "-",
            color=color,
            label=f"{name}: B_simple (B={batch}, b={micro})",
        )
        fit = fits[name].fit if name in fits else None
        if fit is not None:
            ax.axhline(fit.b_noise, color=color, linestyle="--", linewidth=1, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("gradient noise scale (smoothed)")
    ax.set_title("dashed: B_noise fitted to the steps-to-target curve")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    return save(fig, out / "noise_scale.png", legend_from=ax)
