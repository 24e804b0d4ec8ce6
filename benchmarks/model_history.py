"""A shipped model's training history: one row per stint in its card.json, the card's table and figure.

    python benchmarks/model_history.py add MODEL_DIR --date 2026-12-04 --machine "2-core AMD EPYC (AVX2)" \
        --precision fp32 --recipe "seed64, --init-from flowers64, ..." --steps 1500 --wall-min 120 \
        --scores model_card.json [--scores-key flowers64] [--images-per-step 64]
        [--restarted-from STEPS]
    python benchmarks/model_history.py show MODEL_DIR      # the Markdown table; draws MODEL_DIR/history.png

`add` appends a stint: its own steps and images, the running totals, and the figures of
`benchmarks/model_card.py --json` (SWD x1e3 at 64/32/16 px against the training photos, as
`corolla evaluate` scores it, and the held-out loss of the weights the stint ended with), and sets
the card's `steps` and `images_seen` to the totals. Both print the history table, write it into the
model's README between the lines `<!-- history -->` and `<!-- /history -->`, and plot held-out loss
and SWD against cumulative images (history.png).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SCALES = (64, 32, 16)
BEGIN, END = "<!-- history -->", "<!-- /history -->"


def read_card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def base_of(row: dict, previous: dict | None) -> dict:
    """The totals a stint adds to: its own `restarted_from` (a stint that started again from
    another model counts that model's steps), else the previous stint's, else none."""
    return row.get("restarted_from") or previous or {"cumulative_steps": 0, "cumulative_images": 0}


def add_stint(card: dict, row: dict) -> dict:
    """card with row appended: cumulative steps and images carried on from base_of(row)."""
    history = card.get("history", [])
    base = base_of(row, history[-1] if history else None)
    row = {**row, "cumulative_steps": base["cumulative_steps"] + row["steps"],
           "cumulative_images": base["cumulative_images"] + row["images"]}
    return {**card, "history": history + [row], "steps": row["cumulative_steps"],
            "images_seen": row["cumulative_images"]}


def scores_from(path: Path, key: str | None) -> dict:
    models = json.loads(path.read_text())["models"]
    result = models[key] if key else next(iter(models.values()))
    return {"heldout_loss": result["heldout_loss"], **{f"swd_{s}": result.get(f"swd_{s}") for s in SCALES}}


def _number(value, form: str) -> str:
    return "-" if value is None else format(value, form)


def table(history: list[dict]) -> str:
    lines = ["| stint | date | machine | precision | steps | cumulative steps | cumulative images | wall time "
             "| held-out loss | SWD x1e3 64 / 32 / 16 px |", "| --- " * 10 + "|"]
    for i, r in enumerate(history, 1):
        swd = " / ".join(_number(r.get(f"swd_{s}"), ".1f") for s in SCALES)
        lines.append(f"| {i} | {r['date']} | {r['machine']} | {r['precision']} | {r['steps']:,} | "
                     f"{r['cumulative_steps']:,} | {r['cumulative_images']:,} | {r['wall_min'] // 60} h "
                     f"{r['wall_min'] % 60:02d} min | {_number(r.get('heldout_loss'), '.4f')} | {swd} |")
    lines += ["", "Recipes:"] + [f"{i}. {r['recipe']}" for i, r in enumerate(history, 1)]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """text with what lies between the history markers replaced by block."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + "\n" + text[end:]


def figure(history: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    images = [r["cumulative_images"] for r in history]
    fig, (loss_ax, swd_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(images, [r.get("heldout_loss") for r in history], "o-")
    loss_ax.set(title="held-out loss (L1 noise)", xlabel="cumulative images seen")
    for scale in SCALES:
        swd_ax.plot(images, [r.get(f"swd_{scale}") for r in history], "o-", label=f"{scale} px")
    swd_ax.set(title="SWD x1e3 to the training photos", xlabel="cumulative images seen")
    swd_ax.legend()
    for ax in (loss_ax, swd_ax):
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add")
    add.add_argument("model", type=Path)
    for name in ("date", "machine", "precision", "recipe"):
        add.add_argument(f"--{name}", required=True)
    add.add_argument("--steps", type=int, required=True)
    add.add_argument("--images-per-step", type=int, default=64)
    add.add_argument("--wall-min", type=int, required=True)
    add.add_argument("--scores", type=Path, help="benchmarks/model_card.py --json output for the stint's weights")
    add.add_argument("--scores-key", help="the model's key in it (default: the first)")
    add.add_argument("--restarted-from", type=int, metavar="STEPS",
                     help="the stint started again from another model (named in --recipe) that had had STEPS "
                          "steps: the totals count those instead of the previous stint's")
    show = sub.add_parser("show")
    show.add_argument("model", type=Path)
    args = p.parse_args()
    card = read_card(args.model)
    if args.command == "add":
        row = {"date": args.date, "machine": args.machine, "precision": args.precision, "recipe": args.recipe,
               "steps": args.steps, "images": args.steps * args.images_per_step, "wall_min": args.wall_min,
               **(scores_from(args.scores, args.scores_key) if args.scores else {})}
        if args.restarted_from is not None:
            row["restarted_from"] = {"cumulative_steps": args.restarted_from,
                                     "cumulative_images": args.restarted_from * args.images_per_step}
        card = add_stint(card, row)
        (args.model / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    history = card.get("history", [])
    print(table(history))
    readme = args.model / "README.md"
    readme.write_text(replace_block(readme.read_text(), table(history)))
    if any(r.get("heldout_loss") is not None for r in history):  # else nothing to plot yet
        figure(history, args.model / "history.png")
        print(f"\nwrote {args.model / 'history.png'}")


if __name__ == "__main__":
    main()
