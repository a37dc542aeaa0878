"""Distributed glue: statistics sync, DeepSpeed ZeRO binding, checkpoints, failure bounds."""

from adaact_dist.distributed.deepspeed_binding import bind_deepspeed
from adaact_dist.distributed.process_group import init_distributed
from adaact_dist.distributed.torch_sync import TorchStatsSync
from adaact_dist.distributed.universal_checkpoint import convert_to_universal
from adaact_dist.distributed.watchdog import WATCHDOG_EXIT_CODE, HangWatchdog

__all__ = [
    "WATCHDOG_EXIT_CODE",
    "HangWatchdog",
    "TorchStatsSync",
    "bind_deepspeed",
    "convert_to_universal",
    "init_distributed",
]
