"""`corolla sample`: images from a model, as one grid, one PNG each, or one row per class."""
from __future__ import annotations

from pathlib import Path

from .. import conditioning, distributed, limits
from ..portable import folder
from ..storage import outputs
from .options import (
    add_layout,
    add_model_options,
    add_out,
    add_progress,
    add_sampling,
    checkpoint_path,
    guidance,
    layout_for,
    layout_request,
    load_model_for,
    path_text,
    sampling_settings,
    whole_number,
)


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a checkpoint")
    add_model_options(p)
    p.add_argument("-n", "--num-images", type=whole_number(1, limits.MAX_IMAGES), default=64,
                   help="images to make (a grid holds them all in memory; --each alone streams them)")
    add_sampling(p)
    add_out(p, None, "grid PNG to write (default samples.png; none with --each alone)")
    p.add_argument("--each", metavar="DIR", type=path_text,
                   help="write one PNG per image into DIR, each as soon as its batch is made")
    p.add_argument("--class", dest="classes", action="append", metavar="CLASS",
                   help="a class of a conditional model, by name or number (`corolla classes` lists them); "
                        "repeat for one row of -n images each; none: unconditional. Without a checkpoint or "
                        "--model: the shipped conditional model")
    p.add_argument("--random-class", action="store_true",
                   help="draw each image's class of a conditional model at random, in proportion to its training "
                        "images of each class (the data set's mix; image i's class depends only on the seed and "
                        "i); without a checkpoint or --model: the shipped conditional model")
    p.add_argument("--guidance", type=guidance,
                   help="with --class or --random-class: classifier-free guidance, 0 unconditional, 1 the "
                        "conditional model, more follows the class more closely at the cost of variety "
                        f"(default {conditioning.DEFAULT_GUIDANCE:g})")
    add_layout(p)
    add_progress(p)
    p.set_defaults(func=run_sample)


HELD_WHY = "-n (a grid holds every image; --each DIR without --out writes them one batch at a time)"


def _checked_request(args):
    """-> (grid file or None, --each folder or None), every output checked before any work (an
    unwritable one must not cost the sampling), --guidance only with --class or --random-class, and
    --layout's options."""
    if args.classes and args.random_class:
        raise ValueError("--class and --random-class both choose the classes: give one of them")
    if args.guidance is not None and not (args.classes or args.random_class):
        raise ValueError("--guidance needs --class or --random-class: without a class the model samples "
                         "unconditionally")
    layout_request(args)
    grid = outputs.check_file(args.out or "samples.png", "--out") if args.out or not args.each else None
    each = outputs.check_folder(args.each, "--each") if args.each else None
    return grid, each


