"""Sliced Wasserstein distance (Karras et al. 2018, progressive GANs, appendix D): the
distributions of 7x7 patches of each Laplacian-pyramid level of real and generated images,
compared along random directions; no pretrained network."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 7                  # neighbourhood size of a descriptor
PATCHES_PER_IMAGE = 128    # descriptors drawn per image and level
DIRECTION_REPEATS = 4      # times a fresh set of random directions is drawn
DIRECTIONS = 128           # random directions per repeat
SWD_MIN_RESOLUTION = 16    # coarsest pyramid level, as in Karras et al. 2018
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
GAUSSIAN_5X5 = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0  # the kernel of OpenCV's pyrDown / pyrUp


def _blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 5x5 convolution, borders mirrored without repeating the edge (as pyrDown)."""
    c = images.shape[1]
    weight = kernel.to(images).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), weight, groups=c)


def pyramid_down(images: torch.Tensor) -> torch.Tensor:
    return _blur(images, GAUSSIAN_5X5)[:, :, ::2, ::2]


def pyramid_up(images: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels, then blur with 4x the kernel (each output pixel sees a quarter
    of the taps), as OpenCV's pyrUp."""
    n, c, h, w = images.shape
    spread = images.new_zeros(n, c, 2 * h, 2 * w)
    spread[:, :, ::2, ::2] = images
    return _blur(spread, 4.0 * GAUSSIAN_5X5)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest first: each level is its Gaussian level minus the upsampled next one; the last is
    the coarse Gaussian level itself. Summing back up reproduces the image."""
    pyramid = [images]
    for _ in range(levels - 1):
        coarse = pyramid_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - pyramid_up(coarse)
        pyramid.append(coarse)
    return pyramid


def swd_resolutions(size: int) -> list[int]:
    """The pyramid's resolutions: size, size/2, ... down to 16 (just `size` below 16)."""
    out = [size]
    while out[-1] % 2 == 0 and out[-1] // 2 >= SWD_MIN_RESOLUTION:
        out.append(out[-1] // 2)
    return out


def _descriptors(level: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random 7x7 patches of a level (N, C, H, W), spread evenly over its images, each
    channel normalised to zero mean and unit std over the set -> (count, C*7*7)."""
    n, c, h, w = level.shape
    half = PATCH // 2
    image = torch.arange(count) * n // count
    ys = torch.randint(half, h - half, (count,), generator=generator)
    xs = torch.randint(half, w - half, (count,), generator=generator)
    offsets = torch.arange(-half, half + 1)
    patches = level[image[:, None, None, None], torch.arange(c)[None, :, None, None],
                    (ys[:, None] + offsets)[:, None, :, None], (xs[:, None] + offsets)[:, None, None, :]]
    patches = patches - patches.mean(dim=(0, 2, 3), keepdim=True)
    patches = patches / patches.std(dim=(0, 2, 3), unbiased=False, keepdim=True).clamp_min(1e-8)
    return patches.reshape(count, -1)


def sliced_wasserstein_1d(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between the projected
    point sets (equal sizes: sort both and compare in order)."""
    values = []
    for _ in range(DIRECTION_REPEATS):
        directions = torch.randn(a.shape[1], DIRECTIONS, generator=generator)
        directions = directions / directions.norm(dim=0, keepdim=True)
        # (directions, points), sorted by numpy: several times faster than torch's CPU sort here
        projected_a = np.sort((directions.T @ a.T).numpy(), axis=1)
        projected_b = np.sort((directions.T @ b.T).numpy(), axis=1)
        values.append(float(np.abs(projected_a - projected_b).mean(dtype=np.float64)))
    return sum(values) / len(values)


def sliced_wasserstein(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[int, float]:
    """SWD x 1e3 per pyramid resolution (Karras et al. 2018, table 1 reports it so), between two
    sets of uint8 images of one size. Both sets get 128 descriptors x the smaller set's size."""
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"SWD compares images of one shape, got {tuple(real.shape[1:])} and {tuple(fake.shape[1:])}")
    if min(real.shape[-2:]) < PATCH:
        raise ValueError(f"SWD needs images of at least {PATCH}x{PATCH} pixels")
    generator = torch.Generator().manual_seed(seed)
    resolutions = swd_resolutions(real.shape[-1])
    count = PATCHES_PER_IMAGE * min(real.shape[0], fake.shape[0])
    real_levels = laplacian_pyramid(real.float(), len(resolutions))
    fake_levels = laplacian_pyramid(fake.float(), len(resolutions))
    out = {}
    for resolution, real_level, fake_level in zip(resolutions, real_levels, fake_levels):
        a = _descriptors(real_level, count, generator)
        b = _descriptors(fake_level, count, generator)
        out[resolution] = 1e3 * sliced_wasserstein_1d(a, b, generator)
    return out
