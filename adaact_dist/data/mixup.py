"""Mixup / CutMix on the device with ``timm.data.Mixup``, giving soft targets.

Applied to the normalised batch where it already lives (GPU), after the loader: both backends
then share one implementation, and DALI needs no mixing operator. The soft targets suit
``timm.loss.SoftTargetCrossEntropy`` (cross-entropy) and ``timm.loss.BinaryCrossEntropy`` (BCE,
as in the A2 recipe).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DeviceMixup"]

_MODES = ("batch", "pair", "elem")


class DeviceMixup:
    """``timm.data.Mixup`` with its own seeded random state.

    timm draws its mixing parameters from NumPy's global generator; this wrapper swaps in a
    private ``RandomState`` for each call, so the stream is reproducible from ``seed`` (give each
    rank its own) and nothing else that uses ``np.random`` is disturbed.

    Args:
        num_classes: Number of classes of the targets.
        mixup_alpha: Beta(alpha, alpha) parameter of Mixup; 0 disables Mixup. A2: 0.1.
        cutmix_alpha: Beta parameter of CutMix; 0 disables CutMix. A2: 1.0.
        switch_prob: Probability of CutMix instead of Mixup when both are on.
        prob: Probability of mixing a batch (or element, per ``mode``).
        label_smoothing: Smoothing of the one-hot targets before mixing.
        mode: ``"batch"`` (one lambda per batch, timm's default), ``"pair"`` or ``"elem"``.
        seed: Seed of the mixing parameters.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        mixup_alpha: float = 0.1,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        mode: str = "batch",
        seed: int = 0,
    ) -> None:
        from timm.data import Mixup

        if num_classes < 1:
            raise ValueError(f"Invalid num_classes={num_classes}: must be >= 1")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(
                f"Invalid mixup_alpha={mixup_alpha}/cutmix_alpha={cutmix_alpha}: must be >= 0"
            )
        for name, value in (("switch_prob", switch_prob), ("prob", prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Invalid {name}={value}: must be in [0, 1]")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Invalid label_smoothing={label_smoothing}: must be in [0, 1)")
        if mode not in _MODES:
            raise ValueError(f"Invalid mode={mode!r}: must be one of {_MODES}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self._mixes = mixup_alpha > 0 or cutmix_alpha > 0
        self._mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=switch_prob,
            mode=mode,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self._random = np.random.RandomState(seed % 2**32)

    @property
    def enabled(self) -> bool:
        """Whether batches are mixed; set ``False`` for the last epochs (timm's
        ``mixup_off_epoch``): targets are then the smoothed one-hot labels."""
        return self._mixes and self._mixup.mixup_enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._mixup.mixup_enabled = bool(value)

    def state_dict(self) -> dict:
        """The mixing stream's position and on/off state, as plain Python values (loadable with
        ``torch.load(weights_only=True)``), so a resumed run mixes as an uninterrupted one."""
        name, keys, pos, has_gauss, cached = self._random.get_state()
        return {
            "bit_generator": name,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
            "enabled": bool(self._mixup.mixup_enabled),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._random.set_state(
            (
                state["bit_generator"],
                np.asarray(state["keys"], dtype=np.uint32),
                state["pos"],
                state["has_gauss"],
                state["cached_gaussian"],
            )
        )
        self._mixup.mixup_enabled = bool(state["enabled"])

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``images`` in place and return them with float soft targets ``(N, num_classes)``
        on the same device.

        Raises:
            ValueError: odd batch size while mixing (each sample is mixed with its mirror in the
                batch, so timm needs pairs).
        """
        from timm.data.mixup import mixup_target

        if not self.enabled:
            return images, mixup_target(labels, self.num_classes, 1.0, self.label_smoothing)
        if len(images) % 2:
            raise ValueError(
                f"Invalid batch of {len(images)} samples for Mixup/CutMix: must be even "
                "(use an even batch_size and drop_last=True for training)"
            )
        saved = np.random.get_state()
        np.random.set_state(self._random.get_state())
        try:
            return self._mixup(images, labels)
        finally:
            self._random.set_state(np.random.get_state())
            np.random.set_state(saved)
