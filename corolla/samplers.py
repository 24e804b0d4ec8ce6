"""Stateless samplers: each integrates the reverse process over a grid of diffusion times.

A sampler takes a denoiser `(x, noise_rates, signal_rates) -> (pred_noises, pred_images)`, a
schedule `t -> (noise_rates, signal_rates)`, the initial noise and a descending time grid
(times[0] = 1, ..., times[-1] = end), and returns the last predicted image, as the reference does.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .diffusion import Denoiser
from .schedules import Schedule

NoiseFn = Callable[[], torch.Tensor]


def uniform_times(steps: int, end: float = 0.0) -> torch.Tensor:
    """The reference grid: t_s = 1 - s / steps for s = 0..steps (from 1 down to `end`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1.0, end, steps + 1, dtype=torch.float64)


def _rates(schedule: Schedule, t: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise_rate, signal_rate = schedule(torch.full((like.shape[0], 1, 1, 1), float(t), dtype=like.dtype,
                                                  device=like.device))
    return noise_rate, signal_rate


def ddim(denoise: Denoiser, schedule: Schedule, initial_noise: torch.Tensor, times: torch.Tensor,
         eta: float = 0.0, noise_fn: NoiseFn | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): separate the noisy image into predicted image and noise,
    then remix them at the next time. eta = 0 is deterministic (the reference); eta = 1 adds the
    DDPM posterior's variance, sigma_t^2 = eta^2 (n_next^2 / n^2) (1 - s^2 / s_next^2)."""
    if eta > 0 and noise_fn is None:
        raise ValueError("eta > 0 needs a noise_fn")
    x = initial_noise
    pred_images = x
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        noise_rates, signal_rates = _rates(schedule, t, x)
        pred_noises, pred_images = denoise(x, noise_rates, signal_rates)
        next_noise_rates, next_signal_rates = _rates(schedule, t_next, x)
        if eta > 0:
            sigma = eta * (next_noise_rates / noise_rates) * torch.sqrt(
                (1 - (signal_rates / next_signal_rates) ** 2).clamp_min(0))
            sigma = torch.minimum(sigma, next_noise_rates)
            direction = torch.sqrt(next_noise_rates ** 2 - sigma ** 2)
            x = next_signal_rates * pred_images + direction * pred_noises + sigma * noise_fn()
        else:
            x = next_signal_rates * pred_images + next_noise_rates * pred_noises
    return pred_images


def slerp(a: torch.Tensor, b: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """The reference's spherical interpolation of two noises, a sin(pi/2 w) + b cos(pi/2 w).

    Since sin^2 + cos^2 = 1, the mix of two independent unit Gaussians is a unit Gaussian for
    every w. Returns (len(weights), *a.shape): w = 0 gives b, w = 1 gives a."""
    w = torch.tensor(list(weights), dtype=a.dtype, device=a.device).view(-1, *([1] * a.dim()))
    return a.unsqueeze(0) * torch.sin(math.pi / 2 * w) + b.unsqueeze(0) * torch.cos(math.pi / 2 * w)


SAMPLERS = {"ddim": ddim}


def get(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None
