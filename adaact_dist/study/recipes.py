"""What every run of the optimizer study is: base learning rates, scaling rules, warm-up.

:data:`RECIPES` is the one table of per-optimizer choices. Only the learning rate is tuned:
each optimizer's base lr at :data:`BASE_BATCH` images per step is the best value of the sweep
(``launch/compare_optimizers.py --sweep``; its evidence is in ``benchmarks/compare/``), and the
larger batches get the scaling rule that the optimizer's users apply. Weight decay and the
other hyperparameters are each optimizer's usual values, not tuned here.

A run is fixed by (task, optimizer, batch size, seed): :class:`RunSpec` turns it into the
trainer's ``--set`` overrides, always the same ones, so that a half-done run resumes through the
trainer's own checkpoint resume (which refuses a changed config).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BASE_BATCH = 64
"""The global batch that the base learning rates (and the sweep) refer to."""

WARMUP_EPOCHS_AT_BASE = 1.0
"""Linear warm-up at :data:`BASE_BATCH`; it grows with the square root of the batch."""


@dataclass(frozen=True, kw_only=True)
class OptimizerRecipe:
    """One optimizer's settings in the study."""

    name: str
    """``optim.name`` of the trainer."""
    base_lr: float
    """Peak lr at :data:`BASE_BATCH` images per step: the sweep's best value."""
    scaling: Literal["linear", "sqrt"]
    """How the peak lr grows with the batch: ``linear`` (Goyal et al.; LARS, LAMB and the
    AdaAct paper scale so) or ``sqrt`` (the rule for Adam-type optimizers)."""
    weight_decay: float
    """The optimizer's usual weight decay (not tuned here)."""
    sweep_lrs: tuple[float, ...]
    """Base lrs the sweep tries: a log grid around the optimizer's usual range, extended by
    one step where the best value was at the top of the first grid (AdamW, LARS)."""

    def lr(self, batch_size: int) -> float:
        """The peak lr at ``batch_size`` by :attr:`scaling`."""
        ratio = batch_size / BASE_BATCH
        return self.base_lr * (ratio if self.scaling == "linear" else math.sqrt(ratio))

    def scaled(self, base_lr: float, batch_size: int) -> float:
        """A sweep value ``base_lr`` carried to ``batch_size`` by the same rule."""
        return dataclasses.replace(self, base_lr=base_lr).lr(batch_size)


# Base lrs: the best final top-1 of the sweep on the digits at batch 64 (the recipe's 30
# epochs, one seed: 1000; benchmarks/compare/sweep.md has every value). The digits are easy:
# across each grid's upper half the final top-1 differs by 1-3 of the 360 validation images,
# so these are the sweep's best values, not sharp optima; ties go to the smaller lr.
RECIPES: dict[str, OptimizerRecipe] = {
    # AdaAct: the paper's CIFAR lr is 0.1 at batch 128 with linear scaling to 4.0 at 2048;
    # decoupled weight decay as in configs/demo.yaml.
    "adaact": OptimizerRecipe(
        name="adaact",
        base_lr=0.4,
        scaling="linear",
        weight_decay=5e-4,
        sweep_lrs=(0.05, 0.1, 0.2, 0.4, 0.8),
    ),
    # SGD with momentum 0.9 and L2 weight decay 5e-4: the CIFAR-ResNet standard.
    "sgd": OptimizerRecipe(
        name="sgd",
        base_lr=0.4,
        scaling="linear",
        weight_decay=5e-4,
        sweep_lrs=(0.05, 0.1, 0.2, 0.4, 0.8),
    ),
    # AdamW: weight decay 0.05 as in timm's and DeiT's AdamW recipes; square-root scaling.
    "adamw": OptimizerRecipe(
        name="adamw",
        base_lr=2e-2,
        scaling="sqrt",
        weight_decay=0.05,
        sweep_lrs=(1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2),
    ),
    # LAMB (timm's, global gradient-norm clipping at 1.0): weight decay 0.02 as in timm's
    # ResNet-strikes-back A2 recipe (lr 5e-3 at batch 2048).
    "lamb": OptimizerRecipe(
        name="lamb",
        base_lr=5e-3,
        scaling="linear",
        weight_decay=0.02,
        sweep_lrs=(2e-3, 5e-3, 1e-2, 2e-2),
    ),
    # LARS (timm's, trust coefficient 0.001, momentum 0.9; biases and norm parameters, which
    # get no weight decay, also get no trust ratio): weight decay 5e-4 as for SGD.
    "lars": OptimizerRecipe(
        name="lars",
        base_lr=4.0,
        scaling="linear",
        weight_decay=5e-4,
        sweep_lrs=(0.5, 1.0, 2.0, 4.0, 8.0),
    ),
}


def warmup_epochs(batch_size: int, epochs: int) -> float:
    """Warm-up of 1 epoch at :data:`BASE_BATCH`, times sqrt(batch / BASE_BATCH) (2 at 256,
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
    """The lr at :data:`BASE_BATCH` that ``lr`` is scaled from."""
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
            base_lr=RECIPES[name].base_lr,
            lr=RECIPES[name].lr(batch),
            warmup_epochs=warmup_epochs(batch, epochs),
            weight_decay=RECIPES[name].weight_decay,
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
            lr=RECIPES[name].scaled(base_lr, batch_size),
            warmup_epochs=warmup_epochs(batch_size, epochs),
            weight_decay=RECIPES[name].weight_decay,
            run_dir=out / "sweep-runs" / task / f"{name}-lr{base_lr:g}-b{batch_size}-s{seed}",
        )
        for task in tasks
        for name in optimizers
        for base_lr in RECIPES[name].sweep_lrs
        for seed in seeds
    ]
