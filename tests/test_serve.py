"""`corolla serve`: the app's answers over HTTP, and the page in a real browser (Playwright driving
Debian's Chromium; without it the browser tests skip, saying why)."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'corolla[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'corolla[serve]'")

from conftest import CLASSES, make_labels_matter  # noqa: E402

from corolla import cli, conditioning, editing, figures
from corolla.config import preset  # noqa: E402
from corolla.diffusion import DiffusionModel  # noqa: E402
from corolla.generation import generate  # noqa: E402
from corolla.serve import photos  # noqa: E402
from corolla.serve.app import create_app  # noqa: E402
from corolla.serve.engine import Engine, Limits  # noqa: E402
from corolla.storage import checkpoint  # noqa: E402
from corolla.storage.grids import grid_array, to_uint8  # noqa: E402
from corolla.training import train  # noqa: E402
from corolla.unet import UNetConfig  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# 38 training images of 16x16 in batches of 8: 4 steps an epoch, a grid and a checkpoint each
CONFIG = preset("tiny").replace(train={"epochs": 2})
WAIT_MS = 20_000  # the longest any page condition is waited for (it holds in milliseconds when all is well)


def quiet_train(run, flowers, **kwargs):
    train(kwargs.pop("config", CONFIG), flowers, run, device="cpu", progress=False, log=lambda *_: None, **kwargs)


@pytest.fixture(scope="module")
def flowers(make_flowers):
    return make_flowers(40)


@pytest.fixture(scope="module")
def run_dir(flowers, tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "run"
    quiet_train(run, flowers)
    return run


@pytest.fixture(scope="module")
def model(run_dir):
    return checkpoint.load_model(run_dir)[0]


class Server:
    """The app on a free loopback port, served by uvicorn in a thread; ready once it answers."""

    def __init__(self, app):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.answers():
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)  # polling the condition, not waiting a guessed time

    def answers(self) -> bool:
        try:
            return request(self, "GET", "/api/health")[0] == 200
        except OSError:
            return False

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        self.socket.close()


@pytest.fixture(scope="module")
def served_run(run_dir, tmp_path_factory):
    """A copy of the run, which the run-panel test trains further while the page watches."""
    copy = tmp_path_factory.mktemp("watched") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".corolla.lock"))
    return copy


@pytest.fixture(scope="module")
def server(model, served_run):
    running = Server(create_app(Engine(model, 16, "tiny test model", Limits(max_jobs=4)), served_run, refresh_s=0.1))
    yield running
    running.stop()


def request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    payload = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    connection.request(method, path, payload, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    status, content_type, data = response.status, response.getheader("content-type", ""), response.read()
    connection.close()
    return status, content_type, data


def events(server, path, body):
    """POST a request -> its server-sent events as (name, data) pairs."""
    status, content_type, data = request(server, "POST", path, body)
    assert status == 200 and content_type.startswith("text/event-stream"), data
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            name, payload = block.split("\n")
            out.append((name.removeprefix("event: "), json.loads(payload.removeprefix("data: "))))
    return out


def pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGB"))


# -- the app over HTTP ------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler, grid, eta", [("ddim", "uniform", 0.0), ("ddim", "logsnr", 0.7),
                                                ("unipc", "karras", 0.0)])
def test_generate_streams_a_preview_per_step_and_ends_with_corolla_samples_images(server, model, sampler, grid, eta):
    answer = events(server, "/api/generate", {"seed": 11, "count": 5, "steps": 7, "sampler": sampler,
                                              "grid": grid, "eta": eta})
    assert [name for name, _ in answer] == ["step"] * 7 + ["done"]
    assert [data["step"] for _, data in answer[:-1]] == list(range(1, 8))
    expected = grid_array(generate(model, 5, 7, seed=11, sampler=sampler, eta=eta, batch_size=5, image_size=16,
                                   grid=grid))
    assert np.array_equal(pixels(answer[-1][1]["image"]), expected)
    previews = [pixels(data["image"]) for _, data in answer[:-1]]
    assert np.array_equal(previews[-1], expected)  # the last prediction is the result
    assert not np.array_equal(previews[0], expected)  # the first is a blur of it


@pytest.mark.parametrize("body, message", [
    ({"count": 10_000}, "count 10,000 is not allowed: it must be from 1 to 64 (this server's --max-images at 16x16)"),
    ({"steps": 10_000}, "steps 10,000 is not allowed: it must be from 1 to 200 (this server's --max-steps)"),
    ({"seed": -1}, "seed -1 is not allowed: it must be from 0 to 4,294,967,295"),
    ({"seed": "1e9"}, "seed '1e9' is not a whole number"),
    ({"steps": 2.5}, "steps 2.5 is not a whole number"),
    ({"count": True}, "count True is not a whole number"),
    ({"eta": "nan"}, "eta nan is not allowed: it must be from 0 to 1"),
    ({"sampler": "euler"}, "sampler 'euler' is not allowed: choose ddim, dpmpp_2m, dpmpp_3m, unipc"),
    ({"sampler": "unipc", "eta": 0.5}, "eta 0.5 needs the ddim sampler: unipc is deterministic (eta 0)"),
    ({"grid": "x" * 500}, f"grid '{'x' * 39}... is not allowed: choose karras, logsnr, uniform"),
    ([1, 2], "the request must be a JSON object of named values"),
    (b"{not json", "the request is not valid JSON"),
    (b" " * 70_000, "the request is 70,000 bytes; at most 65,536 are accepted"),
])
def test_bad_requests_are_refused_with_a_message(server, body, message):
    status, _, data = request(server, "POST", "/api/generate", body)
    assert (status, json.loads(data)) == (400, {"error": message})
    assert events(server, "/api/generate", {"count": 1, "steps": 1})[-1][0] == "done"  # and the server goes on


def test_only_json_from_this_machine_starts_work(server):
    # a cross-site form can post text/plain, never application/json without the page's consent
    assert request(server, "POST", "/api/generate", b"count=1", {"Content-Type": "text/plain"})[0] == 400
    # DNS rebinding: another site's name resolving to 127.0.0.1 is not answered
    assert request(server, "GET", "/api/info", headers={"Host": "evil.example:80"})[0] == 400
    assert request(server, "GET", "/api/info", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_requests_sample_side_by_side_each_with_its_own_images(model):
    """While one request waits between two of its steps, another one samples: the lock is per
    network evaluation, not per request, and neither takes the other's images."""
    engine = Engine(model, 16, "tiny")
    first_paused, second_done = threading.Event(), threading.Event()
    results, order = {}, []

    def on_step(name):
        def step(number, preview):
            order.append((name, number))
            if name == "a" and number == 2:
                first_paused.set()
                assert second_done.wait(30)  # b must finish while a is half done
        return step

    def run(name, seed):
        results[name] = engine.sample(engine.sample_request({"seed": seed, "count": 3, "steps": 4}),
                                      on_step(name), threading.Event())
    a = threading.Thread(target=run, args=("a", 1))
    a.start()
    assert first_paused.wait(30)
    run("b", 2)
    second_done.set()
    a.join(30)
    assert order == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3), ("b", 4), ("a", 3), ("a", 4)]
    for name, seed in (("a", 1), ("b", 2)):
        assert torch.equal(results[name], generate(model, 3, 4, seed=seed, batch_size=3, image_size=16))


