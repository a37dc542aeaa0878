"""``summary.md`` of the critical-batch study: how it ran, the best lr and steps per batch size,
the fits, and the noise scale beside the fitted ``B_noise``."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from adaact_dist.study.critical_batch import BUDGET_FACTOR, GRID_FACTOR, INITIAL_GRID, SeedRule
from adaact_dist.study.critical_results import BatchPoint, CriticalBatch
from adaact_dist.study.report import machine


@dataclass(frozen=True, kw_only=True)
class StudyContext:
    """How the numbers were produced."""

    command: str
    config: str
    task: str
    target: float
    max_steps: int
    seeds: SeedRule
    jobs: int
    threads: int
    runs: int
    wall_s: float
    """Wall time of this invocation (finished runs skipped)."""
    final_runs: int = 0
    """Runs that have ended, in this invocation or earlier ones."""
    final_runs_wall_s: float = 0.0
    """Their wall times summed: what the study has cost so far, whatever its invocations."""
    unfinished: tuple[str, ...] = ()
    """Cells and noise runs left out (``--report-only`` before the study ended)."""


EDGE_MARK = "*"
"""Marks a best lr at the edge of the lrs its cell tried."""


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _steps_table(points: dict[str, list[BatchPoint]]) -> list[str]:
    sizes = sorted({p.batch_size for series in points.values() for p in series})
    lines = [
        "| optimizer | " + " | ".join(f"B={b}" for b in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, series in points.items():
        by_size = {p.batch_size: p for p in series}
        cells = []
        for b in sizes:
            point = by_size.get(b)
            if point is None:
                cells.append("")
                continue
            lr = f"lr {point.lr:.3g}{EDGE_MARK if point.at_edge else ''}"
            if point.mean_steps is None:
                reached = sum(s is not None for s in point.steps)
                cells.append(f"not reached ({reached}/{len(point.steps)}), {lr}")
            else:
                cells.append(f"{point.mean_steps:.0f} ({lr})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _fit_table(fits: Sequence[CriticalBatch]) -> list[str]:
    lines = [
        "| optimizer | S_min | B_noise | B_noise per seed | max useful batch | fitted sizes |",
        "|---|---|---|---|---|---|",
    ]
    for fit in fits:
        row = fit.row()
        seeds = (
            f"{row['b_noise_low']:.0f}-{row['b_noise_high']:.0f}"
            if row["b_noise_low"] is not None
            else "-"
        )
        useful = "-" if fit.max_useful is None else str(fit.max_useful)
        if fit.max_useful_is_bound:
            useful = f">= {useful}"
        lines.append(
            f"| {fit.optimizer} | {_number(row['s_min'])} | {_number(row['b_noise'])} | "
            f"{seeds} | {useful} | {row['batch_sizes_fitted'] or '-'} |"
        )
    return lines


def _noise_table(rows: Sequence[dict], fits: dict[str, CriticalBatch]) -> list[str]:
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        runs.setdefault((row["optimizer"], row["batch_size"], row["micro_batch_size"]), []).append(
            row
        )
    lines = [
        "| optimizer | B / micro-batch | lr | steps recorded | B_simple, median of the second "
        "half | fitted B_noise |",
        "|---|---|---|---|---|---|",
    ]
    for (name, batch, micro), series in runs.items():
        late = [r["b_simple"] for r in series[len(series) // 2 :]]
        fit = fits.get(name)
        b_noise = fit.fit.b_noise if fit is not None and fit.fit is not None else None
        lines.append(
            f"| {name} | {batch} / {micro} | {series[0]['lr']:.3g} | {len(series)} | "
            f"{statistics.median(late):.0f} | {_number(b_noise)} |"
        )
    return lines


def summary_markdown(
    context: StudyContext,
    points: dict[str, list[BatchPoint]],
    fits: Sequence[CriticalBatch],
    noise_rows: Sequence[dict],
    pngs: Sequence[str],
) -> str:
    grid = ", ".join(f"{GRID_FACTOR**k:g}x" for k in sorted(INITIAL_GRID))
    lines = [
        f"# Steps to {context.target:g}% validation top-1 against batch size ({context.task})",
        "",
        f"Command: `{context.command}`",
        "",
        f"Machine: {machine()}; every run is one process (world size 1, ZeRO stage 0) with "
        f"{context.threads} thread(s), {context.jobs} run(s) at a time. Recipe: "
        f"`{context.config}`; {context.seeds.describe()}; step budget {context.max_steps}. "
        f"This invocation: {context.runs} run(s) trained, {context.wall_s / 60:.1f} min. "
        f"All invocations: {context.final_runs} run(s) ended, "
        f"{context.final_runs_wall_s / 3600:.1f} h of run time in all (about "
        f"{context.final_runs_wall_s / 3600 / context.jobs:.1f} h of wall time at "
        f"{context.jobs} run(s) at a time).",
        "",
        f"Learning rates: per (optimizer, batch size) a grid of {grid} the optimizer's "
        "rule-scaled lr, grown by one value beyond an edge while the best lr sits on it; a run "
        f"is cut at {BUDGET_FACTOR:g}x the steps of its cell's fastest run of the same seed.",
        "",
    ]
    if context.unfinished:
        lines += [
            f"**Partial**: not finished yet, so not (or not fully) in the tables: "
            f"{', '.join(context.unfinished)}. A cell shown is final only if it is not listed.",
            "",
        ]
    lines += [
        "## Steps to target at each batch size's best lr (mean over seeds)",
        "",
        *_steps_table(points),
        "",
        f"{EDGE_MARK} the best lr is the smallest or largest that its cell tried: where the cell "
        "is finished, its grid grew as far as it may, and an lr beyond may reach the target in "
        "fewer steps.",
        "",
        "## Fit of S(B) = S_min (1 + B_noise / B)",
        "",
        *_fit_table(fits),
        "",
    ]
    if noise_rows:
        by_name = {fit.optimizer: fit for fit in fits}
        lines += [
            "## Gradient noise scale (McCandlish et al., Appendix A)",
            "",
            *_noise_table(noise_rows, by_name),
            "",
        ]
    lines += [f"![{png}]({png})" for png in pngs]
    return "\n".join(lines) + "\n"
