"""The model card's figures: shipped models scored on real images none of them saw.

    python benchmarks/model_card.py --train DIR --heldout DIR [--models flowers64,flowers32]
        [--samples 1024] [--steps 20] [--eps-scale S] [--guidance G] [--loss-schedule NAME] [--json OUT]
        [--pairs-dir DIR]

For each model (a shipped name or a checkpoint path; MODEL+LAYOUT, e.g. flowers64+layout32, is the
cascade `corolla sample --layout` draws): `corolla evaluate` with --heldout (SWD per
resolution of --samples generated images against the --train images and against the held-out
images, the denoising loss on the held-out images, memorisation against the --train images, the
nearest-pairs PNG), sampled at --eps-scale (default: each model's own; the history rows before
2026-12-06 were scored at 1, so score a new stint at 1 as well to compare). Beside them the floor:
the SWD of --samples real training images against the held-out ones, at each model's resolution:
what two real samples of the data set score (the floor of both SWD figures).
--guidance G scores a conditional model's images at its training mix of classes at guidance G
(`corolla evaluate --random-class --guidance G`) instead of its unconditional ones; an
unconditional model in the same list is scored as ever.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from corolla import metrics
from corolla.data import imagefolder
from corolla.storage import checkpoint, pretrained


def model_path(name: str) -> str:
    return str(pretrained.path(name)) if name in pretrained.names() else name


def floor_pick(count: int, samples: int, seed: int) -> torch.Tensor:
    """Which training photos stand for the floor: `samples` of `count`, drawn with `seed`."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:samples]


def floor(train_dir: str, heldout_dir: str, size: int, samples: int, seed: int) -> dict[int, float]:
    train, _ = imagefolder.load_folder(train_dir, size)
    heldout, _ = imagefolder.load_folder(heldout_dir, size)
    return metrics.sliced_wasserstein(heldout, train[floor_pick(train.shape[0], samples, seed)], seed=seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="the images the models were trained on")
    p.add_argument("--heldout", required=True, help="real images no model saw")
    p.add_argument("--models", default=",".join(pretrained.names()))
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps-scale", type=float, help="epsilon scaling (default: each model's own)")
    p.add_argument("--guidance", type=float, help="conditional models: their training mix of classes at this guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--loss-schedule", default="", help="the losses' noise levels (default: each model's own)")
    p.add_argument("--json", default="model_card.json")
    p.add_argument("--pairs-dir", default=".", help="where each model's nearest-pairs PNG goes")
    args = p.parse_args()
    settings = metrics.EvalSettings(samples=args.samples, steps=args.steps, seed=args.seed,
                                    eps_scale=args.eps_scale, loss_schedule=args.loss_schedule)
    results, floors = {}, {}
    for name in args.models.split(","):
        path, _, layout = name.partition("+")
        path = model_path(path)
        config = checkpoint.load_config(checkpoint.resolve(path))
        size = config.data.image_size
        mixed = args.guidance is not None and bool(config.unet.classes)
        if size not in floors:
            floors[size] = floor(args.train, args.heldout, size, args.samples, args.seed)
        pairs = Path(args.pairs_dir) / f"nearest_pairs_{Path(name).name.replace('+', '_')}.png"
        scored = dataclasses.replace(settings, random_class=True, guidance=args.guidance) if mixed else settings
        results[name] = metrics.evaluate_checkpoint(path, args.train, scored, pairs_png=pairs,
                                                    precision=args.precision, heldout_dir=args.heldout,
                                                    layout=layout or None)
        print(f"  scored {name}", flush=True)
    Path(args.json).write_text(json.dumps({"models": results, "floor": {str(k): v for k, v in floors.items()},
                                           "samples": args.samples, "steps": args.steps}, indent=2) + "\n")

    print(f"\n{args.samples} samples, {args.steps} DDIM steps; SWD against {args.train}, losses on {args.heldout}")
    print("| model | SWD x1e3 by resolution against the training images (floor) | against the held-out images "
          "| held-out loss | training loss | nn ratio | near-copies |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        levels = [int(k[4:]) for k in r if k.startswith("swd_") and k[4:].isdigit()]
        size = r["image_size"]
        swd = ", ".join(f"{level} px {r[f'swd_{level}']:.1f} ({floors[size][level]:.1f})" for level in levels)
        heldout = ", ".join(f"{level} px {r[f'heldout_swd_{level}']:.1f}" for level in levels)
        print(f"| {name} ({size} px) | {swd} | {heldout} | {r['heldout_loss']:.4f} | {r['train_loss']:.4f} | "
              f"{r['nn_ratio']:.3f} | {r['nn_copy_fraction']:.3f} |")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
