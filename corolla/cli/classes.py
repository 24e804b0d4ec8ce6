"""A class-conditional model's classes: `corolla classes` lists them as sample --class takes them,
`corolla class-grid` draws a figure of them (one labelled row per class)."""
from __future__ import annotations

from .. import conditioning
from ..config import Config
from ..storage import checkpoint, outputs
from .options import (
    add_layout,
    add_model_options,
    add_out,
    add_sampling,
    checkpoint_path,
    eps_scale_note,
    guidance,
    layout_for,
    layout_request,
    load_model_for,
    path_text,
    sampling_settings,
    whole_number,
)

GRID_CLASSES = 8  # rows of class-grid when no --class is given


def register(sub) -> None:
    p = sub.add_parser("classes", help="list the classes of a class-conditional model (for sample --class)")
    p.add_argument("checkpoint", nargs="?", type=path_text,
                   help="checkpoint folder or run folder (default: the shipped conditional model)")
    p.add_argument("--model", metavar="NAME", help="a shipped model by name (`corolla models` lists them)")
    p.set_defaults(func=run_classes, lists_classes=True)

    p = sub.add_parser("class-grid", help="a figure of a class-conditional model: one row per class, named, "
                                          "the same seeds in every row")
    add_model_options(p)
    p.add_argument("--class", dest="classes", action="append", metavar="CLASS",
                   help=f"a class by name or number, one row each (default: {GRID_CLASSES} spread over the list)")
    p.add_argument("-n", "--num-images", type=whole_number(1, 32), default=8, help="images per row (default 8)")
    p.add_argument("--guidance", type=guidance, default=conditioning.DEFAULT_GUIDANCE,
                   help=f"classifier-free guidance (default {conditioning.DEFAULT_GUIDANCE:g})")
    add_sampling(p, ("steps", "seed", "eps_scale"), steps="DDIM steps")
    add_layout(p)
    add_out(p, "classes.png", "PNG to write")
    p.set_defaults(func=run_class_grid, lists_classes=True)


def class_table(config: Config) -> str:
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
    print(class_table(config))
    return 0


def spread(count: int, rows: int = GRID_CLASSES) -> list[int]:
    """`rows` class numbers evenly spread over 0..count-1 (all of them when there are fewer)."""
    return [i * count // rows for i in range(rows)] if count > rows else list(range(count))


def run_class_grid(args) -> int:
    import torch

    from .. import cascade
    from ..figures import save_labelled_grid
    from ..generation import class_labels, generate
    layout_request(args)
    out = outputs.check_file(args.out, "--out")  # before the sampling it would waste
    model, config, device = load_model_for(args)
    layout = layout_for(args, model, config, device)
    classed = cascade.classed(model, layout)  # the stage that knows the classes
    names = classed.network.config.classes
    if not names:
        raise ValueError(f"{checkpoint_path(args)} is not class-conditional (it was trained without --conditional): "
                         f"it has no classes to draw")
    numbers = [class_labels(classed, name, 1) for name in args.classes] if args.classes else spread(len(names))
    # row r is class numbers[r]; column j starts from image j's noise of the seed in every row
    rows = [generate(model, args.num_images, sampling_settings(args), image_size=config.data.image_size,
                     classes=number, guidance=args.guidance, layout=layout) for number in numbers]
    title = f"guidance {args.guidance:g}, {args.steps} DDIM steps, seed {args.seed}" + (
        eps_scale_note(model, args.eps_scale) if layout is None else
        f", layout {layout.source} from t = {layout.start:g}, eps scale "
        f"{model.handover_scale(args.eps_scale):g}")
    print(save_labelled_grid(torch.stack(rows), out, row_labels=[names[n] for n in numbers], title=title))
    return 0
