"""The page of `corolla serve`, built with Gradio: Generate (with its results, history and
re-making from a PNG), Edit a photo (SDEdit and inpainting), Interpolate, and the training run.

Every job goes through Gradio's queue (its position shown while it waits) and streams its
progress from a thread (serve/jobs.py); the Stop buttons cancel it at its next network
evaluation. Its fields are checked by the engine (serve/engine.py), whose refusals name what is
allowed; the page's components pass values on unchecked, so that a value sent through the API is
refused with the same words. The named API endpoints are /generate, /interpolate, /edit and
/inpaint (gradio_client); the page's other events are private.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from .. import editing, limits, samplers
from ..conditioning import DEFAULT_GUIDANCE
from ..storage import recipe as recipes
from ..storage.grids import grid_array, to_uint8
from . import jobs, photos
from .engine import ANY_SPECIES, MIX_SPECIES, Engine, box_request
from .models import Catalogue, step_of
from .results import Result, Results, caption, title
from .run import RunPanel

AUTO_GRID = "auto"
PROGRESS = gr.Progress()  # marks a handler's progress parameter; Gradio gives each call a tracker of its own
HISTORY = 24  # results a browser remembers
CSS = """
.gradio-container {max-width: 1280px !important}
#preview img, #results img, #square img, #frame img, #photo-result img {image-rendering: pixelated}
@media (max-width: 480px) { [role=tablist] button {padding-left: 8px !important; padding-right: 8px !important} }
"""


def _unchecked(component: gr.components.Component) -> gr.components.Component:
    """`component` passing the value it is sent on as it is: the engine checks it (a subclass would
    make Gradio write a .pyi file beside this module)."""
    component.preprocess = lambda payload: payload
    return component


def slider(*args, **kwargs) -> gr.Slider:
    return _unchecked(gr.Slider(*args, **kwargs))


def dropdown(*args, **kwargs) -> gr.Dropdown:
    return _unchecked(gr.Dropdown(*args, **kwargs))


def number(*args, **kwargs) -> gr.Number:
    return _unchecked(gr.Number(*args, **kwargs))


def species_choices(classes: tuple[str, ...]) -> list[str]:
    """A conditional model's species picker: "any" (a row of the unconditional model), "every" (alone:
    each image's species drawn at the data set's mix), then its classes."""
    return [ANY_SPECIES, MIX_SPECIES, *classes]


def _pixels(images: torch.Tensor, columns: int | None = None) -> np.ndarray:
    return grid_array(images, columns)


def _layers(editor: dict | None) -> list[np.ndarray]:
    """The image editor's painted layers."""
    return [np.asarray(layer) for layer in (editor or {}).get("layers") or []]


def _refused(error: Exception) -> gr.Error:
    return gr.Error(str(error), print_exception=False)


async def _follow(work: jobs.Work, total: int, engine: Engine, progress: gr.Progress):
    """jobs.run, with Gradio's progress bar (and the time left) moved at each evaluation; a job
    refused or failed is the page's error, with its message."""
    async for update in jobs.run(work, total, engine.turns):
        if isinstance(update, jobs.Progress):
            progress((min(update.done, total), total), desc=update.text(), unit="steps")
        elif isinstance(update.result, jobs.Refused):
            raise _refused(update.result)
        yield update


