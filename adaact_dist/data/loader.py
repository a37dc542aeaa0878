"""The one entry point the trainer calls: :func:`create_loader`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from adaact_dist.data.config import IMAGENET_MEAN, IMAGENET_STD, LoaderConfig
from adaact_dist.data.shardset import resolve_shards

__all__ = ["ShardLoader", "create_loader"]


@runtime_checkable
class ShardLoader(Protocol):
    """What both backends return.

    Iterating yields ``(images, labels)``: ``images`` float32 ``(N, 3, H, W)`` normalised, on
    ``device`` (channels-last memory format if asked), ``labels`` int64 ``(N,)`` on ``device``.
    """

    num_skipped: int
    """Bad samples this rank skipped so far."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int:
        """Batches per epoch on this rank (identical on every rank when ``drop_last``)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's seeded shuffle; call before iterating each epoch."""
        ...

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        ...

    @property
    def total_samples(self) -> int:
        """Usable samples of the split over all ranks."""
        ...

    @property
    def num_classes(self) -> int | None:
        """From the manifest; ``None`` for shards given without one."""
        ...


def create_loader(
    backend: str,
    *,
    split: str,
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    image_size: int = 224,
    crop_pct: float = 0.95,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m7-mstd0.5-inc1",
    train_interpolation: str = "random",
    interpolation: str = "bicubic",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    num_workers: int = 4,
    seed: int = 0,
    channels_last: bool = False,
    device: torch.device | str = "cpu",
    is_training: bool | None = None,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    strict: bool = False,
    shuffle_buffer: int = 1024,
    prefetch: int = 2,
) -> ShardLoader:
    """Build this rank's loader over webdataset shards.

    Defaults are the timm A2 recipe of "ResNet strikes back" at 224 px: RandomResizedCrop
    (scale 0.08-1, random bilinear/bicubic), horizontal flip, RandAugment
    ``rand-m7-mstd0.5-inc1`` for training; bicubic resize to ``floor(224 / 0.95)`` and centre
    crop for evaluation; ImageNet mean/std.

    Epochs and ranks:
        Call ``loader.set_epoch(epoch)`` before each epoch. The shards are visited in an order
        seeded by ``(seed, epoch)`` and identical on all ranks; rank ``r`` takes positions
        ``[floor(r N / W), floor((r + 1) N / W))`` of that sequence (DALI's split), shuffled through
        a buffer of ``shuffle_buffer`` samples.

        Training (``drop_last``, the default for ``split="train"``): every rank yields exactly
        ``len(loader) = (N // world_size) // batch_size`` full batches whatever the number of
        shards or workers; the few samples beyond that are dropped (different ones each epoch).

        Evaluation (``drop_last=False``, the default otherwise): every sample is yielded exactly
        once over all ranks, nothing is padded or repeated; the last batch of a rank may be
        short and ranks may yield different numbers of batches (by at most one), so do not
        put a collective inside the evaluation loop: sum correct counts and sample counts,
        then all-reduce once. ``total_samples`` is the global count to divide by.

    Bad data:
        A shard or index that is missing or unreadable raises at once, naming the path. A
        sample whose image does not decode or whose label is missing or not an integer is
        skipped, counted in ``num_skipped`` and logged with its shard and key (training draws
        a replacement, so batches stay full); with ``strict=True`` it raises
        :class:`~adaact_dist.data.images.BadSampleError`.

    Args:
        backend: ``"wds"`` (webdataset reading + timm transforms in ``num_workers`` processes)
            or ``"dali"`` (``fn.readers.webdataset`` + DALI operators on ``num_workers``
            threads; "mixed" GPU decoding when ``device`` is CUDA).
        split: Split name; ``"train"`` turns on augmentation, shuffle and ``drop_last``.
        shards: Data set root (holding ``<split>/manifest.json``), split directory, manifest
            file, brace pattern ``/data/train-{000000..001023}.tar``, or a list of tars.
        batch_size: Per-rank batch size.
        rank, world_size: This rank and the number of ranks.
        image_size: Output size (square).
        crop_pct: Evaluation centre-crop fraction.
        scale, ratio, hflip: RandomResizedCrop area/aspect ranges and flip probability.
        auto_augment: timm RandAugment string or ``None``.
        train_interpolation, interpolation: Training and evaluation resize filters.
        mean, std: Normalisation (0-1 scale); ``mean`` is also RandAugment's fill colour.
        num_workers: wds worker processes (persistent) or DALI CPU threads.
        seed: Base seed, mixed with epoch, rank and worker.
        channels_last: Deliver channels-last memory format.
        device: Where batches are delivered; pinned host memory is used for CUDA.
        is_training, shuffle, drop_last: Override the split-based defaults.
        strict: Make bad samples fatal.
        shuffle_buffer: Shuffle buffer size in samples.
        prefetch: Batches prefetched per worker / by the DALI pipeline.

    Returns:
        A :class:`ShardLoader`.
    """
    cfg = LoaderConfig(
        backend=backend,
        split=split,
        shards=shards,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        image_size=image_size,
        crop_pct=crop_pct,
        scale=tuple(scale),
        ratio=tuple(ratio),
        hflip=hflip,
        auto_augment=auto_augment,
        train_interpolation=train_interpolation,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        num_workers=num_workers,
        seed=seed,
        channels_last=channels_last,
        device=device,
        is_training=is_training,
        shuffle=shuffle,
        drop_last=drop_last,
        strict=strict,
        shuffle_buffer=shuffle_buffer,
        prefetch=prefetch,
    )
    shardset = resolve_shards(cfg.shards, split=cfg.split, strict=cfg.strict)
    if cfg.backend == "dali":
        from adaact_dist.data.dali_loader import DaliLoader  # DALI only where it is used

        return DaliLoader(cfg, shardset)
    from adaact_dist.data.wds_loader import WdsLoader

    return WdsLoader(cfg, shardset)
