"""A corpus of hostile image files, built on demand, with what corolla must do with each.

build(folder) writes the files and returns {relative path: Expect}. An entry either loads
(and its check, given the decoded (3, S, S) uint8 tensor, asserts the pixels are right) or is
skipped and named in the warning; `ignored` entries (hidden files) are neither loaded nor named.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

SIZE = 16  # the size tests load the corpus at


@dataclass
class Expect:
    outcome: str  # "load", "skip" or "ignored"
    check: Callable[[torch.Tensor], None] | None = None


def _solid(color: tuple[int, int, int]) -> Callable[[torch.Tensor], None]:
    def check(x: torch.Tensor) -> None:
        expected = torch.tensor(color, dtype=torch.int16).view(3, 1, 1)
        assert (x.to(torch.int16) - expected).abs().max() <= 3, x[:, 0, 0]
    return check


def _top_white_bottom_black(x: torch.Tensor) -> None:
    """An EXIF orientation 6 image stored with a white left half shows a white top half."""
    top, bottom = x[:, : SIZE // 2 - 1].float().mean(), x[:, SIZE // 2 + 1:].float().mean()
    assert top > 220 and bottom < 35, (top, bottom)


def _left_black_right_green(x: torch.Tensor) -> None:
    """Transparent pixels are composited on black."""
    assert x[:, :, : SIZE // 2 - 1].max() <= 3
    assert (x[:, :, SIZE // 2 + 1:].float().mean(dim=(1, 2)) - torch.tensor([0.0, 255, 0])).abs().max() <= 3


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG written by hand, so headers can lie (a bomb) and 16-bit RGB can be made."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


def build(folder: Path) -> dict[str, Expect]:
    folder.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, Expect] = {}

    def write(name: str, payload: bytes, expect: Expect) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        corpus[name] = expect

    red = Image.new("RGB", (24, 20), (220, 30, 40))
    # -- files that must load, each with the right pixels ----------------------------------
    write("plain.png", _encoded(red, "PNG"), Expect("load", _solid((220, 30, 40))))
    write("one_pixel.png", _encoded(Image.new("RGB", (1, 1), (200, 100, 50)), "PNG"),
          Expect("load", _solid((200, 100, 50))))
    grey16 = np.full((8, 8), 40000, dtype=np.uint16)  # 40000 / 65535 * 255 = 155.6
    write("grey16.png", _encoded(Image.fromarray(grey16), "PNG"), Expect("load", _solid((156, 156, 156))))
    # a dark 16-bit image is still 16-bit: 200 / 65535 is black, not 200 / 255
    write("grey16_dark.png", _encoded(Image.fromarray(np.full((8, 8), 200, np.uint16)), "PNG"),
          Expect("load", _solid((1, 1, 1))))
    rgb16_row = b"\x00" + np.tile(np.array([65535, 0, 32768], ">u2"), 4).tobytes()
    write("rgb16.png", png_bytes(4, 4, 16, 2, rgb16_row * 4), Expect("load", _solid((255, 0, 128))))
    write("cmyk.jpg", _encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
          Expect("load", _solid((255, 0, 0))))
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([255, 0, 255, 0, 255, 0] + [0] * 762)  # index 0 magenta (transparent), 1 green
    palette.paste(1, (8, 0, 16, 16))
    write("palette_transparent.png", _encoded(palette, "PNG", transparency=0), Expect("load", _left_black_right_green))
    rgba = Image.new("RGBA", (16, 16), (0, 255, 0, 255))
    rgba.paste((255, 255, 255, 0), (0, 0, 8, 16))
    write("rgba.png", _encoded(rgba, "PNG"), Expect("load", _left_black_right_green))
    stored = Image.new("RGB", (32, 16), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 16, 16))  # white left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    write("exif_rotated.jpg", _encoded(stored, "JPEG", quality=95, exif=exif.tobytes()),
          Expect("load", _top_white_bottom_black))
    frames = [Image.new("RGB", (16, 16), c) for c in ((250, 0, 0), (0, 0, 250))]
    write("animated.gif", _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
          Expect("load", _solid((250, 0, 0))))
    write("UPPER.JPG", _encoded(red, "JPEG", quality=95), Expect("load", _solid((220, 30, 40))))
    write("long.jpeg", _encoded(red, "JPEG", quality=95), Expect("load", _solid((220, 30, 40))))
    write("lossless.webp", _encoded(red, "WEBP", lossless=True), Expect("load", _solid((220, 30, 40))))
    write("scan.tif", _encoded(red, "TIFF"), Expect("load", _solid((220, 30, 40))))
    write("flor é 🌸.png", _encoded(red, "PNG"), Expect("load", _solid((220, 30, 40))))
    write("with space/deeper folder/a b.png", _encoded(red, "PNG"), Expect("load", _solid((220, 30, 40))))
    write("a/b/c/d/nested.png", _encoded(red, "PNG"), Expect("load", _solid((220, 30, 40))))
    # a bigger photo-like image: must equal decoding it directly (the ordinary path)
    write("noise.png", _encoded(_noise(1), "PNG"), Expect("load"))

    # -- files that must be skipped and named -------------------------------------------
    jpeg, png = _encoded(_noise(2), "JPEG"), _encoded(_noise(3), "PNG")
    write("empty.jpg", b"", Expect("skip"))
    write("truncated.jpg", jpeg[: len(jpeg) // 2], Expect("skip"))
    write("truncated.png", png[: len(png) // 2], Expect("skip"))
    write("text.png", b"this is not an image, whatever its name says\n" * 20, Expect("skip"))
    write("html.jpg", b"<!doctype html><title>404 Not Found</title>", Expect("skip"))
    # decompression bombs: tiny files whose headers declare huge images; refused from the header
    write("bomb_huge.png", png_bytes(100_000, 100_000, 8, 2, b"\x00" * 16), Expect("skip"))
    write("bomb_over_pil_warning.png", png_bytes(10_000, 10_000, 8, 2, b"\x00" * 16), Expect("skip"))
    write("bomb_over_corolla_limit.png", png_bytes(8_500, 8_500, 8, 0, b"\x00" * 16), Expect("skip"))
    # a directory with an image name is not a file at all
    (folder / "folder.jpg").mkdir()
    # links: a loop between two names, one to nothing, and a folder link back to the root
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    os.symlink("does_not_exist.png", folder / "dangling.png")
    os.symlink("..", folder / "a" / "up")
    corpus.update({"loop_a.jpg": Expect("skip"), "loop_b.jpg": Expect("skip"), "dangling.png": Expect("skip")})
    # a FIFO named like an image: opening it would block forever
    os.mkfifo(folder / "pipe.png")
    corpus["pipe.png"] = Expect("skip")

    # -- hidden entries are ignored, as a shell glob would ------------------------------
    write(".hidden.png", _encoded(red, "PNG"), Expect("ignored"))
    write("._resource_fork.jpg", b"\x00\x05\x16\x07 AppleDouble", Expect("ignored"))
    write(".git/objects/x.png", _encoded(red, "PNG"), Expect("ignored"))
    return corpus
