"""What keeps the page's server safe and fair, apart from the web framework: a loopback server
answers only Host headers that name a loopback address (DNS rebinding); the model is evaluated by
one job at a time, a network evaluation each (Turns), so that jobs advance side by side; a job
that was stopped, or whose server is stopping, ends at its next evaluation.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from collections.abc import Callable, Iterator

import torch

MAX_CONNECTIONS = 64   # open at once (uvicorn's limit_concurrency answers 503 beyond)


class Invalid(ValueError):
    """A request the server refuses; its message says what is allowed."""


def is_loopback_host(header: str) -> bool:
    """Whether a Host header (or --host) names this machine by a loopback address or `localhost`,
    with or without a port: a DNS-rebinding page's Host names the attacker's domain instead."""
    host = header.strip()
    if host.startswith("["):  # [::1]:7860
        host = host[1:host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """ASGI middleware: an HTTP or WebSocket request whose Host is not a loopback address gets 400."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback_host(host):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"this server answers only its loopback address"})
                return
        await self.app(scope, receive, send)


class EndsStreamsOnStop:
    """ASGI middleware: once `stopped` is set (the server has begun to stop), every open request
    reads a disconnect, so that Gradio's streams (a job's events, the page's heartbeat) end as if
    the page had gone, and the server stops at once, instead of cancelling them after its grace
    period with a traceback each."""

    def __init__(self, app, stopped: asyncio.Event):
        self.app, self.stopped = app, stopped

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def receive_or_stop():
            if self.stopped.is_set():
                return {"type": "http.disconnect"}
            received, stopping = asyncio.ensure_future(receive()), asyncio.ensure_future(self.stopped.wait())
            try:
                await asyncio.wait({received, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when cancelled (Starlette's is_disconnected polls so): no message is left behind
                stopping.cancel()
                if not received.done():
                    received.cancel()
            if received.done() and not received.cancelled():
                return received.result()
            return {"type": "http.disconnect"}
        await self.app(scope, receive_or_stop, send)


class Turns:
    """The server's network evaluations, one at a time whichever job and model they belong to, and
    its stop.

    Sampling jobs hold `lock` around each evaluation (generation's guard). Photo jobs call
    corolla.editing, which evaluates the network inside: within `job(...)`, every forward pass of
    a watched network made by that thread takes the lock for itself alone, counts, and first
    raises `stop` once the job is cancelled or the server is `stopping`. Other threads' passes are
    left alone, so a cancelled photo job never stops another job."""

    def __init__(self):
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self._local = threading.local()
        self._watched: set[int] = set()
        self._running = 0
        self._idle = threading.Condition()

    def watch(self, network: torch.nn.Module) -> None:
        """Hook `network` once (every Engine of the server calls it for its model)."""
        if id(network) in self._watched:
            return
        self._watched.add(id(network))
        network.register_forward_pre_hook(self._before)
        network.register_forward_hook(self._after, always_call=True)  # also when the pass raised

    @contextlib.contextmanager
    def job(self, cancelled: threading.Event, stop: type[Exception],
            on_evaluation: Callable[[int], None] | None = None) -> Iterator[None]:
        """This thread's forward passes within: one at a time, counted by on_evaluation(done)."""
        self._local.job = (cancelled, stop, on_evaluation or (lambda done: None))
        self._local.held, self._local.done = 0, 0
        try:
            yield
        finally:
            self._local.job = None

    def _before(self, module, args) -> None:
        job = getattr(self._local, "job", None)
        if job is None:
            return
        cancelled, stop, _ = job
        if cancelled.is_set() or self.stopping.is_set():
            raise stop
        self.lock.acquire()
        self._local.held += 1

    def _after(self, module, args, output) -> None:
        job = getattr(self._local, "job", None)
        if job is None or not self._local.held:
            return
        self._local.held -= 1
        self.lock.release()
        if output is not None:  # None: the pass raised
            self._local.done += 1
            job[2](self._local.done)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around a job's thread: stop() waits for it."""
        with self._idle:
            self._running += 1
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def idle(self, timeout_s: float) -> bool:
        """Wait until no job runs -> whether none does."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout_s)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop every job at its next evaluation and wait until none runs -> whether none does."""
        self.stopping.set()
        return self.idle(timeout_s)
