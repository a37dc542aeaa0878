"""Per-feature sums of squared layer inputs, without im2col.

A weight element of a convolution reads one input channel at one kernel offset. Its
activation second moment is the mean of ``x**2`` over every (image, output position)
patch that the convolution forms. Summing over the batch first leaves one image-sized
tensor; the kernel offsets then pick strided windows of it. The only pass over the
full input is that batch reduction: no patch matrix ever exists.
"""

from __future__ import annotations

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

    An elementwise square then a sum: one temporary the size of ``x``, and on CPU about
    50x faster than ``torch.linalg.vector_norm`` over the batch dimension.
    """
    dtype = accumulation_dtype(x.dtype)
    squares = x.to(dtype).square_() if x.dtype != dtype else x * x
    return squares.sum(dim)


def linear_input_sum_sq(x: Tensor) -> tuple[Tensor, int]:
    """Sum of squares per input feature of a Linear input of shape ``(..., d_in)``.

    Every leading index is a sample (ViT tokens are samples). Returns the ``(d_in,)``
    sum and the number of samples.
    """
    d_in = x.shape[-1]
    flat = x.reshape(-1, d_in)
    return _sum_of_squares(flat, 0), flat.shape[0]


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


def _conv2d_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """Padding as ``(left, right, top, bottom)``, the order of ``F.pad``."""
    if module.padding == "valid":
        return 0, 0, 0, 0
    if module.padding == "same":
        pads = []
        for dilation, kernel in zip(module.dilation[::-1], module.kernel_size[::-1]):
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    pad_h, pad_w = module.padding
    return pad_w, pad_w, pad_h, pad_h


def conv2d_input_sum_sq(module: nn.Conv2d, x: Tensor) -> tuple[Tensor, int]:
    """Sum of squares per weight input feature ``(C_in, kh, kw)`` of a Conv2d input.

    Honours stride, dilation, every padding mode (padding copies values, so squaring
    and summing over the batch commute with it) and string padding. Groups need no
    special case here: channel ``c`` of the result is input channel ``c``, which the
    caller splits into groups. Returns the sum and the number of patches.
    """
    if x.dim() == 3:  # unbatched input
        x = x.unsqueeze(0)
    batch = x.shape[0]
    image = _batch_sum_of_squares(x).unsqueeze(0)  # (1, C, H, W): the one full pass
    pad = _conv2d_padding(module)
    if any(pad):
        image = F.pad(image, pad, mode=_PAD_MODES[module.padding_mode])
    image = image[0]  # (C, H, W), in whatever memory order the input had
    channels, height, width = image.shape
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    # Windows over rows: for kernel row i, rows i*dh + sh*p for p < out_h; then over the
    # columns of that (C, kh, W) result. The views follow the tensor's own strides, and the
    # results keep its channel order, so channels_last sums need no transposing copy.
    s_c, s_h, s_w = image.stride()
    windows = image.as_strided((channels, kh, out_h, width), (s_c, dh * s_h, sh * s_h, s_w))
    rows = torch.sum(windows, 2, out=_like_layout(image, (channels, kh, width)))
    r_c, r_k, r_w = rows.stride()
    windows = rows.as_strided((channels, kh, kw, out_w), (r_c, r_k, dw * r_w, sw * r_w))
    sums = torch.sum(windows, 3, out=_like_layout(image, (channels, kh, kw)))
    return sums, batch * out_h * out_w
