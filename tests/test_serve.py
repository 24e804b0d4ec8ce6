"""`corolla serve` on Gradio: the API endpoints through gradio_client, the queue, Stop, the PNG
recipes, the command's Ctrl-C, and the page in a real browser (Playwright driving Debian's
Chromium; without it the browser tests skip, saying why). A tiny untrained model whose head is
drawn at random keeps each job to a fraction of a second; the races wait on conditions."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the serve extra is not installed: pip install 'corolla[serve]'")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (it comes with gradio)")

from conftest import CLASSES, make_labels_matter

from corolla import cli, editing
from corolla.config import preset
from corolla.diffusion import DiffusionModel
from corolla.generation import SamplingSettings, generate
from corolla.serve import app as served
from corolla.serve.engine import ANY_SPECIES, MIX_SPECIES, Limits
from corolla.serve.guards import Turns
from corolla.serve.models import Catalogue
from corolla.serve.page import Page
from corolla.serve.results import Results
from corolla.serve.run import RunPanel
from corolla.storage import checkpoint
from corolla.storage import recipe as recipes
from corolla.storage.grids import save_grid, to_uint8
from corolla.unet import UNetConfig

CONFIG = preset("tiny")
WAIT_S = 60  # the longest any condition is waited for (each holds within a second or two when all is well)
RETRY_S = 15  # the editor's blank canvas: how long before "Paint this box" is clicked again (paint_box)
CPU = ["--device", "cpu", "--precision", "fp32", "--no-progress"]
RUNNING = {gradio_client.utils.Status.PROCESSING, gradio_client.utils.Status.PROGRESS,
           gradio_client.utils.Status.ITERATING}


def tiny_checkpoint(folder: Path, classes: tuple[str, ...] = ()) -> Path:
    """An untrained tiny model whose head (and class shifts) are drawn at random, so that its
    images are not flat and depend on the class; saved as a checkpoint folder."""
    torch.manual_seed(0)
    model = DiffusionModel(UNetConfig(**{**CONFIG.unet.__dict__, "classes": classes}))
    make_labels_matter(model.ema_network, torch.Generator().manual_seed(1)) if classes else \
        torch.nn.init.normal_(model.ema_network.head.weight, 0.0, 0.2)
    model.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.05))
    return checkpoint.save_pretrained(folder, model, CONFIG.replace(unet={"classes": classes}))


def fake_run(folder: Path, epochs: int = 3) -> Path:
    """A run folder as training leaves it for the panel: its log and one grid per epoch."""
    (folder / "samples").mkdir(parents=True)
    lines = [f'{{"step": {4 * e}, "train_loss": {1 / e}, "val_loss": {1.2 / e}}}' for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for epoch in range(1, epochs + 1):
        save_grid(torch.full((4, 3, 16, 16), epoch / (epochs + 1)), folder / "samples" / f"epoch_{epoch:03d}.png")
    return folder


class Served:
    """A page on a free loopback port, served by uvicorn in a thread, as `corolla serve` serves it."""

    def __init__(self, given: list[str], folder: Path, run: Path | None = None):
        self.turns = Turns()
        served.gradio_cache(folder)
        self.catalogue = Catalogue(given, torch.device("cpu"), "fp32", Limits(), self.turns)
        self.page = Page(self.catalogue, Results(folder / "results"), RunPanel(run, folder / "run") if run else None)
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/"
        import uvicorn
        config = uvicorn.Config(served.create_app(self.page, refresh_s=0.2), log_level="warning",
                                timeout_graceful_shutdown=1)
        self.server = served.Server(config, self.turns)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:  # polling the condition, not waiting a guessed time
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def client(self):
        return gradio_client.Client(self.url, verbose=False, analytics_enabled=False,
                                    download_files=tempfile.mkdtemp(prefix="corolla-client-"))

    def model(self, label: str) -> DiffusionModel:
        return self.catalogue.engine(label).model

    def stop(self):
        self.server.handle_exit(signal.SIGINT, None)  # as Ctrl-C stops it
        self.thread.join(timeout=WAIT_S)
        assert not self.thread.is_alive()
        self.socket.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def tiny(folder):
    return str(tiny_checkpoint(folder / "tiny"))


@pytest.fixture(scope="module")
def conditional(folder):
    return str(tiny_checkpoint(folder / "conditional", CLASSES))


@pytest.fixture(scope="module")
def server(folder, tiny, conditional):
    running = Served([tiny, conditional], folder / "server", fake_run(folder / "run"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def sampling_model(path):
    """A model loaded as the server and every command load it (folded, channels-last, float32), so
    that comparisons of pixels are exact, rounding included."""
    return checkpoint.load_for_sampling(path, torch.device("cpu"), "fp32")[0]


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def generate_call(client, model, seed=5, count=4, steps=3, species=(), guidance=3.0, first=0, sampler="ddim",
                  grid="auto", eta=0.0):
    return client.predict(model, list(species), guidance, seed, first, count, steps, sampler, grid, eta,
                          api_name="/generate")


class Evaluations:
    """Counts a network's forward passes; a test waits for a count instead of sleeping."""

    def __init__(self, network: torch.nn.Module):
        self.count, self.changed = 0, threading.Condition()
        self.hook = network.register_forward_hook(self._seen)

    def _seen(self, *_):
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= count, WAIT_S), f"{self.count} evaluations, not {count}"

    def remove(self):
        self.hook.remove()


