"""Sampling an exported model with numpy and onnxruntime only: no PyTorch.

    from corolla.portable import sampling
    from corolla.samplers import SamplingSettings
    model = sampling.load("exported/")               # a folder written by corolla.portable.export
    images = model.generate(8)                       # (8, C, H, W) float32 in [0, 1]: 20 DDIM steps, seed 0
    images = model.generate(8, SamplingSettings(steps=10, sampler="dpmpp_2m"), classes="sunflower", guidance=3.0)
    images = model.generate(8, classes=model.training_mix)  # each image's class drawn at the training mix

The samplers and grids are corolla's own (corolla.samplers, corolla.schedules), run on numpy
arrays; the network is denoiser.onnx in an onnxruntime session; image i of a seed starts from
the noise PyTorch gives it (corolla.portable.noise), and stochastic DDIM (eta > 0) continues
that image's stream. So the images are PyTorch's float32 images for the same arguments, to
within 1/255 (tests/test_portable.py), as corolla.generate gives them: batches do not change an
image, a class asked of a conditional model draws nothing, and a class drawn at a mix is the one
PyTorch draws (corolla.portable.mix).

Dependencies: numpy and onnxruntime (CPU; the CUDA provider where onnxruntime-gpu is installed,
whose TF32 convolutions may round more than 1/255 away). Importing corolla.portable.sampling
imports neither torch nor any corolla module that does.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence

import numpy as np

from .. import samplers, schedules
from ..samplers import SamplingSettings
from . import folder, noise, upsampling
from .mix import ClassMix

Classes = int | str | Sequence[int | str] | ClassMix | None  # as corolla.generation.Classes


class NotFinite(ValueError):
    """The network's predictions hold NaN or infinite values (they would be written black)."""


