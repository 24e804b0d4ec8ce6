"""Photos and painted masks from the page, read exactly as `corolla edit` and `corolla inpaint` read
files: an upload arrives as a file (in Gradio's own temporary folder) and is decoded by
corolla.editing, with the same checks, crop and resize as the commands; a painted mask is written
as a PNG of the photo's size into a temporary folder of its own, read there by editing.load_mask,
and the folder is deleted. Nothing a visitor sends is written anywhere else."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageColor

from .. import editing
from ..data import imagefolder
from .engine import BadRequest

MAX_PHOTO_BYTES = 8 * 2 ** 20  # one uploaded file
SHOWN_PX = 512                 # the side the page shows a photo at, at most
EDITOR_PX = 512                # a small square is enlarged to about this in the mask editor, for a finer brush
BRUSH = "#ff00ff"              # the editor's one brush colour (a painted box's too)


def _named(error: ValueError, path: Path) -> BadRequest:
    """editing's refusal of a file, naming it by its file name, without the temporary folder."""
    return BadRequest(str(error).replace(f"{path.parent}/", ""))


def _upload(path: str | None, what: str) -> Path:
    if not path:
        raise BadRequest(f"choose {what} first")
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_PHOTO_BYTES:
        raise BadRequest(f"{what} is over {MAX_PHOTO_BYTES // 2 ** 20} MiB; at most "
                         f"{MAX_PHOTO_BYTES // 2 ** 20} MiB are accepted")
    return path


def load_photo(path: str | None, size: int, what: str = "a photo") -> tuple[torch.Tensor, tuple[int, int]]:
    """-> ((3, size, size) in [0, 1], the photo's (width, height)), as editing.load_photo (the page
    shows the central square it uses, so its warning about it is not repeated)."""
    path = _upload(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return editing.load_photo(path, size)
    except ValueError as error:
        raise _named(error, path) from None


def _square_box(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the central square, cut as editing.load_photo cuts it."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def decoded(path: str | None, what: str = "a photo") -> np.ndarray:
    """The photo's pixels (H, W, 3) uint8 as corolla decodes them (EXIF rotation, transparency on black)."""
    path = _upload(path, what)
    try:
        return imagefolder.decode_image(path)
    except Exception as error:  # any decoder failure: not a usable image, as editing says it
        raise BadRequest(f"image {path.name!r} is not an image corolla can read ({error})".replace("\n", " ")) from None


def central_square(pixels: np.ndarray) -> np.ndarray:
    left, top, side = _square_box(pixels.shape[1], pixels.shape[0])
    return pixels[top:top + side, left:left + side]


def _enlarged(square: np.ndarray) -> np.ndarray:
    """A square enlarged a whole number of times (each pixel a block) to about EDITOR_PX when small."""
    times = -(-EDITOR_PX // square.shape[0]) if square.shape[0] < EDITOR_PX else 1
    return square.repeat(times, 0).repeat(times, 1)


def for_editor(pixels: np.ndarray) -> np.ndarray:
    """The central square to paint the mask over, enlarged when small; painted_mask takes each
    block back to its pixel."""
    return _enlarged(central_square(pixels))


def middle_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """x, y, width, height of the middle half of the central square: where the page's box starts."""
    left, top, side = _square_box(pixels.shape[1], pixels.shape[0])
    return left + side // 4, top + side // 4, max(1, side // 2), max(1, side // 2)


def painted_box(box: tuple[int, int, int, int], pixels: np.ndarray, layers: list[np.ndarray]) -> list[np.ndarray]:
    """The editor's layers (RGBA over for_editor's square) with `box` (x, y, width, height in the
    photo's pixels) painted into the first, as a brush paints: box_mask checks and cuts it to the
    central square as for `corolla inpaint --box`, so painted_mask gives back box_mask's mask."""
    height, width = pixels.shape[:2]
    side = _square_box(width, height)[2]
    inside = _enlarged(editing.box_mask(box, (width, height), side)[0].numpy())  # at the square's own pixels
    painted = np.array(layers[0]) if layers else np.zeros((*inside.shape, 4), np.uint8)
    if painted.shape != (*inside.shape, 4):
        raise BadRequest(f"the painted layer of {painted.shape[1]}x{painted.shape[0]} is not over the editor's "
                         f"{inside.shape[1]}x{inside.shape[0]} square: choose the photo again")
    painted[inside] = (*ImageColor.getrgb(BRUSH), 255)
    return [painted, *layers[1:]]


def framed(pixels: np.ndarray) -> np.ndarray:
    """The photo as the page shows it: what lies outside the central square the model uses is
    dimmed, and the square is outlined; at most SHOWN_PX on a side."""
    image = Image.fromarray(pixels)
    image.thumbnail((SHOWN_PX, SHOWN_PX))
    shown = np.asarray(image).copy()
    scale = shown.shape[1] / pixels.shape[1]
    left, top, side = (round(v * scale) for v in _square_box(pixels.shape[1], pixels.shape[0]))
    inside = np.zeros(shown.shape[:2], bool)
    inside[top:top + side, left:left + side] = True
    shown[~inside] = shown[~inside] // 3
    edge = max(1, shown.shape[1] // 128)
    for rows, cols in ((slice(top, top + edge), slice(left, left + side)),
                       (slice(top + side - edge, top + side), slice(left, left + side)),
                       (slice(top, top + side), slice(left, left + edge)),
                       (slice(top, top + side), slice(left + side - edge, left + side))):
        shown[rows, cols] = (255, 200, 0)
    return shown


def painted_mask(layers: list[np.ndarray], photo_size: tuple[int, int], size: int) -> torch.Tensor:
    """The editor's painted layers (RGBA, over the photo's central square, enlarged or not, or over
    the whole photo) -> the fill mask (1, size, size) bool: their opacity is the mask's grey
    (white: fill; an enlarged pixel takes its block's most), written as a mask PNG of the photo's
    size and read by editing.load_mask as `corolla inpaint --mask` reads it."""
    width, height = photo_size
    left, top, side = _square_box(width, height)
    alpha = np.zeros((height, width), np.uint8)
    for layer in layers:
        opacity = np.asarray(layer)[..., 3] if np.asarray(layer).ndim == 3 else np.asarray(layer)
        times = opacity.shape[0] // side
        if opacity.shape[0] == opacity.shape[1] == times * side and times > 1:  # for_editor's enlargement
            opacity = opacity.reshape(side, times, side, times).max(axis=(1, 3))
        if opacity.shape == (side, side):
            alpha[top:top + side, left:left + side] = np.maximum(alpha[top:top + side, left:left + side], opacity)
        elif opacity.shape == (height, width):
            alpha = np.maximum(alpha, opacity)
        else:
            raise BadRequest(f"a painted layer of {opacity.shape[1]}x{opacity.shape[0]} fits neither the photo "
                             f"({width}x{height}) nor its central square ({side}x{side})")
    with tempfile.TemporaryDirectory(prefix="corolla-serve-") as folder:
        path = Path(folder) / "mask.png"
        Image.fromarray(alpha).save(path)
        try:
            return editing.load_mask(path, photo_size, size)
        except ValueError as error:  # nothing painted
            raise BadRequest(str(error).replace(f"mask {str(path)!r}", "the painted mask")
                             + " (paint over the photo with the brush)") from None