# -- the API, through gradio_client -------------------------------------------------------------

def test_generate_through_the_api_gives_corolla_sample_s_pixels_and_recipes(server, client, tiny, tmp_path):
    images, status, gallery, grid, archive = generate_call(client, tiny, seed=5, count=4, steps=3)
    assert status.startswith("done: 4 images, seed 5, 3 steps")
    assert cli.main(["sample", tiny, "-n", "4", "--steps", "3", "--seed", "5", *CPU,
                     "--out", str(tmp_path / "grid.png"), "--each", str(tmp_path / "each")]) == 0
    each = sorted((tmp_path / "each").glob("*.png"))
    assert [png(item["image"]).tolist() for item in gallery] == [png(path).tolist() for path in each]
    assert np.array_equal(png(grid["value"]), png(tmp_path / "grid.png"))
    assert np.array_equal(png(images), png(tmp_path / "grid.png"))  # the last preview is the result
    assert [item["caption"] for item in gallery] == [f"seed 5 · image {i}" for i in range(4)]
    # the page's PNGs and the command's carry the same recipes (the model named as it was given)
    assert [recipes.read(item["image"]) for item in gallery] == [recipes.read(path) for path in each]
    assert recipes.read(grid["value"]) == recipes.read(tmp_path / "grid.png")
    assert recipes.read(each[3]).index == 3 and recipes.read(tmp_path / "grid.png").count == 4


def test_species_are_rows_in_the_order_chosen_as_corolla_sample_class_makes_them(server, client, conditional,
                                                                                   tmp_path):
    _, status, gallery, grid, _ = generate_call(client, conditional, seed=9, count=2, steps=3,
                                                species=["sunflower", "daisy"], guidance=2.0)
    assert "in 2 rows" in status
    assert [item["caption"] for item in gallery] == ["seed 9 · image 0 · sunflower", "seed 9 · image 1 · sunflower",
                                                      "seed 9 · image 0 · daisy", "seed 9 · image 1 · daisy"]
    assert cli.main(["sample", conditional, "--class", "sunflower", "--class", "daisy", "--guidance", "2", "-n", "2",
                     "--steps", "3", "--seed", "9", *CPU, "--out", str(tmp_path / "rows.png")]) == 0
    assert np.array_equal(png(grid["value"]), png(tmp_path / "rows.png"))
    assert recipes.read(grid["value"]).classes == ("sunflower", "daisy")


def test_any_species_is_a_row_of_the_unconditional_model_in_its_place(server, client, conditional, tmp_path):
    _, status, gallery, grid, _ = generate_call(client, conditional, seed=9, count=2, steps=3,
                                                species=["sunflower", ANY_SPECIES, "daisy"], guidance=2.0)
    assert "in 3 rows" in status
    assert [item["caption"] for item in gallery[2:4]] == ["seed 9 · image 0 · any", "seed 9 · image 1 · any"]
    assert cli.main(["sample", conditional, "-n", "2", "--steps", "3", "--seed", "9", *CPU,
                     "--each", str(tmp_path / "any")]) == 0
    assert cli.main(["sample", conditional, "--class", "sunflower", "--class", "daisy", "--guidance", "2", "-n", "2",
                     "--steps", "3", "--seed", "9", *CPU, "--each", str(tmp_path / "rows")]) == 0
    expected = [png(path) for path in sorted((tmp_path / "rows").glob("*.png"))]  # sunflower's (class 2) last
    expected = expected[2:] + [png(path) for path in sorted((tmp_path / "any").glob("*.png"))] + expected[:2]
    assert [png(item["image"]).tolist() for item in gallery] == [image.tolist() for image in expected]
    assert recipes.read(grid["value"]).classes == ("sunflower", None, "daisy")
    fields = server.page.from_png(gallery[2]["image"])  # the "any" row's image: made again alone, unguided
    assert fields[1]["value"] == [ANY_SPECIES]
    _, _, alone, _, _ = generate_call(client, conditional, seed=9, count=2, steps=3, species=[ANY_SPECIES])
    assert [png(item["image"]).tolist() for item in alone] == [image.tolist() for image in expected[2:4]]


