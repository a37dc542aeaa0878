"""The model that owns an optimizer's parameters, found when no ``model=`` is given.

Most training scripts build the optimizer from parameters alone (timm's
``create_optimizer_v2``, torchvision's references, Lightning's ``configure_optimizers``,
Hugging Face's ``Trainer``), and a parameter does not know its module. So AdaAct asks
Python's garbage collector for the live ``nn.Module`` objects, once, when it is built,
and finds the modules that hold the given parameters. Why this way:

- At construction, not at the first forward: loading a checkpoint (a resumed run) and
  ``deepspeed_initialize``'s mapping of flat partitions come before any forward, and
  both need the layers.
- The hooks go on the ``nn.Linear``/``nn.Conv2d`` modules themselves, which wrappers
  keep inside them: wrapping the model in DDP or DeepSpeed, or ``torch.compile`` (whose
  graphs hold no parameters of their own), after the optimizer is built changes nothing.
- The model is the innermost module that holds every given parameter (the module
  holding it, if that is a single layer), with wrappers (DDP, DeepSpeed's engine,
  ``torch.compile``) skipped, so the module paths that key the statistics in
  checkpoints do not depend on what holds the model (timm's training task, a Lightning
  module, a wrapper built before the optimizer). It is the model itself whenever the
  model's parameters do not all sit in one of its submodules.

The cost is one pass over the objects the collector tracks (about 0.1 s with timm and a
ResNet-50 loaded); nothing happens per step.
"""

from __future__ import annotations

import gc
from typing import Any

from torch import Tensor, nn

from adaact_dist.optim._layers import unwrap_model


def find_model(param_groups: list[dict[str, Any]]) -> nn.Module:
    """The innermost module (wrappers skipped) that holds every parameter of ``param_groups``."""
    params = [p for group in param_groups for p in group["params"]]
    models, best, anywhere = _models_holding(params)
    if len(models) > 1:
        # Wrappers and containers dropped while in reference cycles linger until collected.
        gc.collect()
        models, best, anywhere = _models_holding(params)
    if len(models) == 1:
        return models[0]
    if models:
        names = sorted({type(model).__name__ for model in models})
        raise ValueError(
            f"AdaAct found {len(models)} different modules that each hold all the given "
            f"parameters ({', '.join(names)}) and cannot tell which is the model: pass it, "
            "AdaAct(params, model=model, ...)"
        )
    where, param = _first_missing(param_groups, best)
    reason = (
        "it belongs to another model than the other parameters"
        if id(param) in anywhere
        else "no nn.Module holds it"
    )
    raise ValueError(
        f"AdaAct could not find the module that owns parameter {where} (shape "
        f"{tuple(param.shape)}): {reason}. Pass model=, a module that owns all the given "
        "parameters (AdaAct(params, model=model, ...)), or give this one to another optimizer"
    )


def _models_holding(params: list[Tensor]) -> tuple[list[nn.Module], set[int], set[int]]:
    """The distinct models holding all ``params``; the ids of the params that the root
    holding most of them holds, and of those that any module holds (for errors)."""
    wanted = {id(p) for p in params}
    modules = [obj for obj in gc.get_objects() if issubclass(type(obj), nn.Module)]
    inside = {id(child) for m in modules for child in m._modules.values() if child is not None}
    models: dict[int, nn.Module] = {}
    best: set[int] = set()
    anywhere: set[int] = set()
    for root in modules:
        if id(root) in inside:
            continue
        paths = _owner_paths(root, wanted)
        anywhere.update(paths)
        if len(paths) > len(best):
            best = set(paths)
        if len(paths) == len(wanted):
            prefix = _common_prefix(paths.values())
            holder = root.get_submodule(".".join(prefix))
            if prefix and not holder._modules:
                # One layer's parameters (a head being fine-tuned): name it in its parent.
                holder = root.get_submodule(".".join(prefix[:-1]))
            model = unwrap_model(holder)
            models[id(model)] = model
    return list(models.values()), best, anywhere


def _owner_paths(root: nn.Module, wanted: set[int]) -> dict[int, list[str]]:
    """For each wanted parameter under ``root``, the path of the module holding it."""
    paths: dict[int, list[str]] = {}
    for name, module in root.named_modules():
        for param in module._parameters.values():
            if param is not None and id(param) in wanted and id(param) not in paths:
                paths[id(param)] = name.split(".") if name else []
    return paths


def _common_prefix(paths) -> list[str]:
    paths = list(paths)
    prefix = paths[0]
    for path in paths[1:]:
        n = 0
        while n < min(len(prefix), len(path)) and prefix[n] == path[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


def _first_missing(param_groups: list[dict[str, Any]], held: set[int]) -> tuple[str, Tensor]:
    for g, group in enumerate(param_groups):
        for i, param in enumerate(group["params"]):
            if id(param) not in held:
                return f"param_groups[{g}]['params'][{i}]", param
    raise AssertionError("a parameter is missing but none was found missing")
