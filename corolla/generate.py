"""Seeded, batched generation: image i of a seed is the same whatever the batch it is drawn in.

Each image owns a torch.Generator seeded from (seed, image index), which draws its initial noise
and then, for stochastic samplers, its per-step noise; batching only stacks these draws.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from . import samplers
from .diffusion import DiffusionModel


class NotFinite(ValueError):
    """Generated images with NaN or infinite values: the network diverges (they would be written black)."""


def image_generator(seed: int, index: int) -> torch.Generator:
    """An independent stream per (seed, index), mixed by numpy's SeedSequence (no collisions
    between nearby seeds and indices, unlike seed + index)."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2 ** 63 - 1))


def _draw(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def initial_noise(seed: int, indices: range | list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """(len(indices), C, H, W) unit Gaussian noise: the starting point of images `indices`."""
    return _draw([image_generator(seed, i) for i in indices], shape)


@torch.inference_mode()
def sample_from_noise(model: DiffusionModel, noise: torch.Tensor, steps: int, sampler: str = "ddim",
                      eta: float = 0.0, generators: list[torch.Generator] | None = None,
                      grid: str = "uniform") -> torch.Tensor:
    """Decode a batch of initial noises with the EMA network -> images in [0, 1], (B,C,H,W).

    `steps` network evaluations on the named time grid (samplers.GRIDS; "uniform" is the
    reference's). `generators` (one per image, already past its initial noise) feed stochastic steps."""
    model.eval()
    device = next(model.parameters()).device
    times = samplers.get_grid(grid, steps, model.schedule)
    noise_fn = None
    if generators is not None:
        noise_fn = lambda: _draw(generators, tuple(noise.shape[1:])).to(device)
    run = samplers.get(sampler)
    pred_images = run(model.ema_denoiser(), model.schedule, noise.to(device), times, eta=eta, noise_fn=noise_fn)
    if not torch.isfinite(pred_images).all():  # the clamp of denormalize would hide an infinity
        raise NotFinite("the network's predictions hold NaN or infinite values: this model's weights do not "
                        "make images")
    return model.normalizer.denormalize(pred_images).float().cpu()


def generate_batches(model: DiffusionModel, num_images: int, steps: int = 20, seed: int = 0, sampler: str = "ddim",
                     eta: float = 0.0, batch_size: int = 64, image_size: int = 64, start: int = 0,
                     grid: str = "uniform") -> Iterator[tuple[int, torch.Tensor]]:
    """generate() one batch at a time -> (index of the batch's first image, its images), so that
    any number of images can be written as they are made."""
    shape = (model.network.config.channels, image_size, image_size)
    for first in range(start, start + num_images, batch_size):
        indices = range(first, min(first + batch_size, start + num_images))
        generators = [image_generator(seed, i) for i in indices]
        noise = _draw(generators, shape)
        yield first, sample_from_noise(model, noise, steps, sampler, eta, generators if eta > 0 else None, grid)


def generate(model: DiffusionModel, num_images: int, steps: int = 20, seed: int = 0, sampler: str = "ddim",
             eta: float = 0.0, batch_size: int = 64, image_size: int = 64, start: int = 0,
             grid: str = "uniform") -> torch.Tensor:
    """Images start..start+num_images-1 of `seed` -> (num_images, C, H, W) in [0, 1]."""
    return torch.cat([images for _, images in generate_batches(model, num_images, steps, seed, sampler, eta,
                                                               batch_size, image_size, start, grid)])
