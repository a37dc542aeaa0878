"""Bound every collective of the job by one timeout, so a dead rank cannot stall the rest."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from adaact_dist.distributed.op_builds import use_private_op_builds

_timeout: timedelta | None = None


def init_distributed(timeout_s: float = 600.0, backend: str | None = None) -> None:
    """``deepspeed.init_distributed`` with collectives bounded by ``timeout_s``.

    Works under the deepspeed launcher, torchrun and Slurm (DeepSpeed reads their
    environment). When a rank dies, the others' next collective fails after at most
    ``timeout_s`` instead of torch's default of 30 minutes (gloo raises; NCCL's watchdog
    aborts the communicator), so the job ends with an error. Groups created later (the
    ones DeepSpeed builds in ``deepspeed.initialize``) start with torch's default;
    :func:`bound_engine_collectives` applies this timeout to the engine's.
    ``backend`` defaults to DeepSpeed's choice (nccl on GPUs, gloo on CPU).
    """
    global _timeout
    timeout = _as_timeout(timeout_s)
    if dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is already initialised, so its timeout can no longer be set: "
            "call adaact_dist.distributed.init_distributed() before anything else starts it"
        )
    import deepspeed  # heavy; only the distributed entry points need it

    use_private_op_builds()  # the CPU comm op is built here
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    _timeout = timeout


def bound_engine_collectives(engine: Any, timeout_s: float | None = None) -> None:
    """Bound every collective of a DeepSpeed ``engine``'s process groups, whatever its optimizer.

    DeepSpeed creates its groups with torch's 30-minute default; call this on every rank
    right after ``deepspeed.initialize``. ``timeout_s`` defaults to the one given to
    :func:`init_distributed`.
    """
    groups = [None, engine.data_parallel_group, engine.seq_data_parallel_group]
    groups += list(getattr(engine.optimizer, "real_dp_process_group", []))
    bound_collectives(groups, timeout_s)


def bound_collectives(groups: Iterable[dist.ProcessGroup | None], timeout_s: float | None) -> None:
    """Apply ``timeout_s`` (or the one given to :func:`init_distributed`) to ``groups``.

    ``None`` in ``groups`` is the default group. Without any timeout nothing changes.
    """
    timeout = _timeout if timeout_s is None else _as_timeout(timeout_s)
    if timeout is None or not dist.is_initialized():
        return
    seen = set()
    for group in groups:
        group = group if group is not None else dist.group.WORLD
        if id(group) not in seen:
            seen.add(id(group))
            dist.set_timeout(timeout, group)


def _as_timeout(timeout_s: float) -> timedelta:
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"Invalid timeout_s={timeout_s!r}: must be a number of seconds > 0")
    return timedelta(seconds=timeout_s)
