"""Memory loader: the same epoch and rank split as the other backends, batched crops that
are torchvision's RandomResizedCrop rule, evaluation equal to the wds loader, bad data."""

from __future__ import annotations

import logging

import pytest
import torch

from adaact_dist.data import BadSampleError, LoaderConfig, create_loader
from adaact_dist.data.memory_loader import random_resized_crop_grid
from tests.data.conftest import write_tar_shards

UNEVEN = [10, 10, 7]  # 27 samples in 3 shards of different sizes; sample n has label n


def _loader(shards, **kw):
    args = dict(
        split="train",
        shards=shards,
        batch_size=4,
        image_size=16,
        num_workers=0,
        auto_augment=None,
    )
    args.update(kw)
    return create_loader(LoaderConfig(backend="memory", **args))


def _epoch(loader, epoch=0) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [labels.tolist() for _, labels in loader]


def test_equal_batches_on_every_rank_and_a_new_order_each_epoch(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    loaders = [_loader(shards, rank=r, world_size=2) for r in range(2)]
    assert [len(loader) for loader in loaders] == [3, 3]  # (27 // 2) // 4, as wds
    for epoch in range(2):
        per_rank = [_epoch(loader, epoch) for loader in loaders]
        ids = [i for batches in per_rank for b in batches for i in b]
        assert all(len(b) == 4 for batches in per_rank for b in batches)
        assert len(ids) == len(set(ids)) == 24, "no sample twice in an epoch, across ranks"
    first = [_epoch(loader, 0) for loader in loaders]
    assert first == [_epoch(loader, 0) for loader in loaders], "seeded: epoch 0 repeats"
    assert first != [_epoch(loader, 1) for loader in loaders], "new order each epoch"


def test_evaluation_reads_every_sample_once_as_the_wds_loader_does(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    ids = []
    for rank in range(3):
        loader = _loader(shards, split="val", rank=rank, world_size=3, crop_pct=0.9)
        assert (len(loader), loader.num_samples, loader.total_samples) == (3, 9, 27)
        ids += [i for b in _epoch(loader) for i in b]
    assert sorted(ids) == list(range(27))
    wds = create_loader(
        LoaderConfig(backend="wds", split="val", shards=shards, batch_size=27, image_size=16,
                     num_workers=0, crop_pct=0.9)
    )  # fmt: skip
    memory = _loader(shards, split="val", batch_size=27, crop_pct=0.9)
    (ours, our_labels), (theirs, their_labels) = next(iter(memory)), next(iter(wds))
    assert our_labels.tolist() == their_labels.tolist()
    torch.testing.assert_close(ours, theirs)  # the same transform, applied once at load


def test_training_crops_follow_the_scale_ratio_and_flip_rules():
    generator = torch.Generator().manual_seed(0)
    image = torch.arange(20 * 24, dtype=torch.float32).view(1, 1, 20, 24)
    whole = random_resized_crop_grid(
        1, height=20, width=24, out_size=20, scale=(1.0, 1.0), ratio=(1.2, 1.2), hflip=0.0,
        generator=generator, device=torch.device("cpu"),
    )  # fmt: skip
    sampled = torch.nn.functional.grid_sample(image, whole, align_corners=False)
    assert sampled.shape == (1, 1, 20, 20)
    # Aspect ratio 1.2 of a 24 x 20 image at full area: the whole image, squeezed to 20 x 20.
    assert sampled[0, 0, 0, 0] == pytest.approx(image[0, 0, 0, 0], abs=1.0)
    assert sampled[0, 0, -1, -1] == pytest.approx(image[0, 0, -1, -1], abs=1.0)
    mirrored = random_resized_crop_grid(
        1, height=20, width=24, out_size=20, scale=(1.0, 1.0), ratio=(1.2, 1.2), hflip=1.0,
        generator=generator, device=torch.device("cpu"),
    )  # fmt: skip
    flipped = torch.nn.functional.grid_sample(image, mirrored, align_corners=False)
    torch.testing.assert_close(flipped, sampled.flip(-1))
    boxes = random_resized_crop_grid(
        4096, height=20, width=24, out_size=16, scale=(0.25, 0.5), ratio=(0.75, 4 / 3), hflip=0.5,
        generator=generator, device=torch.device("cpu"),
    )  # fmt: skip
    # The grid spans each box: its extent in normalised coordinates is the box's share.
    width = (boxes[:, 0, -1, 0] - boxes[:, 0, 0, 0]).abs() * 16 / 15 / 2
    height = (boxes[:, -1, 0, 1] - boxes[:, 0, 0, 1]).abs() * 16 / 15 / 2
    area = width * height
    assert area.min() > 0.22 and area.max() < 0.53  # rounding to whole pixels
    assert ((boxes[:, 0, -1, 0] - boxes[:, 0, 0, 0]) < 0).float().mean() == pytest.approx(
        0.5, abs=0.05
    )
    assert boxes.abs().max() <= 1.0, "boxes stay inside the image"


def test_training_batches_are_augmented_reproducibly(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    loader = _loader(shards, shuffle=False, scale=(0.3, 0.6), hflip=0.5)
    loader.set_epoch(0)
    first = [images for images, _ in loader]
    loader.set_epoch(0)
    again = [images for images, _ in loader]
    loader.set_epoch(1)
    other = [images for images, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert first[0].dtype == torch.float32 and first[0].shape == (4, 3, 16, 16)


def test_bad_samples_are_skipped_at_load_and_counted(tmp_path, caplog):
    shards = write_tar_shards(tmp_path, UNEVEN, corrupt={3}, bad_label={20})
    with caplog.at_level(logging.WARNING):
        val = _loader(shards, split="val")
    assert val.num_skipped == 2 and val.total_samples == 25
    assert "s0_00003" in caplog.text and "s2_00020" in caplog.text
    assert sorted(i for b in _epoch(val) for i in b) == sorted(set(range(27)) - {3, 20})
    with pytest.raises(BadSampleError, match=r"shard-0\.tar: sample 's0_00003'"):
        _loader(shards, split="val", strict=True)


def test_what_it_cannot_do_is_refused(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    with pytest.raises(ValueError, match="auto_augment.*RandAugment"):
        _loader(shards, auto_augment="rand-m7-mstd0.5-inc1")
