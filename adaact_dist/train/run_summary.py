"""The run-output contract: ``summary.json`` and why a run stopped.

The trainer writes one :class:`RunSummary` per run (rank 0, atomically, at every end: finished
or not); the studies, the benchmarks and the tests read it back with :meth:`RunSummary.read`.
``launch/slurm_train.sbatch`` reads only the JSON key ``stop_reason`` with the batch host's own
``python3`` (the package may live in a container only), so that key's name and the values of
:class:`StopReason` are part of the contract: renaming either breaks the requeue.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaact_dist._files import atomic_write_text

SUMMARY_FILE = "summary.json"
"""The summary's name in the run directory."""


class StopReason(enum.StrEnum):
    """Why ``Trainer.run`` returned (the JSON value is the member's string)."""

    COMPLETED = "completed"
    """Every epoch (or ``schedule.max_steps``) trained."""
    TARGET_REACHED = "target_reached"
    """An evaluation reached ``run.target_top1``."""
    PREEMPTED = "preempted"
    """A stop signal (SIGTERM, SIGUSR1): checkpointed; the Slurm script requeues on it."""
    STOP_AFTER_STEPS = "stop_after_steps"
    """``run.stop_after_steps`` reached: checkpointed, resumable."""
    DIVERGED = "diverged"
    """The loss stopped being finite; the run cannot continue."""
    ERROR = "error"
    """Any other exception (no collectives after it)."""

    @property
    def finished(self) -> bool:
        """The run's training is over as planned (it will not be continued)."""
        return self in (StopReason.COMPLETED, StopReason.TARGET_REACHED)


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a run did, as ``summary.json`` holds it (None: not measured, e.g. no evaluation
    yet)."""

    name: str
    stop_reason: StopReason
    optimizer: str
    model: str
    world_size: int
    plan: dict[str, Any]
    """:meth:`~adaact_dist.train.plan.RunPlan.as_dict`: batch geometry, lr, precision."""
    epochs: int
    epochs_done: int
    steps: int
    total_steps: int
    best_top1: float | None
    best_epoch: int | None
    final_top1: float | None
    final_top5: float | None
    final_eval_count: int | None
    """Validation samples the last evaluation counted over all ranks."""
    target_top1: float | None
    target_steps: int | None
    """Optimizer steps to the first evaluation at or above ``target_top1``."""
    target_images: int | None
    train_time_s: float
    """Training steps only (no evaluation, checkpoints or plots), over every start."""
    wall_time_s: float
    """This start's ``run()``, everything included."""
    images_per_s: float | None
    peak_memory_mb: float
    resumed_from: str | None
    best_checkpoint: str | None
    run_dir: str

    @property
    def finished(self) -> bool:
        return self.stop_reason.finished

    def to_json(self) -> str:
        """The file's text; ``finished`` is spelled out for readers without this class."""
        record = {"name": self.name, "finished": self.finished, **dataclasses.asdict(self)}
        return json.dumps(record, indent=1)

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / SUMMARY_FILE
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def read(cls, run_dir: Path) -> RunSummary:
        """The summary of ``run_dir`` (FileNotFoundError when the run never ended)."""
        record = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
        del record["finished"]
        record["stop_reason"] = StopReason(record["stop_reason"])
        return cls(**record)

    @staticmethod
    def exists(run_dir: Path) -> bool:
        return (Path(run_dir) / SUMMARY_FILE).is_file()
