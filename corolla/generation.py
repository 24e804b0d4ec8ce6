"""Seeded, batched generation: image i of a seed is the same whatever the batch it is drawn in.

Each image owns a torch.Generator seeded from (seed, image index), which draws its initial noise
and then, for stochastic samplers, its per-step noise; batching only stacks these draws. A class
asked of a conditional model draws nothing, so image i of a seed starts from the same noise
whatever its class; a class drawn for it (ClassMix) comes from a stream of its own.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from . import cascade, samplers
from .cascade import Layout
from .conditioning import DEFAULT_GUIDANCE
from .data.labels import class_number
from .diffusion import Denoiser, DiffusionModel
from .limits import check_evaluation_memory
from .portable.mix import ClassMix
from .portable.noise import stream_seed
from .samplers import SamplingSettings

# one class (name or number) for all images, one per image, a class drawn per image, or none
Classes = int | str | Sequence[int | str] | ClassMix | None
# called after each network evaluation with (evaluations so far, the predicted images in [0, 1] on
# the CPU), as k-diffusion's samplers call theirs: previews, progress and a server's cancellation
Callback = Callable[[int, torch.Tensor], None]


class NotFinite(ValueError):
    """Generated images with NaN or infinite values: the network diverges (they would be written black)."""


def seeded_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The random stream of `keys` (portable.noise.stream_seed): image i of a seed draws from
    (seed, i), whatever the batch, and its drawn class from (seed, i, portable.mix.CLASS_DRAW); a training
    step's micro-batch from (seed, step, slot)."""
    return torch.Generator(device=device).manual_seed(stream_seed(*keys))


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...],
               device: torch.device | str = "cpu") -> torch.Tensor:
    """The next unit Gaussian draw of each image's stream, stacked -> (len(generators), *shape);
    drawn on the CPU, so an image's noise is the same on every device."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def initial_noise(seed: int, indices: range | list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """(len(indices), C, H, W) unit Gaussian noise: the starting point of images `indices`."""
    return draw_noise([seeded_generator(seed, i) for i in indices], shape)


def class_names(model: DiffusionModel) -> tuple[str, ...]:
    """A conditional model's classes; a ValueError for an unconditional one."""
    if not model.network.config.classes:
        raise ValueError("this model is not class-conditional (it was trained without --conditional): "
                         "sample it without classes")
    return model.network.config.classes


def training_mix(model: DiffusionModel, class_counts: Sequence[int], layout: Layout | None = None) -> ClassMix:
    """A conditional model's training mix of classes (its Config.data.class_counts), or of a cascade
    whose model is unconditional, its layout model's (cascade.classed); a ValueError where no stage
    is conditional."""
    named = cascade.classed(model, layout)
    return ClassMix.of_training(class_names(named), class_counts if named is model else layout.class_counts)


def class_labels(model: DiffusionModel, classes: Classes, count: int) -> int | torch.Tensor | None:
    """`classes` as generate takes them -> None (unconditional), one class number for every image,
    or (count,) class numbers; names and numbers are checked against the model's classes."""
    if classes is None:
        return None
    names = class_names(model)
    if isinstance(classes, (int, str)):
        return class_number(names, classes)
    if len(classes) != count:
        raise ValueError(f"{len(classes)} classes for {count} images: give one class, or one per image")
    return torch.tensor([class_number(names, c) for c in classes], dtype=torch.long)


def drawn_classes(model: DiffusionModel, mix: ClassMix, seed: int, indices: range) -> torch.Tensor:
    """The classes `mix` draws for images `indices` of `seed` -> (len(indices),) class numbers
    (portable.mix: image i's from its own stream, the same in the ONNX sampler)."""
    return torch.tensor(mix.draw(seed, indices, len(class_names(model))), dtype=torch.long)


