"""Image and label payloads: what the shard writer accepts and what the loaders decode.

Shards are data, never code: loaders decode only the ``.jpg`` member (with PIL restricted to its
JPEG decoder, so a member that is secretly another format is refused) and the ``.cls`` member as
ASCII digits. Nothing is unpickled or evaluated.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

__all__ = ["BadSampleError", "JPEG_COPY_MODES", "prepare_jpeg", "decode_jpeg", "parse_label"]

JPEG_COPY_MODES = ("RGB", "L")
"""JPEG colour modes copied byte for byte; others (CMYK, YCCK) are converted to RGB."""

_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: camera multi-picture files, a plain JPEG first frame


class BadSampleError(RuntimeError):
    """A sample in a shard cannot be used (undecodable image, missing or invalid label)."""


def _open_fully(data: bytes, formats: tuple[str, ...] | None) -> Image.Image:
    """Open and fully decode ``data``; truncated files and decompression bombs raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=formats)
        image.load()
    return image


def prepare_jpeg(data: bytes, *, quality: int = 95) -> tuple[bytes, bool]:
    """Return the bytes to store for one source image and whether they were re-encoded.

    RGB and greyscale JPEGs are returned unchanged (re-encoding would lose quality and change the
    data set); other formats and colour modes (PNG, CMYK JPEG, ...) become RGB JPEG at
    ``quality``. The image is fully decoded either way, so truncated or corrupt files raise here,
    in the writer, rather than in training.

    Raises:
        Exception: whatever PIL raises for an unreadable image (OSError, SyntaxError,
            DecompressionBombError, ...); the writer records the message and skips the file.
    """
    image = _open_fully(data, None)
    if image.format in _JPEG_FORMATS and image.mode in JPEG_COPY_MODES:
        return data, False
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue(), True


def decode_jpeg(data: bytes) -> Image.Image:
    """Decode a shard's image member to an RGB PIL image (timm's ``ImageDataset`` does the same
    ``convert("RGB")``).

    Raises:
        BadSampleError: not a decodable JPEG.
    """
    try:
        image = _open_fully(data, _JPEG_FORMATS)
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as e:  # PIL raises many types on corrupt data; all mean "bad sample"
        raise BadSampleError(f"undecodable image ({type(e).__name__}: {e})") from e


def parse_label(data: bytes, num_classes: int | None = None) -> int:
    """Parse a ``.cls`` payload: ASCII decimal digits, optionally surrounded by whitespace.

    Raises:
        BadSampleError: not a non-negative integer below ``num_classes``.
    """
    text = data.strip()
    if not text or not text.isdigit() or len(text) > 9:
        raise BadSampleError(f"invalid label payload {data[:20]!r}: must be ASCII decimal digits")
    label = int(text)
    if num_classes is not None and label >= num_classes:
        raise BadSampleError(f"label {label} out of range: data set has {num_classes} classes")
    return label
