"""What the page computes, without the web: requests checked against bounds (the refusals name
what is allowed), then sampling with a preview after every network evaluation, interpolation,
editing (corolla.editing's SDEdit, inpainting and inversion, as the commands call them), and the
training run's files.

Jobs run in threads of their own and share the model one network evaluation at a time (the
server's Turns, serve/guards.py): a generation and an inpainting advance side by side, each with
its own images. A job whose page stopped it, or whose server is stopping, ends at its next
evaluation.

A class-conditional model's generation takes classes and a guidance, as `corolla sample --class
... --guidance` does; interpolation and editing use it unconditionally (the null label), as the
commands do.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .. import cascade, editing, figures, limits, samplers
from ..cascade import Layout
from ..conditioning import DEFAULT_GUIDANCE
from ..data.imagefolder import MAX_IMAGE_PIXELS
from ..data.labels import class_number
from ..diffusion import DiffusionModel
from ..generation import Callback, ClassMix, generate, sample_from_noise
from ..samplers import SamplingSettings, default_grid
from ..storage.recipe import Recipe, layout_details, with_layout
from .guards import Invalid, Turns

BadRequest = Invalid  # a request the server refuses; its message is shown in the page
OnStep = Callable[[int, "torch.Tensor | None"], None]  # (evaluations so far, a preview or None)
WHOLE_NUMBER = re.compile(r"-?[0-9]{1,20}")  # ASCII digits: "²".isdigit() is true, and int() refuses it
ANY_SPECIES = "any species (unconditional)"  # a class entry (as null is) for a row of the unconditional model
MIX_SPECIES = "every species, at the data set's mix"  # alone: a grid with each image's class drawn (ClassMix)


class Cancelled(Exception):
    """The page stopped the job, or the server is stopping: it ends at its next evaluation."""


@dataclass(frozen=True)
class Limits:
    max_images: int = 64        # per request, and at most MAX_PIXELS of them together
    max_steps: int = 200        # network evaluations per image
    max_frames: int = 32        # interpolation frames
    MAX_PIXELS = 64 * 64 * 64   # 64 images of 64x64: one request's images at the model's size


def _whole(params: dict, name: str, low: int, high: int, default: int, why: str = "") -> int:
    value = params.get(name, default)
    if isinstance(value, str) and WHOLE_NUMBER.fullmatch(value.strip()):
        value = int(value)
    if type(value) is not int:  # bool is an int, and 2.5 is no count
        raise BadRequest(f"{name} {limits.short(value)} is not a whole number")
    if not low <= value <= high:
        raise BadRequest(f"{name} {value:,} is not allowed: it must be from {low:,} to {high:,}{why}")
    return value


def _number(params: dict, name: str, low: float, high: float, default: float) -> float:
    value = params.get(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of 400 digits
        raise BadRequest(f"{name} {limits.short(value)} is not a number") from None
    if not low <= value <= high:  # also refuses NaN
        raise BadRequest(f"{name} {value:g} is not allowed: it must be from {low:g} to {high:g}")
    return value


def _choice(params: dict, name: str, options, default: str) -> str:
    value = params.get(name, default)
    if not isinstance(value, str) or value not in options:  # a list is unhashable: no `in` a dict
        raise BadRequest(f"{name} {limits.short(value)} is not allowed: choose {', '.join(sorted(options))}")
    return value


def _sampler(params: dict) -> tuple[str, str, float]:
    """-> (sampler, time grid, eta), with `corolla sample`'s defaults: the uniform grid for DDIM,
    log-SNR for the others, and eta > 0 for DDIM only (the others are deterministic)."""
    sampler = _choice(params, "sampler", samplers.SAMPLERS, SamplingSettings.sampler)
    grid = _choice(params, "grid", samplers.GRIDS, default_grid(sampler))
    eta = _number(params, "eta", 0.0, 1.0, SamplingSettings.eta)
    if eta > 0 and sampler != "ddim":
        raise BadRequest(f"eta {eta:g} needs the ddim sampler: {sampler} is deterministic (eta 0)")
    return sampler, grid, eta


def box_request(params: dict) -> tuple[int, int, int, int]:
    """A box's x, y, width and height in a photo's pixels, whole numbers; editing.box_mask checks that
    it lies inside the photo, as it checks `corolla inpaint --box X,Y,W,H`."""
    return tuple(_whole(params, name, -MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS, 0) for name in ("x", "y", "width", "height"))


@dataclass(frozen=True)
class SampleRequest:
    seed: int
    count: int
    steps: int
    sampler: str
    grid: str
    eta: float
    # a conditional model: one row of `count` images per entry, a class number, or None for a row
    # of the unconditional model; () is one unconditional grid
    classes: tuple[int | None, ...] = ()
    guidance: float = DEFAULT_GUIDANCE
    first: int = 0  # images first..first+count-1 of the seed (a result's own image: its index)
    mix: ClassMix | None = None  # instead of classes: each image's class drawn, in one square grid
    per_image: int = 0  # network evaluations per image where they are not `steps` (a cascade's)

    @property
    def columns(self) -> int | None:
        """One row per class, as `corolla sample --class` lays its grid out; else its square grid."""
        return self.count if self.classes else None

    @property
    def evaluations(self) -> int:
        return (self.per_image or self.steps) * max(1, len(self.classes))

    @property
    def settings(self) -> SamplingSettings:
        """One batch of the request's images (a row's, with classes)."""
        return SamplingSettings(self.steps, self.sampler, self.grid, self.eta, self.count, self.seed)


@dataclass(frozen=True)
class InterpolationRequest:
    first: int
    second: int
    frames: int
    steps: int
    photos: bool = False  # between two uploaded photos (their DDIM inversions) instead of two seeds

    @property
    def settings(self) -> SamplingSettings:
        """`corolla interpolate`'s: the uniform grid between seeds, the log-SNR one between photos."""
        return replace(editing.INVERSION if self.photos else SamplingSettings(), steps=self.steps)


