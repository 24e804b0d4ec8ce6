"""Files published by rename, and the temporaries an interrupted write leaves behind.

Everything corolla writes (checkpoints, PNGs, GIFs, caches, rewritten logs) is written as
`.NAME.tmp-PID` beside its final name and renamed over it, so a reader never sees half a file.
A failure Python sees (a full disk, Ctrl-C, SIGTERM) removes the temporary at once. One it
cannot see (SIGKILL, power loss) leaves it behind; the next write of the same name, or the next
run in the same run folder or cache, removes the temporaries whose process is no longer running.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

TEMPORARY = re.compile(r"^\.(.+)\.(tmp|old)-(\d+)$")  # .NAME.tmp-PID and .NAME.old-PID


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are stale: this process is not writing them now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, names: Collection[str] | Callable[[str], bool] | None = None
                             ) -> list[Path]:
    """Delete the .NAME.tmp-PID / .NAME.old-PID entries of processes no longer running, for the
    given NAMEs only (a collection, or a test of the name; None: all) -> what was removed.

    An .old entry whose NAME is missing is the only complete copy left by a kill between the two
    renames of replacing a folder: it is renamed back instead of deleted."""
    wanted = names if callable(names) else (lambda name: names is None or name in names)
    try:
        with os.scandir(folder) as entries:  # cheap for big folders: names only, hidden ones kept
            hidden = sorted(entry.name for entry in entries if entry.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in hidden:
        match = TEMPORARY.match(name)
        if not match or not wanted(match.group(1)) or _pid_alive(int(match.group(3))):
            continue
        entry, target = folder / name, folder / match.group(1)
        if match.group(2) == "old" and not target.exists():
            os.replace(entry, target)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def replacing(path: str | os.PathLike, clean: bool = True) -> Iterator[Path]:
    """`with replacing(path) as tmp:` write tmp; it is renamed over `path` when the block ends,
    and removed if the block fails or is interrupted. The folder must exist. clean=False: the
    caller removed the stale temporaries itself (once for many files, not once per file)."""
    path = Path(path)
    if clean:
        remove_stale_temporaries(path.parent, {path.name})
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
