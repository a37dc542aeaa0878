"""The study's PNGs (matplotlib, Agg), drawn from the run directories' CSV files.

- ``top1_vs_epoch_<task>.png``: validation top-1 against epoch, one panel per batch size, one
  line per optimizer (mean over seeds, band from the lowest to the highest seed);
- ``top1_vs_batch.png``: final top-1 against batch size, one panel per task (the large-batch
  picture; error bars are the standard deviation over seeds);
- ``activation_variance_<task>.png``: each layer's activation variance averaged over
  training, one bar group per layer and one bar per optimizer, one panel per batch size
  (the layout of the paper's Figure 1);
- ``sweep.png``: final top-1 against the base lr, one panel per optimizer.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from adaact_dist.study.plotting import optimizer_color, pyplot, save
from adaact_dist.study.recipes import RunSpec
from adaact_dist.study.results import Cell
from adaact_dist.study.runner import RunState, run_state
from adaact_dist.train.metrics import EVAL_CSV
from adaact_dist.train.plots import mean_activation_variance


def _finished(specs: Sequence[RunSpec]) -> list[RunSpec]:
    return [s for s in specs if run_state(s.run_dir) == RunState.FINISHED]


def _eval_curve(run_dir: Path) -> dict[int, float]:
    with (run_dir / EVAL_CSV).open(newline="") as handle:
        return {int(row["epoch"]): float(row["top1"]) for row in csv.DictReader(handle)}


def plot_top1_vs_epoch(specs: Sequence[RunSpec], task: str, out: Path) -> Path:
    plt = pyplot()
    mine = [s for s in _finished(specs) if s.task == task]
    batches = sorted({s.batch_size for s in specs if s.task == task})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4), squeeze=False)
    axes = axes[0]
    for ax, batch in zip(axes, batches):
        for name in dict.fromkeys(s.optimizer for s in specs):
            curves = [
                _eval_curve(s.run_dir) for s in mine if (s.optimizer, s.batch_size) == (name, batch)
            ]
            if not curves:
                continue
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            values = [[c[e] for c in curves] for e in epochs]
            color = optimizer_color(name)
            ax.plot(epochs, [sum(v) / len(v) for v in values], "-", color=color, label=name)
            if len(curves) > 1:
                ax.fill_between(
                    epochs,
                    [min(v) for v in values],
                    [max(v) for v in values],
                    color=color,
                    alpha=0.15,
                    lw=0,
                )
        ax.set(title=f"{task}, batch {batch}", xlabel="epoch", ylabel="validation top-1 (%)")
        ax.grid(alpha=0.3)
    return save(fig, out / f"top1_vs_epoch_{task}.png", legend_from=axes[0])


def plot_top1_vs_batch(cells: Sequence[Cell], out: Path) -> Path:
    plt = pyplot()
    tasks = list(dict.fromkeys(c.task for c in cells))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    axes = axes[0]
    for ax, task in zip(axes, tasks):
        mine = [c for c in cells if c.task == task and c.stats["final_top1"].mean is not None]
        for name in dict.fromkeys(c.optimizer for c in cells):
            points = sorted((c for c in mine if c.optimizer == name), key=lambda c: c.batch_size)
            if not points:
                continue
            ax.errorbar(
                [c.batch_size for c in points],
                [c.stats["final_top1"].mean for c in points],
                yerr=[c.stats["final_top1"].std or 0.0 for c in points],
                fmt="o-",
                capsize=3,
                color=optimizer_color(name),
                label=name,
            )
        ax.set_xscale("log", base=2)
        batches = sorted({c.batch_size for c in cells if c.task == task})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set(title=task, xlabel="global batch size", ylabel="final validation top-1 (%)")
        ax.grid(alpha=0.3)
    return save(fig, out / "top1_vs_batch.png", legend_from=axes[0])


def plot_activation_variance(specs: Sequence[RunSpec], task: str, out: Path) -> Path:
    """Figure 1's layout: per layer, one bar per optimizer (mean over seeds), log scale."""
    plt = pyplot()
    mine = [s for s in _finished(specs) if s.task == task]
    batches = sorted({s.batch_size for s in specs if s.task == task})
    optimizers = list(dict.fromkeys(s.optimizer for s in specs))
    fig, axes = plt.subplots(len(batches), 1, figsize=(12, 3.2 * len(batches)), squeeze=False)
    axes = axes[:, 0]
    for ax, batch in zip(axes, batches):
        layers: list[str] = []
        per_optimizer: dict[str, dict[str, float]] = {}
        for name in optimizers:
            runs = [
                mean_activation_variance(s.run_dir)
                for s in mine
                if (s.optimizer, s.batch_size) == (name, batch)
            ]
            runs = [r for r in runs if r]
            if not runs:
                continue
            layers = layers or list(runs[0])
            per_optimizer[name] = {
                layer: sum(r[layer] for r in runs) / len(runs) for layer in layers
            }
        width = 0.8 / max(1, len(per_optimizer))
        for i, (name, values) in enumerate(per_optimizer.items()):
            ax.bar(
                [x + (i - (len(per_optimizer) - 1) / 2) * width for x in range(len(layers))],
                [values[layer] for layer in layers],
                width=width,
                color=optimizer_color(name),
                label=name,
            )
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set(
            title=f"{task}, batch {batch}: activation variance averaged over training",
            ylabel="variance",
        )
    return save(fig, out / f"activation_variance_{task}.png", legend_from=axes[0])


def plot_sweep(cells: Sequence[Cell], out: Path) -> Path:
    """Final top-1 (mean, and standard deviation over the sweep's seeds) against the base lr."""
    plt = pyplot()
    optimizers = list(dict.fromkeys(c.optimizer for c in cells))
    tasks = list(dict.fromkeys(c.task for c in cells))
    fig, axes = plt.subplots(
        1, len(optimizers), figsize=(3.2 * len(optimizers), 3.4), squeeze=False, sharey=True
    )
    axes = axes[0]
    for ax, name in zip(axes, optimizers):
        ax.set_xscale("log")
        lrs: set[float] = set()
        for style, task in zip(("o-", "s--", "^:"), tasks):
            mine = sorted(
                (c for c in cells if (c.optimizer, c.task) == (name, task)), key=lambda c: c.base_lr
            )
            stats = [c.stats["final_top1"] for c in mine]
            ax.errorbar(
                [c.base_lr for c in mine],
                [math.nan if s.mean is None else s.mean for s in stats],
                yerr=[s.std or 0.0 for s in stats],
                fmt=style,
                capsize=3,
                color=optimizer_color(name),
                label=task,
            )
            lrs.update(c.base_lr for c in mine)
        ax.set_xticks(sorted(lrs), [f"{lr:g}" for lr in sorted(lrs)], fontsize=8)
        ax.minorticks_off()
        ax.set(title=name, xlabel=f"base lr (batch {cells[0].batch_size})")
        ax.grid(alpha=0.3)
        if len(tasks) > 1:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("final validation top-1 (%)")
    return save(fig, out / "sweep.png")
