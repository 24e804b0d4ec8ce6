"""What a warm start costs: the held-out loss of the source model just before a restart, beside the
per-epoch validation losses of the run started from it (`corolla train --init-from`).

    python benchmarks/restart_cost.py RUN [--source MODEL] [--json OUT]

The source's loss is computed exactly as the run computes its per-epoch validation loss
(corolla.training.validation_loss: the EMA network, the run's held-out images, noise and times from
the run's seed, its precision and layout), so the first row and the run's rows differ only by
what training changed. RUN's state.json names the source and the held-out folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from corolla.data import imagefolder
from corolla.storage import checkpoint
from corolla.training import validation_loss
from corolla.warmstart import source_path


def source_loss(source: str, val_dir: str, run_config) -> float:
    model, _ = checkpoint.load_model(source_path(source), "cpu")
    model.accelerate(channels_last=run_config.train.channels_last, precision=run_config.train.precision)
    images, _ = imagefolder.load_folder(val_dir, run_config.data.image_size, run_config.data.crop)
    return validation_loss(model, images, run_config.train.batch_size, run_config.train.seed, torch.device("cpu"))


def run_losses(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("val_loss") is not None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder started with --init-from and --val-data")
    p.add_argument("--source", help="the model it started from (default: the one its state.json names)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    state = checkpoint.load_state(args.run)
    config = checkpoint.load_config(checkpoint.resolve(args.run))
    source = args.source or state["init_from"]
    if not source or not state.get("val_dir"):
        raise SystemExit(f"{args.run}: not a run started with --init-from and --val-data")
    before = source_loss(source, state["val_dir"], config)
    rows = [{"step": 0, "val_loss": before}] + [{"step": r["step"], "val_loss": r["val_loss"]}
                                                for r in run_losses(args.run)]
    print(f"source {source}; learning-rate warm-up {config.train.lr_warmup} steps\n")
    print("| step after the restart | held-out loss | change |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['step']:,} | {row['val_loss']:.4f} | {row['val_loss'] - before:+.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"source": source, "lr_warmup": config.train.lr_warmup, "rows": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
