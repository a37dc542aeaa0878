"""Preconditioned layers: which modules AdaAct hooks, and where their statistics live.

Every layer's running second moment ``V``, its frozen preconditioner ``D`` and the
pending sums of the current step are views into three flat buffers. One flat ``V``
is what makes the distributed sync a single collective.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from adaact_dist.optim._statistics import (
    ConvGeometry,
    accumulation_dtype,
    conv2d_input_sum_sq,
    linear_input_sum_sq,
)

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(eq=False)
class PreconditionedLayer:
    """One Linear or Conv2d whose weight AdaAct preconditions per input feature."""

    name: str
    module: nn.Linear | nn.Conv2d
    groups: int
    feature_shape: tuple[int, ...]
    offset: int
    second_moment: Tensor = field(init=False, repr=False)
    precond: Tensor = field(init=False, repr=False)
    pending_sum: Tensor = field(init=False, repr=False)
    pending_count: int = 0
    step: int = 0
    running: int = 0
    """How many calls of the module are in progress (its pre-hook ran, its forward did not end)."""
    geometry: ConvGeometry | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        conv = isinstance(self.module, nn.Conv2d)
        self.geometry = ConvGeometry.of_module(self.module) if conv else None

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.module.bias

    @property
    def numel(self) -> int:
        return int(torch.Size(self.feature_shape).numel())

    @property
    def row(self) -> int:
        """Elements in one row of the weight: the features one output reads."""
        return math.prod(self.weight.shape[1:])

    def table_positions(self) -> Tensor:
        """Where each feature sits in the flat per-feature buffers (``V``, ``D``), laid out as
        the rows of ``D``: shape ``(groups, row)``."""
        return torch.arange(self.offset, self.offset + self.numel).view(self.groups, self.row)

    def precond_for_weight(self) -> Tensor:
        """``D`` broadcast over the rows of each group: shape ``(groups, rows, *w.shape[1:])``."""
        weight = self.weight
        grid = self.precond.view(self.groups, 1, *weight.shape[1:])
        return grid.expand(self.groups, weight.shape[0] // self.groups, *weight.shape[1:])

    def accumulate(self, x: Tensor, geometry: ConvGeometry | None = None) -> None:
        """Add the squares of one input (of a module call, or of a direct call's ``geometry``)."""
        if isinstance(self.module, nn.Conv2d):
            sums, count = conv2d_input_sum_sq(geometry or self.geometry, x)
        else:
            sums, count = linear_input_sum_sq(x)
        # The sums keep the input's memory order: add by index, not by flattening them.
        self.pending_sum.view(self.feature_shape).add_(sums)
        self.pending_count += count


class LayerTable:
    """The preconditioned layers of a model, their flat buffers and their hooks."""

    def __init__(
        self, root: nn.Module, layers: list[PreconditionedLayer], dtype: torch.dtype, device
    ):
        self.root = root
        self.layers = layers
        total = sum(layer.numel for layer in layers)
        self.second_moment = torch.zeros(total, dtype=dtype, device=device)
        self.precond = torch.zeros(total, dtype=dtype, device=device)
        self.pending_sum = torch.zeros(total, dtype=dtype, device=device)
        self._bind_views()
        self._handles: list = []

    def _bind_views(self) -> None:
        for layer in self.layers:
            span = slice(layer.offset, layer.offset + layer.numel)
            layer.second_moment = self.second_moment[span]
            layer.precond = self.precond[span]
            layer.pending_sum = self.pending_sum[span]

    def to(self, device: torch.device) -> None:
        """Follow the model when an engine moves it after the optimizer was built."""
        self.second_moment = self.second_moment.to(device)
        self.precond = self.precond.to(device)
        self.pending_sum = self.pending_sum.to(device)
        self._bind_views()

    def register_hooks(self) -> None:
        for layer in self.layers:
            module = layer.module
            self._handles += [
                module.register_forward_pre_hook(self._pre_hook(layer)),
                module.register_forward_hook(self._post_hook(layer), always_call=True),
            ]

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def collect(self, layer: PreconditionedLayer, x: Tensor, geometry=None) -> None:
        x = x.detach()
        if x.device != self.pending_sum.device:
            self.to(x.device)
        layer.accumulate(x, geometry)

    def _pre_hook(self, layer: PreconditionedLayer):
        def collect(module: nn.Module, args: tuple) -> None:
            layer.running += 1
            if module.training and torch.is_grad_enabled():
                self.collect(layer, args[0])

        return collect

    @staticmethod
    def _post_hook(layer: PreconditionedLayer):
        def done(module: nn.Module, args: tuple, output) -> None:
            layer.running -= 1

        return done

    def clear_pending(self) -> None:
        self.pending_sum.zero_()
        for layer in self.layers:
            layer.pending_count = 0


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP, DeepSpeed or ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def find_layers(model: nn.Module, params: Iterable[Tensor]) -> LayerTable:
    """Build the table of supported layers of ``model`` whose weight is in ``params``."""
    model = unwrap_model(model)
    wanted = {id(p) for p in params}
    owners: dict[int, str] = {}
    layers: list[PreconditionedLayer] = []
    offset = 0
    for name, module in model.named_modules():
        if not isinstance(module, SUPPORTED_LAYERS) or id(module.weight) not in wanted:
            continue
        if id(module.weight) in owners:
            raise NotImplementedError(
                f"Layers {owners[id(module.weight)]!r} and {name!r} share one weight tensor; "
                "AdaAct preconditions a weight by the inputs of one module. Call the same "
                "module twice instead of tying weights across modules."
            )
        owners[id(module.weight)] = name
        if isinstance(module, nn.Conv2d):
            groups = module.groups
            feature_shape = (module.in_channels, *module.kernel_size)
        else:
            groups = 1
            feature_shape = (module.in_features,)
        layer = PreconditionedLayer(name, module, groups, feature_shape, offset)
        offset += layer.numel
        layers.append(layer)
    if not layers:
        return LayerTable(model, [], torch.float32, "cpu")
    weights = [layer.weight for layer in layers]
    dtype = accumulation_dtype(weights[0].dtype)
    if any(w.dtype == torch.float64 for w in weights):
        dtype = torch.float64
    return LayerTable(model, layers, dtype, weights[0].device)