@torch.inference_mode()
def sample_from_noise(model: DiffusionModel, noise: torch.Tensor, steps: int, sampler: str = "ddim",
                      eta: float = 0.0, generators: list[torch.Generator] | None = None,
                      grid: str = "uniform", labels: torch.Tensor | None = None,
                      guidance: float = DEFAULT_GUIDANCE, callback: Callback | None = None,
                      guard: contextlib.AbstractContextManager | None = None, eps_scale: float | None = None,
                      start: float = 1.0) -> torch.Tensor:
    """Decode a batch of initial noises with the EMA network -> images in [0, 1], (B,C,H,W).

    `steps` network evaluations on the named time grid (samplers.GRIDS; "uniform" is the
    reference's). `generators` (one per image, already past its initial noise) feed stochastic steps.
    labels (B,): the class of each image of a conditional model, at classifier-free `guidance`
    (corolla.conditioning); None samples it unconditionally. callback: see Callback; an exception
    it raises stops the sampling. guard: a reusable context manager held around each network
    evaluation (a server's lock, so that jobs share the model one evaluation at a time). eps_scale:
    samplers.scaled_noise's; None is the model's own (model.eps_scale, from its Config.sampling).
    start < 1: `noise` is a state already noised to that time (a cascade's hand-over), sampled over
    the grid's part below it at the model's hand-over scale (DiffusionModel.handover_scale)."""
    model.eval()
    device = next(model.parameters()).device
    guided = labels is not None and guidance not in (0, 1)  # both predictions in one batch of 2B
    check_evaluation_memory(model.network, noise.shape[0] * (2 if guided else 1), noise.shape[-1], device)
    times = samplers.times_from(samplers.get_grid(grid, steps, model.schedule), start)
    noise_fn = None
    if generators is not None:
        noise_fn = lambda: draw_noise(generators, tuple(noise.shape[1:]), device)
    run = samplers.get(sampler)
    denoise = samplers.scaled_noise(model.ema_denoiser(None if labels is None else labels.to(device), guidance),
                                    model.sampling_eps_scale(eps_scale, sampler) if start >= 1
                                    else model.handover_scale(eps_scale, sampler))
    if callback is not None or guard is not None:
        denoise = _watched(denoise, model, callback, guard)
    pred_images = run(denoise, model.schedule, noise.to(device), times, eta=eta, noise_fn=noise_fn)
    if not torch.isfinite(pred_images).all():  # the clamp of denormalize would hide an infinity
        raise NotFinite("the network's predictions hold NaN or infinite values: this model's weights do not "
                        "make images")
    return model.normalizer.denormalize(pred_images).float().cpu()


def _watched(denoise: Denoiser, model: DiffusionModel, callback: Callback | None,
             guard: contextlib.AbstractContextManager | None) -> Denoiser:
    """`denoise` under `guard`, followed by callback(evaluations so far, predictions in [0, 1])."""
    guard = guard or contextlib.nullcontext()
    done = 0

    def watched(x: torch.Tensor, noise_rates: torch.Tensor, signal_rates: torch.Tensor):
        nonlocal done
        with guard:
            pred_noises, pred_images = denoise(x, noise_rates, signal_rates)
        done += 1
        if callback is not None:
            callback(done, model.normalizer.denormalize(pred_images).float().cpu())
        return pred_noises, pred_images
    return watched


