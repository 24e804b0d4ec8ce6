"""Fine detail: how much texture and edge images carry, and photos blurred to a given amount of it
(what a classifier of photos can still see in images as smooth as a model's)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fine_detail(images: torch.Tensor) -> float:
    """images (N, C, H, W) in [0, 1] -> the standard deviation of each image minus its 3x3 mean
    (edge pixels replicated): texture and edges, what an image smoother than a photo lacks."""
    local_mean = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return float((images - local_mean).std())


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """images (N, C, H, W) blurred by a Gaussian of `sigma` pixels (separable, borders mirrored)."""
    if sigma <= 0:
        return images
    radius = min(int(3 * sigma + 0.5), images.shape[-1] - 1, images.shape[-2] - 1)
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).expand(images.shape[1], 1, -1)
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel[:, :, None, :], groups=images.shape[1])
    return F.conv2d(x, kernel[:, :, :, None], groups=images.shape[1])


def blur_to_fine_detail(images: torch.Tensor, target: float, iterations: int = 20) -> tuple[torch.Tensor, float]:
    """images (N, C, H, W) in [0, 1] blurred (gaussian_blur) until their fine_detail is `target`
    -> (the blurred images, sigma); unchanged (sigma 0) when they are no sharper than that.
    Bisection: fine detail falls as sigma grows."""
    if fine_detail(images) <= target:
        return images, 0.0
    low, high = 0.0, 4.0
    for _ in range(iterations):
        sigma = (low + high) / 2
        low, high = (sigma, high) if fine_detail(gaussian_blur(images, sigma)) > target else (low, sigma)
    sigma = (low + high) / 2
    return gaussian_blur(images, sigma), sigma
