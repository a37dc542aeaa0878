"""The optimizer table: every ``optim.name`` the trainer knows, in one place.

An :class:`OptimizerSpec` says how to build the optimizer, what the engine must know about it
(per-tensor updates, which ZeRO-1/2 cannot partition; layer statistics, which need AdaAct's
DeepSpeed binding) and what the optimizer studies use (base lr, scaling rule, usual weight
decay, sweep grid, plot colour). The config validation, the trainer, the studies and their
plots all read :data:`OPTIMIZERS`; adding an optimizer is one :func:`register_optimizer` call
(tests/train/test_optimizer_table.py checks that each of them then knows it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from adaact_dist.train.config import OptimConfig

BASE_BATCH = 64
"""The global batch that every :attr:`OptimizerSpec.base_lr` refers to."""

Builder = Callable[["nn.Module", "OptimConfig", float], "Optimizer"]
"""``(model, config.optim, peak lr) -> optimizer``, weight decay off for 1-D params and biases."""


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """One optimizer: how the trainer builds it and what the rest of the code needs to know."""

    name: str
    """``optim.name``."""
    build: Builder
    """Builds it over the model's parameters at the (already batch-scaled) peak lr."""
    per_tensor: bool = False
    """Its update reads a norm over each whole parameter tensor (LAMB's and LARS's trust
    ratios): the config refuses it on ZeRO-1/2, whose flat partitions cut across tensors."""
    layer_statistics: bool = False
    """Its state is keyed to layers (AdaAct's activation statistics): the engine comes from
    :func:`adaact_dist.distributed.deepspeed_initialize`, which maps ZeRO partitions onto the
    layers, averages the statistics over ranks and checkpoints them."""
    base_lr: float
    """Peak lr at :data:`BASE_BATCH` images per step: the optimizer study's sweep's best value
    on the digits (``benchmarks/compare/sweep.md``)."""
    scaling: Literal["linear", "sqrt"]
    """How its users grow the peak lr with the batch: ``linear`` (Goyal et al.; LARS, LAMB and
    the AdaAct paper) or ``sqrt`` (the rule for Adam-type optimizers)."""
    weight_decay: float
    """Its usual weight decay (not tuned by the studies)."""
    sweep_lrs: tuple[float, ...]
    """Base lrs the optimizer study's sweep tries."""
    color: str
    """Its matplotlib colour in every study plot."""

    def lr(self, batch_size: int) -> float:
        """The peak lr at ``batch_size`` by :attr:`scaling`."""
        return self.scaled(self.base_lr, batch_size)

    def scaled(self, base_lr: float, batch_size: int) -> float:
        """``base_lr`` (at :data:`BASE_BATCH`) carried to ``batch_size`` by :attr:`scaling`."""
        ratio = batch_size / BASE_BATCH
        return base_lr * (ratio if self.scaling == "linear" else math.sqrt(ratio))


OPTIMIZERS: dict[str, OptimizerSpec] = {}
"""Every known optimizer by ``optim.name``, in the order the studies show them."""


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to :data:`OPTIMIZERS`; a name already there is refused."""
    if spec.name in OPTIMIZERS:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    OPTIMIZERS[spec.name] = spec
    return spec


def _build_adaact(model: nn.Module, spec: OptimConfig, lr: float) -> Optimizer:
    from adaact_dist import create_optimizer

    return create_optimizer(
        model,
        lr=lr,
        weight_decay=spec.weight_decay,
        betas=spec.betas,
        eps=spec.eps,
        stats_sync_every=spec.stats_sync_every,
    )


def _timm_momentum(timm_name: str) -> Builder:
    """timm's ``momentum`` (SGD) or ``lars``: momentum, weight decay as an L2 term."""

    def build(model: nn.Module, spec: OptimConfig, lr: float) -> Optimizer:
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(
            model, timm_name, lr=lr, weight_decay=spec.weight_decay, momentum=spec.momentum
        )

    return build


def _timm_adam(timm_name: str) -> Builder:
    """timm's ``adamw`` or ``lamb``: betas, eps, decoupled weight decay."""

    def build(model: nn.Module, spec: OptimConfig, lr: float) -> Optimizer:
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(
            model, timm_name, lr=lr, weight_decay=spec.weight_decay, betas=spec.betas, eps=spec.eps
        )

    return build


# Base lrs: the best final top-1 of the optimizer study's sweep on the digits at batch 64 (30
# epochs, one seed: 1000; benchmarks/compare/sweep.md has every value). The digits are easy:
# across each grid's upper half the final top-1 differs by 1-3 of the 360 validation images,
# so these are the sweep's best values, not sharp optima; ties go to the smaller lr.

# AdaAct: the paper's CIFAR lr is 0.1 at batch 128 with linear scaling to 4.0 at 2048;
# decoupled weight decay as in configs/demo.yaml.
register_optimizer(
    OptimizerSpec(
        name="adaact",
        build=_build_adaact,
        layer_statistics=True,
        base_lr=0.4,
        scaling="linear",
        weight_decay=5e-4,
        sweep_lrs=(0.05, 0.1, 0.2, 0.4, 0.8),
        color="C3",
    )
)
# SGD with momentum 0.9 and L2 weight decay 5e-4: the CIFAR-ResNet standard.
register_optimizer(
    OptimizerSpec(
        name="sgd",
        build=_timm_momentum("momentum"),
        base_lr=0.4,
        scaling="linear",
        weight_decay=5e-4,
        sweep_lrs=(0.05, 0.1, 0.2, 0.4, 0.8),
        color="C0",
    )
)
# AdamW: weight decay 0.05 as in timm's and DeiT's AdamW recipes; square-root scaling; its
# grid was extended by one step where the best value sat at the top of the first one.
register_optimizer(
    OptimizerSpec(
        name="adamw",
        build=_timm_adam("adamw"),
        base_lr=2e-2,
        scaling="sqrt",
        weight_decay=0.05,
        sweep_lrs=(1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2),
        color="C2",
    )
)
# LAMB (timm's; it keeps timm's global gradient-norm clipping at 1.0, as NVIDIA's reference
# does, on top of optim.gradient_clipping): weight decay 0.02 as in timm's ResNet-strikes-back
# A2 recipe (lr 5e-3 at batch 2048).
register_optimizer(
    OptimizerSpec(
        name="lamb",
        build=_timm_adam("lamb"),
        per_tensor=True,
        base_lr=5e-3,
        scaling="linear",
        weight_decay=0.02,
        sweep_lrs=(2e-3, 5e-3, 1e-2, 2e-2),
        color="C1",
    )
)
# LARS (timm's, trust coefficient 0.001, momentum 0.9; biases and norm parameters, which get
# no weight decay, also get no trust ratio): weight decay 5e-4 as for SGD; its grid was
# extended by one step at the top.
register_optimizer(
    OptimizerSpec(
        name="lars",
        build=_timm_momentum("lars"),
        per_tensor=True,
        base_lr=4.0,
        scaling="linear",
        weight_decay=5e-4,
        sweep_lrs=(0.5, 1.0, 2.0, 4.0, 8.0),
        color="C4",
    )
)
