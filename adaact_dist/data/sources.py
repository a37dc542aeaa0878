"""Find the images of a split and their class indices, as torchvision and ILSVRC2012 lay them out.

Two layouts:

* ImageFolder: one folder per class under ``src`` (nested folders allowed); the class index is
  the position of the folder name in sorted order, exactly as ``torchvision.datasets.ImageFolder``
  and timm's folder reader assign it.
* Flat folder plus a label file: the ILSVRC2012 validation layout. The label file is either
  Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first word of the
  prediction string is the synset) or whitespace separated ``<file> <synset or class index>``
  lines (e.g. Caffe's ``val.txt``). Synsets become indices through ``classes`` (the train split's
  class list), so that train and val agree.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IMG_EXTENSIONS", "SourceItem", "SourceList", "scan_image_folder", "scan_flat", "scan"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""Same extensions as torchvision's ImageFolder (case-insensitive)."""


@dataclass(frozen=True)
class SourceItem:
    """One input image: path relative to the source root, and its class index."""

    relpath: str
    label: int


@dataclass(frozen=True)
class SourceList:
    """All inputs of a split, sorted by path, and what could not be used before reading."""

    classes: list[str]
    items: list[SourceItem]
    skipped: list[dict[str, str]]
    layout: str


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def scan_image_folder(src: Path) -> SourceList:
    """Scan an ImageFolder tree (class index = sorted folder name)."""
    classes = sorted(e.name for e in os.scandir(src) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(
            f"Invalid --src {src}: no class folders (expected <src>/<class>/<image>, "
            "or a flat folder with --labels FILE)"
        )
    items = []
    for label, name in enumerate(classes):
        for root, dirs, files in os.walk(src / name, followlinks=True):
            dirs.sort()
            for f in sorted(files):
                if _is_image(f):
                    items.append(SourceItem(os.path.relpath(os.path.join(root, f), src), label))
    if not items:
        raise ValueError(f"Invalid --src {src}: class folders hold no images {IMG_EXTENSIONS}")
    return SourceList(classes, items, [], "imagefolder")


def read_class_list(path: Path) -> list[str]:
    """Class names from a shard manifest (its ``classes``) or a text file whose lines start with
    the class name (``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, dict) or "classes" not in data:
            raise ValueError(f"Invalid --classes {path}: JSON without a 'classes' list")
        return list(data["classes"])
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _read_label_file(path: Path) -> dict[str, str]:
    """Map file stem -> label text (synset or integer) from either supported label file."""
    labels: dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.replace(" ", "").lower().startswith("imageid,predictionstring"):
            for row in csv.DictReader(f):
                words = (row.get("PredictionString") or "").split()
                if words:
                    labels[Path(row["ImageId"]).stem] = words[0]
        else:
            for line_no, line in enumerate(f, start=1):
                words = line.split()
                if not words:
                    continue
                if len(words) < 2:
                    raise ValueError(
                        f"Invalid --labels {path}, line {line_no}: {line.strip()!r}: "
                        "expected '<file> <synset or class index>'"
                    )
                labels[Path(words[0]).stem] = words[1]
    if not labels:
        raise ValueError(f"Invalid --labels {path}: no labels found")
    return labels


def scan_flat(src: Path, labels_file: Path, classes: list[str] | None = None) -> SourceList:
    """Scan a flat folder of images labelled by ``labels_file`` (ILSVRC2012 val layout).

    Files without a label, and labels without a file, are listed as skipped (not fatal).
    """
    labels = _read_label_file(labels_file)
    values = set(labels.values())
    numeric = all(v.isdigit() for v in values)
    if classes is None:
        if numeric:
            raise ValueError(
                f"Invalid --labels {labels_file}: integer labels need --classes to name them"
            )
        classes = sorted(values)
    index = {name: i for i, name in enumerate(classes)}
    files = sorted(f for f in os.listdir(src) if _is_image(f) and (src / f).is_file())
    items, skipped, seen = [], [], set()
    for f in files:
        stem = Path(f).stem
        text = labels.get(stem)
        if text is None:
            skipped.append({"path": f, "reason": f"no label in {labels_file.name}"})
            continue
        seen.add(stem)
        if numeric:
            label = int(text)
            if label >= len(classes):
                skipped.append({"path": f, "reason": f"class index {label} >= {len(classes)}"})
                continue
        elif text in index:
            label = index[text]
        else:
            skipped.append({"path": f, "reason": f"class {text!r} not in the class list"})
            continue
        items.append(SourceItem(f, label))
    for stem in sorted(set(labels) - seen):
        skipped.append({"path": stem, "reason": f"listed in {labels_file.name}, no such image"})
    if not items:
        raise ValueError(f"Invalid --src {src}: no image matches a label in {labels_file}")
    return SourceList(list(classes), items, skipped, "flat")


def scan(
    src: Path, labels_file: Path | None = None, classes_file: Path | None = None
) -> SourceList:
    """Scan ``src`` in the layout its arguments imply (label file -> flat, else ImageFolder)."""
    if not src.is_dir():
        raise FileNotFoundError(f"Invalid --src {src}: not a directory")
    classes = read_class_list(classes_file) if classes_file is not None else None
    if labels_file is not None:
        if not labels_file.is_file():
            raise FileNotFoundError(f"Invalid --labels {labels_file}: no such file")
        return scan_flat(src, labels_file, classes)
    found = scan_image_folder(src)
    if classes is not None and classes != found.classes:
        raise ValueError(
            f"Invalid --classes {classes_file}: its {len(classes)} classes differ from the "
            f"{len(found.classes)} class folders of {src}"
        )
    return found
