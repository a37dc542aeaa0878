"""The data set's ``_info.json``: the split index timm's ``wds/`` reader needs at the root.

timm's ``ReaderWds`` (``timm.data.create_dataset("wds/imagenet", root=..., split=...)``, used by
``train.py --dataset wds/imagenet``) opens no manifest and counts no tar: it finds split ``s`` in
``<root>/_info.json`` and fails with ``split s not found in info`` without it::

    {"splits": {"train": {"name": "train", "num_samples": 1281167,
                          "filenames": ["train/train-000000.tar", ...],
                          "shard_lengths": [1000, ...]}}}

``filenames`` are relative to the root, as timm joins them to it (so the tree can move), and
``num_samples`` sizes timm's epoch. timm's default keys (image ``jpg;png;webp``, label ``cls``)
are the shards' members, so no ``input_key``/``target_key`` is needed. timm reads no class count
here: ``train.py`` takes the model's (1,000) unless ``--num-classes`` is given.

Each entry is copied from its split's manifest after the manifest is written, so re-running the
writer repairs an interrupted update; other splits and keys in the file are kept. A lock file
serialises writers of different splits into the same root.
"""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path
from typing import Any

from adaact_dist._files import atomic_write_text
from adaact_dist.data.manifest import Manifest

__all__ = ["INFO_NAME", "split_info", "write_split_info", "remove_split_info"]

log = logging.getLogger(__name__)

INFO_NAME = "_info.json"
_LOCK_NAME = ".info.lock"


def split_info(manifest: Manifest, root: Path) -> dict[str, Any]:
    """timm's ``SplitInfo`` fields for ``manifest``'s split, shard paths relative to ``root``."""
    if manifest.directory is None:
        raise RuntimeError("Manifest has no directory: it was not read from disk")
    directory = manifest.directory.relative_to(Path(root).resolve())
    return {
        "name": manifest.split,
        "num_samples": manifest.total,
        "filenames": [(directory / s.name).as_posix() for s in manifest.shards],
        "shard_lengths": manifest.counts,
    }


def write_split_info(root: str | Path, manifest: Manifest) -> Path:
    """Set ``manifest``'s split in ``<root>/_info.json`` (replacing an older entry)."""
    if "tar" in manifest.split:
        log.warning(
            "timm reads a split name containing 'tar' as a shard pattern: split %r will not be "
            "found by name in %s",
            manifest.split,
            INFO_NAME,
        )
    return _set_split(Path(root), manifest.split, split_info(manifest, Path(root)))


def remove_split_info(root: str | Path, split: str) -> Path:
    """Drop ``split`` from ``<root>/_info.json`` before its shards are deleted."""
    return _set_split(Path(root), split, None)


def _set_split(root: Path, split: str, entry: dict[str, Any] | None) -> Path:
    """Read, edit and atomically replace the file under the root's lock; ``None`` removes."""
    path = root / INFO_NAME
    with open(root / _LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another split may be written into the same root
        info = _read_info(path)
        splits = info.setdefault("splits", {})
        if entry is None:
            if splits.pop(split, None) is None:
                return path
        else:
            splits[split] = entry
        atomic_write_text(path, json.dumps(info, indent=1) + "\n")
    return path


def _read_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"Invalid {path}: {e}; remove it and re-run the writer for each split to rebuild it"
        ) from e
    if not isinstance(info, dict) or not isinstance(info.get("splits", {}), dict):
        raise ValueError(
            f"Invalid {path}: expected an object with 'splits' mapping split names to entries; "
            "remove it and re-run the writer for each split to rebuild it"
        )
    return info
