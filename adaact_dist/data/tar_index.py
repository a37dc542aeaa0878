"""DALI index files for webdataset shards: write, read, or rebuild by scanning a tar.

The format is the one NVIDIA's ``wds2idx`` writes (index version ``v1.2``)::

    v1.2 <num_samples>
    <ext> <data_offset> <size> <member_name> [<ext> <data_offset> <size> <member_name> ...]

one line per sample, components in tar order. DALI's ``fn.readers.webdataset`` needs it to start
without scanning every tar, and the webdataset loader here uses the same offsets to seek to the
first sample of its range instead of reading through the shard.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "INDEX_VERSION",
    "IMAGE_EXTS",
    "LABEL_EXT",
    "IndexEntry",
    "index_path_for",
    "find_index",
    "format_index",
    "iter_index",
    "scan_tar",
]

INDEX_VERSION = "v1.2"
IMAGE_EXTS = ("jpg", "jpeg")
"""Member extensions read as the image (DALI ext set ``"jpg;jpeg"``)."""
LABEL_EXT = "cls"
"""Member extension of the label: the class index as ASCII decimal text."""


@dataclass(frozen=True)
class IndexEntry:
    """One sample of a shard: its key and ``ext -> (data_offset, size)`` for each member."""

    key: str
    members: dict[str, tuple[int, int]]

    @property
    def image(self) -> tuple[int, int] | None:
        for ext in IMAGE_EXTS:
            if ext in self.members:
                return self.members[ext]
        return None

    @property
    def label(self) -> tuple[int, int] | None:
        return self.members.get(LABEL_EXT)

    @property
    def end(self) -> int:
        """Byte just after this sample's last member's data."""
        return max(off + size for off, size in self.members.values())


def index_path_for(tar_path: str | Path) -> Path:
    """Where the index of ``tar_path`` lives: same name, ``.idx`` instead of ``.tar``."""
    return Path(tar_path).with_suffix(".idx")


def find_index(tar_path: str | Path) -> Path | None:
    """The index file of a shard, if present (also ``wds2idx``'s default name for dotted names)."""
    tar_path = Path(tar_path)
    candidates = [index_path_for(tar_path)]
    name = tar_path.name
    dot = name.find(".", 1)
    if dot > 0:
        candidates.append(tar_path.with_name(name[:dot] + ".idx"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/key.ext.more"`` -> ``("dir/key", "ext.more")``: the first dot of the base name
    splits key from extension, as in webdataset and DALI."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def format_index(entries: Iterable[IndexEntry]) -> str:
    """Index file text for ``entries`` (same bytes as ``wds2idx`` produces for the tar)."""
    entries = list(entries)
    lines = [f"{INDEX_VERSION} {len(entries)}"]
    for entry in entries:
        parts = []
        for ext, (offset, size) in entry.members.items():
            parts.append(f"{ext} {offset} {size} {entry.key}.{ext}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def iter_index(path: str | Path) -> Iterator[IndexEntry]:
    """Parse an index file lazily (ImageNet's 1,024 train indices hold 1.28 M lines)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        header = f.readline().split()
        if len(header) != 2 or not header[1].isdigit():
            raise ValueError(f"Invalid index file {path}: first line must be '<version> <count>'")
        version, count = header[0], int(header[1])
        width = 4 if version == INDEX_VERSION else 3
        n = 0
        for line_no, line in enumerate(f, start=2):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) % width:
                raise ValueError(f"Invalid index file {path}, line {line_no}: {line.strip()!r}")
            members: dict[str, tuple[int, int]] = {}
            key = f"#{n}"
            for i in range(0, len(tokens), width):
                ext, offset, size = tokens[i], int(tokens[i + 1]), int(tokens[i + 2])
                members[ext] = (offset, size)
                if width == 4:
                    key = split_member_name(tokens[i + 3])[0]
            yield IndexEntry(key, members)
            n += 1
        if n != count:
            raise ValueError(f"Invalid index file {path}: header says {count} samples, has {n}")


def scan_tar(path: str | Path) -> list[IndexEntry]:
    """Build the index of a tar by reading its headers (seeks over the data).

    Consecutive members sharing a key form one sample, as in webdataset and ``wds2idx``; hidden
    files and non-regular members are ignored.
    """
    entries: list[IndexEntry] = []
    last_key = None
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, ext = split_member_name(member.name)
            if not key or key.endswith("/") or key.rsplit("/", 1)[-1].startswith("."):
                continue
            if key != last_key:
                entries.append(IndexEntry(key, {}))
                last_key = key
            entries[-1].members[ext] = (member.offset_data, member.size)
    return entries
