"""The shipped models: release checkpoints inside the package, chosen by name, usable with no training.

Each is a folder of assets/models/ in the save_pretrained layout (config.json beside
model.safetensors), so it can be published on a model hub as it is and loads with
corolla.load_model like any checkpoint; its card.json says what it was trained on and for how
long, and README.md is its model card.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import Config
from ..diffusion import DiffusionModel
from ..limits import MAX_JSON_BYTES
from . import checkpoint
from .safefile import read_bounded

MODELS = Path(__file__).parent.parent / "assets" / "models"
DEFAULT = "flowers64"
CONDITIONAL = "species64"  # the default of the commands that draw chosen classes
CARD_FILE = "card.json"


def names() -> list[str]:
    """The shipped models of this install, default first."""
    found = sorted(p.name for p in MODELS.iterdir() if (p / checkpoint.CONFIG_FILE).is_file()) \
        if MODELS.is_dir() else []
    return sorted(found, key=lambda name: name != DEFAULT)


def path(name: str | None = None) -> Path:
    """The folder of the shipped model `name` (None: the default); a clear error for any other."""
    name = DEFAULT if name is None else name
    available = names()
    if name not in available:
        listed = ", ".join(available) or "none in this install"
        raise checkpoint.CheckpointError(f"no shipped model named {name!r}; shipped models: {listed}")
    return MODELS / name


def load_pretrained(name: str | None = None, device: str | torch.device = "cpu") -> tuple[DiffusionModel, Config]:
    """A shipped model (default: the default one) -> (model in eval mode, its config)."""
    return checkpoint.load_model(path(name), device)


def describe(name: str) -> dict:
    """What `corolla models` lists: resolution, classes (0: unconditional), data, steps, images
    seen, size on disk."""
    folder = path(name)
    config = checkpoint.load_config(folder)
    card = json.loads(read_bounded(folder / CARD_FILE, MAX_JSON_BYTES)) if (folder / CARD_FILE).is_file() else {}
    return {"name": name, "default": name == DEFAULT, "image_size": config.data.image_size,
            "classes": len(config.unet.classes), "preset": config.preset, "data": card.get("data"),
            "steps": card.get("steps"),
            "images_seen": card.get("images_seen"),
            "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file())}


def export_release(source: str | os.PathLike, out: str | os.PathLike, half: bool = True) -> Path:
    """Write the EMA weights (float16 when `half`; the normaliser stays float32) and the config of
    a checkpoint or run folder as a release checkpoint in `out`, never over the source or a
    folder holding it (save_pretrained replaces only a checkpoint folder it wrote)."""
    source_folder, target = checkpoint.resolve(source).resolve(), Path(out).resolve()
    if target == source_folder or target in source_folder.parents:
        raise checkpoint.OutputError(f"--out {str(out)!r} is the checkpoint being exported or a folder holding it; "
                                     f"choose a folder outside {source_folder}")
    if (target / checkpoint.TRAINING_FILE).exists():  # corolla wrote it, but its run could no longer resume
        raise checkpoint.OutputError(f"--out {str(out)!r} is a training checkpoint "
                                     f"(it holds {checkpoint.TRAINING_FILE}); "
                                     f"a release over it would end its run's --resume: choose another folder")
    model, config = checkpoint.load_model(source)
    return checkpoint.save_pretrained(out, model, config, ema_only=True,
                                      dtype=torch.float16 if half else None)
