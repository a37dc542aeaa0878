"""fp16 at ZeRO stage 0: apply the loss scale that DeepSpeed 0.19's ``engine.backward`` leaves out.

At stage 0 DeepSpeed wraps the client optimizer for fp16 in ``FP16_UnfusedOptimizer`` (or
``FP16_Optimizer``), whose ``step`` divides every gradient by the current loss scale (2**16 at
the start). Its ``engine.backward`` multiplies the loss by that scale only for ZeRO optimizers
(stages 1-3; deepspeedai/DeepSpeed#8393), so at stage 0 every update comes out the loss scale
times too small, and a skipped overflow step, which halves the scale, doubles every later
update. :func:`apply_stage0_loss_scale` fixes the engine at the loss: a hook on the tensor
passed to ``engine.backward`` multiplies its gradient by the scale, which is what scaling the
loss does. Whether the engine scaled by itself is read from that gradient on the first backward
(one host sync per engine), so a DeepSpeed that scales is left alone.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch

_APPLIED = "_adaact_dist_stage0_loss_scale"


def apply_stage0_loss_scale(engine: Any) -> None:
    """Make ``engine.backward`` scale the loss where DeepSpeed's fp16 stage 0 wrapper expects it.

    A no-op for every other engine (fp32, bf16, ZeRO stages 1-3, torch autocast), and when
    called again on the same engine.
    """
    if getattr(engine, _APPLIED, False):
        return
    setattr(engine, _APPLIED, True)
    wrapper = engine.optimizer
    if not engine.fp16_enabled() or engine.zero_optimization():
        return
    if not hasattr(wrapper, "loss_scale"):
        return
    original = engine.backward
    signature = inspect.signature(original)
    engine_scales: list[bool] = []  # learnt from the first backward at a scale other than 1

    @functools.wraps(original)
    def backward(loss: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        scale = float(wrapper.loss_scale)
        if scale != 1.0 and loss.requires_grad and engine_scales != [True]:
            bound = signature.bind(loss, *args, **kwargs)
            bound.apply_defaults()
            per_micro_batch = engine.gradient_accumulation_steps()
            unscaled = 1.0 / per_micro_batch if bound.arguments.get("scale_wrt_gas") else 1.0
            loss.register_hook(functools.partial(_scale_gradient, scale, unscaled, engine_scales))
        return original(loss, *args, **kwargs)

    engine.backward = backward


def _scale_gradient(
    scale: float, unscaled: float, engine_scales: list[bool], grad: torch.Tensor
) -> torch.Tensor:
    """The loss's gradient with the loss scale in it. ``grad`` is what the engine's own
    backward gives the loss: ``unscaled`` (1 / accumulation steps, or 1) when DeepSpeed left the
    scale out, ``scale * unscaled`` when it applied it."""
    if not engine_scales:
        received = float(grad)  # once per engine
        if math.isclose(received, unscaled * scale, rel_tol=1e-3):
            engine_scales.append(True)
        elif math.isclose(received, unscaled, rel_tol=1e-3):
            engine_scales.append(False)
        else:
            raise RuntimeError(
                f"DeepSpeed's backward gave the loss a gradient of {received:g}, neither "
                f"{unscaled:g} (loss scale left out) nor {unscaled * scale:g} (loss scale "
                f"{scale:g} applied): this DeepSpeed version scales fp16 losses at ZeRO stage 0 "
                "in a way adaact_dist does not know; use zero_stage 1 or 2 for fp16"
            )
    return grad if engine_scales[0] else grad * scale
