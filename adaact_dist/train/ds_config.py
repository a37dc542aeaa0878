"""The DeepSpeed config, generated from the trainer config (never kept in a second file)."""

from __future__ import annotations

from typing import Any

from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.plan import RunPlan

# Keys the trainer derives itself; ``distributed.deepspeed_extra`` may not override them.
GENERATED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "zero_optimization.stage",
    "bf16",
    "fp16",
    "torch_autocast",
    "data_types.buffer_dtype",
    "optimizer",
    "scheduler",
)
_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def deepspeed_config(config: TrainConfig, plan: RunPlan) -> dict[str, Any]:
    """ZeRO stage, precision, micro-batch and accumulation as DeepSpeed expects them.

    The optimizer is passed to ``deepspeed.initialize`` as a client optimizer (AdaAct or a
    baseline) and the lr schedule is applied by the trainer per step, so neither appears
    here. ``precision_mode: autocast`` keeps fp32 weights and runs forward under
    ``torch.autocast`` (DeepSpeed's ``torch_autocast``); ``deepspeed`` uses DeepSpeed's
    ``bf16``/``fp16`` weights with fp32 master copies (fp16 with dynamic loss scaling). The
    precision is the plan's: fp32 where the device has no native bf16.
    """
    dist = config.distributed
    precision = plan.precision
    half = precision != "fp32"
    autocast = half and dist.precision_mode == "autocast"
    native = half and dist.precision_mode == "deepspeed"
    generated: dict[str, Any] = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.accumulation_steps,
        "gradient_clipping": config.optim.gradient_clipping,
        "zero_optimization": _zero_section(
            dist.zero_stage, config.optim.gradient_clipping, dist.deepspeed_extra
        ),
        # AdaAct is a client optimizer that DeepSpeed has not vetted for ZeRO.
        "zero_allow_untested_optimizer": True,
        # The trainer's one check per step finds non-finite losses; DeepSpeed's bf16 overflow
        # check would add a device sync per step (bf16 has fp32's range: nothing to rescale).
        "bf16": {"enabled": native and precision == "bf16", "check_grad_overflow": False},
        "fp16": {
            "enabled": native and precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "torch_autocast": autocast_section(
            autocast, _DTYPES.get(precision, "bfloat16"), dist.grad_reduce_dtype
        ),
        # Native half weights: buffers too (BatchNorm needs its statistics in the weights' dtype).
        "data_types": {"buffer_dtype": _DTYPES[precision] if native else None},
        # The trainer prints progress itself.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return _merge(generated, dist.deepspeed_extra)


def _zero_section(stage: int, clipping: float, extra: dict[str, Any]) -> dict[str, Any]:
    """ZeRO's section. Without clipping, ZeRO 1/2 need no global gradient norm, whose
    non-finite check reads the device once per step; DeepSpeed needs it with optimizer offload
    and an fp32 gradient accumulation, which ``deepspeed_extra`` may ask for (as it may ask for
    ``zero_optimization: {compute_grad_norm: true}``)."""
    section: dict[str, Any] = {"stage": stage}
    needs_norm = "offload_optimizer" in extra.get("zero_optimization", {}) or (
        "grad_accum_dtype" in extra.get("data_types", {})
    )
    if stage in (1, 2) and not clipping and not needs_norm:
        section["compute_grad_norm"] = False
    return section


def autocast_section(enabled: bool, dtype: str, grad_reduce_dtype: str) -> dict[str, Any]:
    """DeepSpeed's ``torch_autocast``. DeepSpeed marks the weights of its "lower precision
    safe" modules (Linear, Conv) to have their gradients reduced in the autocast dtype; an
    empty list leaves every gradient to be reduced in fp32, its weights' dtype."""
    section: dict[str, Any] = {"enabled": enabled, "dtype": dtype}
    if grad_reduce_dtype == "fp32":
        section["lower_precision_safe_modules"] = []
    return section


def _merge(generated: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key in _flat_keys(extra):
        if any(
            key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in GENERATED_KEYS
        ):
            raise ConfigValueError(
                "distributed.deepspeed_extra",
                extra,
                f"free of {key!r}: the trainer derives it from the config "
                "(data.*, distributed.zero_stage/precision)",
            )
    merged = dict(generated)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _flat_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys.extend(_flat_keys(value, name + "."))
        else:
            keys.append(name)
    return keys
