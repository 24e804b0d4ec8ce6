"""What corolla accepts: the bounds on a config, a checkpoint's contents and the command's numbers.

A config decides what gets allocated (the network, the images, the batches), and configs arrive
inside checkpoints that people share. Every field is checked here, on construction and on load,
before anything is built: `block_depth: 1000000` or `image_size: 10**9` is refused at once with a
line naming the field and what is allowed, instead of taking minutes and gigabytes. The bounds
lie far above what corolla is for (the reference: 64x64 images, 1.95 M parameters) and far below
what would exhaust a machine.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Callable

from . import conditioning, heap, losses, precision, samplers, schedules

MAX_IMAGE_SIZE = 1024          # pixels per side
MAX_LEVELS = 6                 # entries of unet.widths: the image is halved once per level
MAX_WIDTH = 4096               # channels of any block
MAX_BLOCK_DEPTH = 8            # residual blocks per level (the reference: 2)
MAX_EMBEDDING_SIZE = 1024
MAX_PARAMETERS = 100_000_000   # per network, counted before allocation (the reference: 1,950,627)
MAX_SEED = 2 ** 32 - 1
MAX_STEPS = 10_000             # network evaluations of one sampling run
MAX_BATCH = 4096
MAX_EPOCHS = 1_000_000
MAX_LR_RAMP = 10_000_000      # optimiser steps of learning-rate warm-up or cool-down
MAX_SNR_GAMMA = 1e6            # min-SNR-gamma (useful values: 1 to 20)
MAX_LOSS_SCALES = 6            # levels of the multiscale loss: a 64 px image down to 2 px
MAX_REPETITIONS = 1000         # the data set repeated per epoch (the reference: 5)
MAX_EVAL_SAMPLES = 50_000      # images scored by one evaluation (the usual FID count)
MAX_CLASSES = 100_000          # classes of a conditional network (ImageNet-21k has 21,841)
MAX_CLASS_NAME = 200           # characters of one class name
MAX_GUIDANCE = 100.0           # classifier-free guidance scale (useful values: 1 to 10)
MAX_IMAGES = 10_000_000        # corolla sample -n, streamed to --each
MAX_HELD_BYTES = 2 ** 32       # generated images held at once as float32 (a grid, an evaluation)
# drawing a labelled figure takes about this many bytes per pixel of its canvas (measured: 125-133
# with matplotlib's Agg canvas and figimage's copies, at 4 and 15 million pixels)
FIGURE_BYTES_PER_PIXEL = 136
MAX_FIGURE_PIXELS = MAX_HELD_BYTES // FIGURE_BYTES_PER_PIXEL  # labels and margins included
MAX_JSON_BYTES = 2 ** 20       # config.json, state.json
CONFIG_FILE_KEYS = 1024        # what config.json holds besides the config: format, version, four SHA-256s
# the other files corolla reads, each through safefile.read_bounded
MAX_LOG_BYTES = 2 ** 28        # a run's metrics.jsonl (a line of about 100 bytes per 10 steps)
MAX_LABELS_BYTES = 2 ** 28     # a labels CSV: millions of rows
MAX_GRID_BYTES = 2 ** 26       # a run's sample grid, served by the page
MAX_ABS_WEIGHT = 1e6           # any stored weight or statistic (the shipped model's largest: 22)
KEEP_BEST_METRICS = ("swd", "heldout_loss", "kid", "fid")
PRESET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # shown in figure titles: no $ (mathtext), bounded

# a rule returns None for an allowed value, else what is allowed ("a whole number from 1 to 8")
Rule = Callable[[object], "str | None"]


def short(value, limit: int = 40) -> str:
    """repr(value), cut: a 200,000-character string must not become a 200,000-character error."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value) -> bool:
    return type(value) is int  # bool is an int subclass, and JSON's true is no number


