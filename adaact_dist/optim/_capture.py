"""Statistics of weights that a model uses without calling their module.

Some models pass a layer's weight to ``F.linear`` themselves: timm's BEiT and EVA
attention call ``F.linear(x, self.qkv.weight, qkv_bias)`` to add a bias they build on
the fly, so the ``nn.Linear`` never runs and its forward pre-hook never sees an input.
The weight is still the layer's and its inputs are still real activations, so AdaAct
reads them where they are used: a :class:`~torch.overrides.TorchFunctionMode` sees
every ``F.linear`` / ``F.conv2d`` call and takes the statistics of those whose weight
is a preconditioned layer's, from the call's own input and geometry. The result is the
same as if the module had been called.

While active, the mode costs one Python call per torch function, so it is active only
where it is needed. The first training forward runs entirely under it, and records in
which module's forward (the *scope*) each such call happens. After that the mode is
entered only in those scopes' forwards: a model that calls all its layers (nearly every
model) never pays for it again.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from adaact_dist.optim._layers import LayerTable, PreconditionedLayer
from adaact_dist.optim._statistics import ConvGeometry

_CONV2D_OPTIONS = ("bias", "stride", "padding", "dilation", "groups")


def _training(module: nn.Module) -> bool:
    return module.training and torch.is_grad_enabled() and not torch.compiler.is_compiling()


class DirectCallCapture(TorchFunctionMode):
    """Finds, then keeps reading, the layers whose weight goes to ``F.linear``/``F.conv2d``."""

    def __init__(self, table: LayerTable):
        super().__init__()
        self.table = table
        self.discovered = False
        self.scopes: dict[PreconditionedLayer, nn.Module] = {}
        """Each layer read from a direct call, and the module whose forward makes it."""
        self._watched: dict[int, PreconditionedLayer] = {}
        self._running: list[nn.Module] = []  # the module stack, during discovery only
        self._depth = 0
        self._handles: list[RemovableHandle] = []
        self._discovery_handles: list[RemovableHandle] = []

    # -- hooks ---------------------------------------------------------------------------
    def attach(self, root: nn.Module) -> None:
        self._handles += [
            root.register_forward_pre_hook(self._begin_discovery),
            root.register_forward_hook(self._end_discovery, always_call=True),
        ]
        for scope in set(self.scopes.values()):
            self._attach_scope(scope)

    def detach(self) -> None:
        for handle in self._handles + self._discovery_handles:
            handle.remove()
        self._handles.clear()
        self._discovery_handles.clear()

    def _attach_scope(self, scope: nn.Module) -> None:
        self._handles += [
            scope.register_forward_pre_hook(self._enter_scope),
            scope.register_forward_hook(self._exit_scope, always_call=True),
        ]

    def _begin_discovery(self, root: nn.Module, args: Any) -> None:
        if self.discovered or not _training(root):
            return
        self._watched = {id(layer.weight): layer for layer in self.table.layers}
        self._running = [root]
        for module in root.modules():
            if module is not root:
                self._discovery_handles += [
                    module.register_forward_pre_hook(self._push),
                    module.register_forward_hook(self._pop, always_call=True),
                ]
        self.__enter__()

    def _end_discovery(self, root: nn.Module, args: Any, output: Any) -> None:
        if self.discovered or not self._running:
            return
        self.__exit__(None, None, None)
        for handle in self._discovery_handles:
            handle.remove()
        self._discovery_handles.clear()
        self._running = []
        self.discovered = True
        self._watched = {id(layer.weight): layer for layer in self.scopes}
        for scope in set(self.scopes.values()):
            self._attach_scope(scope)

    def _push(self, module: nn.Module, args: Any) -> None:
        self._running.append(module)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        self._running.pop()

    def _enter_scope(self, module: nn.Module, args: Any) -> None:
        if self._depth or _training(module):
            self._depth += 1
            if self._depth == 1:
                self.__enter__()

    def _exit_scope(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._depth:
            self._depth -= 1
            if self._depth == 0:
                self.__exit__(None, None, None)

    # -- the mode ------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or func is F.conv2d:
            self._observe(func, args, kwargs)
        return func(*args, **kwargs)

    def _observe(self, func, args: tuple, kwargs: dict) -> None:
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        layer = self._watched.get(id(weight))
        if layer is None or layer.running or not torch.is_grad_enabled():
            return  # not ours, or inside the module's own forward (its hook took it)
        x = args[0] if args else kwargs["input"]
        geometry = None
        if func is F.conv2d:
            options = {**dict(zip(_CONV2D_OPTIONS, args[2:])), **kwargs}
            groups = options.get("groups", 1)
            if groups != layer.groups:
                raise NotImplementedError(
                    f"AdaAct: layer {layer.name!r} (groups={layer.groups}) has its weight used "
                    f"in F.conv2d with groups={groups}; its statistics would not fit the layer"
                )
            geometry = ConvGeometry.of_call(
                weight,
                options.get("stride", 1),
                options.get("padding", 0),
                options.get("dilation", 1),
            )
        elif not isinstance(layer.module, nn.Linear):
            return  # a convolution weight in F.linear: no layer geometry to read it by
        self.table.collect(layer, x, geometry)
        if self._running:
            self.scopes.setdefault(layer, self._running[-1])
