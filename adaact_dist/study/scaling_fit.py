"""Steps to a target against batch size: the fit of McCandlish et al.'s model and the largest
batch that still pays.

McCandlish et al. (2018) model the steps a run needs at batch ``B`` as
``S(B) = S_min (1 + B_noise / B)``: about ``S_min B_noise / B`` while ``B`` is well below
``B_noise`` (perfect scaling: doubling the batch halves the steps), then flattening towards
``S_min``. The fit is least squares on the logarithm of the steps, so every batch size weighs
the same whatever its step count (step counts differ by two orders of magnitude between the
ends of the curve).

Shallue et al. (2019) read a *maximal useful batch size* off the measured curve: beyond it,
larger batches no longer cut the steps. :func:`max_useful_batch` makes that reading precise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ScalingFit", "USEFUL_CUT", "fit_steps", "max_useful_batch"]

USEFUL_CUT = 0.1
"""A larger batch is useful while it cuts the steps by at least this share (10%)."""


@dataclass(frozen=True)
class ScalingFit:
    """``S(B) = s_min (1 + b_noise / B)``."""

    s_min: float
    b_noise: float

    def steps(self, batch_size: float) -> float:
        return self.s_min * (1.0 + self.b_noise / batch_size)


def fit_steps(batch_sizes: Sequence[float], steps: Sequence[float]) -> ScalingFit:
    """Least-squares fit of ``log S`` over the measured ``(B, S)`` pairs (at least two batch
    sizes; ``b_noise >= 0``, ``s_min > 0``)."""
    import numpy as np
    from scipy.optimize import least_squares

    if len(batch_sizes) != len(steps):
        raise ValueError(f"{len(batch_sizes)} batch sizes but {len(steps)} step counts")
    if len(set(batch_sizes)) < 2:
        raise ValueError(f"Invalid batch_sizes={list(batch_sizes)}: need >= 2 distinct sizes")
    if min(batch_sizes) <= 0 or min(steps) <= 0:
        raise ValueError("batch sizes and step counts must be positive")
    b = np.asarray(batch_sizes, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    # Start from the linear fit S = S_min + (S_min B_noise) / B, kept inside the domain.
    slope, intercept = np.polyfit(1.0 / b, s, 1)
    s_min0 = max(intercept, 1e-3 * s.min())
    b_noise0 = max(slope / s_min0, 1e-3 * b.min())

    def residuals(params):
        log_s_min, log_b_noise = params
        return log_s_min + np.log1p(np.exp(log_b_noise) / b) - np.log(s)

    result = least_squares(residuals, [math.log(s_min0), math.log(b_noise0)], method="lm")
    log_s_min, log_b_noise = result.x
    return ScalingFit(s_min=math.exp(log_s_min), b_noise=math.exp(log_b_noise))


def max_useful_batch(batch_sizes: Sequence[int], steps: Sequence[float | None]) -> tuple[int, bool]:
    """The largest batch size that still cuts the steps by at least :data:`USEFUL_CUT` against
    the next smaller one, and whether it is only a lower bound (the largest measured size).

    One increase that saves less does not end the range when a later one saves more: with a
    few seeds a cell can sit below the curve, and the next cell then seems flat. ``steps`` is
    ``None`` where no run reached the target. Below the first size that reached it, such sizes
    are left out (a size that reaches the target saves more than any cut against one that
    never does); after it, a size that did not reach it ends the useful range. Raises if no
    size reached the target."""
    pairs = sorted(zip(batch_sizes, steps, strict=True))
    while pairs and pairs[0][1] is None:
        pairs.pop(0)
    if not pairs:
        raise ValueError("no batch size has steps to target: nothing to compare")
    best, previous = pairs[0]
    for batch, count in pairs[1:]:
        if count is None:
            break
        if count <= (1.0 - USEFUL_CUT) * previous:
            best = batch
        previous = count
    return best, best == pairs[-1][0]