def integer(low: int, high: int, even: bool = False) -> Rule:
    allowed = f"{'an even' if even else 'a'} whole number from {low:,} to {high:,}"
    return lambda v: None if _is_int(v) and low <= v <= high and not (even and v % 2) else allowed


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite int or float in the interval."""
    allowed = (f"a finite number {'above' if low_open else 'at least'} {low:g}"
               + ("" if high == math.inf else f" and {'below' if high_open else 'at most'} {high:g}"))

    def rule(v):
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
        return None if ok else allowed
    return rule


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v) and f"null or {rule(v)}"


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def choice(*options) -> Rule:
    return lambda v: None if any(v == o and type(v) is type(o) for o in options) else \
        f"one of {', '.join(repr(o) for o in options)}"


def sequence(item: Rule, min_length: int, max_length: int) -> Rule:
    def rule(v):
        if isinstance(v, (tuple, list)) and min_length <= len(v) <= max_length and all(item(x) is None for x in v):
            return None
        return f"a list of {min_length} to {max_length} entries, each {item(None)}"
    return rule


def interval(low: float, high: float) -> Rule:
    """Two numbers [lo, hi] with low <= lo < hi <= high."""
    allowed = f"two numbers lo < hi, from {low:g} to {high:g}"
    bound = number(low, high)
    return lambda v: None if (isinstance(v, (tuple, list)) and len(v) == 2 and all(bound(x) is None for x in v)
                              and v[0] < v[1]) else allowed


def text(pattern: re.Pattern, meaning: str) -> Rule:
    return lambda v: None if isinstance(v, str) and pattern.fullmatch(v) else meaning


def is_class_name(name) -> bool:
    """Printable (one line in every listing and error), not blank, at most MAX_CLASS_NAME characters."""
    return isinstance(name, str) and 0 < len(name) <= MAX_CLASS_NAME and name.isprintable() and bool(name.strip())


def class_names(v) -> str | None:
    if isinstance(v, (tuple, list)) and len(v) <= MAX_CLASSES and all(map(is_class_name, v)) and len(set(v)) == len(v):
        return None
    return (f"a list of at most {MAX_CLASSES:,} distinct class names, each 1 to {MAX_CLASS_NAME} printable "
            f"characters, not blank")


SECTION_RULES: dict[str, dict[str, Rule]] = {
    "UNetConfig": {
        "widths": sequence(integer(1, MAX_WIDTH), 1, MAX_LEVELS),
        "bottom_width": integer(1, MAX_WIDTH),
        "block_depth": integer(1, MAX_BLOCK_DEPTH),
        # sin and cos halves of the sinusoidal embedding
        "embedding_size": integer(2, MAX_EMBEDDING_SIZE, even=True),
        "embedding_max_frequency": number(0, 1e6, low_open=True),
        "channels": lambda v: None if v == 3 and _is_int(v) else "3 (corolla's images are RGB)",
        "classes": class_names,
        "class_modulation": choice(*conditioning.MODULATIONS),
        "class_with_noise": boolean,
        "noise_in_blocks": boolean,
        "attention": boolean,
    },
    "DataConfig": {
        "image_size": integer(8, MAX_IMAGE_SIZE),
        "repetitions": integer(1, MAX_REPETITIONS),
        "shuffle_seed": integer(0, MAX_SEED),
        "val_fraction": number(0, 1, high_open=True),
        "crop": boolean,
        "class_counts": sequence(integer(0, 2 ** 40), 0, MAX_CLASSES),
    },
    "TrainConfig": {
        "epochs": integer(1, MAX_EPOCHS),
        "batch_size": integer(1, MAX_BATCH),
        "lr": number(0, low_open=True),
        "lr_warmup": optional(integer(0, MAX_LR_RAMP)),
        "lr_cooldown": integer(0, MAX_LR_RAMP),
        "hflip": boolean,
        "min_snr_gamma": number(0, MAX_SNR_GAMMA),
        "loss": choice(*losses.LOSSES),
        "loss_scales": integer(1, MAX_LOSS_SCALES),
        "time_range": interval(0, 1),
        "loss_space": choice(*losses.SPACES),
        "weight_decay": number(0),
        "adam_eps": number(0, low_open=True),
        "keras_adam_step": boolean,
        "adam_betas": sequence(number(0, 1, high_open=True), 2, 2),
        "ema": number(0, 1, high_open=True),
        "ema_warmup": boolean,
        "ema_init": choice("copy", "fresh"),
        "schedule": choice(*schedules.SCHEDULES),
        "seed": integer(0, MAX_SEED),
        "sample_steps": integer(1, MAX_STEPS),
        "grid_images": integer(1, 1024),
        "accumulate": integer(1, MAX_BATCH),
        "channels_last": boolean,
        "compile": boolean,
        "precision": choice(*precision.CHOICES),
        "sync_bn": boolean,
        "eval_every": integer(0, MAX_EPOCHS),
        "eval_samples": integer(1, MAX_EVAL_SAMPLES),
        "eval_steps": integer(1, MAX_STEPS),
        "keep_best": choice("", *KEEP_BEST_METRICS),
        "label_dropout": number(0, 1, high_open=True),
    },
    "SamplingConfig": {
        "eps_scale": number(*samplers.EPS_SCALES),
        "multistep_eps_scale": optional(number(*samplers.EPS_SCALES)),
        "handover_eps_scale": optional(number(*samplers.EPS_SCALES)),
        "layout": optional(lambda v: None if isinstance(v, str) and PRESET_NAME.fullmatch(v) and v.strip(".")
                           else "the name of a sub-folder of the checkpoint's folder or of a shipped model: 1 to 64 "
                                "letters, digits, '_', '-' or '.'"),
        "layout_start": optional(number(0, 1, low_open=True, high_open=True)),
    },
    "Config": {
        "preset": text(PRESET_NAME, "1 to 64 letters, digits, '_', '-' or '.'"),
    },
}
SECTION_NAMES = {"UNetConfig": "unet", "DataConfig": "data", "TrainConfig": "train", "SamplingConfig": "sampling",
                 "Config": ""}


def check_section(section) -> None:
    """Every field of one config dataclass against its rule -> ValueError naming the first bad one."""
    kind = type(section).__name__
    rules = SECTION_RULES[kind]
    prefix = SECTION_NAMES[kind] + "." if SECTION_NAMES[kind] else ""
    for field in dataclasses.fields(section):
        rule = rules.get(field.name)
        value = getattr(section, field.name)
        allowed = rule(value) if rule is not None else None
        if allowed is not None:
            raise ValueError(f"{prefix}{field.name} = {short(value)} is not allowed: must be {allowed}")


def held_bytes(count: int, channels: int, size: int) -> int:
    """Memory of `count` generated images kept as float32."""
    return count * channels * size * size * 4


def check_held_images(count: int, size: int, what: str, channels: int = 3) -> None:
    """Refuse up front to hold more generated images than MAX_HELD_BYTES (a grid, an evaluation)."""
    if held_bytes(count, channels, size) > MAX_HELD_BYTES:
        most = MAX_HELD_BYTES // held_bytes(1, channels, size)
        raise ValueError(f"{what}: {count:,} images of {size}x{size} would take "
                         f"{held_bytes(count, channels, size) / 2 ** 30:.1f} GiB at once; "
                         f"at most {most:,} at this size")


# Peak memory of one network evaluation, per image pixel, of the reference U-Net (widths 32/64/96,
# bottom 128) on the commands' sampling path (channels-last, float32, CPU): 2,020-2,380 bytes at
# batch 8-32 and 64-128 px (benchmarks/sampling_memory.py), with a margin; other widths scale it
# by their sum.
EVALUATION_BYTES_PER_PIXEL = 2_600
REFERENCE_WIDTH_SUM = 32 + 64 + 96 + 128


def evaluation_bytes(widths: tuple[int, ...], bottom_width: int, batch: int, size: int,
                     attention_heads: int = 0) -> int:
    """About how much memory one network evaluation of `batch` images of size x size takes, with
    the bottom's attention (unet.BottomAttention) when it has heads: its float32 scores, their
    softmax and its cast, three (heads, P, P) arrays per image for P positions at the bottom,
    which grow with the fourth power of the size."""
    scale = (sum(widths) + bottom_width) / REFERENCE_WIDTH_SUM
    positions = (size >> len(widths)) ** 2
    return math.ceil(EVALUATION_BYTES_PER_PIXEL * scale * batch * size * size
                     + 3 * 4 * attention_heads * positions ** 2 * batch)


def available_bytes(device) -> int | None:
    """Memory free for a new allocation on `device` (on a CPU Linux's MemAvailable plus what this
    process's malloc holds freed, corolla.heap), None when unknown (another system, or a device
    that does not say)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            line = next((entry for entry in meminfo if entry.startswith("MemAvailable:")), None)
    except OSError:
        return None
    return None if line is None else int(line.split()[1]) * 1024 + heap.free_bytes_held()


