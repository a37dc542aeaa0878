"""The critical-batch study's runs: which (optimizer, batch size, lr, seed) to train, and how
the lr grid of each (optimizer, batch size) grows until its best lr is inside it.

The protocol of Shallue et al. (2019): for every batch size the learning rate is tuned
separately, and a run counts by the steps it needs to reach a fixed validation target. Each
run is an ordinary trainer run (``configs/critical_batch.yaml``: one schedule for every
optimizer, a short linear warm-up then a constant lr) that evaluates on a geometric grid of
steps and ends at the target (``run.target_top1``) or at the step budget
(``schedule.max_steps``).

The lr grid of a cell (optimizer, batch size) starts as :data:`INITIAL_GRID`: powers of
:data:`GRID_FACTOR` around the lr that the optimizer's own scaling rule gives at that batch
(:mod:`~adaact_dist.study.recipes`), tried centre first. Whenever the cell's best lr sits at an
edge of its grid, the grid grows by one value beyond that edge, at most
:data:`MAX_EXTENSIONS` times per side. The best lr reaches the target with the most seeds,
then in the fewest steps (mean over those seeds); where no lr reached the target, the higher
best top-1 ranks first, so that the grid still grows towards the promising edge.

A run that has taken :data:`BUDGET_FACTOR` times the steps of the fastest run of its cell and
seed so far cannot be that cell's best: it is stopped there (its ``schedule.max_steps``) and
counts as not reaching the target. The schedule is constant after its warm-up, so the steps
it did run are exactly those of the uncut run. Everything is derived from the finished runs
alone, in a fixed order, so a study continues where it stopped and always plans the same runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adaact_dist.study.recipes import RUN_KEYS
from adaact_dist.study.runner import RunState, run_state
from adaact_dist.train.optimizers import OPTIMIZERS
from adaact_dist.train.run_summary import RunSummary

GRID_FACTOR = 2.0
"""Ratio of neighbouring lrs in a grid."""
INITIAL_GRID = (-1, 0, 1)
"""Exponents of :data:`GRID_FACTOR` around the rule's lr that every cell starts with."""
MAX_EXTENSIONS = 5
"""Values a grid may grow beyond its initial edge, on each side."""
BUDGET_FACTOR = 2.0
"""A run is cut at this multiple of the steps of its cell's fastest run (same seed) so far."""

STUDY_KEYS = (
    *RUN_KEYS,
    "run.target_top1",
    "schedule.max_steps",
    "logging.noise_scale_every_steps",
)
"""Keys that every run sets itself; ``--set`` may not touch them."""


@dataclass(frozen=True, kw_only=True)
class CriticalRun:
    """One trainer run of the study."""

    task: str
    optimizer: str
    batch_size: int
    lr: float
    seed: int
    target: float
    """Validation top-1 (%) at which the run ends."""
    max_steps: int
    weight_decay: float
    run_dir: Path
    micro_batch_size: int | None = None
    """Set for the noise-scale runs (gradient accumulation); else one micro-batch per step."""
    noise_every: int = 0
    """``logging.noise_scale_every_steps``."""

    @property
    def name(self) -> str:
        return f"{self.optimizer}-b{self.batch_size}-lr{self.lr:.4g}-s{self.seed}"

    def overrides(self) -> list[str]:
        """The trainer's ``--set`` items: one process, ZeRO stage 0 for every optimizer."""
        micro = "null" if self.micro_batch_size is None else str(self.micro_batch_size)
        return [
            f"run.name={self.task}-{self.name}",
            f"run.output_dir={self.run_dir}",
            f"run.seed={self.seed}",
            f"run.target_top1={self.target!r}",
            f"data.builtin={self.task}",
            f"data.global_batch_size={self.batch_size}",
            f"data.micro_batch_size={micro}",
            f"data.max_micro_batch_size={self.batch_size}",
            f"optim.name={self.optimizer}",
            f"optim.lr={self.lr!r}",
            "optim.lr_base_batch_size=null",
            f"optim.weight_decay={self.weight_decay!r}",
            f"schedule.max_steps={self.max_steps}",
            f"logging.noise_scale_every_steps={self.noise_every}",
            "distributed.zero_stage=0",
        ]


@dataclass(frozen=True)
class Outcome:
    """What a finished run measured."""

    run: CriticalRun
    steps: int | None
    """Steps to the target; None if the budget ran out first or the run diverged."""
    best_top1: float | None

    @property
    def examples(self) -> int | None:
        return None if self.steps is None else self.steps * self.run.batch_size


def read_outcome(run: CriticalRun) -> Outcome | None:
    """The run's result, or None while it has not finished (nor diverged)."""
    state = run_state(run.run_dir)
    if state == RunState.DIVERGED:
        return Outcome(run, None, None)
    if state != RunState.FINISHED:
        return None
    summary = RunSummary.read(run.run_dir)
    return Outcome(run, summary.target_steps, summary.best_top1)


@dataclass(frozen=True)
class Cell:
    """One (task, optimizer, batch size): lrs are ``center * GRID_FACTOR**k``, or the fixed
    lrs of ``--lrs``; ``extra_lrs`` join the grid after its initial values (``--extra-lr``)."""

    task: str
    optimizer: str
    batch_size: int
    center: float
    fixed_lrs: tuple[float, ...] | None = None
    seeds: int = 1
    """Seeds ``0 .. seeds - 1`` of every lr."""
    extra_lrs: tuple[float, ...] = ()

    def lr(self, exponent: int) -> float:
        return self.center * GRID_FACTOR**exponent


