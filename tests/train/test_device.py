"""No silent CPU fallback: a GPU recipe stops where torch sees no GPU, saying why, and the CPU
is used where asked for; the settings applied to a CUDA device. The node's CUDA facts are
injected, so every reason is checked on any machine."""

from __future__ import annotations

import logging

import pytest
import torch

from adaact_dist.train import device as device_module
from adaact_dist.train.config import ConfigValueError, DistributedConfig
from adaact_dist.train.device import CudaFacts, apply_cuda_settings, resolve_device, why_no_cuda
from tests.train.helpers import train

EXIT_CONFIG = 2
CUDA_BUILD = CudaFacts(
    torch_version="2.14.1",
    torch_cuda="13.0",
    driver_cuda=(13, 0),
    kernel_module="NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06",
    visible_devices=None,
)


def facts(**changes) -> CudaFacts:
    return CudaFacts(**{**CUDA_BUILD.__dict__, **changes})


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"torch_cuda": None}, "torch 2.14.1 is a CPU-only build"),
        ({"visible_devices": ""}, "CUDA_VISIBLE_DEVICES='' hides every GPU"),
        ({"visible_devices": "-1"}, "CUDA_VISIBLE_DEVICES='-1' hides every GPU"),
        (
            {"driver_cuda": None, "kernel_module": None},
            "no NVIDIA driver library (libcuda.so.1) on this node",
        ),
        (
            {"driver_cuda": (12, 4)},
            "the NVIDIA driver is too old: it supports CUDA up to 12.4, and torch 2.14.1 is "
            "built for CUDA 13.0",
        ),
        ({"driver_cuda": (13, 1)}, "the NVIDIA driver (CUDA 13.1) reports no usable GPU"),
    ],
)
def test_the_reason_names_what_was_found(changes, reason):
    assert reason in why_no_cuda(facts(**changes))


@pytest.fixture
def no_gpu(monkeypatch):
    """A node whose driver is too old for this torch's CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "read_cuda_facts", lambda: facts(driver_cuda=(12, 2)))


def test_a_gpu_recipe_stops_where_torch_sees_no_gpu(no_gpu):
    with pytest.raises(ConfigValueError) as error:
        resolve_device(DistributedConfig(device="cuda"), local_rank=0)
    assert error.value.key == "distributed.device"
    message = str(error.value)
    assert "supports CUDA up to 12.2" in message and "set distributed.device=cpu" in message


def test_auto_falls_back_to_the_cpu_saying_why_once(no_gpu, caplog):
    logger = logging.getLogger("adaact_dist")
    logger.addHandler(caplog.handler)
    try:
        assert resolve_device(DistributedConfig(device="auto"), local_rank=0).type == "cpu"
    finally:
        logger.removeHandler(caplog.handler)
    (note,) = [r.getMessage() for r in caplog.records if "distributed.device" in r.getMessage()]
    assert "training on the CPU" in note and "supports CUDA up to 12.2" in note
    caplog.clear()
    resolve_device(DistributedConfig(device="auto"), local_rank=1, announce=False)
    assert not caplog.records


def test_the_cpu_asked_for_is_the_cpu(monkeypatch):
    monkeypatch.setattr(device_module, "read_cuda_facts", lambda: pytest.fail("probed CUDA"))
    assert resolve_device(DistributedConfig(device="cpu"), local_rank=0).type == "cpu"


@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_settings(tf32):
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
    )
    try:
        apply_cuda_settings(DistributedConfig(tf32=tf32))
        assert torch.backends.cudnn.benchmark
        want = "tf32" if tf32 else "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == want
        assert torch.backends.cudnn.conv.fp32_precision == want
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.backends.cuda.matmul.fp32_precision = saved[1]
        torch.backends.cudnn.conv.fp32_precision = saved[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here: the recipe uses it")
def test_the_a2_recipe_on_a_node_without_gpu_is_one_config_error(tmp_path):
    done = train("--config", "a2_resnet50", "--set", f"run.output_dir={tmp_path / 'run'}")
    assert done.returncode == EXIT_CONFIG, done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("config error")]
    assert error.startswith("config error: Invalid distributed.device='cuda' in ")
    assert "a2_resnet50.yaml: must be 'cpu' on this node, where torch sees no CUDA device" in error
    assert error.endswith("For a CPU dry run of a GPU recipe, set distributed.device=cpu")
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
