"""A float64 AdaAct written straight from the project's algorithm page (``ALGORITHM.md``
beside the repository, in ``../shared/``; the same steps are the math in
:class:`adaact_dist.optim.AdaAct`'s docstring), with im2col, sharing no code.

It records each layer's inputs with its own hooks, forms the augmented sample matrix
explicitly (``F.unfold`` for convolutions) and applies steps 1-6 per group of rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_samples(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """im2col patches of ``x`` as ``(groups, samples, features)``."""
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    else:
        padding = module.padding
    cols = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
    cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N*L, C*kh*kw)
    return cols.reshape(cols.shape[0], module.groups, -1).transpose(0, 1)


class OracleAdaAct:
    """Steps a float64 model exactly as ALGORITHM.md says; groups as in torch."""

    def __init__(self, model: nn.Module, groups: list[dict], betas, eps):
        self.model, self.groups, (self.beta1, self.beta2), self.eps = model, groups, betas, eps
        self.layers = {m: [] for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        for module in self.layers:
            module.register_forward_pre_hook(self._record)
        self.V, self.M, self.t = {}, {}, 0

    def _record(self, module, args):
        if module.training and torch.is_grad_enabled():
            self.layers[module].append(args[0].detach())

    def _samples(self, module) -> torch.Tensor:
        if isinstance(module, nn.Conv2d):
            a = torch.cat([conv_samples(module, x) for x in self.layers[module]], dim=1)
        else:
            a = torch.cat([x.reshape(-1, x.shape[-1]) for x in self.layers[module]])[None]
        if module.bias is not None:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        return a  # (groups, samples, features [+1])

    def _group_of(self, p):
        return next(g for g in self.groups if any(p is q for q in g["params"]))

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        handled = set()
        for module in self.layers:
            group = self._group_of(module.weight)
            lr, wd = group["lr"], group["weight_decay"]
            a = self._samples(module)
            A = (a * a).mean(dim=1)  # (groups, features)
            V = self.V[module] = b2 * self.V.get(module, 0.0) + (1 - b2) * A
            D = 1.0 / ((V / (1 - b2**t)).sqrt() + self.eps)
            n_groups = A.shape[0]
            W = module.weight.view(n_groups, module.weight.shape[0] // n_groups, -1)
            G = module.weight.grad.view_as(W)
            if module.bias is not None:
                W = torch.cat([W, module.bias.view(n_groups, -1, 1)], dim=-1)
                G = torch.cat([G, module.bias.grad.view(n_groups, -1, 1)], dim=-1)
            M = self.M[module] = b1 * self.M.get(module, 0.0) + (1 - b1) * G
            W_new = W * (1 - lr * wd) - lr * (M / (1 - b1**t)) * D[:, None, :]
            if module.bias is not None:
                bias_group = self._group_of(module.bias)
                # the bias column uses its own group's lr and decay
                b_lr, b_wd = bias_group["lr"], bias_group["weight_decay"]
                b_new = (
                    W[..., -1] * (1 - b_lr * b_wd)
                    - b_lr * (M[..., -1] / (1 - b1**t)) * D[:, None, -1]
                )
                module.bias.copy_(b_new.reshape(-1))
                W_new = W_new[..., :-1]
                handled.add(module.bias)
            module.weight.copy_(W_new.reshape(module.weight.shape))
            handled.add(module.weight)
            self.layers[module].clear()
        for group in self.groups:
            for p in group["params"]:
                if p not in handled and p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(p.grad, alpha=-group["lr"])
