"""The HTTP side of `corolla serve`: a Starlette app, one HTML page, JSON in and server-sent
events out (a preview after each network evaluation).

Safe by default: every request is bounded (body size, images, steps, frames, concurrent jobs); a
refused one gets a message the page shows; requests must be JSON (a cross-site form cannot
start work); on a loopback address only Host headers naming it are answered (DNS rebinding);
requests are read into memory, an uploaded photo is written only into a temporary folder of its
own request (serve/photos.py), and generated images go back inside the response.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..limits import MAX_GRID_BYTES
from ..storage import runfolder
from ..storage.safefile import FileRefused, read_run_file
from . import guards, photos
from .engine import BadRequest, Cancelled, Engine, frame_urls, grid_url, run_summary

STATIC = Path(__file__).parent / "static"
MAX_JSON_BYTES = 64 * 1024
QUEUED_EVENTS = 4
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}


def refuse(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


async def read_json(request: Request, uploads: guards.UploadGate, limit: int = MAX_JSON_BYTES) -> dict:
    """The request's JSON object, read up to `limit` bytes while holding one of the upload slots
    (BadRequest beyond, or when not JSON; guards.Busy when every slot is taken)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("send the request as application/json")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the request is {int(declared):,} bytes; at most {limit:,} are accepted")
    async with uploads.slot():
        return guards.parse_object(await guards.read_body(request.stream(), limit))


def refuse_request(error: Exception) -> JSONResponse:
    """400 for a bad request, 503 when the server is at a limit (the page may try again)."""
    return refuse(str(error), 503 if isinstance(error, guards.Busy) else 400)


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def stream(engine: Engine, work, stall_s: float = guards.CLIENT_STALL_S) -> StreamingResponse:
    """Run work(on_step, cancelled) -> the final event's data in a thread of its own, sending a
    'step' event per network evaluation, then 'done' (or 'error' with its message).

    The thread starts when the response does, and the stream's end (the page closed, the
    connection dropped) cancels it at its next evaluation, as does a client that reads none of
    its events for stall_s seconds: it would hold a job slot for ever."""
    async def events():
        if not engine.slots.acquire(blocking=False):
            yield event("error", {"message": f"the server is busy with {engine.limits.max_jobs} requests; "
                                             f"try again in a moment"})
            return
        loop = asyncio.get_running_loop()
        # a few events ahead at most: a page slower than the model slows its own job down instead
        # of piling up previews in memory
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUED_EVENTS)
        cancelled = threading.Event()

        def send(name: str | None, data: dict | None = None) -> None:
            if cancelled.is_set():  # nobody reads the stream any more
                raise Cancelled
            put = queue.put((name, data))
            try:
                future = asyncio.run_coroutine_threadsafe(put, loop)
            except RuntimeError:  # the server's loop is gone
                put.close()
                raise Cancelled from None
            deadline = time.monotonic() + stall_s
            while True:
                try:
                    return future.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    if cancelled.is_set() or time.monotonic() > deadline:  # nobody reads it, or will
                        cancelled.set()
                        future.cancel()
                        raise Cancelled from None

        def run() -> None:
            try:
                send("done", work(lambda number, data: send("step", {"step": number, **data}), cancelled))
            except Cancelled:
                pass
            except ValueError as error:  # what the model or the request cannot do
                send_last("error", {"message": str(error)})
            except Exception as error:  # a bug: the page says so, the server log has the trace
                traceback.print_exc(file=sys.stderr)
                send_last("error", {"message": f"internal error ({type(error).__name__}); see the server's log"})
            finally:
                engine.slots.release()
                send_last(None)

        def send_last(name: str | None, data: dict | None = None) -> None:
            try:
                send(name, data)
            except Cancelled:
                pass

        threading.Thread(target=run, name="corolla-serve-job", daemon=True).start()
        try:
            while True:
                name, data = await queue.get()
                if name is None:
                    return
                yield event(name, data)
        finally:
            cancelled.set()
    return StreamingResponse(events(), media_type="text/event-stream", headers=HEADERS)


def job_endpoint(engine: Engine, uploads: guards.UploadGate, stall_s: float, request_job, work_for,
                 limit: int = MAX_JSON_BYTES):
    """A POST endpoint that checks its JSON into a job (request_job(params), BadRequest when a field is
    not allowed) and streams work_for(engine, job, params) -> work(on_step, cancelled)."""
    async def endpoint(request: Request) -> Response:
        try:
            params = await read_json(request, uploads, limit)
            job = request_job(params)
        except (BadRequest, guards.Busy) as error:
            return refuse_request(error)
        return stream(engine, work_for(engine, job, params), stall_s)
    return endpoint