def check_evaluation_memory(network, batch: int, size: int, device) -> None:
    """Refuse, before allocating, a batch whose evaluations of `network` (a corolla.unet.UNet) cannot
    fit in the free memory (a guided batch is evaluated twice over: give it as such)."""
    free = available_bytes(device)
    c = network.config
    heads = network.attention.heads if network.attention is not None else 0
    needed = evaluation_bytes(c.widths, c.bottom_width, batch, size, heads)
    if free is None or needed <= free:
        return
    most = free // evaluation_bytes(c.widths, c.bottom_width, 1, size, heads)
    fits = (f"at most {most:,} images at once at this size" if most else
            "not even one image fits at this size")
    raise ValueError(f"{batch:,} images of {size}x{size} at once need about {needed / 2 ** 30:.1f} GiB for the "
                     f"network, more than the {free / 2 ** 30:.1f} GiB free on {device}: lower --batch-size "
                     f"({fits})")


def json_file(obj) -> bytes:
    """A JSON file as corolla writes it (config.json, state.json): check_config measures the
    config with the same encoding, so what training saves, loading reads."""
    return (json.dumps(obj, indent=2) + "\n").encode()


OUT_OF_MEMORY_ADVICE = "ask for less at once: a smaller --batch-size, or fewer or smaller images"


