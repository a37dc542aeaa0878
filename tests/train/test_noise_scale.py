"""Gradient noise scale: the probe's norms against per-micro-batch gradients computed
directly, and the estimators recovering a known |G|^2 and tr(S)."""

from __future__ import annotations

import pytest
import torch

from adaact_dist.train.noise_scale import GradientNormProbe, noise_scale_series


def test_the_probe_reads_each_micro_batch_and_the_whole_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    inputs, targets = torch.randn(4, 8, 5), torch.randint(0, 3, (4, 8))

    def gradient(x, y) -> torch.Tensor:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]).double()

    micro = [gradient(x, y) for x, y in zip(inputs, targets)]
    model.zero_grad()
    probe = GradientNormProbe(model.parameters(), accumulation_steps=4)
    for x, y in zip(inputs, targets):  # as DeepSpeed accumulates: each loss / 4
        (torch.nn.functional.cross_entropy(model(x), y) / 4).backward()
        probe.after_backward()
    small, big = probe.finish()
    assert small == pytest.approx(float(sum(g.square().sum() for g in micro) / 4), rel=1e-5)
    assert big == pytest.approx(float((sum(micro) / 4).square().sum()), rel=1e-5)
    with pytest.raises(RuntimeError, match="0 backward passes in a step of 4"):
        probe.finish()
    with pytest.raises(ValueError, match=">= 2 micro-batches"):
        GradientNormProbe(model.parameters(), accumulation_steps=1)


def test_the_estimators_recover_the_gradient_and_its_noise():
    gradient_sq, trace = 2.0, 300.0  # B_simple = 150
    rows = [
        {"step": step, "small_batch": b, "big_batch": 8 * b,
         "small_sq_norm": gradient_sq + trace / b, "big_sq_norm": gradient_sq + trace / (8 * b)}
        for step, b in enumerate([16, 32, 16, 64])
    ]  # fmt: skip
    points = noise_scale_series(rows, smoothing=0.9)
    assert [p.step for p in points] == [0, 1, 2, 3]
    for point in points:  # bias-corrected: exact from the first step
        assert point.gradient_sq == pytest.approx(gradient_sq)
        assert point.trace_sigma == pytest.approx(trace)
        assert point.b_simple == pytest.approx(150.0)
    with pytest.raises(ValueError, match="smoothing"):
        noise_scale_series(rows, smoothing=1.0)
