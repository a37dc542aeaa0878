"""A throughput set of full-size natural photos, made from scikit-image's bundled samples.

Loader benchmarks need ImageNet-like JPEGs (a few hundred pixels a side, quality about 90) but
nothing may be downloaded. scikit-image ships a handful of real colour photographs inside its
wheel; random crops and rescales of them give as many distinct ImageNet-sized JPEGs as wanted.
Only files present in the installed package are used (several ``skimage.data`` images need a
download and are left out).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

__all__ = ["PHOTO_NAMES", "load_photos", "make_photo_set"]

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "motorcycle")
"""Colour photographs bundled in the scikit-image wheel."""


def load_photos() -> list[np.ndarray]:
    """The bundled photos as uint8 RGB arrays (motorcycle: both stereo views)."""
    from skimage import data

    photos = []
    for name in PHOTO_NAMES:
        if name == "motorcycle":
            left, right, _ = data.stereo_motorcycle()
            photos += [left, right]
        else:
            photos.append(getattr(data, name)())
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


def make_photo_set(
    out_dir: str | Path,
    *,
    num_images: int = 512,
    num_classes: int = 8,
    quality: int = 90,
    seed: int = 0,
) -> Path:
    """Write ``num_images`` ImageNet-like JPEGs as an ImageFolder tree ``out_dir/cNN/``.

    Each image is a random crop (10-100 % of the photo's area, aspect 3/4-4/3) rescaled so that
    its longer side is 500 px (70 %, ImageNet's most common size) or 300-500 px, then saved as
    JPEG at ``quality``. Classes are assigned round-robin; they only matter for the loaders.

    Returns:
        ``out_dir``.
    """
    from PIL import Image

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    photos = load_photos()
    for i in range(num_images):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        area = h * w * rng.uniform(0.1, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = min(h, int(round(math.sqrt(area / aspect))))
        cw = min(w, int(round(math.sqrt(area * aspect))))
        top, left = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        crop = Image.fromarray(photo[top : top + ch, left : left + cw])
        longer = 500 if rng.uniform() < 0.7 else int(rng.integers(300, 501))
        scale = longer / max(ch, cw)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        image = crop.resize(size, Image.Resampling.BICUBIC)
        folder = out / f"c{i % num_classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        (folder / f"photo_{i:05d}.jpg").write_bytes(buffer.getvalue())
    return out
