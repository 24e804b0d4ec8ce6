"""The one guarded way corolla reads a file it did not just write: a checkpoint's files, a run's
log and grids, a labels file, the data cache. Regular files only (a FIFO would hang the reader,
/dev/zero would never end), opened without blocking; no link followed inside a run folder, whose
files corolla wrote itself; sizes bounded per kind of file before anything is allocated (the
bounds are in corolla.limits); SHA-256 checked where one is recorded; a safetensors header
checked by the caller before its tensors are read.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from ..limits import short


class FileRefused(ValueError):
    """A file corolla will not read: not a regular file, a link where none belongs, or larger than
    its kind of file may be."""


class CheckpointError(ValueError):
    """A path that does not hold a usable corolla checkpoint."""


def open_regular(path: Path, follow_links: bool = True, error: type[ValueError] = FileRefused):
    """A binary file object of `path`, refused (`error`) unless it is a regular file. Opened
    without blocking, so a FIFO cannot hang the command; a device is refused before it is read;
    not following links, a link is an OSError (ELOOP) the callers name."""
    extra = os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    f = open(path, "rb", opener=lambda name, flags: os.open(name, flags | extra))  # f.name: the path, for messages
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise error(f"{path} is not a regular file (a FIFO, device or folder is never read)")
    return f


def read_bounded(path: Path, limit: int, follow_links: bool = True, kind: str = "a checkpoint's",
                 error: type[ValueError] = FileRefused) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a 20 GB sparse file is refused from
    its size, not read); `kind` names the file in the refusal."""
    with open_regular(path, follow_links, error) as f:
        size = os.fstat(f.fileno()).st_size
        payload = f.read(limit + 1)
    if max(size, len(payload)) > limit:
        raise error(f"{path} is {max(size, len(payload)):,} bytes; {kind} is at most {limit:,}")
    return payload


def read_run_file(run_dir: Path, relative: str, limit: int, kind: str) -> bytes:
    """A file corolla wrote into a run folder (its log, a grid), read by read_bounded without
    following a link anywhere below run_dir: a planted link or linked folder would choose what is
    read (another run's files, /etc/shadow through the web page). A missing file is
    FileNotFoundError."""
    path = run_dir / relative
    for folder in list(path.relative_to(run_dir).parents)[:-1]:
        if (run_dir / folder).is_symlink():
            raise FileRefused(f"{run_dir / folder} is a symbolic link; a run's own folders are never followed")
    try:
        return read_bounded(path, limit, follow_links=False, kind=kind)
    except OSError as failure:
        if failure.errno == errno.ELOOP:
            raise FileRefused(f"{path} is a symbolic link; a run's own files are never followed") from None
        raise


def read_verified(path: Path, sha256: str | None, limit: int) -> bytes:
    """The bytes of a checkpoint file of at most `limit` bytes, checked against its SHA-256 when
    one is recorded."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        payload = read_bounded(path, limit, error=CheckpointError)
    except OSError as error:
        raise CheckpointError(f"{path}: not readable ({error.strerror or error})") from None
    if sha256 is not None and hashlib.sha256(payload).hexdigest() != sha256:
        raise CheckpointError(f"{path}: contents do not match the SHA-256 recorded in config.json "
                              f"(the file is truncated, corrupted or from another checkpoint)")
    return payload


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 2 ** 24
HeaderCheck = Callable[[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]], None]


def _invalid(path: Path, sha256: str | None, reason: str) -> CheckpointError:
    if sha256 is not None:  # corolla wrote a valid file with that checksum: this is not it
        return CheckpointError(f"{path}: contents do not match the SHA-256 recorded in config.json "
                               f"(the file is truncated, corrupted or from another checkpoint)")
    return CheckpointError(f"{path}: not a valid safetensors file ({reason})")


def read_header(path: Path, sha256: str | None, most_header: int = MAX_HEADER_BYTES
                ) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str], int]:
    """The safetensors header alone, of at most `most_header` bytes -> ({name: (dtype, shape)},
    metadata, bytes the file may have)."""
    try:
        with open_regular(path, error=CheckpointError) as f:
            size = os.fstat(f.fileno()).st_size
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > min(most_header, size - 8):
                raise ValueError(f"a header of {header_size:,} bytes")
            header = json.loads(f.read(header_size))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as error:
        raise CheckpointError(f"{path}: not readable ({error.strerror or error})") from None
    except (struct.error, ValueError, RecursionError) as error:
        raise _invalid(path, sha256, str(error)[:100]) from None
    if not isinstance(header, dict):
        raise _invalid(path, sha256, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors, data_bytes = {}, 0
    for name, entry in header.items():
        try:
            dtype, shape = entry["dtype"], tuple(entry["shape"])
            if dtype not in DTYPE_BYTES or not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise _invalid(path, sha256, f"bad header entry {short(name)}") from None
        tensors[name] = (dtype, shape)
        data_bytes += math.prod(shape) * DTYPE_BYTES[dtype]
    if not isinstance(metadata, dict):
        raise _invalid(path, sha256, "its metadata is not a JSON object")
    return tensors, metadata, 8 + header_size + data_bytes


def read_tensors(path: Path, sha256: str | None, check: HeaderCheck, most_header: int = MAX_HEADER_BYTES
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors, metadata) of a safetensors file. Its header is read first and `check`ed (the
    names and shapes against what the config needs), so the file is read whole only once its
    size is known to be what those shapes take; then its SHA-256 is checked, when recorded."""
    header, metadata, most = read_header(path, sha256, most_header)
    check(header, metadata)
    if path.stat().st_size > most:
        raise _invalid(path, sha256, f"{path.stat().st_size:,} bytes where its tensors take {most:,}")
    payload = read_verified(path, sha256, most)
    try:
        return load_safetensors(payload), metadata
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(error).splitlines()[0]})") from None
