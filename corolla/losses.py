"""What the network's noise prediction is trained to minimise: the error per pixel and the weight
of each noise level. Kept apart from the model so that the config's limits can name the choices."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# The error of each predicted noise value. The reference's mean absolute error is minimised by the
# per-pixel median of the noise given the noisy image; the squared error (DDPM's) by its mean, which
# is what DDIM's ODE and every other sampler's step assume.
LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"l1": torch.abs, "mse": torch.square}


def errors(pred_noises: torch.Tensor, noises: torch.Tensor, loss: str) -> torch.Tensor:
    """The elementwise error of `loss` (a LOSSES name) between predicted and drawn noise, float32."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[loss]((pred_noises - noises).float())


def coarse_errors(pred_noises: torch.Tensor, noises: torch.Tensor, loss: str, scales: int) -> torch.Tensor:
    """Per image (B,), float32: the `loss` error of the noise average-pooled to 1/2, 1/4, ...,
    1/2^(scales-1) of the resolution, summed over those coarser levels; 0 for scales 1.

    A k x k mean of white noise has 1/k its standard deviation, so each pooled error is multiplied
    by k: an uninformed prediction costs as much at every level. Per frequency that weights the
    coarse layout, which the per-pixel error sees as 1/16 of a 64 px image's values at 16 px, up
    with each level (the multiscale loss of Hoogeboom et al. 2023, "simple diffusion", sec. 3.3)."""
    # pooling is linear, so the difference is pooled once per level, each from the level before
    difference = (pred_noises - noises).float()
    total = torch.zeros(noises.shape[0], device=noises.device)
    for level in range(1, scales):
        difference = F.avg_pool2d(difference, 2)
        total += errors(difference * 2 ** level, torch.zeros((), device=difference.device), loss).mean(dim=(1, 2, 3))
    return total


def min_snr_weights(noise_rates: torch.Tensor, signal_rates: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for noise prediction, min(SNR, gamma) / SNR with SNR = s^2 / n^2
    (Hang et al. 2023, eq. 10 for the epsilon target): the nearly clean times, whose noise is hard
    to see and whose images hardly change, stop dominating the gradient. Float32, like the rates."""
    snr = (signal_rates.float() / noise_rates.float()) ** 2
    return gamma / snr.clamp(min=gamma)  # = min(SNR, gamma) / SNR, and 1 at SNR 0
