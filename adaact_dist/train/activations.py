"""Per-layer activation variance during training: the quantity of the paper's Figure 1.

"We flatten the activations of these layers and compute the variance for each
activation [over the batch], then average these variances." For every ``nn.Linear``
and ``nn.Conv2d`` the probe records, on probe steps only, the mean over output
elements of their variance across the micro-batch. It measures the model, not the
optimizer, so AdaAct, SGD and AdamW runs are comparable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PROBED = (nn.Linear, nn.Conv2d)


CHUNK_ELEMENTS = 1 << 22
"""Elements of the largest fp32 temporary the probe makes (16 MB): it reads a layer's output in
batch chunks of about this size, where a float copy of the whole output of a ResNet stem at
micro-batch 512 would take 1.6 GB, and the variance's deviations as much again."""


def mean_batch_variance(output: Tensor) -> Tensor:
    """The mean over elements of each element's variance across the batch (dim 0), in fp32.

    Two passes (mean, then squared deviations), each over batch chunks of at most
    :data:`CHUNK_ELEMENTS` elements, so its temporaries stay small whatever the output's size.
    """
    rows = max(1, CHUNK_ELEMENTS // max(1, output[0].numel()))
    total = torch.zeros(output.shape[1:], dtype=torch.float32, device=output.device)
    for chunk in output.split(rows):
        total += chunk.sum(dim=0, dtype=torch.float32)
    mean = total / output.shape[0]
    squares = torch.zeros_like(total)
    for chunk in output.split(rows):
        squares += (chunk.float() - mean).square().sum(dim=0)
    return (squares / output.shape[0]).mean()


class ActivationProbe:
    """Forward hooks that measure output variance only while armed (one forward per probe step)."""

    def __init__(self, model: nn.Module):
        self.names: list[str] = []
        self._pending: dict[str, Tensor] = {}
        self._armed = False
        for name, module in model.named_modules():
            if isinstance(module, PROBED):
                self.names.append(name)
                module.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not self._armed or name in self._pending or not isinstance(output, Tensor):
                return
            if output.shape[0] < 2:
                return
            with torch.no_grad():
                self._pending[name] = mean_batch_variance(output.detach())

        return hook

    def arm(self) -> None:
        """Measure during the next forward."""
        self._pending = {}
        self._armed = True

    def collect(self) -> dict[str, float]:
        """Stop measuring; each probed layer's variance, in model order."""
        self._armed = False
        values = {name: float(self._pending[name]) for name in self.names if name in self._pending}
        self._pending = {}
        return values


def input_second_moments(optimizer: object) -> dict[str, float]:
    """Mean of AdaAct's running per-feature ``V`` per layer; empty for other optimizers."""
    getter = getattr(optimizer, "activation_second_moments", None)
    if getter is None:
        return {}
    return {name: float(v.float().mean()) for name, v in getter().items()}
