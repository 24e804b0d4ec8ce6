"""`corolla serve` against hostile clients (issue 26, items 1, 2 and 4): every malformed field is
a 4xx with what is allowed, any loopback address is its own Host, no file outside the run's own
is served, a run's files never stall the server, abandoned photo jobs stop within a step, and
uploads are capped in number as in size. The rules live in small helpers (serve/guards.py and
the engine's field parsers) that a Gradio page can use too."""
from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'corolla[serve]'")
from starlette.testclient import TestClient  # noqa: E402

from corolla.config import preset  # noqa: E402
from corolla.diffusion import DiffusionModel  # noqa: E402
from corolla.serve import guards  # noqa: E402
from corolla.serve.app import create_app  # noqa: E402
from corolla.serve.engine import BadRequest, Cancelled, EditRequest, Engine, Limits  # noqa: E402

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


MALFORMED = [  # each gave HTTP 500 and a traceback in the log
    ("/api/generate", {"count": "²"}, "count '²' is not a whole number"),
    ("/api/generate", {"steps": "9" * 5000}, "steps '99999999"),
    ("/api/generate", {"sampler": []}, "sampler [] is not allowed: choose"),
    ("/api/generate", {"grid": {"a": 1}}, "grid {'a': 1} is not allowed: choose"),
    ("/api/generate", {"eta": 10 ** 400}, "eta 1000000000"),
    ("/api/edit", {"strength": -10 ** 400}, "strength -1000000000"),
    ("/api/interpolate", {"frames": "٣"}, "frames '٣' is not a whole number"),  # an Arabic-Indic three
]


@pytest.mark.parametrize("path, fields, message", MALFORMED, ids=lambda v: str(v)[:24])
def test_a_malformed_field_is_a_4xx_naming_what_is_allowed(path, fields, message, engine):
    client = TestClient(create_app(engine), raise_server_exceptions=False, base_url="http://127.0.0.1")
    answer = client.post(path, json=fields)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_json_nested_too_deep_is_a_4xx(engine):
    client = TestClient(create_app(engine), raise_server_exceptions=False, base_url="http://127.0.0.1")
    answer = client.post("/api/generate", content=b"[" * 30_000 + b"]" * 30_000,
                         headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "nested" in answer.json()["error"], answer.text


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
FIELDS = ["count", "steps", "seed", "sampler", "grid", "eta", "classes", "guidance", "first", "second", "frames",
          "strength", "resample", "jump", "first_photo", "second_photo"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6))
def test_every_request_field_is_accepted_or_a_bad_request(params, engine):
    for parse in (engine.sample_request, engine.interpolation_request, engine.edit_request, engine.inpaint_request):
        try:
            parse(params)
        except BadRequest as refusal:
            assert str(refusal) and "\n" not in str(refusal)


@pytest.mark.parametrize("bound, host, allowed", [
    ("::1", "[::1]:7860", True), ("127.0.0.2", "127.0.0.2:7860", True), ("127.0.0.1", "localhost:7860", True),
    ("::1", "localhost", True), ("127.0.0.1", "evil.example:7860", False), ("::1", "[::2]:7860", False),
    ("127.0.0.1", "127.0.0.1.evil.example", False), ("127.0.0.1", "", False),
])
def test_any_loopback_address_is_its_own_host_and_no_other_name_is(bound, host, allowed, engine):
    client = TestClient(create_app(engine, loopback_only=True), raise_server_exceptions=False, base_url="http://127.0.0.1")
    answer = client.get("/api/health", headers={"host": host})
    assert (answer.status_code == 200) == allowed, (bound, host, answer.status_code)


def test_a_link_planted_in_the_run_s_samples_is_not_served(engine, run, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:SECRET")
    (run / "samples" / "epoch_002.png").symlink_to(secret)
    client = TestClient(create_app(engine, run), raise_server_exceptions=False, base_url="http://127.0.0.1")
    answer = client.get("/api/run/samples/epoch_002.png")
    assert answer.status_code == 404 and b"SECRET" not in answer.content
    assert "epoch_002.png" not in client.get("/api/run").json()["grids"]


@pytest.mark.parametrize("make", [os.mkfifo, lambda p: p.symlink_to("/dev/zero")], ids=["fifo", "dev-zero"])
def test_a_run_log_that_is_not_a_regular_file_is_refused_and_the_server_goes_on(make, engine, run):
    (run / "metrics.jsonl").unlink()
    make(run / "metrics.jsonl")
    client = TestClient(create_app(engine, run), raise_server_exceptions=False, base_url="http://127.0.0.1")
    answer = client.get("/api/run")
    assert answer.status_code == 409 and "metrics.jsonl" in answer.json()["error"], answer.text
    assert client.get("/api/health").status_code == 200


def test_an_abandoned_photo_job_stops_within_a_network_evaluation(engine):
    cancelled, evaluations = threading.Event(), []

    def leave(*_):  # the page closes during the first evaluation
        evaluations.append(1)
        cancelled.set()
    hook = engine.model.ema_network.register_forward_hook(leave)
    try:
        with pytest.raises(Cancelled):
            engine.edit(EditRequest(1.0, 8, 0, "ddim", "uniform", 0.0), torch.rand(3, 16, 16), cancelled)
    finally:
        hook.remove()
    assert len(evaluations) == 1
    assert not engine.lock.locked()


def test_uploads_in_progress_are_capped_in_number():
    gate = guards.UploadGate(2)

    async def hold_two_then_ask_a_third():
        async with gate.slot(), gate.slot():
            with pytest.raises(guards.Busy, match="2 uploads"):
                async with gate.slot():
                    pass
        async with gate.slot():  # freed again
            pass
    asyncio.run(hold_two_then_ask_a_third())


def test_a_client_that_never_reads_its_stream_gives_its_job_slot_back(tmp_path):
    """Four such clients held all four slots for ever; each now loses its job after stall_s."""
    import socket
    import time

    import uvicorn
    torch.manual_seed(0)
    big = Engine(DiffusionModel(CONFIG.unet, CONFIG.train.schedule), 64, "tiny at 64", Limits(max_jobs=1))
    evaluations = []
    big.model.ema_network.register_forward_hook(lambda *_: evaluations.append(1))
    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(big, stall_s=0.5), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    body = json.dumps({"count": 64, "steps": 200}).encode()  # 200 previews of 64 images: more than the buffers hold
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listening.getsockname())
    try:
        client.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)  # and never reads a byte
        deadline = time.monotonic() + 120  # a hang detector: each condition holds within seconds when all is well
        while not evaluations:  # the job has its slot and samples
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        while not big.slots.acquire(blocking=False):  # then the slot is free again
            assert time.monotonic() < deadline, "the stalled client still holds its job slot"
            time.sleep(0.05)
        big.slots.release()
        assert len(evaluations) < 200  # cancelled, not finished
    finally:
        client.close()
        server.should_exit = True
        thread.join()
