"""What makes a model's images differ from photos at SWD's coarsest level: colour, or layout.

    python benchmarks/coarse_structure.py --train DIR --heldout DIR MODEL [MODEL ...] [--samples 1024]
        [--steps 20] [--seed 0] [--eps-scale S] [--precision bf16] [--json OUT]

MODEL: a shipped model's name or a checkpoint; NAME+LAYOUT is the cascade `corolla sample NAME
--layout LAYOUT` draws; either with @G samples a conditional model (or a cascade with a conditional
stage) with each image's class drawn at the training mix at guidance G (`corolla sample
--random-class --guidance G`); a model of smaller
images than the photos is upsampled to them as a cascade upsamples its layouts. Each draws
--samples images (DDIM --steps, seed --seed, the model's own eps scale unless --eps-scale is
given); beside them the floor, --samples real training photos. Each set is compared with the
held-out photos: SWD x1e3 at every pyramid level (corolla.metrics), then at the coarsest
(16 px for 64 px images) with one channel at a time, with the luminance alone, and with each
channel's histogram matched to the photos' (the part colour explains), and the variance of the
level's 7x7 patches (SWD's descriptors) along the photos' first principal directions, each as a
ratio to the photos' and named by its pattern (1: as in photos; below 1: less of it). Last, what a
viewer sees in those numbers: each set's mean colour, its share of white pixels (every channel
above 0.7) and of images a tenth white or more, and the contrast between an image's centre and its
top and bottom rows.
"""
from __future__ import annotations

import argparse
import json

import torch

from corolla import cascade, metrics
from corolla.data import imagefolder
from corolla.generation import SamplingSettings, generate, training_mix
from corolla.metrics.evaluation import quantise
from corolla.metrics.swd import PATCH, PATCHES_PER_IMAGE, _descriptors, laplacian_pyramid, swd_resolutions
from corolla.storage import checkpoint, pretrained

LUMINANCE = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")
DIRECTIONS_SHOWN = 8
WHITE = 0.7             # a pixel is white when every channel is above this
WHITE_IMAGE = 0.1       # an image is "white" when this share of its pixels is
COLOURS_MATCHED = "photos' colours"


def as_three_channels(one: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) uint8 -> (N, 3, H, W): SWD normalises each channel, so three copies score one."""
    return one.expand(-1, 3, -1, -1).contiguous()


def luminance(images: torch.Tensor) -> torch.Tensor:
    grey = (images.float() * LUMINANCE[None, :, None, None]).sum(1, keepdim=True)
    return as_three_channels(grey.round().to(torch.uint8))


def match_histograms(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each channel's values replaced by the reference's value of the same rank: the photos' colours
    in the images' layout."""
    out = torch.empty_like(images)
    for c in range(images.shape[1]):
        values = images[:, c].flatten()
        ranks = torch.argsort(torch.argsort(values, stable=True)).double() / max(len(values) - 1, 1)
        target = reference[:, c].flatten().sort().values
        out[:, c] = target[(ranks * (len(target) - 1)).round().long()].reshape(images[:, c].shape)
    return out


