"""Random elastic and affine deformations of digit images: many distinct digits from few.

The way infinite-MNIST ("MNIST-8M", Loosli, Canu and Bottou 2007) grows a digit set: every
copy of an original is drawn through a random smooth displacement field (Simard, Steinkraus
and Platt 2003: uniform noise smoothed by a Gaussian, scaled by ``alpha``) composed with a
random rotation, scale, shear and shift. The copies stay readable digits of the same class
but differ from each other as much as two writers' digits do, which gives a task with tens of
thousands of training images, made on any machine from scikit-learn's 1,797 originals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Deformation", "deform"]


@dataclass(frozen=True)
class Deformation:
    """Ranges of the random transform, in pixels and degrees of the output image."""

    rotation_deg: float = 12.0
    """Rotation drawn from ``[-rotation_deg, rotation_deg]``."""
    scale: tuple[float, float] = (0.85, 1.1)
    """Zoom drawn per axis from this range."""
    shear: float = 0.2
    """Horizontal shear drawn from ``[-shear, shear]``."""
    shift_px: float = 1.5
    """Translation drawn per axis from ``[-shift_px, shift_px]``."""
    elastic_alpha: float = 1.5
    """Largest displacement of the smoothed field, in pixels."""
    elastic_sigma: float = 3.0
    """Gaussian smoothing of the field, in pixels: larger is smoother."""


def deform(
    image: np.ndarray, copies: int, rng: np.random.Generator, spec: Deformation = Deformation()
) -> np.ndarray:
    """``copies`` random deformations of one greyscale ``image`` (H, W floats in [0, 1]) ->
    ``(copies, H, W)`` floats in [0, 1], bilinear, zero outside the image."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    height, width = image.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centre_r, centre_c = (height - 1) / 2, (width - 1) / 2
    out = np.empty((copies, height, width))
    for i in range(copies):
        angle = math.radians(rng.uniform(-spec.rotation_deg, spec.rotation_deg))
        zoom_r, zoom_c = rng.uniform(*spec.scale, size=2)
        shear = rng.uniform(-spec.shear, spec.shear)
        shift_r, shift_c = rng.uniform(-spec.shift_px, spec.shift_px, size=2)
        # Output pixel -> source pixel: inverse rotation, shear and zoom about the centre.
        cos, sin = math.cos(angle), math.sin(angle)
        r, c = rows - centre_r - shift_r, cols - centre_c - shift_c
        r, c = cos * r - sin * c, sin * r + cos * c
        c = c + shear * r
        source_r, source_c = r / zoom_r + centre_r, c / zoom_c + centre_c
        for grid in (source_r, source_c):
            field = gaussian_filter(rng.uniform(-1, 1, size=(height, width)), spec.elastic_sigma)
            grid += spec.elastic_alpha * field / max(np.abs(field).max(), 1e-12)
        out[i] = map_coordinates(image, [source_r, source_c], order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)
