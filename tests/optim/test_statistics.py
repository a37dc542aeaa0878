"""The im2col-free statistics kernel against an unfold oracle."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from adaact_dist.optim._statistics import (
    _PER_SAMPLE_MIN_NUMEL,
    conv2d_input_sum_sq,
    linear_input_sum_sq,
)
from tests.optim.oracle import conv_samples


def random_conv(rng: random.Random) -> nn.Conv2d:
    groups = rng.choice([1, 2, 3])
    in_ch = groups * rng.randint(1, 3)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    dilation = (rng.randint(1, 2), rng.randint(1, 3))
    stride = (rng.randint(1, 3), rng.randint(1, 2))
    mode = rng.choice(["zeros", "reflect", "replicate", "circular"])
    if rng.random() < 0.25:
        padding, stride = "same", (1, 1)
    else:
        padding = (rng.randint(0, 2), rng.randint(0, 2))
    return nn.Conv2d(
        in_ch, groups * 2, kernel, stride, padding, dilation, groups, padding_mode=mode
    )


@pytest.mark.parametrize("seed", range(25))
def test_conv_statistics_match_unfold(seed):
    rng = random.Random(seed)
    module = random_conv(rng).double()
    x = torch.randn(rng.randint(1, 3), module.in_channels, rng.randint(7, 12), rng.randint(7, 12))
    x = x.double()
    if seed % 2:
        x = x.to(memory_format=torch.channels_last)
    sums, count = conv2d_input_sum_sq(module, x)
    patches = conv_samples(module, x)  # (groups, samples, features)
    expected = (patches**2).sum(dim=1).reshape(module.in_channels, *module.kernel_size)
    assert count == patches.shape[1]
    torch.testing.assert_close(sums, expected, rtol=1e-10, atol=1e-10)


def test_conv_statistics_in_float32_for_fp16_values_above_256():
    module = nn.Conv2d(4, 4, 3, padding=1, groups=2).half()
    x = (torch.rand(2, 4, 8, 8) * 600 + 300).half().to(memory_format=torch.channels_last)
    sums, count = conv2d_input_sum_sq(module, x)
    assert sums.dtype == torch.float32 and torch.isfinite(sums).all()
    patches = conv_samples(module.float(), x.float())
    expected = (patches.double() ** 2).sum(dim=1).reshape(4, 3, 3)
    torch.testing.assert_close(sums.double(), expected, rtol=1e-5, atol=0)


def test_linear_statistics_with_nd_input_in_float32_for_fp16():
    x = (torch.randn(2, 3, 5, 7) * 400).half()
    sums, count = linear_input_sum_sq(x)
    assert count == 30 and sums.dtype == torch.float32
    expected = (x.double().reshape(-1, 7) ** 2).sum(0)
    torch.testing.assert_close(sums.double(), expected, rtol=1e-5, atol=0)


def test_unbatched_conv_input():
    module = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(2, 6, 6, dtype=torch.float64)
    batched, count = conv2d_input_sum_sq(module, x[None])
    unbatched, count_unbatched = conv2d_input_sum_sq(module, x)
    assert count == count_unbatched == 36
    torch.testing.assert_close(batched, unbatched)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_large_images_take_the_per_sample_path_with_the_same_result(channels_last, dtype):
    """Samples of >= 2**16 elements are accumulated one by one on CPU; same sums."""
    module = nn.Conv2d(16, 4, 3, stride=2, padding=1, dilation=2, groups=2)
    x = torch.randn(2, 16, 64, 64, dtype=torch.float64).to(dtype)
    assert x[0].numel() >= _PER_SAMPLE_MIN_NUMEL
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    sums, count = conv2d_input_sum_sq(module, x)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    patches = conv_samples(module.double(), x.double())
    expected = (patches**2).sum(dim=1).reshape(16, 3, 3)
    assert count == patches.shape[1]
    torch.testing.assert_close(sums.double(), expected, rtol=1e-6, atol=0)
