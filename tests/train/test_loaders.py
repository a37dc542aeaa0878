"""The trainer's loader options: from the run's config, with the data package's defaults."""

from __future__ import annotations

import dataclasses

import torch

from adaact_dist.data import LoaderConfig
from adaact_dist.train.config import DataConfig, TrainConfig
from adaact_dist.train.config_io import load_config
from adaact_dist.train.loaders import loader_config

TRANSFORMS = (
    "image_size",
    "crop_pct",
    "scale",
    "ratio",
    "hflip",
    "auto_augment",
    "train_interpolation",
    "interpolation",
    "mean",
    "std",
)


def _options(config: TrainConfig, split: str = "train", training: bool = True) -> LoaderConfig:
    return loader_config(
        config,
        split=split,
        training=training,
        batch_size=8,
        shards="/shards",
        rank=1,
        world_size=2,
        device=torch.device("cpu"),
    )


def test_a_config_without_transforms_gets_the_loaders_defaults():
    options = _options(TrainConfig(data=DataConfig(root="/shards")))
    defaults = {field.name: field.default for field in dataclasses.fields(LoaderConfig)}
    assert {name: getattr(options, name) for name in TRANSFORMS} == {
        name: defaults[name] for name in TRANSFORMS
    }


def test_the_configs_settings_reach_the_loader():
    config = load_config("demo", ["run.seed=5", "data.strict=true"])
    options = _options(config)
    transforms = (options.image_size, options.crop_pct, options.scale, options.hflip)
    assert transforms == (32, 1.0, (0.5, 1.0), 0.0) and options.auto_augment is None
    assert (options.backend, options.num_workers, options.seed) == ("wds", 0, 5)
    assert not options.channels_last and options.strict
    assert (options.shards, options.batch_size, options.rank, options.world_size) == (
        "/shards", 8, 1, 2,
    )  # fmt: skip
    assert options.is_training and options.drop_last
    val = _options(config, split="val", training=False)
    assert not val.is_training and not val.drop_last and val.crop_pct == 1.0


def test_the_training_split_is_trained_on_whatever_its_name():
    """Augmentation, shuffle and drop_last follow the split's role, not the name "train"."""
    config = load_config("demo", ["data.train_split=train_full", "data.val_split=train"])
    train = _options(config, split="train_full", training=True)
    assert train.is_training and train.shuffle and train.drop_last
    val = _options(config, split="train", training=False)
    assert not val.is_training and not val.shuffle and not val.drop_last