def sample_work(engine: Engine, job, params):
    def work(on_step, cancelled):
        # a preview per network evaluation: job.steps of them per row of a class
        images = engine.sample(job, lambda number, preview: on_step(
            number, {"steps": job.evaluations, "image": grid_url(preview, job.columns)}), cancelled)
        return {"image": grid_url(images, job.columns), "seed": job.seed, "count": job.count, "steps": job.steps,
                "classes": [None if c is None else engine.classes[c] for c in job.classes],
                "guidance": job.guidance if job.classes else None}
    return work


def interpolation_work(engine: Engine, job, params):
    def work(on_step, cancelled):
        if job.photos:
            with photos.upload_folder() as folder:
                ends = torch.stack([photos.load_photo(params, key, engine.image_size, folder)[0]
                                    for key in ("first_photo", "second_photo")])
            frames = engine.interpolate_photos(job, ends, cancelled)
        else:
            frames = engine.interpolate(job, lambda number, _: on_step(number, {"steps": job.steps}), cancelled)
        return {"frames": frame_urls(frames), "weights": [i / (job.frames - 1) for i in range(job.frames)]}
    return work


def edit_work(engine: Engine, job, params):
    def work(on_step, cancelled):
        with photos.upload_folder() as folder:
            photo, _ = photos.load_photo(params, "photo", engine.image_size, folder)
        result = engine.edit(job, photo, cancelled)
        return {"input": frame_urls(photo[None])[0], "image": frame_urls(result)[0]}
    return work


def inpaint_work(engine: Engine, job, params):
    def work(on_step, cancelled):
        with photos.upload_folder() as folder:
            photo, photo_size = photos.load_photo(params, "photo", engine.image_size, folder)
            fill = photos.load_mask(params, photo_size, engine.image_size, folder)
        result = engine.inpaint(job, photo, fill, cancelled)
        return {"input": frame_urls(photo[None])[0], "mask": frame_urls(fill.float().expand(3, -1, -1)[None])[0],
                "image": frame_urls(result)[0]}
    return work


def run_routes(run_dir: Path | None) -> list[Route]:
    """The shown training run's summary and grids. Its files are read in a worker thread (a slow disk
    must not stall every other request), each through safefile.read_run_file: regular files of the
    run only, bounded, no link followed."""
    async def run(request: Request) -> Response:
        if run_dir is None:
            return refuse("this server shows no training run (start it with --run DIR)", 404)
        try:
            return JSONResponse(await run_in_threadpool(run_summary, run_dir, runfolder.SAMPLE_GRID), headers=HEADERS)
        except FileRefused as error:
            return refuse(f"the run's files cannot be shown: {error}", 409)

    async def run_grid(request: Request) -> Response:
        name = request.path_params["name"]
        try:  # only the run's own grid files, by their exact names: no other path can be asked for
            if run_dir is None or not runfolder.SAMPLE_GRID.fullmatch(name):
                raise FileNotFoundError
            png = await run_in_threadpool(read_run_file, run_dir, f"samples/{name}", MAX_GRID_BYTES, "a sample grid")
        except (OSError, FileRefused):
            return refuse(f"no sample grid {name!r}", 404)
        return Response(png, media_type="image/png", headers=HEADERS)
    return [Route("/api/run", run), Route("/api/run/samples/{name}", run_grid)]


def create_app(engine: Engine, run_dir: Path | None = None, refresh_s: float = 5.0,
               loopback_only: bool = True, stall_s: float = guards.CLIENT_STALL_S) -> Starlette:
    """The app for one loaded model; run_dir: a training run folder whose curves and grids the
    page shows (read afresh every refresh_s seconds)."""
    uploads = guards.UploadGate(engine.limits.max_jobs)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True}, headers=HEADERS)

    async def info(request: Request) -> Response:
        return JSONResponse({**engine.info(), "run": run_dir.name if run_dir else None, "refresh_s": refresh_s},
                            headers=HEADERS)

    def post(path: str, request_job, work_for, limit: int = MAX_JSON_BYTES) -> Route:
        return Route(path, job_endpoint(engine, uploads, stall_s, request_job, work_for, limit), methods=["POST"])

    routes = [Route("/", page), Route("/api/health", health), Route("/api/info", info),
              post("/api/generate", engine.sample_request, sample_work),
              post("/api/interpolate", engine.interpolation_request, interpolation_work, photos.MAX_UPLOAD_JSON),
              post("/api/edit", engine.edit_request, edit_work, photos.MAX_UPLOAD_JSON),
              post("/api/inpaint", engine.inpaint_request, inpaint_work, photos.MAX_UPLOAD_JSON),
              *run_routes(run_dir), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    middleware = [Middleware(guards.LoopbackHostOnly)] if loopback_only else []
    return Starlette(routes=routes, middleware=middleware)