def generate_batches(model: DiffusionModel, num_images: int, settings: SamplingSettings = SamplingSettings(), *,
                     image_size: int = 64, start: int = 0, classes: Classes = None,
                     guidance: float = DEFAULT_GUIDANCE, callback: Callback | None = None,
                     guard: contextlib.AbstractContextManager | None = None, layout: Layout | None = None
                     ) -> Iterator[tuple[int, torch.Tensor]]:
    """generate() one batch at a time -> (index of the batch's first image, its images), so that
    any number of images can be written as they are made. callback and guard: sample_from_noise's,
    for every batch (the callback's count starts again with each batch)."""
    s = settings
    shape = (model.network.config.channels, image_size, image_size)
    if layout is not None:
        cascade.check_layout(layout, model, image_size)
    named = cascade.classed(model, layout)  # a conditional layout model can take the classes alone
    wanted = (drawn_classes(named, classes, s.seed, range(start, start + num_images)) if isinstance(classes, ClassMix)
              else class_labels(named, classes, num_images))  # checked before any work
    conditional = bool(model.network.config.classes)
    for first in range(start, start + num_images, s.batch_size):
        indices = range(first, min(first + s.batch_size, start + num_images))
        generators = [seeded_generator(s.seed, i) for i in indices]
        labels = (None if wanted is None else torch.full((len(indices),), wanted) if isinstance(wanted, int)
                  else wanted[first - start:first - start + len(indices)])
        noise, begin, done = _first_state(model, layout, generators, shape, s, guard, labels, guidance, callback)
        finish = callback if callback is None or not done else (
            lambda count, preview, done=done: callback(done + count, preview))
        yield first, sample_from_noise(model, noise, s.steps, s.sampler, s.eta, generators if s.eta > 0 else None,
                                       s.time_grid, labels if conditional else None, guidance, finish, guard,
                                       s.eps_scale, begin)


def _first_state(model: DiffusionModel, layout: Layout | None, generators: list[torch.Generator],
                 shape: tuple[int, int, int], s: SamplingSettings, guard: contextlib.AbstractContextManager | None,
                 labels: torch.Tensor | None, guidance: float, callback: Callback | None
                 ) -> tuple[torch.Tensor, float, int]:
    """-> (the state a batch's sampling starts from, its time, the evaluations that made it). Without
    a layout: each image's initial noise at t = 1. With one: each image's stream draws the layout
    model's initial noise (and its steps' noise), the layout is sampled with the same settings at the
    layout model's own scale (a conditional one with the batch's labels at `guidance`, or at its
    null label; the callback sees its evaluations, the previews upsampled), then the stream draws the
    noise that takes it to layout.start."""
    if layout is None:
        return draw_noise(generators, shape), 1.0, 0
    small = (shape[0], layout.image_size, layout.image_size)
    conditional = bool(layout.model.network.config.classes)
    done = 0

    def counted(count: int, preview: torch.Tensor) -> None:
        nonlocal done
        done = count
        if callback is not None:
            callback(count, cascade.upsample(preview, shape[-1]))
    layouts = sample_from_noise(layout.model, draw_noise(generators, small), s.steps, s.sampler, s.eta,
                                generators if s.eta > 0 else None, s.time_grid,
                                labels if conditional else None, guidance, counted, guard)
    noise = draw_noise(generators, shape, next(model.parameters()).device)
    return cascade.handed_over(model, layouts, noise, layout.start), layout.start, done


def generate(model: DiffusionModel, num_images: int, settings: SamplingSettings = SamplingSettings(), *,
             image_size: int = 64, start: int = 0, classes: Classes = None, guidance: float = DEFAULT_GUIDANCE,
             callback: Callback | None = None, guard: contextlib.AbstractContextManager | None = None,
             layout: Layout | None = None) -> torch.Tensor:
    """Images start..start+num_images-1 of settings.seed -> (num_images, C, H, W) in [0, 1].

    The time grid is settings.time_grid, as `corolla sample` draws: the reference's uniform one for
    DDIM, log-SNR for the multistep samplers, unless settings.grid names one. classes (a conditional
    model): one class for every image or one per image, each a name or a number
    (labels.class_number), drawn at classifier-free `guidance` (corolla.conditioning: 0 is
    unconditional, 1 conditional, more is more of the class); None samples unconditionally.
    callback and guard: sample_from_noise's, for every batch (with a layout the callback counts both
    stages' evaluations and sees the layouts upsampled). layout: a cascade's first stage
    (corolla.cascade), whose images the model finishes from layout.start; each conditional stage
    draws the classes (an unconditional model's through a conditional layout model alone)."""
    return torch.cat([images for _, images in generate_batches(
        model, num_images, settings, image_size=image_size, start=start, classes=classes, guidance=guidance,
        callback=callback, guard=guard, layout=layout)])
