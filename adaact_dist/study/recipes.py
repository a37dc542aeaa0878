"""What every run of the optimizer study is: its lr, warm-up and trainer overrides.

The per-optimizer choices come from the optimizer table
(:data:`~adaact_dist.train.optimizers.OPTIMIZERS`). Only the learning rate is tuned: each
optimizer's base lr at ``BASE_BATCH`` images per step is the best value of the sweep
(``launch/compare_optimizers.py --sweep``; its evidence is in ``benchmarks/compare/``), and the
larger batches get the scaling rule that the optimizer's users apply. Weight decay and the
other hyperparameters are each optimizer's usual values, not tuned here.

A run is fixed by (task, optimizer, batch size, seed): :class:`RunSpec` turns it into the
trainer's ``--set`` overrides, always the same ones, so that a half-done run resumes through the
trainer's own checkpoint resume (which refuses a changed config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from adaact_dist.train.optimizers import BASE_BATCH, OPTIMIZERS

WARMUP_EPOCHS_AT_BASE = 1.0
"""Linear warm-up at :data:`~adaact_dist.train.optimizers.BASE_BATCH`; it grows with the
square root of the batch."""


def warmup_epochs(batch_size: int, epochs: int) -> float:
    """Warm-up of 1 epoch at ``BASE_BATCH``, times sqrt(batch / BASE_BATCH) (2 at 256,
    4 at 1024), at most a quarter of the run."""
    return min(WARMUP_EPOCHS_AT_BASE * math.sqrt(batch_size / BASE_BATCH), epochs / 4)


RUN_KEYS = (
    "run.name",
    "run.output_dir",
    "run.seed",
    "data.builtin",
    "data.global_batch_size",
    "data.micro_batch_size",
    "data.max_micro_batch_size",
    "optim.name",
    "optim.lr",
    "optim.lr_base_batch_size",
    "optim.weight_decay",
    "distributed.zero_stage",
)
"""Keys that a run of any study sets itself: which run it is, its batch and its optimizer."""

STUDY_KEYS = (*RUN_KEYS, "schedule.warmup_epochs")
"""Keys that every run sets itself; ``--set`` may not touch them."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One trainer run of the study (or of the sweep, with its own ``lr``)."""

    task: str
    """``data.builtin``: ``digits`` or ``digits_noisy``."""
    optimizer: str
    batch_size: int
    seed: int
    base_lr: float
    """The lr at ``BASE_BATCH`` that ``lr`` is scaled from."""
    lr: float
    """Peak lr at this batch."""
    warmup_epochs: float
    weight_decay: float
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    def overrides(self) -> list[str]:
        """The trainer's ``--set`` items: one process, one micro-batch per step, ZeRO stage 0
        for every optimizer (LAMB and LARS need whole tensors; the others then run alike)."""
        return [
            f"run.name={self.task}-{self.name}",
            f"run.output_dir={self.run_dir}",
            f"run.seed={self.seed}",
            f"data.builtin={self.task}",
            f"data.global_batch_size={self.batch_size}",
            "data.micro_batch_size=null",
            f"data.max_micro_batch_size={self.batch_size}",
            f"optim.name={self.optimizer}",
            f"optim.lr={self.lr!r}",
            "optim.lr_base_batch_size=null",
            f"optim.weight_decay={self.weight_decay!r}",
            f"schedule.warmup_epochs={self.warmup_epochs!r}",
            "distributed.zero_stage=0",
        ]


def study_specs(
    out: Path,
    *,
    tasks: list[str],
    optimizers: list[str],
    batch_sizes: list[int],
    seeds: list[int],
    epochs: int,
) -> list[RunSpec]:
    """Every (task, optimizer, batch size, seed) run of the study, at the table's lrs."""
    return [
        RunSpec(
            task=task,
            optimizer=name,
            batch_size=batch,
            seed=seed,
            base_lr=OPTIMIZERS[name].base_lr,
            lr=OPTIMIZERS[name].lr(batch),
            warmup_epochs=warmup_epochs(batch, epochs),
            weight_decay=OPTIMIZERS[name].weight_decay,
            run_dir=out / "runs" / task / f"{name}-b{batch}-s{seed}",
        )
        for task in tasks
        for name in optimizers
        for batch in batch_sizes
        for seed in seeds
    ]


def sweep_specs(
    out: Path,
    *,
    tasks: list[str],
    optimizers: list[str],
    batch_size: int,
    seeds: list[int],
    epochs: int,
) -> list[RunSpec]:
    """Every grid lr of every optimizer at one batch size; ``seeds`` are the sweep's own."""
    return [
        RunSpec(
            task=task,
            optimizer=name,
            batch_size=batch_size,
            seed=seed,
            base_lr=base_lr,
            lr=OPTIMIZERS[name].scaled(base_lr, batch_size),
            warmup_epochs=warmup_epochs(batch_size, epochs),
            weight_decay=OPTIMIZERS[name].weight_decay,
            run_dir=out / "sweep-runs" / task / f"{name}-lr{base_lr:g}-b{batch_size}-s{seed}",
        )
        for task in tasks
        for name in optimizers
        for base_lr in OPTIMIZERS[name].sweep_lrs
        for seed in seeds
    ]
