"""Image tensors -> PNG files: grids and one file per image (Pillow, no torchvision), each
carrying its recipe when one is given (storage/recipe.py)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import remove_stale_temporaries, replacing
from .outputs import refuse_unless_file
from .recipe import Recipe


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8, rounding to nearest. NaN would become
    black pixels in silence, so non-finite values are an error (a checkpoint that diverges)."""
    if not torch.isfinite(images).all():
        raise ValueError("the images hold NaN or infinite values (the model's weights make the network "
                         "diverge); they are not written")
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid_array(images: torch.Tensor, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 array on white."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = pixels[i]
    return out


def split_grid(array: np.ndarray, count: int, side: int, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """grid_array's inverse: a (rows*(side+pad)+pad, cols*(side+pad)+pad, C) array -> its first
    `count` tiles as (count, side, side, C); a grid of another layout is a ValueError."""
    ncol = ncol or math.ceil(math.sqrt(count))
    nrow = math.ceil(count / ncol)
    if array.shape[:2] != (nrow * (side + pad) + pad, ncol * (side + pad) + pad):
        raise ValueError(f"a grid of {array.shape[1]}x{array.shape[0]} pixels is not {count} images of "
                         f"{side} px in {ncol} columns")
    return np.stack([array[pad + r * (side + pad): pad + r * (side + pad) + side,
                           pad + q * (side + pad): pad + q * (side + pad) + side]
                     for r, q in (divmod(i, ncol) for i in range(count))])


def _save_png(array: np.ndarray, path: Path, clean: bool = True, recipe: Recipe | None = None) -> None:
    """Write via a temporary file and rename, so an existing PNG is never left half-written."""
    refuse_unless_file(path, "image")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, clean) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", pnginfo=recipe.pnginfo() if recipe else None)


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncol: int | None = None,
              recipe: Recipe | None = None) -> Path:
    """recipe: the grid's (every image of it), written into the PNG."""
    path = Path(path)
    _save_png(grid_array(images, ncol), path, recipe=recipe)
    return path


def save_image(image: torch.Tensor, path: str | os.PathLike, recipe: Recipe | None = None) -> Path:
    """One image (C, H, W) in [0, 1] as a PNG of its own size (no grid's border)."""
    path = Path(path)
    _save_png(to_uint8(image[None])[0], path, recipe=recipe)
    return path


def save_each(images: torch.Tensor, folder: str | os.PathLike, start: int = 0, prefix: str | Sequence[str] = "",
              recipe: Recipe | None = None) -> list[Path]:
    """One PNG per image, named by the image's index (so images from -n 8 and -n 64 line up) after
    `prefix`, or after its own of a sequence of prefixes (one per image). recipe: the batch's, from
    its image 0; image i's PNG gets recipe.image(start + i)."""
    folder = Path(folder)
    prefixes = [prefix] * len(images) if isinstance(prefix, str) else list(prefix)
    remove_stale_temporaries(folder, lambda name: name.startswith(tuple(set(prefixes)))  # once
                             and name.endswith(".png"))
    paths = []
    for i, pixels in enumerate(to_uint8(images)):
        path = folder / f"{prefixes[i]}{start + i:05d}.png"
        _save_png(pixels, path, clean=False, recipe=recipe.image(start + i) if recipe else None)
        paths.append(path)
    return paths
