"""What the commands share: argparse's refusals as one line, the argument types with their
bounds, and the option groups (model, sampling, outputs, progress) declared once."""
from __future__ import annotations

import argparse
import os
from dataclasses import fields, replace
from typing import Callable

from .. import cascade, limits, samplers
from .. import precision as precisions
from ..samplers import SamplingSettings
from ..storage import checkpoint

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """argparse's refusals read as every other: one line `corolla: error: ...`, exit status 2."""

    def error(self, message: str):
        message = " ".join(message.split())  # one line, whatever the arguments held
        message = message if len(message) <= 500 else message[:500] + "..."
        self.exit(EXIT_BAD_INPUT, f"corolla: error: {message} (see {self.prog} --help)\n")


class Given(argparse.Action):
    """Store the value and note in args.given that it was given: a default cannot be told from
    the same value chosen (a resumed run keeps its own preset, so --preset must be refused)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from low to high (every count has a bound: a huge one
    is refused here, not met as a traceback or an exhausted memory after minutes of work)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{limits.short(text)} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: must be {low} or more")
        if value > high:
            raise argparse.ArgumentTypeError(f"{limits.short(value)} is not allowed: must be at most {high:,}")
        return value
    return parse


positive_int = whole_number(1, 10 ** 9)         # counts without a sharper bound
seed = whole_number(0, limits.MAX_SEED)
steps = whole_number(1, limits.MAX_STEPS)
batch_size = whole_number(1, limits.MAX_BATCH)


def eta(text: str) -> float:
    """DDIM's eta: 0 (deterministic) to 1 (the DDPM posterior's variance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{limits.short(text)} is not a number") from None
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not allowed: must be 0 (deterministic) up to 1 (DDPM-like)")
    return value


def eps_scale(text: str) -> float:
    """samplers.scaled_noise's divisor of the predicted noise."""
    low, high = samplers.EPS_SCALES
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{limits.short(text)} is not a number") from None
    if not low <= value <= high:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not allowed: must be {low:g} to {high:g} (1: the reference's "
                                         f"sampling; above 1 keeps more fine detail)")
    return value