def out_of_memory(error: BaseException) -> str | None:
    """The one-line message for an allocator's failure (MemoryError, torch's OutOfMemoryError, the
    CPU allocator's RuntimeError), None for any other error. Where the size is known it is
    checked before allocating (check_held_images, figures.check_grid_size); this is for the rest."""
    text = str(error)
    if not (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text):
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    amount = f" (an allocation of {int(asked[1]) / 2 ** 30:.1f} GiB failed)" if asked else ""
    return f"out of memory{amount}; {OUT_OF_MEMORY_ADVICE}"


def check_config(config) -> None:
    """A whole Config: each section, then what the sections must agree on, and that its
    config.json is one loading reads (many long class names are each allowed, not all together)."""
    for section in (config, config.unet, config.data, config.train, config.sampling):
        check_section(section)
    levels = len(config.unet.widths)
    if config.data.image_size % 2 ** levels:
        raise ValueError(f"data.image_size = {config.data.image_size} is not allowed: the U-Net halves the image "
                         f"{levels} times (unet.widths), so it must be a multiple of {2 ** levels}")
    classes, counts = config.unet.classes, config.data.class_counts
    if counts and len(counts) != len(classes):
        raise ValueError(f"data.class_counts holds {len(counts)} counts for {len(classes)} classes (unet.classes): "
                         f"one per class, or none")
    check_held_images(config.train.eval_samples, config.data.image_size, "train.eval_samples",
                      config.unet.channels)
    size = len(json_file(dataclasses.asdict(config))) + CONFIG_FILE_KEYS
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{len(classes):,} classes would make a config.json of {size:,} bytes; a checkpoint's is at "
                         f"most {MAX_JSON_BYTES:,}: fewer or shorter class names")
