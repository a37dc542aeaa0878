"""The critical-batch study's tables, read back from the finished runs.

- ``steps_to_target.csv``: one row per run (:data:`STEPS_FIELDS`); the step and example
  counts are empty where the run did not reach the target (budget spent, or diverged).
- ``critical_batch.csv``: per optimizer, the fit of ``S(B) = S_min (1 + B_noise / B)`` to the
  steps of each batch size's best lr (mean over seeds), the fit to each seed alone for the
  spread, and the largest useful batch (:data:`CRITICAL_FIELDS`).
- ``noise_scale.csv``: the smoothed gradient-noise estimates of every noise run, one row per
  recorded step (:data:`NOISE_FIELDS`).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adaact_dist.study.critical_batch import CriticalRun, Outcome, best_lr
from adaact_dist.study.scaling_fit import ScalingFit, fit_steps, max_useful_batch
from adaact_dist.train.noise_scale import NOISE_CSV, noise_scale_series

STEPS_FIELDS = (
    "task",
    "optimizer",
    "batch_size",
    "lr",
    "seed",
    "steps_to_target",
    "examples_to_target",
)
CRITICAL_FIELDS = (
    "task",
    "optimizer",
    "s_min",
    "b_noise",
    "max_useful_batch",
    "max_useful_batch_is_lower_bound",
    "s_min_low",
    "s_min_high",
    "b_noise_low",
    "b_noise_high",
    "batch_sizes_fitted",
)
NOISE_FIELDS = (
    "task",
    "optimizer",
    "batch_size",
    "micro_batch_size",
    "lr",
    "step",
    "examples",
    "gradient_sq",
    "trace_sigma",
    "b_simple",
)


def _write(path: Path, fields: Sequence[str], rows: Sequence[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


def write_steps(outcomes: Sequence[Outcome], path: Path) -> Path:
    rows = [
        {
            "task": o.run.task,
            "optimizer": o.run.optimizer,
            "batch_size": o.run.batch_size,
            "lr": o.run.lr,
            "seed": o.run.seed,
            "steps_to_target": o.steps,
            "examples_to_target": o.examples,
        }
        for o in outcomes
    ]
    return _write(path, STEPS_FIELDS, rows)


@dataclass(frozen=True)
class BatchPoint:
    """One batch size of one optimizer at its best lr."""

    batch_size: int
    lr: float
    steps: list[int | None]
    """Per seed (seed order); None where that seed did not reach the target."""
    at_edge: bool = False
    """The best lr is the smallest or largest tried: in a finished cell, its grid has grown as
    far as it may, and an lr beyond that edge may do better."""

    @property
    def mean_steps(self) -> float | None:
        """Mean over seeds, or None unless every seed reached the target."""
        if not self.steps or any(s is None for s in self.steps):
            return None
        return statistics.fmean(self.steps)


def best_points(outcomes: Sequence[Outcome], optimizer: str) -> list[BatchPoint]:
    """Each batch size's best lr and its steps per seed, smallest batch first."""
    mine = [o for o in outcomes if o.run.optimizer == optimizer]
    points = []
    for batch in sorted({o.run.batch_size for o in mine}):
        cell = [o for o in mine if o.run.batch_size == batch]
        lr = best_lr(cell)
        seeds = sorted((o for o in cell if o.run.lr == lr), key=lambda o: o.run.seed)
        tried = {o.run.lr for o in cell}
        at_edge = len(tried) > 1 and lr in (min(tried), max(tried))
        points.append(BatchPoint(batch, lr, [o.steps for o in seeds], at_edge))
    return points


@dataclass(frozen=True)
class CriticalBatch:
    """One optimizer's row of ``critical_batch.csv``."""

    task: str
    optimizer: str
    fit: ScalingFit | None
    """None with fewer than two batch sizes where every seed reached the target."""
    seed_fits: list[ScalingFit]
    max_useful: int | None
    max_useful_is_bound: bool | None
    fitted: list[int]

    def row(self) -> dict:
        def spread(attribute: str, pick) -> float | None:
            values = [getattr(f, attribute) for f in self.seed_fits]
            return pick(values) if values else None

        return {
            "task": self.task,
            "optimizer": self.optimizer,
            "s_min": self.fit.s_min if self.fit else None,
            "b_noise": self.fit.b_noise if self.fit else None,
            "max_useful_batch": self.max_useful,
            "max_useful_batch_is_lower_bound": self.max_useful_is_bound,
            "s_min_low": spread("s_min", min),
            "s_min_high": spread("s_min", max),
            "b_noise_low": spread("b_noise", min),
            "b_noise_high": spread("b_noise", max),
            "batch_sizes_fitted": " ".join(str(b) for b in self.fitted),
        }


def _fit_or_none(batch_sizes: Sequence[int], steps: Sequence[float]) -> ScalingFit | None:
    return fit_steps(batch_sizes, steps) if len(set(batch_sizes)) >= 2 else None


def critical_batch(task: str, optimizer: str, points: Sequence[BatchPoint]) -> CriticalBatch:
    """Fit the batch sizes at which every seed reached the target (the mean over seeds, and
    each seed alone for the spread); the largest useful batch from the mean steps."""
    fitted = [p for p in points if p.mean_steps is not None]
    sizes = [p.batch_size for p in fitted]
    fit = _fit_or_none(sizes, [p.mean_steps for p in fitted])
    seeds = len(points[0].steps) if points else 0
    seed_fits = []
    if seeds > 1:
        for seed in range(seeds):
            fit_seed = _fit_or_none(sizes, [p.steps[seed] for p in fitted])
            if fit_seed is not None:
                seed_fits.append(fit_seed)
    useful, bound = None, None
    if any(p.mean_steps is not None for p in points):
        useful, bound = max_useful_batch(
            [p.batch_size for p in points], [p.mean_steps for p in points]
        )
    return CriticalBatch(task, optimizer, fit, seed_fits, useful, bound, sizes)


def write_critical(rows: Sequence[CriticalBatch], path: Path) -> Path:
    return _write(path, CRITICAL_FIELDS, [row.row() for row in rows])


def read_noise_rows(run: CriticalRun) -> list[dict]:
    """The noise run's smoothed estimates, one row per recorded step."""
    path = run.run_dir / NOISE_CSV
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        raw = list(csv.DictReader(handle))
    return [
        {
            "task": run.task,
            "optimizer": run.optimizer,
            "batch_size": run.batch_size,
            "micro_batch_size": run.micro_batch_size,
            "lr": run.lr,
            "step": point.step,
            "examples": (point.step + 1) * run.batch_size,
            "gradient_sq": point.gradient_sq,
            "trace_sigma": point.trace_sigma,
            "b_simple": point.b_simple,
        }
        for point in noise_scale_series(raw)
    ]


def write_noise(rows: Sequence[dict], path: Path) -> Path:
    return _write(path, NOISE_FIELDS, rows)