def coarse_descriptors(images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    level = laplacian_pyramid(images.float(), len(swd_resolutions(images.shape[-1])))[-1]
    return _descriptors(level, count, torch.Generator().manual_seed(seed))


def pattern(direction: torch.Tensor, channels: int) -> str:
    """A principal direction of 7x7 patches in words: luminance (every channel's map alike) or colour
    (some opposed), and the spatial form its channels' maps, signed alike, fit best."""
    maps = direction.reshape(channels, PATCH, PATCH)
    strongest = maps[maps.flatten(1).norm(dim=1).argmax()]
    signs = torch.where((maps * strongest).sum((1, 2)) < 0, -1.0, 1.0)
    folded = (maps * signs[:, None, None]).sum(0)
    offsets = torch.arange(PATCH, dtype=torch.float32) - PATCH // 2
    radius = offsets[:, None] ** 2 + offsets ** 2
    x, y = offsets.expand(PATCH, PATCH), offsets[:, None].expand(PATCH, PATCH)
    forms = {"flat": torch.ones(PATCH, PATCH), "left-right": x, "top-bottom": y,
             "centre-surround": radius - radius.mean(), "diagonal": x * y,
             "sides against top and bottom": x ** 2 - y ** 2}
    fit = {name: abs(float((folded * form).sum() / form.norm())) for name, form in forms.items()}
    return f"{'luminance' if bool((signs > 0).all()) else 'colour'}, {max(fit, key=fit.get)}"


def principal_variances(real: torch.Tensor, sets: dict[str, torch.Tensor], shown: int = DIRECTIONS_SHOWN,
                        channels: int = 3) -> tuple[list[str], dict[str, list[float]]]:
    """The photos' first `shown` principal directions of descriptors, named, and each set's variance
    along them as a ratio to the photos'."""
    variances, directions = torch.linalg.eigh(torch.cov(real.T.double()))
    variances, directions = variances.flip(0)[:shown], directions.flip(1)[:, :shown]
    ratios = {name: ((directions.T @ torch.cov(d.T.double()) @ directions).diag() / variances).tolist()
              for name, d in sets.items()}
    return [pattern(directions[:, i].float(), channels) for i in range(shown)], ratios


def colour_facts(images: torch.Tensor) -> dict[str, float]:
    """uint8 (N, 3, H, W) -> mean R, G, B; share of white pixels and of images at least WHITE_IMAGE
    white; mean |centre - ground| over channels, the centre the middle 3/8 of each side and the
    ground the top and bottom eighths (a flower on a contrasting ground scores high)."""
    x = images.float() / 255
    size = x.shape[-1]
    white = (x.min(dim=1).values > WHITE).float().mean(dim=(1, 2))
    lo, hi, edge = 5 * size // 16, 11 * size // 16, size // 8
    centre = x[:, :, lo:hi, lo:hi].mean(dim=(2, 3))
    ground = torch.cat([x[:, :, :edge], x[:, :, -edge:]], dim=2).mean(dim=(2, 3))
    mean = x.mean(dim=(0, 2, 3)).tolist()
    return {"red": mean[0], "green": mean[1], "blue": mean[2], "white pixels": float(white.mean()),
            "white images": float((white >= WHITE_IMAGE).float().mean()),
            "centre-ground contrast": float((centre - ground).abs().mean())}


def coarse_swd(heldout: torch.Tensor, images: torch.Tensor, seed: int) -> dict[str, float]:
    coarsest = swd_resolutions(images.shape[-1])[-1]
    swd = lambda a, b: metrics.sliced_wasserstein(a, b, seed=seed)[coarsest]
    return {"all": swd(heldout, images),
            **{f"channel {c}": swd(as_three_channels(heldout[:, c:c + 1]), as_three_channels(images[:, c:c + 1]))
               for c in range(images.shape[1])},
            "luminance": swd(luminance(heldout), luminance(images)),
            COLOURS_MATCHED: swd(heldout, match_histograms(images, heldout))}


def report(heldout: torch.Tensor, sets: dict[str, torch.Tensor], seed: int) -> dict:
    """Every figure the docstring names, for each set of uint8 images against `heldout`."""
    count = PATCHES_PER_IMAGE * min(len(images) for images in sets.values())
    real = coarse_descriptors(heldout, count, seed)
    names, ratios = principal_variances(real, {name: coarse_descriptors(images, count, seed)
                                               for name, images in sets.items()}, channels=heldout.shape[1])
    return {"directions": names,
            "sets": {name: {"swd": metrics.sliced_wasserstein(heldout, images, seed=seed),
                            "coarse": coarse_swd(heldout, images, seed), "variance_ratios": ratios[name],
                            "colour": colour_facts(images)}
                     for name, images in sets.items()},
            "photos' colour": colour_facts(heldout)}


def sample(spec: str, count: int, settings: SamplingSettings, precision: str, size: int = 64) -> torch.Tensor:
    """uint8 images of MODEL, MODEL+LAYOUT (the cascade), either with @G (the training mix of classes
    at guidance G), upsampled to `size` where smaller."""
    spec, _, guidance = spec.partition("@")
    name, _, layout = spec.partition("+")
    cpu = torch.device("cpu")
    model, config = checkpoint.load_for_sampling(pretrained.path(name) if name in pretrained.names() else name,
                                                 cpu, precision)
    first = cascade.load(layout, model, config.data.image_size, cpu, precision) if layout else None
    mix = training_mix(model, config.data.class_counts, first) if guidance else None
    images = generate(model, count, settings, image_size=config.data.image_size, classes=mix,
                      guidance=float(guidance) if guidance else 1.0, layout=first)
    return quantise(cascade.upsample(images, size) if images.shape[-1] < size else images)


def models_against_photos(description: str) -> argparse.ArgumentParser:
    """The arguments of a script that samples MODELs as `sample` does and scores them against photos."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--train", required=True)
    p.add_argument("--heldout", required=True)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps-scale", type=float, help="every model's epsilon scale (default: each model's own)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--json")
    return p


def main() -> None:
    args = models_against_photos(__doc__.splitlines()[0]).parse_args()
    heldout, _ = imagefolder.load_folder(args.heldout, 64)
    train, _ = imagefolder.load_folder(args.train, 64)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed + 1))[:args.samples]
    settings = SamplingSettings(steps=args.steps, seed=args.seed, eps_scale=args.eps_scale)
    sets = {"training photos (floor)": train[pick],
            **{spec: sample(spec, args.samples, settings, args.precision) for spec in args.models}}
    result = report(heldout, sets, args.seed)
    print(f"{args.samples} images each against {len(heldout)} held-out photos; DDIM {args.steps} steps, seed "
          f"{args.seed}, {args.precision}, eps scale {args.eps_scale or 'of each model'}")
    print("| images | SWD x1e3 by level | coarsest: all | R / G / B alone | luminance | photos' colours |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for name, row in result["sets"].items():
        c = row["coarse"]
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in row['swd'].values())} | {c['all']:.1f} | "
              f"{c['channel 0']:.1f} / {c['channel 1']:.1f} / {c['channel 2']:.1f} | {c['luminance']:.1f} | "
              f"{c[COLOURS_MATCHED]:.1f} |")
    print("\nvariance along the photos' principal directions of coarse patches, as a ratio to the photos'")
    print("| direction | " + " | ".join(result["sets"]) + " |\n| --- |" + " --- |" * len(result["sets"]))
    for i, direction in enumerate(result["directions"]):
        print(f"| {i + 1}: {direction} | " + " | ".join(f"{row['variance_ratios'][i]:.2f}"
                                                         for row in result["sets"].values()) + " |")
    print("\nwhat a viewer sees: mean colour, white pixels, images a tenth white, centre against ground")
    print("| images | R / G / B | white pixels | white images | centre-ground contrast |\n"
          "| --- | --- | --- | --- | --- |")
    for name, facts in {"held-out photos": result["photos' colour"],
                        **{name: row["colour"] for name, row in result["sets"].items()}}.items():
        print(f"| {name} | {facts['red']:.3f} / {facts['green']:.3f} / {facts['blue']:.3f} | "
              f"{facts['white pixels']:.3f} | {facts['white images']:.3f} | {facts['centre-ground contrast']:.3f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**vars(args), **result}, out, indent=2)


if __name__ == "__main__":
    main()
