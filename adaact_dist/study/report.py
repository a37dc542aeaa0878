"""``summary.md`` of the study and ``sweep.md`` of the lr sweep, from the aggregated cells.

Means are over the finished seeds, ± the sample standard deviation; the best mean of each
column is bold. The lr table is printed from :data:`~adaact_dist.train.optimizers.OPTIMIZERS`, so
the summary always states the rule that produced its numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from adaact_dist._machine import cpu_name
from adaact_dist.study.recipes import warmup_epochs
from adaact_dist.study.results import Cell
from adaact_dist.train.optimizers import BASE_BATCH, OPTIMIZERS


def machine() -> str:
    """The CPU's name and the cores this process may use."""
    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores"


@dataclass(frozen=True, kw_only=True)
class Context:
    """How the numbers were produced, printed at the top of each report."""

    command: str
    config: str
    epochs: int
    jobs: int
    threads: int


def _header(title: str, context: Context) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Command: `{context.command}`",
        "",
        f"Machine: {machine()}; every run is one process (world size 1, ZeRO stage 0) with "
        f"{context.threads} thread(s), {context.jobs} run(s) at a time. Recipe: "
        f"`{context.config}`, {context.epochs} epoch(s); only the optimizer, its lr and weight "
        "decay, the batch and the warm-up differ between runs. Seconds per epoch count "
        "training steps only (no evaluation, no checkpoints).",
        "",
    ]


def _lr_rule_table(batch_sizes: Sequence[int], epochs: int) -> list[str]:
    sizes = " / ".join(str(b) for b in batch_sizes)
    lines = [
        f"| optimizer | base lr (batch {BASE_BATCH}) | scaling | lr at {sizes} | weight decay |",
        "|---|---|---|---|---|",
    ]
    for recipe in OPTIMIZERS.values():
        lrs = " / ".join(f"{recipe.lr(b):.3g}" for b in batch_sizes)
        lines.append(
            f"| {recipe.name} | {recipe.base_lr:g} | {recipe.scaling} | {lrs} | "
            f"{recipe.weight_decay:g} |"
        )
    warmups = " / ".join(f"{warmup_epochs(b, epochs):g}" for b in batch_sizes)
    lines += ["", f"Warm-up epochs at batch {sizes}: {warmups} (sqrt of the batch ratio)."]
    return lines


def _pivot(cells: Sequence[Cell], task: str, measure: str, higher_is_better: bool) -> list[str]:
    """Optimizers down, batch sizes across; the best mean per batch in bold."""
    mine = [c for c in cells if c.task == task]
    batches = sorted({c.batch_size for c in mine})
    optimizers = list(dict.fromkeys(c.optimizer for c in mine))
    by_key = {(c.optimizer, c.batch_size): c for c in mine}
    best = {}
    for batch in batches:
        means = [
            c.stats[measure].mean
            for c in mine
            if c.batch_size == batch and c.stats[measure].mean is not None
        ]
        if means:
            best[batch] = max(means) if higher_is_better else min(means)
    lines = [
        "| optimizer | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---" * (len(batches) + 1) + "|",
    ]
    for name in optimizers:
        cells_row = []
        for batch in batches:
            cell = by_key.get((name, batch))
            if cell is None:
                cells_row.append("")
                continue
            stat = cell.stats[measure]
            text = stat.show(1 if measure in ("final_top1", "best_top1") else 3)
            if stat.mean is not None and stat.mean == best.get(batch):
                text = f"**{text}**"
            if cell.diverged or cell.finished + cell.diverged < cell.runs:
                text += f" (n={cell.count()})"
            cells_row.append(text)
        lines.append(f"| {name} | " + " | ".join(cells_row) + " |")
    return lines


def _full_table(cells: Sequence[Cell]) -> list[str]:
    lines = [
        "| task | optimizer | batch | lr | runs | final top-1 | best top-1 | final train loss "
        "| s/epoch | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        s = c.stats
        lines.append(
            f"| {c.task} | {c.optimizer} | {c.batch_size} | {c.lr:.3g} | {c.count()} | "
            f"{s['final_top1'].show()} | {s['best_top1'].show()} | "
            f"{s['final_train_loss'].show(3)} | {s['seconds_per_epoch'].show(2)} | "
            f"{s['images_per_s'].show(0)} |"
        )
    return lines


def summary_markdown(cells: Sequence[Cell], context: Context, figures: Sequence[str]) -> str:
    """The study's report: lr rule, final and best top-1 per task, every number, figures."""
    tasks = list(dict.fromkeys(c.task for c in cells))
    batches = sorted({c.batch_size for c in cells})
    seeds = max((c.runs for c in cells), default=0)
    lines = _header("AdaAct against SGD, AdamW, LAMB and LARS at small scale", context)
    lines += ["## Learning rates", ""]
    lines += _lr_rule_table(batches, context.epochs)
    for task in tasks:
        lines += ["", f"## {task}: final validation top-1 (%), mean ± std over {seeds} seeds", ""]
        lines += _pivot(cells, task, "final_top1", higher_is_better=True)
        lines += ["", f"## {task}: best validation top-1 over the epochs (%)", ""]
        lines += _pivot(cells, task, "best_top1", higher_is_better=True)
        lines += ["", f"## {task}: training loss in the last epoch", ""]
        lines += _pivot(cells, task, "final_train_loss", higher_is_better=False)
        lines += [
            "",
            f"## {task}: activation variance (geometric mean over layers of each layer's "
            "variance averaged over training; the paper's Figure 1 in one number)",
            "",
        ]
        lines += _pivot(cells, task, "activation_variance", higher_is_better=False)
    lines += ["", "## Every cell", ""]
    lines += _full_table(cells)
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def sweep_markdown(cells: Sequence[Cell], context: Context, figures: Sequence[str]) -> str:
    """The sweep's table per task, the best base lr per optimizer, and the table's choice."""
    lines = _header("Learning-rate sweep", context)
    for task in dict.fromkeys(c.task for c in cells):
        mine = [c for c in cells if c.task == task]
        lines += [
            f"## {task}, batch {mine[0].batch_size}",
            "",
            "| optimizer | base lr | runs | final top-1 | best top-1 | final train loss |",
            "|---|---|---|---|---|---|",
        ]
        for c in mine:
            s = c.stats
            lines.append(
                f"| {c.optimizer} | {c.base_lr:g} | {c.count()} | {s['final_top1'].show()} | "
                f"{s['best_top1'].show()} | {s['final_train_loss'].show(3)} |"
            )
        lines += [
            "",
            "| optimizer | best base lr (final top-1) | base lr in the optimizer table |",
            "|---|---|---|",
        ]
        for name in dict.fromkeys(c.optimizer for c in mine):
            scored = [c for c in mine if c.optimizer == name and c.stats["final_top1"].mean]
            best = max(scored, key=lambda c: c.stats["final_top1"].mean, default=None)
            shown = "-" if best is None else f"{best.base_lr:g}"
            lines.append(f"| {name} | {shown} | {OPTIMIZERS[name].base_lr:g} |")
        lines.append("")
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
