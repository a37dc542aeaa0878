"""The DALI pipeline: ``fn.readers.webdataset`` -> decode -> A2 augmentation -> normalise.

Defined in a source file on purpose: RandAugment uses DALI conditionals
(``enable_conditionals=True``), which re-parse the function's source. Decoding is "mixed"
(nvJPEG / hardware JPEG decoder on the GPU) when ``decode_device="mixed"`` and on CPU threads
when ``decode_device="cpu"``; everything after decoding runs where the images are.

The ``.cls`` payload comes out as raw ASCII bytes; :mod:`adaact_dist.data.dali_loader` parses it
into the integer label (DALI has no string-to-integer operator).
"""

from __future__ import annotations

import math

from nvidia.dali import fn, pipeline_def, types

from adaact_dist.data.dali_augment import RandAugmentSpec, timm_rand_augment

__all__ = ["READER_NAME", "image_pipeline"]

READER_NAME = "reader"
_INTERP = {
    "bilinear": types.INTERP_LINEAR,
    "bicubic": types.INTERP_CUBIC,
    "nearest": types.INTERP_NN,
}
# Preallocation for the "mixed" decoder, as in DALI's ImageNet training example: avoids
# reallocations during the first epoch for ImageNet-sized images.
_DEVICE_MEMORY_PADDING = 211025920
_HOST_MEMORY_PADDING = 140544512


@pipeline_def(enable_conditionals=True)
def image_pipeline(
    *,
    paths: list[str],
    index_paths: list[str],
    shard_id: int,
    num_shards: int,
    shuffle: bool,
    initial_fill: int,
    reader_seed: int,
    decode_device: str,
    is_training: bool,
    image_size: int,
    crop_pct: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: float,
    rand_augment: RandAugmentSpec | None,
    train_interpolation: str,
    interpolation: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    channels_last: bool,
):
    """Outputs ``(images float32 CHW or HWC, label bytes)`` for one rank's shard of the data.

    Reading, the training or evaluation images, then flip, crop and normalisation in one
    operator. The parts it calls build graph nodes only; DALI's conditionals convert them as
    they convert this function, from their source (see the module docstring).
    """
    jpegs, labels = fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths,
        ext=["jpg;jpeg", "cls"],
        missing_component_behavior="error",
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=shuffle,
        initial_fill=initial_fill,
        seed=reader_seed,
        name=READER_NAME,
    )
    if is_training:
        images = _train_images(
            jpegs,
            decode_device=decode_device,
            image_size=image_size,
            scale=scale,
            ratio=ratio,
            rand_augment=rand_augment,
            train_interpolation=train_interpolation,
            mean=mean,
        )
        mirror = fn.random.coin_flip(probability=hflip)
        crop = None
    else:
        images = _eval_images(
            jpegs,
            decode_device=decode_device,
            image_size=image_size,
            crop_pct=crop_pct,
            interpolation=interpolation,
        )
        mirror = 0
        crop = (image_size, image_size)
    images = fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="HWC" if channels_last else "CHW",
        crop=crop,
        crop_pos_x=0.5,
        crop_pos_y=0.5,
        mean=[255 * m for m in mean],
        std=[255 * s for s in std],
        mirror=mirror,
    )
    return images, labels


def _decoder_memory(decode_device: str) -> dict[str, int]:
    """Preallocation arguments of the "mixed" decoder (none on the CPU)."""
    if decode_device != "mixed":
        return {}
    return dict(
        device_memory_padding=_DEVICE_MEMORY_PADDING, host_memory_padding=_HOST_MEMORY_PADDING
    )


def _train_images(
    jpegs,
    *,
    decode_device: str,
    image_size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rand_augment: RandAugmentSpec | None,
    train_interpolation: str,
    mean: tuple[float, ...],
):
    """timm's A2 training transform up to the flip: decode a random crop (the decoder reads
    only the crop's part of the JPEG), resize it, then RandAugment."""
    images = fn.decoders.image_random_crop(
        jpegs,
        device=decode_device,
        output_type=types.RGB,
        random_area=list(scale),
        random_aspect_ratio=list(ratio),
        num_attempts=10,
        **_decoder_memory(decode_device),
    )
    if train_interpolation == "random":  # timm: bilinear or bicubic, per image
        interp = fn.random.choice(types.Constant([types.INTERP_LINEAR, types.INTERP_CUBIC]))
    else:
        interp = _INTERP[train_interpolation]
    images = fn.resize(images, size=[image_size, image_size], interp_type=interp)
    if rand_augment is not None:
        fill = tuple(min(255, round(255 * m)) for m in mean)  # timm's img_mean fill
        images = timm_rand_augment(
            images, rand_augment, image_size=(image_size, image_size), fill_rgb=fill
        )
    return images


def _eval_images(
    jpegs, *, decode_device: str, image_size: int, crop_pct: float, interpolation: str
):
    """timm's evaluation transform up to the centre crop: decode, resize the shorter side to
    ``floor(image_size / crop_pct)`` (the crop is done while normalising)."""
    images = fn.decoders.image(
        jpegs, device=decode_device, output_type=types.RGB, **_decoder_memory(decode_device)
    )
    resize = math.floor(image_size / crop_pct)  # timm's scale_size
    return fn.resize(images, resize_shorter=resize, interp_type=_INTERP[interpolation])
