"""Experiment trackers for `corolla train --log tensorboard|wandb`, behind one small interface.

The training loop hands every metrics.jsonl record and every per-epoch grid to a `Reporter`,
which forwards them to the trackers asked for. Both trackers are optional dependencies, so each
is imported only when asked for, and asking for one that is not installed is a one-line error
naming the pip command. A tracker that fails mid-run becomes a warning: the checkpoints and
metrics.jsonl matter more than a dashboard.
"""
from __future__ import annotations

import importlib.util
import json
import math
import netrc
import os
import secrets
import socket
import warnings
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch

from .storage import outputs
from .storage.grids import grid_array
from .storage.safefile import read_run_file

CHOICES = ("tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the module it needs
# metrics.jsonl keys -> tracker tags (loss curves side by side in one section)
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "images_per_s": "speed/images_per_s"}


def check(names: Sequence[str], run_dir: Path | None = None) -> None:
    """Refuse unknown or uninstalled trackers, and a tracker folder (RUN/NAME) that cannot be
    written, before any work: the writers would fail later, in threads of their own."""
    for name in names:
        if name not in CHOICES:
            raise ValueError(f"--log {name}: unknown tracker; choose {' or '.join(CHOICES)}")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ValueError(f"--log {name} needs the {PACKAGES[name]} package: pip install 'corolla[{name}]'")
        if run_dir is not None:
            outputs.check_folder(run_dir / name, f"--log {name}: its folder")


def scalars(record: dict, lr: float, ema_decay: float) -> dict[str, float]:
    """A metrics.jsonl record -> {tag: value}, finite numbers only. The learning rate and the EMA
    decay go with the train-loss records (every LOG_EVERY steps), so no step gets them twice."""
    out = {TAGS.get(key, f"eval/{key[5:]}" if key.startswith("eval_") else None): value
           for key, value in record.items()}
    if "train_loss" in record:
        out.update({"optimizer/lr": lr, "optimizer/ema_decay": ema_decay})
    return {tag: float(value) for tag, value in out.items()
            if tag and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class TensorBoard:
    """Event files in RUN/tensorboard. A resumed run first purges what the stopped run wrote after
    its checkpoint (TensorBoard's purge_step), so the curve has no repeated steps; a fresh run
    purges everything, so a folder's leftover events never show."""

    def __init__(self, run_dir: Path, config, purge_from: int):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_from)
        if purge_from == 0:
            self.writer.add_text("config", f"```\n{json.dumps(config.to_dict(), indent=1)}\n```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, pixels, step: int) -> None:
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _wandb_mode() -> str | None:
    """None when WANDB_MODE chooses; else "online" with an API key and a reachable server,
    "offline" otherwise (a login prompt or a 90-second time-out would stall training)."""
    if os.environ.get("WANDB_MODE"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc().authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            pass
    if not has_key:
        return "offline"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return "offline"
    return "online"


class WandB:
    """A W&B run in RUN/wandb, offline when there is no key or no network (`wandb sync` uploads
    it later). The run's id is kept in RUN/wandb/corolla-run-id, so a resumed training continues
    the same W&B run; W&B keeps the first value logged at a step."""

    def __init__(self, run_dir: Path, config, purge_from: int):
        import wandb
        folder = run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "corolla-run-id"
        resumed = purge_from > 0 and id_file.is_file()
        run_id = (read_run_file(run_dir, "wandb/corolla-run-id", 256, "a W&B run id").decode(errors="replace").strip()
                  if resumed else secrets.token_hex(4))
        id_file.write_text(run_id + "\n")
        mode = _wandb_mode()
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "corolla"), name=run_dir.name, id=run_id,
                                  resume="allow", dir=str(run_dir), config=config.to_dict(), mode=mode,
                                  settings=wandb.Settings(console="off", silent=True))
        except Exception as error:  # wandb raises its own types for a bad key, a refused project, ...
            raise ValueError(f"--log wandb could not start a W&B run: {error}".replace("\n", " ")) from None
        if self.run.settings.mode == "offline":
            print(f"corolla: W&B logs offline to {folder} (no API key or no network); "
                  f"upload with: wandb sync {folder}/offline-run-*")
        self.wandb = wandb

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, pixels, step: int) -> None:
        self.run.log({tag: self.wandb.Image(pixels)}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB}


class Reporter:
    """Forwards records and grids to the trackers; a context manager that closes them."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def _each(self, call) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as error:  # a dashboard must not stop training
                warnings.warn(f"{type(tracker).__name__} logging failed and is turned off: {error}", stacklevel=2)
                self.trackers.remove(tracker)

    def record(self, record: dict, lr: float, ema_decay: float) -> None:
        values = scalars(record, lr, ema_decay)
        if values:
            self._each(lambda t: t.scalars(record["step"], values))

    def grid(self, images: torch.Tensor, step: int) -> None:
        if self.trackers:
            pixels = grid_array(images)
            self._each(lambda t: t.image("samples", pixels, step))

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        self._each(lambda t: t.close())


def start(names: Sequence[str], run_dir: Path, config, resumed_step: int | None) -> Reporter:
    """Open the trackers for a run; resumed_step: the step of the checkpoint resumed from (None for
    a fresh run). Events after that step came from the stopped run and are replaced."""
    check(names)
    purge_from = 0 if resumed_step is None else resumed_step + 1
    return Reporter([TRACKERS[name](run_dir, config, purge_from) for name in dict.fromkeys(names)])
