"""Which recipe changes learn more per image? Continue a trained model with each candidate for the
same number of images, with several seeds, and score every run the same way.

    python benchmarks/recipe_study.py --train DATA/train --heldout DATA/heldout [--source flowers64]
        [--images 32000] [--seeds 1,2] [--variants reference,hflip,cooldown,min_snr5,batch16]
        [--samples 512] [--out runs/recipe_study]

Each run is `corolla train DATA/train --val-data DATA/heldout --init-from SOURCE --preset seed64
--repetitions 2 --seed S` plus the variant's options, stopped after --images images (the steps
follow from its batch size, so batch 16 takes 4x the steps of batch 64; the learning-rate warm-up
covers the same images in every variant). Each is then scored by `corolla evaluate` against the
held-out images (held-out denoising loss; SWD of --samples images x 20 DDIM steps). A change wins
when it beats the reference in both figures for every seed by more than the seeds' spread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from corolla import config as configs
from corolla.metrics import EvalSettings, evaluate_checkpoint
from corolla.training import train

WARMUP_IMAGES = configs.WARM_START_LR_WARMUP * 64  # the warm start's default warm-up at batch 64


def variant_changes(name: str, images: int) -> dict:
    """The train config changes of a candidate, for a run of `images` images."""
    batch = 16 if name == "batch16" else 64
    steps = images // batch
    changes = {"reference": {}, "hflip": {"hflip": True}, "cooldown": {"lr_cooldown": steps // 4},
               "min_snr5": {"min_snr_gamma": 5.0}, "batch16": {"batch_size": 16}}
    if name not in changes:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(changes)}")
    return {**changes[name], "lr_warmup": WARMUP_IMAGES // batch, "epochs": 10 ** 6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--heldout", required=True)
    p.add_argument("--source", default="flowers64", help="the model every run starts from")
    p.add_argument("--images", type=int, default=32_000)
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--variants", default="reference,hflip,cooldown,min_snr5,batch16")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--out", default="runs/recipe_study")
    args = p.parse_args()
    settings = EvalSettings(samples=args.samples, steps=20)
    rows = []
    for name in args.variants.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            changes = {**variant_changes(name, args.images), "seed": seed}
            config = configs.preset("seed64").replace(data={"repetitions": 2, "val_fraction": 0.0}, train=changes)
            run = Path(args.out) / f"{name}-seed{seed}"
            start = time.perf_counter()
            train(config, args.train, run, progress=False, max_steps=args.images // config.train.batch_size,
                  log=lambda *_: None, overwrite=True, val_dir=args.heldout, init_from=args.source)
            seconds = time.perf_counter() - start
            r = evaluate_checkpoint(run, args.train, settings, heldout_dir=args.heldout)
            rows.append({"variant": name, "seed": seed, "train_seconds": seconds, "heldout_loss": r["heldout_loss"],
                         **{k: r[k] for k in r if k.startswith("swd")}})
            print(f"  {name} seed {seed}: {seconds:.0f} s, held-out loss {r['heldout_loss']:.4f}, "
                  f"SWD {r['swd']:.1f}", flush=True)
            (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nfrom {args.source}, {args.images:,} images per run; {args.samples} samples x 20 DDIM steps vs "
          f"{args.heldout}")
    print("| variant | seed | training time (s) | held-out loss | SWD x1e3 (64 / 32 / 16 px) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        swd = " / ".join(f"{r.get(f'swd_{s}', float('nan')):.1f}" for s in (64, 32, 16))
        print(f"| {r['variant']} | {r['seed']} | {r['train_seconds']:.0f} | {r['heldout_loss']:.4f} | {swd} |")


if __name__ == "__main__":
    main()
