"""Subcommands that draw the reference article's analyses: schedules, noising, sweep, interpolate,
trajectory. They parse arguments and call corolla.figures."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import editing, figures, limits
from ..data import imagefolder
from ..storage import outputs
from .edit import OrderedEnds, run_interpolate_ends
from .options import (
    add_model_options,
    add_out,
    add_sampling,
    eps_scale_note,
    load_model_for,
    path_text,
    positive_int,
    sampling_settings,
    seed,
    whole_number,
)

DEFAULT_NOISING_TIMES = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def int_list(text: str) -> list[int]:
    """'1,2,3,5' -> [1, 2, 3, 5], step counts from 1 to limits.MAX_STEPS."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{limits.short(text)} is not a comma-separated list of whole numbers") \
            from None
    if not values or min(values) < 1 or max(values) > limits.MAX_STEPS:
        raise argparse.ArgumentTypeError(f"{limits.short(text)} is not allowed: give whole numbers from 1 to "
                                         f"{limits.MAX_STEPS:,}, e.g. 1,2,5,20")
    return values


def time_list(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0], each in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{limits.short(text)} is not a comma-separated list of numbers") from None
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{limits.short(text)} is not allowed: diffusion times lie in [0, 1], "
                                         f"e.g. 0,0.5,1")
    return values


def _load(args):
    model, config, _ = load_model_for(args)
    return model, config


# -- schedules and noising ------------------------------------------------------------------------

def run_schedules(args) -> int:
    outputs.check_file(args.out, "--out")
    print(f"wrote {figures.plot_schedules(args.out)}")
    return 0


def run_noising(args) -> int:
    outputs.check_file(args.out, "--out")
    figures.check_grid_size(len(figures.SCHEDULE_NAMES), len(args.times), args.size)
    path = Path(args.image) if args.image is not None else imagefolder.scan(imagefolder.bundled_dir())[0]
    try:
        image = imagefolder.load_image(path, args.size)
    except OSError as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    title = f"forward diffusion of {path.name} (seed {args.seed})"
    print(f"wrote {figures.plot_noising(image, args.out, args.times, args.seed, title)}")
    return 0


# -- sweep, interpolate, trajectory ---------------------------------------------------------------

def run_sweep(args) -> int:
    outputs.check_file(args.out, "--out")
    model, config = _load(args)
    figures.check_grid_size(args.num_images, len(args.steps), config.data.image_size)
    results = figures.step_sweep(model, args.steps, args.num_images, args.seed, config.data.image_size,
                                 args.eps_scale)
    print(figures.sweep_table(results))
    title = (f"DDIM steps vs image ({config.preset}, seed {args.seed}{eps_scale_note(model, args.eps_scale)}, "
             f"{next(model.parameters()).device})")
    print(f"wrote {figures.plot_sweep(results, args.out, title)}")
    return 0


def seed_pairs(seeds: list[int]) -> list[tuple[int, int]]:
    """3 7 11 12 -> [(3, 7), (11, 12)]: consecutive seeds pair up, one row per pair."""
    if len(seeds) < 2 or len(seeds) % 2:
        raise ValueError(f"--seeds takes pairs (first second [first second ...]), got {len(seeds)} seed(s)")
    return list(zip(seeds[::2], seeds[1::2]))


def run_interpolate(args) -> int:
    if args.images or args.grid or args.each:  # photo ends, another grid or one PNG per frame
        return run_interpolate_ends(args)
    pairs = seed_pairs(args.seeds)
    outputs.check_file(args.out, "--out")
    if args.gif is not None:
        outputs.check_file(args.gif, "--gif")
    model, config = _load(args)
    figures.check_grid_size(len(pairs), args.frames, config.data.image_size)
    images = figures.interpolate(model, pairs, args.frames, sampling_settings(args), image_size=config.data.image_size)
    title = (f"spherical interpolation of initial noise, {args.steps} DDIM steps"
             f"{eps_scale_note(model, args.eps_scale)} ({config.preset})")
    print(f"wrote {figures.plot_interpolation(images, pairs, args.out, title)}")
    if args.gif:
        print(f"wrote {figures.save_gif(images, args.gif)}")
    return 0


