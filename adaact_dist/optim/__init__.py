"""The AdaAct optimizer core: torch only, no distributed engine, no data."""

from adaact_dist.optim._adaact import AdaAct, StatsDistributor
from adaact_dist.optim._fragments import Fragment
from adaact_dist.optim._functional import adaact

__all__ = ["AdaAct", "Fragment", "StatsDistributor", "adaact"]
