"""Synthetic image batches, a learnable and deterministic stand-in for shards.

Selected by ``data.backend: synthetic``.

For benchmarks and smoke tests of the loop. Each class has a fixed low-resolution
pattern; an image is its class pattern, upsampled, plus Gaussian noise. Batches are
generated on the target device from generators seeded by (seed, split, epoch, rank,
batch), so they cost no global RNG state and resume exactly. The validation split is
cut over ranks like the shard loaders cut it: contiguous ranges, every sample once,
the last batch of a rank possibly short.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from adaact_dist._seeds import derive_seed

_PATTERN = 8  # side of a class pattern before upsampling


class SyntheticLoader:
    """Iterable of ``(images NCHW float, labels int64)`` with ``len()`` and ``set_epoch()``."""

    def __init__(
        self,
        *,
        split: str,
        num_samples: int,
        num_classes: int,
        batch_size: int,
        image_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        noise: float = 0.5,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"Invalid split={split!r}: must be 'train' or 'val'")
        if num_samples < 1 or batch_size < 1 or num_classes < 2:
            raise ValueError(
                f"Invalid synthetic data set: num_samples={num_samples}, batch_size={batch_size}, "
                f"num_classes={num_classes} (must be >= 1, >= 1, >= 2)"
            )
        self.split = split
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.image_size = image_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.noise = noise
        self.epoch = 0
        generator = torch.Generator().manual_seed(derive_seed(seed, "synthetic-patterns"))
        self.patterns = torch.randn(num_classes, 3, _PATTERN, _PATTERN, generator=generator).to(
            self.device
        )
        if split == "train":  # every rank the same count of full batches
            self.start = 0
            self.stop = num_samples // world_size
        else:  # every sample exactly once over the ranks
            self.start = num_samples * rank // world_size
            self.stop = num_samples * (rank + 1) // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        count = self.stop - self.start
        if self.split == "train":
            return count // self.batch_size
        return -(-count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in range(len(self)):
            yield self._batch(index)

    def _batch(self, index: int) -> tuple[Tensor, Tensor]:
        first = self.start + index * self.batch_size
        count = min(self.batch_size, self.stop - first)
        generator = torch.Generator(device=self.device)
        if self.split == "train":
            generator.manual_seed(
                derive_seed(
                    self.seed, "synthetic-train", rank=self.rank, epoch=self.epoch, index=index
                )
            )
            labels = torch.randint(
                self.num_classes, (count,), generator=generator, device=self.device
            )
            noise = torch.randn(
                (count, 3, self.image_size, self.image_size),
                generator=generator,
                device=self.device,
            )
        else:  # each sample fixed by its index, however the split is cut over ranks
            positions = torch.arange(first, first + count, device=self.device)
            labels = (positions * 7919 + self.seed) % self.num_classes
            noise = torch.empty((count, 3, self.image_size, self.image_size), device=self.device)
            for i in range(count):
                generator.manual_seed(derive_seed(self.seed, "synthetic-val", index=first + i))
                noise[i].normal_(generator=generator)
        images = F.interpolate(self.patterns[labels], size=self.image_size, mode="nearest")
        images = images + self.noise * noise
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.long()
