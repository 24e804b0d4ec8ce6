"""Evaluating a model: its samples and the held-out and training images scored together (SWD,
held-out loss, memorisation, KID and FID), as `corolla evaluate` and training's evaluations do.

All image inputs are uint8 tensors (N, 3, H, W), generated images quantised as a PNG would be,
so generated and real images are measured the same way. Everything random draws from an explicit
seed: the same images give the same numbers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import cascade, distributed, limits
from .. import inception as inception_module
from ..conditioning import DEFAULT_GUIDANCE
from ..data import imagefolder, rundata
from ..data.imagefolder import cache_dir
from ..diffusion import DiffusionModel
from ..generation import SamplingSettings, generate, training_mix
from ..storage import checkpoint
from ..storage.grids import save_grid
from .features import fid, kid
from .loss import denoising_loss
from .memorisation import closest_pairs, memorisation, nearest_neighbours
from .swd import sliced_wasserstein


@dataclass(frozen=True)
class EvalSettings:
    samples: int = 256            # generated images per evaluation
    # sampling as every command samples (the reference's KID uses 5 steps during training)
    steps: int = SamplingSettings.steps
    sampler: str = SamplingSettings.sampler
    eta: float = SamplingSettings.eta
    eps_scale: float | None = SamplingSettings.eps_scale  # None: the model's own
    seed: int = SamplingSettings.seed  # generation, held-out noise, SWD and KID subsets all derive from it
    batch_size: int = SamplingSettings.batch_size
    kid_subsets: int = 100
    kid_subset_size: int = 1000   # clipped to the number of images
    train_loss_images: int = 64   # training images scored on the loss grid, beside the held-out ones
    # the losses' noise levels: a schedule's name, "" for the model's own; naming one compares
    # models trained under different schedules at the same levels
    loss_schedule: str = ""
    # a conditional model's images each of a class drawn at the training mix (generation.ClassMix),
    # at this guidance, as conditional models are scored in the field; False: unconditional
    random_class: bool = False
    guidance: float = DEFAULT_GUIDANCE

    @property
    def sampling(self) -> SamplingSettings:
        """How the images are drawn: on the sampler's default grid, as `corolla sample` draws them."""
        return SamplingSettings(steps=self.steps, sampler=self.sampler, eta=self.eta, batch_size=self.batch_size,
                                seed=self.seed, eps_scale=self.eps_scale)


PAIRS_MIN_SIZE = 64  # images in the nearest-pairs PNG are shown at least this big


