"""The AdaAct parameter update as plain functions over parallel lists of tensors.

The for-loop path is the readable reference; the foreach path does the same with one
multi-tensor kernel per operation. A float64 test checks that they agree.
"""

from __future__ import annotations

import torch
from torch import Tensor


def adaact(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    preconds: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    weight_decay: float,
    foreach: bool,
) -> None:
    """``M <- lerp(M, G, 1 - beta1)``; ``W <- W (1 - lr wd) - lr (M / (1 - beta1^t)) D``.

    ``preconds[i]`` has the shape of ``params[i]`` (usually a stride-0 expansion of the
    per-feature ``D``); ``steps[i]`` is the step count ``t`` after this step.
    """
    if not params:
        return
    step_sizes = [-lr / (1.0 - beta1**step) for step in steps]
    if foreach:
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        if weight_decay != 0.0:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        torch._foreach_addcmul_(params, exp_avgs, preconds, step_sizes)
        return
    for param, grad, exp_avg, precond, step_size in zip(
        params, grads, exp_avgs, preconds, step_sizes
    ):
        exp_avg.lerp_(grad, 1.0 - beta1)
        if weight_decay != 0.0:
            param.mul_(1.0 - lr * weight_decay)
        param.addcmul_(exp_avg, precond, value=step_size)


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    foreach: bool,
) -> None:
    """The rule for parameters that are not preconditioned: SGD, decoupled weight decay.

    With ``momentum == 0`` this is the reference rule ``p <- p (1 - lr wd) - lr g``;
    otherwise ``b <- momentum b + g`` and the step uses ``b``.
    """
    if not params:
        return
    if momentum != 0.0:
        if foreach:
            torch._foreach_mul_(momentum_buffers, momentum)
            torch._foreach_add_(momentum_buffers, grads)
        else:
            for buffer, grad in zip(momentum_buffers, grads):
                buffer.mul_(momentum).add_(grad)
        grads = momentum_buffers
    if foreach:
        if weight_decay != 0.0:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        torch._foreach_add_(params, grads, alpha=-lr)
        return
    for param, grad in zip(params, grads):
        if weight_decay != 0.0:
            param.mul_(1.0 - lr * weight_decay)
        param.add_(grad, alpha=-lr)


def refresh_preconditioner(
    second_moments: list[Tensor],
    preconds: list[Tensor],
    steps: list[int],
    *,
    beta2: float,
    eps: float,
) -> None:
    """``D <- 1 / (sqrt(V / (1 - beta2^t)) + eps)``, written into ``preconds``."""
    if not second_moments:
        return
    bias_corrections = [1.0 - beta2**step for step in steps]
    values = torch._foreach_div(second_moments, bias_corrections)
    torch._foreach_sqrt_(values)
    torch._foreach_add_(values, eps)
    torch._foreach_reciprocal_(values)
    torch._foreach_copy_(preconds, values)


def fold_statistics(
    second_moments: list[Tensor],
    pending_sums: list[Tensor],
    counts: list[int],
    *,
    beta2: float,
) -> None:
    """``V <- beta2 V + (1 - beta2) A`` with ``A`` the mean of this step's samples."""
    if not second_moments:
        return
    torch._foreach_div_(pending_sums, [float(count) for count in counts])
    torch._foreach_lerp_(second_moments, pending_sums, 1.0 - beta2)
