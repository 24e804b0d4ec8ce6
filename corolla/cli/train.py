"""`corolla train` and `corolla export`: a run from a folder of images, and its release checkpoint or
ONNX export."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from .. import config as configs
from .. import limits, losses, schedules, warmstart
from ..conditioning import MODULATIONS
from ..storage import checkpoint, outputs, runfolder
from .options import (
    LAYOUT_HELP,
    Given,
    add_layout,
    add_precision,
    add_progress,
    batch_size,
    fraction,
    image_size,
    layout_choice,
    layout_request,
    path_text,
    positive_float,
    positive_int,
    seed,
    snr_gamma,
    steps,
    whole_number,
)

# options that shape a new network (fields of its unet section); CLASS_OPTIONS only a conditional one's
CLASS_OPTIONS = ("class_modulation", "class_with_noise")
NETWORK_OPTIONS = (*CLASS_OPTIONS, "noise_in_blocks", "attention")


def register(sub) -> None:
    _add_train(sub)
    p = sub.add_parser("export", help="write a checkpoint's EMA weights as a small release checkpoint, or as "
                                      "ONNX to sample without PyTorch")
    p.add_argument("checkpoint", type=path_text, help="checkpoint folder or run folder (with --onnx also a shipped "
                                                      "model's name)")
    p.add_argument("--out", required=True, type=path_text,
                   help="folder to write: a release checkpoint (config.json + model.safetensors), with --onnx "
                        "denoiser.onnx + sampler.json, with --web a static page beside them")
    p.add_argument("--float32", action="store_true", help="keep float32 weights (default float16)")
    p.add_argument("--onnx", action="store_true",
                   help="write the EMA network as ONNX (float32) and what a sampler needs, for `corolla sample "
                        "OUT` and corolla.portable.sampling (numpy and onnxruntime; pip install 'corolla[onnx]')")
    p.add_argument("--web", action="store_true",
                   help="write a static folder (index.html, the ONNX export, onnxruntime-web) that generates "
                        "images in the browser; serve it with any static file server")
    p.add_argument("--ort", metavar="PATH", type=path_text,
                   help="with --web: onnxruntime-web's npm tarball (.tgz) or unpacked package, instead of "
                        "downloading it from the npm registry")
    add_layout(p, "with --onnx or --web, " + LAYOUT_HELP + "; both networks are written, the layout model's in "
                  "OUT/layout, and the ONNX sampler and the page draw the cascade")
    p.set_defaults(func=run_export)


def _add_train(sub) -> None:
    """train's options, in the order --help lists them: those named as a config field set that
    field (train_config)."""
    p = sub.add_parser("train", help="train a model on a folder of images (default: the bundled flowers)")
    p.add_argument("data_dir", nargs="?", type=path_text,
                   help="folder of images, searched recursively (default: bundled flowers)")
    p.add_argument("--preset", default="seed64", choices=sorted(configs.PRESETS), action=Given,
                   help="seed64 = the reference exactly; demo = 32x32, fast on a CPU; tiny = for smoke tests")
    _add_recipe(p)
    _add_run(p)
    _add_speed(p)
    _add_evaluation(p)
    _add_classes(p)
    p.add_argument("--init-from", metavar="MODEL", type=path_text,
                   help="start from a trained model's weights (a checkpoint, a run folder or a shipped model's "
                        "name) instead of random ones: the same network, or its unconditional twin for "
                        "--conditional, or (with --noise-in-blocks) a conditional model's null-label network; "
                        "the optimiser starts afresh")
    p.set_defaults(func=run_train)


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """What is learned and how: the data, the optimiser, the schedule, the EMA."""
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
    p.add_argument("--loss", choices=sorted(losses.LOSSES),
                   help="error of the predicted noise: l1 (the reference's) or mse (squared, as DDPM; its "
                        "minimum is the mean prediction the samplers assume)")
    p.add_argument("--loss-scales", type=whole_number(1, limits.MAX_LOSS_SCALES), metavar="N",
                   help="add the loss of the noise average-pooled to 1/2, 1/4, ... of the resolution, N levels in "
                        "all, so the coarse layout weighs more (Hoogeboom et al. 2023); 1: off, the reference")
    p.add_argument("--loss-space", choices=losses.SPACES,
                   help="measure the error on the noise (the reference), on the image the predicted noise "
                        "implies (the error times noise/signal rate: the noisiest levels, where the layout is "
                        "decided, weigh up to 50x, the cleanest a third), or on the larger of the two (max)")
    p.add_argument("--time-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="draw the training diffusion times from [LO, HI) instead of [0, 1): a network for those "
                        "noise levels only (1 is pure noise), an expert (eDiff-I, Balaji et al. 2022); its "
                        "validation loss is over the same range")
    p.add_argument("--repetitions", type=whole_number(1, limits.MAX_REPETITIONS),
                   help="times the data set is repeated per epoch")
    p.add_argument("--val-fraction", type=fraction, help="share of images held out for the validation loss")
    p.add_argument("--val-data", metavar="DIR", type=path_text,
                   help="folder of held-out images for the validation loss (then all of DATA_DIR trains)")
    p.add_argument("--schedule", choices=sorted(schedules.SCHEDULES), action=Given,
                   help="the noise schedule (default: the preset's; with --init-from, the source's)")
    p.add_argument("--ema", type=fraction, help="EMA decay (reference 0.999)")
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="ramp the EMA decay as min(ema, (1+step)/(10+step))")
    p.add_argument("--ema-init", choices=["copy", "fresh"],
                   help="copy: EMA starts as the network; fresh: own random weights (the reference)")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                   help="centre-crop to a square instead of squashing")
    p.add_argument("--seed", type=seed)


def _add_run(p: argparse.ArgumentParser) -> None:
    """Where the run lives, on which device, and when it stops."""
    p.add_argument("--out", type=path_text, help="run folder (default runs/PRESET)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds one, deleting its checkpoints, log and grids")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimiser steps in all")
    add_progress(p)


def _add_speed(p: argparse.ArgumentParser) -> None:
    """Options that change the speed, not what is learned."""
    p.add_argument("--accumulate", type=batch_size,
                   help="micro-batches per optimiser step (gradient accumulation); the batch size stays global")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format for the convolutions (speed only; default on, --no-channels-last for NCHW)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the trained network (speed only; the first steps compile; the EMA network "
                        "stays eager)")
    add_precision(p, default=None)
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun on GPUs, BatchNorm statistics over the global batch")


def _add_evaluation(p: argparse.ArgumentParser) -> None:
    """Scoring during training and reporting to trackers."""
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


def _add_classes(p: argparse.ArgumentParser) -> None:
    """Class-conditional training."""
    p.add_argument("--conditional", action="store_true",
                   help="learn the data's classes (one sub-folder per class, or --labels) for sample --class, "
                        "with classifier-free guidance")
    p.add_argument("--labels", metavar="FILE", type=path_text,
                   help="with --conditional: a CSV giving each image's class (columns image, and label "
                        "and/or class_name) instead of sub-folders")
    p.add_argument("--label-dropout", type=fraction,
                   help="with --conditional: share of images trained with the null label, so the model also "
                        "samples unconditionally (default 0.1)")
    p.add_argument("--class-modulation", choices=MODULATIONS,
                   help="with --conditional: what each residual block does with the class: shift its features "
                        "(default, as species64) or scale and shift them (FiLM)")
    p.add_argument("--class-with-noise", action="store_const", const=True,
                   help="with --conditional: join the class with the noise level in a learned layer before the "
                        "blocks, so that the class can act differently at each noise level")
    p.add_argument("--noise-in-blocks", action="store_const", const=True,
                   help="give every residual block the noise level as a learned shift of its features, as "
                        "DDPM's and ADM's U-Nets do (the reference reads it only at the input); with "
                        "--init-from a model without it, the run starts as exactly that model")
    p.add_argument("--attention", action="store_const", const=True,
                   help="self-attention between the bottom's two residual blocks, so that every position of "
                        "the coarsest features sees the whole image (DDPM's and ADM's U-Nets attend there; the "
                        "reference does not); with --init-from a model without it, the run starts as exactly "
                        "that model")


def train_config(args: argparse.Namespace, base: configs.Config | None = None) -> configs.Config:
    """The config train's arguments choose: every option named as a field of the data or train
    section sets that field when given; the rest comes from `base` (default: --preset's)."""
    base = base or configs.preset(args.preset)
    changes = {section: {f.name: getattr(args, f.name) for f in fields(getattr(base, section))
                         if getattr(args, f.name, None) is not None} for section in ("data", "train")}
    changes["unet"] = {name: getattr(args, name) for name in NETWORK_OPTIONS if getattr(args, name, None)}
    if getattr(args, "init_from", None) and "schedule" not in getattr(args, "given", ()):
        # a fine-tune keeps the noise levels its source learned unless another schedule is named
        source = checkpoint.load_config(warmstart.source_path(args.init_from))
        changes["train"]["schedule"] = source.train.schedule
    if args.val_data and changes["data"].get("val_fraction"):
        raise ValueError("--val-data and --val-fraction both choose the held-out images; give one")
    if args.val_data:
        changes["data"]["val_fraction"] = 0.0  # the whole folder trains
    if changes["train"].get("keep_best") and not changes["train"].get("eval_every", base.train.eval_every):
        raise ValueError("--keep-best needs --eval-every N (N >= 1): the best is chosen among evaluations")
    return base.replace(**changes)


def _resumed_config(args: argparse.Namespace, out: Path) -> configs.Config:
    """train's arguments over the config saved in --out (corolla.training.resumed_config checks
    that they change only what a resumed run may)."""
    if not (out / "latest").exists():
        raise ValueError(f"--resume: {out} holds no checkpoint to resume (no {out / 'latest'})")
    saved = checkpoint.load_config(checkpoint.resolve(out))
    if "preset" in getattr(args, "given", ()) and args.preset != saved.preset:  # ignored: the run keeps its config
        raise ValueError(f"--resume continues {out}, a run of preset {saved.preset}; --preset {args.preset} cannot "
                         f"change it: leave --preset out, or start a new run")
    if args.conditional and not saved.unet.classes:
        raise ValueError(f"--resume continues {out}, which was trained without --conditional; a run cannot "
                         f"become conditional (start a new one)")
    return train_config(args, saved)


def run_train(args) -> int:
    from ..training import train
    out = Path(args.out or f"runs/{args.preset}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: give one")
    if args.resume and args.init_from:
        raise ValueError("--init-from starts a new run from a model's weights, --resume continues one: give one")
    flags = {name: f"--{name.replace('_', '-')}" for name in NETWORK_OPTIONS}
    shaping = [flag for name, flag in flags.items() if getattr(args, name)]
    if not args.conditional and not args.resume and (args.labels or args.label_dropout is not None
                                                     or any(getattr(args, name) for name in CLASS_OPTIONS)):
        raise ValueError(f"--labels, --label-dropout, {', '.join(flags[name] for name in CLASS_OPTIONS)} are for "
                         f"a class-conditional run: add --conditional")
    if args.resume and shaping:
        raise ValueError(f"{' and '.join(shaping)} set the shape of a new network; a resumed run keeps its own: leave "
                         f"{'them' if len(shaping) > 1 else 'it'} out")
    runfolder.check_free(out)  # before reading a run that another process may be writing
    config = _resumed_config(args, out) if args.resume else train_config(args)
    folder = train(config, args.data_dir, out, args.device, args.resume, progress=not args.no_progress,
                   max_steps=args.max_steps, val_dir=args.val_data, overwrite=args.overwrite, report_to=args.log,
                   conditional=args.conditional, labels_file=args.labels, init_from=args.init_from)
    print(f"checkpoint: {folder}\nsample grid: {out / 'grid.png'}\nmetrics: {out / 'metrics.jsonl'}")
    return 0


def run_export(args) -> int:
    if args.ort and not args.web:
        raise ValueError("--ort is for --web: it gives the page's onnxruntime-web")
    layout_request(args)
    if (args.layout is not None or args.layout_start is not None or args.no_layout) and not (args.onnx or args.web):
        raise ValueError("--layout, --layout-start and --no-layout are for --onnx and --web: they choose the "
                         "cascade's networks the ONNX sampler and the page draw with (a release checkpoint keeps "
                         "its config.json's layout model)")
    if args.web:
        return _export_web(args)
    if args.onnx:
        return _export_onnx(args)
    from ..storage.pretrained import export_release
    print(f"wrote {export_release(args.checkpoint, args.out, half=not args.float32)}")
    return 0


def _needs_onnx_extra(option: str) -> None:
    """The exports check their ONNX network with onnxruntime, and torch's exporter needs onnxscript."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ValueError(f"{option} needs the onnx extra ({error.name} is missing): pip install 'corolla[onnx]'") \
            from None


def _export_onnx(args) -> int:
    if args.float32:
        raise ValueError("--float32 is for release checkpoints: an ONNX export is always float32")
    _needs_onnx_extra("--onnx")
    from ..portable.export import export_onnx
    model, config, layout = _exported(args)
    out = outputs.check_folder(args.out, "--out")  # made once both models are known good
    written = export_onnx(model, out, config.data.image_size, class_counts=config.data.class_counts, layout=layout)
    print(f"wrote {written}")
    return 0


def _exported(args):
    """The model to export, its config, and the cascade's layout model (options.layout_choice: --layout,
    else the one its config.json names, unless --no-layout; or None), float32 on the CPU as an export is."""
    import torch

    from .. import cascade
    from ..warmstart import source_path
    folder = source_path(args.checkpoint)
    model, config = checkpoint.load_model(folder)
    chosen = layout_choice(args, folder, config)
    layout = None if chosen is None else cascade.load(chosen[0], model, config.data.image_size,
                                                      torch.device("cpu"), "fp32", chosen[1])
    return model, config, layout


def _export_web(args) -> int:
    if args.onnx or args.float32:
        given = "--onnx" if args.onnx else "--float32"
        raise ValueError(f"--web writes its own float32 ONNX export: leave out {given}")
    _needs_onnx_extra("--web")
    from ..portable import web
    model, config, layout = _exported(args)
    out = outputs.check_folder(args.out, "--out")
    folder = web.build(model, out, config.data.image_size, args.ort, config.data.class_counts, layout)
    print(f"wrote {folder}: serve it with any static file server, e.g. python -m http.server -d {folder}")
    return 0
