"""The held-out denoising loss: the training objective of the EMA network on images it never saw,
on a fixed grid of diffusion times with fixed noise per image, so checkpoints compare."""
from __future__ import annotations

import torch

from .. import schedules
from ..diffusion import DiffusionModel
from ..generation import seeded_generator

LOSS_TIMES = 10  # the grid (k + 1/2) / 10: a midpoint rule for the expectation over t ~ U(0, 1)


def loss_times(count: int = LOSS_TIMES) -> torch.Tensor:
    return (torch.arange(count, dtype=torch.float32) + 0.5) / count


@torch.no_grad()
def denoising_loss(model: DiffusionModel, images: torch.Tensor, seed: int = 0, times: int = LOSS_TIMES,
                   batch_size: int = 64, schedule: str = "") -> list[float]:
    """The L1 noise loss of the EMA network (BatchNorm frozen) at each time of loss_times(times),
    over uint8 images (N, C, H, W), at the noise levels of `schedule` (default: the model's own).
    Image i always gets the same noises, drawn from its own generator (seed, i), so the value
    depends neither on batching nor on other images."""
    rates = schedules.get(schedule) if schedule else None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    grid = loss_times(times)
    totals = torch.zeros(times, dtype=torch.float64)
    for first in range(0, images.shape[0], batch_size):
        batch = images[first:first + batch_size].to(device).float() / 255.0
        noises = torch.stack([torch.randn((times, *batch.shape[1:]), generator=seeded_generator(seed, i))
                              for i in range(first, first + batch.shape[0])]).to(device)  # (B, T, C, H, W)
        for k in range(times):
            t = torch.full((batch.shape[0], 1, 1, 1), float(grid[k]), device=device)
            totals[k] += model.noise_loss(batch, noises[:, k], t, ema=True, schedule=rates).item() * batch.shape[0]
    model.train(was_training)
    return (totals / images.shape[0]).tolist()
