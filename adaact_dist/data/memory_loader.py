"""A split held in memory: decoded once, then every batch is an index into one uint8 tensor.

For data sets that fit in memory (the embedded tasks, CIFAR-sized sets) the per-image work of
the other backends (JPEG decode, PIL crop, tensor conversion: about 1 ms an image on one CPU
core) costs several times the training step of a small network. Here the split is decoded once
at start, on ``device`` (so a GPU keeps the whole set on the GPU), and training augmentation is
one batched operation: a random resized crop and flip per image, as an affine sampling grid
for the whole batch (``grid_sample``, bilinear). Evaluation images get the evaluation transform
once, at load. Ranks and epochs split the samples exactly as the other backends do
(:mod:`adaact_dist.data.partition`); the order is a seeded permutation of the whole split per
epoch, identical on every rank.

What it does not do: RandAugment and colour jitter (an ``auto_augment`` policy is refused);
images of different sizes in one training split (refused: crop them when writing the shards).
Training crops are always resampled bilinearly (``train_interpolation`` is the per-image
backends' choice), and it has no workers, buffers or prefetching (``num_workers``,
``shuffle_buffer``, ``prefetch``: the trainer's config requires ``num_workers: 0``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from adaact_dist._seeds import derive_seed
from adaact_dist.data.config import LoaderConfig
from adaact_dist.data.images import BadSampleError, decode_jpeg, parse_label
from adaact_dist.data.rank_loader import RankLoader
from adaact_dist.data.shardset import ShardSet
from adaact_dist.data.transforms import BatchNormalizer, build_transform

__all__ = ["MemoryLoader", "random_resized_crop_grid"]

log = logging.getLogger(__name__)

_CROP_TRIES = 10
"""Candidate boxes per image before falling back to the central crop (torchvision's rule)."""


def _read_split(shardset: ShardSet) -> Iterator[tuple[bytes, bytes, str, str]]:
    """``(image bytes, label bytes, shard path, key)`` of every usable sample, stored order."""
    for shard in shardset.shards:
        entries = shard.entries()
        with open(shard.path, "rb") as handle:
            for entry in entries:
                payload = []
                for offset, size in (entry.image, entry.label):
                    handle.seek(offset)
                    payload.append(handle.read(size))
                yield payload[0], payload[1], str(shard.path), entry.key


def random_resized_crop_grid(
    batch: int,
    *,
    height: int,
    width: int,
    out_size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Sampling grids ``(batch, out_size, out_size, 2)`` for ``grid_sample``: per image a box of
    area ``scale`` of the image and aspect ratio in ``ratio`` (log-uniform), at a uniform
    position, mirrored with probability ``hflip``; torchvision's ``RandomResizedCrop`` rule,
    drawn for the whole batch at once."""
    area = height * width
    shape = (batch, _CROP_TRIES)
    target = area * torch.empty(shape).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(shape).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), -1)
    pick = first.clamp(min=0).unsqueeze(1)
    w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
    # No candidate fitted: the central crop at the ratio's nearest bound, as torchvision does.
    missed = first < 0
    if missed.any():
        image_ratio = width / height
        if image_ratio < ratio[0]:
            fw, fh = width, round(width / ratio[0])
        elif image_ratio > ratio[1]:
            fw, fh = round(height * ratio[1]), height
        else:
            fw, fh = width, height
        w[missed], h[missed] = float(fw), float(fh)
    x0 = torch.floor(torch.rand(batch, generator=generator) * (width - w + 1))
    y0 = torch.floor(torch.rand(batch, generator=generator) * (height - h + 1))
    x0[missed] = torch.div(width - w[missed], 2, rounding_mode="floor")
    y0[missed] = torch.div(height - h[missed], 2, rounding_mode="floor")
    mirror = torch.rand(batch, generator=generator) < hflip
    # Normalised coordinates (align_corners=False): the box's centre and half-extent.
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = (w / width) * torch.where(mirror, -1.0, 1.0)
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    return F.affine_grid(theta, [batch, 1, out_size, out_size], align_corners=False).to(device)


class MemoryLoader(RankLoader):
    """Iterable over ``(images, labels)`` batches of one rank; see :func:`create_loader`."""

    def __init__(self, cfg: LoaderConfig, shardset: ShardSet) -> None:
        if cfg.auto_augment is not None:
            raise ValueError(
                f"Invalid auto_augment={cfg.auto_augment!r} for the memory backend: it does no "
                "RandAugment; set it to None (augmentation.auto_augment: null) or use the wds "
                "or dali backend"
            )
        self._total = shardset.total
        super().__init__(cfg, shardset)
        self._normalize = BatchNormalizer(cfg.mean, cfg.std, cfg.device, cfg.channels_last)
        self.images, self.labels = self._load(cfg, shardset)
        # Bad samples are dropped at load: batches and counts follow the samples kept.
        self._total = len(self.labels)
        self._count_batches()
        log.info(
            "memory backend: %s split, %d images, %.1f MB on %s",
            cfg.split, self._total, self.images.numel() / 2**20, cfg.device,
        )  # fmt: skip

    def _load(self, cfg: LoaderConfig, shardset: ShardSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the whole split: uint8 NCHW images (evaluation: already resized and cropped
        by the wds loader's transform) and int64 labels, on ``cfg.device``."""
        evaluate = None
        if not cfg.is_training:
            evaluate = build_transform(
                is_training=False,
                image_size=cfg.image_size,
                crop_pct=cfg.crop_pct,
                scale=cfg.scale,
                ratio=cfg.ratio,
                hflip=0.0,
                auto_augment=None,
                train_interpolation=cfg.train_interpolation,
                interpolation=cfg.interpolation,
                mean=cfg.mean,
                std=cfg.std,
            )
        images, labels = [], []
        for image_bytes, label_bytes, path, key in _read_split(shardset):
            try:
                label = parse_label(label_bytes, shardset.num_classes)
                decoded = decode_jpeg(image_bytes)
            except BadSampleError as error:
                if cfg.strict:
                    raise BadSampleError(f"{path}: sample {key!r}: {error}") from error
                self.num_skipped += 1
                log.warning("Skipped bad sample %r in %s: %s", key, path, error)
                continue
            if evaluate is not None:
                image = torch.as_tensor(evaluate(decoded))
            else:
                image = torch.from_numpy(np.array(decoded)).permute(2, 0, 1)
            if images and image.shape != images[0].shape:
                raise ValueError(
                    f"The memory backend needs one image size per training split: {path} "
                    f"sample {key!r} is {tuple(image.shape[1:])}, the first was "
                    f"{tuple(images[0].shape[1:])}; write the shards at one size or use the "
                    "wds backend"
                )
            images.append(image)
            labels.append(label)
        if not images:
            raise ValueError(f"No decodable sample in the {cfg.split} split ({shardset.total})")
        stacked = torch.stack(images).to(cfg.device)
        return stacked, torch.tensor(labels, dtype=torch.int64, device=cfg.device)

    @property
    def total_samples(self) -> int:
        """Usable samples in the split (bad ones, found at load, are not counted)."""
        return self._total

    def _order(self) -> torch.Tensor:
        cfg = self.cfg
        if not cfg.shuffle:
            return torch.arange(self._total)
        generator = torch.Generator().manual_seed(
            derive_seed(cfg.seed, "memory-order", epoch=self.epoch)
        )
        return torch.randperm(self._total, generator=generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        start, stop = self._batch_range()
        positions = self._order()[start:stop].to(cfg.device)
        generator = torch.Generator().manual_seed(
            derive_seed(cfg.seed, "memory-augment", rank=cfg.rank, epoch=self.epoch)
        )
        for first in range(0, len(positions), cfg.batch_size):
            chosen = positions[first : first + cfg.batch_size]
            images = self.images[chosen]
            if cfg.is_training:
                images = self._augment(images, generator)
            yield self._normalize(images), self.labels[chosen]

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        grid = random_resized_crop_grid(
            len(images),
            height=images.shape[2],
            width=images.shape[3],
            out_size=cfg.image_size,
            scale=cfg.scale,
            ratio=cfg.ratio,
            hflip=cfg.hflip,
            generator=generator,
            device=images.device,
        )
        sampled = F.grid_sample(
            images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return sampled.round_().clamp_(0, 255).to(torch.uint8)
