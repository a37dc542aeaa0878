"""Small shard sets built in temporary directories; every test here runs on CPU in seconds."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaact_dist.data.demo_data import ensure_digits_shards
from adaact_dist.data.tar_index import IndexEntry, format_index


def jpeg_bytes(value: int, size: tuple[int, int] = (24, 20), mode: str = "RGB") -> bytes:
    """A small real JPEG whose pixels encode ``value`` (plus a gradient, so crops differ)."""
    w, h = size
    ramp = np.linspace(0, 60, w, dtype=np.float32)[None, :, None]
    pixels = np.clip(value % 190 + ramp + np.zeros((h, 1, 3), np.float32), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


class _Marker:
    """Unpickling this creates a file: proof that a loader executed shard content."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def write_tar_shards(
    directory: Path,
    counts: list[int],
    *,
    corrupt: set[int] = frozenset(),
    no_label: set[int] = frozenset(),
    bad_label: set[int] = frozenset(),
    pickle_marker: Path | None = None,
    index: bool = True,
) -> list[Path]:
    """Shards ``shard-<i>.tar`` whose sample ``n`` (counted over all shards) has label ``n``.

    Labels equal to global sample ids let tests check exact coverage across ranks and epochs.
    """
    import tarfile

    directory.mkdir(parents=True, exist_ok=True)
    paths, n = [], 0
    for s, count in enumerate(counts):
        path = directory / f"shard-{s}.tar"
        entries = []
        with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:

            def add(name: str, data: bytes, members: dict, tar=tar) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                ext = name.split(".", 1)[1]
                members[ext] = (tar.offset - -(-len(data) // 512) * 512, len(data))

            for _ in range(count):
                key, members = f"s{s}_{n:05d}", {}
                image = b"\xff\xd8\xff\xe0 not a jpeg" * 4 if n in corrupt else jpeg_bytes(n)
                add(f"{key}.jpg", image, members)
                if n not in no_label:
                    add(f"{key}.cls", b"x7" if n in bad_label else str(n).encode(), members)
                if pickle_marker is not None:
                    add(f"{key}.pyd", pickle.dumps(_Marker(pickle_marker)), members)
                entries.append(IndexEntry(key, members))
                n += 1
        if index:
            path.with_suffix(".idx").write_text(format_index(entries))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """The demo digits at 16 px, written once per test session."""
    return ensure_digits_shards(tmp_path_factory.mktemp("cache"), image_size=16)