def test_a_full_server_refuses_more_jobs_with_a_message(model):
    engine = Engine(model, 16, "tiny", Limits(max_jobs=1))
    served = Server(create_app(engine))
    try:
        assert engine.slots.acquire(blocking=False)  # one job running
        answer = events(served, "/api/generate", {"count": 1, "steps": 1})
        assert answer == [("error", {"message": "the server is busy with 1 requests; try again in a moment"})]
        engine.slots.release()
        assert events(served, "/api/generate", {"count": 1, "steps": 1})[-1][0] == "done"
    finally:
        served.stop()


def test_a_closed_page_stops_its_request_at_the_next_step(model, monkeypatch):
    """The app driven through ASGI: the page goes away after the first preview, while the second
    evaluation runs; the request then makes no third one and gives its slot back."""
    import asyncio
    engine = Engine(model, 16, "tiny", Limits(max_jobs=1))
    app, denoise, evaluations = create_app(engine), model.ema_denoiser(), []
    second_started, app_returned = threading.Event(), threading.Event()

    def counting(*args):
        evaluations.append(1)
        if len(evaluations) == 2:
            second_started.set()
            assert app_returned.wait(30)  # the page is gone before this evaluation ends
        return denoise(*args)
    monkeypatch.setattr(model, "ema_denoiser", lambda *_: counting)

    async def visit():
        first_preview = asyncio.Event()
        body = json.dumps({"count": 1, "steps": 50}).encode()
        requests = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if requests:
                return requests.pop()
            await first_preview.wait()
            await asyncio.get_running_loop().run_in_executor(None, second_started.wait, 30)
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body", b"").startswith(b"event: step"):
                first_preview.set()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/generate", "raw_path": b"/api/generate", "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
        await app(scope, receive, send)
    asyncio.run(visit())
    app_returned.set()
    deadline = time.monotonic() + 30
    while not engine.slots.acquire(blocking=False):  # the job ends and frees its slot
        assert time.monotonic() < deadline, "the request did not stop"
        time.sleep(0.01)
    assert len(evaluations) == 2  # of 50


