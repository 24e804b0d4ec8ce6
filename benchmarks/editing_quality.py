"""How well a model edits real photos it never saw: DDIM inversion and inpainting (issue 15).

    python benchmarks/editing_quality.py HELDOUT_DIR [--checkpoint DIR | --model NAME] [--count 16]
        [--invert-steps 10,20,50] [--invert-grid logsnr] [--refine 6]
        [--inpaint-steps 50] [--repaint 5x5,10x5] [--hole 0.5] [--seed 0] [--threads 1]

Photos: --count files of HELDOUT_DIR, evenly spaced in sorted order (so across its classes),
centre-cropped and resized to the model's size; a second, disjoint set of as many photos (the
files in between) is the real reference the SWD compares with.

1. Inversion: each photo inverted with deterministic DDIM (corolla.editing.invert) and decoded
   again with the same steps and grid; RMSE of the round trip on the 0-255 scale.
2. Inpainting of the centred square of side --hole x size: RMSE in the hole against the photo
   (0-255), and SWD x1e3 (corolla.metrics, mean over pyramid levels) of the filled photos against
   the disjoint real set, for a mean-colour fill (each photo's hole painted with the mean colour of
   its known pixels: the floor any method should beat), plain replacement (--resample 1) and
   RePaint (RxJ = --resample R --jump J), all from the same seed; the unedited photos against the
   same set are what a perfect fill would score. The hole's RMSE rewards the blurry mean, so read
   it with the SWD: a good fill is sharp and plausible, not the average. SWD on a few dozen photos
   is noisy: compare rows of one run, not runs.
Prints Markdown tables; seconds are wall-clock on this device.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from corolla import editing, metrics
from corolla.data import imagefolder
from corolla.storage import checkpoint, pretrained
from corolla.training import resolve_device


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def repaint_list(text: str) -> list[tuple[int, int]]:
    """'5x5,10x5' -> [(5, 5), (10, 5)] (resample x jump)."""
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def photos(folder: str, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of `count` photos spread over the folder -> (N, 3, size, size) in [0, 1]."""
    files = imagefolder.scan(folder)
    if len(files) < 2 * count:
        raise SystemExit(f"{folder} has {len(files)} images; --count {count} needs {2 * count}")
    stride = len(files) // (2 * count)
    chosen = [editing.load_photo(f, size)[0] for f in files[::stride][:2 * count]]
    return torch.stack(chosen[0::2]), torch.stack(chosen[1::2])


def swd(real: torch.Tensor, images: torch.Tensor) -> float:
    levels = metrics.sliced_wasserstein(to_uint8(real), to_uint8(images))
    return sum(levels.values()) / len(levels)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)  # as a saved PNG holds them


def mean_colour_fill(images: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    known = (~fill).expand_as(images).float()
    colour = (images * known).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True)
    return torch.where(fill, colour.expand_as(images), images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("heldout", help="folder of real images the model never saw")
    p.add_argument("--checkpoint", help="checkpoint or run folder (default: the shipped model)")
    p.add_argument("--model", help="a shipped model by name")
    p.add_argument("--count", type=int, default=16, help="photos per set")
    p.add_argument("--invert-steps", type=int_list, default=int_list("10,20,50"))
    p.add_argument("--invert-grid", default=editing.INVERSION.grid)
    p.add_argument("--refine", type=int, default=editing.INVERT_REFINE)
    p.add_argument("--inpaint-steps", type=int, default=editing.INPAINTING.steps)
    p.add_argument("--inpaint-grid", default=editing.INPAINTING.grid)
    p.add_argument("--repaint", type=repaint_list, default=repaint_list("5x5"), help="RxJ list, e.g. 5x5,10x1")
    p.add_argument("--hole", type=float, default=0.5, help="side of the centred hole, as a fraction of the image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.checkpoint or str(pretrained.path(args.model))
    model, config = checkpoint.load_model(source, resolve_device(args.device))
    size = config.data.image_size
    images, others = photos(args.heldout, args.count, size)
    print(f"model {source} ({size}x{size}), {args.count} photos of {args.heldout}, seed {args.seed}\n")

    print(f"Inversion: DDIM on the {args.invert_grid} grid, refine {args.refine}, then decoding with the same grid\n")
    print("| steps | evaluations (invert + decode) | round-trip RMSE (0-255) | s/photo |")
    print("| ---: | ---: | ---: | ---: |")
    for steps in args.invert_steps:
        start = time.perf_counter()
        settings = replace(editing.INVERSION, steps=steps, grid=args.invert_grid, batch_size=args.batch_size)
        noise = editing.invert(model, images, settings, refine=args.refine)
        again = editing.decode(model, noise, settings)
        seconds = (time.perf_counter() - start) / args.count
        print(f"| {steps} | {args.refine + steps - 1} + {steps} | {editing.rmse_255(again, images):.2f} | "
              f"{seconds:.2f} |", flush=True)

    fill = editing.centre_box(size, args.hole).expand(args.count, 1, size, size)
    side = int(fill[0, 0].any(dim=0).sum())
    print(f"\nInpainting a centred {side}x{side} hole: {args.inpaint_steps} steps on the {args.inpaint_grid} grid, "
          f"eta 1\n")
    print("| method | evaluations | RMSE in the hole (0-255) | SWD x1e3 vs other real photos | s/photo |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| the photos themselves (a perfect fill) | | 0 | {swd(others, images):.1f} | |")
    meaned = mean_colour_fill(images, fill)
    print(f"| mean-colour fill | 0 | {editing.rmse_255(meaned, images, fill):.2f} | {swd(others, meaned):.1f} | |")
    settings = replace(editing.INPAINTING, steps=args.inpaint_steps, grid=args.inpaint_grid, seed=args.seed,
                       batch_size=args.batch_size)
    for resample, jump in [(1, 1), *args.repaint]:
        start = time.perf_counter()
        filled = editing.inpaint(model, images, fill, settings, resample=resample, jump=jump)
        seconds = (time.perf_counter() - start) / args.count
        name = "replacement (resample 1)" if resample == 1 else f"RePaint, resample {resample}, jump {jump}"
        evaluations = editing.repaint_evaluations(args.inpaint_steps, resample, jump)
        assert torch.equal(filled[~fill.expand_as(filled)], images[~fill.expand_as(images)])
        print(f"| {name} | {evaluations} | {editing.rmse_255(filled, images, fill):.2f} | "
              f"{swd(others, filled):.1f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
