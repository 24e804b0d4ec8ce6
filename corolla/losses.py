"""What the network's noise prediction is trained to minimise: the error per pixel and the weight
of each noise level. Kept apart from the model so that the config's limits can name the choices."""
from __future__ import annotations

from typing import Callable

import torch

# The error of each predicted noise value. The reference's mean absolute error is minimised by the
# per-pixel median of the noise given the noisy image; the squared error (DDPM's) by its mean, which
# is what DDIM's ODE and every other sampler's step assume.
LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"l1": torch.abs, "mse": torch.square}


def errors(pred_noises: torch.Tensor, noises: torch.Tensor, loss: str) -> torch.Tensor:
    """The elementwise error of `loss` (a LOSSES name) between predicted and drawn noise, float32."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[loss]((pred_noises - noises).float())


def min_snr_weights(noise_rates: torch.Tensor, signal_rates: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for noise prediction, min(SNR, gamma) / SNR with SNR = s^2 / n^2
    (Hang et al. 2023, eq. 10 for the epsilon target): the nearly clean times, whose noise is hard
    to see and whose images hardly change, stop dominating the gradient. Float32, like the rates."""
    snr = (signal_rates.float() / noise_rates.float()) ** 2
    return gamma / snr.clamp(min=gamma)  # = min(SNR, gamma) / SNR, and 1 at SNR 0
