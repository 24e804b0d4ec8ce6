"""`corolla serve` against hostile clients: every malformed field is refused with what is allowed,
any loopback address is its own Host and no other name is, no file outside the run's own is
shown, a run's odd files never stall the page, a stopped photo job ends within a network
evaluation without stopping anyone else's, and a painted mask is read as the command reads one.
The rules live in small pieces (the engine's field parsers, serve/guards.py, serve/photos.py)
tested here without a browser."""
from __future__ import annotations

import asyncio
import json
import os
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("gradio", reason="the serve extra is not installed: pip install 'corolla[serve]'")
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from corolla import editing
from corolla.config import preset
from corolla.diffusion import DiffusionModel
from corolla.serve import guards, photos
from corolla.serve.engine import BadRequest, Cancelled, EditRequest, Engine, Limits, box_request
from corolla.serve.run import RunPanel

CONFIG = preset("tiny")


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return Engine(DiffusionModel(CONFIG.unet, CONFIG.train.schedule), CONFIG.data.image_size, "tiny",
                  Limits(max_images=4))


@pytest.fixture
def run(tmp_path):
    (tmp_path / "run" / "samples").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 0.5}) + "\n")
    return tmp_path / "run"


MALFORMED = [  # each gave HTTP 500 and a traceback in the log of the first page
    ("sample_request", {"count": "²"}, "count '²' is not a whole number"),
    ("sample_request", {"steps": "9" * 5000}, "steps '99999999"),
    ("sample_request", {"sampler": []}, "sampler [] is not allowed: choose"),
    ("sample_request", {"grid": {"a": 1}}, "grid {'a': 1} is not allowed: choose"),
    ("sample_request", {"eta": 10 ** 400}, "eta 1000000000"),
    ("sample_request", {"first": -1}, "first -1 is not allowed: it must be from 0 to 10,000,000"),
    ("edit_request", {"strength": -10 ** 400}, "strength -1000000000"),
    ("interpolation_request", {"frames": "٣"}, "frames '٣' is not a whole number"),  # an Arabic-Indic three
]


@pytest.mark.parametrize("parse, fields, message", MALFORMED, ids=lambda v: str(v)[:24])
def test_a_malformed_field_is_refused_naming_what_is_allowed(parse, fields, message, engine):
    with pytest.raises(BadRequest) as refused:
        getattr(engine, parse)(fields)
    assert message in str(refused.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
FIELDS = ["count", "steps", "seed", "first", "sampler", "grid", "eta", "classes", "guidance", "second",
          "frames", "strength", "resample", "jump", "first_photo", "second_photo", "x", "y", "width", "height"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6))
def test_every_request_field_is_accepted_or_a_bad_request(params, engine):
    for parse in (engine.sample_request, engine.interpolation_request, engine.edit_request, engine.inpaint_request,
                  box_request):
        try:
            parse(params)
        except BadRequest as refusal:
            assert str(refusal) and "\n" not in str(refusal)


@pytest.mark.parametrize("host, allowed", [
    ("[::1]:7860", True), ("127.0.0.2:7860", True), ("localhost:7860", True), ("localhost", True),
    ("evil.example:7860", False), ("[::2]:7860", False), ("127.0.0.1.evil.example", False), ("", False),
])
def test_any_loopback_address_is_its_own_host_and_no_other_name_is(host, allowed):
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    client = TestClient(guards.LoopbackHostOnly(app), raise_server_exceptions=False, base_url="http://127.0.0.1")
    answer = client.get("/", headers={"host": host})
    assert (answer.status_code == 200) == allowed, (host, answer.status_code)


