"""timm's RandAugment rebuilt from DALI operators, as close as DALI's API allows.

DALI's own ``nvidia.dali.auto_aug.rand_augment`` differs from timm's ``rand-m7-mstd0.5-inc1``
in op set (no Invert or SolarizeAdd, an extra Identity), magnitude scale (31 bins, not 0-10),
fill colour (one grey value), always applying the chosen ops, and a fixed magnitude. Here:

* the op set and per-magnitude parameters are timm's (``_RAND_INCREASING_TRANSFORMS``, or
  ``_RAND_TRANSFORMS`` for ``inc0``), tabulated on 11 magnitude bins (timm's 0-10 scale, so
  ``m7`` is bin 7) with timm's level functions;
* each of the ``n`` layers picks an op uniformly and applies it with probability ``p`` (0.5), a
  per-sample coin flip, as timm's ``AugmentOp``;
* the magnitude noise (``mstd``) is drawn per sample and layer from timm's Gaussian, clipped to
  [0, 10] and rounded to the nearest bin;
* shear, translate and rotate fill uncovered pixels with timm's per-channel fill colour
  (``round(255 * mean)``) by warping a coverage mask alongside the image;
* Color blends with the ITU-R 601 grey image, as PIL's ``ImageEnhance.Color``.

Remaining differences (DALI has no operator for them): magnitudes are whole bins (timm uses
the continuous value); warps use bilinear filtering (timm picks bilinear or bicubic at random);
Equalize follows OpenCV's histogram formula rather than PIL's; Sharpness leaves a 1-pixel border
unfiltered differently from PIL; Contrast uses the exact channel-weighted mean instead of PIL's
integer histogram mean; and the pipeline flips after RandAugment (distributionally the same,
since every geometric op has a random sign).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.auto_aug import augmentations as dali_ops
from nvidia.dali.auto_aug.core import augmentation, select, signed_bin

__all__ = [
    "NUM_BINS",
    "RandAugmentSpec",
    "parse_rand_augment",
    "magnitude_bin_probs",
    "timm_suite",
    "timm_rand_augment",
]

NUM_BINS = 11
"""Magnitude bins 0..10: timm's magnitude scale (``_LEVEL_DENOM = 10``)."""
_LEVELS = np.arange(NUM_BINS, dtype=np.float32) / np.float32(10.0)


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string (``rand-m7-n2-mstd0.5-p0.5-inc1``)."""

    magnitude: int = 10
    num_layers: int = 2
    magnitude_std: float = 0.0
    prob: float = 0.5
    increasing: bool = False


def parse_rand_augment(config: str) -> RandAugmentSpec:
    """Parse a timm ``rand-...`` string into what the DALI version supports.

    Raises:
        ValueError: not a ``rand`` string, or a section DALI cannot follow (``t`` weights,
            ``mmax``, magnitudes above 10).
    """
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(
            f"Invalid auto_augment={config!r} for the DALI backend: only timm 'rand-...' "
            "RandAugment strings are supported (use backend='wds' for AutoAugment/AugMix)"
        )
    values: dict[str, float] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)([0-9.]+|inf)", part)
        if match is None or match.group(1) not in ("m", "n", "mstd", "p", "inc"):
            raise ValueError(
                f"Invalid auto_augment={config!r}: section {part!r} is not supported by the DALI "
                "backend (supported: m, n, mstd, p, inc)"
            )
        values[match.group(1)] = float(match.group(2))
    magnitude = values.get("m", 10.0)
    if magnitude != int(magnitude) or not 0 <= magnitude <= 10:
        raise ValueError(f"Invalid auto_augment={config!r}: m must be an integer in [0, 10]")
    mstd = values.get("mstd", 0.0)
    return RandAugmentSpec(
        magnitude=int(magnitude),
        num_layers=int(values.get("n", 2)),
        magnitude_std=math.inf if mstd > 100 else mstd,
        prob=values.get("p", 0.5),
        increasing=bool(values.get("inc", 0)),
    )


def magnitude_bin_probs(spec: RandAugmentSpec) -> np.ndarray:
    """Probability of each magnitude bin: timm's noisy magnitude, clipped, rounded to a bin."""
    m, s = float(spec.magnitude), spec.magnitude_std
    if s == 0:
        probs = np.zeros(NUM_BINS)
        probs[spec.magnitude] = 1.0
        return probs
    edges = np.arange(NUM_BINS + 1) - 0.5  # bin k collects [k - 0.5, k + 0.5)
    if math.isinf(s):  # timm: uniform on [0, m]
        cdf = np.clip(edges / m, 0.0, 1.0) if m > 0 else (edges >= 0).astype(float)
    else:
        cdf = np.array([0.5 * (1 + math.erf((e - m) / (s * math.sqrt(2)))) for e in edges])
    cdf[0], cdf[-1] = 0.0, 1.0  # clipping to [0, 10] moves the tails into the end bins
    return np.diff(cdf)


