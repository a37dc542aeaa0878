"""The study's numbers: one row per run from its run directory, and their mean over seeds.

Everything is read back from what the trainer wrote (``summary.json``, ``metrics.csv``,
``eval.csv``), so the tables can be redrawn at any time and say nothing the runs did not
measure. A diverged run keeps its row (status ``diverged``, no accuracy) and is left out of
the means, which say how many of the seeds diverged.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adaact_dist.study.recipes import RunSpec
from adaact_dist.study.runner import RunState, run_state
from adaact_dist.train.metrics import TRAIN_CSV
from adaact_dist.train.plots import mean_activation_variance
from adaact_dist.train.run_summary import RunSummary

RESULT_FIELDS = (
    "task",
    "optimizer",
    "batch_size",
    "seed",
    "base_lr",
    "lr",
    "warmup_epochs",
    "weight_decay",
    "status",
    "final_top1",
    "best_top1",
    "best_epoch",
    "final_train_loss",
    "seconds_per_epoch",
    "images_per_s",
    "activation_variance",
    "run_dir",
)
MEASURED = (
    "final_top1",
    "best_top1",
    "final_train_loss",
    "seconds_per_epoch",
    "images_per_s",
    "activation_variance",
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def final_train_loss(run_dir: Path) -> float | None:
    """Mean training loss over the last epoch's logged steps (one step is too noisy)."""
    rows = _read_csv(run_dir / TRAIN_CSV)
    if not rows:
        return None
    last = rows[-1]["epoch"]
    losses = [float(row["loss"]) for row in rows if row["epoch"] == last]
    return sum(losses) / len(losses)


def activation_variance(run_dir: Path) -> float | None:
    """Geometric mean over layers of each layer's activation variance averaged over training:
    one number per run for Figure 1's comparison, in which no single layer dominates."""
    per_layer = [v for v in mean_activation_variance(run_dir).values() if v > 0]
    if not per_layer:
        return None
    return math.exp(sum(math.log(v) for v in per_layer) / len(per_layer))


def read_result(spec: RunSpec) -> dict:
    """One ``results.csv`` row; the measured fields are None unless the run finished."""
    row = {
        "task": spec.task,
        "optimizer": spec.optimizer,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "base_lr": spec.base_lr,
        "lr": spec.lr,
        "warmup_epochs": spec.warmup_epochs,
        "weight_decay": spec.weight_decay,
        "status": run_state(spec.run_dir),
        "run_dir": str(spec.run_dir),
        **dict.fromkeys(MEASURED),
        "best_epoch": None,
    }
    if row["status"] != RunState.FINISHED:
        return row
    summary = RunSummary.read(spec.run_dir)
    row.update(
        final_top1=summary.final_top1,
        best_top1=summary.best_top1,
        best_epoch=summary.best_epoch,
        final_train_loss=final_train_loss(spec.run_dir),
        seconds_per_epoch=summary.train_time_s / summary.epochs_done,
        images_per_s=summary.images_per_s,
        activation_variance=activation_variance(spec.run_dir),
    )
    return row


def write_results(rows: Sequence[dict], path: Path) -> Path:
    """``rows`` as CSV (empty cells for what a run did not measure)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of one measure over the finished seeds."""

    mean: float | None
    std: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            return cls(None, None)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)

    def show(self, digits: int = 1) -> str:
        if self.mean is None:
            return "-"
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class Cell:
    """One (task, optimizer, batch size, lr) over its seeds."""

    task: str
    optimizer: str
    batch_size: int
    base_lr: float
    lr: float
    runs: int
    finished: int
    diverged: int
    stats: dict[str, Stat]

    def count(self) -> str:
        """``3``, or ``2 (1 diverged)``, or ``2 of 3`` while runs are missing."""
        note = f" ({self.diverged} diverged)" if self.diverged else ""
        done = self.finished + self.diverged
        return f"{self.finished}{note}" if done == self.runs else f"{done} of {self.runs}{note}"


def aggregate(rows: Sequence[dict]) -> list[Cell]:
    """Group rows by (task, optimizer, batch size, base lr), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["task"], row["optimizer"], row["batch_size"], row["base_lr"])
        groups.setdefault(key, []).append(row)
    cells = []
    for (task, optimizer, batch, base_lr), members in groups.items():
        finished = [r for r in members if r["status"] == RunState.FINISHED]
        cells.append(
            Cell(
                task=task,
                optimizer=optimizer,
                batch_size=batch,
                base_lr=base_lr,
                lr=members[0]["lr"],
                runs=len(members),
                finished=len(finished),
                diverged=sum(r["status"] == RunState.DIVERGED for r in members),
                stats={
                    key: Stat.of([r[key] for r in finished if _number(r[key])]) for key in MEASURED
                },
            )
        )
    return cells


def _number(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