class Page:
    """The page's handlers over one catalogue of models, one results folder and maybe a run."""

    def __init__(self, catalogue: Catalogue, results: Results, run: RunPanel | None = None,
                 default: str | None = None):
        self.catalogue, self.results, self.run = catalogue, results, run
        self.default = default or catalogue.labels[0]

    def engine(self, label: Any) -> Engine:
        try:
            return self.catalogue.engine(label if isinstance(label, str) else "")
        except ValueError as error:
            raise _refused(error) from None

    # -- generate --------------------------------------------------------------------------------

    def model_controls(self, label: str):
        """The model's description, its species (a conditional model), and its count's range."""
        engine = self.engine(label)
        conditional = bool(engine.classes)
        return (self.catalogue.describe(label),
                gr.update(choices=species_choices(engine.classes), value=[], visible=conditional),
                gr.update(visible=conditional),
                gr.update(maximum=engine.max_images, value=min(16, engine.max_images)),
                gr.update(maximum=engine.limits.max_steps))

    async def generate(self, model: str, species: list, guidance: float, seed: int, first: int, count: int,
                       steps: int, sampler: str, grid: str, eta: float, progress: gr.Progress = PROGRESS):
        """Images first..first+count-1 of the seed (one row per species, in the order chosen; "any
        species", the unconditional model's), as `corolla sample` makes them; a preview of the
        network's predictions after each step."""
        engine = self.engine(model)
        params = {"seed": seed, "first": first, "count": count, "steps": steps, "sampler": sampler, "eta": eta,
                  "classes": species or []}
        named = isinstance(species, list) and any(c not in (None, ANY_SPECIES) for c in species)
        params |= {"guidance": guidance} if named else {}  # "any" alone: the unconditional grid, unguided
        params |= {"grid": grid} if grid != AUTO_GRID else {}
        try:
            request = engine.sample_request(params)
        except ValueError as error:
            raise _refused(error) from None
        work = lambda report, cancelled: engine.sample(request, report, cancelled)
        async for update in _follow(work, request.evaluations, engine, progress):
            if isinstance(update, jobs.Progress):
                yield (_pixels(update.preview, request.columns), update.text(), gr.skip(), gr.skip(), gr.skip(),
                       gr.skip())
            else:
                yield self._generated(engine, request, update)

    def _generated(self, engine: Engine, request, update: jobs.Finished):
        result = self.results.samples(update.result, engine.recipe(request))
        step = step_of(self.catalogue.loaded[engine.name][0])
        at = f" at step {step:,}" if self.catalogue.source(engine.name).run_folder and step is not None else ""
        rows = f" in {len(request.classes)} rows" if request.classes else ""
        status = (f"done: {len(result.images)} images{rows}, seed {request.seed}, {request.steps} steps, "
                  f"{engine.name}{at}, in {update.elapsed_s:.1f} s")
        return (_pixels(update.result, request.columns), status, self._gallery(result),
                gr.update(value=str(result.grid), visible=True), gr.update(value=str(result.archive), visible=True),
                result.id)

    @staticmethod
    def _gallery(result: Result):
        return list(zip(map(str, result.images), result.captions()))

    def choose(self, name: str, event: gr.SelectData):
        """A result image chosen in the gallery: its recipe, its file, and what can be done with it."""
        result = self.results.load(name)
        if result is None or not 0 <= event.index < len(result.images):
            return gr.skip(), gr.update(visible=False), gr.skip(), None
        made = result.recipe(event.index)
        shown = f"**{caption(made)}**\n\n`{made.line()}`"
        return shown, gr.update(visible=True), gr.update(value=str(result.images[event.index])), event.index

    def reuse(self, name: str, index: int | None):
        """The chosen image's model, seed and index (and class) in the fields: Generate makes it again."""
        result = self.results.load(name)
        if result is None or index is None:
            raise gr.Error("choose an image of the results first")
        made = result.recipe(index)
        return self._fields(made, count=gr.skip())

    def _fields(self, made: recipes.Recipe, count: Any):
        if made.kind != "sample":
            raise gr.Error(f"this image is the result of an {made.kind}: only generated images are made again from "
                           f"their recipe")
        if made.model not in self.catalogue.labels:
            raise gr.Error(f"this page does not serve the recipe's model {made.model!r}")
        classes = self.engine(made.model).classes  # the species field follows the model
        chosen = [MIX_SPECIES] if made.class_mix else [ANY_SPECIES if c is None else c for c in made.classes]
        return (made.model, gr.update(choices=species_choices(classes), value=chosen, visible=bool(classes)),
                gr.update(value=DEFAULT_GUIDANCE if made.guidance is None else made.guidance, visible=bool(classes)),
                made.seed, made.index, count, made.steps, made.sampler, made.grid, made.eta)

    def from_png(self, path: str | None):
        """A PNG's recipe in the fields, checked against the model served: Generate re-makes it."""
        if not path:
            return (*[gr.skip()] * 10, "")
        try:
            made = recipes.read(path)
            engine = self.engine(made.model) if made.model in self.catalogue.labels else None
            if engine is not None:
                recipes.check_model(made, engine.sha256, engine.image_size)
                if engine.model.precision != made.precision:
                    raise ValueError(f"the recipe was made in {made.precision}; this server runs {made.model} in "
                                     f"{engine.model.precision} (corolla serve --precision {made.precision})")
                engine.check_layout_of(made)
                own = engine.eps_scale(made.sampler)  # the page samples at the model's own
                if own != made.eps_scale:
                    raise ValueError(f"the recipe was made with eps scale {made.eps_scale:g}; this page samples "
                                     f"{made.model} at {own:g} with {made.sampler} (corolla sample --eps-scale "
                                     f"{made.eps_scale:g} makes it again)")
                if made.class_mix and (engine.mix is None or made.class_mix != engine.mix.weights):
                    raise ValueError("the recipe's species were drawn with other class weights than this model's "
                                     "training mix (corolla sample --random-class with that model makes it again)")
        except ValueError as error:
            raise _refused(error) from None
        return (*self._fields(made, made.count), f"recipe read: {made.line()}. Press Generate to make it again.")

    def send(self, name: str, index: int | None):
        result = self.results.load(name)
        if result is None or index is None:
            raise gr.Error("choose an image of the results first")
        return str(result.images[index])

    # -- history ---------------------------------------------------------------------------------

    def remember(self, name: str, history: list | None):
        entries = [e for e in history or [] if isinstance(e, dict) and e.get("id") != name]
        result = self.results.load(name)
        if result is not None:
            made = recipes.read(result.grid) if result.grid else result.recipe(0)
            entries.insert(0, {"id": name, "title": title(made)})
        return entries[:HISTORY], self._history(entries[:HISTORY])

    def _history(self, history: list):
        shown = []
        for entry in history:
            result = self.results.load(entry.get("id")) if isinstance(entry, dict) else None
            if result is not None:
                shown.append((str(result.grid or result.images[0]), str(entry.get("title", ""))[:200]))
        return shown

    def load_history(self, history: list | None):
        kept = [e for e in history or [] if isinstance(e, dict) and self.results.load(e.get("id"))][:HISTORY]
        return kept, self._history(kept)

    def open_history(self, history: list | None, event: gr.SelectData):
        kept = [e for e in history or [] if isinstance(e, dict) and self.results.load(e.get("id"))]
        if not 0 <= event.index < len(kept):
            return (gr.skip(),) * 5
        result = self.results.load(kept[event.index]["id"])
        return (self._gallery(result), result.id, gr.update(value=str(result.grid), visible=result.grid is not None),
                gr.update(value=str(result.archive), visible=True), f"from the history: {kept[event.index]['title']}")

    # -- photos ----------------------------------------------------------------------------------

    def photo_changed(self, path: str | None):
        """The photo with the central square the model uses, that square in the mask editor, and a
        box in its middle."""
        if not path:
            return None, None, *[gr.skip()] * 4
        try:
            pixels = photos.decoded(path)
        except ValueError as error:
            raise _refused(error) from None
        return photos.framed(pixels), self._editor(pixels, []), *photos.middle_box(pixels)

    @staticmethod
    def _editor(pixels: np.ndarray, layers: list) -> dict:
        return {"background": photos.for_editor(pixels), "layers": layers, "composite": None}

    def paint_box(self, photo: str | None, editor: dict | None, x: int, y: int, width: int, height: int):
        """`corolla inpaint --box X,Y,W,H`'s box painted into the editor's layer: the eraser and
        clear reach it, and the layer stays the one mask applied."""
        try:
            pixels = photos.decoded(photo)
            box = box_request({"x": x, "y": y, "width": width, "height": height})
            layers = photos.painted_box(box, pixels, _layers(editor))
        except ValueError as error:
            raise _refused(error) from None
        return self._editor(pixels, layers)

    async def edit(self, model: str, photo: str | None, strength: float, steps: int, seed: int, sampler: str,
                   grid: str, eta: float, progress: gr.Progress = PROGRESS):
        """`corolla edit PHOTO --strength S`: noise the photo to t = S and denoise it."""
        engine = self.engine(model)
        params = {"strength": strength, "steps": steps, "seed": seed, "sampler": sampler, "eta": eta}
        params |= {"grid": grid} if grid != AUTO_GRID else {}
        try:
            request = engine.edit_request(params)
            photo_pixels, _ = photos.load_photo(photo, engine.image_size)
        except ValueError as error:
            raise _refused(error) from None
        made = recipes.Recipe(engine.name, engine.sha256, engine.image_size, engine.model.precision, request.seed,
                              request.steps, request.sampler, request.grid, request.eta, kind="edit",
                              details={"strength": request.strength, "photos": recipes.photos([photo])},
                              eps_scale=editing.edit_eps_scale(engine.model, request.strength, request.settings))
        work = lambda report, cancelled: engine.edit(request, photo_pixels, report, cancelled)
        total = engine.edit_evaluations(request, engine.model.schedule)
        async for update in _follow(work, total, engine, progress):
            yield self._photo_done(update, made, "edit", photo_pixels)

    async def inpaint(self, model: str, photo: str | None, mask: dict | None, steps: int, resample: int, jump: int,
                      seed: int, progress: gr.Progress = PROGRESS):
        """`corolla inpaint PHOTO --mask MASK`, the mask being what was painted over the photo."""
        engine = self.engine(model)
        try:
            request = engine.inpaint_request({"steps": steps, "resample": resample, "jump": jump, "seed": seed})
            photo_pixels, photo_size = photos.load_photo(photo, engine.image_size)
            fill = photos.painted_mask(_layers(mask), photo_size, engine.image_size)
        except ValueError as error:
            raise _refused(error) from None
        made = recipes.Recipe(engine.name, engine.sha256, engine.image_size, engine.model.precision, request.seed,
                              request.steps, "ddim", "uniform", 1.0, kind="inpaint",
                              details={"resample": request.resample, "jump": request.jump,
                                       "photos": recipes.photos([photo])})
        work = lambda report, cancelled: engine.inpaint(request, photo_pixels, fill, report, cancelled)
        total = editing.repaint_evaluations(request.steps, request.resample, request.jump)
        async for update in _follow(work, total, engine, progress):
            yield self._photo_done(update, made, "inpainted", photo_pixels, fill)

    def _photo_done(self, update, made: recipes.Recipe, stem: str, photo: torch.Tensor,
                    fill: torch.Tensor | None = None):
        if isinstance(update, jobs.Progress):
            return gr.skip(), update.text(), gr.skip()
        result = self.results.edited(update.result, made, stem)
        shown = [(str(shown_png(self.results, photo)), "the photo as the model takes it")]
        if fill is not None:
            shown.append((str(shown_png(self.results, fill.float().expand(3, -1, -1))), "the painted mask applied"))
        shown.append((str(result.images[0]), f"{stem} · seed {made.seed}"))
        status = f"done: {stem}, {made.steps} steps, seed {made.seed}, {made.model}, in {update.elapsed_s:.1f} s"
        return shown, status, gr.update(value=str(result.images[0]), visible=True)

    # -- interpolation ---------------------------------------------------------------------------

    async def interpolate(self, model: str, first: int, second: int, first_photo: str | None,
                          second_photo: str | None, frames: int, steps: int, progress: gr.Progress = PROGRESS):
        """`corolla interpolate --seeds FIRST SECOND` (image 0 of each seed), or `--images A B`."""
        engine = self.engine(model)
        try:
            request = engine.interpolation_request({"first": first, "second": second, "frames": frames,
                                                    "steps": steps, "first_photo": first_photo,
                                                    "second_photo": second_photo})
            if request.photos:
                ends = torch.stack([photos.load_photo(path, engine.image_size, what)[0] for path, what in
                                    ((first_photo, "the first photo"), (second_photo, "the second photo"))])
        except ValueError as error:
            raise _refused(error) from None
        if request.photos:
            work = lambda report, cancelled: engine.interpolate_photos(request, ends, report, cancelled)
            total = Engine.photo_interpolation_evaluations(request)
            details = {"photos": recipes.photos([first_photo, second_photo])}
        else:
            work = lambda report, cancelled: engine.interpolate(request, report, cancelled)
            total, details = request.steps, {"first": request.first, "second": request.second}
        made = recipes.Recipe(engine.name, engine.sha256, engine.image_size, engine.model.precision, request.first,
                              request.steps, "ddim", "logsnr" if request.photos else "uniform", kind="interpolate",
                              details={**details, "frames": request.frames},
                              # editing.INVERSION's 1 between photos
                              eps_scale=engine.model.sampling_eps_scale(request.settings.eps_scale))
        async for update in _follow(work, total, engine, progress):
            if isinstance(update, jobs.Progress):
                yield gr.skip(), update.text(), gr.skip(), gr.skip(), gr.skip()
                continue
            result = self.results.frames(update.result, made)
            yield (str(result.images[0]), f"done: {request.frames} frames, {engine.name}, in {update.elapsed_s:.1f} s",
                   gr.update(maximum=request.frames - 1, value=0, visible=True),
                   gr.update(value=str(result.gif), visible=True), result.id)

    def frame(self, name: str, index: float):
        result = self.results.load(name)
        if result is None:
            return gr.skip(), ""
        count = len(result.images)
        i = max(0, min(int(index), count - 1))
        return str(result.images[i]), f"frame {i + 1} of {count}, w = {i / max(1, count - 1):.2f}"


def shown_png(results: Results, image: torch.Tensor) -> Path:
    """An image shown beside a photo job's result (the photo as the model takes it, the mask), in
    the results folder; no recipe: it is not a result."""
    folder = results.root / "shown"
    folder.mkdir(exist_ok=True)
    pixels = to_uint8(image[None])[0]
    path = folder / f"{hashlib.sha256(pixels.tobytes()).hexdigest()[:32]}.png"
    Image.fromarray(pixels).save(path)
    return path


def random_seed() -> int:
    return random.randint(0, limits.MAX_SEED)


def sampler_choices() -> tuple[list[str], list[str]]:
    return sorted(samplers.SAMPLERS), [AUTO_GRID, *sorted(samplers.GRIDS)]
