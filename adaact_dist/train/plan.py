"""What a config means on a given world size and device: micro-batch, accumulation, scaled lr,
compute precision.

The recipe fixes the global batch (2048 in the paper) and its lr; the world size only
changes how that batch is cut into micro-batches and accumulation steps. When the user
changes the global batch, the lr (and the schedule's warm-up and floor lrs) scale
linearly with it, relative to ``optim.lr_base_batch_size``. The device decides whether
``distributed.precision: bf16`` is worth keeping (:func:`run_precision`).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.logger import get_logger

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """The batch geometry and learning rates of one run on ``world_size`` ranks."""

    world_size: int
    """Data-parallel ranks."""
    global_batch_size: int
    """Images per optimizer step over all ranks."""
    micro_batch_size: int
    """Images per rank per forward."""
    accumulation_steps: int
    """Micro-batches per rank per optimizer step."""
    eval_batch_size: int
    """Images per rank per evaluation forward."""
    lr_scale: float
    """global_batch_size / optim.lr_base_batch_size (1 without a base)."""
    lr: float
    """Peak learning rate after scaling."""
    warmup_lr: float
    """Warm-up start learning rate after scaling."""
    min_lr: float
    """Final cosine learning rate after scaling."""
    precision: str
    """Compute precision of forward/backward: ``distributed.precision``, or fp32 where the
    device has no native bf16 (:func:`run_precision`)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: an x86 CPU with AVX512-BF16 (AMX CPUs have
    it too), an ARM CPU with its BF16 extension, a CUDA GPU of compute capability 8.0 or more.

    oneDNN also takes plain AVX512 CPUs for bf16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported``)
    but emulates it there, slower than fp32; without AVX512 torch falls back to reference
    kernels (a timm resnet50 step measured 15x slower than fp32, issue 18).
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return True  # other accelerators: trust the recipe
    if platform.machine().lower() in ("x86_64", "amd64"):
        return torch.cpu._is_avx512_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def run_precision(requested: str, *, mode: str, native_bf16: bool, device: str = "CPU") -> str:
    """The precision a run computes in: ``requested``, except bf16 on a ``device`` without
    native bf16, which computes in fp32 under ``precision_mode: autocast`` and is refused under
    ``precision_mode: deepspeed``.

    Why fp32 rather than a stop under autocast: a CPU node is where an operator dry-runs an A2
    recipe (config, data, checkpoints, a few steps), and emulated bf16 would make that crawl for
    no gain in what the dry run checks; the weights, the optimizer and the checkpoints are fp32
    either way, so only the forward's arithmetic changes. DeepSpeed's own bf16 weights are
    another matter: falling back would change the checkpoints' layout, so that stops, naming
    the key.
    """
    if requested != "bf16" or native_bf16:
        return requested
    if mode == "deepspeed":
        raise ConfigValueError(
            "distributed.precision",
            requested,
            f"fp32 or fp16 on this {device}: it has no native bf16, and DeepSpeed's bf16 weights "
            "(distributed.precision_mode=deepspeed) would run several times slower than fp32",
        )
    return "fp32"


def make_plan(
    config: TrainConfig, world_size: int, *, device: torch.device | None = None
) -> RunPlan:
    """Derive the plan; raise :class:`ConfigValueError` naming the key that makes it impossible.

    With ``device`` (the trainer's) the precision follows :func:`run_precision`, and a fallback
    to fp32 is logged once; without (planning on a login node, ``--print-config``) it is the
    config's.
    """
    if world_size < 1:
        raise ValueError(f"Invalid world_size={world_size!r}: must be >= 1")
    data = config.data
    global_batch = data.global_batch_size
    if data.micro_batch_size is not None:
        micro = data.micro_batch_size
        if global_batch % (world_size * micro):
            raise ConfigValueError(
                "data.global_batch_size",
                global_batch,
                f"divisible by world size ({world_size}) x data.micro_batch_size ({micro})",
            )
        accumulation = global_batch // (world_size * micro)
    else:
        if global_batch % world_size:
            raise ConfigValueError(
                "data.global_batch_size",
                global_batch,
                f"divisible by the world size ({world_size})",
            )
        per_rank = global_batch // world_size
        accumulation = next(
            g
            for g in range(1, per_rank + 1)
            if per_rank % g == 0 and per_rank // g <= data.max_micro_batch_size
        )
        micro = per_rank // accumulation
    if config.augmentation.mixing and micro % 2:
        key = (
            "data.micro_batch_size"
            if data.micro_batch_size is not None
            else "data.global_batch_size"
        )
        raise ConfigValueError(
            key,
            data.micro_batch_size or global_batch,
            f"such that the micro-batch ({micro}) is even: Mixup/CutMix pair samples",
        )
    base = config.optim.lr_base_batch_size
    scale = global_batch / base if base else 1.0
    dist = config.distributed
    precision = dist.precision
    if device is not None:
        where = {"cpu": "CPU", "cuda": "GPU"}.get(device.type, device.type)
        precision = run_precision(
            precision, mode=dist.precision_mode, native_bf16=has_native_bf16(device), device=where
        )
        if precision != dist.precision:
            get_logger().warning(
                "distributed.precision=%s, but this %s has no native bf16 and would run it "
                "several times slower than fp32: computing in fp32 (weights and checkpoints are "
                "fp32 under autocast either way). Set distributed.precision=fp32 to silence this.",
                dist.precision, where,
            )  # fmt: skip
    return RunPlan(
        world_size=world_size,
        global_batch_size=global_batch,
        micro_batch_size=micro,
        accumulation_steps=accumulation,
        eval_batch_size=config.eval.batch_size or micro,
        lr_scale=scale,
        lr=config.optim.lr * scale,
        warmup_lr=config.schedule.warmup_lr * scale,
        min_lr=config.schedule.min_lr * scale,
        precision=precision,
    )
