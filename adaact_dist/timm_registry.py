"""Registers AdaAct in timm's optimizer registry and offers a one-call factory.

timm's ``create_optimizer_v2`` builds the parameter groups from the model but hands
only those groups to the optimizer class, and AdaAct needs the model for its hooks.
So the registry entry takes ``model=`` as an extra keyword, and
``create_optimizer(model, ...)`` passes it for you.

timm's ``train.py`` scales a base learning rate by the square root of the batch size
for optimizer names containing "ada" (``--lr-base-scale`` empty). AdaAct's paper uses
linear scaling: pass ``--lr`` explicitly or ``--lr-base-scale linear``.
"""

from __future__ import annotations

from typing import Any

from timm.optim import OptimInfo, create_optimizer_v2, list_optimizers
from timm.optim._optim_factory import default_registry
from torch import nn

from adaact_dist.optim import AdaAct

NAME = "adaact"


def register() -> None:
    """Add ``"adaact"`` to timm's registry (idempotent)."""
    if NAME in list_optimizers():
        return
    default_registry.register(
        OptimInfo(
            name=NAME,
            opt_class=AdaAct,
            description="Adam-like steps scaled by per-feature input-activation second moments",
            has_betas=True,
        )
    )


def create_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.0, **kwargs: Any
) -> AdaAct:
    """AdaAct with timm's parameter grouping (no weight decay on 1-D parameters and biases).

    Extra keyword arguments go to ``timm.optim.create_optimizer_v2`` and then to
    :class:`AdaAct` (``betas``, ``eps``, ``stats_sync_every``, ``distributor``, ...).
    """
    register()
    return create_optimizer_v2(model, NAME, lr=lr, weight_decay=weight_decay, model=model, **kwargs)
