"""Data: ImageNet as webdataset shards, the loaders over them, Mixup, and the demo data.

What the trainer uses from here::

    from adaact_dist.data import DeviceMixup, LoaderConfig, create_loader, read_manifest

    manifest = read_manifest("/data/imagenet-wds/train")      # classes, counts, shard paths
    train = create_loader(LoaderConfig(
        backend="dali", split="train", shards="/data/imagenet-wds", batch_size=256,
        rank=rank, world_size=world, num_workers=8, seed=0,
        channels_last=True, device=f"cuda:{local_rank}",
    ))
    mixup = DeviceMixup(num_classes=manifest.num_classes, mixup_alpha=0.1, cutmix_alpha=1.0)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        for images, labels in train:                         # len(train) batches, every rank
            images, targets = mixup(images, labels)

Shards are written by ``adaact-make-shards`` (:mod:`adaact_dist.data.shard_writer`); the demo
digits by :func:`ensure_digits_shards`. DALI is imported only when ``backend="dali"``;
``backend="synthetic"`` reads no shards (generated batches, for benchmarks and smoke tests).
"""

from adaact_dist.data.config import LoaderConfig
from adaact_dist.data.defaults import IMAGENET_MEAN, IMAGENET_STD
from adaact_dist.data.demo_data import default_cache_dir, ensure_digits_shards
from adaact_dist.data.images import BadSampleError
from adaact_dist.data.loader import ShardLoader, create_loader
from adaact_dist.data.manifest import Manifest, ShardInfo, read_manifest
from adaact_dist.data.mixup import DeviceMixup
from adaact_dist.data.photos import make_photo_set
from adaact_dist.data.shard_writer import verify_shards, write_shards

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadSampleError",
    "DeviceMixup",
    "LoaderConfig",
    "Manifest",
    "ShardInfo",
    "ShardLoader",
    "create_loader",
    "default_cache_dir",
    "ensure_digits_shards",
    "make_photo_set",
    "read_manifest",
    "verify_shards",
    "write_shards",
]
