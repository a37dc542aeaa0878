"""Shard writer: round trip, shuffle, manifest, idempotent and interrupted runs, bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from adaact_dist.data import read_manifest, shard_writer, verify_shards, write_shards
from adaact_dist.data.shard_writer import main
from adaact_dist.data.tar_index import iter_index
from tests.data.conftest import jpeg_bytes

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["ant", "bee", "cat"]


@pytest.fixture
def tree(tmp_path) -> Path:
    """ImageFolder tree: 3 classes of plain JPEGs, plus a PNG, a CMYK JPEG, a greyscale JPEG,
    a corrupt file and a dangling link."""
    src = tmp_path / "src"
    for c, name in enumerate(CLASSES):
        (src / name).mkdir(parents=True)
        for i in range(6):
            (src / name / f"{name}_{i}.jpg").write_bytes(jpeg_bytes(40 * c + i))
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(src / "ant" / "drawing.png")
    (src / "bee" / "print.jpeg").write_bytes(jpeg_bytes(90, mode="CMYK"))
    (src / "cat" / "grey.JPEG").write_bytes(jpeg_bytes(70, mode="L"))
    (src / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    (src / "bee" / "gone.jpg").symlink_to(src / "nowhere.jpg")
    return src


def _samples(tar: Path) -> list[dict]:
    """Samples as webdataset itself reads them (raw bytes, no decoding)."""
    return list(webdataset.WebDataset(str(tar), shardshuffle=False))


def test_round_trip(tree, tmp_path):
    manifest = write_shards(tree, tmp_path / "out", split="train", shard_size=4, seed=3)
    out = tmp_path / "out" / "train"
    assert manifest == read_manifest(out)
    assert manifest.classes == CLASSES and manifest.num_classes == 3
    # 18 plain + PNG + CMYK + grey are usable; the corrupt file and the dangling link are not.
    assert manifest.total == 21
    assert manifest.class_counts == [7, 7, 7]
    assert manifest.converted == 2
    skipped = {s["path"]: s["reason"] for s in manifest.skipped}
    assert set(skipped) == {"cat/broken.jpg", "bee/gone.jpg"}
    assert skipped["bee/gone.jpg"].startswith("unreadable")
    assert skipped["cat/broken.jpg"].startswith("undecodable")
    assert manifest.command == ""

    seen = {}
    for info, tar, idx in zip(manifest.shards, manifest.shard_paths, manifest.index_paths):
        data = tar.read_bytes()
        assert len(data) == info.bytes and hashlib.sha256(data).hexdigest() == info.sha256
        samples = _samples(tar)
        assert len(samples) == info.samples == len(list(iter_index(idx)))
        for sample in samples:
            assert set(sample) == {"__key__", "__url__", "__local_path__", "jpg", "cls"}
            seen[sample["__key__"]] = (sample["jpg"], int(sample["cls"].decode("ascii")))
    assert len(seen) == 21
    for key, (payload, label) in seen.items():
        folder = key.split("/")[0]
        assert label == CLASSES.index(folder)
        assert Image.open(io.BytesIO(payload)).format == "JPEG"
        source = next((tree / folder).glob(key.split("/")[1] + ".*"))
        if source.suffix == ".jpg" or source.name == "grey.JPEG":
            assert payload == source.read_bytes(), "JPEG bytes must be copied untouched"
        else:  # PNG and CMYK: converted to RGB JPEG
            assert Image.open(io.BytesIO(payload)).mode == "RGB"
            assert payload != source.read_bytes()

    keys = [s["__key__"] for tar in manifest.shard_paths for s in _samples(tar)]
    assert keys != sorted(keys), "global order must be shuffled"
    other = write_shards(tree, tmp_path / "other", split="train", shard_size=4, seed=4)
    other_keys = [s["__key__"] for tar in other.shard_paths for s in _samples(tar)]
    assert sorted(other_keys) == sorted(keys) and other_keys != keys


def test_index_matches_dali_wds2idx(tree, tmp_path):
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx tool is not installed")
    manifest = write_shards(tree, tmp_path / "out", split="train", shard_size=8)
    for tar, idx in zip(manifest.shard_paths, manifest.index_paths):
        reference = tmp_path / "reference.idx"
        with wds2idx.IndexCreator(str(tar), str(reference), verbose=False) as creator:
            creator.create_index()
        assert idx.read_text() == reference.read_text()


def test_rerun_is_idempotent(tree, tmp_path):
    first = write_shards(tree, tmp_path / "out", split="train", shard_size=4)
    stats = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.shard_paths}
    again = write_shards(tree, tmp_path / "out", split="train", shard_size=4)
    assert again == first
    assert stats == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in again.shard_paths}


def test_interrupted_run_is_completed(tree, tmp_path, monkeypatch):
    reference = write_shards(tree, tmp_path / "reference", split="train", shard_size=3)
    real, written = shard_writer.write_one_shard, []

    def dies_after_three(src, out_dir, plan, quality):
        if len(written) == 3:
            (out_dir / f"{plan.name}.tar.partial").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        written.append(plan.name)
        return real(src, out_dir, plan, quality)

    monkeypatch.setattr(shard_writer, "write_one_shard", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        write_shards(tree, tmp_path / "out", split="train", shard_size=3)
    out = tmp_path / "out" / "train"
    assert not (out / "manifest.json").exists()
    # A tar under a final name without its progress record is not trusted.
    (out / "train-000005.tar").write_bytes(b"stale")
    kept = {n: (out / f"{n}.tar").stat().st_ino for n in written}
    monkeypatch.setattr(shard_writer, "write_one_shard", real)
    manifest = write_shards(tree, tmp_path / "out", split="train", shard_size=3)
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in reference.shards]
    assert kept == {n: (out / f"{n}.tar").stat().st_ino for n in written}
    assert not list(out.glob("*.partial"))
    assert verify_shards(out) == []


def test_other_plan_refused_unless_overwrite(tree, tmp_path):
    write_shards(tree, tmp_path / "out", split="train", shard_size=4)
    with pytest.raises(ValueError, match="different plan"):
        write_shards(tree, tmp_path / "out", split="train", shard_size=5)
    manifest = write_shards(tree, tmp_path / "out", split="train", shard_size=5, overwrite=True)
    assert manifest.shard_size == 5 and len(manifest.shards) == 5 and manifest.total == 21
    assert sorted(p.name for p in (tmp_path / "out" / "train").glob("*.tar")) == [
        s.name for s in manifest.shards
    ]


def test_ilsvrc_val_layout(tmp_path):
    train = tmp_path / "train"
    for name in ("n01440764", "n01443537"):
        (train / name).mkdir(parents=True)
        (train / name / f"{name}_1.JPEG").write_bytes(jpeg_bytes(1))
    train_manifest = write_shards(train, tmp_path / "out", split="train")
    val = tmp_path / "val"
    val.mkdir()
    solution = ["ImageId,PredictionString"]
    for i, synset in enumerate(["n01443537", "n01440764", "n01443537"], start=1):
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(jpeg_bytes(i))
        solution.append(f"ILSVRC2012_val_{i:08d},{synset} 1 2 3 4 {synset} 5 6 7 8")
    (val / "ILSVRC2012_val_00000009.JPEG").write_bytes(jpeg_bytes(9))  # no label
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("\n".join(solution + ["ILSVRC2012_val_00000004,n01440764 1 2 3 4"]))
    manifest = write_shards(
        val,
        tmp_path / "out",
        split="val",
        labels=labels,
        classes=train_manifest.directory / "manifest.json",
    )
    assert manifest.classes == train_manifest.classes
    assert manifest.layout == "flat" and manifest.total == 3 and manifest.class_counts == [1, 2]
    reasons = sorted(s["reason"] for s in manifest.skipped)
    assert reasons[0].startswith("listed in") and reasons[1].startswith("no label")
    labelled = {s["__key__"]: int(s["cls"]) for t in manifest.shard_paths for s in _samples(t)}
    assert labelled == {
        "ILSVRC2012_val_00000001": 1,
        "ILSVRC2012_val_00000002": 0,
        "ILSVRC2012_val_00000003": 1,
    }
    # Caffe-style "<file> <index>" lines work too, given the class names.
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 0\n")
    numeric = write_shards(
        val,
        tmp_path / "out2",
        split="val",
        labels=tmp_path / "val.txt",
        classes=train_manifest.directory / "manifest.json",
    )
    assert numeric.total == 1


def test_cli_records_command_and_verify_finds_damage(tree, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--src", str(tree), "--out", str(out), "--split", "val", "--shard-size", "5"]
    assert main([*argv, "--workers", "2"]) == 0
    manifest = read_manifest(out / "val")
    assert manifest.command.startswith("adaact-make-shards --src ")
    assert json.loads((out / "val" / "manifest.json").read_text())["total"] == 21
    assert main(["--out", str(out), "--split", "val", "--verify"]) == 0
    damaged = manifest.shard_paths[1]
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["--out", str(out), "--split", "val", "--verify"]) == 1
    assert str(damaged) in capsys.readouterr().err
    assert main(["--src", str(tmp_path / "missing"), "--out", str(out), "--split", "x"]) == 2
    assert main(["--src", str(tree), "--out", str(out), "--split", "a b"]) == 2


def test_launch_wrapper_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "launch" / "make_shards.py"), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0 and "--shard-size" in result.stdout
