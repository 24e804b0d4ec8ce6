"""`corolla classes [CHECKPOINT | --model NAME]`: a class-conditional model's classes, as sample --class takes them."""
from __future__ import annotations

from . import checkpoint
from .cli import checkpoint_path, path_text
from .config import Config


def register(sub) -> None:
    p = sub.add_parser("classes", help="list the classes of a class-conditional model (for sample --class)")
    p.add_argument("checkpoint", nargs="?", type=path_text,
                   help="checkpoint folder or run folder (default: the shipped model)")
    p.add_argument("--model", metavar="NAME", help="a shipped model by name (`corolla models` lists them)")
    p.set_defaults(func=run_classes)


def format_table(config: Config) -> str:
    """One line per class: its number, name and training images, then the totals."""
    classes, counts = config.unet.classes, config.data.class_counts
    rows = [("number", "name", "training images")]
    rows += [(str(i), name, f"{counts[i]:,}" if counts else "?") for i, name in enumerate(classes)]
    number_width, name_width = (max(len(row[k]) for row in rows) for k in (0, 1))
    lines = [f"{n:>{number_width}}  {name:<{name_width}}  {images}" for n, name, images in rows]
    total = f", {sum(counts):,} training images" if counts else ""
    lines.append(f"{len(classes)} classes{total}; sample one with --class NAME or --class NUMBER")
    return "\n".join(lines)


def run_classes(args) -> int:
    folder = checkpoint.resolve(checkpoint_path(args))
    config = checkpoint.load_config(folder)
    if not config.unet.classes:
        raise ValueError(f"{folder} is not class-conditional (it was trained without --conditional): it has no "
                         f"classes; sample it without --class")
    print(format_table(config))
    return 0