@pytest.mark.parametrize("fields, message", [
    (dict(count=10_000), "count 10,000 is not allowed: it must be from 1 to 64 (this server's --max-images at 16x16)"),
    (dict(steps=10_000), "steps 10,000 is not allowed: it must be from 1 to 200 (this server's --max-steps)"),
    (dict(seed=-1), "seed -1 is not allowed: it must be from 0 to 4,294,967,295"),
    (dict(steps=2.5), "steps 2.5 is not a whole number"),
    (dict(eta=7), "eta 7 is not allowed: it must be from 0 to 1"),
    (dict(sampler="euler"), "sampler 'euler' is not allowed: choose ddim, dpmpp_2m, dpmpp_3m, unipc"),
    (dict(grid="x" * 50), f"grid '{'x' * 39}... is not allowed: choose karras, logsnr, uniform"),
    (dict(sampler="unipc", eta=0.5), "eta 0.5 needs the ddim sampler: unipc is deterministic (eta 0)"),
    (dict(species=["rose"]), "this model is not class-conditional (it was trained without --conditional): it takes "
                             "no classes and no guidance"),
])
def test_out_of_range_values_are_refused_with_what_is_allowed(server, client, tiny, fields, message):
    with pytest.raises(gradio_client.exceptions.AppError) as refused:
        generate_call(client, tiny, **fields)
    assert str(refused.value) == message


def test_unknown_parameters_and_models_are_refused(server, client, tiny):
    with pytest.raises(TypeError, match="Parameter `n` is not a valid key-word argument"):
        client.predict(tiny, [], 3.0, 0, 0, 4, 3, "ddim", "auto", 0.0, n=10_000, api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError, match="model 'elsewhere' is not served here: choose"):
        generate_call(client, "elsewhere")


def test_a_result_png_s_recipe_makes_it_again_bit_for_bit(server, client, tiny, conditional):
    for model, species in ((tiny, ()), (conditional, ("rose",))):
        _, _, gallery, grid, _ = generate_call(client, model, seed=11, count=3, steps=4, species=species, first=5,
                                               sampler="dpmpp_2m", grid="karras")
        for item in gallery:
            made = recipes.read(item["image"])
            assert made.kind == "sample" and made.count == 1 and made.model_sha256 == recipes.model_sha256(model)
            loaded, _ = recipes.load_model(made)  # as `corolla sample --recipe` loads it
            assert np.array_equal(to_uint8(recipes.remake(made, loaded))[0], png(item["image"]))
        whole = recipes.read(grid["value"])
        assert (whole.index, whole.count, whole.classes) == (5, 3, species)
        # the page reads a PNG's recipe into its fields: Generate then makes it again
        fields = server.page.from_png(gallery[2]["image"])
        assert (fields[1]["value"], fields[2]["value"]) == (list(species), 3.0)
        assert fields[:1] + fields[3:-1] == (model, 11, 7, 1, 4, "dpmpp_2m", "karras", 0.0)
        _, _, again, _, _ = generate_call(client, *fields[:1], seed=11, count=1, steps=4, species=species, first=7,
                                          sampler="dpmpp_2m", grid="karras")
        assert np.array_equal(png(again[0]["image"]), png(gallery[2]["image"]))


def test_a_recipe_at_another_eps_scale_than_the_page_s_is_refused_in_a_line(server, tiny, tmp_path):
    """The page samples a model at its own epsilon scale and has no field for another: it would
    make other images, so it says how to make them instead."""
    assert cli.main(["sample", tiny, "-n", "1", "--steps", "2", "--eps-scale", "1.05", *CPU,
                     "--out", str(tmp_path / "scaled.png")]) == 0
    with pytest.raises(gr.Error, match=r"made with eps scale 1.05; this page samples .* at 1 with ddim "
                                       r"\(corolla sample --eps-scale 1.05 makes it again\)"):
        server.page.from_png(str(tmp_path / "scaled.png"))


