"""The activation probe: the paper's per-layer variance, measured in batch chunks whose
temporaries stay small whatever the layer's output (profiled allocations on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from adaact_dist.train import activations
from adaact_dist.train.activations import ActivationProbe, mean_batch_variance

CHUNK = 1 << 14  # elements: two samples of the outputs below


def reference(output: torch.Tensor) -> float:
    return output.double().flatten(1).var(dim=0, unbiased=False).mean().item()


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(activations, "CHUNK_ELEMENTS", CHUNK)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_chunked_variance_is_the_batch_variance(small_chunks, dtype, channels_last):
    output = (torch.randn(37, 8, 32, 32) * 3 + 5).to(dtype)  # 37: a last chunk of one sample
    if channels_last:
        output = output.to(memory_format=torch.channels_last)
    got = mean_batch_variance(output).item()
    assert got == pytest.approx(reference(output), rel=1e-5)


def test_no_temporary_larger_than_a_chunk(small_chunks):
    output = torch.randn(64, 8, 32, 32).to(torch.bfloat16)  # 1 MB; a float copy would be 2 MB
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        mean_batch_variance(output)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest <= CHUNK * 4  # one fp32 chunk
    assert largest * 8 <= output.numel() * output.element_size()


def test_probe_records_each_layers_variance_only_when_armed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    outputs = {}
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    probe = ActivationProbe(model)
    x = torch.randn(9, 3, 8, 8)
    model(x)
    assert probe.collect() == {}
    probe.arm()
    model(x)
    variances = probe.collect()
    assert list(variances) == ["0", "2"]
    for name, value in variances.items():
        assert value == pytest.approx(reference(outputs[name].detach()), rel=1e-5)
