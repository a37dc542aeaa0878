"""Averages AdaAct's activation statistics over a torch.distributed process group."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


class TorchStatsSync:
    """The distributor for plain torch.distributed (DDP under torchrun, or DeepSpeed).

    ``average_`` is one all-reduce of AdaAct's flat ``V`` buffer: every layer at once.
    """

    def __init__(self, group: dist.ProcessGroup | None = None):
        if not dist.is_initialized():
            raise RuntimeError(
                "TorchStatsSync needs an initialised process group: call "
                "torch.distributed.init_process_group() (or deepspeed.init_distributed()) first"
            )
        self.group = group
        self.world_size = dist.get_world_size(group)

    def average_(self, flat: Tensor) -> None:
        if self.world_size == 1:
            return
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat.div_(self.world_size)
