"""Which recipe changes learn more per image? Train with each candidate for the same number of
images, with several seeds, and score every run the same way.

    python benchmarks/recipe_study.py --train DATA/train --heldout DATA/heldout [--source flowers64]
        [--size 32] [--images 32000] [--seeds 1,2] [--variants reference,hflip,cooldown,anneal,min_snr5,batch16]
        [--samples 512] [--warmup-images 12800] [--compile] [--out runs/recipe_study]
    python benchmarks/recipe_study.py --merge STUDY1/results.json STUDY2/results.json

Each run is `corolla train DATA/train --val-data DATA/heldout --preset seed64 --repetitions 2
--seed S` plus the variant's options, stopped after --images images (the steps follow from its
batch size, so batch 16 takes 4x the steps of batch 64). With a --source model every run
continues it (`--init-from SOURCE`; the warm-up covers the same images in every variant,
--warmup-images, by default the 200 steps at batch 64 of `--init-from`; shorten it so that a short
study is not mostly warm-up);
`--source scratch` starts from random weights at --size pixels instead (the reference network
at 32 px costs a quarter per image; the EMA warms up, as short runs need). Each run is then
scored by `corolla evaluate` (denoising loss on the held-out images; SWD of --samples images x
20 DDIM steps against the training images). A change wins when it beats the reference in both figures for
every seed by more than the seeds' spread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from corolla import config as configs
from corolla.metrics import EvalSettings, evaluate_checkpoint
from corolla.training import train

VARIANTS = ("reference", "hflip", "cooldown", "anneal", "min_snr5", "batch16")
WARMUP_IMAGES = configs.WARM_START_LR_WARMUP * 64  # the warm start's default warm-up at batch 64


def variant_changes(name: str, images: int, warm_start: bool, warmup_images: int = WARMUP_IMAGES) -> dict:
    """The train config changes of a candidate, for a run of `images` images (of which the first
    `warmup_images` warm the learning rate up when continuing a model)."""
    batch = 16 if name == "batch16" else 64
    steps = images // batch
    warmup = max(1, warmup_images // batch) if warm_start else 0
    # anneal: the whole run after the warm-up decays to 0, for a model already converged at lr
    changes = {"reference": {}, "hflip": {"hflip": True}, "cooldown": {"lr_cooldown": steps // 4},
               "anneal": {"lr_cooldown": max(1, steps - warmup)},
               "min_snr5": {"min_snr_gamma": 5.0}, "batch16": {"batch_size": 16}}
    if name not in changes:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(changes)}")
    start = {"lr_warmup": warmup} if warm_start else {"lr_warmup": 0, "ema_warmup": True}
    return {**changes[name], **start, "epochs": 10 ** 6}


def verdicts(rows: list[dict]) -> dict[str, str]:
    """variant -> "wins" / "loses" / "even" against the reference, seed by seed on held-out loss
    and mean SWD, by more than the larger of the two variants' seed spreads; no verdict on one seed,
    which has no spread to judge by."""
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    out = {}
    for name, runs in by.items():
        if name == "reference" or "reference" not in by:
            continue
        if min(len(runs), len(by["reference"])) < 2:
            out[name] = "no verdict (one seed)"
            continue
        verdict = set()
        for key in ("heldout_loss", "swd"):
            spread = max(max(x[key] for x in group) - min(x[key] for x in group) for group in (runs, by["reference"]))
            ref = {r["seed"]: r[key] for r in by["reference"]}
            gaps = [ref[r["seed"]] - r[key] for r in runs if r["seed"] in ref]
            verdict.add("wins" if gaps and min(gaps) > spread else "loses" if gaps and max(gaps) < -spread else "even")
        out[name] = verdict.pop() if len(verdict) == 1 else "even"
    return out


def report(rows: list[dict]) -> None:
    """The Markdown table of every run and each variant's verdict."""
    resolutions = sorted((int(k[4:]) for k in rows[0] if k.startswith("swd_")), reverse=True)
    columns = " / ".join(f"{s} px" for s in resolutions)
    print(f"| variant | seed | training time (s) | held-out loss | SWD x1e3 ({columns}) |")
    print("| --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (VARIANTS.index(r["variant"]), r["seed"])):
        swd = " / ".join(f"{r[f'swd_{s}']:.1f}" for s in resolutions)
        print(f"| {r['variant']} | {r['seed']} | {r['train_seconds']:.0f} | {r['heldout_loss']:.4f} | {swd} |")
    for name, verdict in verdicts(rows).items():
        print(f"{name}: {verdict}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train")
    p.add_argument("--heldout")
    p.add_argument("--source", default="flowers64", help="the model every run continues, or 'scratch'")
    p.add_argument("--size", type=int, default=64, help="image size of runs from scratch")
    p.add_argument("--images", type=int, default=32_000)
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--warmup-images", type=int, default=WARMUP_IMAGES,
                   help="images of learning-rate warm-up when continuing a model")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (same maths)")
    p.add_argument("--out", default="runs/recipe_study")
    p.add_argument("--merge", nargs="+", metavar="RESULTS",
                   help="only report the results.json of studies run apart (say, one process per seed)")
    args = p.parse_args()
    if args.merge:
        return report([row for path in args.merge for row in json.loads(Path(path).read_text())])
    if not (args.train and args.heldout):
        p.error("--train and --heldout are required to run a study")
    scratch = args.source == "scratch"
    if not scratch and args.size != 64:
        p.error("--size applies to --source scratch; a continued model keeps its 64 px")
    if not scratch and not 0 < args.warmup_images < args.images:
        p.error(f"--warmup-images must be at least 1 and below --images ({args.images})")
    settings = EvalSettings(samples=args.samples, steps=20)
    rows = []
    for name in args.variants.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            changes = {**variant_changes(name, args.images, not scratch, args.warmup_images),
                       "seed": seed, "compile": args.compile}
            config = configs.preset("seed64").replace(data={"repetitions": 2, "val_fraction": 0.0,
                                                            "image_size": args.size}, train=changes)
            run = Path(args.out) / f"{name}-seed{seed}"
            start = time.perf_counter()
            train(config, args.train, run, progress=False, max_steps=args.images // config.train.batch_size,
                  log=lambda *_: None, overwrite=True, val_dir=args.heldout,
                  init_from=None if scratch else args.source)
            seconds = time.perf_counter() - start
            r = evaluate_checkpoint(run, args.train, settings, heldout_dir=args.heldout)
            rows.append({"variant": name, "seed": seed, "train_seconds": seconds, "heldout_loss": r["heldout_loss"],
                         **{k: r[k] for k in r if k.startswith("swd")}})
            print(f"  {name} seed {seed}: {seconds:.0f} s, held-out loss {r['heldout_loss']:.4f}, "
                  f"SWD {r['swd']:.1f}", flush=True)
            (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'from scratch at ' + str(args.size) + ' px' if scratch else 'from ' + args.source}, "
          f"{args.images:,} images per run; {args.samples} samples x 20 DDIM steps vs {args.heldout}")
    report(rows)

if __name__ == "__main__":
    main()
