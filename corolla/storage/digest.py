"""The SHA-256 of a file corolla wrote or was given to name (weights, an ONNX export, a photo),
read in blocks; torch-free, so that corolla.portable can use it."""
from __future__ import annotations

import hashlib
import os

BLOCK_BYTES = 2 ** 20


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()