def layout_start(text: str) -> float:
    """A cascade's hand-over time (corolla.cascade.check_start)."""
    try:
        return cascade.check_start(_number(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def path_text(text: str) -> str:
    """A file or folder argument: an empty one would silently mean '.' or the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not allowed: give a file or folder name")
    return text


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: must be a positive number")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: must be at least 0 and below 1")
    return value


def snr_gamma(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= limits.MAX_SNR_GAMMA:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not allowed: must be 0 (off) to {limits.MAX_SNR_GAMMA:g}")
    return value


def guidance(text: str) -> float:
    """A classifier-free guidance scale: 0 (unconditional) to limits.MAX_GUIDANCE."""
    value = _number(text)
    if not 0 <= value <= limits.MAX_GUIDANCE:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not allowed: must be 0 (unconditional) to "
                                         f"{limits.MAX_GUIDANCE:g}; 1 is the conditional model alone")
    return value


def image_size(text: str) -> int:
    value = whole_number(1, limits.MAX_IMAGE_SIZE)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: the U-Net halves the image three times, "
                                         f"so the size must be a multiple of 8 (e.g. 32, 64, 128)")
    return value


def add_precision(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--precision", choices=precisions.CHOICES, default=default,
                   help="network arithmetic: auto = bf16 autocast where the hardware computes it natively "
                        "(CPUs with AMX or AVX512-BF16, CUDA 8.0+), else fp32; fp32 = the reference's")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model a command loads: a checkpoint or run folder, or a shipped model by name."""
    p.add_argument("checkpoint", nargs="?", type=path_text,
                   help="checkpoint folder or run folder (default: the shipped model)")
    p.add_argument("--model", metavar="NAME", help="a shipped model by name (`corolla models` lists them)")
    add_precision(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")


LAYOUT_HELP = ("a cascade: MODEL, a model of smaller images (a checkpoint or run folder, or a shipped model by "
               "name: layout32 for flowers64, species32 for species64), draws each image's layout and the model "
               "finishes it")


def add_layout(p: argparse.ArgumentParser, what: str = LAYOUT_HELP + (
        " (PyTorch checkpoints; with --class or --random-class each conditional stage draws the class, so a "
        "conditional layout model gives an unconditional model's images theirs)")) -> None:
    """A cascade's options (corolla.cascade); `what`: --layout's help."""
    p.add_argument("--layout", metavar="MODEL", type=path_text,
                   help=what + "; default: the layout model the model's config.json names, if any "
                               "(flowers64: layout32, species64: species32)")
    p.add_argument("--no-layout", action="store_true",
                   help="the model alone, without the layout model its config.json names")
    p.add_argument("--layout-start", type=layout_start, metavar="T",
                   help=f"the diffusion time in (0, 1) at which the model takes the upsampled layout over "
                        f"(default {cascade.LAYOUT_START:g}, or the time the model's config.json names with its "
                        f"layout model)")


def layout_request(args) -> None:
    """add_layout's options, checked before any model is loaded."""
    if args.no_layout and (args.layout is not None or args.layout_start is not None):
        raise ValueError(f"--no-layout draws the model alone: leave out "
                         f"{'--layout' if args.layout is not None else '--layout-start'}")


def layout_choice(args, folder, config) -> tuple[str, float] | None:
    """-> (the layout model add_layout's options choose for the checkpoint in `folder`, its hand-over
    time), or None: --layout, else the one its config.json names (cascade.own_layout) unless
    --no-layout; --layout-start overrides the time."""
    layout_request(args)
    chosen = (args.layout, cascade.LAYOUT_START) if args.layout is not None else (
        None if args.no_layout else cascade.own_layout(folder, config))
    if chosen is None:
        if args.layout_start is not None:
            raise ValueError("--layout-start needs a layout model: give --layout MODEL (this model's config.json "
                             "names none)")
        return None
    return chosen[0], chosen[1] if args.layout_start is None else args.layout_start


def layout_for(args, model, config, device) -> "cascade.Layout | None":
    """The cascade's first stage add_layout's options choose (layout_choice) for the command's
    checkpoint, checked against `model`, in the command's precision; None: the model alone."""
    chosen = layout_choice(args, checkpoint.resolve(checkpoint_path(args)), config)
    return None if chosen is None else cascade.load(chosen[0], model, config.data.image_size, device,
                                                    args.precision, chosen[1])


def checkpoint_path(args) -> str:
    """The checkpoint named on the command line, else the shipped model --model names, else the
    default: the class-conditional shipped model where the command draws or lists classes (sample
    --class or --random-class, evaluate --random-class, classes, class-grid), the unconditional one
    elsewhere."""
    from ..storage import pretrained
    if args.checkpoint is not None and args.model is not None:
        raise ValueError(f"give a checkpoint ({args.checkpoint}) or --model {args.model}, not both")
    if args.checkpoint is not None:
        if args.checkpoint in pretrained.names() and not os.path.exists(args.checkpoint):
            raise ValueError(f"no checkpoint folder {args.checkpoint!r} here; for the shipped model of that name "
                             f"give --model {args.checkpoint}")
        return args.checkpoint
    wants_classes = (getattr(args, "classes", None) or getattr(args, "random_class", False)
                     or getattr(args, "lists_classes", False))
    return str(pretrained.path(args.model or (pretrained.CONDITIONAL if wants_classes else None)))


def load_model_for(args, device=None):
    """-> (model, config, device): the model of add_model_options, in the asked precision."""
    from ..devices import resolve_device
    device = device or resolve_device(args.device)
    model, config = checkpoint.load_for_sampling(checkpoint_path(args), device, args.precision)
    return model, config, device


SAMPLING_OPTIONS = ("steps", "seed", "sampler", "grid", "eta", "eps_scale", "batch_size")


def add_sampling(p: argparse.ArgumentParser, names: tuple[str, ...] = SAMPLING_OPTIONS,
                 defaults: SamplingSettings = SamplingSettings(), **helps: str) -> None:
    """The sampling options `names` (fields of SamplingSettings), defaulting to `defaults`' values;
    `helps` replaces an option's help where a command means something more by it."""
    declared = {
        "steps": dict(type=steps, help="network evaluations (sampler steps)"),
        "seed": dict(type=seed, help="image i of a seed is the same whatever the batch or the count"),
        "sampler": dict(choices=sorted(samplers.SAMPLERS),
                        help="ddim (the reference); dpmpp_2m, dpmpp_3m, unipc reach the same image in fewer steps"),
        "grid": dict(choices=sorted(samplers.GRIDS),
                     help="time grid: uniform in t (the reference), uniform in log-SNR, or Karras'; "
                          "default uniform for ddim, logsnr for the other samplers"),
        "eta": dict(type=eta, help="ddim only: 0 deterministic, 1 DDPM-like noise"),
        "eps_scale": dict(type=eps_scale, metavar="SCALE",
                          help="epsilon scaling: divide each predicted noise by SCALE; a little above 1 keeps fine "
                               "detail that plain sampling smooths away; 1 is the reference's sampling (default: the "
                               "model's own, its config.json's sampling.eps_scale for ddim and "
                               "sampling.multistep_eps_scale, where it has one, for the others: 1 for a model you "
                               "train)"),
        "batch_size": dict(type=batch_size, help="images per network call (memory only: images do not depend on it)"),
    }
    for name in names:
        option = declared[name] | ({"help": helps[name]} if name in helps else {})
        default = getattr(defaults, name)
        if default is not None:
            option["help"] += f" (default {default})"
        p.add_argument("--" + name.replace("_", "-"), default=default, **option)


def eps_scale_note(model, chosen: float | None) -> str:
    """', eps scale S' for a figure's title when the images are drawn at a scale other than 1
    (chosen: the command's --eps-scale; None is the model's own)."""
    scale = model.sampling_eps_scale(chosen)
    return f", eps scale {scale:g}" if scale != 1 else ""


def sampling_settings(args: argparse.Namespace, defaults: SamplingSettings = SamplingSettings()) -> SamplingSettings:
    """The SamplingSettings a command's arguments choose (add_sampling's options; the rest, and an
    option left None such as an unchosen --grid, keep `defaults`' values)."""
    return replace(defaults, **{f.name: getattr(args, f.name) for f in fields(defaults)
                                if getattr(args, f.name, None) is not None})


def add_out(p: argparse.ArgumentParser, default: str | None, what: str, **kwargs) -> None:
    """--out: the file a command writes."""
    shown = f" (default {default})" if default else ""
    p.add_argument("--out", type=path_text, default=default, help=what + shown, **kwargs)


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
