"""A cascade (Ho et al. 2021, "Cascaded diffusion models", in its simplest form, without their
conditioning): a model of smaller images draws each image's layout; it is upsampled, noised to a
hand-over time and finished by the model of the full size (corolla.generation draws both); a
model's config.json may name the layout model the commands draw it after (own_layout). Either
stage may be class-conditional: the classes asked for are drawn by each conditional stage, so a
conditional layout model can give an unconditional model's images a species.

Why: the reference's U-Net at 64x64 decides each image's layout at the noisiest tenth of the
diffusion times, and there it draws fewer white flowers and less contrast between flower and
ground than the photos have; the same network trained at 32x32 draws them at nearly the photos'
rate, and what a 64x64 model is given at t = 0.8 it keeps (benchmarks/README.md, "A cascade").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import samplers
from .config import Config
from .diffusion import DiffusionModel
from .storage import checkpoint, pretrained
from .warmstart import source_path

LAYOUT_START = 0.8  # the hand-over time: the layout is settled above it, the detail is drawn below


@dataclass(frozen=True)
class Layout:
    """The first stage of a cascade: `model` draws image_size x image_size images, which the full-size
    model takes over at diffusion time `start`; `folder` holds its weights (for an image's recipe)."""
    model: DiffusionModel
    image_size: int
    start: float = LAYOUT_START
    folder: Path | None = None
    class_counts: tuple[int, ...] = ()  # a conditional layout model's training mix (Config.data.class_counts)
    source: str = ""  # the layout model as it was named (a recipe's)


def check_start(start: float) -> float:
    if not 0 < start < 1:  # also refuses NaN
        raise ValueError(f"layout start {start} is not allowed: it is the diffusion time in (0, 1) at which the "
                         f"model takes over the layout model's images (default {LAYOUT_START})")
    return float(start)


def check_layout(layout: Layout, model: DiffusionModel, image_size: int) -> None:
    """A ValueError unless `layout` can draw the first stage of `model`'s image_size images."""
    check_start(layout.start)
    own, its = model.network.config.classes, layout.model.network.config.classes
    if own and its and own != its:
        raise ValueError("the layout model and the model are both class-conditional but know different classes: "
                         "give a layout model trained on the same classes, or an unconditional one")
    if layout.image_size >= image_size:
        raise ValueError(f"the layout model draws {layout.image_size}x{layout.image_size} images: it must draw "
                         f"smaller ones than the model's {image_size}x{image_size}")


def load(source: str, model: DiffusionModel, image_size: int, device: torch.device, precision: str,
         start: float = LAYOUT_START) -> Layout:
    """The layout model `source` (a checkpoint or run folder, or a shipped model's name) as the first
    stage of `model`'s image_size images, in `precision` on `device`, checked (check_layout)."""
    folder = checkpoint.resolve(source_path(source))
    layout_model, config = checkpoint.load_for_sampling(folder, device, precision)
    layout = Layout(layout_model, config.data.image_size, check_start(start), folder,
                    tuple(config.data.class_counts or ()), str(source))
    check_layout(layout, model, image_size)
    return layout


def own_layout(folder: str | Path, config: Config) -> tuple[str, float] | None:
    """The layout model a checkpoint's config.json names (Config.sampling.layout) -> (its source for
    load: the sub-folder of `folder` of that name, else the shipped model, by name; its hand-over
    time), or None where it names none."""
    name = config.sampling.layout
    if name is None:
        return None
    start = LAYOUT_START if config.sampling.layout_start is None else config.sampling.layout_start
    own = Path(folder) / name
    if (own / checkpoint.CONFIG_FILE).is_file():
        return str(own), start
    if name not in pretrained.names():
        raise ValueError(f"{folder}'s config.json names the layout model {name!r}, which is neither a sub-folder "
                         f"of it nor a shipped model: give --layout MODEL or --no-layout")
    return name, start


def evaluations(model: DiffusionModel, layout: Layout | None, settings: samplers.SamplingSettings) -> int:
    """Network evaluations per image (what a progress bar counts): the settings' steps, and with a
    layout the layout model's steps and the model's below the hand-over."""
    if layout is None:
        return settings.steps
    times = samplers.get_grid(settings.time_grid, settings.steps, model.schedule)
    return settings.steps + len(samplers.times_from(times, layout.start)) - 1


def classed(model: DiffusionModel, layout: Layout | None) -> DiffusionModel:
    """The stage whose classes a request names: the model when it is conditional or has no layout,
    else the layout model (which then gives an unconditional model's images their class)."""
    if layout is None or model.network.config.classes or not layout.model.network.config.classes:
        return model
    return layout.model


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, h, w) in [0, 1] -> (N, C, size, size), bicubic: at the hand-over it keeps more of a 32x32
    image's own detail than bilinear (benchmarks/README.md, "A cascade")."""
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def handed_over(model: DiffusionModel, layouts: torch.Tensor, noise: torch.Tensor, start: float) -> torch.Tensor:
    """The layout images (N, C, h, w) in [0, 1], upsampled to noise's size and noised to `start` with
    `noise` -> the state in model's normalised space its sampler starts from at `start`."""
    clean = model.normalizer.normalize(upsample(layouts, noise.shape[-1]).to(noise.device))
    return samplers.noised(model.schedule, clean, noise, start)
