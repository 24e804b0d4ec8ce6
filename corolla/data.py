"""Image folders -> a cached uint8 tensor (N, 3, S, S), its statistics and the epoch order.

Decoding is the slow part of a small data set, so a folder is decoded once and cached (as
safetensors, keyed by the files' names, sizes and times and the image size); later epochs and
runs read the cache. Broken files are skipped and named once.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_IMAGE_PIXELS = 64_000_000  # decompression bombs above this are refused, not decoded
BUNDLED = Path(__file__).parent / "assets" / "flowers"

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class DataError(ValueError):
    """A folder that cannot give training images."""


def bundled_dir() -> Path:
    """The 295 bundled Oxford 102 Flowers images at 64x64."""
    return BUNDLED


def scan(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders are skipped and
    folder symlinks are not followed (so a symlink loop cannot hang the scan)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist or is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(path)
    return sorted(found)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: EXIF rotation applied, first frame of an animation, transparency
    composited on black, 16-bit and float modes rescaled to 8 bits."""
    image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * (255.0 if array.max() <= 1 else 1.0) + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def resize(array: np.ndarray, size: int, crop: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) uint8 by bilinear interpolation without antialiasing,
    as TensorFlow's resize in image_dataset_from_directory. crop=True cuts the central square
    first instead of squashing the whole image."""
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().unsqueeze(0)
    if crop:
        h, w = x.shape[2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, :, top:top + side, left:left + side]
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round().clamp(0, 255).to(torch.uint8)[0]


def load_image(path: Path, size: int, crop: bool = False) -> torch.Tensor:
    """Decode one file -> (3, size, size) uint8; raises on anything that is not a usable image."""
    with Image.open(path) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"declared size {image.width}x{image.height} is over {MAX_IMAGE_PIXELS} pixels")
        rgb = to_rgb(image)
        rgb.load()
        return resize(np.array(rgb), size, crop)


def _cache_key(files: list[Path], size: int, crop: bool) -> str:
    h = hashlib.sha256(f"v1|{size}|{crop}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("COROLLA_CACHE_DIR", Path.home() / ".cache" / "corolla"))


def load_folder(folder: str | os.PathLike, size: int, crop: bool = False, use_cache: bool = True,
                ) -> tuple[torch.Tensor, list[str]]:
    """All usable images of a folder -> ((N, 3, size, size) uint8, their relative paths).

    Files that fail to decode are skipped and named in one warning."""
    root = Path(folder)
    files = scan(root)
    key = _cache_key(files, size, crop)
    cached = cache_dir() / f"{key}.safetensors"
    if use_cache and cached.is_file():
        try:
            images = load_file(cached)["images"]
            names = json.loads((cached.with_suffix(".json")).read_text())
            if len(names) == images.shape[0]:
                return images, names
        except Exception:
            pass  # an unreadable cache is rebuilt from the images
    images, names, skipped = [], [], []
    for f in files:
        try:
            images.append(load_image(f, size, crop))
            names.append(str(f.relative_to(root)))
        except Exception as error:  # any decoder failure means: not a usable image
            skipped.append(f"{f.relative_to(root)} ({type(error).__name__})")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}", stacklevel=2)
    if not images:
        raise DataError(f"no usable image in {str(root)!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    stacked = torch.stack(images)
    if use_cache:
        _write_cache(cached, stacked, names)
    return stacked, names


def _write_cache(path: Path, images: torch.Tensor, names: list[str]) -> None:
    """Best effort: a read-only or full cache folder only costs decoding again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"images": images.contiguous()}, str(tmp))
        path.with_suffix(".json").write_text(json.dumps(names))
        os.replace(tmp, path)
    except OSError:
        pass


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) variance of uint8 images scaled to [0, 1], as Keras'
    Normalization.adapt computes them -> two (C,) float32 tensors."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    variance = x.var(dim=(0, 2, 3), unbiased=False)
    return mean.float(), variance.float()


@dataclass
class Split:
    train: torch.Tensor  # (N_train, 3, S, S) uint8
    val: torch.Tensor    # (N_val, 3, S, S) uint8, may be empty


def split(images: torch.Tensor, val_fraction: float, seed: int = 42) -> Split:
    """Shuffle with `seed` (the reference's seed 42) and hold out the last val_fraction."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(images.shape[0]))
    n_val = int(round(images.shape[0] * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= images.shape[0]:
        raise DataError(f"{images.shape[0]} image(s) cannot be split into training and validation; "
                        f"use more images or --val-fraction 0")
    shuffled = images[order]
    return Split(train=shuffled[:images.shape[0] - n_val], val=shuffled[images.shape[0] - n_val:])


def epoch_order(n: int, repetitions: int, seed: int, epoch: int) -> torch.Tensor:
    """The image indices of one epoch: `repetitions` independent shuffles back to back (the
    reference's shuffle-then-repeat), from a generator seeded by (seed, epoch) so a resumed run
    sees the same order."""
    rng = np.random.default_rng([seed, epoch])
    return torch.from_numpy(np.concatenate([rng.permutation(n) for _ in range(repetitions)]))


def batches_per_epoch(n: int, repetitions: int, batch_size: int) -> int:
    """Full batches only: the reference drops the last incomplete batch."""
    return (n * repetitions) // batch_size
