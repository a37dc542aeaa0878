"""Resolve a loader's ``shards`` argument into checked shard files and their sample counts.

Every rank does this at start, so that a missing or unreadable shard is a clear error naming the
path before any worker starts, and so that all ranks agree on the global sample sequence that
:mod:`adaact_dist.data.partition` splits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adaact_dist.data.images import BadSampleError
from adaact_dist.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from adaact_dist.data.tar_index import IndexEntry, find_index, iter_index, scan_tar

__all__ = ["Shard", "ShardSet", "resolve_shards", "load_index"]

log = logging.getLogger(__name__)

ShardsArg = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class Shard:
    """One tar shard: its path, its index file (``None``: scanned in memory) and the keys of
    samples left out because a member is missing."""

    path: Path
    index_path: Path | None
    count: int
    """Usable samples (with both an image and a label member)."""
    incomplete: tuple[str, ...] = ()

    def entries(self) -> list[IndexEntry]:
        """The samples every backend reads, in stored order: those with both an image and a
        label member (the others are in :attr:`incomplete`)."""
        entries = load_index(self.path, self.index_path)
        return [e for e in entries if e.image is not None and e.label is not None]


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, in their canonical order."""

    shards: list[Shard]
    num_classes: int | None
    manifest: Manifest | None = None
    incomplete: list[tuple[str, str]] = field(default_factory=list)
    """``(shard path, key)`` of samples without an image or a label, left out at start."""

    @property
    def counts(self) -> list[int]:
        return [s.count for s in self.shards]

    @property
    def total(self) -> int:
        return sum(self.counts)


def load_index(shard: Path | str, index_path: Path | None) -> list[IndexEntry]:
    """All index entries of a shard, from its index file or by scanning the tar."""
    if index_path is not None:
        return list(iter_index(index_path))
    return scan_tar(shard)


def _index_count(index_path: Path) -> int:
    """Sample count from an index file's header line."""
    with open(index_path, encoding="utf-8") as f:
        header = f.readline().split()
    if len(header) != 2 or not header[1].isdigit():
        raise ValueError(f"Invalid index file {index_path}: first line must be '<version> <count>'")
    return int(header[1])


def _find_manifest(path: Path, split: str) -> Path | None:
    for candidate in (path, path / split):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return None


def _expand(shards: ShardsArg) -> list[Path]:
    if isinstance(shards, str | os.PathLike):
        from webdataset.shardlists import expand_urls  # braces and "::" lists, as webdataset

        return [Path(p) for p in expand_urls(os.fspath(shards))]
    return [Path(os.fspath(p)) for p in shards]


def _check_readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Missing {what}: {path}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"Unreadable {what}: {path}")


def resolve_shards(shards: ShardsArg, *, split: str, strict: bool = False) -> ShardSet:
    """Find, check and count the shards of a split.

    Args:
        shards: A data set root holding ``<split>/manifest.json``, a split directory holding
            ``manifest.json``, a manifest file, a brace pattern
            (``/data/train-{000000..001023}.tar``) or a list of tar paths.
        split: Split name, used to find ``<root>/<split>/manifest.json``.
        strict: Raise on a sample without image or label instead of leaving it out.

    Raises:
        FileNotFoundError / PermissionError: a shard or index file is missing or unreadable.
        ValueError: no shards, or an index that does not fit its tar.
        BadSampleError: ``strict`` and a sample lacks its image or label.
    """
    manifest, paths, index_paths = _locate(shards, split)
    _check_files(paths, index_paths)
    if manifest is not None:
        return _counted_by_manifest(manifest, paths, index_paths)
    return _counted_by_index(paths, index_paths, strict=strict)


def _locate(shards: ShardsArg, split: str) -> tuple[Manifest | None, list[Path], list[Path | None]]:
    """The manifest (when ``shards`` names one), the tar paths and their index paths
    (``None``: no index file next to the tar)."""
    manifest = None
    if isinstance(shards, str | os.PathLike) and Path(shards).exists():
        path = Path(shards)
        directory = _find_manifest(path, split) if path.is_dir() else path
        if directory is None:
            raise FileNotFoundError(
                f"No {MANIFEST_NAME} in {path} or {path / split}: pass a shard manifest's "
                "directory, or the shard files themselves"
            )
        manifest = read_manifest(directory)
        paths = manifest.shard_paths
        index_paths: list[Path | None] = list(manifest.index_paths)
    else:
        paths = _expand(shards)
        index_paths = [find_index(p) if p.is_file() else None for p in paths]
    if not paths:
        raise ValueError(f"Invalid shards={shards!r}: no shard files")
    return manifest, paths, index_paths


def _check_files(paths: list[Path], index_paths: list[Path | None]) -> None:
    """Fail now, naming the path, on a missing or unreadable file: not later in a worker.
    Shards without an index are only slow to start, so they get a warning."""
    for p, idx in zip(paths, index_paths):
        _check_readable(p, "shard")
        if idx is not None:
            _check_readable(idx, "index file")
    missing_index = [p for p, idx in zip(paths, index_paths) if idx is None]
    if missing_index:
        log.warning(
            "%d shard(s) without a .idx index (first: %s); scanning them at start. Write "
            "indices with wds2idx or adaact-make-shards to start faster.",
            len(missing_index),
            missing_index[0],
        )


def _counted_by_manifest(
    manifest: Manifest, paths: list[Path], index_paths: list[Path | None]
) -> ShardSet:
    """Shards written by adaact-make-shards never hold incomplete samples: check sizes and
    index headers against the manifest (cheap) instead of parsing 1.28 M index lines."""
    result = []
    for info, path, idx in zip(manifest.shards, paths, index_paths):
        size = path.stat().st_size
        if size != info.bytes:
            raise ValueError(
                f"Shard {path} has {size} bytes, its manifest says {info.bytes}: damaged or "
                "replaced (check with adaact-make-shards --verify)"
            )
        count = _index_count(idx)
        if count != info.samples:
            raise ValueError(
                f"Index {idx} lists {count} samples, the manifest {info.samples}: stale index"
            )
        result.append(Shard(path, idx, count))
    return ShardSet(result, manifest.num_classes, manifest, [])


def _counted_by_index(
    paths: list[Path], index_paths: list[Path | None], *, strict: bool
) -> ShardSet:
    """Shards from elsewhere: read every index (or scan the tar) to count the usable samples,
    leaving out (or, with ``strict``, refusing) those without an image or a label."""
    result, incomplete = [], []
    for path, idx in zip(paths, index_paths):
        entries = load_index(path, idx)
        size = path.stat().st_size
        if entries and max(e.end for e in entries) > size:
            raise ValueError(f"Index {idx} does not fit shard {path} ({size} bytes): stale index?")
        bad = [e.key for e in entries if e.image is None or e.label is None]
        for key in bad:
            message = f"{path}: sample {key!r} has no image or no label member"
            if strict:
                raise BadSampleError(message)
            log.warning("%s; left out", message)
            incomplete.append((str(path), key))
        result.append(Shard(path, idx, len(entries) - len(bad), tuple(bad)))
    return ShardSet(result, None, None, incomplete)
