"""Per-feature sums of squared layer inputs, without im2col.

A weight element of a convolution reads one input channel at one kernel offset. Its
activation second moment is the mean of ``x**2`` over every (image, output position)
patch that the convolution forms. Summing over the batch first leaves one image-sized
tensor; the kernel offsets then pick strided windows of it. The only pass over the
full input is that batch reduction: no patch matrix ever exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Conv2d.padding_mode -> F.pad mode.
_PAD_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions (fp16 squares overflow above 256), float64 kept as is."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sum_of_squares(x: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Sum of ``x**2`` over ``dim``, accumulated in float32 or better.

    On CPU an elementwise square then a sum: one temporary the size of ``x``, and about
    50x faster than ``torch.linalg.vector_norm`` over the batch dimension. On GPUs the
    norm is one fused reduction that reads ``x`` once and squares in float32 as it
    loads, with no float32 copy of a bf16/fp16 activation.
    """
    if x.device.type != "cpu":
        return _fused_sum_of_squares(x, dim)
    dtype = accumulation_dtype(x.dtype)
    squares = x.to(dtype).square_() if x.dtype != dtype else x * x
    return squares.sum(dim)


def _fused_sum_of_squares(x: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """``||x||^2`` over ``dim`` from one reduction kernel, accumulated in float32 or better."""
    return torch.linalg.vector_norm(x, 2, dim, dtype=accumulation_dtype(x.dtype)).square_()


def linear_input_sum_sq(x: Tensor) -> tuple[Tensor, int]:
    """Sum of squares per input feature of a Linear input of shape ``(..., d_in)``.

    Every leading index is a sample (ViT tokens are samples). The reduction runs over
    the leading dimensions in place, so a transposed or permuted input (token-mixing
    MLPs) is read as it lies, without a reshaping copy. Returns the ``(d_in,)`` sum and
    the number of samples.
    """
    if x.dim() == 1:  # one unbatched sample
        x = x.unsqueeze(0)
    return _sum_of_squares(x, tuple(range(x.dim() - 1))), x.numel() // x.shape[-1]


# Per-sample accumulation pays off on CPU once one sample no longer fits in cache; below
# this many elements the fused square-and-sum is faster (a Python call per sample costs
# more than the temporary).
_PER_SAMPLE_MIN_NUMEL = 1 << 16


def _batch_sum_of_squares(x: Tensor) -> Tensor:
    """Sum of squares over the batch of an ``(N, C, H, W)`` tensor, in its memory layout.

    On CPU, for large images, one fused multiply-add per sample into an image-sized
    accumulator is about 3x faster than squaring the whole batch into a temporary first
    (the temporary's page faults dominate). Otherwise, and on GPUs where it is one kernel
    and the caching allocator makes the temporary free, square then sum; a channels_last
    batch is summed as the contiguous ``(N, H, W, C)`` it is (15x faster on CPU).
    """
    if x.device.type == "cpu" and x[0].numel() >= _PER_SAMPLE_MIN_NUMEL:
        dtype = accumulation_dtype(x.dtype)
        total = torch.zeros_like(x[0], dtype=dtype)
        for sample in x:
            sample = sample.to(dtype)
            total.addcmul_(sample, sample)
        return total
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return _sum_of_squares(x.permute(0, 2, 3, 1), 0).permute(2, 0, 1)
    return _sum_of_squares(x, 0)


def _like_layout(image: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """An empty ``(C, a, b)`` tensor whose channels are innermost when ``image``'s are."""
    if image.stride(0) == 1 and image.shape[0] > 1:
        return image.new_empty(shape[1:] + shape[:1]).permute(2, 0, 1)
    return image.new_empty(shape)


@dataclass(frozen=True)
class ConvGeometry:
    """What a Conv2d's statistics depend on, from the module or from a direct ``F.conv2d`` call."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    """``(left, right, top, bottom)``, the order of ``F.pad``."""
    padding_mode: str = "zeros"

    @classmethod
    def of_module(cls, module: nn.Conv2d) -> ConvGeometry:
        kernel = tuple(module.kernel_size)
        dilation = tuple(module.dilation)
        padding = _padding(module.padding, kernel, dilation)
        return cls(kernel, tuple(module.stride), dilation, padding, module.padding_mode)

    @classmethod
    def of_call(cls, weight: Tensor, stride=1, padding=0, dilation=1) -> ConvGeometry:
        """The geometry of ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``."""
        kernel = tuple(weight.shape[2:])
        dilation = _pair(dilation)
        return cls(kernel, _pair(stride), dilation, _padding(padding, kernel, dilation))


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _padding(padding, kernel, dilation) -> tuple[int, int, int, int]:
    """``Conv2d.padding`` (``"valid"``, ``"same"``, an int or a pair) in ``F.pad`` order."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        pads = []
        for d, k in zip(dilation[::-1], kernel[::-1]):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    pad_h, pad_w = _pair(padding)
    return pad_w, pad_w, pad_h, pad_h


def conv2d_input_sum_sq(geometry: ConvGeometry, x: Tensor) -> tuple[Tensor, int]:
    """Sum of squares per weight input feature ``(C_in, kh, kw)`` of a Conv2d input.

    Honours stride, dilation, every padding mode (padding copies values, so squaring
    and summing over the batch commute with it) and string padding. Groups need no
    special case here: channel ``c`` of the result is input channel ``c``, which the
    caller splits into groups. ``x`` may have any strides (contiguous, channels_last, a
    permuted or sliced view). The sum keeps the input's memory order (channels innermost
    for channels_last), so add it into a ``(C_in, kh, kw)`` view rather than flattening
    it. Returns the sum and the number of patches.
    """
    if x.dim() == 3:  # unbatched input
        x = x.unsqueeze(0)
    batch = x.shape[0]
    image = _batch_sum_of_squares(x).unsqueeze(0)  # (1, C, H, W): the one full pass
    pad = geometry.padding
    if any(pad):
        image = F.pad(image, pad, mode=_PAD_MODES[geometry.padding_mode])
    image = image[0]  # (C, H, W), in whatever memory order the input had
    channels, height, width = image.shape
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    # Windows over rows: for kernel row i, rows i*dh + sh*p for p < out_h; then over the
    # columns of that (C, kh, W) result. The views follow the tensor's own strides, and the
    # results keep its channel order, so channels_last sums need no transposing copy.
    s_c, s_h, s_w = image.stride()
    windows = image.as_strided((channels, kh, out_h, width), (s_c, dh * s_h, sh * s_h, s_w))
    rows = _window_sum(windows, 2, image, (channels, kh, width))
    r_c, r_k, r_w = rows.stride()
    windows = rows.as_strided((channels, kh, kw, out_w), (r_c, r_k, dw * r_w, sw * r_w))
    sums = _window_sum(windows, 3, image, (channels, kh, kw))
    return sums, batch * out_h * out_w


def _window_sum(windows: Tensor, dim: int, image: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Sum over ``dim`` into a result in ``image``'s channel order. Under ``torch.compile`` the
    compiler picks the layout itself: a strided ``out=`` would break its graph at every conv."""
    if torch.compiler.is_compiling():
        return windows.sum(dim)
    return torch.sum(windows, dim, out=_like_layout(image, shape))