def test_every_species_draws_each_image_s_species_as_corolla_sample_random_class(server, client, conditional,
                                                                                  tmp_path):
    _, _, gallery, grid, _ = generate_call(client, conditional, seed=9, count=4, steps=3, species=[MIX_SPECIES],
                                           guidance=2.0)
    assert cli.main(["sample", conditional, "--random-class", "--guidance", "2", "-n", "4", "--steps", "3",
                     "--seed", "9", *CPU, "--out", str(tmp_path / "mix.png")]) == 0
    assert np.array_equal(png(grid["value"]), png(tmp_path / "mix.png"))
    assert recipes.read(grid["value"]) == recipes.read(tmp_path / "mix.png")  # class_mix: the training mix
    assert [item["caption"] for item in gallery] == [f"seed 9 · image {i} · species drawn" for i in range(4)]
    fields = server.page.from_png(grid["value"])  # the recipe back in the fields: Generate makes it again
    assert (fields[1]["value"], fields[2]["value"]) == ([MIX_SPECIES], 2.0)
    with pytest.raises(gradio_client.exceptions.AppError, match="draws every image's species: choose it alone"):
        generate_call(client, conditional, species=[MIX_SPECIES, "daisy"])
    other = recipes.read(grid["value"])
    path = save_grid(torch.zeros(1, 3, 16, 16), tmp_path / "other.png",
                     recipe=replace(other, class_mix=tuple(w + 1 for w in other.class_mix)))
    with pytest.raises(gr.Error, match="drawn with other class weights than this model's training mix"):
        server.page.from_png(str(path))


def test_stop_ends_a_long_job_within_one_step(server, client, tiny):
    evaluations = Evaluations(server.model(tiny).sampling_network)
    try:
        job = client.submit(tiny, [], 3.0, 0, 0, 64, 200, "ddim", "auto", 0.0, api_name="/generate")
        evaluations.wait_for(2)
        job.cancel()
        deadline = time.monotonic() + WAIT_S
        while job.status().code != gradio_client.utils.Status.CANCELLED:  # the server took the cancel
            assert time.monotonic() < deadline
            time.sleep(0.01)
        at_stop = evaluations.count
        assert server.turns.idle(WAIT_S)  # the job's thread has ended
        assert evaluations.count <= at_stop + 1 < 200
    finally:
        evaluations.remove()


def test_a_model_that_names_its_layout_model_is_served_as_the_command_draws_it(tmp_path):
    """sampling.layout: the page draws the cascade `corolla sample` draws, counts both stages'
    evaluations for its progress, and says so in the model line and the recipes."""
    cascaded = tiny_checkpoint(tmp_path / "cascaded")
    torch.manual_seed(3)
    small = DiffusionModel(CONFIG.unet)
    torch.nn.init.normal_(small.ema_network.head.weight, 0.0, 0.2)
    small.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.05))
    checkpoint.save_pretrained(cascaded / "first", small, CONFIG.replace(data={"image_size": 8}))
    written = json.loads((cascaded / "config.json").read_text())
    written["sampling"]["layout"] = "first"
    (cascaded / "config.json").write_text(json.dumps(written))
    catalogue = Catalogue([str(cascaded)], torch.device("cpu"), "fp32", Limits(), Turns())
    engine = catalogue.engine(str(cascaded))
    assert engine.layout is not None and engine.layout.image_size == 8
    assert "each drawn after its layout model" in catalogue.describe(str(cascaded))
    request = engine.sample_request({"seed": 4, "count": 3, "steps": 5})
    assert request.evaluations == 5 + 4  # the layout model's 5, the model's 4 below t = 0.8
    counts = []
    images = engine.sample(request, lambda done, preview: counts.append(done), threading.Event())
    assert counts[-1] == request.evaluations
    assert cli.main(["sample", str(cascaded), "-n", "3", "--steps", "5", "--seed", "4", *CPU,
                     "--out", str(tmp_path / "grid.png")]) == 0
    assert np.array_equal(to_uint8(images), to_uint8(generate(
        sampling_model(cascaded), 3, SamplingSettings(steps=5, seed=4), image_size=16, layout=engine.layout)))
    assert np.array_equal(png(tmp_path / "grid.png")[2:18, 2:18], to_uint8(images)[0])  # its first image
    made = engine.recipe(request)
    assert dict(made.details)["layout"] == str(cascaded / "first") and dict(made.details)["layout_start"] == 0.8
    assert dict(recipes.read(tmp_path / "grid.png").details)["layout"] == str(cascaded / "first")
    # the page reads its own PNGs back, and refuses one drawn without the layout model
    engine.check_layout_of(recipes.read(tmp_path / "grid.png"))
    assert engine.eps_scale("ddim") == recipes.read(tmp_path / "grid.png").eps_scale
    assert cli.main(["sample", str(cascaded), "-n", "1", "--steps", "5", "--no-layout", *CPU,
                     "--out", str(tmp_path / "alone.png")]) == 0
    with pytest.raises(ValueError, match="the recipe was drawn without a layout model; this page draws .* after its "
                                         "layout model .* \\(corolla sample with --no-layout makes it again\\)"):
        engine.check_layout_of(recipes.read(tmp_path / "alone.png"))


