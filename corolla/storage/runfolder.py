"""A run folder has one writer, and a fresh run never takes over files it did not write.

A training run holds `claim` from start to end: an exclusive flock on RUN/.corolla.lock, which
the kernel releases when the process ends however it ends (so a kill never leaves a stale lock).
A second `train` or `--resume` on the same folder is refused instead of interleaving the log
and deleting the other's checkpoints. Under the lock, a fresh run (no checkpoint to resume)
refuses a folder holding files it would overwrite or delete, unless overwrite is asked for:
the decision comes before anything is deleted.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from . import atomic, checkpoint

LOCK_FILE = ".corolla.lock"
TOP_LEVEL = ("latest", "metrics.jsonl", "grid.png", "loss.png", "best")  # what a run writes in RUN/
SAMPLE_GRID = re.compile(r"epoch_\d{3,}\.png")                          # RUN/samples/
CHECKPOINT = re.compile(r"step-\d+(-\d+)?")                              # RUN/checkpoints/


class RunFolderError(ValueError):
    """A run folder that this run may not write to (in use, or holding another run)."""


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run already in `run_dir`: what a new run would overwrite or delete."""
    found = [run_dir / name for name in TOP_LEVEL if (run_dir / name).exists()]
    for folder, pattern in ((run_dir / "checkpoints", CHECKPOINT), (run_dir / "samples", SAMPLE_GRID)):
        if folder.is_dir():
            found += sorted(entry for entry in folder.iterdir() if pattern.fullmatch(entry.name))
    return found


def _lock(run_dir: Path, create: bool = True) -> tuple[int, bool] | None:
    """(an open descriptor holding the exclusive lock of `run_dir`, whether this call created the
    lock file); None when there is no lock file and not `create`. A RunFolderError naming the
    holder when another process has it."""
    path = run_dir / LOCK_FILE
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    planted = RunFolderError(f"{path} is not a regular file (a FIFO, a folder or a link): corolla's lock is a file "
                             f"it creates; remove it and start again")
    while True:
        created = False
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                return None
            try:
                fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                continue
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR):
                raise planted from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise planted
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            current = os.stat(path, follow_symlinks=False)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunFolderError(f"run folder {str(run_dir)!r} is in use by another corolla process"
                                 f"{f' (pid {holder})' if holder.isdigit() else ''}: one process writes a run at a "
                                 f"time; wait for it to end, or stop it (Ctrl-C writes a checkpoint) and --resume"
                                 ) from None
        except FileNotFoundError:
            current = None
        except BaseException:
            os.close(fd)
            raise
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return fd, created
        os.close(fd)  # a refused claim removed the file we opened (see claim): lock the one there now


def check_free(run_dir: Path) -> None:
    """Refuse now, before reading a run another process is writing (its checkpoints may be
    replaced under the reader); `claim` is what holds the folder."""
    held = _lock(run_dir, create=False) if run_dir.is_dir() else None
    if held is not None:
        os.close(held[0])


def _remove(paths: list[Path], run_dir: Path) -> None:
    """--overwrite: the old run's files, `latest` first so a kill midway leaves nothing to resume.
    best/ goes only when it holds nothing but a checkpoint corolla wrote."""
    for path in sorted(paths, key=lambda p: p.name != "latest"):
        if path == run_dir / "best":
            try:
                checkpoint.check_replaceable(path)
            except checkpoint.OutputError:
                continue  # not ours: kept (and refused later if --keep-best would replace it)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _remove_stale_temporaries(run_dir: Path) -> None:
    """What writes killed in an earlier run left (a figure, a grid, the log being rewritten)."""
    atomic.remove_stale_temporaries(run_dir, {*TOP_LEVEL, "write-test"})
    atomic.remove_stale_temporaries(run_dir / "samples", SAMPLE_GRID.fullmatch)
    atomic.remove_stale_temporaries(run_dir / "checkpoints", CHECKPOINT.fullmatch)


@contextlib.contextmanager
def claim(run_dir: Path, resume: bool, overwrite: bool = False) -> Iterator[None]:
    """Hold `run_dir` for one training run. A fresh start (not resume, or nothing to resume)
    refuses a folder holding another run's files unless `overwrite`, which removes them."""
    fd, created = _lock(run_dir)
    try:
        fresh = not (resume and (run_dir / "latest").exists())
        previous = run_files(run_dir) if fresh else []
        if previous and not overwrite:
            if created:  # refused: the folder is left as it was (still locked while the file goes)
                (run_dir / LOCK_FILE).unlink()
            listed = ", ".join(str(p.relative_to(run_dir)) for p in previous[:4])
            listed += ", ..." if len(previous) > 4 else ""
            start = ("continue it with --resume, or start" if (run_dir / "latest").exists()
                     else "it has no checkpoint to resume; start")
            raise RunFolderError(f"{str(run_dir)!r} already holds a run ({listed}); {start} a new run in it with "
                                 f"--overwrite (which deletes those files), or choose another --out")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message a second writer gets
        _remove(previous, run_dir)
        _remove_stale_temporaries(run_dir)
        yield
    finally:
        os.close(fd)
