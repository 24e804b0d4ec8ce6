"""The `corolla` command: parses arguments into configs and calls the library; no algorithm here."""
from __future__ import annotations

import argparse
import importlib
from typing import Callable
import signal
import sys
import warnings
from pathlib import Path

from . import conditioning, config as configs, distributed, limits, samplers
from .data import imagefolder
from .storage import checkpoint, outputs, runfolder
from . import schedules
from . import precision as precisions
from .training import Interrupted, TrainingError

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
non_negative_int = whole_number(0, 10 ** 9)
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


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on a folder of images (default: the bundled flowers)")
    p.add_argument("data_dir", nargs="?", type=path_text,
                   help="folder of images, searched recursively (default: bundled flowers)")
    p.add_argument("--preset", default="seed64", choices=sorted(configs.PRESETS), action=Given,
                   help="seed64 = the reference exactly; demo = 32x32, fast on a CPU; tiny = for smoke tests")
    p.add_argument("--epochs", type=whole_number(1, limits.MAX_EPOCHS))
    p.add_argument("--batch-size", type=batch_size)
    p.add_argument("--image-size", type=image_size)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--lr-warmup", type=whole_number(0, limits.MAX_LR_RAMP), metavar="STEPS",
                   help="ramp the learning rate linearly over the first STEPS steps (default "
                        f"{configs.WARM_START_LR_WARMUP} with --init-from, else 0)")
    p.add_argument("--lr-cooldown", type=whole_number(0, limits.MAX_LR_RAMP), metavar="STEPS",
                   help="decay the learning rate linearly to 0 over the run's last STEPS steps (to the end of "
                        "--epochs, or --max-steps when given; default 0)")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror each training image left-right with probability 1/2 (default off: the reference)")
    p.add_argument("--min-snr-gamma", type=snr_gamma, metavar="GAMMA",
                   help="weight each image's loss by min(SNR, GAMMA) / SNR (Hang et al. 2023); 0: off, the reference")
    p.add_argument("--repetitions", type=whole_number(1, limits.MAX_REPETITIONS),
                   help="times the data set is repeated per epoch")
    p.add_argument("--val-fraction", type=fraction, help="share of images held out for the validation loss")
    p.add_argument("--val-data", metavar="DIR", type=path_text,
                   help="folder of held-out images for the validation loss (then all of DATA_DIR trains)")
    p.add_argument("--schedule", choices=sorted(schedules.SCHEDULES))
    p.add_argument("--ema", type=fraction, help="EMA decay (reference 0.999)")
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="ramp the EMA decay as min(ema, (1+step)/(10+step))")
    p.add_argument("--ema-init", choices=["copy", "fresh"],
                   help="copy: EMA starts as the network; fresh: own random weights (the reference)")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                   help="centre-crop to a square instead of squashing")
    p.add_argument("--seed", type=seed)
    p.add_argument("--out", type=path_text, help="run folder (default runs/PRESET)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds one, deleting its checkpoints, log and grids")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimiser steps in all")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--accumulate", type=batch_size,
                   help="micro-batches per optimiser step (gradient accumulation); the batch size stays global")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format for the convolutions (speed only; default on, --no-channels-last for NCHW)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the trained network (speed only; the first steps compile; the EMA network stays eager)")
    add_precision(p, default=None)
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun on GPUs, BatchNorm statistics over the global batch")
    p.add_argument("--eval-every", type=whole_number(0, limits.MAX_EPOCHS), metavar="N",
                   help="every N epochs, score fixed generated images (SWD, held-out loss, memorisation; "
                        "KID/FID with Inception weights); 0: never")
    p.add_argument("--eval-samples", type=whole_number(1, limits.MAX_EVAL_SAMPLES),
                   help="images generated per evaluation (default 128)")
    p.add_argument("--eval-steps", type=steps, help="sampling steps per evaluation (default 10)")
    p.add_argument("--keep-best", choices=["swd", "heldout_loss", "kid", "fid"],
                   help="keep the EMA weights of the best evaluation in RUN/best")
    p.add_argument("--log", action="append", choices=["tensorboard", "wandb"], default=[],
                   help="also report to TensorBoard (RUN/tensorboard) or W&B (RUN/wandb); repeat for both")
    p.add_argument("--conditional", action="store_true",
                   help="learn the data's classes (one sub-folder per class, or --labels) for sample --class, "
                        "with classifier-free guidance")
    p.add_argument("--labels", metavar="FILE", type=path_text,
                   help="with --conditional: a CSV giving each image's class (columns image, and label "
                        "and/or class_name) instead of sub-folders")
    p.add_argument("--label-dropout", type=fraction,
                   help="with --conditional: share of images trained with the null label, so the model also "
                        "samples unconditionally (default 0.1)")
    p.add_argument("--init-from", metavar="MODEL", type=path_text,
                   help="start from a trained model's weights (a checkpoint, a run folder or a shipped model's "
                        "name) instead of random ones: the same network, or its unconditional twin for "
                        "--conditional; the optimiser starts afresh")
    p.set_defaults(func=run_train)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a checkpoint")
    add_model_options(p)
    p.add_argument("-n", "--num-images", type=whole_number(1, limits.MAX_IMAGES), default=64,
                   help="images to make (a grid holds them all in memory; --each alone streams them)")
    p.add_argument("--steps", type=steps, default=20)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--eta", type=eta, default=0.0, help="0: deterministic DDIM; 1: DDPM-like noise")
    p.add_argument("--sampler", default="ddim", choices=sorted(samplers.SAMPLERS),
                   help="ddim (the reference); dpmpp_2m, dpmpp_3m, unipc reach the same image in fewer steps")
    p.add_argument("--grid", choices=sorted(samplers.GRIDS),
                   help="time grid: uniform in t (the reference), uniform in log-SNR, or Karras'; "
                        "default uniform for ddim, logsnr for the other samplers")
    p.add_argument("--batch-size", type=batch_size, default=64)
    p.add_argument("--out", type=path_text, help="grid PNG to write (default samples.png; none with --each alone)")
    p.add_argument("--each", metavar="DIR", type=path_text,
                   help="write one PNG per image into DIR, each as soon as its batch is made")
    p.add_argument("--class", dest="classes", action="append", metavar="CLASS",
                   help="a class of a conditional model, by name or number (`corolla classes` lists them); "
                        "repeat for one row of -n images each; none: unconditional. Without a checkpoint or "
                        "--model: the shipped conditional model")
    p.add_argument("--guidance", type=guidance,
                   help="with --class: classifier-free guidance, 0 unconditional, 1 the conditional model, more "
                        f"follows the class more closely at the cost of variety (default {conditioning.DEFAULT_GUIDANCE:g})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sample)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's EMA weights as a small release checkpoint")
    p.add_argument("checkpoint", type=path_text, help="checkpoint folder or run folder")
    p.add_argument("--out", required=True, type=path_text,
                   help="release folder to write (config.json + model.safetensors)")
    p.add_argument("--float32", action="store_true", help="keep float32 weights (default float16)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from .storage.pretrained import export_release
    print(f"wrote {export_release(args.checkpoint, args.out, half=not args.float32)}")
    return 0


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model a command loads: a checkpoint or run folder, or a shipped model by name."""
    p.add_argument("checkpoint", nargs="?", type=path_text,
                   help="checkpoint folder or run folder (default: the shipped model)")
    p.add_argument("--model", metavar="NAME", help="a shipped model by name (`corolla models` lists them)")
    add_precision(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")


def checkpoint_path(args) -> str:
    """The checkpoint named on the command line, else the shipped model --model names, else the
    default: the class-conditional shipped model where the command draws or lists classes (sample
    --class, classes, class-grid), the unconditional one elsewhere."""
    from .storage import pretrained
    if args.checkpoint is not None and args.model is not None:
        raise ValueError(f"give a checkpoint ({args.checkpoint}) or --model {args.model}, not both")
    if args.checkpoint is not None:
        return args.checkpoint
    wants_classes = getattr(args, "classes", None) or getattr(args, "lists_classes", False)
    return str(pretrained.path(args.model or (pretrained.CONDITIONAL if wants_classes else None)))


def load_model_for(args, device=None):
    """-> (model, config, device): the model of add_model_options, in the asked precision."""
    from .devices import resolve_device
    device = device or resolve_device(args.device)
    model, config = checkpoint.load_for_sampling(checkpoint_path(args), device, args.precision)
    return model, config, device


# Modules that add subcommands: each has register(subparsers), whose parsers set_defaults(func=...).
COMMAND_MODULES: list[str] = ["cli_figures", "cli_evaluate", "cli_models", "cli_download", "cli_serve",
                              "cli_edit", "cli_classes"]


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="corolla", description="Train and sample denoising diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_export(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(f"corolla.{name}").register(sub)
    return p


def train_config(args, base: configs.Config | None = None) -> configs.Config:
    base = base or configs.preset(args.preset)
    data_changes = {k: v for k, v in {"image_size": args.image_size, "repetitions": args.repetitions,
                                      "val_fraction": args.val_fraction, "crop": args.crop}.items() if v is not None}
    train_changes = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                       "lr_warmup": args.lr_warmup, "lr_cooldown": args.lr_cooldown,
                                       "hflip": args.hflip, "min_snr_gamma": args.min_snr_gamma,
                                       "schedule": args.schedule, "ema": args.ema, "ema_warmup": args.ema_warmup,
                                       "ema_init": args.ema_init, "seed": args.seed, "accumulate": args.accumulate,
                                       "channels_last": args.channels_last, "compile": args.compile,
                                       "precision": args.precision, "sync_bn": args.sync_bn, "eval_every": args.eval_every,
                                       "eval_samples": args.eval_samples, "eval_steps": args.eval_steps,
                                       "keep_best": args.keep_best, "label_dropout": args.label_dropout}.items()
                     if v is not None}
    if getattr(args, "val_data", None) and data_changes.get("val_fraction"):
        raise ValueError("--val-data and --val-fraction both choose the held-out images; give one")
    if getattr(args, "val_data", None):
        data_changes["val_fraction"] = 0.0  # the whole folder trains
    if train_changes.get("keep_best") and not train_changes.get("eval_every", base.train.eval_every):
        raise ValueError("--keep-best needs --eval-every N (N >= 1): the best is chosen among evaluations")
    return base.replace(data=data_changes, train=train_changes)


# options a resumed run may change: its length and how it runs, not what it learns
RESUMABLE = {"epochs", "accumulate", "channels_last", "compile", "precision", "sync_bn", "eval_every", "eval_samples",
             "eval_steps", "keep_best"}


def run_train(args) -> int:
    from .training import train
    out = Path(args.out or f"runs/{args.preset}")
    config = train_config(args)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: give one")
    if args.resume and args.init_from:
        raise ValueError("--init-from starts a new run from a model's weights, --resume continues one: give one")
    if not args.conditional and not args.resume and (args.labels or args.label_dropout is not None):
        raise ValueError("--labels and --label-dropout are for a class-conditional run: add --conditional")
    runfolder.check_free(out)  # before reading a run that another process may be writing
    if args.resume:
        if not (out / "latest").exists():
            raise ValueError(f"--resume: {out} holds no checkpoint to resume (no {out / 'latest'})")
        saved = checkpoint.load_config(checkpoint.resolve(out))
        if "preset" in getattr(args, "given", ()) and args.preset != saved.preset:  # ignored: the run keeps its config
            raise ValueError(f"--resume continues {out}, a run of preset {saved.preset}; --preset {args.preset} cannot "
                             f"change it: leave --preset out, or start a new run")
        # a resumed run keeps its own config; only its length and how it runs may change
        wanted, have = train_config(args, saved).to_dict(), saved.to_dict()
        changed = [f"{part}.{key}" for part in ("data", "train") for key, value in wanted[part].items()
                   if value != have[part][key] and key not in RESUMABLE]
        if changed:
            raise ValueError(f"--resume continues {out} with its saved config; only "
                             f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE))} may change, "
                             f"not {', '.join(changed)}")
        if args.conditional and not saved.unet.classes:
            raise ValueError(f"--resume continues {out}, which was trained without --conditional; a run cannot "
                             f"become conditional (start a new one)")
        config = train_config(args, saved)
    folder = train(config, args.data_dir, out, args.device, args.resume, progress=not args.no_progress,
                   max_steps=args.max_steps, val_dir=args.val_data, overwrite=args.overwrite, report_to=args.log,
                   conditional=args.conditional, labels_file=args.labels, init_from=args.init_from)
    print(f"checkpoint: {folder}\nsample grid: {out / 'grid.png'}\nmetrics: {out / 'metrics.jsonl'}")
    return 0


def run_sample(args) -> int:
    import torch
    from tqdm import tqdm
    from .generation import class_labels
    from .storage.grids import save_each, save_grid
    from .devices import resolve_device
    if args.guidance is not None and not args.classes:
        raise ValueError("--guidance needs --class: without a class the model samples unconditionally")
    # every output is checked before any work: an unwritable one must not cost the sampling
    grid = outputs.check_file(args.out or "samples.png", "--out") if args.out or not args.each else None
    each = outputs.check_folder(args.each, "--each") if args.each else None
    world, device = distributed.init(resolve_device(args.device))
    model, config, _ = load_model_for(args, device)
    size = config.data.image_size
    # one row of -n images per --class (image j of every row starts from the same noise); checked now
    rows = [class_labels(model, name, 1) for name in args.classes] if args.classes else [None]
    guided = conditioning.DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    stream = each is not None and not world.distributed  # under torchrun, rank 0 writes all once gathered
    if grid is not None or not stream:
        limits.check_held_images(args.num_images * len(rows), size, "-n (a grid holds every image; --each DIR "
                                 "without --out writes them one batch at a time)", model.network.config.channels)
    share = distributed.shard(args.num_images, world)
    bar = tqdm(total=len(share) * len(rows), desc="sampling", unit="image", dynamic_ncols=True,
               disable=args.no_progress or not world.is_main)
    prefixes = ["" if number is None else f"class{number}-" for number in rows]  # image j of class c: classC-0000j.png
    kept = []
    for number, prefix in zip(rows, prefixes):
        def made(first: int, images, prefix=prefix) -> None:
            if stream:
                save_each(images, each, start=first, prefix=prefix)
            bar.update(len(images))
        kept.append(distributed.generate_all(model, args.num_images, on_batch=made,
                                             keep=grid is not None or not stream, steps=args.steps, seed=args.seed,
                                             sampler=args.sampler, eta=args.eta, batch_size=args.batch_size,
                                             image_size=size, classes=number, guidance=guided,
                                             grid=args.grid or ("uniform" if args.sampler == "ddim" else "logsnr")))
    bar.close()
    distributed.shutdown(world)
    if not world.is_main:
        return 0
    if grid is not None:
        print(f"wrote {save_grid(torch.cat(kept), grid, ncol=args.num_images if args.classes else None)}")
    if each is not None:
        if not stream:
            for prefix, images in zip(prefixes, kept):
                save_each(images, each, prefix=prefix)
        print(f"wrote {args.num_images * len(rows)} images to {each}")
    return 0


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds as Ctrl-C does: a file being written removes its temporary


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:  # argparse refused the arguments (one line, Parser.error) or printed --help
        return exit.code
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *rest: f"corolla: warning: {message}\n"
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return args.func(args)
    except (ValueError, imagefolder.DataError, checkpoint.CheckpointError) as error:
        print(f"corolla: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as error:
        print(f"corolla: error: {error}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as error:
        message = limits.out_of_memory(error)
        if message is None:
            raise
        print(f"corolla: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # a full disk, a vanished folder: one line, no traceback
        print(f"corolla: error: {error}", file=sys.stderr)
        return 1
    except Interrupted as error:
        print(f"corolla: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("corolla: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
