"""Photos and masks sent by the page, read exactly as `corolla edit` and `corolla inpaint` read
files: each upload is written into a temporary folder of its own request, decoded there by
corolla.editing (the same checks, crop and resize as the commands), and the folder is deleted.
Nothing a visitor sends is written anywhere else."""
from __future__ import annotations

import base64
import binascii
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .. import editing
from .engine import BadRequest

MAX_PHOTO_BYTES = 8 * 2 ** 20         # one uploaded file, decoded
MAX_UPLOAD_JSON = 3 * MAX_PHOTO_BYTES  # a request: two photos (or a photo and its mask) in base64, and fields
DATA_URL = re.compile(r"data:[\w.+/-]*(;[\w=.+-]+)*;base64,")
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def upload_name(params: dict, key: str) -> str:
    """The file name the page gave, made safe to show and to use inside the temporary folder."""
    name = SAFE_NAME.sub("_", str(params.get(f"{key}_name") or key))[-64:].lstrip(".")
    return name or key


def upload_bytes(params: dict, key: str, what: str) -> bytes:
    """The bytes of a data: URL field, bounded."""
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"choose {what} first")
    match = DATA_URL.match(value)
    if match is None:
        raise BadRequest(f"{what} must be sent as a base64 data: URL")
    if (len(value) - match.end()) * 3 // 4 > MAX_PHOTO_BYTES:
        raise BadRequest(f"{what} is over {MAX_PHOTO_BYTES // 2 ** 20} MiB; at most {MAX_PHOTO_BYTES // 2 ** 20} "
                         f"MiB are accepted")
    try:
        return base64.b64decode(value[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


@contextmanager
def upload_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="corolla-serve-") as folder:
        yield Path(folder)


def _write(params: dict, key: str, what: str, folder: Path) -> Path:
    """The upload as FOLDER/KEY/NAME: one subfolder per field, so two uploads never collide."""
    path = folder / key / upload_name(params, key)
    path.parent.mkdir()
    path.write_bytes(upload_bytes(params, key, what))
    return path


def _decoded(read, path: Path):
    """editing's refusal of a file, naming it as the visitor did, without the temporary folder."""
    try:
        return read()
    except ValueError as error:
        raise BadRequest(str(error).replace(f"{path.parent}/", "")) from None


def load_photo(params: dict, key: str, size: int, folder: Path) -> tuple[torch.Tensor, tuple[int, int]]:
    """-> ((3, size, size) in [0, 1], the photo's (width, height)), as editing.load_photo."""
    path = _write(params, key, "a photo", folder)
    return _decoded(lambda: editing.load_photo(path, size), path)


def load_mask(params: dict, photo_size: tuple[int, int], size: int, folder: Path) -> torch.Tensor:
    """The painted mask (white: fill) -> (1, size, size) bool, as editing.load_mask."""
    path = _write(params, "mask", "a mask (paint over the photo)", folder)
    return _decoded(lambda: editing.load_mask(path, photo_size, size), path)
