"""Subcommands that draw the reference article's analyses: schedules, noising, sweep, interpolate,
trajectory. They parse arguments and call corolla.figures."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import data, figures
from .cli import add_model_options, load_model_for, non_negative_int, positive_int

DEFAULT_NOISING_TIMES = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def int_list(text: str) -> list[int]:
    """'1,2,3,5' -> [1, 2, 3, 5], each 1 or more."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give whole numbers of 1 or more, e.g. 1,2,5,20")
    return values


def time_list(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0], each in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: diffusion times lie in [0, 1], e.g. 0,0.5,1")
    return values


def _load(args):
    model, config, _ = load_model_for(args)
    return model, config


# -- schedules and noising ------------------------------------------------------------------------

def run_schedules(args) -> int:
    print(f"wrote {figures.plot_schedules(args.out)}")
    return 0


def run_noising(args) -> int:
    path = Path(args.image) if args.image else data.scan(data.bundled_dir())[0]
    try:
        image = data.load_image(path, args.size)
    except OSError as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    title = f"forward diffusion of {path.name} (seed {args.seed})"
    print(f"wrote {figures.plot_noising(image, args.out, args.times, args.seed, title)}")
    return 0


# -- sweep, interpolate, trajectory ---------------------------------------------------------------

def run_sweep(args) -> int:
    model, config = _load(args)
    results = figures.step_sweep(model, args.steps, args.num_images, args.seed, config.data.image_size)
    print(figures.sweep_table(results))
    title = f"DDIM steps vs image ({config.preset}, seed {args.seed}, {next(model.parameters()).device})"
    print(f"wrote {figures.plot_sweep(results, args.out, title)}")
    return 0


def seed_pairs(seeds: list[int]) -> list[tuple[int, int]]:
    """3 7 11 12 -> [(3, 7), (11, 12)]: consecutive seeds pair up, one row per pair."""
    if len(seeds) < 2 or len(seeds) % 2:
        raise ValueError(f"--seeds takes pairs (first second [first second ...]), got {len(seeds)} seed(s)")
    return list(zip(seeds[::2], seeds[1::2]))


def run_interpolate(args) -> int:
    pairs = seed_pairs(args.seeds)
    model, config = _load(args)
    images = figures.interpolate(model, pairs, args.frames, args.steps, config.data.image_size, args.batch_size)
    title = f"spherical interpolation of initial noise, {args.steps} DDIM steps ({config.preset})"
    print(f"wrote {figures.plot_interpolation(images, pairs, args.out, title)}")
    if args.gif:
        print(f"wrote {figures.save_gif(images, args.gif)}")
    return 0


def run_trajectory(args) -> int:
    from .generate import initial_noise
    model, config = _load(args)
    size = config.data.image_size
    noise = initial_noise(args.seed, [args.index], (model.network.config.channels, size, size))[0]
    trajectory = figures.ddim_trajectory(model, noise, args.steps)
    title = f"reverse diffusion of seed {args.seed} image {args.index}, {args.steps} DDIM steps ({config.preset})"
    print(f"wrote {figures.plot_trajectory(model, trajectory, args.out, args.per_row, title)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("schedules", help="plot signal and noise rates of the linear, cosine and offset cosine schedules")
    p.add_argument("--out", default="schedules.png")
    p.set_defaults(func=run_schedules)

    p = sub.add_parser("noising", help="one image noised at a row of times under each schedule")
    p.add_argument("image", nargs="?", help="image file (default: a bundled flower)")
    p.add_argument("--times", type=time_list, default=time_list(DEFAULT_NOISING_TIMES),
                   help=f"comma-separated diffusion times (default {DEFAULT_NOISING_TIMES})")
    p.add_argument("--size", type=positive_int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the added noise")
    p.add_argument("--out", default="noising.png")
    p.set_defaults(func=run_noising)

    p = sub.add_parser("sweep", help="the same noises sampled with several step counts, timed")
    add_model_options(p)
    p.add_argument("--steps", type=int_list, default=int_list("1,2,3,5,10,20,50"),
                   help="comma-separated DDIM step counts (default 1,2,3,5,10,20,50)")
    p.add_argument("-n", "--num-images", type=positive_int, default=8)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default="sweep.png")
    p.set_defaults(func=run_sweep)

    p = sub.add_parser("interpolate", help="spherical interpolation between the initial noises of two seeds")
    add_model_options(p)
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[3, 7],
                   help="pairs of seeds, one row per pair: --seeds 3 7 11 12 (image 0 of each seed)")
    p.add_argument("--frames", type=positive_int, default=10, help="images per row, ends included (2 or more)")
    p.add_argument("--steps", type=positive_int, default=20, help="DDIM steps, as corolla sample's --steps")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--gif", metavar="PATH", help="also write an animated GIF")
    p.add_argument("--out", default="interp.png")
    p.set_defaults(func=run_interpolate)

    p = sub.add_parser("trajectory", help="predicted and noisy image after every reverse step")
    add_model_options(p)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--index", type=non_negative_int, default=0, help="which image of the seed")
    p.add_argument("--steps", type=positive_int, default=20, help="DDIM steps")
    p.add_argument("--per-row", type=positive_int, default=10, help="steps per band of the figure")
    p.add_argument("--out", default="traj.png")
    p.set_defaults(func=run_trajectory)
