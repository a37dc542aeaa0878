"""timm's ImageNet transforms for the webdataset loader, normalisation moved to the device.

The per-sample transforms are exactly ``timm.data.create_transform`` with the A2 arguments of
"ResNet strikes back" (RandomResizedCrop, horizontal flip, RandAugment ``rand-m7-mstd0.5-inc1``
for training; resize by ``crop_pct`` then centre crop for evaluation). As in timm's prefetch
loader they stop at a uint8 tensor: workers send 1 byte per pixel instead of 4, and the
mean/std normalisation runs once per batch on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["build_transform", "BatchNormalizer"]


def build_transform(
    *,
    is_training: bool,
    image_size: int,
    crop_pct: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: float,
    auto_augment: str | None,
    train_interpolation: str,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> Callable:
    """timm's transform for one PIL image -> uint8 CHW tensor (``use_prefetcher=True``).

    ``mean`` only sets RandAugment's fill colour here; normalisation is :class:`BatchNormalizer`.
    """
    from timm.data import create_transform

    if is_training:
        return create_transform(
            image_size,
            is_training=True,
            scale=scale,
            ratio=ratio,
            hflip=hflip,
            vflip=0.0,
            auto_augment=auto_augment,
            interpolation=train_interpolation,
            mean=tuple(mean),
            std=tuple(std),
            re_prob=0.0,
            use_prefetcher=True,
        )
    return create_transform(
        image_size,
        is_training=False,
        interpolation=interpolation,
        crop_pct=crop_pct,
        mean=tuple(mean),
        std=tuple(std),
        use_prefetcher=True,
    )


class BatchNormalizer:
    """uint8 NCHW batch on the host -> normalised float batch on the device.

    Equal to timm's ``ToTensor`` + ``Normalize`` per sample (``(x / 255 - mean) / std``), computed
    as ``(x - 255 mean) / (255 std)`` like timm's ``PrefetchLoader``.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        channels_last: bool,
        dtype: torch.dtype = torch.float32,
    ):
        self.device = device
        self.channels_last = channels_last
        self.dtype = dtype
        self.mean = torch.tensor([255 * m for m in mean], device=device, dtype=dtype)
        self.std = torch.tensor([255 * s for s in std], device=device, dtype=dtype)
        self.mean = self.mean.view(1, -1, 1, 1)
        self.std = self.std.view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images.to(self.dtype).sub_(self.mean).div_(self.std)
