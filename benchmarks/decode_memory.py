"""Peak memory of decoding the largest image corolla accepts (imagefolder.MAX_IMAGE_PIXELS), per image mode.

Each file is written at exactly MAX_IMAGE_PIXELS pixels (8000 x 8000, a smooth pattern so that the
files stay small) and decoded in a fresh process by imagefolder.load_image, as training does: header
check, decode, conversion to RGB, bilinear resize to 64x64. The figure is how far the decode raises
the process's peak resident memory (VmHWM, Linux) above what it held before.

    python benchmarks/decode_memory.py            # about a minute on a 2-core CPU
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from corolla.data import imagefolder

SIDE = 8000  # SIDE * SIDE = imagefolder.MAX_IMAGE_PIXELS

# VmHWM, the process's own peak resident memory (ru_maxrss would carry over the parent's peak)
MEASURE = """
import sys
from pathlib import Path
from corolla import data

def peak_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

imagefolder.load_image(Path(sys.argv[1]), 64)  # the decoders and torch's kernels loaded
before = peak_kib()
imagefolder.load_image(Path(sys.argv[2]), 64)
print(peak_kib() - before)
"""


def _pattern(dtype=np.uint8, high: int = 255) -> np.ndarray:
    ramp = np.linspace(0, high, SIDE, dtype=np.float64)
    return (ramp[None, :] * 0.5 + ramp[:, None] * 0.5).astype(dtype)


def write_files(folder: Path) -> dict[str, Path]:
    grey = _pattern()
    rgb = np.stack([grey, grey[::-1], grey.T], axis=-1)
    files = {
        "RGB JPEG": (Image.fromarray(rgb), "rgb.jpg"),
        "RGB PNG": (Image.fromarray(rgb), "rgb.png"),
        "RGBA PNG": (Image.fromarray(np.concatenate([rgb, grey[..., None]], axis=-1)), "rgba.png"),
        "greyscale PNG": (Image.fromarray(grey), "grey.png"),
        "16-bit greyscale PNG": (Image.fromarray(_pattern(np.uint16, 65535)), "grey16.png"),
        "32-bit float TIFF": (Image.fromarray(_pattern(np.float32, 1)), "float.tif"),
    }
    paths = {}
    for name, (image, filename) in files.items():
        assert image.width * image.height == imagefolder.MAX_IMAGE_PIXELS
        paths[name] = folder / filename
        image.save(paths[name])
    Image.new("RGB", (8, 8)).save(folder / "small.png")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_files(Path(folder))
        print(f"decoding one image of {SIDE} x {SIDE} = {imagefolder.MAX_IMAGE_PIXELS:,} pixels "
              f"(imagefolder.MAX_IMAGE_PIXELS)")
        print(f"{'file':<24} {'size on disk':>14} {'peak rise':>12}")
        for name, path in paths.items():
            rise_kib = int(subprocess.run([sys.executable, "-c", MEASURE, str(Path(folder) / "small.png"), str(path)],
                                          capture_output=True, text=True, check=True).stdout)
            print(f"{name:<24} {path.stat().st_size / 2 ** 20:>11.1f} MiB {rise_kib / 2 ** 20:>8.2f} GiB")


if __name__ == "__main__":
    main()
