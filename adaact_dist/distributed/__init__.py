"""Distributed glue: statistics sync, DeepSpeed ZeRO binding, checkpoints, failure bounds."""

from adaact_dist.distributed.deepspeed_binding import deepspeed_initialize
from adaact_dist.distributed.fp16_loss_scale import apply_stage0_loss_scale
from adaact_dist.distributed.process_group import bound_engine_collectives, init_distributed
from adaact_dist.distributed.torch_sync import TorchStatsSync
from adaact_dist.distributed.universal_checkpoint import convert_to_universal
from adaact_dist.distributed.watchdog import WATCHDOG_EXIT_CODE, HangWatchdog

__all__ = [
    "WATCHDOG_EXIT_CODE",
    "HangWatchdog",
    "TorchStatsSync",
    "apply_stage0_loss_scale",
    "bound_engine_collectives",
    "convert_to_universal",
    "deepspeed_initialize",
    "init_distributed",
]
