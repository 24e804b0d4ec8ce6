"""What made an image, written into its PNG: the recipe (model name and hash, seed, image index,
steps, sampler, time grid, eta, classes, guidance, precision), as Stable Diffusion UIs keep their
"parameters", so that a file says how to make it again. eps_scale (samplers.scaled_noise) is
written where it is not 1; a recipe without it is the reference's sampling. class_mix: the
weights a class was drawn with for each image (generation.ClassMix); empty where none was.

A PNG carries two text chunks: `corolla`, the recipe as JSON (read back by `read`), and
`parameters`, the same on one line for a person. A sampled image's recipe re-makes it bit for bit
(`remake`): image i of a seed does not depend on the batch it was drawn in (corolla.generation).
An edit's recipe records what was done (its strength, its photo's SHA-256) but needs the photo
to be re-made.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin

from .. import limits, samplers
from .digest import file_sha256

KEY = "corolla"          # the JSON chunk
HUMAN_KEY = "parameters"  # the one-line chunk Stable Diffusion UIs use
FORMAT = 1
KINDS = ("sample", "edit", "inpaint", "interpolate")
MAX_RECIPE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Recipe:
    """One image (count 1) or a grid of `count` images per row, from image `index` of `seed` on;
    `classes`: one row per entry (a class name, or None for the unconditional model); () is one
    unconditional grid; `class_mix`, where not empty, the weights each image's class was drawn
    with (generation.ClassMix) instead. `details`: what an edit adds (strength, the photo's SHA-256, ...)."""
    model: str
    model_sha256: str
    image_size: int
    precision: str
    seed: int
    steps: int
    sampler: str
    grid: str
    eta: float = 0.0
    index: int = 0
    count: int = 1
    classes: tuple[str | None, ...] = ()
    guidance: float | None = None
    kind: str = "sample"
    details: dict = field(default_factory=dict)
    eps_scale: float = 1.0
    class_mix: tuple[int, ...] = ()

    def image(self, i: int, row: int = 0) -> Recipe:
        """The recipe of image i of row `row` of this one (a grid's or a batch's)."""
        classes = self.classes[row:row + 1] if self.classes else ()
        return dataclasses.replace(self, index=self.index + i, count=1, classes=classes)

    def adding(self, **details) -> Recipe:
        return dataclasses.replace(self, details={**self.details, **details})

    def to_json(self) -> str:
        return json.dumps({KEY: FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    def line(self) -> str:
        """The recipe for a person, as the `parameters` chunk holds it."""
        rows = ", ".join("any" if c is None else c for c in self.classes)
        parts = [f"{self.kind}", f"model {self.model} (sha256 {self.model_sha256[:12]})", f"seed {self.seed}",
                 f"image {self.index}" + (f" to {self.index + self.count - 1}" if self.count > 1 else ""),
                 f"{self.steps} steps", f"sampler {self.sampler}", f"grid {self.grid}", f"eta {self.eta:g}",
                 f"precision {self.precision}", f"{self.image_size}x{self.image_size}"]
        if self.eps_scale != 1:
            parts.insert(parts.index(f"eta {self.eta:g}") + 1, f"eps scale {self.eps_scale:g}")
        if self.classes:
            parts.append(f"class {rows}, guidance {self.guidance:g}")
        if self.class_mix:
            parts.append(f"class drawn by {len(self.class_mix)} weights, guidance {self.guidance:g}")
        parts += [f"{name} {value}" for name, value in sorted(self.details.items())]
        return ", ".join(parts)

    def pnginfo(self) -> PngImagePlugin.PngInfo:
        info = PngImagePlugin.PngInfo()
        info.add_itxt(KEY, self.to_json())
        info.add_itxt(HUMAN_KEY, self.line())
        return info


def for_checkpoint(checkpoint: str | os.PathLike, given: str | None, model, image_size: int, settings,
                   **fields) -> Recipe:
    """The recipe of images a command makes from `checkpoint` with `settings` (a SamplingSettings).
    given: the checkpoint or run folder as the command line gave it; None for a shipped model, then
    named by its folder. `fields`: the Recipe's others (count, classes, guidance, kind, details)."""
    from .checkpoint import resolve
    return Recipe(model=given or Path(checkpoint).name, model_sha256=model_sha256(resolve(checkpoint)),
                  image_size=image_size, precision=model.precision, seed=settings.seed, steps=settings.steps,
                  sampler=settings.sampler, grid=settings.time_grid, eta=settings.eta,
                  eps_scale=model.sampling_eps_scale(settings.eps_scale, settings.sampler), **fields)


def layout_details(layout) -> dict:
    """What a recipe says of a cascade's first stage (corolla.cascade.Layout): the layout model as it
    was named, its weights' SHA-256 and the hand-over time."""
    return {"layout": layout.source, "layout_sha256": model_sha256(layout.folder), "layout_start": layout.start}


def with_layout(recipe: Recipe, layout, eps_scale: float) -> Recipe:
    """`recipe` of a cascade's images: layout_details, and the scale the model finished them at."""
    return dataclasses.replace(recipe, eps_scale=eps_scale).adding(**layout_details(layout))


def model_sha256(checkpoint_folder: str | os.PathLike) -> str:
    """The SHA-256 of a checkpoint's weights file (what names a model's exact weights)."""
    return file_sha256(Path(checkpoint_folder) / "model.safetensors")


def photos(paths) -> dict[str, str]:
    """An edit's photos for its recipe: {file name: SHA-256}."""
    return {Path(path).name: file_sha256(path) for path in paths}


# -- reading a PNG's recipe: a file from anywhere, checked field by field ------------------------

def _field(raw: dict, name: str, rule: limits.Rule):
    value = raw.get(name)
    allowed = rule(value)
    if allowed is not None:
        raise ValueError(f"the recipe's {name} {limits.short(value)} is not allowed: it must be {allowed}")
    return value


def _one_of(options) -> limits.Rule:
    return lambda v: None if isinstance(v, str) and v in options else f"one of {', '.join(sorted(options))}"


def _text_or_none(v) -> str | None:
    return None if v is None or (isinstance(v, str) and 0 < len(v) <= limits.MAX_CLASS_NAME) else "a class name"


def from_json(text: str) -> Recipe:
    """A recipe's JSON -> Recipe; a field missing or out of its bounds is a ValueError naming it."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("the recipe is not readable JSON") from None
    if not isinstance(raw, dict) or raw.get(KEY) != FORMAT:
        raise ValueError(f"not a corolla recipe (format {FORMAT})")
    whole = limits.integer
    classes = _field(raw, "classes", lambda v: None if isinstance(v, list) and len(v) <= limits.MAX_CLASSES
                     and all(_text_or_none(c) is None for c in v) else "a list of class names or null")
    guidance = _field(raw, "guidance", lambda v: None if v is None or limits.number(0, limits.MAX_GUIDANCE)(v) is None
                      else f"null or a number from 0 to {limits.MAX_GUIDANCE:g}")
    details = _field(raw, "details", lambda v: None if isinstance(v, dict) else "an object")
    class_mix = _field({"class_mix": [], **raw}, "class_mix", limits.sequence(limits.integer(0, 2 ** 40), 0,
                                                                            limits.MAX_CLASSES))
    return Recipe(model=_field(raw, "model", lambda v: None if isinstance(v, str) and 0 < len(v) <= 4096
                               else "a model name or path"),
                  model_sha256=_field(raw, "model_sha256", lambda v: None if isinstance(v, str) and len(v) == 64
                                      and all(c in "0123456789abcdef" for c in v) else "64 hexadecimal digits"),
                  image_size=_field(raw, "image_size", whole(1, limits.MAX_IMAGE_SIZE)),
                  precision=_field(raw, "precision", _one_of(("fp32", "bf16"))),
                  seed=_field(raw, "seed", whole(0, limits.MAX_SEED)),
                  steps=_field(raw, "steps", whole(1, limits.MAX_STEPS)),
                  sampler=_field(raw, "sampler", _one_of(samplers.SAMPLERS)),
                  grid=_field(raw, "grid", _one_of(samplers.GRIDS)),
                  eta=float(_field(raw, "eta", limits.number(0, 1))),
                  eps_scale=float(_field({"eps_scale": 1.0, **raw}, "eps_scale", limits.number(*samplers.EPS_SCALES))),
                  index=_field(raw, "index", whole(0, limits.MAX_IMAGES)),
                  count=_field(raw, "count", whole(1, limits.MAX_IMAGES)),
                  classes=tuple(classes), guidance=None if guidance is None else float(guidance),
                  kind=_field(raw, "kind", _one_of(KINDS)), details=details, class_mix=tuple(class_mix))


def read(path: str | os.PathLike) -> Recipe:
    """The recipe in a PNG written by corolla; a ValueError says why a file has none."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"{str(path)!r} is a {image.format} file, not a PNG: only PNGs carry a recipe")
            text = image.text.get(KEY)  # PIL bounds each text chunk (ImageFile.MAX_TEXT_CHUNK)
    except (OSError, SyntaxError) as error:  # not an image, truncated
        raise ValueError(f"{str(path)!r} is not a PNG corolla can read ({error})") from None
    if text is None:
        raise ValueError(f"{str(path)!r} carries no corolla recipe (no {KEY!r} text chunk)")
    if len(text) > MAX_RECIPE_BYTES:
        raise ValueError(f"{str(path)!r}: its recipe is over {MAX_RECIPE_BYTES:,} bytes")
    try:
        return from_json(text)
    except ValueError as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


# -- making the images again --------------------------------------------------------------------

def check_model(recipe: Recipe, weights_sha256: str, image_size: int) -> None:
    """A model whose weights are not the recipe's would make other images: refuse it."""
    if weights_sha256 != recipe.model_sha256:
        raise ValueError(f"the recipe's model is {recipe.model} with weights sha256 {recipe.model_sha256[:12]}..., "
                         f"not these (sha256 {weights_sha256[:12]}...): it would make other images")
    if image_size != recipe.image_size:
        raise ValueError(f"the recipe's images are {recipe.image_size}x{recipe.image_size}, the model's "
                         f"{image_size}x{image_size}")


def load_model(recipe: Recipe, device: str | torch.device = "cpu", checkpoint: str | os.PathLike | None = None):
    """The recipe's model (a shipped name or the path it was given by; `checkpoint` instead when
    the files moved), in the recipe's precision, its weights checked -> (model, config)."""
    from . import pretrained
    from .checkpoint import load_for_sampling, resolve
    source = checkpoint or (pretrained.path(recipe.model) if recipe.model in pretrained.names() else recipe.model)
    model, config = load_for_sampling(source, torch.device(device), recipe.precision)
    check_model(recipe, model_sha256(resolve(source)), config.data.image_size)
    return model, config


def remake(recipe: Recipe, model, batch_size: int = 64) -> torch.Tensor:
    """The images of a sampling recipe, from `model` (loaded in the recipe's precision; see
    check_model) -> (rows * count, C, H, W) in [0, 1], rows in the recipe's order."""
    from ..conditioning import DEFAULT_GUIDANCE
    from ..generation import ClassMix, generate
    from ..samplers import SamplingSettings
    if recipe.kind != "sample":
        raise ValueError(f"the recipe of an {recipe.kind} needs its photo: only sampled images are made again from "
                         f"a recipe alone")
    if model.precision != recipe.precision:
        raise ValueError(f"the recipe was made in {recipe.precision}, the model runs in {model.precision}: "
                         f"load it with --precision {recipe.precision}")
    guidance = DEFAULT_GUIDANCE if recipe.guidance is None else recipe.guidance
    settings = SamplingSettings(recipe.steps, recipe.sampler, recipe.grid, recipe.eta, batch_size, recipe.seed,
                                recipe.eps_scale)
    return torch.cat([generate(model, recipe.count, settings, image_size=recipe.image_size, start=recipe.index,
                               classes=ClassMix(recipe.class_mix) if recipe.class_mix else row, guidance=guidance)
                      for row in recipe.classes or (None,)])


def columns(recipe: Recipe) -> int | None:
    """The grid's columns, as `corolla sample` lays it out: one row per class, else square."""
    return recipe.count if recipe.classes else None
