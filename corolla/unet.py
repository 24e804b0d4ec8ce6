"""The reference U-Net: predicts the noise in a noisy image from the image and its noise variance.

Layout (SPEC "Network"): 1x1 conv to widths[0] channels, concatenated with a sinusoidal embedding
of the noise variance broadcast over the image; DownBlocks (residual blocks + 2x2 average
pooling) push skips; residual blocks at the bottom; UpBlocks (bilinear 2x upsampling, then
concatenate a skip and apply a residual block, block_depth times); a zero-initialised 1x1 conv.
Initialisation follows Keras (Glorot-uniform kernels, zero biases) and BatchNorm follows Keras
(no centre/scale, epsilon 1e-3, momentum 0.99), so the default network matches the reference.

A class-conditional network (config.classes not empty) learns a vector per class, which every
residual block maps to a shift of its features, or a scale and a shift (config.class_modulation;
corolla.conditioning), optionally after joining it with the noise level (config.class_with_noise);
without classes it is the reference. config.noise_in_blocks gives every residual block the noise
level too, as a learned shift of its features (BlockNoise), as DDPM's and ADM's U-Nets take their
timestep embedding; the reference takes the noise level only at the input. config.attention puts
self-attention between the bottom's two residual blocks (BottomAttention), as those U-Nets attend
at their coarsest resolutions; the reference has none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import ClassEmbedding, ClassMap, ClassNoiseJoin
from .limits import check_section
from .resample import upsample2x

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # PyTorch's momentum is 1 - Keras' 0.99
JOIN_WIDTH = 4  # ClassNoiseJoin's output, in embedding sizes
HEAD_WIDTH = 32  # BottomAttention's channels per head
NORM_GROUPS = 32  # BottomAttention's GroupNorm, as DDPM's and ADM's (fewer where the width is not a multiple)


@dataclass(frozen=True)
class UNetConfig:
    widths: tuple[int, ...] = (32, 64, 96)
    bottom_width: int = 128
    block_depth: int = 2
    embedding_size: int = 32
    embedding_max_frequency: float = 1000.0
    channels: int = 3
    # names of the classes a conditional network takes, class number i = classes[i] (the
    # network's vocabulary, as id2label in a Hugging Face config); empty: unconditional
    classes: tuple[str, ...] = ()
    # what a conditional network's residual blocks do with the class: "shift" their features
    # (species64), or "scale-shift" them, FiLM (Perez et al. 2018) as ADM's AdaGN does with its
    # embeddings: a class can then also damp or amplify a feature, not only move it
    class_modulation: str = "shift"
    # whether the class vector passes through a learned layer with the noise level's embedding
    # before the blocks (ClassNoiseJoin), so that its effect can change with the noise level
    class_with_noise: bool = False
    # whether every residual block also shifts its features by a learned function of the noise
    # level (BlockNoise); off in the reference, which reads the noise level only at the input
    noise_in_blocks: bool = False
    # whether self-attention joins the bottom's two residual blocks (BottomAttention), so that every
    # position of the coarsest features sees all the others; off in the reference
    attention: bool = False


def sinusoidal_embedding(noise_variances: torch.Tensor, size: int = 32,
                         max_frequency: float = 1000.0) -> torch.Tensor:
    """(B, 1, 1, 1) -> (B, size, 1, 1): sin and cos of 2 pi f v for size/2 log-spaced f in [1, max]."""
    frequencies = torch.exp(torch.linspace(math.log(1.0), math.log(max_frequency), size // 2,
                                           device=noise_variances.device, dtype=noise_variances.dtype))
    angular_speeds = (2.0 * math.pi * frequencies).view(1, -1, 1, 1)
    return torch.cat([torch.sin(angular_speeds * noise_variances),
                      torch.cos(angular_speeds * noise_variances)], dim=1)


def _keras_conv(in_ch: int, out_ch: int, kernel: int, zero: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    if zero:
        nn.init.zeros_(conv.weight)
    else:
        nn.init.xavier_uniform_(conv.weight)  # Keras' Glorot-uniform default
    nn.init.zeros_(conv.bias)
    return conv


class BlockNoise(nn.Module):
    """The noise level's embedding -> one vector per image, swish(linear(embedding)), that every
    residual block maps to a shift of its features (a ClassMap, zero at first: a network given
    this part starts as exactly its twin without it, so a reference model can be continued with it)."""

    def __init__(self, size: int, out: int):
        super().__init__()
        self.linear = nn.Linear(size, out)

    def forward(self, noise_embedding: torch.Tensor) -> torch.Tensor:
        return F.silu(self.linear(noise_embedding))


class BottomAttention(nn.Module):
    """x + out(attention(norm(x))): multi-head self-attention over the positions of (B, C, H, W)
    features, HEAD_WIDTH channels per head. The reference's convolutions see a neighbourhood; here
    each position weighs every other, which is what an image's layout (one flower, or fragments
    that do not agree) depends on. `out` starts at zero, so the block is the identity at first and
    a network given it starts as exactly its twin without it (a reference model can be continued)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = width // HEAD_WIDTH if width % HEAD_WIDTH == 0 else 1
        self.norm = nn.GroupNorm(math.gcd(NORM_GROUPS, width), width)
        self.qkv = _keras_conv(width, 3 * width, 1)
        self.out = _keras_conv(width, width, 1, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        head_width = c // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, head_width, h * w).unbind(1)
        # (B, heads, positions, positions); the softmax in float32, whatever the autocast. Plain
        # matrix products: the ONNX export's MatMul runs wherever ONNX does (the browser included)
        scores = q.transpose(2, 3) @ k / math.sqrt(head_width)
        weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        attended = (v @ weights.transpose(2, 3)).reshape(b, c, h, w)
        return x + self.out(attended)


class ResidualBlock(nn.Module):
    """x + conv3x3(swish(conv3x3(BN(x)) [x (1 + class scale)] [+ class shift] [+ noise shift])), with
    a 1x1 conv on the skip when widths differ; the class terms only in a conditional network
    (class_size > 0), the scale only with class_scale, the noise shift only with noise_size > 0."""

    def __init__(self, in_ch: int, width: int, class_size: int = 0, class_scale: bool = False,
                 noise_size: int = 0):
        super().__init__()
        self.residual = _keras_conv(in_ch, width, 1) if in_ch != width else nn.Identity()
        self.norm = nn.BatchNorm2d(in_ch, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM, affine=False)
        self.conv1 = _keras_conv(in_ch, width, 3)
        self.conv2 = _keras_conv(width, width, 3)
        self.class_shift = ClassMap(class_size, width) if class_size else None
        self.class_scale = ClassMap(class_size, width) if class_size and class_scale else None
        self.noise_shift = ClassMap(noise_size, width) if noise_size else None

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        residual = self.residual(x)
        x = self.conv1(self.norm(x))
        if self.class_scale is not None:
            x = torch.addcmul(self.class_shift(classes), x, 1 + self.class_scale(classes))
        elif self.class_shift is not None:
            x += self.class_shift(classes)
        if self.noise_shift is not None:
            x += self.noise_shift(noise)
        # In place where autograd allows, on tensors this block has just made: a fresh tensor as
        # large as the activations costs the CPU its page faults (with BatchNorm folded, 7 % of an
        # evaluation on the 2-core EPYC: benchmarks/README.md, "Folded BatchNorm"). swish keeps its
        # input for the backward pass, so only without gradients.
        out = self.conv2(F.silu(x, inplace=not torch.is_grad_enabled()))
        out += residual
        return out


class DownBlock(nn.Module):
    def __init__(self, in_ch: int, width: int, depth: int, class_size: int = 0, class_scale: bool = False,
                 noise_size: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(in_ch if i == 0 else width, width, class_size, class_scale,
                                                  noise_size)
                                    for i in range(depth))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], classes: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, classes, noise)
            skips.append(x)
        return F.avg_pool2d(x, 2)


