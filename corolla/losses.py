"""What the network's noise prediction is trained to minimise: the error per pixel and the weight
of each noise level. Kept apart from the model so that the config's limits can name the choices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

# The error of each predicted noise value. The reference's mean absolute error is minimised by the
# per-pixel median of the noise given the noisy image; the squared error (DDPM's) by its mean, which
# is what DDIM's ODE and every other sampler's step assume.
LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"l1": torch.abs, "mse": torch.square}


@dataclass(frozen=True)
class Objective:
    """What a run trains the noise prediction on, from its TrainConfig: the error `loss` (a LOSSES
    name), min-SNR weights when min_snr_gamma > 0, the error at `scales` levels in all
    (coarse_errors), over the diffusion times drawn uniformly from `times` = [lo, hi) (the whole
    range by default; a part of it trains an expert for those noise levels, as eDiff-I's, Balaji
    et al. 2022), measured in `space` (a SPACES name). The defaults are the reference's."""
    loss: str = "l1"
    min_snr_gamma: float = 0.0
    scales: int = 1
    times: tuple[float, float] = (0.0, 1.0)
    space: str = "noise"

    @classmethod
    def of(cls, train) -> "Objective":
        """The objective of a TrainConfig."""
        return cls(train.loss, train.min_snr_gamma, train.loss_scales, tuple(train.time_range), train.loss_space)

    def draw_times(self, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return uniform_times(self.times, count, generator, device)


def uniform_times(span: tuple[float, float], count: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """(count, 1, 1, 1) diffusion times uniform over span = [lo, hi); for [0, 1) exactly torch.rand's
    numbers (0 + 1 * u is u in floating point)."""
    low, high = span
    return low + (high - low) * torch.rand((count, 1, 1, 1), generator=generator, device=device)


# Where the error of the predicted noise is measured: on the noise itself (the reference), on the
# image it implies, x0 = (x - n eps) / s, whose error is (n / s) times the noise's, or on whichever
# of the two is larger (Salimans & Ho 2022's "truncated SNR" weighting: the noise's where the image
# is clearer than the noise, the image's where it is fainter). At the noisiest levels, where a
# sample's layout is decided, the noise's error hardly sees the image (n / s is 50 at t = 1 of the
# offset cosine schedule), so the image's error weighs them up.
SPACES = ("noise", "image", "max")


def in_space(pred_noises: torch.Tensor, noises: torch.Tensor, noise_rates: torch.Tensor,
             signal_rates: torch.Tensor, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) whose difference is the error in `space`: the noises, or both times n / s
    ("image"), or times max(n / s, 1) ("max")."""
    if space not in SPACES:
        raise ValueError(f"unknown loss space {space!r}; choose one of {', '.join(SPACES)}")
    if space == "noise":
        return pred_noises, noises
    ratio = (noise_rates / signal_rates).float()
    if space == "max":
        ratio = ratio.clamp(min=1.0)
    return pred_noises.float() * ratio, noises * ratio


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
