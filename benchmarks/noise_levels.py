"""Which noise levels decide the layout of a model's images, and what an expert for them changes.

    python benchmarks/noise_levels.py --train DIR --heldout DIR [--model flowers64] --starts 1,0.9,0.8
    python benchmarks/noise_levels.py --train DIR --heldout DIR [--model flowers64] --expert CKPT --split T
    python benchmarks/noise_levels.py --train DIR --heldout DIR [--model flowers64] --layout CKPT --starts 0.8
        [--layout-eps-scale S]
        [--samples 1024] [--steps 20] [--eps-scale S] [--precision bf16] [--json OUT]

--starts: DDIM from --samples training photos noised to each time T0 (their own noise, seeded), with
round(steps * T0) steps of the uniform grid from T0, the model's own eps scale unless --eps-scale is
given: once a level's SWD against the held-out photos is near the floor (the photos themselves), the
layout was settled at noisier levels. Only the coarse levels mean much: the finest depends on the
eps scale, which is set for trajectories from pure noise.

--expert: images of seed 0 from pure noise (as `corolla sample` draws them), the model's network
at diffusion times below T and CKPT's (a run trained with `--time-range`) from T up; beside them the
model alone, and each network's held-out loss over [T, 1) (noise and times from seed 8, the
study's). eDiff-I's ensemble of expert denoisers (Balaji et al. 2022) in its simplest form.

--layout: a cascade. CKPT, a model of smaller images (a run trained with `--image-size 32`), draws
--samples images of seed 0 at --layout-eps-scale (else its own); each is upsampled (bicubic, as
corolla.cascade; bilinear before 2026-12-07) to the model's size and taken, in place of the
training photos, to each of --starts: the model's DDIM finishes it. Beside them the upsampled
images alone (their coarse levels are the layout model's). Cascaded diffusion (Ho et al.
2021) without its conditioning: the small model decides the layout, the large one the detail.
"""
from __future__ import annotations

import argparse
import json

import torch

from corolla import cascade, metrics, samplers
from corolla.data import imagefolder
from corolla.diffusion import DiffusionModel
from corolla.generation import SamplingSettings, generate
from corolla.metrics.evaluation import quantise
from corolla.storage import checkpoint
from corolla.training import validation_loss
from corolla.warmstart import source_path

BATCH = 128
LOSS_SEED = 8  # the seed of the expert study's runs, whose validation draws these repeat


def load(name: str, precision: str) -> DiffusionModel:
    return checkpoint.load_for_sampling(source_path(name), torch.device("cpu"), precision)[0]


def swd(heldout: torch.Tensor, images: torch.Tensor) -> dict[int, float]:
    return {size: round(value, 1) for size, value in metrics.sliced_wasserstein(heldout, images, seed=0).items()}


@torch.no_grad()
def from_photos(model: DiffusionModel, photos: torch.Tensor, start: float, steps: int, eps_scale: float
                ) -> torch.Tensor:
    """photos (N, 3, H, W) uint8 noised to time `start`, then denoised by DDIM -> uint8 images."""
    denoise = samplers.scaled_noise(model.ema_denoiser(), eps_scale)
    times = torch.linspace(start, 0.0, max(1, round(steps * start)) + 1, dtype=torch.float64)
    out = []
    for first in range(0, photos.shape[0], BATCH):
        clean = model.normalizer.normalize(photos[first:first + BATCH].float() / 255)
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(first))
        noise_rates, signal_rates = model.schedule(torch.full((clean.shape[0], 1, 1, 1), start))
        pred = samplers.ddim(denoise, model.schedule, signal_rates * clean + noise_rates * noise, times)
        out.append(quantise(model.normalizer.denormalize(pred)))
    return torch.cat(out)


def layout_images(path: str, precision: str, count: int, size: int, steps: int, eps_scale: float | None
                  ) -> torch.Tensor:
    """`count` images of seed 0 from the model at `path`, at its own size and `eps_scale` (None: its
    own), upsampled to `size` as the package's cascade upsamples (bicubic) -> uint8."""
    layout, config = checkpoint.load_for_sampling(source_path(path), torch.device("cpu"), precision)
    settings = SamplingSettings(steps=steps, eps_scale=layout.sampling_eps_scale(eps_scale))
    small = generate(layout, count, settings, image_size=config.data.image_size)
    return quantise(cascade.upsample(small, size))


def with_expert(model: DiffusionModel, expert: DiffusionModel, split: float) -> DiffusionModel:
    """`model`, its sampling calls at noise rates from time `split` up sent to `expert`'s EMA network
    (every sampler evaluates one time per batch)."""
    threshold = float(model.schedule(torch.tensor(split))[0])
    low, high = model.ema_denoiser(), expert.ema_denoiser()
    model.ema_denoiser = lambda labels=None, guidance=None: (
        lambda x, n, s: (high if float(n.flatten()[0]) >= threshold - 1e-6 else low)(x, n, s))
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--heldout", required=True)
    p.add_argument("--model", default="flowers64")
    p.add_argument("--starts", type=lambda v: [float(t) for t in v.split(",")])
    p.add_argument("--expert")
    p.add_argument("--split", type=float, default=0.8)
    p.add_argument("--layout")
    p.add_argument("--layout-eps-scale", type=float)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps-scale", type=float)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--json")
    args = p.parse_args()
    if not (args.starts or args.expert):
        p.error("give --starts or --expert")
    if args.layout and not args.starts:
        p.error("--layout needs --starts: the times the model takes the layout model's images from")
    heldout, _ = imagefolder.load_folder(args.heldout, 64)
    model = load(args.model, args.precision)
    eps_scale = model.sampling_eps_scale(args.eps_scale)
    result = {"model": args.model, "samples": args.samples, "steps": args.steps, "eps_scale": eps_scale}
    if args.starts:
        train, _ = imagefolder.load_folder(args.train, 64)
        photos = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.samples]]
        result["floor"] = swd(heldout, photos)
        if args.layout:
            photos = layout_images(args.layout, args.precision, args.samples, 64, args.steps,
                                   args.layout_eps_scale)
            result.update(layout=args.layout, layout_alone=swd(heldout, photos))
            print("layout alone", result["layout_alone"], flush=True)
        result["starts"] = {}
        for start in args.starts:
            signal = float(model.schedule(torch.tensor(start))[1])
            result["starts"][start] = {"signal_rate": round(signal, 3),
                                       "swd": swd(heldout, from_photos(model, photos, start, args.steps, eps_scale))}
            print(start, result["starts"][start], flush=True)
    if args.expert:
        expert = load(args.expert, args.precision)
        cpu = torch.device("cpu")
        result["heldout_loss_over_split"] = {
            name: validation_loss(m, heldout, 64, LOSS_SEED, cpu, times=(args.split, 1.0))
            for name, m in (("model", model), ("expert", expert))}
        settings = SamplingSettings(steps=args.steps, eps_scale=eps_scale)
        result["model_alone"] = swd(heldout, quantise(generate(model, args.samples, settings)))
        result["with_expert"] = swd(heldout, quantise(generate(with_expert(model, expert, args.split),
                                                               args.samples, settings)))
        result.update(expert=args.expert, split=args.split)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
