"""How far an SWD ratio to the real-image floor depends on the number of images scored.

    python benchmarks/swd_sample_size.py --train DIR --heldout DIR MODEL [MODEL ...] [--samples 1024]
        [--sizes 256,512,1024] [--steps 20] [--seed 0] [--eps-scale S] [--precision bf16] [--json OUT]

MODEL: a shipped model's name or a checkpoint (sampled as `coarse_structure.py` samples: DDIM
--steps, seed --seed, each model's own eps scale unless --eps-scale is given). Each model draws
--samples images once; for every size n in --sizes it is scored two ways against the held-out
photos, each beside its floor (n real training photos against the same held-out photos):
- as `corolla evaluate --samples n` and `model_card.py --samples n` score it: its first n images
  (the images a run of n draws), the floor's n photos picked with --seed, SWD with --seed;
- over the --samples / n disjoint sets of n images, each with its own n training photos as its
  floor and its own SWD seed: the mean of the ratios and their range, the spread any single
  n-image score carries.
The floor is mostly the noise of a finite sample, so it falls as n grows faster than a model's
distance, which has a bias of its own: the ratio grows with n.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from corolla import metrics
from corolla.data import imagefolder
from corolla.generation import SamplingSettings

sys.path.insert(0, str(Path(__file__).parent))
from coarse_structure import models_against_photos, sample  # noqa: E402  (a sibling script)
from model_card import floor_pick  # noqa: E402


def swd(heldout: torch.Tensor, images: torch.Tensor, seed: int) -> list[float]:
    return list(metrics.sliced_wasserstein(heldout, images, seed=seed).values())


def ratios(model: list[float], floor: list[float]) -> list[float]:
    return [m / f for m, f in zip(model, floor)]


def score(heldout: torch.Tensor, train: torch.Tensor, sets: dict[str, torch.Tensor], n: int, seed: int) -> dict:
    """One size n: the first-n scores with the card's floor, and the disjoint sets' ratios."""
    card_floor = swd(heldout, train[floor_pick(train.shape[0], n, seed)], seed)
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    subsets = min(len(images) for images in sets.values()) // n
    floors = [swd(heldout, train[order[i * n:(i + 1) * n]], seed + i) for i in range(subsets)]
    out = {"floor": card_floor, "models": {}}
    for name, images in sets.items():
        first = swd(heldout, images[:n], seed)
        spread = [ratios(swd(heldout, images[i * n:(i + 1) * n], seed + i), floors[i]) for i in range(subsets)]
        out["models"][name] = {"swd": first, "ratio": ratios(first, card_floor), "subset_ratios": spread}
    return out


def main() -> None:
    p = models_against_photos(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,512,1024")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip().isdigit()]
    if len(sizes) != len(args.sizes.split(",")) or min(sizes) < 1 or max(sizes) > args.samples:
        p.error(f"--sizes: whole numbers from 1 to --samples ({args.samples}), got {args.sizes}")
    heldout, _ = imagefolder.load_folder(args.heldout, 64)
    train, _ = imagefolder.load_folder(args.train, 64)
    settings = SamplingSettings(steps=args.steps, seed=args.seed, eps_scale=args.eps_scale)
    sets = {spec: sample(spec, args.samples, settings, args.precision) for spec in args.models}
    result = {n: score(heldout, train, sets, n, args.seed) for n in sizes}
    print(f"against {len(heldout)} held-out photos; DDIM {args.steps} steps, seed {args.seed}, {args.precision}, "
          f"eps scale {args.eps_scale or 'of each model'}")
    print("| images | set | SWD x1e3 64 / 32 / 16 px, first n | ratio to the floor | coarsest level's ratio over "
          "disjoint sets: mean (range) |\n| --- | --- | --- | --- | --- |")
    for n, row in result.items():
        print(f"| {n:,} | floor | {' / '.join(f'{v:.1f}' for v in row['floor'])} | | |")
        for name, m in row["models"].items():
            coarse = [r[-1] for r in m["subset_ratios"]]
            print(f"| {n:,} | {name} | {' / '.join(f'{v:.1f}' for v in m['swd'])} | "
                  f"{' / '.join(f'{v:.2f}' for v in m['ratio'])} | {sum(coarse) / len(coarse):.2f} "
                  f"({min(coarse):.2f}-{max(coarse):.2f}, {len(coarse)} sets) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "sizes": result}, indent=1))


if __name__ == "__main__":
    main()