def _const_like(value: np.ndarray, data) -> object:
    return types.Constant(value, device=getattr(data, "device", None) or "cpu")


def _with_rgb_fill(warp, data, fill_rgb):
    """Apply ``warp(node, fill_value)`` and paint uncovered pixels ``fill_rgb``.

    DALI's warps take one fill value for all channels; warping a coverage mask alongside the image
    gives timm's per-channel fill, with the same blend at the border pixels.
    """
    warped = warp(data, 0.0)
    ones = data[:, :, 0:1] * types.Constant(0, dtype=types.UINT8) + types.Constant(
        255, dtype=types.UINT8
    )
    coverage = warp(ones, 0.0)
    fill = _const_like(np.asarray(fill_rgb, dtype=np.float32) / 255.0, data)
    return fn.cast(warped + (255 - coverage) * fill, dtype=types.UINT8)


def _xy(value: float) -> list[float]:
    return [value, 0.0]


def _yx(value: float) -> list[float]:
    return [0.0, value]


def _warp_op(matrix_fn, param_map, mag_range, name):
    """A timm affine op. ``matrix_fn(param, shape)`` gives the output-to-input map, which is
    what PIL's ``Image.transform(AFFINE)`` takes (hence ``inverse_map=True``)."""

    @augmentation(mag_range=mag_range, randomly_negate=True, mag_to_param=param_map, name=name)
    def op(data, param, shape, fill_rgb, interp_type=types.INTERP_LINEAR):
        matrix = matrix_fn(param, shape)
        return _with_rgb_fill(
            lambda d, f: fn.warp_affine(
                d, matrix=matrix, fill_value=f, interp_type=interp_type, inverse_map=True
            ),
            data,
            fill_rgb,
        )

    return op


@augmentation(mag_range=_LEVELS * 30.0, randomly_negate=True, name="Rotate")
def _rotate(data, angle, fill_rgb, interp_type=types.INTERP_LINEAR):
    return _with_rgb_fill(
        lambda d, f: fn.rotate(
            d, angle=angle, fill_value=f, interp_type=interp_type, keep_size=True
        ),
        data,
        fill_rgb,
    )


@augmentation(name="Equalize")
def _equalize(data, _):
    """OpenCV-style histogram equalisation (``fn.equalize``; PIL's formula differs slightly)."""
    return fn.equalize(data)


@augmentation(param_device="auto")
def _sharpness(data, kernel):
    """PIL ``ImageEnhance.Sharpness`` as a 3x3 filter (DALI's op, on ``fn.filter``)."""
    return fn.filter(data, kernel)


def _color_pil(data, factor):
    """PIL ``ImageEnhance.Color``: blend with the ITU-R 601 luma image."""
    weights = _const_like(np.array([0.299, 0.587, 0.114], dtype=np.float32), data)
    grey = fn.reductions.sum(data * weights, axis_names="C", keep_dims=True)
    return fn.cast(grey + (data - grey) * factor, dtype=types.UINT8)


def _posterize_mask(bits: float) -> np.ndarray:
    """timm/PIL posterize keeping ``bits`` high bits (0 bits -> black, as PIL)."""
    bits = int(bits)
    if bits >= 8:
        return np.array(255, dtype=np.uint8)
    return np.array(255 ^ (2 ** (8 - bits) - 1), dtype=np.uint8)


def _table(level_fn) -> np.ndarray:
    """``level_fn(level / 10)`` for each bin, computed in float64 as timm does."""
    return np.array([level_fn(k / 10.0) for k in range(NUM_BINS)], dtype=np.float32)


