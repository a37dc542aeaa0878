"""``_info.json``: timm's own ``wds/`` reader finds and reads every split the writer wrote."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from adaact_dist.data import read_manifest, shard_writer, write_shards
from adaact_dist.data.timm_info import INFO_NAME
from tests.data.conftest import jpeg_bytes

timm_data = pytest.importorskip("timm.data", reason="timm is not installed")

CLASSES = ["ant", "bee", "cat"]
Sample = tuple[tuple[int, int], int]  # image (width, height), label


def _image_folder(src: Path, per_class: int, height: int) -> Counter[Sample]:
    """An ImageFolder tree whose images all differ in width, so a decoded image names itself."""
    written: Counter[Sample] = Counter()
    for label, name in enumerate(CLASSES):
        (src / name).mkdir(parents=True)
        for i in range(per_class):
            size = (16 + per_class * label + i, height)
            (src / name / f"{name}_{i}.jpg").write_bytes(jpeg_bytes(i, size=size))
            written[size, label] += 1
    return written


def _info(root: Path) -> dict:
    return json.loads((root / INFO_NAME).read_text())


def _expected_entry(root: Path, split: str) -> dict:
    manifest = read_manifest(root / split)
    return {
        "name": split,
        "num_samples": manifest.total,
        "filenames": [f"{split}/{s.name}" for s in manifest.shards],
        "shard_lengths": manifest.counts,
    }


def _read_with_timm(root: Path, split: str, **kwargs) -> list[Sample]:
    """One process, no DataLoader: timm's reader gives this process every shard of the split."""
    dataset = timm_data.create_dataset("wds/imagenet", root=str(root), split=split, **kwargs)
    return [(image.size, target) for image, target in dataset]


@pytest.fixture
def splits(tmp_path) -> dict[str, Counter[Sample]]:
    """Images of a train split (15, 4 shards) and a val split (6, 2 shards) under ``root``."""
    return {
        "train": _image_folder(tmp_path / "src" / "train", per_class=5, height=12),
        "val": _image_folder(tmp_path / "src" / "val", per_class=2, height=13),
    }


def test_timm_reads_every_split_exactly_once(splits, tmp_path):
    root, src = tmp_path / "out", tmp_path / "src"
    write_shards(src / "train", root, split="train", shard_size=4)
    assert _info(root) == {"splits": {"train": _expected_entry(root, "train")}}
    write_shards(src / "val", root, split="val", shard_size=4)
    info = _info(root)
    assert info == {"splits": {s: _expected_entry(root, s) for s in ("train", "val")}}
    assert [len(info["splits"][s]["filenames"]) for s in ("train", "val")] == [4, 2]

    for split, written in splits.items():
        assert Counter(_read_with_timm(root, split)) == written, f"{split}: each image once"
    # As train.py reads its train split: shuffled, epoch length from num_samples.
    trained = _read_with_timm(root, "train", is_training=True, batch_size=4)
    assert len(trained) >= 15 and set(trained) == set(splits["train"])


def test_overwrite_drops_then_replaces_only_its_split(splits, tmp_path, monkeypatch):
    root, src = tmp_path / "out", tmp_path / "src"
    write_shards(src / "train", root, split="train", shard_size=4)
    write_shards(src / "val", root, split="val", shard_size=4)
    info = _info(root)
    info["name"] = "imagenet-subset"  # a key added by hand survives updates
    (root / INFO_NAME).write_text(json.dumps(info))
    val_entry = info["splits"]["val"]

    def dies(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shard_writer, "write_one_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        write_shards(src / "train", root, split="train", shard_size=5, overwrite=True)
    # The old train shards are gone, so timm must not be told about them.
    assert _info(root) == {"splits": {"val": val_entry}, "name": "imagenet-subset"}

    monkeypatch.undo()
    write_shards(src / "train", root, split="train", shard_size=5, overwrite=True)
    info = _info(root)
    assert info["splits"] == {"train": _expected_entry(root, "train"), "val": val_entry}
    assert info["splits"]["train"]["shard_lengths"] == [5, 5, 5]
    assert info["name"] == "imagenet-subset"
    assert Counter(_read_with_timm(root, "train")) == splits["train"]


def test_damaged_info_is_reported_and_kept(splits, tmp_path):
    root, src = tmp_path / "out", tmp_path / "src"
    root.mkdir()
    (root / INFO_NAME).write_text('{"splits": ')
    with pytest.raises(ValueError, match=f"Invalid .*{INFO_NAME}.*remove it"):
        write_shards(src / "val", root, split="val", shard_size=4)
    assert (root / INFO_NAME).read_text() == '{"splits": '
    assert read_manifest(root / "val").total == 6, "the shards written are kept"
