"""Synthetic backend: the same epoch and rank split as the shard backends, batches fixed by
their seeds, and its options refused where they do not belong."""

from __future__ import annotations

import pytest
import torch

from adaact_dist.data import LoaderConfig, ShardLoader, create_loader


def _loader(**kw) -> ShardLoader:
    args = dict(
        backend="synthetic",
        split="train",
        synthetic_samples=27,
        synthetic_classes=5,
        batch_size=4,
        image_size=8,
        seed=1,
    )
    args.update(kw)
    return create_loader(LoaderConfig(**args))


def _epoch(loader: ShardLoader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_equal_full_batches_on_every_rank_and_new_batches_each_epoch():
    loaders = [_loader(rank=r, world_size=2) for r in range(2)]
    assert isinstance(loaders[0], ShardLoader)
    assert [len(loader) for loader in loaders] == [3, 3]  # (27 // 2) // 4, as the shard backends
    assert (loaders[1].num_samples, loaders[1].total_samples, loaders[1].num_classes) == (12, 27, 5)
    for loader in loaders:
        batches = _epoch(loader)
        assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 8)] * 3
        assert all(y.dtype == torch.int64 and 0 <= y.min() and y.max() < 5 for _, y in batches)
    first = [torch.cat([x for x, _ in _epoch(loader, 0)]) for loader in loaders]
    again = [torch.cat([x for x, _ in _epoch(loader, 0)]) for loader in loaders]
    later = [torch.cat([x for x, _ in _epoch(loader, 1)]) for loader in loaders]
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "seeded: epoch 0 repeats"
    assert not torch.equal(first[0], first[1]), "each rank its own batches"
    assert not torch.equal(first[0], later[0]), "new batches each epoch"


def test_evaluation_yields_each_sample_once_and_the_same_whatever_the_world_size():
    alone = _epoch(_loader(split="val"))
    images, labels = torch.cat([x for x, _ in alone]), torch.cat([y for _, y in alone])
    assert len(alone) == 7 and len(labels) == 27, "the last batch short, nothing dropped"
    parts = [_epoch(_loader(split="val", rank=r, world_size=3)) for r in range(3)]
    assert [sum(len(y) for _, y in batches) for batches in parts] == [9, 9, 9]
    split_images = torch.cat([x for batches in parts for x, _ in batches])
    split_labels = torch.cat([y for batches in parts for _, y in batches])
    assert torch.equal(split_images, images) and torch.equal(split_labels, labels)
    assert torch.equal(torch.cat([x for x, _ in _epoch(_loader(split="val"), 4)]), images)


def test_images_are_their_class_pattern_plus_noise_in_the_asked_layout():
    (images, _), *_ = _epoch(_loader(channels_last=True, image_size=16))
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert images.dtype == torch.float32 and images.shape == (4, 3, 16, 16)
    # Learnable: the class means of the validation split classify the training images.
    val = _epoch(_loader(split="val", synthetic_samples=200))
    images, labels = torch.cat([x for x, _ in val]), torch.cat([y for _, y in val])
    means = torch.stack([images[labels == c].mean(0) for c in range(5)]).flatten(1)
    train = _epoch(_loader(synthetic_samples=200))
    images, labels = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    nearest = torch.cdist(images.flatten(1), means).argmin(1)
    assert (nearest == labels).float().mean() > 0.9


def test_options_of_the_other_kind_are_refused():
    with pytest.raises(ValueError, match="shards='/data'.*synthetic backend"):
        _loader(shards="/data")
    with pytest.raises(ValueError, match="synthetic_samples=None"):
        _loader(synthetic_samples=None)
    with pytest.raises(ValueError, match="synthetic_classes=1"):
        _loader(synthetic_classes=1)
    with pytest.raises(ValueError, match="synthetic_samples=27: must be None for the wds"):
        LoaderConfig(
            backend="wds", split="train", shards="/data", batch_size=4, synthetic_samples=27
        )
    with pytest.raises(ValueError, match="shards=None: must be a shard path"):
        LoaderConfig(backend="memory", split="train", batch_size=4)
    with pytest.raises(ValueError, match="batch_size=16"):
        _loader(batch_size=16, world_size=2)  # 13 samples a rank: not one full batch