def timm_suite(*, increasing: bool, translate_pct: float = 0.45) -> list:
    """timm's RandAugment ops as DALI augmentations, in timm's order, on :data:`NUM_BINS` bins."""
    if increasing:
        posterize_bits = _table(lambda f: 4 - int(f * 4))
        solarize_thresh = _table(lambda f: 256 - min(256, int(f * 256)))
        enhance = dict(mag_range=_LEVELS * 0.9, randomly_negate=True)
        enhance_param = dali_ops.shift_enhance_range
        sharp_param = dali_ops.sharpness_kernel
    else:
        posterize_bits = _table(lambda f: int(f * 4))
        solarize_thresh = _table(lambda f: min(256, int(f * 256)))
        enhance = dict(mag_range=_LEVELS * 1.8 + 0.1, randomly_negate=False)
        enhance_param = None
        sharp_param = dali_ops.sharpness_kernel_shifted
    suffix = "Increasing" if increasing else ""
    color = augmentation(_color_pil, mag_to_param=enhance_param, name=f"Color{suffix}", **enhance)
    shear_x = _warp_op(lambda p, _: fn.transforms.shear(shear=p), _xy, _LEVELS * 0.3, "ShearX")
    shear_y = _warp_op(lambda p, _: fn.transforms.shear(shear=p), _yx, _LEVELS * 0.3, "ShearY")
    translate_x = _warp_op(
        lambda p, shape: fn.transforms.translation(offset=p * float(shape[1])),
        _xy,
        _LEVELS * translate_pct,
        "TranslateXRel",
    )
    translate_y = _warp_op(
        lambda p, shape: fn.transforms.translation(offset=p * float(shape[0])),
        _yx,
        _LEVELS * translate_pct,
        "TranslateYRel",
    )
    return [
        dali_ops.auto_contrast.augmentation(name="AutoContrast"),
        _equalize,
        dali_ops.invert.augmentation(name="Invert"),
        _rotate,
        dali_ops.posterize.augmentation(
            mag_range=posterize_bits, mag_to_param=_posterize_mask, name=f"Posterize{suffix}"
        ),
        dali_ops.solarize.augmentation(mag_range=solarize_thresh, name=f"Solarize{suffix}"),
        dali_ops.solarize_add.augmentation(
            mag_range=_table(lambda f: min(128, int(f * 110))), name="SolarizeAdd"
        ),
        color,
        dali_ops.contrast.augmentation(
            mag_to_param=enhance_param, name=f"Contrast{suffix}", **enhance
        ),
        dali_ops.brightness.augmentation(
            mag_to_param=enhance_param, name=f"Brightness{suffix}", **enhance
        ),
        _sharpness.augmentation(mag_to_param=sharp_param, name=f"Sharpness{suffix}", **enhance),
        shear_x,
        shear_y,
        translate_x,
        translate_y,
    ]


def timm_rand_augment(
    images,
    spec: RandAugmentSpec,
    *,
    image_size: tuple[int, int],
    fill_rgb: tuple[int, int, int],
):
    """Apply ``spec`` to a batch of uint8 HWC images of size ``image_size`` (h, w).

    Must be called inside a pipeline defined with ``enable_conditionals=True`` (in a source
    file: DALI's conditionals rewrite the function's source).
    """
    suite = timm_suite(increasing=spec.increasing)
    ops = [*suite, dali_ops.identity]
    skip = len(suite)  # the identity op stands for "layer not applied"
    n = spec.num_layers
    op_idx = fn.random.uniform(values=list(range(len(suite))), shape=(n,), dtype=types.INT32)
    apply = fn.random.coin_flip(probability=spec.prob, shape=(n,), dtype=types.INT32)
    sign = fn.random.uniform(values=[0, 1], shape=(n,), dtype=types.INT32)
    probs = magnitude_bin_probs(spec)
    noisy = np.count_nonzero(probs) > 1
    bins = None
    if noisy:
        bins = fn.random.choice(
            types.Constant(np.arange(NUM_BINS, dtype=np.int32)), p=probs.tolist(), shape=(n,)
        )
    for layer in range(n):
        index = op_idx[layer] * apply[layer] + skip * (1 - apply[layer])
        magnitude = bins[layer] if noisy else spec.magnitude
        images = select(
            ops,
            index,
            data=images,
            magnitude_bin=signed_bin(magnitude, random_sign=sign[layer]),
            num_magnitude_bins=NUM_BINS,
            shape=image_size,
            fill_rgb=fill_rgb,
        )
    return images
