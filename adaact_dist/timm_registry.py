"""Registers AdaAct in timm's optimizer registry and offers a one-call factory.

timm's ``create_optimizer_v2`` builds the parameter groups from the model and hands only
those groups to the optimizer class, with the arguments of timm's ``train.py``
(``optimizer_kwargs(cfg=args)`` and ``--opt-kwargs``). The registry entry,
:func:`timm_adaact`, takes exactly that call: AdaAct finds the model from the groups.

- ``lr``, ``weight_decay`` (per group, by timm's grouping), ``eps`` (``--opt-eps``),
  ``betas`` (``--opt-betas``) and ``foreach`` go to AdaAct as they are.
- ``momentum`` (``--momentum``) is AdaAct's first-moment coefficient, ``betas[0]``.
- ``--layer-decay`` makes timm's layer groups with an ``lr_scale`` each, which timm's
  schedulers apply to ``lr``, as for any optimizer.
- ``--opt-kwargs`` may set AdaAct's own options: ``stats_sync_every``, ``other_rule``,
  ``other_momentum``; anything else is an error naming what AdaAct takes.
- Under ``torch.distributed`` with several ranks (timm's ``train.py`` under ``torchrun``),
  the ranks average their statistics through :class:`TorchStatsSync` unless a
  ``distributor`` is given; without that, DDP replicas would drift apart.

timm's ``train.py`` scales a base learning rate by the square root of the batch size for
optimizer names containing "ada" (``--lr-base-scale`` empty). AdaAct's paper uses
linear scaling: pass ``--lr`` explicitly or ``--lr-base-scale linear``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from timm.optim import OptimInfo, create_optimizer_v2, list_optimizers
from timm.optim._optim_factory import default_registry
from torch import nn

from adaact_dist.optim import AdaAct

NAME = "adaact"
# timm's ``--momentum`` default, which every run passes whether it was set or not.
TIMM_DEFAULT_MOMENTUM = 0.9
_ACCEPTED = [name for name in inspect.signature(AdaAct).parameters if name != "params"]


def timm_adaact(
    params: Iterable[Any],
    momentum: float = TIMM_DEFAULT_MOMENTUM,
    betas: Iterable[float] | None = None,
    **kwargs: Any,
) -> AdaAct:
    """AdaAct built as timm's ``create_optimizer_v2`` calls its optimizer classes."""
    unknown = sorted(set(kwargs) - set(_ACCEPTED))
    if unknown:
        raise TypeError(
            f"AdaAct does not take {', '.join(map(repr, unknown))} (from timm's optimizer "
            f"arguments or --opt-kwargs); it takes {', '.join(_ACCEPTED + ['momentum'])}"
        )
    betas = (momentum, 0.999) if betas is None else tuple(betas)
    if betas and momentum not in (TIMM_DEFAULT_MOMENTUM, betas[0]):
        raise ValueError(
            f"Invalid momentum={momentum!r} with betas={betas!r}: AdaAct's momentum is "
            "betas[0]; give one of them (--momentum or --opt-betas), or both equal"
        )
    params = list(params)
    fallback = [
        i for i, group in enumerate(params) if isinstance(group, dict) and group.get("use_fallback")
    ]
    if fallback:
        raise ValueError(
            f"timm marked parameter groups {fallback} for a fallback optimizer "
            "(fallback_list): AdaAct has none; leave fallback_list empty"
        )
    if "distributor" not in kwargs:
        kwargs["distributor"] = _rank_average()
    return AdaAct(params, betas=betas, **kwargs)


def _rank_average():
    """A :class:`TorchStatsSync` when several ranks run, else ``None``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from adaact_dist.distributed.torch_sync import TorchStatsSync

    return TorchStatsSync()


def register() -> None:
    """Add ``"adaact"`` to timm's registry (idempotent)."""
    if NAME in list_optimizers():
        return
    default_registry.register(
        OptimInfo(
            name=NAME,
            opt_class=timm_adaact,
            description="Adam-like steps scaled by per-feature input-activation second moments",
            has_momentum=True,
            has_betas=True,
        )
    )


def create_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.0, **kwargs: Any
) -> AdaAct:
    """AdaAct with timm's parameter grouping (no weight decay on 1-D parameters and biases).

    Extra keyword arguments go to ``timm.optim.create_optimizer_v2`` and then to
    :class:`AdaAct` (``betas``, ``eps``, ``stats_sync_every``, ``distributor``, ...). The
    statistics stay local unless ``distributor`` is given (``deepspeed_initialize``
    attaches one).
    """
    register()
    kwargs.setdefault("distributor", None)
    return create_optimizer_v2(model, NAME, lr=lr, weight_decay=weight_decay, model=model, **kwargs)
