"""Which epsilon scale suits each sampler and step count: SWD against held-out photos.

    python benchmarks/eps_scale_steps.py --heldout DIR [MODEL] [--runs ddim:20:1.01,dpmpp_2m:10:1.02,...]
        [--samples 1024] [--seed 0] [--precision bf16] [--json OUT]

MODEL: a shipped model's name or a checkpoint (default flowers64). Each run SAMPLER:STEPS:SCALE
draws --samples images of seed --seed with that sampler on its default grid, that many network
evaluations and that epsilon scale (corolla.samplers.scaled_noise), and scores them with SWD x1e3
at every pyramid level against the held-out photos (corolla.metrics); the first row is the floor,
as many real training photos (--train) against the same held-out ones. The runs share the noise of
each image, so only the sampling differs between rows.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from corolla import metrics
from corolla.data import imagefolder
from corolla.generation import SamplingSettings, generate
from corolla.metrics.evaluation import quantise
from corolla.storage import checkpoint, pretrained


def parse_runs(text: str) -> list[tuple[str, int, float]]:
    """"ddim:20:1.01,dpmpp_2m:10:1.02" -> [(sampler, steps, scale), ...]."""
    runs = []
    for item in text.split(","):
        sampler, steps, scale = item.split(":")
        runs.append((sampler, int(steps), float(scale)))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="flowers64")
    p.add_argument("--heldout", required=True)
    p.add_argument("--train", help="training photos for the floor row (default: no floor)")
    p.add_argument("--runs", type=parse_runs, default=parse_runs("ddim:20:1.01,ddim:10:1.01,ddim:10:1.02"))
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--json")
    args = p.parse_args()
    heldout, _ = imagefolder.load_folder(args.heldout, 64)
    path = pretrained.path(args.model) if args.model in pretrained.names() else args.model
    model, config = checkpoint.load_for_sampling(path, torch.device("cpu"), args.precision)
    rows = []
    print(f"{args.model}: {args.samples} images of seed {args.seed} ({args.precision}) against {len(heldout)} "
          f"held-out photos\n| sampler | steps | eps scale | SWD x1e3 by level | mean | seconds |\n"
          f"| --- | --- | --- | --- | --- | --- |")
    if args.train:
        train, _ = imagefolder.load_folder(args.train, 64)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed + 1))[:args.samples]
        swd = metrics.sliced_wasserstein(heldout, train[pick], seed=args.seed)
        rows.append({"run": "training photos (floor)", "swd": swd})
        print(f"| training photos (floor) | | | {' / '.join(f'{v:.1f}' for v in swd.values())} | "
              f"{sum(swd.values()) / len(swd):.1f} | |")
    for sampler, steps, scale in args.runs:
        start = time.perf_counter()
        settings = SamplingSettings(steps=steps, sampler=sampler, seed=args.seed, eps_scale=scale)
        images = quantise(generate(model, args.samples, settings, image_size=config.data.image_size))
        seconds = time.perf_counter() - start
        swd = metrics.sliced_wasserstein(heldout, images, seed=args.seed)
        rows.append({"sampler": sampler, "steps": steps, "eps_scale": scale, "swd": swd, "seconds": seconds})
        print(f"| {sampler} | {steps} | {scale:g} | {' / '.join(f'{v:.1f}' for v in swd.values())} | "
              f"{sum(swd.values()) / len(swd):.1f} | {seconds:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"model": args.model, "samples": args.samples, "seed": args.seed, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
