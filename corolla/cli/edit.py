"""Subcommands that edit real photos with a trained model: edit (SDEdit), inpaint (RePaint),
invert (DDIM inversion), and the photo ends of `corolla interpolate`. They parse arguments, load
photos and masks, and call corolla.editing."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import editing, figures, limits
from ..generation import initial_noise
from ..samplers import SamplingSettings
from ..storage import outputs
from ..storage import recipe as recipes
from ..storage.atomic import replacing
from ..storage.grids import save_each, save_grid
from .options import (
    add_model_options,
    add_out,
    add_sampling,
    checkpoint_path,
    eps_scale_note,
    load_model_for,
    path_text,
    sampling_settings,
    steps,
    whole_number,
)

HOLE_GREY = 0.5  # how the figure shows the pixels to fill


def _load(args):
    """The model the command names (a checkpoint folder, --model NAME or the shipped one)."""
    model, config, _ = load_model_for(args)
    return model, config


def photo_paths(args) -> list[str]:
    """The positional paths: a first one that is a folder is the checkpoint, the rest are photos."""
    paths = ([args.checkpoint] if args.checkpoint is not None else []) + list(args.images)
    args.checkpoint = paths.pop(0) if paths and Path(paths[0]).is_dir() else None
    if not paths:
        raise ValueError("name at least one image file (a checkpoint, when given, is a folder and comes first)")
    return paths


def load_photos(paths: list[str], size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    loaded = [editing.load_photo(path, size) for path in paths]
    return torch.stack([image for image, _ in loaded]), [photo_size for _, photo_size in loaded]


def strengths(text: str) -> list[float]:
    """'0.6' or '0,0.2,1' -> floats, each checked to lie in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--strength {text!r} is not a number or a comma-separated list of numbers") from None
    if not values:
        raise ValueError("--strength needs a number in [0, 1]")
    return [editing.check_strength(v) for v in values]


