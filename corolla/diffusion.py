"""The diffusion model: normaliser, online and EMA U-Nets, noising, denoising and the loss.

Follows the reference's DiffusionModel: images are normalised to zero mean and unit variance per
channel, noised as signal_rate * x + noise_rate * eps, and the network predicts eps from the noisy
image and noise_rate^2; the predicted image is (noisy - noise_rate * pred_noise) / signal_rate.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from . import conditioning, losses, samplers, schedules
from . import precision as precisions
from .folding import fold_batchnorm
from .portable.folder import NORMALIZATION_EPS
from .unet import UNet, UNetConfig

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]

# Fraction of the forward activations a compiled network may keep for its backward pass. Below 1,
# AOTAutograd's partitioner recomputes the cheap BatchNorm and swish outputs in the backward
# instead of storing them, which lowers the peak memory of training at no measured cost in speed
# (the convolutions are never recomputed; figures in benchmarks/README.md).
ACTIVATION_MEMORY_BUDGET = 0.7


def compile_for_training(module: nn.Module) -> Callable:
    """torch.compile(module), partitioned for the backward under ACTIVATION_MEMORY_BUDGET (the
    setting is read when a call compiles, so it is applied around each call)."""
    compiled = torch.compile(module)

    def forward(*args, **kwargs):
        with torch._functorch.config.patch(activation_memory_budget=ACTIVATION_MEMORY_BUDGET):
            return compiled(*args, **kwargs)
    return forward


class Normalizer(nn.Module):
    """Per-channel mean and variance adapted on the training images (Keras' Normalization)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("variance", torch.ones(1, channels, 1, 1))

    def set_statistics(self, mean: torch.Tensor, variance: torch.Tensor) -> None:
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.variance.copy_(variance.reshape(self.variance.shape))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.variance.sqrt().clamp_min(NORMALIZATION_EPS)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        return (self.mean + images * self.variance.sqrt()).clamp(0.0, 1.0)


class DiffusionModel(nn.Module):
    """Holds the trained network, its EMA copy, the normaliser and the schedule's name, and the
    epsilon scales it is sampled with unless a caller chooses one (Config.sampling)."""

    def __init__(self, unet: UNetConfig = UNetConfig(), schedule: str = "offset_cosine",
                 ema_init: str = "copy", eps_scale: float = 1.0, multistep_eps_scale: float | None = None,
                 handover_eps_scale: float | None = None):
        super().__init__()
        self.network = UNet(unet)
        if ema_init == "copy":
            self.ema_network = copy.deepcopy(self.network)
        elif ema_init == "fresh":
            # the reference's clone_model: same architecture, its own random initialisation
            self.ema_network = UNet(unet)
        else:
            raise ValueError(f"unknown ema_init {ema_init!r}; choose copy or fresh")
        self.ema_network.requires_grad_(False)
        self.normalizer = Normalizer(unet.channels)
        self.schedule_name = schedule
        self.schedule = schedules.get(schedule)
        self.eps_scale = eps_scale
        self.multistep_eps_scale = multistep_eps_scale
        self.handover_eps_scale = handover_eps_scale
        self._channels_last = False
        self.precision = "fp32"
        self._forward: dict[bool, Callable] = {}  # compiled or folded forwards, keyed by `ema`; not submodules

    def sampling_eps_scale(self, chosen: float | None, sampler: str = "ddim") -> float:
        """The epsilon scale images are drawn at with `sampler`: `chosen` (a command's --eps-scale),
        else the model's own for that sampler (samplers.own_eps_scale)."""
        if chosen is not None:
            return chosen
        return samplers.own_eps_scale(sampler, self.eps_scale, self.multistep_eps_scale)

    def handover_scale(self, chosen: float | None, sampler: str = "ddim") -> float:
        """The epsilon scale it finishes a cascade's handed-over images at: `chosen`, else its
        Config.sampling.handover_eps_scale, else its own for `sampler`."""
        if chosen is not None:
            return chosen
        return samplers.own_eps_scale(sampler, self.eps_scale, self.multistep_eps_scale, self.handover_eps_scale)

    def accelerate(self, channels_last: bool = False, compile: bool = False,
                   compile_ema: bool = False, precision: str | None = None,
                   fold: bool = False) -> "DiffusionModel":
        """Speed options that leave the weights, their names and the maths alone: results change
        only by float rounding and checkpoints load either way (benchmarks/README.md has figures).

        channels_last: NHWC memory for both networks and their inputs, the layout oneDNN's and
          cuDNN's convolutions run in without reordering (faster on CPU and GPU).
        compile: torch.compile the trained network (compile_for_training); the generated kernels
          fuse its BatchNorm, swish, additions and concatenations, forward and backward, and keep
          fewer activations for the backward pass (faster, and less peak memory).
        compile_ema: torch.compile the EMA network too. On the CPU sampling is convolution-bound
          and gained nothing, while every batch size and train/eval mode costs a compilation, so
          it is separate; on GPUs, where the small kernels count, it can pay.
        precision: "fp32" or "bf16" (corolla.precision): bfloat16 autocast of both networks'
          convolutions and products, the weights stay float32 (CPU with AMX: about 2x); None
          keeps the current one (fp32 for a new model), as the other options leave theirs alone.
        fold: the EMA network's calls go to a copy with its BatchNorms folded into the convolutions
          (corolla.folding: one pass over the activations fewer per block; outputs equal to float32
          rounding). A snapshot for inference: a model that trains, loads weights or moves to
          another device afterwards must not be folded, or its EMA calls use the old weights."""
        if precision not in (None, "fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16 (resolve auto first), not {precision!r}")
        self.precision = precision or self.precision
        if channels_last:
            self.to(memory_format=torch.channels_last)
            self._channels_last = True
        if compile:
            self._forward[False] = compile_for_training(self.network)
        if fold:
            folded = fold_batchnorm(self.ema_network)
            self._forward[True] = folded.to(memory_format=torch.channels_last) if self._channels_last else folded
        if compile_ema:
            self._forward[True] = torch.compile(self._forward.get(True, self.ema_network))
        return self

    @property
    def sampling_network(self) -> nn.Module:
        """The module every EMA call (denoise(ema=True), so every sampler) goes through: the folded
        or compiled copy that accelerate made, else ema_network itself. Hooks that must see
        sampling's forward passes go on this one."""
        network = self._forward.get(True)
        return self.ema_network if network is None else network

    def use_online_forward(self, forward: Callable) -> None:
        """Route the online network's calls through a wrapper (DistributedDataParallel, compiled)."""
        self._forward[False] = forward

    def denoise(self, noisy_images: torch.Tensor, noise_rates: torch.Tensor, signal_rates: torch.Tensor,
                ema: bool = True, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pred_noises, pred_images); rates are (B,1,1,1). ema picks the EMA network; labels
        (B,) the classes of a conditional network (None: the unconditional prediction)."""
        network = self.sampling_network if ema else self._forward.get(False)
        if network is None:  # not `or`: a compiled module has no truth value
            network = self.network
        if self._channels_last:
            noisy_images = noisy_images.contiguous(memory_format=torch.channels_last)
        with precisions.autocast(self.precision, noisy_images.device):
            pred_noises = network(noisy_images, noise_rates ** 2, labels)
        pred_noises = pred_noises.float()
        pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
        return pred_noises, pred_images

    def ema_denoiser(self, labels: torch.Tensor | None = None,
                     guidance: float = conditioning.DEFAULT_GUIDANCE) -> Denoiser:
        """The EMA network as the stateless function samplers call; with labels (B,), guided
        towards those classes (conditioning.guided_denoiser)."""
        if labels is None:
            return lambda x, n, s: self.denoise(x, n, s, ema=True)
        return conditioning.guided_denoiser(lambda x, n, s, y: self.denoise(x, n, s, ema=True, labels=y),
                                            labels, guidance, len(self.network.config.classes))

    def noise_loss(self, images: torch.Tensor, noises: torch.Tensor, diffusion_times: torch.Tensor,
                   ema: bool = False, labels: torch.Tensor | None = None,
                   objective: losses.Objective = losses.Objective(), schedule: schedules.Schedule | None = None
                   ) -> torch.Tensor:
        """Mean error between the drawn and the predicted noise, as `objective` says (its times
        aside: the caller draws them): absolute (the reference's) or squared, of the noise or of the
        image it implies (losses.in_space); min_snr_gamma > 0 weights each image's error
        (losses.min_snr_weights); scales > 1 adds the error at coarser levels (losses.coarse_errors).

        images: (B,C,H,W) in [0, 1]; noises like images; diffusion_times (B,1,1,1); labels (B,)
        the classes of a conditional network, or None. schedule: the noise levels' (default: the
        model's own; another compares models of different schedules)."""
        images = self.normalizer.normalize(images)
        noise_rates, signal_rates = (schedule or self.schedule)(diffusion_times)
        noisy_images = signal_rates * images + noise_rates * noises
        pred_noises, _ = self.denoise(noisy_images, noise_rates, signal_rates, ema=ema, labels=labels)
        pred_noises, noises = losses.in_space(pred_noises, noises, noise_rates, signal_rates, objective.space)
        errors = losses.errors(pred_noises, noises, objective.loss)
        if not objective.min_snr_gamma and objective.scales == 1:
            return errors.mean()
        per_image = errors.mean(dim=(1, 2, 3)) + losses.coarse_errors(pred_noises, noises, objective.loss,
                                                                      objective.scales)
        if objective.min_snr_gamma:
            per_image = losses.min_snr_weights(noise_rates, signal_rates, objective.min_snr_gamma).flatten() * per_image
        return per_image.mean()

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema = decay * ema + (1 - decay) * online, over parameters and BatchNorm statistics
        (Keras' EMA loop covers every weight, moving statistics included)."""
        ema_tensors = [t for t in self.ema_network.state_dict().values() if t.is_floating_point()]
        tensors = [t for t in self.network.state_dict().values() if t.is_floating_point()]
        torch._foreach_lerp_(ema_tensors, tensors, 1.0 - decay)