def test_run_grids_are_served_by_their_names_only(server, served_run):
    status, content_type, data = request(server, "GET", "/api/run/samples/epoch_001.png")
    assert (status, content_type) == (200, "image/png")
    assert data == (served_run / "samples" / "epoch_001.png").read_bytes()
    for name in ("..%2Fmetrics.jsonl", "epoch_1.png", "%2Fetc%2Fpasswd", "epoch_999.png"):
        assert request(server, "GET", f"/api/run/samples/{name}")[0] == 404


def data_url(path: Path, kind: str = "image/jpeg") -> str:
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def test_photos_are_read_as_the_editing_commands_read_them_in_a_folder_that_goes_away(
        server, model, flowers, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the uploads' folders are made
    first, second = sorted(flowers.glob("*.jpg"))[:2]
    body = {"first_photo": data_url(first), "first_photo_name": "a.jpg", "second_photo": data_url(second),
            "second_photo_name": "../../b.jpg", "frames": 3, "steps": 4}
    answer = events(server, "/api/interpolate", body)
    ends = torch.stack([editing.load_photo(path, 16)[0] for path in (first, second)])
    noise = editing.invert(model, ends, 4, "logsnr")
    expected = to_uint8(editing.interpolate(model, [noise[0], noise[1]], 3, 4, "logsnr")[0])
    assert [name for name, _ in answer] == ["done"]
    assert all(np.array_equal(pixels(url), frame) for url, frame in zip(answer[0][1]["frames"], expected))
    answer = events(server, "/api/edit", {"photo": data_url(first), "strength": 0.5, "steps": 6, "seed": 2})
    expected = editing.edit(model, ends[:1], 0.5, 6, 2)
    assert np.array_equal(pixels(answer[-1][1]["image"]), to_uint8(expected)[0])
    assert np.array_equal(pixels(answer[-1][1]["input"]), to_uint8(ends[:1])[0])
    assert list(tmp_path.iterdir()) == []  # every upload's folder is gone


@pytest.mark.parametrize("body, message", [
    ({"photo": "data:text/plain;base64," + base64.b64encode(b"not an image").decode(), "photo_name": "notes.txt"},
     "image 'notes.txt' is not an image corolla can read (cannot identify image file 'notes.txt')"),
    ({"photo": "data:image/png;base64,!!!!"}, "a photo is not valid base64"),
    ({"photo": "http://example.com/x.png"}, "a photo must be sent as a base64 data: URL"),
    ({}, "choose a photo first"),
])
def test_an_upload_that_is_not_an_image_is_refused_with_a_message(server, body, message):
    assert events(server, "/api/edit", body) == [("error", {"message": message})]


def test_uploads_and_inpainting_are_bounded(server):
    huge = {"photo": "data:image/png;base64," + "A" * (photos.MAX_PHOTO_BYTES * 4 // 3 + 8)}
    with pytest.raises(ValueError, match="a photo is over 8 MiB; at most 8 MiB are accepted"):
        photos.upload_bytes(huge, "photo", "a photo")
    status, _, data = request(server, "POST", "/api/inpaint", {"steps": 200, "resample": 100, "jump": 1})
    evaluations = editing.repaint_evaluations(200, 100, 1)
    assert evaluations > 1000
    assert (status, json.loads(data)) == (400, {"error": f"200 steps resampled 100 times (jump 1) take {evaluations:,} "
                                                         f"network evaluations; this server allows 1,000"})
    status, _, data = request(server, "POST", "/api/interpolate", {"first_photo": "x"})
    assert json.loads(data) == {"error": "choose both photos to interpolate between photos, or neither for seeds"}


# -- a class-conditional model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory):
    """A tiny conditional model, as tests/test_conditional.py builds one: untrained, its head and class
    shifts drawn at random so that the class changes the images; saved, for `corolla sample`."""
    torch.manual_seed(0)
    made = DiffusionModel(UNetConfig(**{**CONFIG.unet.__dict__, "classes": CLASSES}))
    make_labels_matter(made.ema_network, torch.Generator().manual_seed(1))
    made.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.01))
    return checkpoint.save_pretrained(tmp_path_factory.mktemp("conditional") / "model", made,
                                      CONFIG.replace(unet={"classes": CLASSES}))


@pytest.fixture(scope="module")
def conditional_model(conditional_checkpoint):
    return checkpoint.load_model(conditional_checkpoint)[0]


@pytest.fixture(scope="module")
def conditional_server(conditional_model):
    running = Server(create_app(Engine(conditional_model, 16, "tiny conditional model")))
    yield running
    running.stop()


def test_a_conditional_model_draws_the_chosen_class_as_corolla_sample_class_does(
        conditional_server, conditional_model, conditional_checkpoint, tmp_path):
    status, _, data = request(conditional_server, "GET", "/api/info")
    info = json.loads(data)
    assert (info["classes"], info["guidance"], info["max_guidance"]) == (list(CLASSES), 3.0, 100.0)
    answer = events(conditional_server, "/api/generate", {"seed": 4, "count": 3, "steps": 5, "classes": ["Sunflower"],
                                                          "guidance": "2.5"})
    assert [name for name, _ in answer] == ["step"] * 5 + ["done"]
    done = answer[-1][1]
    assert (done["classes"], done["guidance"]) == (["sunflower"], 2.5)
    sunflowers = generate(conditional_model, 3, 5, seed=4, batch_size=3, image_size=16, classes="sunflower",
                          guidance=2.5)
    assert np.array_equal(pixels(done["image"]), grid_array(sunflowers, ncol=3))  # one row, as the command lays it
    assert cli.main(["sample", str(conditional_checkpoint), "--class", "sunflower", "--guidance", "2.5", "-n", "3",
                     "--steps", "5", "--seed", "4", "--device", "cpu", "--precision", "fp32", "--no-progress",
                     "--out", str(tmp_path / "cli.png")]) == 0
    with Image.open(tmp_path / "cli.png") as written:
        assert np.array_equal(pixels(done["image"]), np.asarray(written.convert("RGB")))  # the command's own file
    assert np.array_equal(pixels(answer[-2][1]["image"]), pixels(done["image"]))  # the last preview is the result
    unconditional = generate(conditional_model, 3, 5, seed=4, batch_size=3, image_size=16)
    assert (sunflowers - unconditional).abs().mean() > 0.01  # the class matters
    # no class, "any" alone: the unconditional grid of `corolla sample` without --class
    for body in ({}, {"classes": []}, {"classes": [None]}):
        answer = events(conditional_server, "/api/generate", {"seed": 4, "count": 3, "steps": 5, **body})
        assert np.array_equal(pixels(answer[-1][1]["image"]), grid_array(unconditional))
        assert answer[-1][1]["classes"] == []


def test_several_classes_are_rows_from_the_same_noise_with_a_preview_per_evaluation(conditional_server,
                                                                                    conditional_model):
    """`corolla sample --class 0 --class rose -n 2` with an unconditional row between: each row is its
    own batch, so it has the pixels that class alone gives, and eta > 0 draws the same noise in each."""
    body = {"seed": 9, "count": 2, "steps": 4, "eta": 0.5, "classes": [0, None, "rose"], "guidance": 1.5}
    answer = events(conditional_server, "/api/generate", body)
    assert [name for name, _ in answer] == ["step"] * 12 + ["done"]
    assert [data["step"] for _, data in answer[:-1]] == list(range(1, 13))
    assert {data["steps"] for _, data in answer[:-1]} == {12}
    options = dict(num_images=2, steps=4, seed=9, eta=0.5, batch_size=2, image_size=16)
    rows = [generate(conditional_model, **options, classes=0, guidance=1.5), generate(conditional_model, **options),
            generate(conditional_model, **options, classes="rose", guidance=1.5)]
    assert np.array_equal(pixels(answer[-1][1]["image"]), grid_array(torch.cat(rows), ncol=2))
    assert answer[-1][1]["classes"] == ["daisy", None, "rose"]
    assert pixels(answer[4][1]["image"]).shape == grid_array(torch.cat(rows[:2]), ncol=2).shape  # the grid grows


@pytest.mark.parametrize("body, message", [
    ({"classes": ["sunflwer"]}, "unknown class 'sunflwer'; closest: 'sunflower' (`corolla classes` lists all 3)"),
    ({"classes": ["roses", "daisy"]}, "unknown class 'roses'; closest: 'rose' (`corolla classes` lists all 3)"),
    ({"classes": [3]}, "class number 3 is not one of this model's: 0 to 2"),
    ({"classes": [1.5]}, "a class is a name or a number, not 1.5"),
    ({"classes": "rose"}, "classes 'rose' is not a list of class names or numbers"),
    ({"classes": [0] * 65}, "65 classes are too many: one row of images each, and at most 64 images "
                            "(this server's --max-images at 16x16)"),
    ({"classes": [0, 1, 2], "count": 22}, "count 22 is not allowed: it must be from 1 to 21 "
                                          "(this server's --max-images at 16x16, in 3 rows)"),
    ({"classes": [0], "guidance": 101}, "guidance 101 is not allowed: it must be from 0 to 100"),
    ({"classes": [0], "guidance": -1}, "guidance -1 is not allowed: it must be from 0 to 100"),
    ({"classes": [0], "guidance": "nan"}, "guidance nan is not allowed: it must be from 0 to 100"),
    ({"classes": [0], "guidance": "lots"}, "guidance 'lots' is not a number"),
    ({"guidance": 2}, "guidance needs a class: without one the model samples unconditionally"),
    ({"classes": [None], "guidance": 2}, "guidance needs a class: without one the model samples unconditionally"),
])
def test_bad_classes_and_guidance_are_refused_with_a_message(conditional_server, body, message):
    status, _, data = request(conditional_server, "POST", "/api/generate", {"count": 1, "steps": 1, **body})
    assert (status, json.loads(data)) == (400, {"error": message})


def test_an_unconditional_model_has_no_class_controls(server):
    info = json.loads(request(server, "GET", "/api/info")[2])
    assert info["classes"] == []
    for body in ({"classes": ["rose"]}, {"classes": [None]}, {"guidance": 1}):
        status, _, data = request(server, "POST", "/api/generate", {"count": 1, "steps": 1, **body})
        assert (status, json.loads(data)) == (400, {"error": "this model is not class-conditional (it was trained "
                                                             "without --conditional): it takes no classes and no "
                                                             "guidance"})


def test_serve_without_the_extra_names_the_pip_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert cli.main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err == ("corolla: error: corolla serve needs the web app extra (uvicorn is missing): "
                                       "pip install 'corolla[serve]'\n")


def test_a_busy_port_is_a_one_line_error(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"corolla: error: cannot listen on 127.0.0.1:{port} (") and err.count("\n") == 1


@pytest.mark.slow  # starts a subprocess
def test_corolla_serve_command_warns_off_loopback_and_stops_on_ctrl_c(run_dir, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "corolla", "serve", str(run_dir), "--host", "0.0.0.0",
                                "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = process.stdout.readline()  # printed once the socket listens and the model is loaded
        assert line.startswith(f"corolla: serving {run_dir} at http://0.0.0.0:"), line
        port = int(line.split(":")[-1].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/api/info")
        info = json.loads(connection.getresponse().read())
        assert (info["image_size"], info["run"]) == (16, "run")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert "corolla: warning: --host 0.0.0.0: anyone who can reach this port can use this machine's CPU" in err
    assert "Traceback" not in err


# -- the page in a browser --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    sync_api.expect.set_options(timeout=WAIT_MS)
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium); "
                    f"the browser tests need it")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    opened.goto(server.url)
    opened.wait_for_selector("body[data-ready=true]")
    yield opened
    context.close()


def expect(locator):
    """Playwright's waiting assertions (imported late: playwright is a test extra)."""
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


def shown(page, selector) -> np.ndarray:
    return pixels(page.get_attribute(selector, "src"))


def ask_for_grid(page, seed, count, steps):
    page.fill("#seed", str(seed))
    page.fill("#count", str(count))
    page.fill("#steps", str(steps))
    page.click("#generate-button")


def test_page_shows_previews_as_the_images_form_then_the_grid(page, model):
    ask_for_grid(page, 5, 4, 12)
    page.wait_for_selector("#generate-status:has-text('done')")
    assert page.inner_text("#generate-status").startswith("done: 4 images, seed 5, 12 steps, 12 previews")
    # an unconditional model's page has no class controls
    assert page.inner_text("#model-info") == "tiny test model: 16x16 images, on cpu"
    for hidden in ("#class-label", "#guidance-label", "#class-hint"):
        assert page.locator(hidden).is_hidden()
    expected = grid_array(generate(model, 4, 12, seed=5, batch_size=4, image_size=16))
    assert np.array_equal(shown(page, "#generate-image"), expected)
    assert page.get_attribute("#generate-download", "href") == page.get_attribute("#generate-image", "src")
    assert page.inner_text("#generate-message") == ""


def test_slider_walks_between_the_two_seeds(page, model):
    page.fill("#interp-first", "3")
    page.fill("#interp-second", "7")
    page.fill("#interp-frames", "5")
    page.fill("#interp-steps", "6")
    page.click("#interp-button")
    page.wait_for_selector("#interp-status:has-text('done: 5 frames')")
    expected = to_uint8(figures.interpolate(model, [(3, 7)], 5, 6, 16)[0])
    seen = []
    for i in range(5):
        assert page.inner_text("#interp-weight") == f"frame {i + 1}/5, w = {i / 4:.2f}"
        seen.append(shown(page, "#interp-image"))
        page.press("#interp-slider", "ArrowRight")  # as a user moves it
    assert all(np.array_equal(a, b) for a, b in zip(seen, expected))
    # the ends are `corolla sample`'s image 0 of each seed
    assert np.array_equal(seen[0], to_uint8(generate(model, 1, 6, seed=3, batch_size=1, image_size=16))[0])
    assert np.array_equal(seen[-1], to_uint8(generate(model, 1, 6, seed=7, batch_size=1, image_size=16))[0])
    page.press("#interp-slider", "Home")
    assert np.array_equal(shown(page, "#interp-image"), seen[0])


def test_a_refused_request_shows_its_message_and_the_page_goes_on(page):
    ask_for_grid(page, 0, 10000, 20)
    message = page.locator("#generate-message")
    expect(message).to_have_text("count 10,000 is not allowed: it must be from 1 to 64 "
                                 "(this server's --max-images at 16x16)")
    ask_for_grid(page, 0, 4, 10000)
    expect(message).to_have_text("steps 10,000 is not allowed: it must be from 1 to 200 (this server's --max-steps)")
    ask_for_grid(page, 0, 2, 3)
    page.wait_for_selector("#generate-status:has-text('done')")
    assert message.inner_text() == ""


def test_two_pages_at_once_each_get_their_own_images(browser, server, model):
    pages = []
    for _ in range(2):
        opened = browser.new_context().new_page()
        opened.set_default_timeout(WAIT_MS)
        opened.goto(server.url)
        opened.wait_for_selector("body[data-ready=true]")
        pages.append(opened)
    try:
        for seed, opened in enumerate(pages, start=21):
            ask_for_grid(opened, seed, 9, 30)  # both asked before either is waited for
        for seed, opened in enumerate(pages, start=21):
            opened.wait_for_selector("#generate-status:has-text('done')")
            expected = grid_array(generate(model, 9, 30, seed=seed, batch_size=9, image_size=16))
            assert np.array_equal(shown(opened, "#generate-image"), expected)
    finally:
        for opened in pages:
            opened.context.close()


def test_page_edits_and_inpaints_a_photo_with_a_painted_mask(page, model, flowers):
    path = sorted(flowers.glob("*.jpg"))[0]
    photo = editing.load_photo(path, 16)[0][None]
    page.set_input_files("#photo-file", str(path))
    page.wait_for_selector("#photo-stage", state="visible")
    page.fill("#edit-strength", "0.5")
    page.fill("#edit-steps", "8")
    page.click("#edit-button")
    page.wait_for_selector("#photo-status:has-text('done: SDEdit')")
    assert np.array_equal(shown(page, "#photo-input"), to_uint8(photo)[0])
    assert np.array_equal(shown(page, "#photo-result"), to_uint8(editing.edit(model, photo, 0.5, 8, 0))[0])

    page.locator("#mask-canvas").scroll_into_view_if_needed()  # the mouse paints where the page shows it
    box = page.locator("#mask-canvas").bounding_box()  # a stroke across the middle of the photo
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    for field, value in (("#inpaint-steps", "10"), ("#inpaint-resample", "2"), ("#inpaint-jump", "2")):
        page.fill(field, value)
    page.click("#inpaint-button")
    page.wait_for_selector("#photo-status:has-text('done: inpainted')")
    fill = torch.from_numpy(shown(page, "#photo-mask")[..., 0] > 127)[None]
    assert 0 < fill.sum() < fill.numel() and fill[0, 8, 8] and not fill[0, 0, 0]  # the stroke, not all
    result = shown(page, "#photo-result")
    assert np.array_equal(result, to_uint8(editing.inpaint(model, photo, fill[None], 10, 0, 2, 2))[0])
    kept = ~fill[0].numpy()
    assert np.array_equal(result[kept], to_uint8(photo)[0][kept])  # the photo wherever nothing was painted


def test_a_file_that_is_not_an_image_is_refused_in_the_page(page):
    page.set_input_files("#photo-file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"})
    page.click("#edit-button")
    expect(page.locator("#photo-message")).to_have_text(
        "image 'notes.txt' is not an image corolla can read (cannot identify image file 'notes.txt')")


