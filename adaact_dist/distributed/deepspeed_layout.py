"""Where DeepSpeed keeps each model parameter once it has taken over the optimizer.

``deepspeed.initialize`` replaces the tensors in the client optimizer's param groups:

- ZeRO stage 1/2 (``DeepSpeedZeroOptimizer``): one flat fp32 partition per group; every
  model parameter carries ``_hp_mapping`` (None when it is not on this rank) whose
  ``lp_fragment_address`` locates the run in ``param.flatten()`` and whose
  ``hp_fragment_address`` locates it in the partition.
- bf16 at stage 1 with fp32 gradient accumulation (``BF16_Optimizer``): the same, with
  its own group lists.
- fp16, or bf16 at stage 0 (``FP16_UnfusedOptimizer``): one fp32 copy per parameter.
- fp32 at stage 0: the client optimizer itself, nothing replaced.

This module turns each of those into :class:`~adaact_dist.optim.Fragment` lists, so that
the optimizer core never needs to know which engine it runs under.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adaact_dist.optim import Fragment


@dataclass(frozen=True)
class FlatLayout:
    """One flat tensor of the optimizer and the named parameter runs it holds."""

    flat: Tensor
    group: int
    fragments: list[Fragment]
    names: list[str]


def deepspeed_layouts(
    wrapper: object, client: torch.optim.Optimizer, param_names: dict[nn.Parameter, str]
) -> list[FlatLayout]:
    """The flat tensors that ``wrapper`` (``engine.optimizer``) put in ``client``'s groups."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if wrapper is client:
        return []
    if isinstance(wrapper, DeepSpeedZeroOptimizer):
        _refuse_round_robin(wrapper)
        _refuse_elastic_checkpoint(wrapper)
        return _from_hp_mappings(
            wrapper.bit16_groups, wrapper.single_partition_of_fp32_groups, param_names
        )
    if isinstance(wrapper, BF16_Optimizer):
        return _from_hp_mappings(
            wrapper.bf16_groups, wrapper.fp32_groups_flat_partition, param_names
        )
    if isinstance(wrapper, FP16_UnfusedOptimizer):
        layouts = []
        for group, (models, copies) in enumerate(zip(wrapper.fp16_groups, wrapper.fp32_groups)):
            for param, copy in zip(models, copies):
                fragment = Fragment(param, 0, 0, param.numel())
                layouts.append(FlatLayout(copy, group, [fragment], [param_names[param]]))
        return layouts
    if isinstance(wrapper, DeepSpeedZeroOptimizer_Stage3):
        raise NotImplementedError(
            "AdaAct does not support ZeRO stage 3: it partitions the parameters themselves, a "
            "layout that the binding does not map. Use zero_optimization.stage 0, 1 or 2."
        )
    raise NotImplementedError(
        f"AdaAct does not know DeepSpeed's {type(wrapper).__name__} wrapper (supported: ZeRO "
        "stage 1/2, BF16_Optimizer, FP16_UnfusedOptimizer, or none at fp32 stage 0)"
    )


def keeps_flat_checkpoint(wrapper: object) -> bool:
    """Whether ``wrapper`` checkpoints per-partition tensors only, not the client's state_dict
    (ZeRO 1/2 and BF16_Optimizer: AdaAct's statistics must travel in its checkpoint)."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    return isinstance(wrapper, (DeepSpeedZeroOptimizer, BF16_Optimizer))


def _from_hp_mappings(
    lp_groups: list[list[nn.Parameter]],
    flats: list[Tensor],
    param_names: dict[nn.Parameter, str],
) -> list[FlatLayout]:
    layouts = []
    for group, (params, flat) in enumerate(zip(lp_groups, flats)):
        fragments, names = [], []
        for param in params:
            mapping = getattr(param, "_hp_mapping", None)
            if mapping is None:
                continue
            lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
            fragment = Fragment(param, int(lp.start), int(hp.start), int(hp.numel))
            _check_fragment(param, flat, fragment, param_names)
            fragments.append(fragment)
            names.append(param_names[param])
        layouts.append(FlatLayout(flat, group, fragments, names))
    return layouts


def _check_fragment(
    param: nn.Parameter, flat: Tensor, fragment: Fragment, param_names: dict
) -> None:
    """The flat copy must hold this run's values: catches a stale or misordered map."""
    model_run = param.detach().reshape(-1)[
        fragment.param_offset : fragment.param_offset + fragment.numel
    ]
    flat_run = flat.detach()[fragment.flat_offset : fragment.flat_offset + fragment.numel]
    if not torch.equal(flat_run.to(model_run.device, model_run.dtype), model_run):
        raise RuntimeError(
            f"DeepSpeed's fragment map of {param_names.get(param, tuple(param.shape))!r} does not "
            "point at its values in the flat partition; the binding must run right after "
            "deepspeed.initialize (before any step), with the layout DeepSpeed built"
        )


def _refuse_round_robin(wrapper: object) -> None:
    world = len(wrapper.parallel_partitioned_bit16_groups[0])
    if getattr(wrapper, "round_robin_gradients", False) and world > 1:
        raise NotImplementedError(
            "zero_optimization.round_robin_gradients=true is not supported: DeepSpeed 0.19 "
            "reorders the flattened parameters for it but links the fragment maps "
            "(_hp_mapping) in the original order when there is no alignment padding, so "
            "they address the wrong elements (its universal checkpoints too). Set "
            "round_robin_gradients to false; it only balances CPU-offload gradient copies."
        )


def _refuse_elastic_checkpoint(wrapper: object) -> None:
    if getattr(wrapper, "elastic_checkpoint", False):
        raise NotImplementedError(
            "zero_optimization.elastic_checkpoint=true is not supported: DeepSpeed 0.19 "
            "restores elastic checkpoints only for optimizers that keep 'step' in their "
            "parameter groups (its FusedAdam). Set elastic_checkpoint to false; to resume on "
            "another number of ranks, convert with adaact_dist.distributed.convert_to_universal."
        )