def lr_rank(outcomes: Sequence[Outcome]) -> tuple:
    """Sort key of one lr's seeds, best first: seeds that reached the target (more first),
    then their mean steps (fewer first), then the mean best top-1 (higher first)."""
    reached = [o.steps for o in outcomes if o.steps is not None]
    top1 = [o.best_top1 for o in outcomes if o.best_top1 is not None]
    mean_steps = statistics.fmean(reached) if reached else float("inf")
    return (-len(reached), mean_steps, -(statistics.fmean(top1) if top1 else 0.0))


def best_lr(outcomes: Sequence[Outcome]) -> float:
    """The best lr among ``outcomes`` (all seeds of each lr tried)."""
    by_lr: dict[float, list[Outcome]] = {}
    for outcome in outcomes:
        by_lr.setdefault(outcome.run.lr, []).append(outcome)
    return min(by_lr, key=lambda lr: lr_rank(by_lr[lr]))


def next_lr(cell: Cell, tried: Sequence[float], outcomes: Sequence[Outcome]) -> float | None:
    """The cell's next lr to try after ``tried`` (whose runs are all in ``outcomes``), or None
    when its grid is complete: the initial grid centre first, then its extra lrs, then one grid
    value at a time beyond the edge (lowest or highest lr tried) that its best lr sits on."""
    if cell.fixed_lrs is not None:
        remaining = [lr for lr in (*cell.fixed_lrs, *cell.extra_lrs) if lr not in tried]
        return remaining[0] if remaining else None
    order = sorted(INITIAL_GRID, key=lambda k: (abs(k), k))
    for lr in [*(cell.lr(k) for k in order), *cell.extra_lrs]:
        if lr not in tried:
            return lr
    best = best_lr(outcomes)
    lowest, highest = min(INITIAL_GRID) - MAX_EXTENSIONS, max(INITIAL_GRID) + MAX_EXTENSIONS
    if best == min(tried):
        below = max((k for k in range(lowest, highest + 1) if cell.lr(k) < best), default=None)
        if below is not None:
            return cell.lr(below)
    if best == max(tried):
        above = min((k for k in range(lowest, highest + 1) if cell.lr(k) > best), default=None)
        if above is not None:
            return cell.lr(above)
    return None


def step_budget(max_steps: int, seed: int, outcomes: Sequence[Outcome], least: int = 1) -> int:
    """The steps a new run of this seed may take: :data:`BUDGET_FACTOR` times the fastest
    run of the same seed in the cell so far, at least ``least`` (past the warm-up), at most
    ``max_steps``."""
    reached = [o.steps for o in outcomes if o.steps is not None and o.run.seed == seed]
    if not reached:
        return max_steps
    return min(max_steps, max(least, math.ceil(BUDGET_FACTOR * min(reached))))


@dataclass(frozen=True)
class SeedRule:
    """``seeds`` per lr, ``more`` from batch ``from_batch`` up, where runs are cheap and seeds
    disagree most (``--seeds 2,3@256``)."""

    seeds: int
    more: int | None = None
    from_batch: int | None = None

    def at(self, batch_size: int) -> int:
        if self.more is not None and self.from_batch is not None and batch_size >= self.from_batch:
            return self.more
        return self.seeds

    def describe(self) -> str:
        if self.more is None:
            return f"{self.seeds} seed(s)"
        return f"{self.seeds} seed(s), {self.more} from batch {self.from_batch} up"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the command line asked for."""

    out: Path
    task: str
    optimizers: Sequence[str]
    batch_sizes: Sequence[int]
    seeds: SeedRule
    target: float
    max_steps: int
    lrs: Sequence[float] | None = None
    extra_lrs: Mapping[tuple[str, int], tuple[float, ...]] = field(default_factory=dict)
    """(optimizer, batch size) -> lrs tried besides its grid (``--extra-lr``)."""

    def cells(self) -> list[Cell]:
        return [
            Cell(
                self.task,
                name,
                batch,
                center=OPTIMIZERS[name].lr(batch),
                fixed_lrs=tuple(self.lrs) if self.lrs else None,
                seeds=self.seeds.at(batch),
                extra_lrs=self.extra_lrs.get((name, batch), ()),
            )
            for name in self.optimizers
            for batch in self.batch_sizes
        ]

    def run(self, cell: Cell, lr: float, seed: int, budget: int) -> CriticalRun:
        """One grid run; the folder names the lr and seed, not the budget, which follows
        from the cell's earlier runs."""
        return CriticalRun(
            task=cell.task,
            optimizer=cell.optimizer,
            batch_size=cell.batch_size,
            lr=lr,
            seed=seed,
            target=self.target,
            max_steps=budget,
            weight_decay=OPTIMIZERS[cell.optimizer].weight_decay,
            run_dir=self.out
            / "runs"
            / cell.task
            / cell.optimizer
            / f"b{cell.batch_size}"
            / f"lr{lr:.4g}-s{seed}",
        )

    def noise_run(self, cell: Cell, lr: float, micro_batch_size: int) -> CriticalRun:
        """The gradient-noise run of ``cell``: its best lr, seed 0, the same batch in
        micro-batches of ``micro_batch_size``, the norms recorded at every step."""
        return CriticalRun(
            task=cell.task,
            optimizer=cell.optimizer,
            batch_size=cell.batch_size,
            lr=lr,
            seed=0,
            target=self.target,
            max_steps=self.max_steps,
            weight_decay=OPTIMIZERS[cell.optimizer].weight_decay,
            run_dir=self.out
            / "noise-runs"
            / cell.task
            / f"{cell.optimizer}-b{cell.batch_size}-m{micro_batch_size}-lr{lr:.4g}",
            micro_batch_size=micro_batch_size,
            noise_every=1,
        )
