"""Joining the job under every launcher: deepspeed, torchrun, Slurm ``srun``, plain python.

The deepspeed launcher and torchrun export ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``. Under ``srun`` they are derived from ``SLURM_*``
(the first host of the node list is the master). A plain ``python`` run becomes a
one-rank group on localhost. Every collective then waits at most
``distributed.timeout_s``: a dead rank ends the job within that bound.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import socket
import warnings
from dataclasses import dataclass

import torch

from adaact_dist.train.config import DistributedConfig
from adaact_dist.train.device import resolve_device
from adaact_dist.train.logger import get_logger

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Job:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str


def detect_launcher(environ: dict[str, str] | None = None) -> str:
    """``env`` (deepspeed launcher, torchrun), ``slurm``, or ``single`` (plain python)."""
    env = os.environ if environ is None else environ
    if all(key in env for key in ("RANK", "WORLD_SIZE")):
        return "env"
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return "slurm"
    return "single"


def fill_env(environ: dict[str, str] | None = None) -> str:
    """Export the torch.distributed variables for this launcher; return its kind."""
    env = os.environ if environ is None else environ
    kind = detect_launcher(env)
    if kind == "slurm":
        env.setdefault("RANK", env["SLURM_PROCID"])
        env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
        env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        # One port per job, stable across its tasks.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    elif kind == "single":
        env.setdefault("RANK", "0")
        env.setdefault("WORLD_SIZE", "1")
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    else:
        env.setdefault("LOCAL_RANK", env.get("LOCAL_RANK", "0"))
    missing = [key for key in _ENV if key not in env]
    if missing:
        raise RuntimeError(
            f"The launcher set RANK/WORLD_SIZE but not {missing}: launch with deepspeed, "
            "torchrun or srun, or plain python for one process"
        )
    return kind


def first_slurm_host(nodelist: str) -> str:
    """``node[03-05,9],other`` -> ``node03`` (what ``scontrol show hostnames`` lists first)."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        return nodelist
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ExpectedWarnings(logging.Filter):
    """DeepSpeed warnings that the trainer's choices make expected, hence noise."""

    EXPECTED = ("untested optimizer",)  # AdaAct is a client optimizer on ZeRO by design

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.EXPECTED)


def hush_deprecated_all_gather() -> None:
    """Ignore torch's FutureWarning that ``all_gather_into_tensor`` is deprecated, and only it.

    DeepSpeed's ZeRO-1/2 step all-gathers the updated partitions through that function (torch
    2.14 deprecates it); the warning says nothing a user can act on. Python prints a warning
    once per call site, but every ``warnings.catch_warnings()`` in the process resets that
    record (the demo decodes each JPEG under one), so it came back at every step on every rank
    (440 lines of ``make demo``).
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
        category=FutureWarning,
    )


def share_cpu_cores() -> None:
    """CPU ranks on one node split its cores (unless OMP_NUM_THREADS says otherwise):
    several ranks each spinning one OpenMP thread per core slow each other down badly."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")
    if local is None and "SLURM_NTASKS_PER_NODE" in os.environ:
        local = os.environ["SLURM_NTASKS_PER_NODE"].split("(")[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // max(1, int(local or 1))))


def join_job(config: DistributedConfig) -> Job:
    """Fill the environment, pick the device, and initialise the bounded process group."""
    launcher = fill_env()
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(config, local_rank, announce=os.environ["RANK"] == "0")
    if device.type == "cpu":
        # DeepSpeed picks its accelerator at import; say "cpu" rather than let it probe, and
        # hush torch's "no CUDA runtime" note when DeepSpeed loads its CPU comm op.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        share_cpu_cores()
    backend = config.backend if config.backend != "auto" else None
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    quiet = int(os.environ["RANK"]) != 0  # other ranks print nothing but problems
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        from deepspeed.utils import logger as ds_logger

        from adaact_dist.distributed import init_distributed

        ds_logger.setLevel("ERROR" if quiet else "WARNING")
        if not any(isinstance(f, _ExpectedWarnings) for f in ds_logger.filters):
            ds_logger.addFilter(_ExpectedWarnings())
        hush_deprecated_all_gather()
        if not torch.distributed.is_initialized():  # a second Trainer in one process reuses it
            init_distributed(timeout_s=config.timeout_s, backend=backend)
    job = Job(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=device,
        launcher=launcher,
    )
    get_logger(job.rank)
    return job


def leave_job() -> None:
    """Leave the process group cleanly (gloo may abort at exit otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
