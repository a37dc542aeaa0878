"""The manifest that describes one split's shards: classes, counts, checksums, provenance.

``manifest.json`` sits next to the shards. Loaders take class count and per-shard sample counts
from it, so that every rank can compute the same partition without opening a tar; the checksums
let ``adaact-make-shards --verify`` find shards damaged after they were written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adaact_dist._files import atomic_write_text

__all__ = ["MANIFEST_NAME", "FORMAT", "ShardInfo", "Manifest", "read_manifest", "write_manifest"]

MANIFEST_NAME = "manifest.json"
FORMAT = "adaact-dist-webdataset/1"


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard, by file name relative to the manifest's directory."""

    name: str
    """Tar file name, e.g. ``train-000000.tar``."""
    index: str
    """DALI index file name, e.g. ``train-000000.idx``."""
    samples: int
    """Number of samples (``.jpg`` + ``.cls`` pairs) in the shard."""
    bytes: int
    """Size of the tar in bytes."""
    sha256: str
    """Hex SHA-256 of the tar."""


@dataclass(frozen=True)
class Manifest:
    """A split's manifest; ``directory`` is where it was read from (not stored in the file)."""

    split: str
    classes: list[str]
    shards: list[ShardInfo]
    class_counts: list[int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Source files left out, each ``{"path": ..., "reason": ...}``."""
    converted: int = 0
    """Source images re-encoded as RGB JPEG (PNG, CMYK JPEG, ...)."""
    seed: int = 0
    shard_size: int = 0
    jpeg_quality: int = 95
    source: str = ""
    layout: str = ""
    command: str = ""
    format: str = FORMAT
    directory: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def counts(self) -> list[int]:
        """Samples per shard, in shard order."""
        return [s.samples for s in self.shards]

    @property
    def shard_paths(self) -> list[Path]:
        return [self._resolve(s.name) for s in self.shards]

    @property
    def index_paths(self) -> list[Path]:
        return [self._resolve(s.index) for s in self.shards]

    def _resolve(self, name: str) -> Path:
        if self.directory is None:
            raise RuntimeError("Manifest has no directory: it was not read from disk")
        return self.directory / name

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("directory")
        data["num_classes"] = self.num_classes
        data["total"] = self.total
        return json.dumps(data, indent=1) + "\n"


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically into ``directory``."""
    path = Path(directory) / MANIFEST_NAME
    atomic_write_text(path, manifest.to_json())
    return path


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest from its file or from the directory that holds ``manifest.json``.

    Returns:
        The manifest; ``num_classes``, ``counts`` (samples per shard), ``total`` and
        ``shard_paths`` / ``index_paths`` (absolute) are what loaders need.

    Raises:
        FileNotFoundError: no manifest there.
        ValueError: the file is not a manifest of this format.
    """
    path = Path(path)
    file = path / MANIFEST_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"No shard manifest at {file} (written by adaact-make-shards)")
    try:
        data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"Invalid shard manifest {file}: {e}") from e
    if data.get("format") != FORMAT:
        raise ValueError(
            f"Invalid shard manifest {file}: format={data.get('format')!r}, expected {FORMAT!r}"
        )
    data.pop("num_classes", None)
    data.pop("total", None)
    data["shards"] = [ShardInfo(**s) for s in data["shards"]]
    known = set(Manifest.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"Invalid shard manifest {file}: unknown keys {sorted(unknown)}")
    return Manifest(**data, directory=file.parent.resolve())
