"""`corolla models`: the shipped models, chosen elsewhere with --model NAME."""
from __future__ import annotations

from ..storage import pretrained


def register(sub) -> None:
    p = sub.add_parser("models", help="list the shipped models (use one with --model NAME)")
    p.set_defaults(func=run_models)


def models_table(rows: list[dict]) -> str:
    header = ("name", "resolution", "classes", "steps", "images seen", "size", "data")
    lines = [[f"{r['name']}{' (default)' if r['default'] else ''}", f"{r['image_size']}x{r['image_size']}",
              f"{r['classes']}" if r["classes"] else "-",
              f"{r['steps']:,}" if r["steps"] is not None else "?",
              f"{r['images_seen']:,}" if r["images_seen"] is not None else "?",
              f"{r['bytes'] / 2 ** 20:.1f} MB", r["data"] or "?"] for r in rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                     for row in [header, *lines])


def run_models(args) -> int:
    print(models_table([pretrained.describe(name) for name in pretrained.names()]))
    return 0