def test_run_panel_follows_the_training_run(page, served_run, flowers):
    def curve_points(name):
        return int(page.get_attribute(f"#loss-curve polyline.{name}", "data-points"))

    page.wait_for_selector("#run-grids a")
    assert (curve_points("train"), curve_points("val")) == (2, 2)  # steps 4 and 8
    assert page.locator("#run-grids a").all_inner_texts() == ["epoch_001.png", "epoch_002.png"]
    assert page.get_attribute("#run-grid", "src") == "/api/run/samples/epoch_002.png"
    expect(page.locator("#run-grid")).to_have_js_property("naturalWidth", 38)  # 2x2 cells of 16 px
    quiet_train(served_run, flowers, config=CONFIG.replace(train={"epochs": 3}), resume=True)  # one more epoch
    page.wait_for_selector("#run-grids a:has-text('epoch_003.png')")
    expect(page.locator("#loss-curve polyline.val")).to_have_attribute("data-points", "3")
    assert curve_points("train") == 3
    assert page.get_attribute("#run-grid", "src") == "/api/run/samples/epoch_003.png"
    assert "3 train and 3 validation points (last step 12), 3 grids" in page.inner_text("#run-status")


def test_page_draws_a_chosen_class_of_a_conditional_model(browser, conditional_server, conditional_model):
    opened = browser.new_context().new_page()
    opened.set_default_timeout(WAIT_MS)
    try:
        opened.goto(conditional_server.url)
        opened.wait_for_selector("body[data-ready=true]")
        assert opened.inner_text("#model-info") == ("tiny conditional model: 16x16 images, conditional on 3 classes, "
                                                    "on cpu")
        assert opened.locator("#classes option").all_inner_texts() == ["any (unconditional)", *CLASSES]
        assert float(opened.input_value("#guidance")) == conditioning.DEFAULT_GUIDANCE
        opened.select_option("#classes", label="rose")
        opened.fill("#guidance", "2")
        ask_for_grid(opened, 5, 4, 6)
        opened.wait_for_selector("#generate-status:has-text('done')")
        assert opened.inner_text("#generate-status").startswith(
            "done: 4 images per class (rose; guidance 2), seed 5, 6 steps, 6 previews")
        expected = generate(conditional_model, 4, 6, seed=5, batch_size=4, image_size=16, classes="rose", guidance=2)
        assert np.array_equal(shown(opened, "#generate-image"), grid_array(expected, ncol=4))
        assert opened.inner_text("#generate-message") == ""
    finally:
        opened.context.close()

