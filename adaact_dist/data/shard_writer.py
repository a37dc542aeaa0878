"""Write an image split as webdataset tar shards, DALI index files, a manifest and timm's index.

Command (also installed as the ``adaact-make-shards`` console script)::

    python launch/make_shards.py --src /data/ILSVRC2012/train --out /data/imagenet-wds \\
        --split train --shard-size 1000 --workers 16 --seed 0
    python launch/make_shards.py --src /data/ILSVRC2012/val --out /data/imagenet-wds \\
        --split val --labels LOC_val_solution.csv --classes /data/imagenet-wds/train/manifest.json
    python launch/make_shards.py --out /data/imagenet-wds --split train --verify

Output, in ``<out>/<split>/``: ``<split>-000000.tar`` ... with one ``<key>.jpg`` + ``<key>.cls``
pair per image (the key is the source path without extension), a ``.idx`` DALI index per tar,
and ``manifest.json``; the split's entry in ``<out>/_info.json`` lets timm's ``wds/`` reader
find it (:mod:`adaact_dist.data.timm_info`). Samples are in one globally shuffled order fixed by
``--seed``, so a loader that reads shards in turn with a small shuffle buffer still sees classes
mixed.

Re-running the same command finishes an interrupted run: shard ``i`` always holds the same
images, a shard is written under a ``.partial`` name and renamed only when complete, and a
per-shard record (``.progress/<shard>.json``, renamed last) marks it done. A different plan
(other inputs, seed or shard size) in the same directory is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import hashlib
import io
import json
import logging
import os
import random
import re
import shlex
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from adaact_dist._files import (
    PARTIAL_SUFFIX,
    atomic_write_text,
    commit,
    fsync_dir,
    partial_path,
)
from adaact_dist.data.images import prepare_jpeg
from adaact_dist.data.manifest import (
    FORMAT,
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    read_manifest,
    write_manifest,
)
from adaact_dist.data.sources import SourceItem, SourceList, scan
from adaact_dist.data.tar_index import IndexEntry, format_index, iter_index
from adaact_dist.data.timm_info import remove_split_info, write_split_info

__all__ = ["ShardPlan", "plan_shards", "write_shards", "verify_shards", "main"]

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"
_TAR_MTIME = 0  # fixed metadata: the same inputs always give byte-identical shards
_MAX_NAME = 96  # stay inside the 100-byte ustar name field, no long-name extensions
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ShardPlan:
    """What shard ``index`` will contain: file name, inputs in order, and a digest of both."""

    index: int
    name: str
    items: list[SourceItem]
    keys: list[str]
    digest: str


def sample_key(relpath: str) -> str:
    """The webdataset key of a source file: its path without extension, made index-safe.

    Dots (webdataset splits key from extension at the first dot) and characters that would break
    the space-separated index are replaced by ``_``; long names are shortened with a hash.
    """
    path = Path(relpath)
    stem = str(path.with_suffix("")) if path.suffix else relpath
    key = re.sub(r"[^A-Za-z0-9_/-]", "_", stem.replace(os.sep, "/"))
    if len(key) > _MAX_NAME - 8:
        digest = hashlib.sha1(relpath.encode()).hexdigest()[:10]
        key = f"{key[: _MAX_NAME - 19]}_{digest}"
    return key


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def plan_shards(
    sources: SourceList, *, split: str, seed: int, shard_size: int, jpeg_quality: int
) -> tuple[list[ShardPlan], str]:
    """Shuffle all inputs with ``seed`` and cut them into shards of ``shard_size``.

    Returns:
        The shard plans and a digest of the whole plan (inputs, order and settings).
    """
    items = list(sources.items)
    random.Random(seed).shuffle(items)
    keys, seen = [], set()
    for item in items:
        key = sample_key(item.relpath)
        if key in seen:
            key = f"{key[: _MAX_NAME - 19]}_{hashlib.sha1(item.relpath.encode()).hexdigest()[:10]}"
        seen.add(key)
        keys.append(key)
    settings = {
        "format": FORMAT,
        "split": split,
        "seed": seed,
        "shard_size": shard_size,
        "jpeg_quality": jpeg_quality,
        "classes": sources.classes,
    }
    plans = []
    for index, start in enumerate(range(0, len(items), shard_size)):
        chunk = items[start : start + shard_size]
        chunk_keys = keys[start : start + shard_size]
        digest = _digest([settings, [(i.relpath, i.label) for i in chunk], chunk_keys])
        plans.append(ShardPlan(index, f"{split}-{index:06d}", chunk, chunk_keys, digest))
    return plans, _digest([settings, [p.digest for p in plans]])


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Append one member with fixed metadata; return its ``(data_offset, size)``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))
    padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return tar.offset - padded, len(data)


def _describe(error: Exception) -> str:
    """A reproducible one-line reason (PIL's messages name a memory address)."""
    if isinstance(error, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image format PIL can read"
    return f"{type(error).__name__}: {error}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_one_shard(src: Path, out_dir: Path, plan: ShardPlan, jpeg_quality: int) -> dict:
    """Write one planned shard (tar, index, then its progress record last) and return the record.

    Unreadable inputs are skipped and listed in the record; nothing about a bad image is fatal.
    """
    tar_path, idx_path = out_dir / f"{plan.name}.tar", out_dir / f"{plan.name}.idx"
    tmp_tar = partial_path(tar_path)
    entries: list[IndexEntry] = []
    skipped, converted = [], 0
    class_counts: collections.Counter[int] = collections.Counter()
    with open(tmp_tar, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for item, key in zip(plan.items, plan.keys):
                try:
                    data = (src / item.relpath).read_bytes()
                except OSError as e:
                    skipped.append({"path": item.relpath, "reason": f"unreadable: {e}"})
                    continue
                try:
                    payload, was_converted = prepare_jpeg(data, quality=jpeg_quality)
                except Exception as e:  # any decoder failure means "skip this file"
                    reason = f"undecodable: {_describe(e)}"
                    skipped.append({"path": item.relpath, "reason": reason})
                    continue
                converted += was_converted
                members = {
                    "jpg": _tar_member(tar, f"{key}.jpg", payload),
                    "cls": _tar_member(tar, f"{key}.cls", str(item.label).encode("ascii")),
                }
                entries.append(IndexEntry(key, members))
                class_counts[item.label] += 1
        f.flush()
        os.fsync(f.fileno())
    record = {
        "digest": plan.digest,
        "samples": len(entries),
        "skipped": skipped,
        "converted": converted,
        "class_counts": {str(k): v for k, v in sorted(class_counts.items())},
    }
    if entries:
        atomic_write_text(idx_path, format_index(entries))
        commit(tmp_tar, tar_path)
        record["bytes"] = tar_path.stat().st_size
        record["sha256"] = _sha256(tar_path)
    else:  # every input skipped: no tar (DALI refuses empty archives), only the record
        tmp_tar.unlink()
    fsync_dir(out_dir)
    atomic_write_text(out_dir / PROGRESS_DIR / f"{plan.name}.json", json.dumps(record))
    return record


def _read_record(out_dir: Path, plan: ShardPlan) -> dict | None:
    """The progress record of a shard if it is complete and matches ``plan``, else ``None``."""
    path = out_dir / PROGRESS_DIR / f"{plan.name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("digest") != plan.digest:
        return None
    if record["samples"] == 0:
        return record
    tar_path = out_dir / f"{plan.name}.tar"
    if not (out_dir / f"{plan.name}.idx").is_file() or not tar_path.is_file():
        return None
    if tar_path.stat().st_size != record.get("bytes"):
        return None
    return record


def _prepare_out_dir(out_dir: Path, plan_digest: str, overwrite: bool) -> None:
    """Create the output directory, drop stale temporary files, and refuse a foreign plan."""
    (out_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    plan_file = out_dir / PROGRESS_DIR / "plan.json"
    old = json.loads(plan_file.read_text())["digest"] if plan_file.is_file() else None
    if old is not None and old != plan_digest:
        if not overwrite:
            raise ValueError(
                f"Invalid --out {out_dir.parent}: {out_dir} holds shards from a different plan "
                "(other inputs, --seed, --shard-size or --jpeg-quality); pass --overwrite to "
                "replace them, or choose another --out"
            )
        log.warning("--overwrite: removing the shards of the previous plan in %s", out_dir)
        remove_split_info(out_dir.parent, out_dir.name)
        for path in out_dir.iterdir():
            if path.suffix in (".tar", ".idx") or path.name == MANIFEST_NAME:
                path.unlink()
        for path in (out_dir / PROGRESS_DIR).iterdir():
            path.unlink()
    for directory in (out_dir, out_dir / PROGRESS_DIR):
        for path in directory.glob(f"*{PARTIAL_SUFFIX}"):
            path.unlink()
    atomic_write_text(plan_file, json.dumps({"digest": plan_digest}))


def write_shards(
    src: str | Path,
    out: str | Path,
    *,
    split: str,
    labels: str | Path | None = None,
    classes: str | Path | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    seed: int = 0,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    command: str | None = None,
) -> Manifest:
    """Write ``src`` as shards into ``<out>/<split>/`` (see the module docstring).

    Args:
        src: ImageFolder root, or a flat image folder when ``labels`` is given.
        out: Data set root; shards go to ``<out>/<split>/``.
        split: Split name (``train``, ``val``, ...): letters, digits, ``_`` and ``-``.
        labels: Label file for a flat folder (``LOC_val_solution.csv`` or ``<file> <label>``).
        classes: Class list for a flat folder: a train manifest or ``LOC_synset_mapping.txt``.
        shard_size: Images per shard (ImageNet: 1,000 gives shards of about 110 MB).
        workers: Processes writing shards in parallel.
        seed: Seed of the global shuffle.
        jpeg_quality: Quality for images that must be converted; JPEGs are copied as they are.
        overwrite: Replace shards of a different plan found in the output directory.
        command: Command line recorded in the manifest.

    Returns:
        The manifest written to ``<out>/<split>/manifest.json`` (and copied into
        ``<out>/_info.json``).
    """
    _check_arguments(split, shard_size=shard_size, workers=workers, jpeg_quality=jpeg_quality)
    src, out_dir = Path(src).resolve(), Path(out) / split
    sources = scan(
        src,
        Path(labels) if labels is not None else None,
        Path(classes) if classes is not None else None,
    )
    plans, plan_digest = plan_shards(
        sources, split=split, seed=seed, shard_size=shard_size, jpeg_quality=jpeg_quality
    )
    _prepare_out_dir(out_dir, plan_digest, overwrite)
    records = _finished_records(out_dir, plans)
    todo = [plan for plan in plans if plan.index not in records]
    log.info(
        "%s: %d images in %d shards; %d already complete, %d to write",
        out_dir, len(sources.items), len(plans), len(records), len(todo),
    )  # fmt: skip
    _write_planned(
        src, out_dir, todo, records, jpeg_quality=jpeg_quality, workers=workers, total=len(plans)
    )
    manifest = _build_manifest(
        sources,
        plans,
        records,
        src=src,
        split=split,
        seed=seed,
        shard_size=shard_size,
        jpeg_quality=jpeg_quality,
        command=command,
    )
    for entry in manifest.skipped:
        log.warning("skipped %s: %s", entry["path"], entry["reason"])
    write_manifest(out_dir, manifest)
    log.info(
        "%s: %d samples, %d classes, %d shards, %d converted, %d skipped",
        out_dir, manifest.total, manifest.num_classes, len(manifest.shards), manifest.converted,
        len(manifest.skipped),
    )  # fmt: skip
    manifest = read_manifest(out_dir)
    write_split_info(out, manifest)
    return manifest


def _check_arguments(split: str, *, shard_size: int, workers: int, jpeg_quality: int) -> None:
    """Refuse impossible settings before anything is scanned or written."""
    if not _SPLIT_RE.match(split):
        raise ValueError(f"Invalid split={split!r}: use letters, digits, '_' and '-'")
    if shard_size < 1:
        raise ValueError(f"Invalid shard_size={shard_size}: must be >= 1")
    if workers < 1:
        raise ValueError(f"Invalid workers={workers}: must be >= 1")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"Invalid jpeg_quality={jpeg_quality}: must be in [1, 100]")


def _finished_records(out_dir: Path, plans: list[ShardPlan]) -> dict[int, dict]:
    """Records of the shards an earlier run completed for this plan: a re-run skips them."""
    records = {}
    for plan in plans:
        record = _read_record(out_dir, plan)
        if record is not None:
            records[plan.index] = record
    return records


def _write_planned(
    src: Path,
    out_dir: Path,
    todo: list[ShardPlan],
    records: dict[int, dict],
    *,
    jpeg_quality: int,
    workers: int,
    total: int,
) -> None:
    """Write the shards of ``todo``, in ``workers`` processes, adding each one's record to
    ``records`` as it completes (``total``: shards in the plan, for the progress lines).

    An error in any shard cancels the shards not yet started and is raised; the shards already
    finished keep their records, so a re-run continues from them.
    """

    def done(plan: ShardPlan, record: dict) -> None:
        records[plan.index] = record
        log.info(
            "%s: %d samples, %d converted, %d skipped (%d/%d shards)",
            plan.name, record["samples"], record["converted"], len(record["skipped"]),
            len(records), total,
        )  # fmt: skip

    if workers == 1 or len(todo) <= 1:
        for plan in todo:
            done(plan, write_one_shard(src, out_dir, plan, jpeg_quality))
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(write_one_shard, src, out_dir, plan, jpeg_quality): plan for plan in todo
        }
        try:
            for future in concurrent.futures.as_completed(futures):
                done(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _build_manifest(
    sources: SourceList,
    plans: list[ShardPlan],
    records: dict[int, dict],
    *,
    src: Path,
    split: str,
    seed: int,
    shard_size: int,
    jpeg_quality: int,
    command: str | None,
) -> Manifest:
    """The split's manifest from the shards' records, in plan order: shards that kept no
    sample are left out, the skipped inputs of the scan and of every shard listed."""
    class_counts = [0] * len(sources.classes)
    skipped = list(sources.skipped)
    shards, converted = [], 0
    for plan in plans:
        record = records[plan.index]
        skipped += record["skipped"]
        converted += record["converted"]
        for label, count in record["class_counts"].items():
            class_counts[int(label)] += count
        if record["samples"]:
            shards.append(
                ShardInfo(
                    name=f"{plan.name}.tar",
                    index=f"{plan.name}.idx",
                    samples=record["samples"],
                    bytes=record["bytes"],
                    sha256=record["sha256"],
                )
            )
    return Manifest(
        split=split,
        classes=sources.classes,
        shards=shards,
        class_counts=class_counts,
        skipped=skipped,
        converted=converted,
        seed=seed,
        shard_size=shard_size,
        jpeg_quality=jpeg_quality,
        source=str(src),
        layout=sources.layout,
        command=command or "",
    )


def verify_shards(directory: str | Path) -> list[str]:
    """Check every shard of a split against its manifest: size, SHA-256 and index.

    Returns:
        One line per problem found; empty when all shards are intact.
    """
    manifest = read_manifest(directory)
    problems = []
    for info, tar_path, idx_path in zip(
        manifest.shards, manifest.shard_paths, manifest.index_paths
    ):
        if not tar_path.is_file():
            problems.append(f"{tar_path}: missing")
            continue
        if tar_path.stat().st_size != info.bytes:
            problems.append(f"{tar_path}: {tar_path.stat().st_size} bytes, expected {info.bytes}")
        elif _sha256(tar_path) != info.sha256:
            problems.append(f"{tar_path}: SHA-256 differs from the manifest")
        try:
            count = sum(1 for _ in iter_index(idx_path))
        except (OSError, ValueError) as e:
            problems.append(f"{idx_path}: {e}")
            continue
        if count != info.samples:
            problems.append(f"{idx_path}: {count} samples, manifest says {info.samples}")
    return problems


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adaact-make-shards",
        description="Write an ImageFolder tree or the ILSVRC2012 val folder as webdataset "
        "shards with DALI index files and a manifest, in <out>/<split>/.",
    )
    p.add_argument("--src", type=Path, help="ImageFolder root, or flat folder with --labels")
    p.add_argument("--out", type=Path, required=True, help="data set root")
    p.add_argument("--split", required=True, help="split name, e.g. train or val")
    p.add_argument("--labels", type=Path, help="label file for a flat folder")
    p.add_argument("--classes", type=Path, help="class list: train manifest.json or synset file")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel processes"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the global shuffle")
    p.add_argument("--jpeg-quality", type=int, default=95, help="quality of converted images")
    p.add_argument("--overwrite", action="store_true", help="replace shards of another plan")
    p.add_argument("--verify", action="store_true", help="check existing shards and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = shlex.join(sys.argv if argv is None else ["adaact-make-shards", *argv])
    try:
        if args.verify:
            problems = verify_shards(args.out / args.split)
            for line in problems:
                print(line, file=sys.stderr)
            print(f"{args.out / args.split}: {'OK' if not problems else 'DAMAGED'}")
            return 1 if problems else 0
        if args.src is None:
            raise ValueError("Invalid arguments: --src is required unless --verify")
        write_shards(
            args.src,
            args.out,
            split=args.split,
            labels=args.labels,
            classes=args.classes,
            shard_size=args.shard_size,
            workers=args.workers,
            seed=args.seed,
            jpeg_quality=args.jpeg_quality,
            overwrite=args.overwrite,
            command=command,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"adaact-make-shards: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
