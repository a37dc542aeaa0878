"""The device a rank trains on, and the settings every GPU trainer sets.

A recipe meant for GPUs says ``distributed.device: cuda``: on a node where torch sees no CUDA
device it stops, saying what was found (a CPU-only torch, no driver, a driver too old for the
CUDA that torch was built for, GPUs hidden by ``CUDA_VISIBLE_DEVICES``), instead of training on
the CPU over gloo. The CPU is used only where asked for (``cpu``; a dry run of a GPU recipe is
``--set distributed.device=cpu``) or where ``auto`` finds no GPU, which rank 0 logs with the
same reason.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from adaact_dist.train.config import ConfigValueError, DistributedConfig
from adaact_dist.train.logger import get_logger

_NVIDIA_PROC = Path("/proc/driver/nvidia/version")


@dataclass(frozen=True, kw_only=True)
class CudaFacts:
    """What this node says about CUDA, read once when torch sees no device."""

    torch_version: str
    torch_cuda: str | None
    """The CUDA version torch was built for (``torch.version.cuda``); None: a CPU-only build."""
    driver_cuda: tuple[int, int] | None
    """The newest CUDA the driver supports (``cuDriverGetVersion``); None: no ``libcuda``."""
    kernel_module: str | None
    """The NVIDIA kernel module's version line, if one is loaded."""
    visible_devices: str | None
    """``CUDA_VISIBLE_DEVICES``, if set."""


def read_cuda_facts() -> CudaFacts:
    module = _NVIDIA_PROC.read_text().splitlines()[0] if _NVIDIA_PROC.is_file() else None
    return CudaFacts(
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        driver_cuda=_driver_cuda_version(),
        kernel_module=module,
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def _driver_cuda_version() -> tuple[int, int] | None:
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, version.value % 1000 // 10


def why_no_cuda(facts: CudaFacts) -> str:
    """One sentence on why torch sees no CUDA device here, from ``facts``."""
    torch_build = f"torch {facts.torch_version}"
    if facts.torch_cuda is None:
        return f"{torch_build} is a CPU-only build; install a CUDA build (docker/cuda-pins.txt)"
    if facts.visible_devices is not None and facts.visible_devices.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={facts.visible_devices!r} hides every GPU"
    if facts.driver_cuda is None:
        module = "" if facts.kernel_module is None else f" (kernel module: {facts.kernel_module})"
        return f"no NVIDIA driver library (libcuda.so.1) on this node{module}"
    need = tuple(int(part) for part in facts.torch_cuda.split(".")[:2])
    driver = ".".join(map(str, facts.driver_cuda))
    if facts.driver_cuda < need:
        return (
            f"the NVIDIA driver is too old: it supports CUDA up to {driver}, and {torch_build} "
            f"is built for CUDA {facts.torch_cuda}; update the driver or install a torch built "
            "for the driver's CUDA"
        )
    return f"the NVIDIA driver (CUDA {driver}) reports no usable GPU"


def resolve_device(
    config: DistributedConfig, local_rank: int, *, announce: bool = True
) -> torch.device:
    """This rank's device under ``distributed.device``, with the CUDA settings applied;
    ``announce``: log why ``auto`` chose the CPU (rank 0 only, every rank finds the same)."""
    if config.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        reason = why_no_cuda(read_cuda_facts())
        if config.device == "cuda":
            raise ConfigValueError(
                "distributed.device",
                config.device,
                f"'cpu' on this node, where torch sees no CUDA device: {reason}. For a CPU dry "
                "run of a GPU recipe, set distributed.device=cpu",
            )
        if announce:
            get_logger().info("distributed.device=auto: training on the CPU, since %s", reason)
        return torch.device("cpu")
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    apply_cuda_settings(config)
    return torch.device("cuda", torch.cuda.current_device())


def apply_cuda_settings(config: DistributedConfig) -> None:
    """cuDNN's algorithm search for fixed shapes, and TF32 only where the config opts in
    (torch's default lets cuDNN convolutions use TF32 even in fp32 runs)."""
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    precision = "tf32" if config.tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
