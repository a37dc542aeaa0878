"""What a config means on a given world size: micro-batch, accumulation, scaled lr.

The recipe fixes the global batch (2048 in the paper) and its lr; the world size only
changes how that batch is cut into micro-batches and accumulation steps. When the user
changes the global batch, the lr (and the schedule's warm-up and floor lrs) scale
linearly with it, relative to ``optim.lr_base_batch_size``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from adaact_dist.train.config import ConfigValueError, TrainConfig


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """The batch geometry and learning rates of one run on ``world_size`` ranks."""

    world_size: int
    """Data-parallel ranks."""
    global_batch_size: int
    """Images per optimizer step over all ranks."""
    micro_batch_size: int
    """Images per rank per forward."""
    accumulation_steps: int
    """Micro-batches per rank per optimizer step."""
    eval_batch_size: int
    """Images per rank per evaluation forward."""
    lr_scale: float
    """global_batch_size / optim.lr_base_batch_size (1 without a base)."""
    lr: float
    """Peak learning rate after scaling."""
    warmup_lr: float
    """Warm-up start learning rate after scaling."""
    min_lr: float
    """Final cosine learning rate after scaling."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(config: TrainConfig, world_size: int) -> RunPlan:
    """Derive the plan; raise :class:`ConfigValueError` naming the key that makes it impossible."""
    if world_size < 1:
        raise ValueError(f"Invalid world_size={world_size!r}: must be >= 1")
    data = config.data
    global_batch = data.global_batch_size
    if data.micro_batch_size is not None:
        micro = data.micro_batch_size
        if global_batch % (world_size * micro):
            raise ConfigValueError(
                "data.global_batch_size",
                global_batch,
                f"divisible by world size ({world_size}) x data.micro_batch_size ({micro})",
            )
        accumulation = global_batch // (world_size * micro)
    else:
        if global_batch % world_size:
            raise ConfigValueError(
                "data.global_batch_size",
                global_batch,
                f"divisible by the world size ({world_size})",
            )
        per_rank = global_batch // world_size
        accumulation = next(
            g
            for g in range(1, per_rank + 1)
            if per_rank % g == 0 and per_rank // g <= data.max_micro_batch_size
        )
        micro = per_rank // accumulation
    if config.augmentation.mixing and micro % 2:
        key = (
            "data.micro_batch_size"
            if data.micro_batch_size is not None
            else "data.global_batch_size"
        )
        raise ConfigValueError(
            key,
            data.micro_batch_size or global_batch,
            f"such that the micro-batch ({micro}) is even: Mixup/CutMix pair samples",
        )
    base = config.optim.lr_base_batch_size
    scale = global_batch / base if base else 1.0
    return RunPlan(
        world_size=world_size,
        global_batch_size=global_batch,
        micro_batch_size=micro,
        accumulation_steps=accumulation,
        eval_batch_size=config.eval.batch_size or micro,
        lr_scale=scale,
        lr=config.optim.lr * scale,
        warmup_lr=config.schedule.warmup_lr * scale,
        min_lr=config.schedule.min_lr * scale,
    )