@dataclass(frozen=True)
class EditRequest:
    strength: float
    steps: int
    seed: int
    sampler: str
    grid: str
    eta: float

    @property
    def settings(self) -> SamplingSettings:
        return SamplingSettings(self.steps, self.sampler, self.grid, self.eta, seed=self.seed)


@dataclass(frozen=True)
class InpaintRequest:
    steps: int
    resample: int
    jump: int
    seed: int

    @property
    def settings(self) -> SamplingSettings:
        return replace(editing.INPAINTING, steps=self.steps, seed=self.seed)


INPAINT_EVALUATIONS = 5  # RePaint's resampling may take this many times --max-steps evaluations


class Engine:
    """One loaded model, shared by every request. turns: the server's (shared by its models: one
    network evaluation at a time on the device); sha256: the weights' (storage/recipe.py), which
    every result's recipe names."""

    def __init__(self, model: DiffusionModel, image_size: int, name: str, limits: Limits = Limits(),
                 turns: Turns | None = None, sha256: str = "0" * 64, class_counts: tuple[int, ...] = (),
                 layout: Layout | None = None):
        self.model = model.eval()
        self.layout = layout  # the layout model its samples are drawn after (corolla.cascade), or None
        self.image_size = image_size
        self.name = name
        self.limits = limits
        self.sha256 = sha256
        self.channels = model.network.config.channels
        self.classes = model.network.config.classes  # () for an unconditional model
        # MIX_SPECIES's draw: the training images of each class (Config.data.class_counts)
        self.mix = ClassMix.of_training(self.classes, class_counts) if self.classes else None
        self.device = next(model.parameters()).device
        self.turns = turns or Turns()
        self.turns.watch(model.sampling_network)
        if layout is not None:
            self.turns.watch(layout.model.sampling_network)
        self.lock = self.turns.lock  # one network evaluation at a time

    @property
    def max_images(self) -> int:
        return max(1, min(self.limits.max_images, Limits.MAX_PIXELS // self.image_size ** 2))

    def info(self) -> dict:
        return {"model": self.name, "image_size": self.image_size, "device": str(self.device),
                "samplers": sorted(samplers.SAMPLERS), "grids": sorted(samplers.GRIDS),
                "max_images": self.max_images, "max_steps": self.limits.max_steps,
                "max_frames": self.limits.max_frames, "classes": list(self.classes),
                "guidance": DEFAULT_GUIDANCE, "max_guidance": limits.MAX_GUIDANCE}

    # -- requests -----------------------------------------------------------------------------

    def _steps(self, params: dict, defaults: SamplingSettings = SamplingSettings()) -> int:
        return _whole(params, "steps", 1, self.limits.max_steps, defaults.steps, " (this server's --max-steps)")

    def sample_request(self, params: dict) -> SampleRequest:
        steps = self._steps(params)
        classes, guidance, mix = self._classes(params)
        rows = max(1, len(classes))
        count = _whole(params, "count", 1, self.max_images // rows, min(16, self.max_images // rows),
                       f" (this server's --max-images at {self.image_size}x{self.image_size}"
                       f"{f', in {rows} rows' if rows > 1 else ''})")
        seed = _whole(params, "seed", 0, limits.MAX_SEED, SamplingSettings.seed)
        first = _whole(params, "first", 0, limits.MAX_IMAGES, 0)
        sampler, grid, eta = _sampler(params)
        request = SampleRequest(seed, count, steps, sampler, grid, eta, classes, guidance, first, mix)
        return replace(request, per_image=cascade.evaluations(self.model, self.layout, request.settings))

    def recipe(self, request: SampleRequest) -> Recipe:
        """The recipe of a request's grid (Recipe.image: each image's)."""
        made = Recipe(self.name, self.sha256, self.image_size, self.model.precision, request.seed, request.steps,
                      request.sampler, request.grid, request.eta, request.first, request.count,
                      tuple(None if c is None else self.classes[c] for c in request.classes),
                      request.guidance if request.classes or request.mix else None,
                      eps_scale=self.eps_scale(request.sampler), class_mix=request.mix.weights if request.mix else ())
        return made if self.layout is None else with_layout(made, self.layout, self.eps_scale(request.sampler))

    def eps_scale(self, sampler: str) -> float:
        """The scale the page's samples are drawn at: the model's own, or its hand-over scale after a layout."""
        return (self.model.sampling_eps_scale if self.layout is None else self.model.handover_scale)(None, sampler)

    def check_layout_of(self, made: Recipe) -> None:
        """A ValueError unless the recipe was drawn after this page's layout model (or, without one,
        after none), so that Generate makes it again."""
        ours = {} if self.layout is None else layout_details(self.layout)
        weights_and_time = lambda details: (details.get("layout_sha256"), details.get("layout_start"))
        if weights_and_time(made.details) != weights_and_time(ours):
            theirs = made.details.get("layout")
            drawn = f"after the layout model {theirs}" if theirs else "without a layout model"
            here = f"after its layout model {self.layout.source}" if self.layout else "alone"
            raise ValueError(f"the recipe was drawn {drawn}; this page draws {self.name} {here} (corolla sample with "
                             f"{f'--layout {theirs}' if theirs else '--no-layout'} makes it again)")

    def _classes(self, params: dict) -> tuple[tuple[int | None, ...], float, ClassMix | None]:
        """`classes` (a list of names, numbers, and null or ANY_SPECIES for "any", or MIX_SPECIES
        alone) and `guidance` -> (class numbers, guidance, the mix of MIX_SPECIES or None), checked
        as `corolla sample` checks --class, --random-class and --guidance."""
        wanted = params.get("classes", [])
        if not isinstance(wanted, list):
            raise BadRequest(f"classes {limits.short(wanted)} is not a list of class names or numbers")
        if not self.classes and (wanted or "guidance" in params):
            raise BadRequest("this model is not class-conditional (it was trained without --conditional): "
                             "it takes no classes and no guidance")
        if len(wanted) > self.max_images:
            raise BadRequest(f"{len(wanted):,} classes are too many: one row of images each, and at most "
                             f"{self.max_images} images (this server's --max-images at "
                             f"{self.image_size}x{self.image_size})")
        guidance = lambda: _number(params, "guidance", 0.0, limits.MAX_GUIDANCE, DEFAULT_GUIDANCE)
        if MIX_SPECIES in wanted:
            if len(wanted) > 1:
                raise BadRequest(f"{MIX_SPECIES!r} draws every image's species: choose it alone")
            return (), guidance(), self.mix
        try:
            classes = tuple(None if c is None or c == ANY_SPECIES else class_number(self.classes, c) for c in wanted)
        except ValueError as error:  # an unknown name, with the closest ones
            raise BadRequest(str(error)) from None
        if all(c is None for c in classes):  # "any" alone: the unconditional grid
            classes = ()
        if "guidance" in params and not classes:
            raise BadRequest("guidance needs a class: without one the model samples unconditionally")
        return classes, guidance(), None

    def interpolation_request(self, params: dict) -> InterpolationRequest:
        photos = [bool(params.get(key)) for key in ("first_photo", "second_photo")]
        if any(photos) and not all(photos):
            raise BadRequest("choose both photos to interpolate between photos, or neither for seeds")
        return InterpolationRequest(
            _whole(params, "first", 0, limits.MAX_SEED, 3), _whole(params, "second", 0, limits.MAX_SEED, 7),
            _whole(params, "frames", 2, self.limits.max_frames, editing.FRAMES, " (this server's limit)"),
            self._steps(params), all(photos))

    def edit_request(self, params: dict) -> EditRequest:
        """`corolla edit`'s options and defaults."""
        return EditRequest(_number(params, "strength", 0.0, 1.0, 0.6),
                           self._steps(params),
                           _whole(params, "seed", 0, limits.MAX_SEED, SamplingSettings.seed), *_sampler(params))

    def inpaint_request(self, params: dict) -> InpaintRequest:
        """`corolla inpaint`'s options and defaults, its evaluations bounded."""
        steps = self._steps(params, editing.INPAINTING)
        request = InpaintRequest(steps, _whole(params, "resample", 1, 100, editing.RESAMPLE),
                                 _whole(params, "jump", 1, steps, min(editing.JUMP, steps)),
                                 _whole(params, "seed", 0, limits.MAX_SEED, SamplingSettings.seed))
        evaluations = editing.repaint_evaluations(request.steps, request.resample, request.jump)
        if evaluations > INPAINT_EVALUATIONS * self.limits.max_steps:
            raise BadRequest(f"{request.steps} steps resampled {request.resample} times (jump {request.jump}) take "
                             f"{evaluations:,} network evaluations; this server allows "
                             f"{INPAINT_EVALUATIONS * self.limits.max_steps:,}")
        return request

    # -- sampling -----------------------------------------------------------------------------

    def _watch(self, on_step: OnStep, cancelled: threading.Event) -> Callback:
        """generation's callback for a job: on_step, and the job ends at the evaluation after it
        was stopped or the server began to stop."""
        def check() -> None:
            if cancelled.is_set() or self.turns.stopping.is_set():
                raise Cancelled
        check()

        def callback(done: int, preview: torch.Tensor) -> None:
            check()
            on_step(done, preview)
        return callback

    def sample(self, request: SampleRequest, on_step: OnStep, cancelled: threading.Event) -> torch.Tensor:
        """Images first..first+count-1 of the seed, the same as `corolla sample` gives; with
        classes, one such row per class, each sampled as `corolla sample --class C` samples it (its
        own batch, so its pixels do not depend on the other rows), row after row. on_step gets the
        rows done so far and the current row's predictions."""
        rows, evaluations = [], 0

        def step(_, preview):
            nonlocal evaluations
            evaluations += 1
            on_step(evaluations, torch.cat([*rows, preview]))
        for number in request.classes or (None,):  # the same images of the seed in every row
            rows.append(generate(self.model, request.count, request.settings, image_size=self.image_size,
                                 start=request.first, classes=request.mix or number, guidance=request.guidance,
                                 callback=self._watch(step, cancelled), guard=self.lock, layout=self.layout))
        return torch.cat(rows)

    def interpolate(self, request: InterpolationRequest, on_step: OnStep, cancelled: threading.Event) -> torch.Tensor:
        """The frames of `corolla interpolate --seeds FIRST SECOND` (deterministic DDIM)."""
        noise = figures.interpolation_noises(request.first, request.second, request.frames,
                                             (self.channels, self.image_size, self.image_size))
        return sample_from_noise(self.model, noise, request.steps, grid=request.settings.time_grid,
                                 callback=self._watch(on_step, cancelled), guard=self.lock)

    # -- photos: editing's functions evaluate the network inside; the turns take the lock for each
    # of those evaluations and stop the job between two of them ---------------------------------

    def _photo_call(self, call, on_step: OnStep, cancelled: threading.Event):
        with torch.inference_mode(), self.turns.job(cancelled, Cancelled, lambda done: on_step(done, None)):
            return call()

    @staticmethod
    def edit_evaluations(request: EditRequest, schedule) -> int:
        """The network evaluations of an SDEdit: those of its grid below the strength."""
        if request.strength == 0:
            return 0
        times = samplers.get_grid(request.grid, request.steps, schedule)
        return len(samplers.times_from(times, request.strength)) - 1

    def edit(self, request: EditRequest, photo: torch.Tensor, on_step: OnStep,
             cancelled: threading.Event) -> torch.Tensor:
        """What `corolla edit PHOTO` makes with the same options -> (1, C, H, W) in [0, 1]."""
        return self._photo_call(lambda: editing.edit(self.model, photo[None], request.strength, request.settings),
                                on_step, cancelled)

    def inpaint(self, request: InpaintRequest, photo: torch.Tensor, fill: torch.Tensor, on_step: OnStep,
                cancelled: threading.Event) -> torch.Tensor:
        """What `corolla inpaint PHOTO --mask MASK` makes with the same options -> (1, C, H, W)."""
        return self._photo_call(lambda: editing.inpaint(self.model, photo[None], fill[None], request.settings,
                                                        resample=request.resample, jump=request.jump),
                                on_step, cancelled)

    @staticmethod
    def photo_interpolation_evaluations(request: InterpolationRequest) -> int:
        """The inversion of both photos (refinement, then up the grid), then the frames' decoding."""
        return editing.INVERT_REFINE + request.steps - 1 + request.steps

    def interpolate_photos(self, request: InterpolationRequest, photos: torch.Tensor, on_step: OnStep,
                           cancelled: threading.Event) -> torch.Tensor:
        """The frames of `corolla interpolate --images A B`: both photos DDIM-inverted on the log-SNR
        grid, their noises slerped and decoded -> (frames, C, H, W)."""
        def call():
            noise = editing.invert(self.model, photos, request.settings)
            return editing.interpolate(self.model, [noise[0], noise[1]], request.frames, request.settings)[0]
        return self._photo_call(call, on_step, cancelled)


# -- the training run -------------------------------------------------------------------------------

MAX_CURVE_POINTS = 2000  # a long run's curve is thinned for the page


def _thin(steps: list, values: list) -> list[list[float]]:
    stride = max(1, math.ceil(len(steps) / MAX_CURVE_POINTS))
    points = list(zip(steps, values))
    kept = points[::stride] + ([points[-1]] if points and (len(points) - 1) % stride else [])
    return [[float(s), float(v)] for s, v in kept]


def run_summary(run_dir: Path, grid_pattern) -> dict:
    """The loss curves and the per-epoch grids of a run folder, read afresh (training may be
    writing it): metrics.jsonl's torn last line is skipped, as figures.read_metrics does."""
    series = figures.loss_series(figures.read_metrics(run_dir / "metrics.jsonl"))
    folder = run_dir / "samples"  # the grids it may serve: regular files, no link (safefile.read_run_file)
    grids = sorted(p.name for p in folder.iterdir() if grid_pattern.fullmatch(p.name) and p.is_file()
                   and not p.is_symlink()) if folder.is_dir() and not folder.is_symlink() else []
    return {"run": run_dir.name, "train": _thin(*series["train"]), "val": _thin(*series["val"]), "grids": grids}