class UpBlock(nn.Module):
    def __init__(self, in_ch: int, skip_chs: list[int], width: int, class_size: int = 0, class_scale: bool = False,
                 noise_size: int = 0):
        super().__init__()
        chans = [in_ch] + [width] * (len(skip_chs) - 1)
        self.blocks = nn.ModuleList(ResidualBlock(c + s, width, class_size, class_scale, noise_size)
                                    for c, s in zip(chans, skip_chs))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], classes: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        x = upsample2x(x)
        for block in self.blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), classes, noise)
        return x


class UNet(nn.Module):
    """UNet(noisy_images (B,C,H,W), noise_variances (B,1,1,1)) -> predicted noise (B,C,H,W).

    H and W must be divisible by 2 ** len(widths)."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        check_section(config)  # before anything is allocated (corolla.limits)
        self.config = config
        c = config
        self.stem = _keras_conv(c.channels, c.widths[0], 1)
        ch = c.widths[0] + c.embedding_size
        # The class enters every residual block, as a learned shift of its features (as DDPM's and
        # ADM's U-Nets take their embeddings), not once beside the noise embedding at the input as
        # this network takes the noise level: that join, measured on the 102 flowers (1,632 steps
        # from flowers64), left generated images at chance accuracy by asked class. The noise
        # level can be read off the noisy image itself; the class cannot and has to reach every
        # scale. Costs (classes + 1 + blocks' widths) x embedding_size parameters, and the blocks'
        # widths x embedding_size more for a scale; joined with the noise level, the blocks read
        # a vector 4x as wide (ADM's embedding width), for (2 + blocks' widths x 3) x
        # 4 x embedding_size more.
        joined = JOIN_WIDTH * c.embedding_size
        shift = (joined if c.class_with_noise else c.embedding_size) if c.classes else 0
        scale = c.class_modulation == "scale-shift"
        noise = joined if c.noise_in_blocks else 0
        self.down = nn.ModuleList()
        skip_chs: list[int] = []
        for width in c.widths:
            self.down.append(DownBlock(ch, width, c.block_depth, shift, scale, noise))
            skip_chs += [width] * c.block_depth
            ch = width
        self.middle = nn.ModuleList(ResidualBlock(ch if i == 0 else c.bottom_width, c.bottom_width, shift, scale,
                                                  noise)
                                    for i in range(2))
        ch = c.bottom_width
        self.up = nn.ModuleList()
        for width in reversed(c.widths):
            popped = [skip_chs.pop() for _ in range(c.block_depth)]
            self.up.append(UpBlock(ch, popped, width, shift, scale, noise))
            ch = width
        self.head = _keras_conv(ch, c.channels, 1, zero=True)
        # last, so that every weight above is the one the same seed gives the unconditional network
        self.class_embedding = ClassEmbedding(len(c.classes), c.embedding_size) if c.classes else None
        self.class_join = ClassNoiseJoin(c.embedding_size, joined) if c.classes and c.class_with_noise else None
        self.block_noise = BlockNoise(c.embedding_size, joined) if c.noise_in_blocks else None
        self.attention = BottomAttention(c.bottom_width) if c.attention else None

    def forward(self, noisy_images: torch.Tensor, noise_variances: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """labels (B,): class numbers of a conditional network; None there is the null label
        (the unconditional prediction)."""
        c = self.config
        x = self.stem(noisy_images)
        classes = None
        if self.class_embedding is not None:
            classes = self.class_embedding(labels, x.shape[0])
        elif labels is not None:
            raise ValueError("this network is not class-conditional: it takes no labels")
        # in the variances' own precision: sin(2 pi 1000 v) is ill-conditioned, bfloat16 would garble it
        emb = sinusoidal_embedding(noise_variances, c.embedding_size, c.embedding_max_frequency)
        if self.class_join is not None:
            classes = self.class_join(classes, emb.flatten(1))
        noise = self.block_noise(emb.flatten(1)) if self.block_noise is not None else None
        emb = emb.to(x.dtype)
        # nearest upsampling of a 1x1 map is a broadcast over the image
        emb = emb.expand(-1, -1, x.shape[2], x.shape[3])
        if x.is_contiguous(memory_format=torch.channels_last):
            # else torch.cat returns the standard layout, and the first block's convolutions,
            # BatchNorm and their gradients would all convert it back and forth
            emb = emb.contiguous(memory_format=torch.channels_last)
        x = torch.cat([x, emb], dim=1)
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x, skips, classes, noise)
        first, second = self.middle
        x = first(x, classes, noise)
        if self.attention is not None:
            x = self.attention(x)
        x = second(x, classes, noise)
        for block in self.up:
            x = block(x, skips, classes, noise)
        return self.head(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
