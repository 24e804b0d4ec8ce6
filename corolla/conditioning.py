"""Class conditioning with classifier-free guidance (Ho and Salimans 2022).

One network learns both the class-conditional and the unconditional noise prediction: in training,
each image's class is replaced by the null label (the last row of the class embedding) with
probability `label_dropout`. When sampling, the two predictions of one step are mixed as

    pred_noise = uncond + guidance * (cond - uncond)

so guidance 0 is the unconditional model, 1 the conditional one, and above 1 pushes further
towards the class at the cost of diversity (Ho and Salimans' w is guidance - 1; this is the scale
diffusers calls guidance_scale). The guided denoiser is a plain function wrapping the network, so
the samplers stay stateless and need no change.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_GUIDANCE = 3.0  # the example; benchmarks/class_accuracy.py measures the trade-off

# (noisy images, noise rates, signal rates, labels (B,)) -> (pred_noises, pred_images), as
# DiffusionModel.denoise; without labels it is a diffusion.Denoiser
LabelledDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                            "tuple[torch.Tensor, torch.Tensor]"]


MODULATIONS = ("shift", "scale-shift")  # what each residual block does with the class (ClassMap)


class ClassEmbedding(nn.Module):
    """A learned vector per class, and one for the null label (row `num_classes`), that every
    residual block turns into a per-channel shift of its features, or a scale and a shift
    (ClassMap; corolla.unet says why there).

    Drawn at random (unit normal): the shifts start at zero, and a zero vector times a zero map
    would give neither a gradient. The network draws it after every other weight, so the rest is
    what the same seed gives the unconditional network."""

    def __init__(self, num_classes: int, size: int):
        super().__init__()
        self.null_label = num_classes
        self.weight = nn.Parameter(torch.randn(num_classes + 1, size))

    def forward(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """labels (B,) class numbers, None for the null label -> (B, size)."""
        if labels is None:
            labels = torch.full((batch,), self.null_label, dtype=torch.long, device=self.weight.device)
        return self.weight[labels]


class ClassMap(nn.Module):
    """(B, size) class vectors -> (B, width, 1, 1): a residual block's shift of its features, or
    the scale's departure from 1.

    Zero at initialisation, with no random numbers drawn: a new conditional network computes
    exactly what its unconditional twin does, whatever the label."""

    def __init__(self, size: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width, size))

    def forward(self, classes: torch.Tensor) -> torch.Tensor:
        return F.linear(classes, self.weight)[:, :, None, None]


class ClassNoiseJoin(nn.Module):
    """A class vector and the noise level's embedding -> one vector per image for the blocks'
    ClassMaps: swish(linear([class, noise])). Without it a class moves a block's features by the
    same amount at every noise level, though it decides a noisy image's layout and colours and
    should leave the last, fine steps alone; ADM lets the class act through its timestep
    embedding for the same reason. Its weights are random (PyTorch's Linear default): the
    ClassMaps reading it start at zero, so the network still starts as its unconditional twin."""

    def __init__(self, size: int, out: int):
        super().__init__()
        self.linear = nn.Linear(2 * size, out)

    def forward(self, classes: torch.Tensor, noise_embedding: torch.Tensor) -> torch.Tensor:
        """classes (B, size), noise_embedding (B, size) -> (B, out)."""
        return F.silu(self.linear(torch.cat([classes, noise_embedding.to(classes.dtype)], dim=1)))


def drop_labels(labels: torch.Tensor, rate: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Each label replaced by the null label with probability `rate`. One uniform number per image
    is drawn from `generator` whatever the rate, so the draws that follow do not depend on it."""
    dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < rate
    return torch.where(dropped, torch.full_like(labels, null_label), labels)


def guide(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """uncond + guidance * (cond - uncond): Ho and Salimans' eq. 6 with w = guidance - 1."""
    return uncond + guidance * (cond - uncond)


def guided_denoiser(denoise: LabelledDenoiser, labels: torch.Tensor, guidance: float, null_label: int
                    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]:
    """The Denoiser samplers call, for images of classes `labels` (B,) at `guidance`.

    Guidance 1 is the conditional prediction and 0 the unconditional one, each one network
    evaluation (and so exactly those); any other value evaluates the conditional and unconditional
    halves in one batch of 2B and mixes their noise predictions (guide)."""
    nulls = torch.full_like(labels, null_label)
    if guidance == 1:
        return lambda x, noise_rates, signal_rates: denoise(x, noise_rates, signal_rates, labels)
    if guidance == 0:
        return lambda x, noise_rates, signal_rates: denoise(x, noise_rates, signal_rates, nulls)
    both = torch.cat([labels, nulls])

    def guided(x: torch.Tensor, noise_rates: torch.Tensor, signal_rates: torch.Tensor):
        pred_noises, _ = denoise(torch.cat([x, x]), torch.cat([noise_rates, noise_rates]),
                                 torch.cat([signal_rates, signal_rates]), both)
        cond, uncond = pred_noises.chunk(2)
        pred_noises = guide(cond, uncond, guidance)
        # the image this noise implies, as DiffusionModel.denoise separates them
        return pred_noises, (x - noise_rates * pred_noises) / signal_rates
    return guided
