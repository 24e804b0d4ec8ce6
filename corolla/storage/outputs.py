"""Where the commands write images and JSON: every path is checked before any work starts.

An output file must be missing or a regular file. A device, a FIFO, a socket or a folder is
refused: corolla publishes a file by renaming a finished temporary over its name, and renaming
over /dev/null (as root) would replace the device itself. A symbolic link is refused too rather
than followed: the rename would replace the link, not write where it points, and following it
would let a planted link send the file anywhere. The file's folder is created and a probe file is
written there, so an unwritable path fails in a moment instead of after minutes of sampling. The
writers (grids, figures) test the path again just before writing, since it may have changed.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..limits import short


def refuse_unless_file(path: Path, what: str) -> None:
    """ValueError unless `path` is missing or a regular file (a link is not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise ValueError(f"{what} {short(str(path))}: a folder above it is a file") from None
    except OSError as error:
        raise ValueError(f"{what} {short(str(path))}: cannot be checked ({error.strerror or error})") from None
    if stat.S_ISREG(mode):
        return
    kind = ("a symbolic link (corolla does not write through links; name the file itself)" if stat.S_ISLNK(mode)
            else "a folder" if stat.S_ISDIR(mode)
            else "a device, FIFO or socket")
    raise ValueError(f"{what} {short(str(path))} is {kind}: an output must be a new or a regular file")


def _probe(folder: Path, what: str) -> None:
    """Create `folder` and write and remove a file there."""
    probe = folder / f".write-test.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb") as f:
            f.write(b"corolla")
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{what} {short(str(folder))}: it or a folder above it is a file") from None
    except OSError as error:
        raise ValueError(f"{what} {short(str(folder))} is not writable ({error.strerror or error})") from None


def check_file(path: str | os.PathLike, what: str = "output") -> Path:
    """The output file `path`, once it is known that it can be written -> Path."""
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"{what} is empty: give a file name")
    path = Path(text)
    refuse_unless_file(path, what)
    _probe(path.parent, f"the folder of {what}")
    return path


def check_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """An output folder (created if missing; a link to a folder is fine) -> Path."""
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"{what} is empty: give a folder name")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {short(text)} is not a folder")
    _probe(path, what)
    return path
