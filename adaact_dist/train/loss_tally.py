"""The losses of one optimizer step, kept on the device until the step's one check reads them."""

from __future__ import annotations

import torch


class LossTally:
    """Sums a step's micro-batch losses and counts the non-finite ones without reading the
    device: reading a loss per micro-batch (``float(loss)``) would stall the GPU each time."""

    def __init__(self, device: torch.device):
        self.count = 0
        self._total = torch.zeros((), device=device)
        self._bad = torch.zeros((), device=device)

    def add(self, loss: torch.Tensor) -> None:
        detached = loss.detach().float()
        finite = torch.isfinite(detached)
        self._total += torch.where(finite, detached, 0.0)
        self._bad += (~finite).float()
        self.count += 1

    def flags(self, stop_requested: bool) -> torch.Tensor:
        """``[loss sum, non-finite count, stop]``, one tensor for one all-reduce."""
        stop = torch.full((), float(stop_requested), device=self._total.device)
        return torch.stack([self._total, self._bad, stop])
