"""DALI backend on CPU: same samples as the wds loader, timm-like RandAugment, bad data.

DALI runs CPU-only pipelines here (``device_id=None``); the "mixed" GPU decoding path is tested
only where a CUDA GPU is present.
"""

from __future__ import annotations

import collections
import logging
import random
import re
from unittest import mock

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")

from adaact_dist.data import BadSampleError, LoaderConfig, create_loader  # noqa: E402
from adaact_dist.data.dali_augment import (  # noqa: E402
    magnitude_bin_probs,
    parse_rand_augment,
    timm_suite,
)
from tests.data.conftest import write_tar_shards  # noqa: E402

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="DALI 'mixed' decoding needs a CUDA GPU; none here"
)


def _labels(loader, epoch=0) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [labels.tolist() for _, labels in loader]


def _both(shards, **kw) -> dict[str, list]:
    args = dict(shards=shards, image_size=16, num_workers=2)
    args.update(kw)
    return {b: create_loader(LoaderConfig(backend=b, **args)) for b in ("wds", "dali")}


def test_same_labels_per_rank_as_wds_evaluation(tmp_path):
    shards = write_tar_shards(tmp_path, [10, 10, 7])
    for rank in range(2):
        loaders = _both(shards, split="val", batch_size=4, rank=rank, world_size=2)
        got = {b: _labels(loader) for b, loader in loaders.items()}
        assert len(loaders["dali"]) == len(loaders["wds"]) == 4
        assert [len(b) for b in got["dali"]] == [len(b) for b in got["wds"]]
        assert sorted(sum(got["dali"], [])) == sorted(sum(got["wds"], []))
        assert sorted(sum(got["dali"], [])) == list(range(rank * 13, 13 + rank * 14))


def test_same_label_multiset_as_wds_training_epochs(tmp_path):
    shards = write_tar_shards(tmp_path, [10, 10, 8])
    for rank in range(2):  # 28 samples, 2 ranks, batches of 7: nothing dropped
        loaders = _both(
            shards, split="train", batch_size=7, rank=rank, world_size=2, auto_augment=None
        )
        for epoch in range(2):
            got = {b: _labels(loader, epoch) for b, loader in loaders.items()}
            assert [len(b) for b in got["dali"]] == [7, 7] == [len(b) for b in got["wds"]]
            assert collections.Counter(sum(got["dali"], [])) == collections.Counter(
                sum(got["wds"], [])
            )


def test_dali_training_batches_on_demo_digits(digits_root):
    loader = create_loader(LoaderConfig(
        backend="dali", split="train", shards=digits_root, batch_size=16, image_size=16,
        num_workers=2, channels_last=True,
    ))  # fmt: skip
    assert len(loader) == 1437 // 16 and loader.num_classes == 10
    batches = iter(loader)
    for _ in range(3):
        images, labels = next(batches)
        assert images.shape == (16, 3, 16, 16) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
        assert -2.2 < images.min() and images.max() < 2.7  # normalised


def test_dali_evaluation_pixels_match_wds(digits_root):
    loaders = _both(digits_root, split="val", batch_size=40, image_size=16, num_workers=1)
    (wds_x, wds_y), (dali_x, dali_y) = (next(iter(loaders[b])) for b in ("wds", "dali"))
    assert torch.equal(wds_y, dali_y)
    assert (wds_x - dali_x).abs().mean() < 0.05  # decoder and resize filters differ slightly


def _dali(shards, **kw):
    args = dict(backend="dali", shards=shards, image_size=16, num_workers=1, auto_augment=None)
    return create_loader(LoaderConfig(**args, **kw))


def test_corrupt_image_recovery_is_exact_in_training(tmp_path, caplog):
    """Each rank reads what it reads from undamaged shards, in the same order, except that
    the next sample of the bad one's shard (16) stands in for it, keeping batches full."""
    clean = write_tar_shards(tmp_path / "clean", [10, 10, 8])
    damaged = write_tar_shards(tmp_path / "damaged", [10, 10, 8], corrupt={15})
    read_15 = 0
    for rank in range(2):  # 14 samples per rank, batches of 2: nothing dropped
        args = dict(split="train", batch_size=2, rank=rank, world_size=2)
        reference, loader = _dali(clean, **args), _dali(damaged, **args)
        for epoch in range(2):
            expected = _labels(reference, epoch)
            with caplog.at_level(logging.WARNING):
                got = _labels(loader, epoch)
            assert [len(b) for b in got] == [2] * 7
            assert sum(got, []) == [16 if label == 15 else label for label in sum(expected, [])]
            read_15 += 15 in sum(expected, [])
        assert loader.num_skipped == sum(15 in sum(_labels(reference, e), []) for e in range(2))
    assert read_15 == 2  # one rank per epoch owns it
    assert caplog.text.count("Skipped bad sample 's1_00015'") == 2
    assert "shard-1.tar" in caplog.text and "stand-in: 's1_00016'" in caplog.text


def test_corrupt_image_recovery_is_exact_in_evaluation(tmp_path, caplog):
    """A failure in the middle of the epoch: the batches handed out are not handed out again,
    every other sample comes once, in order, and the bad one's batch is one short."""
    damaged = write_tar_shards(tmp_path, [10, 10, 8], corrupt={15})
    loader = _dali(damaged, split="val", batch_size=2)
    with caplog.at_level(logging.WARNING):
        batches = _labels(loader)
    assert [len(b) for b in batches] == [2] * 7 + [1] + [2] * 6
    assert sum(batches, []) == [n for n in range(28) if n != 15]
    replays = [int(m) for m in re.findall(r"after (\d+) batches", caplog.text)]
    assert len(replays) == 1 and replays[0] > 0  # handed-out batches were replayed
    assert loader.num_skipped == 1 and "s1_00015" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # later epochs read the stand-in without failing
        assert sum(_labels(loader, epoch=1), []) == [n for n in range(28) if n != 15]
    assert "DALI failed" not in caplog.text and loader.num_skipped == 2


