"""Does bfloat16 training lose quality? Train the same preset for a fixed number of steps in float32
and in bfloat16 with several seeds, then score every run the same way.

    python benchmarks/precision_quality.py [DATA_DIR] [--preset demo] [--steps 500] [--seeds 0,1]
        [--heldout DIR] [--samples 256] [--out runs/precision_quality]

Each run is `corolla train --preset PRESET --max-steps STEPS --precision P --seed S` (no DATA_DIR:
the bundled flowers); each is then scored in float32 by `corolla evaluate` (held-out denoising
loss, SWD of --samples images): the precision of training is the only difference. bfloat16 keeps
the quality when its figures lie within the float32 seeds' spread. Prints a table and the spreads.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from corolla import config as configs
from corolla.metrics import EvalSettings, evaluate_checkpoint
from corolla.training import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", nargs="?")
    p.add_argument("--preset", default="demo", choices=sorted(configs.PRESETS))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--heldout", help="held-out images to score against (default: the preset's split)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--out", default="runs/precision_quality")
    args = p.parse_args()
    settings = EvalSettings(samples=args.samples, steps=20)
    rows = []
    for precision in args.precisions.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            run = Path(args.out) / f"{precision}-seed{seed}"
            config = configs.preset(args.preset).replace(train={"precision": precision, "seed": seed,
                                                                "epochs": 10 ** 6})
            start = time.perf_counter()
            train(config, args.data_dir, run, progress=False, max_steps=args.steps, log=lambda *_: None,
                  overwrite=True)
            seconds = time.perf_counter() - start
            r = evaluate_checkpoint(run, args.data_dir, settings, precision="fp32", heldout_dir=args.heldout)
            rows.append({"precision": precision, "seed": seed, "train_seconds": seconds,
                         "heldout_loss": r["heldout_loss"], "swd": r["swd"]})
            print(f"  {precision} seed {seed}: {seconds:.0f} s, held-out loss {r['heldout_loss']:.4f}, "
                  f"SWD {r['swd']:.1f}", flush=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{args.preset}, {args.steps} steps, scored in float32 on {args.samples} samples x 20 DDIM steps")
    print("| precision | seed | training time (s) | held-out loss | SWD x1e3 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['precision']} | {r['seed']} | {r['train_seconds']:.0f} | {r['heldout_loss']:.4f} "
              f"| {r['swd']:.1f} |")
    for precision in args.precisions.split(","):
        mine = [r for r in rows if r["precision"] == precision]
        for key in ("heldout_loss", "swd"):
            values = [r[key] for r in mine]
            print(f"{precision} {key}: {min(values):.4f} .. {max(values):.4f}")


if __name__ == "__main__":
    main()
