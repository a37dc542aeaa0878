"""The one default of each transform setting: timm's A2 recipe ("ResNet strikes back") at 224 px.

:class:`~adaact_dist.data.config.LoaderConfig` and the trainer's config schema both take their
defaults from here. Constants only (no torch), so that the schema stays cheap to import.
"""

from __future__ import annotations

IMAGE_SIZE = 224
"""Output height and width."""
CROP_PCT = 0.95
"""Evaluation: the shorter side is resized to ``floor(image_size / crop_pct)``, then cropped."""
SCALE = (0.08, 1.0)
"""RandomResizedCrop area range."""
RATIO = (3 / 4, 4 / 3)
"""RandomResizedCrop aspect-ratio range."""
HFLIP = 0.5
"""Horizontal flip probability."""
AUTO_AUGMENT = "rand-m7-mstd0.5-inc1"
"""timm RandAugment: 2 ops at magnitude 7 (std 0.5), increasing variants."""
TRAIN_INTERPOLATION = "random"
"""Training resize: bilinear or bicubic per image (timm's default)."""
INTERPOLATION = "bicubic"
"""Evaluation resize."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Normalisation mean (0-1 scale)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Normalisation std (0-1 scale)."""
