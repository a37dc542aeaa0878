"""The im2col-free statistics kernel against an unfold oracle."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from adaact_dist.optim._statistics import (
    _PER_SAMPLE_MIN_NUMEL,
    ConvGeometry,
    _fused_sum_of_squares,
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
def test_conv_statistics_match_unfold(seed, device):
    rng = random.Random(seed)
    module = random_conv(rng).double()
    x = torch.randn(rng.randint(1, 3), module.in_channels, rng.randint(7, 12), rng.randint(7, 12))
    x = x.double()
    if seed % 2:
        x = x.to(memory_format=torch.channels_last)
    sums, count = conv2d_input_sum_sq(ConvGeometry.of_module(module), x.to(device))
    sums = sums.cpu()
    patches = conv_samples(module, x)  # (groups, samples, features)
    expected = (patches**2).sum(dim=1).reshape(module.in_channels, *module.kernel_size)
    assert count == patches.shape[1]
    torch.testing.assert_close(sums, expected, rtol=1e-10, atol=1e-10)


def test_conv_statistics_in_float32_for_fp16_values_above_256():
    module = nn.Conv2d(4, 4, 3, padding=1, groups=2).half()
    x = (torch.rand(2, 4, 8, 8) * 600 + 300).half().to(memory_format=torch.channels_last)
    sums, count = conv2d_input_sum_sq(ConvGeometry.of_module(module), x)
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
    geometry = ConvGeometry.of_module(module)
    batched, count = conv2d_input_sum_sq(geometry, x[None])
    unbatched, count_unbatched = conv2d_input_sum_sq(geometry, x)
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
    sums, count = conv2d_input_sum_sq(ConvGeometry.of_module(module), x)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    patches = conv_samples(module.double(), x.double())
    expected = (patches**2).sum(dim=1).reshape(16, 3, 3)
    assert count == patches.shape[1]
    torch.testing.assert_close(sums.double(), expected, rtol=1e-6, atol=0)


def strided_layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same ``(N, C, H, W)`` values in every kind of memory layout a layer can receive."""
    n, c, h, w = x.shape
    return {
        "contiguous": x.contiguous(),
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        # ConvNeXt: a block's NHWC output permuted back, as the next conv_dw reads it
        "permuted NHWC": x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
        "batch innermost": x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2),
        "H outermost": x.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3),
        # a view into a larger tensor (not dense, offset storage): NaN around it would show
        # any read outside the view
        "sliced": torch.full((n + 1, c + 2, h + 3, 2 * w), float("nan"), dtype=x.dtype)[
            1:, 1 : c + 1, 2 : h + 2, ::2
        ].copy_(x),
    }


LAYOUTS = ["contiguous", "channels_last", "permuted NHWC", "batch innermost", "H outermost"]


@pytest.mark.parametrize("layout", [*LAYOUTS, "sliced"])
@pytest.mark.parametrize("kernel, padding", [((4, 4), 0), ((3, 3), 1), ((2, 3), 0), ((1, 1), 0)])
def test_conv_statistics_in_every_layout(layout, kernel, padding, device):
    """Unpadded kernels over channels-innermost inputs crashed on timm's ConvNeXt (issue 12)."""
    module = nn.Conv2d(6, 4, kernel, stride=(2, 1), padding=padding).double()
    x = torch.randn(3, 6, 9, 8, dtype=torch.float64)
    view = strided_layouts(x)[layout]
    torch.testing.assert_close(view, x, rtol=0, atol=0)
    sums, count = conv2d_input_sum_sq(ConvGeometry.of_module(module), view.to(device))
    patches = conv_samples(module, x)
    expected = (patches**2).sum(dim=1).reshape(6, *kernel)
    assert count == patches.shape[1]
    torch.testing.assert_close(sums.cpu(), expected, rtol=1e-10, atol=1e-10)


def test_conv_geometry_of_a_direct_call_matches_the_module():
    module = nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 4), dilation=(1, 2), bias=False)
    call = ConvGeometry.of_call(module.weight, stride=(2, 1), padding=(1, 4), dilation=(1, 2))
    assert call == ConvGeometry.of_module(module)
    same = nn.Conv2d(4, 6, (3, 4), padding="same", dilation=2)
    assert ConvGeometry.of_call(same.weight, padding="same", dilation=2).padding == (3, 3, 2, 2)
    assert ConvGeometry.of_module(same).padding == (3, 3, 2, 2)


@pytest.mark.parametrize("view", ["contiguous", "transposed", "permuted 4-D", "unbatched"])
def test_linear_statistics_of_any_layout(view, device):
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    inputs = {
        "contiguous": x,
        "transposed": x.transpose(0, 1).contiguous().transpose(0, 1),  # token-mixing MLP
        "permuted 4-D": x[None].permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
        "unbatched": x[0, 0],
    }
    value = inputs[view]
    sums, count = linear_input_sum_sq(value.to(device))
    flat = value.reshape(-1, 7)
    assert count == flat.shape[0]
    torch.testing.assert_close(sums.cpu(), (flat**2).sum(0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_gpu_reduction_matches_in_float32_without_overflow(dtype):
    """The GPU path (one norm kernel) runs on CPU too: same sums, fp16 squares above 256 kept."""
    x = (torch.randn(4, 6, 5, 5) * 300).to(dtype)
    fused = _fused_sum_of_squares(x, 0)
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
    expected = (x.double() ** 2).sum(0)
    torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=0)
