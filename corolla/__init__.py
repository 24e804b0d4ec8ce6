"""corolla: train denoising diffusion models on a folder of images and sample from them."""
from . import samplers, schedules
from .config import Config, DataConfig, TrainConfig, preset
from .diffusion import DiffusionModel, Normalizer
from .generation import generate
from .storage.checkpoint import load_model, save_pretrained
from .storage.pretrained import load_pretrained
from .training import train
from .unet import UNet, UNetConfig

__all__ = ["schedules", "samplers", "load_model", "save_pretrained", "Config", "DataConfig", "TrainConfig",
           "preset", "DiffusionModel", "Normalizer", "generate", "load_pretrained", "train", "UNet", "UNetConfig"]
__version__ = "0.1.0"
