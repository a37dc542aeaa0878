"""The run's training and validation loaders: shards through ``adaact_dist.data``, or synthetic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.plan import RunPlan
from adaact_dist.train.synthetic import SyntheticLoader

if TYPE_CHECKING:
    from adaact_dist.data import LoaderConfig


@dataclass
class Loaders:
    """Both splits for this rank; ``val_total`` is the split size over all ranks."""

    train: Any
    val: Any
    val_total: int | None


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
    if data.backend == "synthetic":
        common = dict(
            num_classes=config.model.num_classes,
            image_size=data.image_size,
            rank=rank,
            world_size=world_size,
            seed=config.run.seed,
            device=device,
            channels_last=config.model.channels_last,
        )
        train = SyntheticLoader(
            split="train",
            num_samples=data.synthetic_train_samples,
            batch_size=plan.micro_batch_size,
            **common,
        )
        val = SyntheticLoader(
            split="val",
            num_samples=data.synthetic_val_samples,
            batch_size=plan.eval_batch_size,
            **common,
        )
        return Loaders(train=train, val=val, val_total=data.synthetic_val_samples)

    root = shard_root(config, rank)
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
    classes = getattr(train, "num_classes", None)
    if classes is not None and classes != config.model.num_classes:
        raise ConfigValueError(
            "model.num_classes", config.model.num_classes, f"{classes}, the classes of {root}"
        )
    return Loaders(train=train, val=val, val_total=val.total_samples)


def _open_split(options: LoaderConfig) -> Any:
    """The split's loader; a data root that cannot give it is a config error that says how
    to write the shards, not a traceback."""
    from adaact_dist.data import create_loader

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


def loader_config(
    config: TrainConfig,
    *,
    split: str,
    training: bool,
    batch_size: int,
    shards: str,
    rank: int,
    world_size: int,
    device: torch.device,
) -> LoaderConfig:
    """One split's loader options from the run's config; what the config has no key for
    (ratio, interpolations, normalisation, buffers) stays at the loader's default.

    ``training`` sets augmentation, shuffling and ``drop_last`` by the split's role, not by
    its name: a training split called anything but ``train`` must still give every rank the
    same number of full batches.
    """
    from adaact_dist.data import LoaderConfig

    data, aug = config.data, config.augmentation
    return LoaderConfig(
        backend=data.backend,
        split=split,
        shards=shards,
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