def test_invalid_label_dropped_and_counted(tmp_path, caplog):
    shards = write_tar_shards(tmp_path, [10, 10, 8], bad_label={15})
    loader = create_loader(
        LoaderConfig(
            backend="dali", split="val", shards=shards, batch_size=7, image_size=16, num_workers=1
        )
    )
    with caplog.at_level(logging.WARNING):
        batches = _labels(loader)
    assert [len(b) for b in batches] == [7, 7, 6, 7] and loader.num_skipped == 1
    assert sorted(sum(batches, [])) == sorted(set(range(28)) - {15})
    assert "shard-1.tar" in caplog.text and "s1_00015.cls" in caplog.text


def test_corrupt_image_fatal_with_strict(tmp_path):
    shards = write_tar_shards(tmp_path, [10, 10, 8], corrupt={3})
    loader = create_loader(LoaderConfig(
        backend="dali", split="val", shards=shards, batch_size=7, image_size=16,
        num_workers=1, strict=True,
    ))  # fmt: skip
    with pytest.raises(BadSampleError, match="strict"):
        _labels(loader)


def test_dali_never_unpickles_shard_content(tmp_path):
    marker = tmp_path / "executed"
    shards = write_tar_shards(tmp_path / "s", [10, 10, 7], pickle_marker=marker)
    loader = create_loader(
        LoaderConfig(backend="dali", split="val", shards=shards, batch_size=8, image_size=16)
    )
    assert sorted(sum(_labels(loader), [])) == list(range(27)) and not marker.exists()


def test_dali_rejects_what_it_cannot_follow(tmp_path):
    shards = write_tar_shards(tmp_path, [10])
    with pytest.raises(ValueError, match="augmix"):
        create_loader(
            LoaderConfig(
                backend="dali", split="train", shards=shards, batch_size=2, auto_augment="augmix-m5"
            )
        )
    with pytest.raises(ValueError, match="mmax"):
        parse_rand_augment("rand-m9-mmax12")


@requires_cuda
def test_mixed_gpu_decoding(digits_root):
    loader = create_loader(LoaderConfig(
        backend="dali", split="train", shards=digits_root, batch_size=16, image_size=16,
        num_workers=2, device="cuda",
    ))  # fmt: skip
    images, labels = next(iter(loader))
    assert images.is_cuda and labels.is_cuda and images.shape == (16, 3, 16, 16)


def test_parse_rand_augment_and_magnitude_noise():
    spec = parse_rand_augment("rand-m7-mstd0.5-inc1")
    assert (spec.magnitude, spec.num_layers, spec.magnitude_std, spec.prob, spec.increasing) == (
        7, 2, 0.5, 0.5, True,
    )  # fmt: skip
    probs = magnitude_bin_probs(spec)
    assert len(probs) == 11 and abs(probs.sum() - 1) < 1e-9
    assert abs((probs * np.arange(11)).sum() - 7) < 1e-6 and 0.6 < probs[7] < 0.7
    rng = random.Random(0)  # timm's own draw, rounded to bins, has the same distribution
    draws = np.bincount(
        [round(max(0.0, min(10.0, rng.gauss(7, 0.5)))) for _ in range(20000)], minlength=11
    )
    assert np.abs(draws / 20000 - probs).max() < 0.01
    assert magnitude_bin_probs(parse_rand_augment("rand-m9"))[9] == 1.0


@pytest.mark.parametrize("increasing", [True, False])
def test_dali_ops_match_timm_ops(increasing):
    """Each op at magnitude 7 against timm's PIL op on a real photo (positive sign)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug.core import signed_bin
    from PIL import Image
    from timm.data import auto_augment as aa

    from adaact_dist.data.photos import load_photos

    image = np.ascontiguousarray(load_photos()[1][:48, :64])
    fill = (124, 116, 104)
    suite = timm_suite(increasing=increasing)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def every_op():
        data = fn.cast(types.Constant(image, layout="HWC"), dtype=types.UINT8)
        positive = fn.random.uniform(values=[0], dtype=types.INT32)
        magnitude = signed_bin(7, random_sign=positive)
        return tuple(
            op(data, magnitude_bin=magnitude, num_magnitude_bins=11, shape=(48, 64), fill_rgb=fill)
            for op in suite
        )

    pipe = every_op()
    pipe.build()
    outputs = pipe.run()
    names = aa._RAND_INCREASING_TRANSFORMS if increasing else aa._RAND_TRANSFORMS
    assert [op.name for op in suite] == names
    hparams = dict(img_mean=fill, interpolation=Image.BILINEAR)
    # Mean absolute difference allowed per op, in grey levels (measured: <= 0.6, Equalize 2.1).
    tolerance = collections.defaultdict(lambda: 1.0, Equalize=3.0)
    for name, out in zip(names, outputs):
        level_fn = aa.LEVEL_TO_ARG[name]
        with mock.patch.object(aa.random, "random", return_value=0.0):  # no random negation
            args = level_fn(7, hparams) if level_fn is not None else ()
        reference = aa.NAME_TO_OP[name](
            Image.fromarray(image), *args, fillcolor=fill, resample=Image.BILINEAR
        )
        diff = np.abs(np.asarray(out[0]).astype(int) - np.asarray(reference).astype(int))
        assert diff.mean() <= tolerance[name], f"{name}{args}: mean diff {diff.mean():.2f}"
        if name in ("Invert", "Posterize", "PosterizeIncreasing", "SolarizeAdd"):
            assert diff.max() == 0, name
