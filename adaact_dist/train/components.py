"""Model, optimizer, losses and batch mixing, built from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.optimizers import OPTIMIZERS
from adaact_dist.train.plan import RunPlan

if TYPE_CHECKING:
    from adaact_dist.data import DeviceMixup


def check_model_name(config: TrainConfig) -> None:
    """Fail before any work on a name timm does not know."""
    import timm

    if not timm.is_model(config.model.name):
        close = timm.list_models(f"*{config.model.name[:6]}*")[:8]
        raise ConfigValueError(
            "model.name", config.model.name, f"a timm model name (similar: {', '.join(close)})"
        )


def build_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """``timm.create_model`` (no pretrained weights: nothing is downloaded)."""
    import timm

    spec = config.model
    try:
        model = timm.create_model(
            spec.name,
            pretrained=False,
            num_classes=spec.num_classes,
            drop_rate=spec.drop_rate,
            drop_path_rate=spec.drop_path_rate,
            **spec.kwargs,
        )
    except RuntimeError as error:  # timm: "Unknown model (...)"
        raise ConfigValueError("model.name", spec.name, f"a timm model name ({error})") from None
    except TypeError as error:  # a keyword the model class does not take
        raise ConfigValueError(
            "model.kwargs", spec.kwargs, f"keyword arguments that {spec.name} takes ({error})"
        ) from None
    # Weights stay in the default layout even with model.channels_last: DeepSpeed broadcasts
    # parameters as byte views and ZeRO flattens them, both of which need contiguous tensors.
    # Channels-last inputs alone select the NHWC convolution kernels.
    return model.to(device)


def build_optimizer(config: TrainConfig, model: nn.Module, plan: RunPlan) -> Optimizer:
    """The :data:`~adaact_dist.train.optimizers.OPTIMIZERS` entry of ``optim.name`` at the
    plan's (batch-scaled) lr. AdaAct's statistics sync over ranks comes with its engine."""
    return OPTIMIZERS[config.optim.name].build(model, config.optim, plan.lr)


def build_mixup(config: TrainConfig, *, seed: int) -> Any:
    """Mixup/CutMix on the device with its own seeded stream, or None when mixing is off."""
    aug = config.augmentation
    if not aug.mixing:
        return None
    from adaact_dist.data import DeviceMixup

    return DeviceMixup(
        num_classes=config.model.num_classes,
        mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha,
        switch_prob=aug.mixup_switch_prob,
        prob=aug.mixup_prob,
        label_smoothing=config.loss.label_smoothing,
        mode=aug.mixup_mode,
        seed=seed,
    )


def mixup_state(mixup: DeviceMixup | None) -> dict | None:
    """The mixing stream's position, for checkpoints (None without mixing)."""
    return None if mixup is None else mixup.state_dict()


def load_mixup_state(mixup: DeviceMixup | None, state: dict | None) -> None:
    if mixup is not None and state is not None:
        mixup.load_state_dict(state)


def build_train_loss(config: TrainConfig) -> nn.Module:
    """CE or BCE; with Mixup the targets are soft and already smoothed."""
    from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

    spec = config.loss
    mixing = config.augmentation.mixing
    if spec.name == "bce":
        return BinaryCrossEntropy(
            smoothing=0.0 if mixing else spec.label_smoothing,
            target_threshold=spec.bce_target_threshold,
        )
    if mixing:
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)


def build_random_erasing(config: TrainConfig, device: torch.device) -> nn.Module | None:
    """timm's RandomErasing on device batches, or None when ``augmentation.re_prob`` is 0."""
    aug = config.augmentation
    if aug.re_prob <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability=aug.re_prob, mode=aug.re_mode, device=device)


def engine_input_dtype(config: TrainConfig) -> torch.dtype | None:
    """The dtype batches must have for DeepSpeed's bf16/fp16 weights; None when the weights
    stay fp32 (fp32, or autocast, which casts inside the forward). The plan's precision is the
    config's under ``precision_mode: deepspeed`` (:func:`~adaact_dist.train.plan.run_precision`)."""
    spec = config.distributed
    if spec.precision_mode != "deepspeed" or spec.precision == "fp32":
        return None
    return torch.bfloat16 if spec.precision == "bf16" else torch.float16
