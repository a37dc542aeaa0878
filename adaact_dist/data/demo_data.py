"""The embedded demo data set: scikit-learn's handwritten digits as webdataset shards.

1,797 real 8x8 greyscale images of 10 classes ship inside scikit-learn, so the demo config and
the tests run anywhere without downloading anything. On first use they are upscaled to
``image_size`` RGB, split (stratified, seeded) into train and val, and written through the same
shard writer as ImageNet (PNG in, RGB JPEG out); later calls find the finished copy and return at
once. Concurrent callers (several ranks of one job) wait on a file lock and then share it.

``digits_noisy`` is the same split with 40% of the *training* labels replaced by another class
(uniformly, seeded; validation stays clean): a task where fitting the training set and
generalising part ways, which is how "generalises like SGD" shows at small scale.

``digits_deformed`` is the same split grown into a large-batch task: 16 random elastic and
affine deformations of every training original (22,992 images) and 5 of every validation
original (1,800), :mod:`~adaact_dist.data.digit_deformations`. With 1,437 images a batch of
1,024 is most of the training set; with 22,992, batches from 16 to 1,024 sample a data set many
times their size, as ImageNet batches do.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUILTIN_TASKS",
    "BuiltinTask",
    "default_cache_dir",
    "ensure_builtin_shards",
    "ensure_digits_shards",
]

_VERSION = 2
_DONE = ".complete"


@dataclass(frozen=True)
class BuiltinTask:
    """How an embedded data set is made from the digits."""

    train_label_noise: float = 0.0
    """Share of training labels moved to another class."""
    train_copies: int = 0
    """Deformed copies of each training original; 0: the originals themselves."""
    val_copies: int = 0
    """Deformed copies of each validation original; 0: the originals themselves."""


BUILTIN_TASKS = {
    "digits": BuiltinTask(),
    "digits_noisy": BuiltinTask(train_label_noise=0.4),
    "digits_deformed": BuiltinTask(train_copies=16, val_copies=5),
}
"""Each embedded data set (``data.builtin``)."""


def default_cache_dir() -> Path:
    """``$ADAACT_CACHE`` if set, else ``~/.cache/adaact-dist``."""
    env = os.environ.get("ADAACT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "adaact-dist"


def _noisy_labels(labels, fraction: float, seed: int):
    """``labels`` with exactly ``round(fraction * n)`` of them, chosen at random, moved to
    another class drawn uniformly (symmetric label noise)."""
    import numpy as np

    from adaact_dist._seeds import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "digits-label-noise"))
    noisy = labels.copy()
    chosen = rng.choice(len(labels), size=round(fraction * len(labels)), replace=False)
    noisy[chosen] = (labels[chosen] + rng.integers(1, 10, size=len(chosen))) % 10
    return noisy


def _digit_pictures(pixels, image_size: int, copies: int, rng):
    """The 8x8 original (0-16 levels) upscaled to ``image_size`` greyscale: itself, or
    ``copies`` deformations of it."""
    import numpy as np
    from PIL import Image

    from adaact_dist.data.digit_deformations import deform

    original = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8))
    upscaled = original.resize((image_size, image_size), Image.Resampling.BICUBIC)
    if not copies:
        return [upscaled]
    grey = np.asarray(upscaled, dtype=np.float64) / 255.0
    return [
        Image.fromarray(np.round(copy * 255.0).astype(np.uint8))
        for copy in deform(grey, copies, rng)
    ]


def _write_digit_images(
    src: Path, image_size: int, val_fraction: float, seed: int, task: BuiltinTask
) -> None:
    """Digits as PNG ImageFolder trees ``src/train/<label>/`` and ``src/val/<label>/``; a
    relabelled training image keeps its true digit in its name (``digit_0123_true7``), a
    deformed copy its number (``digit_0123_c05``)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from adaact_dist._seeds import derive_seed

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, val = train_test_split(
        indices, test_size=val_fraction, stratify=digits.target, random_state=seed
    )
    train_labels = _noisy_labels(digits.target[train], task.train_label_noise, seed)
    for split, chosen, labels, copies in (
        ("train", train, train_labels, task.train_copies),
        ("val", val, digits.target[val], task.val_copies),
    ):
        rng = np.random.default_rng(derive_seed(seed, f"digits-deform-{split}"))
        for i, label in zip(chosen, labels, strict=True):
            folder = src / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            true = "" if label == digits.target[i] else f"_true{digits.target[i]}"
            pictures = _digit_pictures(digits.images[i], image_size, copies, rng)
            for n, picture in enumerate(pictures):
                copy = f"_c{n:02d}" if copies else ""
                picture.convert("RGB").save(folder / f"digit_{i:04d}{true}{copy}.png")


