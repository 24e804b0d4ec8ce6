"""The training-run panel: a run folder's loss curves and per-epoch grids, read afresh at each
refresh (training may be writing them). Its files are read through safefile.read_run_file
(regular files of the run only, bounded, no link followed); a grid is copied into the server's
own folder, from which the page shows it, and copied again only when it changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..limits import MAX_GRID_BYTES
from ..storage import runfolder
from ..storage.safefile import FileRefused, read_run_file
from .engine import run_summary


@dataclass(frozen=True)
class RunView:
    status: str
    curves: pd.DataFrame
    grids: tuple[tuple[str, str], ...]  # (path in the server's folder, caption), newest first


class RunPanel:
    def __init__(self, run_dir: Path, folder: Path):
        self.run_dir, self.folder = run_dir, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.copied: dict[str, tuple[int, int]] = {}  # grid name -> (size, mtime_ns) of the copy

    def _copy(self, name: str) -> Path:
        """The run's grid `name`, copied when new or changed."""
        source, copy = self.run_dir / "samples" / name, self.folder / name
        stat = source.lstat()
        if self.copied.get(name) != (stat.st_size, stat.st_mtime_ns) or not copy.is_file():
            copy.write_bytes(read_run_file(self.run_dir, f"samples/{name}", MAX_GRID_BYTES, "a sample grid"))
            self.copied[name] = (stat.st_size, stat.st_mtime_ns)
        return copy

    def view(self) -> RunView:
        try:
            summary = run_summary(self.run_dir, runfolder.SAMPLE_GRID)
            grids = tuple((str(self._copy(name)), f"epoch {int(name[6:-4]):,}") for name in reversed(summary["grids"]))
        except (OSError, FileRefused) as error:
            return RunView(f"the run's files cannot be shown: {error}", pd.DataFrame(), ())
        rows = [(step, loss, "train") for step, loss in summary["train"]]
        rows += [(step, loss, "validation") for step, loss in summary["val"]]
        curves = pd.DataFrame(rows, columns=["step", "loss", "curve"])
        last = max((step for step, _, _ in rows), default=0)
        status = (f"**{summary['run']}**: {len(summary['train'])} train and {len(summary['val'])} validation points "
                  f"(last step {last:,.0f}), {len(grids)} grids")
        return RunView(status, curves, grids)
