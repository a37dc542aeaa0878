"""adaact-dist: distributed large-batch training with the AdaAct optimizer."""

from adaact_dist.optim import AdaAct
from adaact_dist.timm_registry import create_optimizer, register

register()

__all__ = ["AdaAct", "create_optimizer"]
__version__ = "0.1.0"
