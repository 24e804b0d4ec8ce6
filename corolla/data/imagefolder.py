"""Image folders -> a cached uint8 tensor (N, 3, S, S), its statistics and the epoch order.

Decoding is the slow part of a small data set, so a folder is decoded once and cached (as
safetensors, keyed by the files' names, sizes and times and the image size); later epochs and
runs read the cache. Broken files are skipped and named in one warning on every load, cached or
not. Hidden files and folders (".name", e.g. macOS "._x.jpg" resource forks) are ignored.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import save as save_safetensors

from ..storage import atomic, safefile

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Images declaring more pixels are refused from their header, before decoding: this bounds the
# memory of one decode (measured: 1.2 GB at the limit, mostly resize()'s float copy).
MAX_IMAGE_PIXELS = 64_000_000
BUNDLED = Path(__file__).parent.parent / "assets" / "flowers"
CACHE_VERSION = 2  # bump when decoding changes, so old caches are not served


class DataError(ValueError):
    """A folder that cannot give training images."""


def bundled_dir() -> Path:
    """The 295 bundled Oxford 102 Flowers images at 64x64."""
    return BUNDLED


def is_run_folder(folder: Path) -> bool:
    """A corolla run folder: a `latest` pointer beside checkpoints/ (see corolla.storage.checkpoint)."""
    return (folder / "latest").is_file() and (folder / "checkpoints").is_dir()


def scan(folder: str | os.PathLike) -> list[Path]:
    """Entries with an image extension under `folder`, recursively, sorted. Hidden files and
    folders are ignored; folder symlinks are not followed (so a symlink loop cannot hang the
    scan). Entries that are not regular files (broken or looping links, FIFOs) are kept here so
    that load_folder names them as skipped instead of dropping them silently. corolla's run
    folders are skipped: their grids are not training images."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist or is not a folder")
    if is_run_folder(root):
        raise DataError(f"data folder {str(root)!r} is a corolla run folder (it holds 'latest' and checkpoints/), "
                        f"not images: give the folder of images it was trained on")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not is_run_folder(Path(dirpath) / d))
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
    return sorted(found)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: EXIF rotation applied, first frame of an animation, transparency
    composited on black, 16-bit and float modes rescaled to 8 bits."""
    image.seek(0)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: the pixels are still good, keep them unrotated
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        # I;16 modes are 16-bit by definition; 32-bit "I" holds 8- or 16-bit data, judged by range
        high = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0
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


def decode_image(path: Path) -> np.ndarray:
    """Decode one file at its own size -> (H, W, 3) uint8 RGB; raises on anything that is not a
    usable image.

    The size check reads only the header, so a decompression bomb is refused before decoding;
    PIL's own bomb warning is raised as an error instead of printed. Only regular files are
    opened: opening a FIFO or a device could block forever."""
    try:
        file = safefile.open_regular(path)
    except safefile.FileRefused:
        raise ValueError("not a regular file") from None  # the skip warning names the path
    with file, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
        except UnidentifiedImageError:  # PIL names the file object; the path reads better
            raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"declared size {image.width}x{image.height} is over {MAX_IMAGE_PIXELS} pixels")
            return np.array(to_rgb(image))


def load_image(path: Path, size: int, crop: bool = False) -> torch.Tensor:
    """Decode one file -> (3, size, size) uint8 (decode_image, then resize)."""
    return resize(decode_image(path), size, crop)  # after the decoded image is freed: less memory at the peak


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError:  # a broken or looping link: its own times stand in
        return path.lstat()


def _cache_key(files: list[Path], size: int, crop: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{crop}".encode())
    for f in files:
        st = _stat(f)
        h.update(f"|{os.path.realpath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def identity(folder: str | os.PathLike, size: int, crop: bool = False) -> dict:
    """What a run records of its data, to know it again on resume: the number of image files, a
    key of their names (relative to the folder) and sizes, and the cache key (which also covers
    where the files are and when they were modified)."""
    root = Path(folder)
    files = scan(root)
    names = hashlib.sha256()
    for f in files:
        names.update(f"|{f.relative_to(root)}|{_stat(f).st_size}".encode())
    return {"files": len(files), "names_key": names.hexdigest()[:24], "cache_key": _cache_key(files, size, crop)}


def check_same_data(recorded: dict | None, current: dict, folder: str | os.PathLike) -> None:
    """Resuming on other data would train on other images with another validation split: refused.
    Files only moved, copied or touched (same names and sizes) are the same data: a warning."""
    if not isinstance(recorded, dict):
        return  # a run from before identities were recorded
    if recorded.get("files") != current["files"] or recorded.get("names_key") != current["names_key"]:
        change = (f"{recorded.get('files')} image files when the run started, {current['files']} now"
                  if recorded.get("files") != current["files"] else
                  "as many image files as when the run started, but renamed, replaced or resized")
        raise DataError(f"data folder {str(folder)!r} is not the data this run was trained on ({change}); resuming "
                        f"would train on other images with another validation split: give the run's data, or "
                        f"start a new run (another --out, or --overwrite)")
    if recorded.get("cache_key") != current["cache_key"]:
        warnings.warn(f"the image files of {str(folder)!r} were moved, copied or touched since the run started "
                      f"(same names and sizes); resuming with them", stacklevel=2)


def cache_dir() -> Path:
    return Path(os.environ.get("COROLLA_CACHE_DIR", Path.home() / ".cache" / "corolla"))


def load_folder(folder: str | os.PathLike, size: int, crop: bool = False, use_cache: bool = True,
                ) -> tuple[torch.Tensor, list[str]]:
    """All usable images of a folder -> ((N, 3, size, size) uint8, their relative paths).

    Files that fail to decode are skipped and named in one warning (also when read from the cache)."""
    root = Path(folder)
    files = scan(root)
    key = _cache_key(files, size, crop)
    cached = cache_dir() / f"{key}.safetensors"
    hit = _read_images_cache(cached, size, len(files)) if use_cache else None
    if hit is not None:
        stacked, names, skipped = hit
    else:
        images, names, skipped = [], [], []
        for f in files:
            try:
                images.append(load_image(f, size, crop))
                names.append(str(f.relative_to(root)))
            except Exception as error:  # any decoder failure means: not a usable image
                skipped.append(f"{f.relative_to(root)} ({_reason(error)})")
        stacked = torch.stack(images) if images else torch.zeros((0, 3, size, size), dtype=torch.uint8)
        images.clear()  # only the stacked copy from here: less memory while the cache is written
        if use_cache and names:
            write_cache(cached, {"images": stacked}, {"names": json.dumps(names), "skipped": json.dumps(skipped)})
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) in {str(root)!r}: {'; '.join(skipped)}",
                      stacklevel=2)
    if not names:
        raise DataError(f"no usable image in {str(root)!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return stacked, names


def _reason(error: Exception) -> str:
    """A short why for the skip warning (PIL's messages repeat the whole path)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image PIL can read"
    if isinstance(error, OSError) and error.strerror:  # without the path it repeats
        return error.strerror
    return f"{type(error).__name__}: {str(error)[:100]}"


def _cache_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The SHA-256 a cache file is written with: of its tensors' bytes and its metadata."""
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(f"|{name}|{tensors[name].dtype}|{tuple(tensors[name].shape)}|".encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_cache(path: Path, most_bytes: int, most_header: int = safefile.MAX_HEADER_BYTES
               ) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(tensors, metadata) of a cache file write_cache wrote, or None when it is missing or unusable:
    not a regular file, tensors of more than `most_bytes` (refused from the header, not read), or
    contents that do not match the SHA-256 written with them (a corrupted cache is computed again,
    never trusted)."""
    def check(header, metadata) -> None:
        if sum(math.prod(shape) * safefile.DTYPE_BYTES[dtype] for dtype, shape in header.values()) > most_bytes:
            raise safefile.CheckpointError("larger than what it caches")
    try:
        tensors, metadata = safefile.read_tensors(path, None, check, most_header)
    except (safefile.CheckpointError, OSError):  # missing, torn, foreign or hostile: computed again
        return None
    recorded = metadata.pop("sha256", None)
    return (tensors, metadata) if recorded == _cache_digest(tensors, metadata) else None


def _read_images_cache(path: Path, size: int, files: int) -> tuple[torch.Tensor, list[str], list[str]] | None:
    """(images, names, skipped) from load_folder's cache of `files` image files, or None."""
    # the names and skip reasons of every file are in the header: 1 KiB each is plenty
    hit = read_cache(path, files * 3 * size * size, safefile.MAX_HEADER_BYTES + 1024 * files)
    if hit is None:
        return None
    try:
        images, names, skipped = hit[0]["images"], json.loads(hit[1]["names"]), json.loads(hit[1]["skipped"])
    except (ValueError, KeyError, RecursionError):  # not a cache of images
        return None
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size) or len(names) != images.shape[0]:
        return None
    return images, names, skipped


def write_cache(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """One cache file, with the SHA-256 read_cache checks, published by rename so a reader never
    sees it half written. Written from bytes by atomic.replacing, not safetensors' save_file,
    whose own randomly named temporary a killed process would leave behind; the temporaries of
    killed processes are removed here. Best effort: a read-only, full or over-quota cache folder
    costs decoding again next time, and one warning."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {**(metadata or {}), "sha256": _cache_digest(tensors, metadata or {})}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temporaries(path.parent, lambda name: name.endswith(".safetensors"))
        payload = save_safetensors(tensors, metadata=metadata)
        with atomic.replacing(path, clean=False) as tmp:  # cleaned just above
            tmp.write_bytes(payload)
    except OSError as error:
        warnings.warn(f"cannot write the cache in {str(path.parent)!r} ({error.strerror or error}); carrying on "
                      f"without it (COROLLA_CACHE_DIR chooses another folder)", stacklevel=2)


STATISTICS_CHUNK = 256  # images converted to float64 at a time by channel_statistics


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) variance of uint8 images scaled to [0, 1], as Keras'
    Normalization.adapt computes them -> two (C,) float32 tensors. Two passes over chunks of
    images in float64 (the mean, then the squared deviations from it), so memory is a chunk's
    whatever the data set (a float64 copy of 20,000 images of 64x64 would take 1.8 GiB)."""
    count = images.shape[0] * images.shape[2] * images.shape[3]
    chunks = images.split(STATISTICS_CHUNK)
    mean = sum(chunk.to(torch.float64).div_(255.0).sum(dim=(0, 2, 3)) for chunk in chunks) / count
    centre = mean.view(1, -1, 1, 1)
    variance = sum(chunk.to(torch.float64).div_(255.0).sub_(centre).square_().sum(dim=(0, 2, 3))
                   for chunk in chunks) / count
    return mean.float(), variance.float()


@dataclass
class Split:
    train: torch.Tensor  # (N_train, 3, S, S) uint8
    val: torch.Tensor    # (N_val, 3, S, S) uint8, may be empty
    train_labels: torch.Tensor | None = None  # (N_train,) class numbers, when labels were given
    val_labels: torch.Tensor | None = None


def split(images: torch.Tensor, val_fraction: float, seed: int = 42, labels: torch.Tensor | None = None) -> Split:
    """Shuffle with `seed` (the reference's seed 42) and hold out the last val_fraction; labels
    (N,), one class number per image, are split alike."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(images.shape[0]))
    n_val = int(round(images.shape[0] * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= images.shape[0]:
        raise DataError(f"{images.shape[0]} image(s) cannot be split into training and validation; "
                        f"use more images or --val-fraction 0")
    shuffled, kept = images[order], images.shape[0] - n_val
    parts = Split(train=shuffled[:kept], val=shuffled[kept:])
    if labels is not None:
        parts.train_labels, parts.val_labels = labels[order][:kept], labels[order][kept:]
    return parts


def epoch_order(n: int, repetitions: int, seed: int, epoch: int) -> torch.Tensor:
    """The image indices of one epoch: `repetitions` independent shuffles back to back (the
    reference's shuffle-then-repeat), from a generator seeded by (seed, epoch) so a resumed run
    sees the same order."""
    rng = np.random.default_rng([seed, epoch])
    return torch.from_numpy(np.concatenate([rng.permutation(n) for _ in range(repetitions)]))


def batches_per_epoch(n: int, repetitions: int, batch_size: int) -> int:
    """Full batches only: the reference drops the last incomplete batch."""
    return (n * repetitions) // batch_size
