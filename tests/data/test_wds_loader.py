"""webdataset loader: equal batches per rank, exact evaluation, timm transforms, bad data."""

from __future__ import annotations

import collections
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from adaact_dist.data import BadSampleError, LoaderConfig, create_loader
from adaact_dist.data.transforms import build_transform
from tests.data.conftest import write_tar_shards

UNEVEN = [10, 10, 7]  # 27 samples in 3 shards of different sizes


def _epoch(loader, epoch=0) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [labels.tolist() for _, labels in loader]


def _loader(shards, **kw):
    args = dict(split="train", shards=shards, batch_size=4, image_size=16, num_workers=2)
    args.update(kw)
    return create_loader(LoaderConfig(backend="wds", **args))


def test_equal_batches_on_every_rank_with_uneven_shards(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    world = 2
    loaders = [_loader(shards, rank=r, world_size=world) for r in range(world)]
    assert [len(loader) for loader in loaders] == [3, 3]  # (27 // 2) // 4
    for epoch in range(2):
        per_rank = [_epoch(loader, epoch) for loader in loaders]
        for batches in per_rank:
            assert len(batches) == 3 and all(len(b) == 4 for b in batches)
        ids = [i for batches in per_rank for b in batches for i in b]
        assert len(ids) == len(set(ids)) == 24, "no sample twice in an epoch, across ranks"
    first = [_epoch(loader, 0) for loader in loaders]
    assert first == [_epoch(loader, 0) for loader in loaders], "seeded: epoch 0 repeats"
    assert first != [_epoch(loader, 1) for loader in loaders], "new shuffle each epoch"


def test_evaluation_yields_every_sample_exactly_once(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    ids, lengths = [], []
    for rank in range(3):
        loader = _loader(shards, split="val", rank=rank, world_size=3, batch_size=4)
        batches = _epoch(loader)
        lengths.append((len(loader), len(batches), loader.num_samples))
        ids += [i for b in batches for i in b]
        assert loader.total_samples == 27
    assert sorted(ids) == list(range(27))
    assert lengths == [(3, 3, 9)] * 3


def test_batches_are_normalised_channels_last_tensors(digits_root):
    loader = create_loader(
        LoaderConfig(
            backend="wds",
            split="train",
            shards=digits_root,
            batch_size=8,
            image_size=16,
            num_workers=0,
            channels_last=True,
            auto_augment=None,
            scale=(1.0, 1.0),
            ratio=(1.0, 1.0),
            hflip=0.0,
        )
    )
    assert loader.num_classes == 10 and len(loader) == 1437 // 8
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
    # Digits are white on black: the darkest pixel normalises to about (0 - mean) / std.
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(images.amin(dim=(0, 2, 3)), expected, atol=0.05)
    assert images.amax() > 1.5  # and the ink is bright


def _photo() -> Image.Image:
    from adaact_dist.data.photos import load_photos

    return Image.fromarray(load_photos()[1][:96, :128])


def test_train_transform_equals_timm_a2():
    from timm.data import create_transform

    ours = build_transform(
        is_training=True,
        image_size=32,
        crop_pct=0.95,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip=0.5,
        auto_augment="rand-m7-mstd0.5-inc1",
        train_interpolation="random",
        interpolation="bicubic",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    timm_a2 = create_transform(
        32,
        is_training=True,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip=0.5,
        auto_augment="rand-m7-mstd0.5-inc1",
        interpolation="random",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        re_prob=0.0,
    )
    # Same steps: everything before timm's ToTensor + Normalize, which move to the device.
    assert repr(ours.transforms[:-1]) == repr(timm_a2.transforms[:-2])
    from adaact_dist.data.transforms import BatchNormalizer

    normalize = BatchNormalizer(
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), torch.device("cpu"), False
    )
    image = _photo()
    for seed in range(8):
        for rng in (random.seed, np.random.seed, torch.manual_seed):
            rng(seed)
        a = normalize(ours(image)[None])[0]
        for rng in (random.seed, np.random.seed, torch.manual_seed):
            rng(seed)
        b = timm_a2(image)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_eval_transform_equals_timm():
    from timm.data import create_transform

    ours = build_transform(
        is_training=False,
        image_size=32,
        crop_pct=0.95,
        scale=(0.08, 1.0),
        ratio=(1, 1),
        hflip=0.5,
        auto_augment=None,
        train_interpolation="random",
        interpolation="bicubic",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    reference = create_transform(
        32, interpolation="bicubic", crop_pct=0.95, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    assert "Resize(size=33" in repr(ours)  # floor(32 / 0.95)
    image = _photo()
    got = (ours(image).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(got, reference(image), atol=1e-5, rtol=1e-5)


def test_corrupt_sample_skipped_and_counted(tmp_path, caplog):
    shards = write_tar_shards(tmp_path, UNEVEN, corrupt={3}, bad_label={20})
    train = _loader(shards, num_workers=1, shuffle=False)
    with caplog.at_level(logging.WARNING):
        batches = _epoch(train)
    assert len(batches) == len(train) == 6 and all(len(b) == 4 for b in batches)
    ids = [i for b in batches for i in b]
    assert 3 not in ids and 20 not in ids and train.num_skipped == 2
    assert "s0_00003" in caplog.text and "shard-0.tar" in caplog.text
    assert "s2_00020" in caplog.text

    val = _loader(shards, split="val", num_workers=2)
    ids = [i for b in _epoch(val) for i in b]
    assert sorted(ids) == sorted(set(range(27)) - {3, 20}) and val.num_skipped == 2


def test_corrupt_sample_fatal_with_strict(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN, corrupt={3})
    strict = _loader(shards, split="val", num_workers=0, strict=True)
    with pytest.raises(BadSampleError, match=r"shard-0\.tar: sample 's0_00003'"):
        _epoch(strict)


def test_sample_without_label(tmp_path, caplog):
    shards = write_tar_shards(tmp_path, UNEVEN, no_label={11})
    with caplog.at_level(logging.WARNING):
        loader = _loader(shards, split="val", num_workers=0)
    assert loader.total_samples == 26 and "s1_00011" in caplog.text
    assert sorted(i for b in _epoch(loader) for i in b) == sorted(set(range(27)) - {11})
    with pytest.raises(BadSampleError, match="s1_00011"):
        _loader(shards, split="val", strict=True)


def test_missing_shard_is_a_clear_error_at_start(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    missing = tmp_path / "shard-9.tar"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        _loader([*shards, missing])
    with pytest.raises(FileNotFoundError, match="Missing shard: .*nothing-here"):
        _loader(tmp_path / "nothing-here")


def test_shards_without_index_and_brace_patterns(tmp_path):
    write_tar_shards(tmp_path, UNEVEN, index=False)
    loader = _loader(str(tmp_path / "shard-{0..2}.tar"), split="val", num_workers=0)
    assert sorted(i for b in _epoch(loader) for i in b) == list(range(27))


def test_shard_content_is_never_unpickled(tmp_path):
    marker = tmp_path / "executed"
    shards = write_tar_shards(tmp_path / "s", UNEVEN, pickle_marker=marker)
    counts = collections.Counter(i for b in _epoch(_loader(shards, split="val")) for i in b)
    assert sorted(counts) == list(range(27)) and not marker.exists()


def test_invalid_options_name_the_value(tmp_path):
    shards = write_tar_shards(tmp_path, UNEVEN)
    with pytest.raises(ValueError, match="backend='tf'"):
        create_loader(LoaderConfig(backend="tf", split="train", shards=shards, batch_size=4))
    with pytest.raises(TypeError, match="must be a LoaderConfig"):
        create_loader("wds")
    with pytest.raises(ValueError, match="rank=2"):
        _loader(shards, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=64"):
        _loader(shards, batch_size=64)