def test_a_link_planted_in_the_run_s_samples_is_not_shown(run, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:SECRET")
    (run / "samples" / "epoch_002.png").symlink_to(secret)
    view = RunPanel(run, tmp_path / "copies").view()
    assert view.grids == () and not any((tmp_path / "copies").iterdir())


@pytest.mark.parametrize("make", [os.mkfifo, lambda p: p.symlink_to("/dev/zero")], ids=["fifo", "dev-zero"])
def test_a_run_log_that_is_not_a_regular_file_is_refused_and_the_page_goes_on(make, run, tmp_path):
    (run / "metrics.jsonl").unlink()
    make(run / "metrics.jsonl")
    view = RunPanel(run, tmp_path / "copies").view()
    assert view.status.startswith("the run's files cannot be shown:") and "metrics.jsonl" in view.status


def test_a_stopped_photo_job_ends_within_a_network_evaluation(engine):
    cancelled, evaluations = threading.Event(), []

    def leave(*_):  # the page stops the job during the first evaluation
        evaluations.append(1)
        cancelled.set()
    hook = engine.model.sampling_network.register_forward_hook(leave)
    try:
        with pytest.raises(Cancelled):
            engine.edit(EditRequest(1.0, 8, 0, "ddim", "uniform", 0.0), torch.rand(3, 16, 16), lambda *_: None,
                        cancelled)
    finally:
        hook.remove()
    assert len(evaluations) == 1
    assert engine.turns.lock.acquire(blocking=False)  # given back
    engine.turns.lock.release()


def test_a_stopped_photo_job_stops_no_one_else(engine):
    """Its turns are its thread's: another job's evaluations, meanwhile, go on."""
    stopped = threading.Event()
    stopped.set()
    with engine.turns.job(stopped, Cancelled):
        done = []
        thread = threading.Thread(target=lambda: done.append(engine.edit(
            EditRequest(1.0, 3, 0, "ddim", "uniform", 0.0), torch.rand(3, 16, 16), lambda *_: None,
            threading.Event())))
        thread.start()
        thread.join(60)
    assert len(done) == 1 and done[0].shape == (1, 3, 16, 16)


def test_the_painted_layer_is_the_mask_the_command_reads(tmp_path):
    """A layer over an enlarged central square, at the photo's size, as `corolla inpaint --mask` reads it."""
    photo = np.zeros((40, 64, 3), np.uint8)  # not square: the central 40x40 is used
    square = photos.for_editor(photo)
    assert square.shape == (520, 520, 3)  # 40 x 13: enlarged to at least 512 for a finer brush
    layer = np.zeros((520, 520, 4), np.uint8)
    layer[130:260, 65:390, 3] = 255  # painted: rows 10-19, columns 5-29 of the square
    mask = np.zeros((40, 64), np.uint8)
    mask[10:20, 12 + 5:12 + 30] = 255  # the same pixels of the photo
    Image.fromarray(mask).save(tmp_path / "mask.png")
    expected = editing.load_mask(tmp_path / "mask.png", (64, 40), 16)
    assert torch.equal(photos.painted_mask([layer], (64, 40), 16), expected)
    assert torch.equal(photos.painted_mask([layer[::13, ::13]], (64, 40), 16), expected)  # not enlarged
    with pytest.raises(BadRequest, match="the painted mask marks nothing to fill"):
        photos.painted_mask([np.zeros((40, 40, 4), np.uint8)], (64, 40), 16)
    with pytest.raises(BadRequest, match="a painted layer of 30x30 fits neither the photo"):
        photos.painted_mask([np.zeros((30, 30, 4), np.uint8)], (64, 40), 16)


@settings(max_examples=150, deadline=None)
@given(size=st.tuples(st.integers(1, 600), st.integers(1, 600)), data=st.data())
def test_a_box_painted_into_the_editor_is_the_mask_of_corolla_inpaint_box(size, data):
    """Anywhere in a photo of any shape (across the central square's edge or outside it, the square
    enlarged in the editor or not), the box painted into the layer is read back as `--box` reads it,
    or refused with the command's words."""
    width, height = size
    x, y = data.draw(st.integers(0, width - 1)), data.draw(st.integers(0, height - 1))
    box = (x, y, data.draw(st.integers(1, width - x)), data.draw(st.integers(1, height - y)))
    pixels = np.zeros((height, width, 3), np.uint8)
    try:
        expected = editing.box_mask(box, size, 16)
    except ValueError as refusal:
        with pytest.raises(ValueError) as refused:
            photos.painted_box(box, pixels, [])
        assert str(refused.value) == str(refusal)
        return
    layers = photos.painted_box(box, pixels, [])
    assert layers[0].shape == (*photos.for_editor(pixels).shape[:2], 4)
    assert torch.equal(photos.painted_mask(layers, size, 16), expected)


def test_a_box_joins_the_strokes_already_painted_and_a_bad_box_is_refused_with_what_is_allowed():
    photo = np.zeros((40, 64, 3), np.uint8)  # its central 40x40, enlarged 13 times in the editor
    stroke = np.zeros((520, 520, 4), np.uint8)
    stroke[390:403, 13:507] = 255  # row 30 of the square
    layers = photos.painted_box((12, 0, 20, 8), photo, [stroke])
    assert len(layers) == 1 and np.array_equal(layers[0][390:403, 13:507], stroke[390:403, 13:507])
    assert torch.equal(photos.painted_mask(layers, (64, 40), 40),
                       photos.painted_mask([stroke], (64, 40), 40) | editing.box_mask((12, 0, 20, 8), (64, 40), 40))
    for box, message in (((60, 0, 10, 10), "box 60,0,10,10 is not inside the 64x40 image (x,y,w,h: top-left corner, "
                                           "width and height, each 1 or more)"),
                         ((0, 0, 12, 40), "box 0,0,12,40 marks nothing to fill (outside the central square used)")):
        with pytest.raises(ValueError) as refused:
            photos.painted_box(box, photo, [stroke])
        assert str(refused.value).startswith(message)
    with pytest.raises(BadRequest, match="the painted layer of 30x30 is not over the editor's 520x520 square"):
        photos.painted_box((12, 0, 20, 8), photo, [np.zeros((30, 30, 4), np.uint8)])
    with pytest.raises(BadRequest, match="^width 2.5 is not a whole number$"):
        box_request({"x": 0, "y": 0, "width": 2.5, "height": 1})


def test_a_job_that_fails_ends_with_its_message_and_no_traceback(capsys):
    """What the page shows of a job that could not be done: a bad request's or a model's message;
    a bug as one line naming the log, which alone has the trace."""
    from corolla.serve import jobs

    def fails(error):
        def work(report, cancelled):
            raise error
        return work

    async def last(work):
        return [update async for update in jobs.run(work, 1, guards.Turns())][-1].result
    assert str(asyncio.run(last(fails(ValueError("no images for you"))))) == "no images for you"
    assert str(asyncio.run(last(fails(Cancelled())))) == "stopped"
    assert capsys.readouterr().err == ""
    assert str(asyncio.run(last(fails(KeyError("bug"))))) == "internal error (KeyError); see the server's log"
    assert "Traceback" in capsys.readouterr().err
