"""How close each sampler and time grid gets to the converged deterministic solution.

    python benchmarks/sampler_accuracy.py [CHECKPOINT] [--images 8] [--steps 5,10,20,50]
        [--samplers ddim,dpmpp_2m,...] [--grids uniform,logsnr,karras] [--reference-steps 1000]
        [--reference FILE] [--threads N] [--precisions fp32,bf16]

The reference is DDIM with 1,000 steps on the uniform grid from the same initial noise (issue 9).
Error is the RMSE of the final images (denormalised and clipped, as written to PNG) against it,
in pixel values on the 0-255 scale and on the 0-1 scale. Every sampler makes one network
evaluation per step, so steps = evaluations. Seconds per image are wall-clock on this device
(noisy on a shared machine; they scale with steps, not with the sampler). Prints a Markdown table.
The reference costs as much as the rest together: --reference FILE keeps it between runs.
With --precisions fp32,bf16 every row is run in each precision (the reference stays float32), and
the table adds each image set's RMSE against the float32 images of the same sampler, grid and steps.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from corolla import samplers
from corolla.generation import initial_noise, sample_from_noise
from corolla.storage import checkpoint
from corolla.training import resolve_device

GOAL_EVALUATIONS, GOAL_DDIM_STEPS = 10, 20  # issue 9: a new solver with <= 10 evaluations vs DDIM 20


def names(text: str, known: dict) -> list[str]:
    chosen = [name for name in text.split(",") if name]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return chosen


def reference_images(model, noise: torch.Tensor, args) -> torch.Tensor:
    """DDIM with --reference-steps on the uniform grid, from --reference when it holds these images."""
    key = {"checkpoint": str(Path(args.checkpoint).resolve()), "seed": args.seed, "images": args.images,
           "steps": args.reference_steps}
    if args.reference is not None and args.reference.is_file():
        saved = torch.load(args.reference, weights_only=True)
        if saved["key"] == key:
            print(f"reference: ddim, uniform grid, {args.reference_steps} steps, read from {args.reference}")
            return saved["images"]
    start = time.perf_counter()
    images = sample_from_noise(model, noise, args.reference_steps, "ddim")
    print(f"reference: ddim, uniform grid, {args.reference_steps} steps "
          f"({(time.perf_counter() - start) / args.images:.2f} s/image)")
    if args.reference is not None:
        torch.save({"key": key, "images": images}, args.reference)
    return images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="runs/demo", help="checkpoint or run folder (default runs/demo)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--samplers", default=",".join(samplers.SAMPLERS))
    p.add_argument("--grids", default=",".join(samplers.GRIDS))
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--reference", type=Path, help="file to keep the reference images in (reused if it matches)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16 (the reference is always fp32)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps_list = [int(s) for s in args.steps.split(",")]
    sampler_names, grid_names = names(args.samplers, samplers.SAMPLERS), names(args.grids, samplers.GRIDS)

    device = resolve_device(args.device)
    model, config = checkpoint.load_model(args.checkpoint, device)
    size = config.data.image_size
    noise = initial_noise(args.seed, range(args.images), (model.network.config.channels, size, size))

    print(f"checkpoint {args.checkpoint} ({config.preset}, {size}x{size}, schedule {model.schedule_name}), "
          f"{args.images} images, seed {args.seed}, device {device}, torch threads {torch.get_num_threads()}")
    reference = reference_images(model, noise, args)
    print()

    rmse = lambda a, b: (a - b).pow(2).mean().sqrt().item()
    rows, fp32_images = [], {}
    for precision in args.precisions.split(","):
        model.accelerate(precision=precision)
        for grid in grid_names:
            for sampler in sampler_names:
                for steps in steps_list:
                    start = time.perf_counter()
                    images = sample_from_noise(model, noise, steps, sampler, grid=grid)
                    seconds = (time.perf_counter() - start) / args.images
                    key = (sampler, grid, steps)
                    fp32 = fp32_images.setdefault(key, images) if precision == "fp32" else fp32_images.get(key)
                    rows.append((sampler, grid, steps, precision, rmse(images, reference), seconds,
                                 None if fp32 is None else rmse(images, fp32)))
    model.accelerate(precision="fp32")
    all_rows = rows
    # the goal below is judged in the reference's arithmetic (float32), or the first precision run
    first = args.precisions.split(",")[0]
    rows = [(r[0], r[1], r[2], r[4], r[5]) for r in all_rows if r[3] == first]

    print("| sampler | grid | steps | precision | RMSE (0-255) | RMSE (0-1) | vs fp32 images (0-255) | s/image |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for sampler, grid, steps, precision, error, seconds, vs_fp32 in all_rows:
        shown = "-" if vs_fp32 is None or precision == "fp32" else f"{vs_fp32 * 255:.2f}"
        print(f"| {sampler} | {grid} | {steps} | {precision} | {error * 255:.2f} | {error:.4f} | {shown} | "
              f"{seconds:.3f} |")

    ddim = [r for r in rows if r[:3] == ("ddim", "uniform", GOAL_DDIM_STEPS)]
    fast = [r for r in rows if r[0] != "ddim" and r[2] <= GOAL_EVALUATIONS]
    if ddim and fast:
        best = min(fast, key=lambda r: r[3])
        verdict = "met" if best[3] <= ddim[0][3] else "not met"
        print(f"\ngoal ({verdict}): best new solver with <= {GOAL_EVALUATIONS} evaluations, {best[0]} on "
              f"{best[1]} with {best[2]}, RMSE {best[3] * 255:.2f}/255; reference DDIM {GOAL_DDIM_STEPS} "
              f"steps {ddim[0][3] * 255:.2f}/255")


if __name__ == "__main__":
    main()
