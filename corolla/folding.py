"""BatchNorm folded into convolutions, for inference (PyTorch sampling and the ONNX export).

Every residual block of the U-Net computes conv1(BatchNorm(x)) (corolla.unet.ResidualBlock). At
inference the BatchNorm is a fixed per-channel affine map, BN(x) = a x + c (a = gamma / sqrt(var +
eps), c = beta - a mean), so conv1(BN(x)) is one convolution with the weights scaled by a on
their input channels, plus a bias. Because the BatchNorm comes *before* the convolution, that
bias is not one number per channel: conv1 pads BN(x) with zeros, not with c, so the pixels whose
kernel reaches over the edge receive less of c. The bias is therefore a map,
    bias_map = b + conv2d(ones(1, 1, H, W), K),   K[o] = sum_i W[o, i] c_i (zero-padded like conv1),
which equals the per-channel bias away from the edges and depends only on the image size.
Outputs equal the unfolded network's to float32 rounding.

Two ways to add that map, one per runtime:
- PyTorch: the map's inner value goes into the convolution as its bias (oneDNN adds it as the
  convolution writes its output) and only the bands of `padding` pixels along the edges are
  corrected in place, so a folded block makes one full pass over its activations fewer than
  BatchNorm + convolution (benchmarks/README.md, "Folded BatchNorm").
- Traced (the ONNX export, torch.compile): the map is computed in the graph from a one-channel image
  of ones and added; in-place edits would become scatters in ONNX, onnxruntime folds the whole map
  into a constant when it loads the model, and inductor can fuse the addition with the swish after it.
  A traced call must not fill the eager path's cache either: the compiler would guard on it and
  compile the network a second time on the next call.

The block's addition of its skip after conv2 could go into conv2 as well (oneDNN's binary post-op,
torch.ops.mkldnn._convolution_pointwise). Measured on the AVX512-BF16 EPYC in bf16, with plain or
prepacked weights, one evaluation took 3 to 5 % longer that way (benchmarks/README.md, "Folded
BatchNorm"), so the addition stays a separate in-place pass.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .unet import ResidualBlock, UNet


class FoldedConv(nn.Module):
    """conv(BatchNorm(x)) as one convolution plus an edge-aware bias map (module docstring); the
    BatchNorm's running statistics are frozen in."""

    def __init__(self, norm: nn.BatchNorm2d, conv: nn.Conv2d):
        super().__init__()
        if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError("only stride-1, undilated, ungrouped convolutions are folded")
        # BN(x) = scale x + shift, computed in float64 so that folding adds no rounding of its own
        scale = (norm.running_var.double() + norm.eps).rsqrt()
        shift = -norm.running_mean.double() * scale
        if norm.affine:
            scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
        weight = conv.weight.double()
        bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        dtype = conv.weight.dtype
        self.weight = nn.Parameter((weight * scale[None, :, None, None]).to(dtype), requires_grad=False)
        self.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
        # K: the shift's contribution of each kernel tap, (out, 1, kh, kw)
        self.shift_kernel = nn.Parameter((weight * shift[None, :, None, None]).sum(1, keepdim=True).to(dtype),
                                         requires_grad=False)
        self.padding = conv.padding
        self._edges: dict[tuple, tuple[torch.Tensor, list[tuple[tuple[slice, slice], torch.Tensor]]]] = {}

    def bias_map(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """(1, out, height, width): the bias of each output pixel."""
        ones = torch.ones((1, 1, height, width), dtype=like.dtype, device=like.device)
        return F.conv2d(ones, self.shift_kernel.to(like.dtype), self.bias.to(like.dtype), padding=self.padding)

    def _inner_bias_and_edges(self, height: int, width: int, like: torch.Tensor):
        """(the map's value away from the edges (out,), [(rows, columns) of an edge band, the
        map there minus that value]), computed once per image size and device (in the weights'
        dtype: under autocast the convolution casts the bias as it casts the weights)."""
        key = (height, width, like.dtype, like.device)
        if key not in self._edges:
            bias = self.bias_map(height, width, like)[0]
            pad_h, pad_w = self.padding
            inner = bias[:, pad_h, pad_w]
            bands = [(slice(0, pad_h), slice(None)), (slice(height - pad_h, height), slice(None)),
                     (slice(pad_h, height - pad_h), slice(0, pad_w)),
                     (slice(pad_h, height - pad_h), slice(width - pad_w, width))]
            self._edges[key] = inner, [(band, bias[:, band[0], band[1]] - inner[:, None, None])
                                       for band in bands]
        return self._edges[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        pad_h, pad_w = self.padding
        if torch.compiler.is_compiling() or height <= 2 * pad_h or width <= 2 * pad_w:
            out = F.conv2d(x, self.weight, padding=self.padding)
            return out + self.bias_map(height, width, out)
        inner, edges = self._inner_bias_and_edges(height, width, self.weight)
        out = F.conv2d(x, self.weight, inner, padding=self.padding)
        for (rows, columns), correction in edges:
            out[:, :, rows, columns] += correction.to(out.dtype)
        return out


def fold_batchnorm(network: UNet) -> UNet:
    """An inference copy of `network` (eval mode, no gradients) in which each residual block's
    BatchNorm is folded into the convolution after it (FoldedConv); `network` is left as it is.
    The copy computes what `network.eval()` computes, to float32 rounding, with one operator
    fewer per block; it cannot be trained (the running statistics are frozen in)."""
    folded = copy.deepcopy(network).eval().requires_grad_(False)
    for block in folded.modules():
        if isinstance(block, ResidualBlock) and isinstance(block.norm, nn.BatchNorm2d):
            block.conv1 = FoldedConv(block.norm, block.conv1)
            block.norm = nn.Identity()
    return folded
