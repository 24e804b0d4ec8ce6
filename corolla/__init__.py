"""corolla: train denoising diffusion models on a folder of images and sample from them.

The names below are imported on first use (PEP 562), so `import corolla.portable.sampling` needs
neither torch nor the training code, and the command's first lines run before torch loads."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and the API docs
    from . import cascade, samplers, schedules  # noqa: F401
    from .config import Config, DataConfig, SamplingConfig, TrainConfig, preset  # noqa: F401
    from .diffusion import DiffusionModel, Normalizer  # noqa: F401
    from .generation import generate  # noqa: F401
    from .samplers import SamplingSettings  # noqa: F401
    from .storage.checkpoint import load_model, save_pretrained  # noqa: F401
    from .storage.pretrained import load_pretrained  # noqa: F401
    from .training import train  # noqa: F401
    from .unet import UNet, UNetConfig  # noqa: F401

# name -> the module that defines it (a module's own name for the three submodules)
_PUBLIC = {
    "schedules": ".schedules", "samplers": ".samplers", "cascade": ".cascade",
    "Config": ".config", "DataConfig": ".config", "TrainConfig": ".config", "SamplingConfig": ".config",
    "preset": ".config",
    "DiffusionModel": ".diffusion", "Normalizer": ".diffusion",
    "generate": ".generation", "SamplingSettings": ".samplers",
    "load_model": ".storage.checkpoint", "save_pretrained": ".storage.checkpoint",
    "load_pretrained": ".storage.pretrained",
    "train": ".training",
    "UNet": ".unet", "UNetConfig": ".unet",
}
__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'corolla' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name], __name__)
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