def run_trajectory(args) -> int:
    from ..generation import initial_noise
    outputs.check_file(args.out, "--out")
    model, config = _load(args)
    size = config.data.image_size
    figures.check_grid_size(2 * -(-args.steps // args.per_row), min(args.steps, args.per_row), size)
    noise = initial_noise(args.seed, [args.index], (model.network.config.channels, size, size))[0]
    trajectory = figures.ddim_trajectory(model, noise, args.steps, args.eps_scale)
    title = (f"reverse diffusion of seed {args.seed} image {args.index}, {args.steps} DDIM steps"
             f"{eps_scale_note(model, args.eps_scale)} ({config.preset})")
    print(f"wrote {figures.plot_trajectory(model, trajectory, args.out, args.per_row, title)}")
    return 0


def run_progress(args) -> int:
    from ..storage.checkpoint import load_config, resolve
    outputs.check_file(args.out, "--out")
    config = load_config(resolve(args.run))
    images, epochs = figures.learning_progress(args.run, config.data.image_size, config.train.grid_images,
                                               args.epochs, args.images)
    figures.check_grid_size(len(epochs), images.shape[1], config.data.image_size)
    title = f"{Path(args.run).name}: the EMA network's samples from fixed noise after each epoch"
    print(f"wrote {figures.plot_progress(images, epochs, args.out, title)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("schedules",
                       help="plot signal and noise rates of the linear, cosine and offset cosine schedules")
    add_out(p, "schedules.png", "PNG to write")
    p.set_defaults(func=run_schedules)

    p = sub.add_parser("noising", help="one image noised at a row of times under each schedule")
    p.add_argument("image", nargs="?", type=path_text, help="image file (default: a bundled flower)")
    p.add_argument("--times", type=time_list, default=time_list(DEFAULT_NOISING_TIMES),
                   help=f"comma-separated diffusion times (default {DEFAULT_NOISING_TIMES})")
    p.add_argument("--size", type=whole_number(1, limits.MAX_IMAGE_SIZE), default=64, help="image side in pixels")
    add_sampling(p, ("seed",), seed="seed of the added noise")
    add_out(p, "noising.png", "PNG to write")
    p.set_defaults(func=run_noising)

    p = sub.add_parser("sweep", help="the same noises sampled with several step counts, timed")
    add_model_options(p)
    p.add_argument("--steps", type=int_list, default=int_list("1,2,3,5,10,20,50"),
                   help="comma-separated DDIM step counts (default 1,2,3,5,10,20,50)")
    p.add_argument("-n", "--num-images", type=positive_int, default=8)
    add_sampling(p, ("seed", "eps_scale"))
    add_out(p, "sweep.png", "PNG to write")
    p.set_defaults(func=run_sweep)

    p = sub.add_parser("interpolate", help="spherical interpolation between the initial noises of two seeds")
    add_model_options(p)
    p.add_argument("--seeds", type=seed, nargs="+", default=[3, 7], action=OrderedEnds,
                   help="pairs of seeds, one row per pair: --seeds 3 7 11 12 (image 0 of each seed)")
    p.add_argument("--images", nargs="+", metavar="IMAGE", action=OrderedEnds,
                   help="photos as ends, inverted with DDIM; with --seeds, ends pair up in command-line order "
                        "(--seeds 3 --images b.jpg: seed 3 -> b.jpg)")
    add_sampling(p, ("grid",), grid="time grid of the DDIM steps (default: uniform, as corolla sample; logsnr with "
                                   "--images)")
    p.add_argument("--each", metavar="DIR", help="also write one PNG per frame into DIR")
    p.add_argument("--frames", type=whole_number(2, 1000), default=editing.FRAMES,
                   help="images per row, ends included")
    add_sampling(p, ("steps", "eps_scale", "batch_size"), steps="DDIM steps, as corolla sample's --steps",
                 eps_scale="epsilon scaling of the decoding, as corolla sample's --eps-scale (default: the model's "
                           "own; seed ends only: photo ends are inverted and decoded at 1)")
    p.add_argument("--gif", metavar="PATH", type=path_text, help="also write an animated GIF")
    add_out(p, "interp.png", "PNG to write")
    p.set_defaults(func=run_interpolate)

    p = sub.add_parser("trajectory", help="predicted and noisy image after every reverse step")
    add_model_options(p)
    add_sampling(p, ("seed",))
    p.add_argument("--index", type=whole_number(0, limits.MAX_IMAGES), default=0, help="which image of the seed")
    add_sampling(p, ("steps", "eps_scale"), steps="DDIM steps")
    p.add_argument("--per-row", type=positive_int, default=10, help="steps per band of the figure")
    add_out(p, "traj.png", "PNG to write")
    p.set_defaults(func=run_trajectory)

    p = sub.add_parser("progress", help="a training run's per-epoch sample grids side by side: how it learned")
    p.add_argument("run", type=path_text, help="run folder (holds samples/epoch_NNN.png)")
    p.add_argument("--epochs", type=int_list, help="comma-separated epochs (default: every epoch with a grid)")
    p.add_argument("--images", type=whole_number(1, 64), default=8, help="images of each grid, one row per epoch")
    add_out(p, "progress.png", "PNG to write")
    p.set_defaults(func=run_progress)
