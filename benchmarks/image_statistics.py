"""Contrast and fine detail of generated images beside real ones: what SWD's finer scales react to.

    python benchmarks/image_statistics.py --heldout DIR MODEL [MODEL ...] [--images 64] [--steps 20]
        [--eta 0] [--eps-scale S] [--seed 0] [--trajectory] [--json OUT]

For the held-out photos (the first --images) and --images samples of each MODEL (a shipped
model's name, a checkpoint or run folder; seed --seed, DDIM --steps, --eps-scale (default: each
model's own, as corolla sample draws), float32): the per-channel
mean and standard deviation of the pixels in [0, 1], and the fine detail, the standard deviation
of each image minus its 3x3 mean (edge pixels replicated). A model whose images are smoother
than photos has less fine detail; one that adds noise has more.

--trajectory: where along the sampling the detail goes missing. For each network evaluation of
each MODEL's sampling, the fine detail of its predicted clean images beside that of the same
network's prediction from the held-out photos noised to the same level (noise from --seed): the
photos' column is what the network restores where the detail is there to be seen.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from corolla import metrics, samplers
from corolla.data import imagefolder
from corolla.diffusion import DiffusionModel
from corolla.generation import SamplingSettings, generate
from corolla.storage import checkpoint, pretrained


def statistics(images: torch.Tensor) -> dict:
    """images (N, C, H, W) in [0, 1] -> mean and std per channel, fine detail."""
    return {"mean": images.mean((0, 2, 3)).tolist(), "std": images.std((0, 2, 3)).tolist(),
            "fine_detail": metrics.fine_detail(images)}


def trajectory(model: DiffusionModel, photos: torch.Tensor, settings: SamplingSettings,
               image_size: int) -> tuple[list[dict], torch.Tensor]:
    """Per network evaluation of sampling: its noise rate, the fine detail of the sampler's predicted
    images and of the network's prediction from `photos` (N, C, H, W in [0, 1]) noised to that rate;
    and the sampled images (len(photos) of them, drawn in one batch so that each evaluation is one
    callback: the images do not depend on the batch)."""
    sampled = []
    images = generate(model, len(photos), replace(settings, batch_size=len(photos)), image_size=image_size,
                      callback=lambda done, predictions: sampled.append(metrics.fine_detail(predictions)))
    times = samplers.get_grid(settings.time_grid, settings.steps, model.schedule)
    clean = model.normalizer.normalize(photos)
    noises = torch.randn(clean.shape, generator=torch.Generator().manual_seed(settings.seed))
    rows = []
    with torch.no_grad():
        for t, detail in zip(times.tolist(), sampled):
            noise_rates, signal_rates = (torch.full((len(clean), 1, 1, 1), float(rate))
                                          for rate in model.schedule(torch.tensor(t)))
            _, predicted = model.denoise(signal_rates * clean + noise_rates * noises, noise_rates, signal_rates)
            rows.append({"noise_rate": float(noise_rates[0]), "sampled": detail,
                         "photos": metrics.fine_detail(model.normalizer.denormalize(predicted))})
    return rows, images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--heldout", required=True)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--eps-scale", type=float, help="epsilon scaling (default: each model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory", action="store_true", help="fine detail at each step of sampling (above)")
    p.add_argument("--json")
    args = p.parse_args()
    real, _ = imagefolder.load_folder(args.heldout, 64)
    photos = real[:args.images].float() / 255
    settings = SamplingSettings(steps=args.steps, eta=args.eta, seed=args.seed, eps_scale=args.eps_scale)
    rows, steps = {"held-out photos": statistics(photos)}, {}
    for name in args.models:
        model, config = checkpoint.load_model(pretrained.path(name) if name in pretrained.names() else name)
        if args.trajectory:
            steps[name], images = trajectory(model, photos, settings, config.data.image_size)
            print(f"{name}: fine detail of the predicted images at each evaluation (DDIM {args.steps} steps)")
            print("| noise rate | sampling | held-out photos noised to it |\n| --- | --- | --- |")
            for step in steps[name]:
                print(f"| {step['noise_rate']:.3f} | {step['sampled']:.4f} | {step['photos']:.4f} |")
        else:
            images = generate(model, args.images, settings, image_size=config.data.image_size)
        rows[name] = statistics(images)
    scale = "each model's own" if args.eps_scale is None else f"{args.eps_scale:g}"
    print(f"{args.images} images each; samples: DDIM {args.steps} steps, eta {args.eta:g}, eps scale {scale}, "
          f"seed {args.seed}, float32")
    print("| images | mean R / G / B | std R / G / B | fine detail |\n| --- | --- | --- | --- |")
    for name, row in rows.items():
        three = lambda values: " / ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {three(row['mean'])} | {three(row['std'])} | {row['fine_detail']:.4f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"images": args.images, "steps": args.steps, "eta": args.eta, "eps_scale": args.eps_scale,
                       "seed": args.seed, "rows": rows, "trajectory": steps}, out, indent=2)


if __name__ == "__main__":
    main()
