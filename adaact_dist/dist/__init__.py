"""Distributed glue: statistics sync and DeepSpeed ZeRO bindings for AdaAct."""

from adaact_dist.dist.torch_sync import TorchStatsSync

__all__ = ["TorchStatsSync"]
