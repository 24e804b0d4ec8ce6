"""The server of `corolla serve`: the Gradio page mounted in an ASGI app of its own, served by
uvicorn on a socket bound before anything loads.

Offline: Gradio's analytics, version check and Hugging Face telemetry are switched off before
Gradio is imported, its fonts are its bundled ones, and nothing is rendered by a Node server, so
the page works on a machine with no network. Safe by default: on a loopback address only Host
headers naming it are answered (DNS rebinding); uploads are capped in size; Gradio's queue holds
at most MAX_QUEUED jobs. Ctrl-C (or SIGTERM) stops every job at its next network evaluation,
waits for them, and returns.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import warnings
from pathlib import Path

OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "GRADIO_SSR_MODE": "False", "DO_NOT_TRACK": "1"}
for _name, _value in OFFLINE.items():  # before gradio is imported: some are read at import
    os.environ[_name] = _value

import fastapi  # noqa: E402
import gradio as gr  # noqa: E402
import uvicorn  # noqa: E402

from . import guards  # noqa: E402
from .layout import build  # noqa: E402
from .page import CSS, Page  # noqa: E402
from .photos import MAX_PHOTO_BYTES  # noqa: E402

MAX_QUEUED = 64  # jobs waiting at once; more are told the queue is full
# Gradio's own deprecation notices (about the pandas it calls) are not the user's to act on
warnings.filterwarnings("ignore", module=r"gradio(\.|$)")
# nor the event loops Gradio makes (and never closes) while the page is built outside of any loop
warnings.filterwarnings("ignore", "unclosed event loop", ResourceWarning)


def theme() -> gr.themes.Base:
    """Gradio's default look with the system's fonts: nothing fetched from a font service."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def create_app(page: Page, loopback_only: bool = True, refresh_s: float = 5.0) -> fastapi.FastAPI:
    """The ASGI app of one page: Gradio's routes under /, and its queue."""
    blocks = build(page, refresh_s)
    blocks.queue(max_size=MAX_QUEUED, default_concurrency_limit=1)
    app = gr.mount_gradio_app(fastapi.FastAPI(docs_url=None, redoc_url=None, openapi_url=None), blocks, path="",
                              ssr_mode=False, max_file_size=MAX_PHOTO_BYTES, footer_links=["api", "settings"],
                              run_history=False, theme=theme(), css=CSS, mcp_server=False,
                              allowed_paths=[str(page.results.root)], show_error=True)
    app.state.stopped = asyncio.Event()
    app.add_middleware(guards.EndsStreamsOnStop, stopped=app.state.stopped)
    if loopback_only:
        app.add_middleware(guards.LoopbackHostOnly)
    app.state.blocks = blocks
    app.state.gradio = next(route.app for route in app.routes if getattr(route, "path", None) == "")
    return app


class Server(uvicorn.Server):
    """uvicorn, whose Ctrl-C or SIGTERM first stops the jobs (each at its next evaluation) and ends
    the page's open streams (Gradio's heartbeats), as Gradio's own server does on closing: uvicorn
    then stops at once instead of cancelling them after its grace period, with a traceback each."""

    def __init__(self, config: uvicorn.Config, turns: guards.Turns):
        super().__init__(config)
        self.turns = turns
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, without raising the caught signal again once stopped: a server stopped on
        purpose returns (uvicorn's KeyboardInterrupt would end inside its event loop)."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    def _end_streams(self) -> None:
        state = self.config.app.state
        state.stopped.set()  # guards.EndsStreamsOnStop: every open stream reads a disconnect
        state.blocks._queue.close()  # what Blocks.close does: no job starts, heartbeats stop
        state.blocks.is_running = False
        state.gradio.stop_event.set()

    def handle_exit(self, sig, frame) -> None:
        self.turns.stopping.set()
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._end_streams)
        super().handle_exit(sig, frame)


def serve(app: fastapi.FastAPI, server_socket: socket.socket, turns: guards.Turns) -> None:
    """Serve until Ctrl-C or SIGTERM, then wait for the jobs to end (within a network evaluation)."""
    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                                   limit_concurrency=guards.MAX_CONNECTIONS), turns)
    try:
        server.run(sockets=[server_socket])
    finally:
        turns.stop()


def private_folder() -> tempfile.TemporaryDirectory:
    """The server's own temporary folder: its results and Gradio's copies, deleted when it stops."""
    return tempfile.TemporaryDirectory(prefix="corolla-serve-")


def gradio_cache(folder: Path) -> None:
    """Gradio's copies of files in the server's folder (deleted with it)."""
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
