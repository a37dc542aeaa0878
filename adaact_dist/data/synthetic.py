"""Synthetic image batches, a learnable and deterministic stand-in for shards.

``create_loader(LoaderConfig(backend="synthetic", ...))``; the trainer's
``data.backend: synthetic``.

For benchmarks and smoke tests of the loop. Each class has a fixed low-resolution
pattern; an image is its class pattern, upsampled, plus Gaussian noise. Batches are
generated on the target device from generators seeded by (seed, split, epoch, rank,
batch), so they cost no global RNG state and resume exactly. Ranks split the
``synthetic_samples`` positions as the shard backends split a split
(:mod:`adaact_dist.data.partition`): with ``drop_last`` every rank the same count of
full batches, without it every sample exactly once, the last batch of a rank possibly
short. Training draws new labels and noise every epoch; otherwise each sample is fixed
by its position, however the split is cut over ranks. No transform or normalisation is
applied.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from adaact_dist._seeds import derive_seed
from adaact_dist.data.config import LoaderConfig
from adaact_dist.data.rank_loader import RankLoader

__all__ = ["SyntheticLoader"]

_PATTERN = 8  # side of a class pattern before upsampling
_NOISE = 0.5  # standard deviation of the noise added to the upsampled pattern


class SyntheticLoader(RankLoader):
    """Iterable over ``(images, labels)`` batches of one rank; see :func:`create_loader`."""

    def __init__(self, cfg: LoaderConfig) -> None:
        super().__init__(cfg, None)
        self.device = cfg.device
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "synthetic-patterns"))
        self.patterns = torch.randn(
            cfg.synthetic_classes, 3, _PATTERN, _PATTERN, generator=generator
        ).to(self.device)

    @property
    def total_samples(self) -> int:
        """The split's size, all ranks together."""
        return self.cfg.synthetic_samples

    @property
    def num_classes(self) -> int:
        return self.cfg.synthetic_classes

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        start, stop = self._batch_range()
        for index, first in enumerate(range(start, stop, self.cfg.batch_size)):
            yield self._batch(index, first, min(self.cfg.batch_size, stop - first))

    def _batch(self, index: int, first: int, count: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of this rank's epoch: ``count`` samples from position ``first``."""
        cfg, device, size = self.cfg, self.device, self.cfg.image_size
        generator = torch.Generator(device=device)
        if cfg.is_training:
            generator.manual_seed(
                derive_seed(
                    cfg.seed, "synthetic-train", rank=cfg.rank, epoch=self.epoch, index=index
                )
            )
            labels = torch.randint(self.num_classes, (count,), generator=generator, device=device)
            noise = torch.randn((count, 3, size, size), generator=generator, device=device)
        else:  # each sample fixed by its position, however the split is cut over ranks
            positions = torch.arange(first, first + count, device=device)
            labels = (positions * 7919 + cfg.seed) % self.num_classes
            noise = torch.empty((count, 3, size, size), device=device)
            for i in range(count):
                generator.manual_seed(derive_seed(cfg.seed, "synthetic-val", index=first + i))
                noise[i].normal_(generator=generator)
        images = F.interpolate(self.patterns[labels], size=size, mode="nearest")
        images = images + _NOISE * noise
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.long()
