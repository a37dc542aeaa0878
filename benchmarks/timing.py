"""How the benchmarks compare speeds: interleaved rounds, medians.

The machines are shared and noisy, so what a benchmark compares runs in turn, round after
round, in one process: load from elsewhere then hits every variant alike, and the median of
each variant's measurements drops the rounds that a burst of load spoiled. A trainer takes
its turns as a :class:`TrainerRun`, with one of :data:`TRAINER_OPTIMIZERS`.
"""

from __future__ import annotations

import csv
import statistics
import traceback
from collections.abc import Callable, Mapping, Sequence

from adaact_dist.train import TrainConfig, Trainer
from adaact_dist.train.metrics import TRAIN_CSV
from adaact_dist.train.optimizers import OPTIMIZERS

Measure = Callable[[], "float | Sequence[float]"]
"""One turn of a variant: its figure (seconds, images/s), or one figure per step it ran."""


def interleaved_medians(
    measures: Mapping[str, Measure],
    rounds: int,
    *,
    warmup: int = 0,
    rotate: bool = False,
    failures: dict[str, str] | None = None,
) -> dict[str, float]:
    """The median figure of each variant over ``rounds`` rounds in which each measures once.

    Args:
        measures: Each variant's :data:`Measure`, by name.
        rounds: Counted rounds.
        warmup: Rounds run before them, whose figures are not counted.
        rotate: Round ``r`` (warm-up rounds included) starts at the ``r``-th variant, so that
            none always runs first or after the same one; otherwise the mapping's order.
        failures: Where a variant that raises is recorded (``"Type: message"``, its traceback
            printed); it then sits out the later rounds and has no median, while the others go
            on. Without it, the exception propagates.
    """
    names = list(measures)
    figures: dict[str, list[float]] = {name: [] for name in names}
    failed = {} if failures is None else failures
    for round_ in range(warmup + rounds):
        shift = round_ % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            if name in failed:
                continue
            try:
                figure = measures[name]()
            except Exception as error:
                if failures is None:
                    raise
                failures[name] = f"{type(error).__name__}: {error}"
                traceback.print_exc()
                continue
            if round_ >= warmup:
                figures[name] += figure if isinstance(figure, Sequence) else [figure]
    return {name: statistics.median(figures[name]) for name in names if name not in failed}


TRAINER_OPTIMIZERS = ("adaact", "sgd", "adamw")
"""What the throughput benchmarks compare in the trainer (names of
:data:`~adaact_dist.train.optimizers.OPTIMIZERS`, in its order)."""

SHORT_RUN_LR_FACTOR = 1 / 40
"""A timed run takes this fraction of its optimizer's base lr: a small lr keeps short runs on
noise (synthetic labels) finite, and the speed does not depend on it."""


def optimizer_overrides(name: str) -> list[str]:
    """The ``optim.*`` overrides of a timed run of optimizer ``name``: its usual weight decay
    and :data:`SHORT_RUN_LR_FACTOR` times its base lr."""
    spec = OPTIMIZERS[name]
    lr, decay = spec.base_lr * SHORT_RUN_LR_FACTOR, spec.weight_decay
    return [f"optim.name={name}", f"optim.lr={lr:g}", f"optim.weight_decay={decay:g}"]


class TrainerRun:
    """One trainer, continued segment by segment: ``Trainer.run()`` goes on where it stopped
    once ``run.stop_after_steps`` is raised, so taking turns costs no rebuild.

    Args:
        config: The run's config (its ``run.output_dir`` is where the trainer's records go).
        figure: The column of the trainer's per-step records (``metrics.csv``) that
            :meth:`advance` returns: ``images_per_s`` or ``step_time_s``.
    """

    def __init__(self, config: TrainConfig, figure: str = "images_per_s"):
        self.trainer, self.figure = Trainer(config), figure

    def advance(self, steps: int) -> list[float]:
        """The figure of each of the next ``steps`` steps, as the trainer recorded it."""
        first = self.trainer.state.global_step
        self.trainer.config.run.stop_after_steps = first + steps
        self.trainer.run()
        with (self.trainer.run_dir / TRAIN_CSV).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        done = self.trainer.state.global_step
        return [float(r[self.figure]) for r in rows if first <= int(r["step"]) < done]

    def close(self) -> None:
        self.trainer.close()
