"""`corolla evaluate CHECKPOINT`: score a checkpoint, print a table, write JSON and the nearest pairs."""
from __future__ import annotations

import json
import math

from .. import cascade, limits, schedules
from ..inception import weights_help
from ..metrics import EvalSettings, evaluate_checkpoint
from ..storage import checkpoint, outputs
from ..storage.atomic import replacing
from .options import (
    add_layout,
    add_model_options,
    add_sampling,
    checkpoint_path,
    guidance,
    layout_choice,
    layout_request,
    path_text,
    whole_number,
)

# (key, label, format); None values print as what they need
ROWS = [
    ("swd", "SWD x1e3, mean over levels (lower is better)", "{:.2f}"),
    ("heldout_loss", "held-out denoising loss, L1 (lower is better)", "{:.4f}"),
    ("train_loss", "same loss on training images", "{:.4f}"),
    ("kid", "KID (lower is better)", "{:.5f}"),
    ("kid_std", "KID std over subsets", "{:.5f}"),
    ("fid", "FID (lower is better)", "{:.2f}"),
    ("nn_generated_median", "nearest training image, generated (RMS, median)", "{:.4f}"),
    ("nn_train_median", "nearest other training image, training (RMS, median)", "{:.4f}"),
    ("nn_heldout_median", "nearest training image, held-out real (RMS, median)", "{:.4f}"),
    ("nn_ratio", "generated / training distance (about 1: no copying)", "{:.3f}"),
    ("nn_copy_fraction", "share of near-copies (about 0.01 or less: none)", "{:.3f}"),
]


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="measure sample quality: SWD, held-out loss, memorisation, KID/FID")
    add_model_options(p)
    p.add_argument("--data", metavar="DIR", type=path_text,
                   help="the folder the model was trained on (default: bundled flowers)")
    p.add_argument("--heldout", metavar="DIR", type=path_text,
                   help="images the model never saw, for the held-out figures (default: the --data split's "
                        "held-out share)")
    p.add_argument("--samples", type=whole_number(1, limits.MAX_EVAL_SAMPLES), default=EvalSettings.samples,
                   help="images to generate (default %(default)s)")
    add_sampling(p, ("steps", "sampler", "eta", "eps_scale", "seed", "batch_size"),
                 seed="seeds generation, the held-out noise, SWD and KID subsets")
    p.add_argument("--random-class", action="store_true",
                   help="a conditional model's images each of a class drawn in proportion to its training images "
                        "(as `corolla sample --random-class`; default: unconditional); without a checkpoint or "
                        "--model: the shipped conditional model")
    p.add_argument("--guidance", type=guidance, help="with --random-class: classifier-free guidance "
                   f"(default {EvalSettings.guidance:g}; 1 is the conditional model alone)")
    add_layout(p)
    p.add_argument("--loss-schedule", choices=sorted(schedules.SCHEDULES), default="",
                   help="score the losses at this schedule's noise levels (default: the model's own), to compare "
                        "models trained under different schedules")
    p.add_argument("--json", type=path_text, default="evaluation.json", metavar="OUT",
                   help="JSON file to write (default %(default)s)")
    p.add_argument("--pairs", type=path_text, default="nearest_pairs.png", metavar="PNG",
                   help="the generated images nearest to a training image, each beside it (default %(default)s)")
    p.add_argument("--inception-weights", metavar="PATH", type=path_text,
                   help="local pt_inception-2015-12-05-6726825d.pth (or .safetensors) for KID and FID")
    p.set_defaults(func=run_evaluate)


def _finite(value):
    """value with every NaN or infinity (also inside a list) as None."""
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def with_reasons(results: dict) -> dict:
    """The results as JSON can hold them: a figure that could not be computed is null, and
    "not_computed" says why (JSON has no NaN; an evaluation.json with NaN is not valid JSON)."""
    reasons = {}
    out = {}
    for key, value in results.items():
        out[key] = _finite(value)
        if out[key] != value:
            reasons[key] = "not a finite number" + (" (in part)" if isinstance(value, list) else f" ({value})")
        elif value is None and key in ("kid", "kid_std", "fid"):
            reasons[key] = "needs Inception weights"
        elif value is None and key in ("heldout_loss", "heldout_loss_by_time", "nn_heldout_median"):
            reasons[key] = "no held-out images"
    return {**out, "not_computed": reasons}


def results_table(results: dict) -> str:
    width = max(len(label) for _, label, _ in ROWS)
    lines = [f"{results['checkpoint']}: {results['samples']} images, {results['steps']} {results['sampler']} steps, "
             f"eps scale {results['eps_scale']:g}, "
             f"seed {results['seed']}; {results['train_images']} training / {results['heldout_images']} "
             f"held-out images"]
    for key, label, form in ROWS:
        value = results.get(key)
        if value is None:
            shown = results.get("not_computed", {}).get(key, "not computed")
        else:
            shown = form.format(value)
        lines.append(f"  {label:<{width}}  {shown}")
    for prefix, against in (("swd_", "the training images"), ("heldout_swd_", "the held-out images")):
        levels = [k for k in results if k.startswith(prefix)]
        if levels:
            lines.append(f"  SWD x1e3 by resolution, against {against}: "
                         + ", ".join(f"{k[len(prefix):]}px {results[k]:.2f}" for k in levels))
    return "\n".join(lines)


def run_evaluate(args) -> int:
    layout_request(args)
    if args.guidance is not None and not args.random_class:
        raise ValueError("--guidance needs --random-class: without classes the model is scored unconditionally")
    out = outputs.check_file(args.json, "--json")  # before the minutes of generating
    outputs.check_file(args.pairs, "--pairs")
    settings = EvalSettings(samples=args.samples, steps=args.steps, sampler=args.sampler, eta=args.eta,
                            eps_scale=args.eps_scale, seed=args.seed, batch_size=args.batch_size,
                            loss_schedule=args.loss_schedule, random_class=args.random_class,
                            guidance=EvalSettings.guidance if args.guidance is None else args.guidance)
    path = checkpoint_path(args)
    folder = checkpoint.resolve(path)
    layout, layout_start = layout_choice(args, folder, checkpoint.load_config(folder)) or (None, cascade.LAYOUT_START)
    results = evaluate_checkpoint(path, args.data, settings, args.inception_weights, args.device,
                                  args.pairs, precision=args.precision, heldout_dir=args.heldout,
                                  layout=layout, layout_start=layout_start)
    if results is None:  # a torchrun process other than rank 0: its images went to rank 0
        return 0
    results = with_reasons(results)
    print(results_table(results))
    if results["kid"] is None:
        print(f"KID and FID skipped: {weights_help()}")
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    outputs.refuse_unless_file(out, "--json")
    with replacing(out) as tmp:
        tmp.write_text(text)
    print(f"wrote {out} and {args.pairs}")
    return 0
