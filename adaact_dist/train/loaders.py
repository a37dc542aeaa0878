"""The run's training and validation loaders, through :func:`adaact_dist.data.create_loader`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.plan import RunPlan

if TYPE_CHECKING:
    from adaact_dist.data import LoaderConfig, ShardLoader


@dataclass
class Loaders:
    """Both splits for this rank; ``val_total`` is the split size over all ranks."""

    train: ShardLoader
    val: ShardLoader
    val_total: int


def shard_root(config: TrainConfig, rank: int) -> str | None:
    """The shard root; an embedded data set is built first (by rank 0, others wait)."""
    data = config.data
    if data.builtin is None:
        return data.root
    from adaact_dist.data.demo_data import ensure_builtin_shards

    def build() -> Path:
        return ensure_builtin_shards(
            data.builtin, data.root, image_size=data.image_size, seed=config.run.seed
        )

    if rank == 0:
        build()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return str(build())  # finished: returns at once, on every rank


def build_loaders(
    config: TrainConfig, plan: RunPlan, *, rank: int, world_size: int, device: torch.device
) -> Loaders:
    data = config.data
    root = None if data.backend == "synthetic" else shard_root(config, rank)
    where = dict(shards=root, rank=rank, world_size=world_size, device=device)
    train = _open_split(
        loader_config(
            config, split=data.train_split, training=True, batch_size=plan.micro_batch_size, **where
        )
    )
    val = _open_split(
        loader_config(
            config, split=data.val_split, training=False, batch_size=plan.eval_batch_size, **where
        )
    )
    classes = train.num_classes
    if classes is not None and classes != config.model.num_classes:
        raise ConfigValueError(
            "model.num_classes", config.model.num_classes, f"{classes}, the classes of {root}"
        )
    return Loaders(train=train, val=val, val_total=val.total_samples)


def _open_split(options: LoaderConfig) -> ShardLoader:
    """The split's loader; a data root that cannot give it is a config error that says how
    to write the shards, not a traceback."""
    from adaact_dist.data import create_loader

    if options.backend == "synthetic":
        return _open_synthetic(options)
    root, split = options.shards, options.split
    write = (
        f"write the shards with: python launch/make_shards.py --src IMAGE_FOLDER --out {root} "
        f"--split {split}"
    )
    wanted = f"a shard directory holding {split}/manifest.json"
    if not Path(root).is_dir():
        problem = "does not exist" if not Path(root).exists() else "is not a directory"
        raise ConfigValueError("data.root", root, f"{wanted}; it {problem}: {write}")
    if not (Path(root) / split / "manifest.json").is_file():
        raise ConfigValueError("data.root", root, f"{wanted}; it has no {split}/ split: {write}")
    try:
        return create_loader(options)
    except ImportError as error:  # the dali backend without DALI installed
        raise ConfigValueError(
            "data.backend", options.backend, f"a backend whose package is installed ({error})"
        ) from None
    except (OSError, ValueError) as error:  # a damaged, missing or stale shard or index
        raise ConfigValueError(
            "data.root", root, f"{wanted} that reads cleanly, but {error}"
        ) from None


def _open_synthetic(options: LoaderConfig) -> ShardLoader:
    """The synthetic split; too few samples for a batch on every rank is a config error."""
    from adaact_dist.data import create_loader

    try:
        return create_loader(options)
    except ValueError as error:
        key = "train" if options.drop_last else "val"
        raise ConfigValueError(
            f"data.synthetic_{key}_samples",
            options.synthetic_samples,
            f"enough for a full batch on every rank ({error})",
        ) from None


def loader_config(
    config: TrainConfig,
    *,
    split: str,
    training: bool,
    batch_size: int,
    shards: str | None,
    rank: int,
    world_size: int,
    device: torch.device,
) -> LoaderConfig:
    """One split's loader options from the run's config; what the config has no key for
    (ratio, interpolations, normalisation, buffers) stays at the loader's default.

    ``training`` sets augmentation, shuffling and ``drop_last`` by the split's role, not by
    its name: a training split called anything but ``train`` must still give every rank the
    same number of full batches. The synthetic backend takes its split's size and the model's
    classes instead of ``shards``.
    """
    from adaact_dist.data import LoaderConfig

    data, aug = config.data, config.augmentation
    synthetic = {}
    if data.backend == "synthetic":
        samples = data.synthetic_train_samples if training else data.synthetic_val_samples
        synthetic = dict(synthetic_samples=samples, synthetic_classes=config.model.num_classes)
    return LoaderConfig(
        backend=data.backend,
        split=split,
        shards=shards,
        **synthetic,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        image_size=data.image_size,
        crop_pct=aug.crop_pct,
        scale=aug.scale,
        hflip=aug.hflip,
        auto_augment=aug.auto_augment,
        num_workers=data.num_workers,
        seed=config.run.seed,
        channels_last=config.model.channels_last,
        device=device,
        strict=data.strict,
        is_training=training,
        shuffle=training,
        drop_last=training,
    )
