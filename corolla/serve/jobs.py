"""A job of the page: the engine's work in a thread of its own, followed by an async generator (the
page's handlers are such generators, which Gradio's queue runs and cancels).

The generator yields Progress as the work reports it (the newest only: a page slower than the
model skips previews instead of piling them up or slowing the job down), then Finished. When the
generator is cancelled or closed (the Stop button, a page that went away), the work is cancelled
and ends at its next network evaluation.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..generation import NotFinite
from .engine import Cancelled
from .guards import Invalid, Turns

Work = Callable[[Callable[[int, "torch.Tensor | None"], None], threading.Event], Any]


class Refused(Exception):
    """A job that ended with a message for the page: its request or its model cannot do it."""


@dataclass(frozen=True)
class Progress:
    done: int                       # network evaluations so far
    total: int
    preview: torch.Tensor | None    # the predictions of the last one, in [0, 1]; None for photo jobs
    elapsed_s: float

    def text(self) -> str:
        """"step 5 of 20, about 3 s left" (the rate so far, the steps to go)."""
        done, total = min(self.done, self.total), max(self.total, 1)
        left = self.elapsed_s / max(done, 1) * (total - done)
        return f"step {done} of {total}, about {left:.0f} s left" if done < total else f"step {done} of {total}"


@dataclass(frozen=True)
class Finished:
    result: Any  # the work's, or Refused saying why there is none
    elapsed_s: float


def _settle(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _refusal(error: BaseException) -> BaseException:
    """What the page shows: a bad request or what the model cannot do as it is said; a bug as a
    line naming the log, which has the trace."""
    if isinstance(error, (Invalid, NotFinite, ValueError)):
        return Refused(str(error))
    if isinstance(error, Cancelled):
        return Refused("stopped")
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return Refused(f"internal error ({type(error).__name__}); see the server's log")


async def run(work: Work, total: int, turns: Turns) -> AsyncIterator[Progress | Finished]:
    """work(report, cancelled) in a thread; report(evaluations so far, preview or None)."""
    loop = asyncio.get_running_loop()
    cancelled, woken, started = threading.Event(), asyncio.Event(), time.monotonic()
    outcome: asyncio.Future = loop.create_future()
    newest: list[Progress | None] = [None]

    def call_in_loop(fn, *args) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the server's loop is closed: nobody waits any more
            cancelled.set()

    def report(done: int, preview: torch.Tensor | None = None) -> None:
        newest[0] = Progress(done, total, preview, time.monotonic() - started)
        call_in_loop(woken.set)

    def thread() -> None:
        with turns.running():
            try:
                result = work(report, cancelled)
            except BaseException as raised:  # the result: the page says what it was
                result = _refusal(raised)
            call_in_loop(_settle, outcome, result)

    threading.Thread(target=thread, name="corolla-serve-job", daemon=True).start()
    try:
        while not outcome.done():
            waiter = asyncio.ensure_future(woken.wait())
            await asyncio.wait([waiter, outcome], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            woken.clear()
            progress, newest[0] = newest[0], None
            if progress is not None and not outcome.done():
                yield progress
        yield Finished(outcome.result(), time.monotonic() - started)
    finally:
        cancelled.set()  # stopped, closed or finished: the work ends at its next evaluation