def quantise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, rounding as a saved PNG would (grids.to_uint8)."""
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


class Evaluator:
    """Scores models against fixed data: training images (SWD, KID/FID and memorisation
    reference), held-out images (loss, and SWD as heldout_swd_RES) and fixed settings, so
    successive checkpoints compare.

    What does not depend on the model is computed once here: the training set's leave-one-out
    neighbour distances and, with an Inception network, the real images' features."""

    def __init__(self, train: torch.Tensor, heldout: torch.Tensor, settings: EvalSettings = EvalSettings(),
                 inception: torch.nn.Module | None = None, real_features: torch.Tensor | None = None):
        if train.dtype != torch.uint8 or train.dim() != 4:
            raise ValueError("Evaluator takes uint8 images (N, C, H, W)")
        self.train, self.heldout, self.settings, self.inception = train, heldout, settings, inception
        self.train_distances = nearest_neighbours(train, train, leave_one_out=True)[0]
        if inception is not None and real_features is None:
            real_features = inception_module.features(inception, train, settings.batch_size)
        self.real_features = real_features

    def generate(self, model: DiffusionModel) -> torch.Tensor:
        s = self.settings
        images = generate(model, s.samples, s.sampling, image_size=self.train.shape[-1])
        return quantise(images)

    def __call__(self, model: DiffusionModel, pairs_png: str | Path | None = None,
                 generated: torch.Tensor | None = None) -> dict[str, float | list | None]:
        """-> flat dict of metric values (lower is better for swd, heldout_loss, kid, fid);
        kid, kid_std and fid are None without an Inception network, heldout_loss without
        held-out images. pairs_png: where to save the closest generated/training pairs."""
        s = self.settings
        was_training = model.training
        if generated is None:  # uint8 images already made elsewhere (by several processes, say)
            generated = self.generate(model)
        results: dict[str, float | list | None] = {}
        swd = sliced_wasserstein(self.train, generated, s.seed)
        results["swd"] = sum(swd.values()) / len(swd)
        results.update({f"swd_{resolution}": value for resolution, value in swd.items()})
        # against images no model saw too: what the goals and the model cards compare with
        heldout_swd = sliced_wasserstein(self.heldout, generated, s.seed) if self.heldout.shape[0] else {}
        results.update({f"heldout_swd_{resolution}": value for resolution, value in heldout_swd.items()})
        by_time = (denoising_loss(model, self.heldout, s.seed, batch_size=s.batch_size, schedule=s.loss_schedule)
                   if self.heldout.shape[0] else None)
        results["heldout_loss"] = sum(by_time) / len(by_time) if by_time else None
        results["heldout_loss_by_time"] = by_time
        train_by_time = denoising_loss(model, self.train[:s.train_loss_images], s.seed, batch_size=s.batch_size,
                                       schedule=s.loss_schedule)
        results["train_loss"] = sum(train_by_time) / len(train_by_time)
        summary, distances, index = memorisation(generated, self.train, self.train_distances, self.heldout)
        results.update(summary)
        results["kid"] = results["kid_std"] = results["fid"] = None
        if self.inception is not None:
            fake_features = inception_module.features(self.inception, generated, s.batch_size)
            results["kid"], results["kid_std"], _ = kid(self.real_features, fake_features, s.kid_subsets,
                                                        s.kid_subset_size, s.seed)
            results["fid"] = fid(self.real_features, fake_features)
        if pairs_png is not None:
            pairs = closest_pairs(generated, self.train, distances, index)
            zoom = max(1, PAIRS_MIN_SIZE // pairs.shape[-1])  # small images are enlarged, pixels kept square
            pairs = pairs.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
            save_grid(pairs.float() / 255.0, pairs_png, ncol=2)
        model.train(was_training)
        return results


def cached_real_features(network: torch.nn.Module, images: torch.Tensor, weights: Path,
                         batch_size: int = 50) -> torch.Tensor:
    """Inception features of real images, cached in the corolla cache folder under a key of the
    images' bytes (so: of the data folder, image size, crop and split) and the weights file."""
    digest = hashlib.sha256(f"{tuple(images.shape)}|{inception_module.file_sha256(weights)}|".encode())
    digest.update(images.contiguous().numpy().tobytes())
    path = cache_dir() / "inception" / f"{digest.hexdigest()[:24]}.safetensors"
    hit = imagefolder.read_cache(path, images.shape[0] * inception_module.FEATURES * 4)
    if hit is not None and "features" in hit[0]:  # else computed again
        return hit[0]["features"].double()
    features = inception_module.features(network, images, batch_size)
    imagefolder.write_cache(path, {"features": features.float()})  # best effort: a warning when it cannot
    return features


def evaluate_checkpoint(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                        settings: EvalSettings = EvalSettings(), inception_weights: str | os.PathLike | None = None,
                        device: str = "auto", pairs_png: str | os.PathLike | None = None, precision: str = "auto",
                        heldout_dir: str | os.PathLike | None = None, layout: str | None = None,
                        layout_start: float = cascade.LAYOUT_START) -> dict | None:
    """`corolla evaluate` from Python: load a checkpoint and the data folder it was trained on
    (default: the bundled flowers), split it as training did, and score the checkpoint ->
    the metrics with what they were measured on (None on ranks other than 0). heldout_dir: real
    images the model never saw, scored against instead of the split's held-out share. KID and FID
    need Inception weights (the argument, $COROLLA_INCEPTION_WEIGHTS or the cache copy); without
    them they are None. layout: a cascade's layout model (corolla.cascade) whose images the model
    finishes from layout_start."""
    from ..devices import resolve_device
    started = time.perf_counter()
    world, dev = distributed.init(resolve_device(device))
    model, config = checkpoint.load_for_sampling(path, dev, precision)
    s = settings
    limits.check_held_images(s.samples, config.data.image_size, "--samples", model.network.config.channels)
    # under torchrun every process makes its share of the images; rank 0 scores them all
    first = None if layout is None else cascade.load(layout, model, config.data.image_size, dev, precision,
                                                     layout_start)
    classes = training_mix(model, config.data.class_counts, first) if s.random_class else None
    generated = distributed.generate_all(model, s.samples, s.sampling, image_size=config.data.image_size,
                                         classes=classes, guidance=s.guidance, layout=first)
    distributed.shutdown(world)
    if not world.is_main:
        return None
    folder = Path(data_dir) if data_dir else imagefolder.bundled_dir()
    images, _ = imagefolder.load_folder(folder, config.data.image_size, config.data.crop)
    parts, _ = rundata.split_images(config, images, heldout_dir)
    network, weights = inception_module.load_available(inception_weights, dev)
    real_features = None if network is None else cached_real_features(network, parts.train, weights,
                                                                      settings.batch_size)
    results = Evaluator(parts.train, parts.val, settings, network, real_features)(model, pairs_png, quantise(generated))
    return {"checkpoint": str(checkpoint.resolve(path)), "data": str(folder),
            "heldout": str(heldout_dir) if heldout_dir else None, "precision": model.precision,
            "image_size": config.data.image_size,
            "train_images": parts.train.shape[0], "heldout_images": parts.val.shape[0],
            **dataclasses.asdict(settings),
            "eps_scale": (model.sampling_eps_scale if first is None else model.handover_scale)(s.eps_scale, s.sampler),
            **({} if first is None else {"layout": str(first.folder), "layout_start": first.start}),
            "inception_weights": str(weights) if weights else None,
            "pairs_png": str(pairs_png) if pairs_png else None, **results,
            "seconds": time.perf_counter() - started}
