"""2x bilinear upsampling (half-pixel centres, edges clamped: TF's resize that Keras' UpSampling2D
uses, F.interpolate's align_corners=False) written as shifts and weighted sums.

Why not F.interpolate everywhere: under torch.compile, inductor lowers bilinear upsampling on
CPU to gathers, and its backward to a scatter-add, and those took 22 % of a bf16 training step of
seed64 (benchmarks/throughput.py --profile). At scale 2 every output pixel is 3/4 of its nearest
input pixel plus 1/4 of the next one away from it, so the same values come from slices and
elementwise arithmetic, which inductor fuses into its neighbours, forward and backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _double(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Upsample one spatial axis by 2: output 2i is 3/4 x[i] + 1/4 x[i-1], output 2i+1 is
    3/4 x[i] + 1/4 x[i+1], with x[-1] = x[0] and x[n] = x[n-1] (the clamped edges)."""
    n = x.shape[dim]
    before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    after = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    even = 0.75 * x + 0.25 * before
    odd = 0.75 * x + 0.25 * after
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), bilinear: F.interpolate eagerly (one fast kernel each way),
    shifts and sums under torch.compile."""
    if torch.compiler.is_compiling():
        return upsample2x_by_shifts(x)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def upsample2x_by_shifts(x: torch.Tensor) -> torch.Tensor:
    """The same values from slices and weighted sums, in x's memory format."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = x.permute(0, 2, 3, 1)  # channels last: (B, H, W, C) is the contiguous view
        return _double(_double(y, 1), 2).permute(0, 3, 1, 2)
    return _double(_double(x, 2), 3)
