"""Embedded demo data (sklearn digits) and the photo throughput set."""

from __future__ import annotations

import multiprocessing

import pytest
from PIL import Image

from adaact_dist.data import ensure_digits_shards, make_photo_set, read_manifest, shard_writer


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
