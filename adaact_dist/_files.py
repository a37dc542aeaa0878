"""Crash-safe file writes: a file under its final name is always complete.

Everything is written to a temporary name in the same directory, flushed to disk, then renamed;
``os.replace`` is atomic on POSIX file systems, so an interrupted run leaves only temporary files,
which the next run removes.
"""

from __future__ import annotations

import os
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under until it is complete."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(partial: Path, final: Path) -> None:
    """Rename a fully written temporary file to its final name."""
    os.replace(partial, final)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = partial_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    commit(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))
