"""Validated options of :func:`adaact_dist.data.create_loader`, shared by every backend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adaact_dist.data import defaults

__all__ = ["BACKENDS", "LoaderConfig", "num_workers_requirement"]

BACKENDS = ("wds", "dali", "memory", "synthetic")
"""The backends :func:`adaact_dist.data.create_loader` builds; the trainer's config reads it."""
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def num_workers_requirement(backend: str, num_workers: int) -> str | None:
    """What ``num_workers`` must be for ``backend`` (the words after "must be") when it is not,
    else ``None``. DALI runs its pipeline on ``num_workers`` CPU threads, so it needs one; the
    trainer's config checks here too, to refuse the value before any loader is built."""
    if backend == "dali" and num_workers < 1:
        return ">= 1 with the dali backend (its pipeline's CPU threads)"
    return None


@dataclass(kw_only=True)
class LoaderConfig:
    """Everything a loader needs; ``None`` fields take their default from ``split``.

    The transform defaults are timm's A2 recipe at 224 px (:mod:`adaact_dist.data.defaults`).
    """

    backend: str
    """``"wds"`` (webdataset + timm transforms), ``"dali"`` (NVIDIA DALI pipeline),
    ``"memory"`` (the split decoded once into memory, batched crop and flip) or ``"synthetic"``
    (class patterns plus noise, made on ``device``; no shards)."""
    split: str
    """Split name; ``"train"`` selects training augmentation, shuffling and ``drop_last``."""
    shards: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    """Data set root (holding ``<split>/manifest.json``), split directory, manifest file, brace
    pattern (``/data/train-{000000..001023}.tar``) or list of tar files; ``None`` for the
    synthetic backend."""
    synthetic_samples: int | None = None
    """Synthetic backend only: the split's size over all ranks."""
    synthetic_classes: int | None = None
    """Synthetic backend only: its number of classes (the others read theirs from the
    manifest)."""
    batch_size: int
    """Samples per batch on this rank."""
    rank: int = 0
    """This process's rank."""
    world_size: int = 1
    """Number of ranks reading the split."""
    image_size: int = defaults.IMAGE_SIZE
    """Output height and width."""
    crop_pct: float = defaults.CROP_PCT
    """Evaluation: resize the shorter side to ``floor(image_size / crop_pct)``, then crop."""
    scale: tuple[float, float] = defaults.SCALE
    """RandomResizedCrop area range."""
    ratio: tuple[float, float] = defaults.RATIO
    """RandomResizedCrop aspect-ratio range."""
    hflip: float = defaults.HFLIP
    """Horizontal flip probability (training)."""
    auto_augment: str | None = defaults.AUTO_AUGMENT
    """timm RandAugment string (training); ``None`` for none."""
    train_interpolation: str = defaults.TRAIN_INTERPOLATION
    """Training resize: ``random`` (bilinear or bicubic per image, timm's default), ``bilinear``
    or ``bicubic``."""
    interpolation: str = defaults.INTERPOLATION
    """Evaluation resize interpolation."""
    mean: tuple[float, ...] = defaults.IMAGENET_MEAN
    """Normalisation mean (0-1 scale); also RandAugment's fill colour."""
    std: tuple[float, ...] = defaults.IMAGENET_STD
    """Normalisation std (0-1 scale)."""
    num_workers: int = 4
    """wds: DataLoader worker processes (persistent); dali: pipeline CPU threads."""
    seed: int = 0
    """Base seed of the shard order (per epoch), shuffle buffers and augmentation (per epoch,
    rank and worker)."""
    channels_last: bool = False
    """Return NCHW-shaped tensors in channels-last memory format."""
    device: torch.device | str = "cpu"
    """Where batches are delivered (through pinned host memory for CUDA), and where DALI
    decodes: ``cuda`` -> "mixed" decoding."""
    is_training: bool | None = None
    """Augment; default ``split == "train"``."""
    shuffle: bool | None = None
    """Shuffle shard order and samples each epoch; default ``split == "train"``."""
    drop_last: bool | None = None
    """Equal full batches on every rank (some samples dropped); default ``split == "train"``.
    Without it each sample is yielded exactly once over all ranks, the last batch may be short
    and ranks may differ by one batch."""
    strict: bool = False
    """Make a bad sample (undecodable image, missing or invalid label) fatal."""
    shuffle_buffer: int = 1024
    """Encoded samples held per worker (wds) or per pipeline (dali) for shuffling (1,024: DALI's
    default; about 110 MB of ImageNet JPEGs per worker)."""
    prefetch: int = 2
    """Batches prefetched per worker (wds) or queued by the pipeline (dali)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"Invalid backend={self.backend!r}: must be one of {BACKENDS}")
        self._check_source()
        for name in ("batch_size", "world_size", "image_size", "shuffle_buffer", "prefetch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Invalid {name}={value!r}: must be a positive integer")
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise ValueError(f"Invalid rank={self.rank!r}: must be in [0, {self.world_size})")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"Invalid num_workers={self.num_workers!r}: must be >= 0")
        requirement = num_workers_requirement(self.backend, self.num_workers)
        if requirement is not None:
            raise ValueError(f"Invalid num_workers={self.num_workers}: must be {requirement}")
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)  # lists taken as well
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"Invalid crop_pct={self.crop_pct!r}: must be in (0, 1]")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"Invalid scale={self.scale!r}: must be 0 < low <= high <= 1")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"Invalid ratio={self.ratio!r}: must be 0 < low <= high")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"Invalid hflip={self.hflip!r}: must be in [0, 1]")
        if self.train_interpolation not in (*_INTERPOLATIONS, "random"):
            raise ValueError(
                f"Invalid train_interpolation={self.train_interpolation!r}: must be one of "
                f"{(*_INTERPOLATIONS, 'random')}"
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Invalid interpolation={self.interpolation!r}: must be one of {_INTERPOLATIONS}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"Invalid mean={self.mean!r}/std={self.std!r}: need 3 values each, std > 0"
            )
        self.device = torch.device(self.device)
        if self.is_training is None:
            self.is_training = self.split == "train"
        if self.shuffle is None:
            self.shuffle = self.split == "train"
        if self.drop_last is None:
            self.drop_last = self.split == "train"

    def _check_source(self) -> None:
        """Shards for the shard backends, a size and classes for the synthetic one; a field
        of the other kind is refused, not ignored."""
        synthetic = ("synthetic_samples", "synthetic_classes")
        if self.backend != "synthetic":
            if self.shards is None:
                raise ValueError(
                    f"Invalid shards=None: must be a shard path, pattern or list for the "
                    f"{self.backend} backend"
                )
            for name in synthetic:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"Invalid {name}={getattr(self, name)!r}: must be None for the "
                        f"{self.backend} backend (it is for the synthetic one)"
                    )
            return
        if self.shards is not None:
            raise ValueError(
                f"Invalid shards={self.shards!r}: must be None for the synthetic backend, "
                "which reads no shards"
            )
        for name, least in zip(synthetic, (1, 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(
                    f"Invalid {name}={value!r}: must be an integer >= {least} for the synthetic "
                    "backend"
                )