def photo_path() -> Path:
    return next(p for p in sorted(editing.imagefolder.bundled_dir().glob("*.jpg")) if p.stat().st_size)


def mask_file(folder: Path, size: int) -> Path:
    """A layer painted over the middle third of a size x size square (RGBA, opaque where painted)."""
    layer = np.zeros((size, size, 4), np.uint8)
    layer[size // 3:2 * size // 3, size // 4:3 * size // 4] = 255
    path = folder / "layer.png"
    Image.fromarray(layer).save(path)
    return path


def test_two_clients_and_a_photo_job_queue_and_all_finish(server, tiny, tmp_path):
    """The first generation is held at its second evaluation: the second waits in the queue, with
    its position, while the inpainting (another queue) starts at once; released, all finish with
    their own images."""
    model, held, release = server.model(tiny), threading.Event(), threading.Event()
    first_thread = []

    def hold(*_):
        if not first_thread:
            first_thread.append(threading.current_thread())
        elif first_thread[0] is threading.current_thread() and not held.is_set():
            held.set()
            assert release.wait(WAIT_S)
    hook = model.sampling_network.register_forward_pre_hook(hold)
    clients = [server.client() for _ in range(3)]
    photo = gradio_client.handle_file(str(photo_path()))
    layer = gradio_client.handle_file(str(mask_file(tmp_path, 64)))
    try:
        first = clients[0].submit(tiny, [], 3.0, 1, 0, 2, 3, "ddim", "auto", 0.0, api_name="/generate")
        assert held.wait(WAIT_S)
        second = clients[1].submit(tiny, [], 3.0, 2, 0, 2, 3, "ddim", "auto", 0.0, api_name="/generate")
        deadline = time.monotonic() + WAIT_S
        while second.status().code != gradio_client.utils.Status.IN_QUEUE:
            assert time.monotonic() < deadline, second.status()
            time.sleep(0.01)
        assert second.status().rank == 0  # first in line
        photo_job = clients[2].submit(tiny, photo, {"background": None, "layers": [layer], "composite": None}, 4, 1,
                                      1, 0, api_name="/inpaint")
        while photo_job.status().code not in RUNNING:
            assert time.monotonic() < deadline, photo_job.status()  # not behind the generations
            time.sleep(0.01)
    finally:
        release.set()
        hook.remove()
    results = [job.result(timeout=WAIT_S) for job in (first, second, photo_job)]
    loaded = sampling_model(tiny)
    for (_, _, gallery, _, _), seed in zip(results[:2], (1, 2)):
        expected = generate(loaded, 2, SamplingSettings(steps=3, seed=seed), image_size=16)
        assert np.array_equal(png(gallery[1]["image"]), to_uint8(expected)[1])
    assert results[2][1].startswith("done: inpainted")


def test_a_photo_job_can_be_stopped_and_refuses_an_unpainted_mask(server, client, tiny, tmp_path):
    photo = gradio_client.handle_file(str(photo_path()))
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(empty)
    with pytest.raises(gradio_client.exceptions.AppError, match="the painted mask marks nothing to fill"):
        client.predict(tiny, photo, {"background": None, "layers": [gradio_client.handle_file(str(empty))],
                                     "composite": None}, 4, 1, 1, 0, api_name="/inpaint")
    evaluations = Evaluations(server.model(tiny).sampling_network)
    try:
        layer = gradio_client.handle_file(str(mask_file(tmp_path, 64)))
        job = client.submit(tiny, photo, {"background": None, "layers": [layer], "composite": None}, 200, 5, 5, 0,
                            api_name="/inpaint")
        evaluations.wait_for(2)
        job.cancel()
        deadline = time.monotonic() + WAIT_S
        while job.status().code != gradio_client.utils.Status.CANCELLED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        at_stop = evaluations.count
        assert server.turns.idle(WAIT_S)
        assert evaluations.count <= at_stop + 1
    finally:
        evaluations.remove()


def test_edit_and_interpolate_use_the_model_chosen_and_give_its_command_s_pixels(server, client, tiny, conditional,
                                                                                 tmp_path):
    path, edits = photo_path(), []
    for model in (tiny, conditional):
        shown, status, result = client.predict(model, gradio_client.handle_file(str(path)), 0.5, 8, 3, "ddim",
                                               "auto", 0.0, api_name="/edit")
        assert status.startswith("done: edit, 8 steps, seed 3, ") and f", {model}, in " in status
        assert cli.main(["edit", model, str(path), "--strength", "0.5", "--steps", "8", "--seed", "3", "--device",
                         "cpu", "--precision", "fp32", "--out", str(tmp_path / "edit.png")]) == 0
        edits.append(png(result["value"]))
        assert np.array_equal(edits[-1], png(tmp_path / "edit.png")[2:-2, 2:-2])  # a grid of one, padded
        assert recipes.read(result["value"]).details["strength"] == 0.5
        assert recipes.read(result["value"]).model == model
        frame, status, _, gif = client.predict(model, 3, 7, None, None, 5, 6, api_name="/interpolate")
        loaded = sampling_model(model)
        first_end = generate(loaded, 1, SamplingSettings(steps=6, seed=3), image_size=16)
        assert np.array_equal(png(frame), to_uint8(first_end)[0])
        assert status.startswith(f"done: 5 frames, {model}, in ") and Path(gif["value"]).suffix == ".gif"
    assert not np.array_equal(*edits)  # each model edits in its own way


def test_the_page_and_the_command_interpolate_as_many_frames_unless_told(server, client, tiny):
    page_default = next(c["props"]["value"] for c in client.config["components"]
                        if c["props"].get("elem_id") == "interp-frames")
    assert page_default == server.catalogue.engine(tiny).interpolation_request({}).frames == editing.FRAMES
    assert cli.parser().parse_args(["interpolate"]).frames == editing.FRAMES == 10


def test_the_run_panel_reads_the_run_s_own_files(server, folder):
    view = server.page.run.view()
    assert view.status.startswith("**run**: 3 train and 3 validation points (last step 12), 3 grids")
    assert [caption for _, caption in view.grids] == ["epoch 3", "epoch 2", "epoch 1"]
    assert list(view.curves["curve"]) == ["train"] * 3 + ["validation"] * 3


# -- the command -----------------------------------------------------------------------------------

def test_serve_without_the_extra_names_the_pip_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    for name in [m for m in sys.modules if m.startswith("corolla.serve")]:
        monkeypatch.delitem(sys.modules, name)
    assert cli.main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err == ("corolla: error: corolla serve needs the web page extra (gradio is missing): "
                                       "pip install 'corolla[serve]'\n")


def test_a_busy_port_is_a_one_line_error(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"corolla: error: cannot listen on 127.0.0.1:{port} (") and err.count("\n") == 1


@pytest.mark.slow  # starts a subprocess
def test_ctrl_c_mid_job_exits_0_without_a_traceback(tiny, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "corolla", "serve", tiny, "--host", "0.0.0.0", "--port", "0",
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = process.stdout.readline()  # printed once the socket listens and the model is loaded
        assert line.startswith(f"corolla: serving {tiny} at http://0.0.0.0:"), line
        port = int(line.split(":")[-1].split("/")[0])
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False,
                                      download_files=str(tmp_path))
        job = client.submit(tiny, [], 3.0, 0, 0, 64, 200, "ddim", "auto", 0.0, api_name="/generate")
        deadline = time.monotonic() + WAIT_S
        while job.status().code not in RUNNING:
            assert time.monotonic() < deadline, job.status()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=WAIT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    assert "corolla: warning: --host 0.0.0.0: anyone who can reach this port can use this machine's CPU" in err
    assert err.rstrip().endswith("corolla: server stopped")


# -- the page in a browser -------------------------------------------------------------------------

def open_page(browser, server, width: int = 1280):
    """A fresh page (its own storage), with every request it makes recorded."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_S * 1000)
    opened.requests = []
    opened.on("request", lambda request: opened.requests.append(request.url))
    opened.goto(server.url)
    opened.wait_for_selector("#generate-button")
    return opened


def open_tab(page, name: str) -> None:
    """A tab of the page, from the tab bar or, on a narrow screen, from its "More tabs" menu."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if not tab.is_visible():
        page.get_by_role("button", name="More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text=name)
    tab.click()


def fill(page, selector: str, value) -> None:
    field = page.locator(f"{selector} input").first
    field.fill(str(value))
    field.press("Enter")


def shown_png(page, locator) -> np.ndarray:
    """The PNG an <img> of the page shows, fetched as the page fetched it."""
    import io
    return np.asarray(Image.open(io.BytesIO(page.request.get(locator.get_attribute("src")).body())).convert("RGB"))


def test_the_page_generates_the_command_s_pixels_and_remembers_them_after_a_reload(browser, server, tiny):
    page = open_page(browser, server)
    try:
        fill(page, "#seed", 7)
        fill(page, "#count", 3)
        fill(page, "#steps", 4)
        page.click("#generate-button")
        page.wait_for_selector("#generate-status:has-text('done: 3 images, seed 7, 4 steps')")
        loaded = sampling_model(tiny)
        expected = to_uint8(generate(loaded, 3, SamplingSettings(steps=4, seed=7), image_size=16))
        thumbnails = page.locator("#results img")
        expect(thumbnails).to_have_count(3)
        assert all(np.array_equal(shown_png(page, thumbnails.nth(i)), expected[i]) for i in range(3))
        thumbnails.nth(2).click()  # enlarged, with its own seed and recipe
        expect(page.locator("#chosen-recipe")).to_contain_text("seed 7 · image 2")
        expect(page.locator("#chosen-recipe")).to_contain_text("seed 7, image 2, 4 steps, sampler ddim")
        page.click("#reuse-seed")
        expect(page.locator("#first input").first).to_have_value("2")
        page.reload()
        page.wait_for_selector("#generate-button")
        expect(page.locator("#history img")).to_have_count(1)  # kept by the browser
        page.locator("#history img").first.click()
        expect(page.locator("#results img")).to_have_count(3)
        assert np.array_equal(shown_png(page, page.locator("#results img").nth(0)), expected[0])
    finally:
        page.context.close()


def test_a_phone_sized_page_does_not_scroll_sideways_loads_nothing_from_elsewhere_and_shows_no_broken_image(
        browser, server):
    page = open_page(browser, server, width=390)
    try:
        for tab, shown in (("Generate", "#generate-button"), ("Edit", "#photo"),
                           ("Interpolate", "#interp-button"), ("Training", "#run-grids img")):
            open_tab(page, tab)
            expect(page.locator(shown).first).to_be_visible()
            expect(page.locator("#model")).to_be_visible()  # above the tabs: every tab's
            assert page.locator("#model-info").bounding_box()["width"] > 250  # stacked under it, not squeezed beside
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, tab
            broken = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth === 0)"
                                   ".map(i => i.src)")
            assert broken == [], tab
        expect(page.locator("#run-grids img")).to_have_count(3)  # the run's grids, wrapping
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        elsewhere = [url for url in page.requests if not url.startswith((server.url, "data:", "blob:"))]
        assert elsewhere == []
    finally:
        page.context.close()


