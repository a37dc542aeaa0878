"""Per-step learning-rate schedule: linear warm-up, then cosine (or constant).

The lr is a pure function of the optimizer step, so resuming restores the schedule by
restoring the step: the schedule has no state to checkpoint.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


class LRSchedule:
    """``lr(step)`` for ``step`` in ``[0, total_steps)``; sets every param group's lr.

    Warm-up goes linearly from ``warmup_lr`` (step 0) towards ``peak_lr`` (reached at
    ``warmup_steps``); then cosine from ``peak_lr`` to ``min_lr`` at the last step, or
    constant ``peak_lr``.
    """

    def __init__(
        self,
        *,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_lr: float = 0.0,
        min_lr: float = 0.0,
        shape: str = "cosine",
    ):
        if total_steps < 1:
            raise ValueError(f"Invalid total_steps={total_steps!r}: must be >= 1")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"Invalid warmup_steps={warmup_steps!r}: must be in [0, total_steps={total_steps})"
            )
        if shape not in ("cosine", "constant"):
            raise ValueError(f"Invalid shape={shape!r}: must be 'cosine' or 'constant'")
        self.peak_lr = peak_lr
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.shape = shape

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / self.warmup_steps
        if self.shape == "constant":
            return self.peak_lr
        span = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (
            1.0 + math.cos(math.pi * progress)
        )

    def apply(self, optimizer: Optimizer, step: int) -> float:
        """Set the lr of ``step`` on every param group; return it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
