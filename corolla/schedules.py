"""Diffusion schedules: continuous diffusion times t in [0, 1] -> (noise_rates, signal_rates).

signal_rate = sqrt(abar_t) and noise_rate = sqrt(1 - abar_t), so signal^2 + noise^2 = 1 and
x_t = signal_rate * x_0 + noise_rate * eps (the closed form of the forward process).

Every schedule takes torch tensors or numpy arrays and answers in the same kind and precision
(corolla.portable.arrays), so that sampling without PyTorch uses these very functions.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from .portable import arrays

if TYPE_CHECKING:
    from .portable.arrays import Array

# times -> (noise_rates, signal_rates), torch tensors or numpy arrays of the times' shape and dtype
Schedule = Callable[["Array"], "tuple[Array, Array]"]

LINEAR_STEPS = 1000  # T of the discrete linear schedule
LINEAR_BETA_MIN, LINEAR_BETA_MAX = 1e-4, 0.02
OFFSET_MAX_SIGNAL, OFFSET_MIN_SIGNAL = 0.95, 0.02


def linear(diffusion_times: Array) -> tuple[Array, Array]:
    """DDPM's linear betas, accumulated over the given grid of times (the reference's form).

    As in the reference, abar is a cumulative product *along the given times*, so this is meant
    for a sorted grid such as `torch.arange(T) / T`; for arbitrary times use `linear_continuous`.
    """
    xp = arrays.of(diffusion_times)
    betas = LINEAR_BETA_MIN + diffusion_times * (LINEAR_BETA_MAX - LINEAR_BETA_MIN)
    alpha_bars = xp.cumprod(1.0 - betas)
    return xp.sqrt(1.0 - alpha_bars), xp.sqrt(alpha_bars)


def linear_continuous(diffusion_times: Array) -> tuple[Array, Array]:
    """The linear schedule at any times: abar(t) = prod over the T-grid of (1 - beta) up to t.

    log abar is the running sum of log(1 - beta_i) over i/T <= t; interpolating it linearly
    makes the schedule usable for training and sampling at continuous times.
    """
    xp = arrays.of(diffusion_times)
    grid = xp.arange(LINEAR_STEPS + 1) / LINEAR_STEPS
    betas = LINEAR_BETA_MIN + grid[1:] * (LINEAR_BETA_MAX - LINEAR_BETA_MIN)
    log_abar = xp.concat([xp.zeros64(grid[:1]), xp.cumsum(xp.log1p(-betas))])
    pos = xp.clip(xp.float64(diffusion_times), 0, 1) * LINEAR_STEPS
    lo = xp.index(xp.clip(xp.floor(pos), None, LINEAR_STEPS - 1))
    frac = pos - lo
    log_a = log_abar[lo] * (1 - frac) + log_abar[lo + 1] * frac
    alpha_bars = xp.astype(xp.exp(log_a), diffusion_times)
    return xp.sqrt(1.0 - alpha_bars), xp.sqrt(alpha_bars)


def cosine(diffusion_times: Array) -> tuple[Array, Array]:
    """abar = cos^2(t pi / 2): the cosine schedule without offset or scale."""
    xp = arrays.of(diffusion_times)
    angles = diffusion_times * (math.pi / 2)
    return xp.sin(angles), xp.cos(angles)


def offset_cosine(diffusion_times: Array) -> tuple[Array, Array]:
    """The reference model's schedule: the angle runs from acos(0.95) to acos(0.02), so the
    signal rate is 0.95 at t = 0 and 0.02 at t = 1 (no step is ever noise-free or signal-free)."""
    xp = arrays.of(diffusion_times)
    start = math.acos(OFFSET_MAX_SIGNAL)
    end = math.acos(OFFSET_MIN_SIGNAL)
    angles = start + diffusion_times * (end - start)
    return xp.sin(angles), xp.cos(angles)


SCHEDULES: dict[str, Schedule] = {
    "linear": linear_continuous,
    "cosine": cosine,
    "offset_cosine": offset_cosine,
}


def get(name: str) -> Schedule:
    """The schedule a config names; training and sampling use continuous times."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}") from None