def test_the_model_chosen_above_the_tabs_is_the_one_every_tab_uses(browser, server, conditional):
    page = open_page(browser, server)
    try:
        page.locator("#model input").first.click()
        page.get_by_role("option", name=conditional).click()
        expect(page.locator("#species")).to_be_visible()  # the conditional model's species
        open_tab(page, "Interpolate")
        expect(page.locator("#model input").first).to_have_value(conditional)
        fill(page, "#interp-frames", 3)
        fill(page, "#interp-steps", 2)
        page.click("#interp-button")
        expect(page.locator("#interp-status")).to_contain_text(f"done: 3 frames, {conditional}, in ")
    finally:
        page.context.close()


def shown_pixels(locator) -> np.ndarray:
    """(H, W, 3) ints: what a component shows on the screen."""
    import io
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def photo_px(locator) -> int:
    """The pixels of a component that are neither its white nor its grey (a photo it shows)."""
    pixels = shown_pixels(locator)
    return int((pixels.max(-1) - pixels.min(-1) > 30).sum())


def open_inpainting(page, photo: Path):
    """The Inpaint tab with `photo` uploaded -> the editor's canvas, showing it."""
    open_tab(page, "Edit")
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#square img")
    open_tab(page, "Inpaint")
    canvas = page.locator("#mask-editor canvas").first
    expect(canvas).to_be_visible()
    # the editor draws the photo a while after its value arrives: paint only on a drawn photo, as a
    # user does
    deadline = time.monotonic() + WAIT_S
    while photo_px(canvas) < 10_000:
        assert time.monotonic() < deadline, "the editor did not show the photo"
    return canvas


