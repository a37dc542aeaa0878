"""The one entry point the trainer calls: :func:`create_loader`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from adaact_dist.data.config import LoaderConfig
from adaact_dist.data.shardset import resolve_shards

__all__ = ["ShardLoader", "create_loader"]


@runtime_checkable
class ShardLoader(Protocol):
    """What every backend returns.

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
        """From the manifest (synthetic: ``synthetic_classes``); ``None`` for shards given
        without a manifest."""
        ...


def create_loader(config: LoaderConfig) -> ShardLoader:
    """Build this rank's loader over webdataset shards, or over synthetic data.

    Every option, with its default, is a field of :class:`LoaderConfig`; the transform
    defaults are the timm A2 recipe of "ResNet strikes back" at 224 px: RandomResizedCrop
    (scale 0.08-1, random bilinear/bicubic), horizontal flip, RandAugment
    ``rand-m7-mstd0.5-inc1`` for training; bicubic resize to ``floor(224 / 0.95)`` and centre
    crop for evaluation; ImageNet mean/std.

    Backends:
        ``"wds"`` reads with webdataset and applies the timm transforms in ``num_workers``
        processes; ``"dali"`` runs ``fn.readers.webdataset`` and DALI operators on
        ``num_workers`` threads, with "mixed" GPU decoding when ``device`` is CUDA;
        ``"memory"`` decodes the split once onto ``device`` and crops and flips whole batches
        (no RandAugment, no workers): for data sets that fit in memory; ``"synthetic"`` reads
        no shards: it makes ``synthetic_samples`` images of ``synthetic_classes`` class patterns
        plus noise on ``device`` (no transforms), for benchmarks and smoke tests.

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
        config: The backend, the shards and split, this rank, batch geometry and transforms.

    Returns:
        A :class:`ShardLoader`.
    """
    if not isinstance(config, LoaderConfig):
        raise TypeError(f"Invalid config={config!r}: must be a LoaderConfig")
    if config.backend == "synthetic":
        from adaact_dist.data.synthetic import SyntheticLoader

        return SyntheticLoader(config)
    shardset = resolve_shards(config.shards, split=config.split, strict=config.strict)
    if config.backend == "memory":
        from adaact_dist.data.memory_loader import MemoryLoader

        return MemoryLoader(config, shardset)
    if config.backend == "dali":
        from adaact_dist.data.dali_loader import DaliLoader  # DALI only where it is used

        return DaliLoader(config, shardset)
    from adaact_dist.data.wds_loader import WdsLoader

    return WdsLoader(config, shardset)