def run_sample(args) -> int:
    if args.checkpoint is not None and (Path(args.checkpoint) / folder.SAMPLER_FILE).is_file():
        return _sample_exported(args)
    import torch
    from tqdm import tqdm

    from .. import cascade
    from ..devices import resolve_device
    from ..generation import class_labels, drawn_classes, training_mix
    from ..storage import recipe as recipes
    from ..storage.grids import save_each, save_grid
    grid, each = _checked_request(args)
    settings = sampling_settings(args)
    world, device = distributed.init(resolve_device(args.device))
    model, config, _ = load_model_for(args, device)
    layout = layout_for(args, model, config, device)
    size = config.data.image_size
    classed = cascade.classed(model, layout)  # the stage that knows the classes
    # one row of -n images per --class (image j of every row starts from the same noise); checked now
    rows = [class_labels(classed, name, 1) for name in args.classes] if args.classes else [None]
    mix = training_mix(model, config.data.class_counts, layout) if args.random_class else None
    guided = conditioning.DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    names = classed.network.config.classes  # the recipe names each row's class as the model does
    made = recipes.for_checkpoint(checkpoint_path(args), args.checkpoint, model, size, settings, count=args.num_images,
                                  classes=tuple(names[n] for n in rows) if args.classes else (),
                                  class_mix=mix.weights if mix else (),
                                  guidance=guided if args.classes or mix else None)
    if layout is not None:
        made = recipes.with_layout(made, layout,
                                   model.handover_scale(settings.eps_scale, settings.sampler))
    stream = each is not None and not world.distributed  # under torchrun, rank 0 writes all once gathered
    if grid is not None or not stream:
        limits.check_held_images(args.num_images * len(rows), size, HELD_WHY, model.network.config.channels)
    share = distributed.shard(args.num_images, world)
    bar = tqdm(total=len(share) * len(rows), desc="sampling", unit="image", dynamic_ncols=True,
               disable=args.no_progress or not world.is_main)
    prefixes = ["" if number is None else f"class{number}-" for number in rows]  # image j of class c: classC-0000j.png

    # files named by class: a drawn class (--random-class) names each image's own, drawn once here
    drawn = (drawn_prefixes(drawn_classes(classed, mix, settings.seed, range(args.num_images)))
             if mix and each is not None else None)

    def named(first: int, count: int, prefix: str):
        return drawn[first:first + count] if drawn else prefix
    kept = []
    for row, (number, prefix) in enumerate(zip(rows, prefixes)):
        def batch_made(first: int, images, prefix=prefix, row=row) -> None:
            if stream:
                save_each(images, each, start=first, prefix=named(first, len(images), prefix),
                          recipe=made.image(0, row))
            bar.update(len(images))
        kept.append(distributed.generate_all(model, args.num_images, settings, on_batch=batch_made,
                                             keep=grid is not None or not stream, image_size=size,
                                             classes=mix or number, guidance=guided, layout=layout))
    bar.close()
    distributed.shutdown(world)
    if not world.is_main:
        return 0
    if grid is not None:
        print(f"wrote {save_grid(torch.cat(kept), grid, recipes.columns(made), made)}")
    if each is not None:
        if not stream:
            for row, (prefix, images) in enumerate(zip(prefixes, kept)):
                save_each(images, each, prefix=named(0, len(images), prefix), recipe=made.image(0, row))
        print(f"wrote {args.num_images * len(rows)} images to {each}")
    return 0


def drawn_prefixes(classes) -> list[str]:
    """Each image's file prefix where its class was drawn: classC- (as --class names a row's)."""
    return [f"class{int(c)}-" for c in classes]


def _sample_exported(args) -> int:
    """`corolla sample DIR` of a `corolla export --onnx` folder: the same images, on onnxruntime
    (corolla.portable.sampling) instead of PyTorch; its PNGs carry no recipe."""
    import torch
    from tqdm import tqdm

    from ..storage.grids import save_each, save_grid
    for name, default in (("model", None), ("precision", "auto"), ("device", "auto"), ("layout", None),
                          ("layout_start", None), ("no_layout", False)):
        if getattr(args, name) != default:
            raise ValueError(f"--{name.replace('_', '-')} is for PyTorch checkpoints: {args.checkpoint} is an ONNX "
                             f"export, which runs on onnxruntime in float32")
    try:
        from ..portable import sampling
        model = sampling.load(args.checkpoint)
    except ImportError as error:
        raise ValueError(f"an ONNX export needs onnxruntime ({error.name} is missing): pip install 'corolla[onnx]'") \
            from None
    grid, each = _checked_request(args)
    settings = sampling_settings(args)
    rows = [model.class_labels(name, 1)[0] for name in args.classes] if args.classes else [None]
    mix = model.training_mix if args.random_class else None
    drawn = (drawn_prefixes(model.drawn_classes(mix, settings.seed, range(args.num_images)))
             if mix and each is not None else None)
    if grid is not None:
        limits.check_held_images(args.num_images * len(rows), model.spec.image_size,
                                 HELD_WHY, model.spec.channels)
    bar = tqdm(total=args.num_images * len(rows), desc="sampling", unit="image", dynamic_ncols=True,
               disable=args.no_progress)
    kept = []
    for number in rows:
        prefix = "" if number is None else f"class{number}-"
        for first, images in model.generate_batches(args.num_images, settings,
                                                    classes=mix or (None if number is None else int(number)),
                                                    guidance=args.guidance):
            images = torch.from_numpy(images)
            if each is not None:
                save_each(images, each, start=first, prefix=drawn[first:first + len(images)] if drawn else prefix)
            if grid is not None:
                kept.append(images)
            bar.update(len(images))
    bar.close()
    if grid is not None:
        print(f"wrote {save_grid(torch.cat(kept), grid, args.num_images if args.classes else None)}")
    if each is not None:
        print(f"wrote {args.num_images * len(rows)} images to {each}")
    return 0