def default_providers() -> list[str]:
    """onnxruntime's CUDA provider where it is available, then the CPU."""
    import onnxruntime
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class PortableModel:
    """An exported model (folder.SamplerSpec and an onnxruntime session), sampled like
    corolla.generation samples a DiffusionModel."""

    def __init__(self, path: str | os.PathLike, providers: Sequence | None = None, threads: int | None = None):
        import onnxruntime
        self.spec = folder.read(path)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(os.path.join(path, folder.ONNX_FILE), options,
                                                    providers=list(providers or default_providers()))
        self.schedule = schedules.get(self.spec.schedule)
        shape = (1, self.spec.channels, 1, 1)
        self.mean = np.asarray(self.spec.mean, np.float32).reshape(shape)
        self.variance = np.asarray(self.spec.variance, np.float32).reshape(shape)
        # a cascade's first stage (corolla.cascade): the export in layout/, finished from layout_start
        self.layout = (PortableModel(os.path.join(path, folder.LAYOUT_DIR), providers, threads)
                       if self.spec.layout else None)
        self.layout_start = self.spec.layout["start"] if self.spec.layout else 1.0
        if self.layout is not None and self.layout.spec.classes and self.spec.classes \
                and self.layout.spec.classes != self.spec.classes:
            raise folder.FolderError(f"{path}: the layout model and the model know different classes")

    @property
    def training_mix(self) -> ClassMix:
        """The mix of classes the model was trained on (sampler.json's class_mix; a cascade of an
        unconditional model: its layout model's), as `corolla sample --random-class` draws them; a
        ValueError where the export has none."""
        if self.classed is not self:
            return self.classed.training_mix
        self._classes()
        if not self.spec.class_mix:
            raise ValueError("this export keeps no training mix (it was written before corolla exported one): "
                             "export the model again, or give classes")
        return ClassMix(self.spec.class_mix)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return self.spec.channels, self.spec.image_size, self.spec.image_size

    def denoise(self, x: np.ndarray, noise_rates: np.ndarray, signal_rates: np.ndarray,
                labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (pred_noises, pred_images), as corolla.diffusion.DiffusionModel.denoise; labels (B,) of a
        conditional model, None for the null label."""
        feed = {"noisy_images": np.ascontiguousarray(x, np.float32),
                "noise_variances": np.ascontiguousarray(noise_rates ** 2, np.float32)}
        if self.spec.classes:
            feed["labels"] = np.full(len(x), self.spec.null_label, np.int64) if labels is None \
                else np.asarray(labels, np.int64)
        elif labels is not None:
            raise ValueError("this model is not class-conditional: it takes no labels")
        pred_noises = self.session.run([folder.OUTPUT], feed)[0]
        return pred_noises, (x - noise_rates * pred_noises) / signal_rates

    def denoiser(self, labels: np.ndarray | None = None, guidance: float | None = None) -> samplers.Denoiser:
        """The function samplers call; with labels (B,), guided towards them at classifier-free
        `guidance` (None: the export's default) exactly as corolla.conditioning.guided_denoiser."""
        if labels is None:
            return self.denoise
        guidance = self.spec.guidance if guidance is None else guidance
        if guidance == 1:
            return lambda x, n, s: self.denoise(x, n, s, labels)
        nulls = np.full_like(labels, self.spec.null_label)
        if guidance == 0:
            return lambda x, n, s: self.denoise(x, n, s, nulls)
        both = np.concatenate([labels, nulls])

        def guided(x: np.ndarray, noise_rates: np.ndarray, signal_rates: np.ndarray):
            twice = lambda a: np.concatenate([a, a])
            pred_noises, _ = self.denoise(twice(x), twice(noise_rates), twice(signal_rates), both)
            cond, uncond = pred_noises[:len(x)], pred_noises[len(x):]
            pred_noises = uncond + guidance * (cond - uncond)  # corolla.conditioning.guide
            return pred_noises, (x - noise_rates * pred_noises) / signal_rates
        return guided

    def normalize(self, images: np.ndarray) -> np.ndarray:
        return (images - self.mean) / np.maximum(np.sqrt(self.variance), folder.NORMALIZATION_EPS)

    def denormalize(self, images: np.ndarray) -> np.ndarray:
        return np.clip(self.mean + images * np.sqrt(self.variance), 0.0, 1.0)

    def sample_from_noise(self, initial_noise: np.ndarray, steps: int, sampler: str = "ddim", eta: float = 0.0,
                          generators: list[noise.TorchGenerator] | None = None, grid: str | None = None,
                          labels: np.ndarray | None = None, guidance: float | None = None,
                          eps_scale: float | None = None, start: float = 1.0) -> np.ndarray:
        """Decode a batch of initial noises -> images in [0, 1], (B, C, H, W) float32, as
        corolla.generation.sample_from_noise; generators (one per image, past its initial noise)
        feed stochastic steps; grid None: samplers.default_grid; eps_scale: samplers.scaled_noise's (None:
        the export's own for `sampler`, from sampler.json: samplers.own_eps_scale). start < 1: a
        cascade's hand-over state, sampled below `start` at the export's handover_eps_scale."""
        run = samplers.get(sampler)
        times = samplers.times_from(samplers.get_grid(grid or samplers.default_grid(sampler), steps, self.schedule,
                                                      backend="numpy"), start)
        shape = tuple(initial_noise.shape[1:])
        noise_fn = None if generators is None else lambda: noise.draw_noise(generators, shape)
        scale = eps_scale if eps_scale is not None else samplers.own_eps_scale(
            sampler, self.spec.eps_scale, self.spec.multistep_eps_scale,
            self.spec.handover_eps_scale if start < 1 else None)
        pred_images = run(samplers.scaled_noise(self.denoiser(labels, guidance), scale), self.schedule,
                          initial_noise, times, eta=eta, noise_fn=noise_fn)
        if not np.isfinite(pred_images).all():
            raise NotFinite("the network's predictions hold NaN or infinite values: this model's weights do not "
                            "make images")
        return self.denormalize(pred_images)

    def generate_batches(self, num_images: int, settings: SamplingSettings = SamplingSettings(), *, start: int = 0,
                         classes: Classes = None, guidance: float | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """generate() one batch at a time -> (index of the batch's first image, its images)."""
        s = settings
        named = self.classed
        wanted = (np.array(named.drawn_classes(classes, s.seed, range(start, start + num_images)), np.int64)
                  if isinstance(classes, ClassMix) else named.class_labels(classes, num_images))  # checked first
        for first in range(start, start + num_images, s.batch_size):
            indices = range(first, min(first + s.batch_size, start + num_images))
            generators = [noise.image_generator(s.seed, i, self.spec.noise_kernel) for i in indices]
            labels = None if wanted is None else wanted[first - start:first - start + len(indices)]
            initial = self._first_state(generators, s, labels, guidance)
            yield first, self.sample_from_noise(initial, s.steps, s.sampler, s.eta, generators if s.eta > 0 else None,
                                                s.time_grid, labels if self.spec.classes else None, guidance,
                                                s.eps_scale, self.layout_start)

    @property
    def classed(self) -> "PortableModel":
        """The stage whose classes a request names, as corolla.cascade.classed."""
        if self.layout is None or self.spec.classes or not self.layout.spec.classes:
            return self
        return self.layout

    def _first_state(self, generators: list[noise.TorchGenerator], s: SamplingSettings,
                     labels: np.ndarray | None, guidance: float | None) -> np.ndarray:
        """The state a batch's sampling starts from, as corolla.generation._first_state: its initial
        noise, or a cascade's layouts drawn from each image's stream, upsampled and noised to
        layout_start with the stream's next draw."""
        if self.layout is None:
            return noise.draw_noise(generators, self.shape)
        small = self.layout
        layouts = small.sample_from_noise(noise.draw_noise(generators, small.shape), s.steps, s.sampler, s.eta,
                                          generators if s.eta > 0 else None, s.time_grid,
                                          labels if small.spec.classes else None, guidance)
        clean = self.normalize(upsampling.upsample(layouts, self.spec.image_size))
        return samplers.noised(self.schedule, clean, noise.draw_noise(generators, self.shape), self.layout_start)

    def generate(self, num_images: int, settings: SamplingSettings = SamplingSettings(), *, start: int = 0,
                 classes: Classes = None, guidance: float | None = None) -> np.ndarray:
        """Images start..start+num_images-1 of settings.seed -> (num_images, C, H, W) float32 in
        [0, 1]: corolla.generate's arguments and images (the same settings.time_grid). classes: one
        class (name or number) for every image or one per image, of a conditional model; None
        samples unconditionally; a ClassMix draws each image's class (training_mix: as `corolla sample
        --random-class`)."""
        return np.concatenate([images for _, images in self.generate_batches(
            num_images, settings, start=start, classes=classes, guidance=guidance)])

    def drawn_classes(self, mix: ClassMix, seed: int, indices: Sequence[int]) -> list[int]:
        """The classes `mix` draws for images `indices` of `seed`, as corolla.generation.drawn_classes."""
        return mix.draw(seed, indices, len(self._classes()))

    def class_labels(self, classes: Classes, count: int) -> np.ndarray | None:
        """`classes` as generate takes them -> None or (count,) int64 class numbers."""
        if classes is None:
            return None
        names = self._classes()
        if isinstance(classes, (int, str)):
            return np.full(count, class_number(names, classes), np.int64)
        if len(classes) != count:
            raise ValueError(f"{len(classes)} classes for {count} images: give one class, or one per image")
        return np.array([class_number(names, c) for c in classes], np.int64)

    def _classes(self) -> tuple[str, ...]:
        """A conditional export's class names; a ValueError for an unconditional one."""
        if not self.spec.classes:
            raise ValueError("this model is not class-conditional: sample it without classes")
        return self.spec.classes


def class_number(classes: Sequence[str], wanted: int | str) -> int:
    """A class as a user gives it (its name, in any case, or its number) -> its number, as
    corolla.data.labels.class_number (which needs torch) reads it."""
    if isinstance(wanted, str):
        text = wanted.strip()
        folded = [name.casefold() for name in classes]
        if text in classes:
            return list(classes).index(text)
        if folded.count(text.casefold()) == 1:
            return folded.index(text.casefold())
        if not (text.isascii() and text.isdigit()):
            close = difflib.get_close_matches(text.casefold(), folded, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(repr(classes[folded.index(c)]) for c in close)}" if close else ""
            raise ValueError(f"unknown class {text[:80]!r}{hint}")
        wanted = int(text)
    if isinstance(wanted, bool) or not isinstance(wanted, (int, np.integer)) or not 0 <= wanted < len(classes):
        raise ValueError(f"class {wanted!r} is not one of this model's: 0 to {len(classes) - 1}, or a name")
    return int(wanted)


def load(path: str | os.PathLike, providers: Sequence | None = None, threads: int | None = None) -> PortableModel:
    """The exported model in folder `path` (checked: folder.read). providers: onnxruntime's (default:
    default_providers()); threads: onnxruntime's intra-op threads (None: its default, all cores)."""
    return PortableModel(path, providers, threads)
