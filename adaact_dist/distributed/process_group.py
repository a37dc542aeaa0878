"""Bound every collective of the job by one timeout, so a dead rank cannot stall the rest."""

from __future__ import annotations

import os
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
    ``backend`` defaults to DeepSpeed's choice (nccl on GPUs, gloo on CPU). Under torchrun
    the group meets in this attempt's own keys (:func:`elastic_attempt_store`).
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
    store = elastic_attempt_store(timeout)
    if store is not None:  # DeepSpeed adopts a group that is already there
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    _timeout = timeout


def elastic_attempt_store(timeout: timedelta) -> dist.Store | None:
    """The torchrun agent's store, seen through a prefix of this restart attempt; None where
    torchrun's workers do not share the agent's store (or there is no torchrun).

    The agent serves one TCPStore at ``MASTER_ADDR:MASTER_PORT`` for the whole job: the
    static rendezvous (torchrun without ``--rdzv-backend``) and c10d's shared store keep it
    across restarts, but torch's ``env://`` set-up writes the same keys in every attempt. A
    restarted worker can then read the addresses that the killed attempt's ranks listened on
    (``Gloo connectFullMesh failed ... Connection refused``) and the restart fails or hangs.
    Keys under ``TORCHELASTIC_RESTART_COUNT`` are this attempt's only. That count is the
    same on every rank where each agent restarts its workers once per failure (one node; the
    static rendezvous); a multi-node c10d job counts per node, so it must not share the store
    (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, as ``launch/torchrun_multinode.sh`` sets): then
    rank 0 hosts a new store on a new port in every round.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"adaact/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}/", store)


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