def ensure_builtin_shards(
    name: str, cache_dir: str | Path | None = None, *, image_size: int = 32, seed: int = 0
) -> Path:
    """The shards of the embedded data set ``name`` (a key of :data:`BUILTIN_TASKS`)."""
    if name not in BUILTIN_TASKS:
        raise ValueError(f"Invalid name={name!r}: must be one of {', '.join(BUILTIN_TASKS)}")
    task = BUILTIN_TASKS[name]
    return ensure_digits_shards(
        cache_dir,
        image_size=image_size,
        seed=seed,
        train_label_noise=task.train_label_noise,
        train_copies=task.train_copies,
        val_copies=task.val_copies,
    )


def ensure_digits_shards(
    cache_dir: str | Path | None = None,
    *,
    image_size: int = 32,
    shard_size: int = 256,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_label_noise: float = 0.0,
    train_copies: int = 0,
    val_copies: int = 0,
) -> Path:
    """Return the root of the digits shards, writing them on first use.

    Args:
        cache_dir: Where to keep them; default :func:`default_cache_dir`
            (``$ADAACT_CACHE`` or ``~/.cache/adaact-dist``).
        image_size: Side of the RGB images (the 8x8 originals are upscaled bicubically).
        shard_size: Images per shard (256: 6 train shards, 2 val shards).
        val_fraction: Share of each class held out for validation (0.2: 1,437 / 360).
        seed: Seed of the train/val split, of the label noise and of the shard shuffle.
        train_label_noise: Share of training images whose label is replaced by another
            class, drawn uniformly (0.4 for ``digits_noisy``); validation labels stay true.
        train_copies: Random deformations written per training original instead of the
            original (16 for ``digits_deformed``); 0: the originals.
        val_copies: The same for validation (5 for ``digits_deformed``).

    Returns:
        ``root`` with ``root/train/manifest.json`` and ``root/val/manifest.json``: pass it as
        ``shards=root`` to :func:`adaact_dist.data.create_loader`.
    """
    from adaact_dist.data.shard_writer import write_shards

    if image_size < 8:
        raise ValueError(f"Invalid image_size={image_size}: must be >= 8")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"Invalid val_fraction={val_fraction}: must be in (0, 1)")
    if not 0.0 <= train_label_noise < 1.0:
        raise ValueError(f"Invalid train_label_noise={train_label_noise}: must be in [0, 1)")
    for key, value in (("train_copies", train_copies), ("val_copies", val_copies)):
        if value < 0:
            raise ValueError(f"Invalid {key}={value}: must be >= 0")
    task = BuiltinTask(train_label_noise, train_copies, val_copies)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    noise = f"-noise{train_label_noise:g}" if train_label_noise else ""
    deformed = f"-deformed{train_copies}x{val_copies}" if train_copies or val_copies else ""
    name = (
        f"digits-{image_size}px-s{shard_size}-v{val_fraction:g}-seed{seed}{noise}{deformed}"
        f"-v{_VERSION}"
    )
    root = cache / name
    if (root / _DONE).is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be writing the same copy
        if (root / _DONE).is_file():
            return root
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        try:
            _write_digit_images(work / "src", image_size, val_fraction, seed, task)
            for split in ("train", "val"):
                write_shards(
                    work / "src" / split,
                    work / "out",
                    split=split,
                    shard_size=shard_size,
                    seed=seed,
                    command=f"adaact_dist.data.ensure_digits_shards(image_size={image_size}, "
                    f"shard_size={shard_size}, val_fraction={val_fraction}, seed={seed}, "
                    f"train_label_noise={train_label_noise}, train_copies={train_copies}, "
                    f"val_copies={val_copies})",
                )
            (work / "out" / _DONE).write_text("")
            if root.exists():  # a copy interrupted before it was complete
                shutil.rmtree(root)
            os.replace(work / "out", root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return root
