"""The gradient noise scale of McCandlish et al., "An Empirical Model of Large-Batch Training"
(2018), measured inside ordinary training steps.

With gradient accumulation a step already computes the gradients of two batch sizes: each
micro-batch's (``b`` images) and their mean, the whole batch's (``B`` images). The expected
squared norm of a batch-``n`` gradient is ``|G|^2 + tr(S) / n``, so the two measured norms give
unbiased estimates of both terms (their Appendix A.1)::

    |G|^2 ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(S) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

and the simple noise scale ``B_simple = tr(S) / |G|^2``, the batch size around which larger
batches stop paying for themselves. Each estimate is noisy, so both are smoothed over steps
(exponential moving averages) before their ratio is taken, as the paper does.

:class:`GradientNormProbe` records the raw norms during a step (``noise_scale.csv`` in the run
directory, rows of :data:`NOISE_FIELDS`); :func:`noise_scale_series` turns those rows into the
smoothed estimates. ``|G_b|^2`` is averaged over all micro-batches of the step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "NOISE_CSV",
    "NOISE_FIELDS",
    "GradientNormProbe",
    "NoiseScalePoint",
    "noise_scale_series",
]

NOISE_CSV = "noise_scale.csv"
NOISE_FIELDS = ("step", "small_batch", "big_batch", "small_sq_norm", "big_sq_norm")


class GradientNormProbe:
    """Squared gradient norms of each micro-batch and of the whole step, read between the
    backward passes of one process's gradient accumulation.

    The engine accumulates ``sum_j grad(L_j) / accumulation`` in ``param.grad`` (DeepSpeed
    divides each micro-batch loss by the accumulation steps), so micro-batch ``j``'s own
    gradient is ``accumulation`` times the growth of the accumulated gradient over its backward.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], accumulation_steps: int):
        if accumulation_steps < 2:
            raise ValueError(
                f"Invalid accumulation_steps={accumulation_steps}: the noise scale needs >= 2 "
                "micro-batches per step (a small and a large batch)"
            )
        self.parameters = [p for p in parameters if p.requires_grad]
        self.accumulation_steps = accumulation_steps
        self._previous: torch.Tensor | None = None
        self._small: list[float] = []

    def _flat_gradient(self) -> torch.Tensor:
        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().double()
                for p in self.parameters
            ]
        )

    def after_backward(self) -> None:
        """Call after each micro-batch's backward, before the engine steps."""
        accumulated = self._flat_gradient()
        grown = accumulated if self._previous is None else accumulated - self._previous
        self._small.append(float((grown * self.accumulation_steps).square().sum()))
        self._previous = accumulated

    def finish(self) -> tuple[float, float]:
        """``(|G_b|^2 averaged over the micro-batches, |G_B|^2)`` of the step; resets."""
        if len(self._small) != self.accumulation_steps or self._previous is None:
            raise RuntimeError(
                f"GradientNormProbe saw {len(self._small)} backward passes in a step of "
                f"{self.accumulation_steps} micro-batches"
            )
        small = sum(self._small) / len(self._small)
        big = float(self._previous.square().sum())
        self._previous, self._small = None, []
        return small, big


@dataclass(frozen=True)
class NoiseScalePoint:
    """Smoothed estimates after one recorded step."""

    step: int
    gradient_sq: float
    """Smoothed estimate of ``|G|^2``, the true gradient's squared norm."""
    trace_sigma: float
    """Smoothed estimate of ``tr(S)``, the per-example gradient variance."""

    @property
    def b_simple(self) -> float:
        """``tr(S) / |G|^2``; infinite while ``|G|^2`` is not yet positive."""
        return self.trace_sigma / self.gradient_sq if self.gradient_sq > 0 else float("inf")


def noise_scale_series(rows: Sequence[dict], smoothing: float = 0.95) -> list[NoiseScalePoint]:
    """Each recorded step's smoothed estimates from ``noise_scale.csv`` rows (strings or
    numbers); ``smoothing`` is the EMA decay per recorded step (bias-corrected, as Adam's
    moments are, so the first points are averages rather than shrunk towards 0)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"Invalid smoothing={smoothing}: must be in [0, 1)")
    points, g_avg, s_avg = [], 0.0, 0.0
    for n, row in enumerate(rows, start=1):
        small, big = float(row["small_sq_norm"]), float(row["big_sq_norm"])
        b, big_b = float(row["small_batch"]), float(row["big_batch"])
        gradient_sq = (big_b * big - b * small) / (big_b - b)
        trace_sigma = (small - big) / (1.0 / b - 1.0 / big_b)
        g_avg = smoothing * g_avg + (1 - smoothing) * gradient_sq
        s_avg = smoothing * s_avg + (1 - smoothing) * trace_sigma
        correction = 1 - smoothing**n
        points.append(NoiseScalePoint(int(row["step"]), g_avg / correction, s_avg / correction))
    return points
