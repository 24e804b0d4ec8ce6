"""What keeps a web page on corolla safe from its clients, apart from any web framework: a loopback
server answers only Host headers that name a loopback address; request bodies are capped in size,
in time and in how many are read at once; JSON too deeply nested is a bad request; an abandoned
job stops at its next network evaluation. Today's Starlette app uses these, and a Gradio page
can use the same.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import threading
from collections.abc import AsyncIterator, Iterator

import torch

BODY_TIMEOUT_S = 30.0  # a whole request body, however slowly it is sent
CLIENT_STALL_S = 30.0  # a job whose client reads none of its events this long is cancelled
MAX_CONNECTIONS = 64   # open at once (uvicorn's limit_concurrency answers 503 beyond)


class Busy(Exception):
    """The server is at one of its limits; the client may try again in a moment (HTTP 503)."""


class Invalid(ValueError):
    """A request the server refuses; its message says what is allowed (HTTP 400)."""


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
    """ASGI middleware: an HTTP request whose Host is not a loopback address gets 400."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback_host(host):
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"this server answers only its loopback address"})
                return
        await self.app(scope, receive, send)


class UploadGate:
    """At most `most` request bodies read at once: a body is held in memory until its job starts,
    so 40 held uploads of 24 MiB would take 1 GB."""

    def __init__(self, most: int):
        self.most = most
        self.taken = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.taken >= self.most:  # one event loop: no lock needed between the test and the increment
            raise Busy(f"the server is receiving {self.most} uploads; try again in a moment")
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1


async def read_body(chunks: AsyncIterator[bytes], limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """A request body of at most `limit` bytes, received within `timeout_s` (a client sending it a
    byte a minute would otherwise hold its upload slot for ever)."""
    async def read() -> bytes:
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise Invalid(f"the request is over {limit:,} bytes; at most {limit:,} are accepted")
        return bytes(body)
    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise Invalid(f"the request was not received within {timeout_s:g} s") from None


def parse_object(body: bytes) -> dict:
    """A JSON object of named values, or Invalid saying why not."""
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("the request is not valid JSON") from None
    except RecursionError:
        raise Invalid("the request's JSON is nested too deeply") from None
    if not isinstance(params, dict):
        raise Invalid("the request must be a JSON object of named values")
    return params


@contextlib.contextmanager
def stops_when(network: torch.nn.Module, cancelled: threading.Event, stop: type[Exception]) -> Iterator[None]:
    """Raise `stop` at the next forward pass of `network` once `cancelled` is set: a job that
    calls the network inside a library function (editing's) stops within a step when its client
    leaves. The caller holds the network alone meanwhile (the engine's lock)."""
    def check(*_):
        if cancelled.is_set():
            raise stop
    hook = network.register_forward_pre_hook(check)
    try:
        yield
    finally:
        hook.remove()