def run_inpainting(page, steps: int):
    """Inpaint with `steps` steps and RePaint's R = J = 2 -> the three images shown (photo, mask, result)."""
    for field, value in (("#inpaint-steps", steps), ("#inpaint-resample", 2), ("#inpaint-jump", 2)):
        fill(page, field, value)
    page.click("#inpaint-button")
    page.wait_for_selector("#photo-status:has-text('done: inpainted')")
    shown = page.locator("#photo-result img")
    expect(shown).to_have_count(3)
    return shown


def test_the_mask_painted_in_the_editor_is_the_mask_applied(browser, server, tiny):
    page = open_page(browser, server)
    try:
        open_inpainting(page, photo_path())
        image = page.evaluate("""() => {  // where the photo lies on the editor's canvas
            const c = document.querySelector('#mask-editor canvas'); const r = c.getBoundingClientRect();
            return {x: r.x, y: r.y, width: r.width, height: r.height}; }""")
        side = min(image["width"], image["height"]) * 0.5  # well inside the square shown in the middle
        middle_x, middle_y = image["x"] + image["width"] / 2, image["y"] + image["height"] / 2
        page.mouse.move(middle_x - side / 2, middle_y)
        page.mouse.down()
        page.mouse.move(middle_x + side / 2, middle_y, steps=10)
        page.mouse.up()
        shown = run_inpainting(page, 6)
        applied = torch.from_numpy(shown_png(page, shown.nth(1))[..., 0] > 127)[None]  # at the model's 16x16
        assert applied[0, 8, 4:12].all() and not applied[0, 0].any() and not applied[0, 15].any()  # the stroke alone
        loaded = sampling_model(tiny)
        photo = editing.load_photo(photo_path(), 16)[0][None]
        result = shown_png(page, shown.nth(2))
        filled = editing.inpaint(loaded, photo, applied[None], replace(editing.INPAINTING, steps=6), resample=2, jump=2)
        assert np.array_equal(result, to_uint8(filled)[0])
        kept = ~applied[0].numpy()
        assert np.array_equal(result[kept], to_uint8(photo)[0][kept])  # the photo wherever nothing was painted
    finally:
        page.context.close()


