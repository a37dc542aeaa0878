"""Embedded demo data (sklearn digits, clean and with noisy training labels) and the photo
throughput set."""

from __future__ import annotations

import multiprocessing
import tarfile
import typing

import pytest
from PIL import Image

from adaact_dist.data import ensure_digits_shards, make_photo_set, read_manifest, shard_writer
from adaact_dist.data.demo_data import BUILTIN_TASKS, ensure_builtin_shards
from adaact_dist.train.config import DataConfig


def test_digits_shards(digits_root):
    train, val = read_manifest(digits_root / "train"), read_manifest(digits_root / "val")
    assert (train.total, val.total) == (1437, 360)  # all 1,797 images, stratified 80/20
    assert train.classes == val.classes == [str(d) for d in range(10)]
    assert min(val.class_counts) >= 35 and train.converted == 1437  # PNG in, JPEG out
    assert len(train.shards) == 6 and not train.skipped


def test_second_call_uses_the_cache(digits_root, monkeypatch):
    def must_not_write(*args, **kwargs):
        raise AssertionError("cached shards were rewritten")

    monkeypatch.setattr(shard_writer, "write_shards", must_not_write)
    assert ensure_digits_shards(digits_root.parent, image_size=16) == digits_root


def _labels(split_dir) -> dict[str, int]:
    """Sample key without its class folder (the image's identity) -> label, from the tars."""
    labels = {}
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".cls"):
                    key = member.name[: -len(".cls")].split("/", 1)[1].split("_true")[0]
                    labels[key] = int(tar.extractfile(member).read())
    return labels


def test_noisy_digits_corrupt_training_labels_only(tmp_path):
    clean = ensure_builtin_shards("digits", tmp_path, image_size=8, seed=1)
    noisy = ensure_builtin_shards("digits_noisy", tmp_path, image_size=8, seed=1)
    assert noisy != clean and "noise0.4" in noisy.name
    assert _labels(noisy / "val") == _labels(clean / "val")  # same split, true labels
    true, wrong = _labels(clean / "train"), _labels(noisy / "train")
    assert true.keys() == wrong.keys() and len(true) == 1437
    flipped = [key for key in true if wrong[key] != true[key]]
    assert len(flipped) == round(0.4 * 1437)  # exactly 40%, each moved to another class
    assert read_manifest(noisy / "train").classes == [str(d) for d in range(10)]
    assert ensure_builtin_shards("digits_noisy", tmp_path, image_size=8, seed=2) != noisy
    with pytest.raises(ValueError, match="digits_noisy"):
        ensure_builtin_shards("cifar10", tmp_path)


def test_builtin_names_match_the_config_choices():
    assert set(typing.get_args(typing.get_type_hints(DataConfig)["builtin"].__args__[0])) == set(
        BUILTIN_TASKS
    )


def _make(cache):
    return str(ensure_digits_shards(cache, image_size=8, shard_size=1000))


def test_concurrent_first_use_writes_one_copy(tmp_path):
    with multiprocessing.get_context("fork").Pool(2) as pool:
        roots = pool.map(_make, [tmp_path, tmp_path])
    assert roots[0] == roots[1]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [
        roots[0].rsplit("/", 1)[1]
    ]
    assert read_manifest(f"{roots[0]}/val").total == 360
    with pytest.raises(ValueError, match="image_size=4"):
        ensure_digits_shards(tmp_path, image_size=4)


def test_default_cache_dir(monkeypatch, tmp_path):
    from adaact_dist.data import default_cache_dir

    monkeypatch.setenv("ADAACT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_photo_set_is_imagenet_like(tmp_path):
    out = make_photo_set(tmp_path, num_images=6, num_classes=2)
    files = sorted(out.rglob("*.jpg"))
    assert len(files) == 6 and {f.parent.name for f in files} == {"c00", "c01"}
    for f in files:
        with Image.open(f) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert 300 <= max(image.size) <= 500


def test_deformed_digits_are_many_distinct_readable_copies(tmp_path):
    """``digits_deformed`` at a small size: deformed copies of each original, labels kept,
    the validation split made of other originals than training."""
    import numpy as np

    root = ensure_digits_shards(tmp_path, image_size=8, train_copies=2, val_copies=1)
    assert "deformed2x1" in root.name
    train, val = _labels(root / "train"), _labels(root / "val")
    assert (len(train), len(val)) == (2 * 1437, 360)
    originals = {key.rsplit("_c", 1)[0] for key in train}
    assert len(originals) == 1437 and not originals & {k.rsplit("_c", 1)[0] for k in val}
    pairs = {}
    for key, label in train.items():
        pairs.setdefault(key.rsplit("_c", 1)[0], set()).add(label)
    assert all(len(labels) == 1 for labels in pairs.values()), "copies keep their digit"
    with tarfile.open(sorted((root / "train").glob("*.tar"))[0]) as tar:
        images = {}
        for member in tar.getmembers():
            if member.name.endswith(".jpg"):
                key = member.name[: -len(".jpg")].split("/", 1)[1]
                images[key] = np.asarray(Image.open(tar.extractfile(member)), dtype=float)
    copies = [(k, k.replace("_c00", "_c01")) for k in images if k.endswith("_c00")]
    copies = [(a, b) for a, b in copies if b in images]
    assert copies and all(np.abs(images[a] - images[b]).mean() > 2 for a, b in copies)
    with pytest.raises(ValueError, match="train_copies"):
        ensure_digits_shards(tmp_path, image_size=8, train_copies=-1)