def box(text: str) -> tuple[int, int, int, int]:
    """An argument type: x,y,w,h (an empty one was taken for no box and ended in a traceback)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{limits.short(text)} is not allowed: give x,y,w,h in the image's pixels, "
                                         f"e.g. 8,8,16,16")
    return values


def _name(path: str) -> str:
    return Path(path).name


class Outputs:
    """The output options, each checked before any work: --out (a grid; default DEFAULT unless
    only --each or --figure is asked for, as `corolla sample`), --each DIR and --figure PATH."""

    def __init__(self, args, default: str, rows: int = 0, columns: int = 0, image_size: int = 0,
                 labels: tuple = ((), (), None)):
        self.grid = outputs.check_file(args.out or default, "--out") if args.out or not (args.each or args.figure) \
            else None
        self.each = outputs.check_folder(args.each, "--each") if args.each else None
        self.figure = outputs.check_file(args.figure, "--figure") if args.figure else None
        if self.figure is not None:
            figures.check_grid_size(rows, columns, image_size, *labels)  # labels: columns', rows', title


# -- edit ------------------------------------------------------------------------------------------

def run_edit(args) -> int:
    paths = photo_paths(args)
    levels = strengths(args.strength)
    if args.eta > 0 and args.sampler != "ddim":
        raise ValueError(f"--eta {args.eta}: sampler {args.sampler} is deterministic; --eta needs --sampler ddim")
    model, config = _load(args)
    size = config.data.image_size
    count = len(paths) * args.num_images
    limits.check_held_images(count * (len(levels) + 1), size, "photos x -n x strengths")
    settings = sampling_settings(args, editing.EDITING)
    grid = settings.time_grid
    rows = [f"{_name(p)} #{v}" if args.num_images > 1 else _name(p) for p in paths for v in range(args.num_images)]
    columns = ["input"] + [f"strength {strength:g}" for strength in levels]
    scale = editing.edit_eps_scale(model, min(levels), settings)  # of its strengths below 1
    title = (f"SDEdit: {args.sampler}, {args.steps} steps on the {grid} grid, seed {args.seed}"
             f"{f', eps scale {scale:g}' if scale != 1 else ''} ({config.preset})")
    out = Outputs(args, "edits.png", count, len(levels) + 1, size, (columns, rows, title))
    photos, _ = load_photos(paths, size)
    made = recipes.for_checkpoint(checkpoint_path(args), args.checkpoint, model, size, settings, kind="edit",
                                  count=count, details={"strength": levels, "photos": recipes.photos(paths),
                                                        "variations": args.num_images})
    made = replace(made, eps_scale=scale)
    inputs = photos.repeat_interleave(args.num_images, 0)  # output k: photo k // n, variation k % n
    results = torch.stack([editing.edit(model, inputs, strength, settings) for strength in levels], dim=1)
    if out.grid is not None:
        print(f"wrote {save_grid(results.flatten(0, 1), out.grid, len(levels) if len(levels) > 1 else None, made)}")
    if out.each is not None:
        for column, strength in enumerate(levels):
            prefix = f"strength{strength:g}_" if len(levels) > 1 else ""
            save_each(results[:, column], out.each, prefix=prefix, recipe=made.adding(strength=strength))
        print(f"wrote {results.shape[0] * len(levels)} images to {out.each}")
    if out.figure is not None:
        table = torch.cat([inputs[:, None], results], 1)
        print(f"wrote {figures.save_labelled_grid(table, out.figure, columns, rows, title)}")
    return 0


# -- inpaint ---------------------------------------------------------------------------------------

def run_inpaint(args) -> int:
    paths = photo_paths(args)
    hole = args.box
    model, config = _load(args)
    size = config.data.image_size
    limits.check_held_images(len(paths) * (args.num_images + 2), size, "photos x -n")
    out = Outputs(args, "inpainted.png", len(paths), args.num_images + 2, size)
    photos, photo_sizes = load_photos(paths, size)
    fill = torch.stack([editing.box_mask(hole, s, size) if hole is not None else editing.load_mask(args.mask, s, size)
                        for s in photo_sizes])
    inputs = photos.repeat_interleave(args.num_images, 0)
    evaluations = editing.repaint_evaluations(args.steps, args.resample, args.jump)
    method = "plain replacement" if args.resample == 1 else f"RePaint, resample {args.resample}, jump {args.jump}"
    print(f"inpainting {len(paths)} image(s) x {args.num_images}: {method}, {evaluations} evaluations each")
    settings = sampling_settings(args, editing.INPAINTING)
    filled = editing.inpaint(model, inputs, fill.repeat_interleave(args.num_images, 0), settings,
                             resample=args.resample, jump=args.jump)
    made = recipes.for_checkpoint(checkpoint_path(args), args.checkpoint, model, size, settings, kind="inpaint",
                                  count=len(inputs),
                                  details={"resample": args.resample, "jump": args.jump,
                                           "photos": recipes.photos(paths),
                                           "mask": recipes.photos([args.mask]) if hole is None else list(hole)})
    if out.grid is not None:
        print(f"wrote {save_grid(filled, out.grid, recipe=made)}")
    if out.each is not None:
        print(f"wrote {len(save_each(filled, out.each, recipe=made))} images to {out.each}")
    if out.figure is not None:
        masked = torch.where(fill, torch.full_like(photos, HOLE_GREY), photos)
        fills = filled.view(len(paths), args.num_images, *photos.shape[1:])
        table = torch.cat([photos[:, None], masked[:, None], fills], 1)
        columns = ["input", "to fill"] + [f"seed {args.seed} #{v}" for v in range(args.num_images)]
        title = f"inpainting: {method}, {args.steps} steps ({config.preset})"
        print(f"wrote {figures.save_labelled_grid(table, out.figure, columns, [_name(p) for p in paths], title)}")
    return 0


# -- invert ----------------------------------------------------------------------------------------

def save_noise(noise: torch.Tensor, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Published by rename (atomic.replacing): an existing file is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({"noise": noise.contiguous()}, str(tmp), metadata=metadata)
    return path


def run_invert(args) -> int:
    paths = photo_paths(args)
    model, config = _load(args)
    limits.check_held_images(2 * len(paths), config.data.image_size, "photos")
    target = outputs.check_file(args.out, "--out")
    reconstruction = outputs.check_file(args.reconstruction, "--reconstruction") if args.reconstruction else None
    each = outputs.check_folder(args.each, "--each") if args.each else None
    photos, _ = load_photos(paths, config.data.image_size)
    settings = sampling_settings(args, editing.INVERSION)
    noise = editing.invert(model, photos, settings, refine=args.refine)
    again = editing.decode(model, noise, settings)
    for path, photo, image in zip(paths, photos, again):
        print(f"{path}: round-trip RMSE {editing.rmse_255(image, photo):.2f} (0-255)")
    metadata = {"steps": str(settings.steps), "grid": settings.time_grid, "sampler": "ddim",
                "refine": str(args.refine), "image_size": str(config.data.image_size), "images": json.dumps(paths)}
    print(f"wrote {save_noise(noise, target, metadata)} (decode: editing.decode(model, noise, "
          f"SamplingSettings(steps={settings.steps}, grid={settings.time_grid!r})))")
    if reconstruction is not None:
        print(f"wrote {save_grid(again, reconstruction)}")
    if each is not None:
        print(f"wrote {len(save_each(again, each))} images to {each}")
    return 0


# -- interpolate between photos and seeds -----------------------------------------------------------

class OrderedEnds(argparse.Action):
    """Store the values, and also record them in namespace.ends in command-line order, so that
    `--seeds 3 --images b.jpg` pairs seed 3 with b.jpg and `--images a.jpg --seeds 3` the reverse."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.ends = list(getattr(namespace, "ends", None) or []) + [(self.dest, v) for v in values]