def painted_px(locator) -> int:
    """The pixels of the brush's magenta that a component shows."""
    pixels = shown_pixels(locator)
    return int(((pixels[..., 0] > 240) & (pixels[..., 1] < 15) & (pixels[..., 2] > 240)).sum())


def paint_box(page, canvas, before: int) -> None:
    """Clicks "Paint this box" until the editor's canvas shows the box (1,000 more magenta pixels
    than `before`). Gradio's editor sometimes draws nothing at all for a new value: 5 times in
    56 runs on a loaded machine, the page's call answered, the new layer fetched and the
    canvas left blank (photo and box gone) for good. A user would click again; so does this test,
    every RETRY_S, which repaints the same box (painting a box into a layer that has it changes
    nothing), and fails only when no click has painted it within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        page.click("#paint-box")
        retry = time.monotonic() + RETRY_S
        while time.monotonic() < retry:
            if painted_px(canvas) >= before + 1000:
                return
            assert time.monotonic() < deadline, "the box was not painted"


def test_a_box_painted_into_the_editor_is_the_mask_corolla_inpaint_box_applies(browser, server, tiny, tmp_path):
    wide = tmp_path / "wide.png"  # its central 64x64 square is enlarged 8 times in the editor
    Image.open(photo_path()).convert("RGB").resize((96, 64)).save(wide)
    page = open_page(browser, server)
    try:
        canvas = open_inpainting(page, wide)
        names = ("x", "y", "width", "height")
        for name, value in zip(names, (32, 16, 32, 32)):  # the middle half of the central square, at first
            expect(page.locator(f"#box-{name} input").first).to_have_value(str(value))
        before = painted_px(canvas)  # the toolbar's colour
        for name, value in zip(names, (10, 20, 40, 16)):  # across the central square's left edge
            fill(page, f"#box-{name}", value)
        paint_box(page, canvas, before)
        shown = run_inpainting(page, 4)
        applied = torch.from_numpy(shown_png(page, shown.nth(1))[..., 0] > 127)[None]
        assert torch.equal(applied, editing.box_mask((10, 20, 40, 16), (96, 64), 16))
        assert cli.main(["inpaint", tiny, str(wide), "--box", "10,20,40,16", "--steps", "4", "--resample", "2",
                         "--jump", "2", "--device", "cpu", "--precision", "fp32",
                         "--each", str(tmp_path / "each")]) == 0
        assert np.array_equal(shown_png(page, shown.nth(2)), png(next((tmp_path / "each").glob("*.png"))))
    finally:
        page.context.close()


def expect(locator):
    """Playwright's waiting assertions (imported late: playwright is a test extra)."""
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)
