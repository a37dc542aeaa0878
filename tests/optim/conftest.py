"""Optimizer-core tests that take ``device`` run on the CPU and, where one exists, on CUDA."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here (python -m benchmarks.gpu_check runs these on one)")
    return torch.device(request.param)
