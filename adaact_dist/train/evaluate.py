"""Distributed, exact top-1/top-5 over a whole validation split.

Each rank evaluates the samples its loader yields (the loaders cut the split into
contiguous per-rank ranges without padding or dropping, so every sample is seen once
whatever the world size); the integer counts are summed over ranks in one all-reduce.
An ``expected_count`` (the split size from its manifest) turns any double-counting or
loss into an error instead of a silently wrong accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent over ``count`` samples."""

    top1: float
    top5: float
    loss: float
    count: int
    correct1: int
    correct5: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device,
    input_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    expected_count: int | None = None,
    count_skipped: Callable[[], int] | None = None,
) -> EvalResult:
    """Top-1, top-5 (top-k with k = min(5, classes)) and mean cross-entropy over all ranks.

    ``expected_count`` is the split size; samples the loader skipped as bad (reported by
    ``count_skipped``, a running per-rank counter) are subtracted from it.
    """
    was_training = model.training
    model.eval()
    skipped_before = count_skipped() if count_skipped is not None else 0
    # loss sum, top-1 hits, top-5 hits, samples, skipped: integers exact in float64
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if input_dtype is not None:
                images = images.to(input_dtype)
            labels = labels.to(device, non_blocking=True)
            logits = model(images).float()
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices == labels[:, None]
            totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            totals[1] += hits[:, 0].sum()
            totals[2] += hits.any(dim=1).sum()
            totals[3] += labels.numel()
    finally:
        model.train(was_training)
    if count_skipped is not None:
        totals[4] += count_skipped() - skipped_before
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    loss_sum, correct1, correct5, count, skipped = totals.tolist()
    count, correct1, correct5, skipped = int(count), int(correct1), int(correct5), int(skipped)
    if expected_count is not None and count != expected_count - skipped:
        raise RuntimeError(
            f"Evaluation saw {count} samples over all ranks but the validation split has "
            f"{expected_count} ({skipped} skipped as bad): the loader drops or repeats samples"
        )
    if count == 0:
        raise RuntimeError("Evaluation saw no samples: the validation split is empty")
    return EvalResult(
        top1=100.0 * correct1 / count,
        top5=100.0 * correct5 / count,
        loss=loss_sum / count,
        count=count,
        correct1=correct1,
        correct5=correct5,
    )


@torch.no_grad()
def average_batchnorm_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics over ranks (timm's ``--dist-bn reduce``).

    Ranks see different data, so their running statistics differ; averaging before
    evaluation and checkpoints makes every rank evaluate (and save) the same model.
    Averaging is linear, so doing it more often does not change later averages.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    buffers = [
        buffer
        for name, buffer in model.named_buffers()
        if name.endswith(("running_mean", "running_var")) and buffer.is_floating_point()
    ]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for buffer in buffers:
        n = buffer.numel()
        buffer.copy_(flat[offset : offset + n].view_as(buffer))
        offset += n
