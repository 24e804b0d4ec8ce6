"""Contrast and fine detail of generated images beside real ones: what SWD's finer scales react to.

    python benchmarks/image_statistics.py --heldout DIR MODEL [MODEL ...] [--images 64] [--steps 20]
        [--eta 0] [--seed 0] [--json OUT]

For the held-out photos (the first --images) and --images samples of each MODEL (a shipped
model's name, a checkpoint or run folder; seed --seed, DDIM --steps, float32): the per-channel
mean and standard deviation of the pixels in [0, 1], and the fine detail, the standard deviation
of each image minus its 3x3 mean (edge pixels replicated). A model whose images are smoother
than photos has less fine detail; one that adds noise has more.
"""
from __future__ import annotations

import argparse
import json

import torch

from corolla import metrics
from corolla.data import imagefolder
from corolla.generation import SamplingSettings, generate
from corolla.storage import checkpoint, pretrained


def statistics(images: torch.Tensor) -> dict:
    """images (N, C, H, W) in [0, 1] -> mean and std per channel, fine detail."""
    return {"mean": images.mean((0, 2, 3)).tolist(), "std": images.std((0, 2, 3)).tolist(),
            "fine_detail": metrics.fine_detail(images)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--heldout", required=True)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    real, _ = imagefolder.load_folder(args.heldout, 64)
    rows = {"held-out photos": statistics(real[:args.images].float() / 255)}
    for name in args.models:
        model, config = checkpoint.load_model(pretrained.path(name) if name in pretrained.names() else name)
        images = generate(model, args.images, SamplingSettings(steps=args.steps, eta=args.eta, seed=args.seed),
                          image_size=config.data.image_size)
        rows[name] = statistics(images)
    print(f"{args.images} images each; samples: DDIM {args.steps} steps, eta {args.eta:g}, seed {args.seed}, float32")
    print("| images | mean R / G / B | std R / G / B | fine detail |\n| --- | --- | --- | --- |")
    for name, row in rows.items():
        three = lambda values: " / ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {three(row['mean'])} | {three(row['std'])} | {row['fine_detail']:.4f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"images": args.images, "steps": args.steps, "eta": args.eta, "seed": args.seed, "rows": rows},
                      out, indent=2)


if __name__ == "__main__":
    main()
