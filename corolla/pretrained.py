"""The shipped flower model: a release checkpoint inside the package, usable with no training.

A release holds what sampling needs (EMA weights, the normaliser, the config) in the
save_pretrained layout (config.json beside model.safetensors), so it can be published on a model
hub as it is, and loads with corolla.load_model like any checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import checkpoint
from .diffusion import DiffusionModel
from .config import Config

RELEASE = Path(__file__).parent / "assets" / "pretrained"


def path() -> Path:
    """The folder of the shipped model; a clear error if this install has none."""
    if not (RELEASE / checkpoint.CONFIG_FILE).is_file():
        raise checkpoint.CheckpointError(f"no shipped model in this install ({RELEASE}); give a checkpoint path")
    return RELEASE


def load_pretrained(device: str | torch.device = "cpu") -> tuple[DiffusionModel, Config]:
    """The shipped flower model -> (model in eval mode, its config)."""
    return checkpoint.load_model(path(), device)


def export_release(source: str | os.PathLike, out: str | os.PathLike, half: bool = True) -> Path:
    """Write the EMA weights (float16 when `half`; the normaliser stays float32) and the config of
    a checkpoint or run folder as a release checkpoint in `out`."""
    model, config = checkpoint.load_model(source)
    return checkpoint.save_pretrained(out, model, config, ema_only=True,
                                      dtype=torch.float16 if half else None)
