"""A run's metrics.jsonl: one JSON record a line, appended, and cut back to a checkpoint's count
when the run resumes."""
from __future__ import annotations

import json
from pathlib import Path

from ..limits import MAX_LOG_BYTES
from . import atomic
from .safefile import read_run_file


def append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def truncate(path: Path, lines: int) -> None:
    """Keep the first `lines` records, those written before the checkpoint we resume from, so the
    curve has no repeats. Only a torn last line (cut by a kill before its newline) is dropped;
    every other line stays byte for byte, even one that is not JSON (a hand edit). Rewritten by
    rename, never torn."""
    try:
        pieces = read_run_file(path.parent, path.name, MAX_LOG_BYTES, "a run's log").split(b"\n")
    except FileNotFoundError:
        return
    if not is_json(pieces[-1]):  # nothing after the last newline, or a torn line
        pieces.pop()
    with atomic.replacing(path) as tmp:
        tmp.write_bytes(b"".join(piece + b"\n" for piece in pieces[:lines]))