def run_interpolate_ends(args) -> int:
    ends = getattr(args, "ends", None) or [("seeds", seed) for seed in args.seeds]
    if len(ends) < 2 or len(ends) % 2:
        raise ValueError(f"interpolate takes pairs of ends (--seeds and --images, in order), got {len(ends)}")
    photo_ends = [value for kind, value in ends if kind == "images"]
    if photo_ends and args.eps_scale not in (None, 1):
        raise ValueError(f"--eps-scale {args.eps_scale:g} is for seed ends: photo ends are inverted and decoded at "
                         f"1, so that each photo comes back (leave it out, or give 1)")
    model, config = _load(args)
    size = config.data.image_size
    figure = outputs.check_file(args.out, "--out")
    gif = outputs.check_file(args.gif, "--gif") if args.gif else None
    each = outputs.check_folder(args.each, "--each") if args.each else None
    figures.check_grid_size(len(ends) // 2, args.frames, size)
    settings = sampling_settings(args, editing.INVERSION if photo_ends else SamplingSettings())
    inverted = {}
    if photo_ends:
        photos, _ = load_photos(photo_ends, size)
        noise = editing.invert(model, photos, settings)
        again = editing.decode(model, noise, settings)
        for path, photo, image, z in zip(photo_ends, photos, again, noise):
            print(f"{path}: inverted, round-trip RMSE {editing.rmse_255(image, photo):.2f} (0-255)")
            inverted[path] = z
    shape = (model.network.config.channels, size, size)
    noises = [inverted[value] if kind == "images" else initial_noise(value, [0], shape)[0] for kind, value in ends]
    frames = editing.interpolate(model, noises, args.frames, settings)
    labels = [_name(value) if kind == "images" else f"seed {value}" for kind, value in ends]
    rows = [f"{a} -> {b}" for a, b in zip(labels[::2], labels[1::2])]
    weights = editing.interpolation_weights(args.frames)
    title = (f"spherical interpolation of initial noise, {settings.steps} DDIM steps, {settings.time_grid} grid"
             f"{eps_scale_note(model, settings.eps_scale)} ({config.preset})")
    print(f"wrote {figures.save_labelled_grid(frames, figure, [f'w = {w:.2f}' for w in weights], rows, title)}")
    if gif is not None:
        print(f"wrote {figures.save_gif(frames, gif)}")
    if each is not None:
        for row in range(frames.shape[0]):
            save_each(frames[row], each, prefix=f"pair{row}_")
        print(f"wrote {frames.shape[0] * frames.shape[1]} frames to {each}")
    return 0


# -- registration ------------------------------------------------------------------------------------

def _add_photos(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, any size and mode (centre-cropped if not square, resized to the model's size)")
    add_sampling(p, ("batch_size",))


def _add_outputs(p: argparse.ArgumentParser, out: str, figure_help: str) -> None:
    add_out(p, None, f"grid PNG of the results (default {out}; none with only --each or --figure)")
    p.add_argument("--each", metavar="DIR", type=path_text, help="write one PNG per result into DIR, named by index")
    p.add_argument("--figure", metavar="PATH", type=path_text, help=figure_help)


def register(sub) -> None:
    p = sub.add_parser("edit", help="SDEdit: noise a photo to t = strength and denoise it towards the model's images")
    _add_photos(p)
    p.add_argument("--strength", default="0.6",
                   help="diffusion time in [0, 1] to noise to (0: the photo, 1: plain sampling), or a list: 0,0.5,1")
    p.add_argument("-n", "--num-images", type=whole_number(1, limits.MAX_BATCH), default=1,
                   help="seeded variations per photo")
    add_sampling(p, ("steps", "seed", "sampler", "grid", "eta", "eps_scale"),
                 steps="steps of the whole grid; an edit runs the part below its strength",
                 eps_scale="epsilon scaling: divide each predicted noise by SCALE (default: below strength 1 the "
                           "model's config.json's sampling.handover_eps_scale, where it has one, as a cascade "
                           "finishes a handed-over image, else its own; at strength 1 its own)")
    _add_outputs(p, "edits.png", "also draw a labelled figure: each photo, then its edit at each strength")
    p.set_defaults(func=run_edit)

    p = sub.add_parser("inpaint", help="fill a masked region of a photo (RePaint; --resample 1: plain replacement)")
    _add_photos(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", metavar="MASK", type=path_text,
                       help="image of the photo's size: white = fill, black = keep")
    where.add_argument("--box", metavar="X,Y,W,H", type=box,
                       help="fill this rectangle (the photo's pixels, from the top left)")
    p.add_argument("-n", "--num-images", type=whole_number(1, limits.MAX_BATCH), default=1,
                   help="seeded fills per photo")
    add_sampling(p, ("steps",), editing.INPAINTING)
    p.add_argument("--resample", type=whole_number(1, 100), default=editing.RESAMPLE,
                   help="RePaint's R: times each stretch of the walk is redone (1: plain replacement)")
    p.add_argument("--jump", type=steps, default=editing.JUMP, help="RePaint's J: grid steps of each jump back")
    add_sampling(p, ("eta", "grid", "seed"), editing.INPAINTING,
                 eta="noise of the reverse steps (1: DDPM's, as RePaint)")
    _add_outputs(p, "inpainted.png", "also draw a labelled figure: each photo, the region to fill, the fills")
    p.set_defaults(func=run_inpaint)

    p = sub.add_parser("invert", help="DDIM inversion: the initial noise from which DDIM gives back the photo")
    _add_photos(p)
    add_sampling(p, ("steps", "grid"), editing.INVERSION)
    p.add_argument("--refine", type=whole_number(0, limits.MAX_STEPS), default=editing.INVERT_REFINE,
                   help="evaluations placing the last state (fixed point; default %(default)s)")
    add_out(p, "noise.safetensors", "safetensors file of the noises (key 'noise')")
    p.add_argument("--reconstruction", metavar="PNG", type=path_text, help="also write the decoded noises as a grid")
    p.add_argument("--each", metavar="DIR", type=path_text,
                   help="also write each decoded noise as a PNG, named by index")
    p.set_defaults(func=run_invert)
