"""Does a class-conditional model draw the class it is asked for? (issue 16)

    python benchmarks/class_accuracy.py classifier TRAIN_DIR HELDOUT_DIR --out CLASSIFIER
        [--size 64] [--epochs 30] [--batch-size 64] [--seed 0] [--device auto]
    python benchmarks/class_accuracy.py score CHECKPOINT --classifier CLASSIFIER --heldout HELDOUT_DIR
        [--per-class 10] [--guidance 0,1,2,4] [--steps 20] [--sampler ddim] [--eta 0] [--eps-scale S]
        [--layout MODEL | --no-layout] [--layout-start T] [--batch-size 64] [--seed 0] [--device auto]
        [--json OUT]
    python benchmarks/class_accuracy.py ceiling --classifier CLASSIFIER --heldout HELDOUT_DIR
        [--sigmas 0,0.5,0.7,0.9,1.2]

1. classifier: a small CNN of its own (four 3x3 convolution blocks, 32 to 256 channels, with
   BatchNorm, ReLU and 2x2 max-pooling, global average pooling, a linear layer; 0.4 M parameters)
   trained from scratch on TRAIN_DIR/<class>/ images at --size (AdamW, cosine learning rate, label
   smoothing 0.1, random flips and 4-pixel shifts), then scored on HELDOUT_DIR/<class>/: that
   accuracy is the ceiling a generated image can reach. Written to CLASSIFIER (model.safetensors
   and config.json: classes, size, accuracy).
2. score: for each guidance, --per-class images of every class of the model (image i is class
   i // per-class, each from its own noise of --seed), classified. Prints, per guidance, the
   top-1 and top-5 accuracy by asked class (chance: 1 / classes), the worst class, and the SWD
   x1e3 (corolla.metrics, mean over resolutions) of all generated images against the held-out
   real ones, next to the classifier's held-out accuracy. Guidance 0 samples unconditionally (the
   asked class is ignored: accuracy near chance), 1 is the conditional model alone; above 1
   should raise the accuracy and, past some point, the SWD (less diversity). Also per guidance:
   the generated images' fine detail (corolla.metrics.fine_detail; the held-out photos' beside
   it) and the sharpness ceiling, the classifier's accuracy on the held-out photos blurred to that
   same fine detail: a classifier of photos also reads texture, so images smoother than photos
   lose accuracy that no better class conditioning gives back. The images are `corolla sample
   --class`'s: a cascade's where the model's config.json names a layout model (species64:
   species32) or --layout gives one, a conditional layout model drawing the asked class too;
   --no-layout scores the model alone.
3. ceiling: the classifier's accuracy on the held-out photos blurred by a Gaussian of each of
   --sigmas pixels, beside their fine detail: how the ceiling falls as images get smoother.
The classifier must be trained at the model's image size. Seconds are wall-clock on this device.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from corolla import cascade, metrics
from corolla.cli.options import add_layout, layout_choice
from corolla.data import imagefolder, labels
from corolla.generation import SamplingSettings, generate
from corolla.storage import checkpoint
from corolla.training import resolve_device

WIDTHS = (32, 64, 128, 256)


class Classifier(nn.Module):
    """(B, 3, S, S) images in [0, 1] -> (B, classes) logits."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features((images - 0.5) / 0.25)
        return self.head(F.dropout(x.mean(dim=(2, 3)), 0.2, self.training))


def labelled_folder(folder: str, size: int, classes: tuple[str, ...] | None = None):
    """-> (uint8 images (N, 3, S, S), class numbers (N,), classes) of FOLDER/<class>/ images."""
    images, names = imagefolder.load_folder(folder, size)
    found = labels.from_folders(names, folder, classes)
    return images, found.numbers, found.classes


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 4 pixels (reflected borders)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    h, w = images.shape[2:]
    shifts = torch.randint(0, 9, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(shifts)])


@torch.no_grad()
def predict(classifier: Classifier, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """uint8 images -> (N, classes) logits on the CPU."""
    classifier.eval()
    return torch.cat([classifier(images[i:i + batch_size].to(device).float() / 255).cpu()
                      for i in range(0, images.shape[0], batch_size)])


def accuracy(logits: torch.Tensor, targets: torch.Tensor, top: int = 1) -> float:
    best = logits.topk(min(top, logits.shape[1]), dim=1).indices
    return (best == targets[:, None]).any(dim=1).float().mean().item()


def train_classifier(train_dir: str, heldout_dir: str, out: str, size: int = 64, epochs: int = 30,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, device: str = "auto",
                     log=print) -> dict:
    """Train the classifier, score it on the held-out folder, write it to `out` -> its config."""
    dev = resolve_device(device)
    images, targets, classes = labelled_folder(train_dir, size)
    held, held_targets, _ = labelled_folder(heldout_dir, size, classes)
    torch.manual_seed(seed)
    classifier = Classifier(len(classes)).to(dev)
    steps = epochs * math.ceil(images.shape[0] / batch_size)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        classifier.train()
        order = torch.randperm(images.shape[0], generator=generator)
        total = 0.0
        for first in range(0, images.shape[0], batch_size):
            index = order[first:first + batch_size]
            batch = augment(images[index].float() / 255, generator).to(dev)
            loss = F.cross_entropy(classifier(batch), targets[index].to(dev), label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * index.numel()
        log(f"epoch {epoch + 1}/{epochs}: loss {total / images.shape[0]:.3f} ({time.perf_counter() - started:.0f} s)")
    logits = predict(classifier, held, dev)
    config = {"classes": list(classes), "size": size, "widths": list(WIDTHS), "epochs": epochs, "seed": seed,
              "train_images": images.shape[0], "heldout_images": held.shape[0],
              "heldout_accuracy": accuracy(logits, held_targets), "heldout_top5": accuracy(logits, held_targets, 5),
              "seconds": round(time.perf_counter() - started, 1)}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(Path(out) / "model.safetensors"))
    (Path(out) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def load_classifier(folder: str, device: torch.device) -> tuple[Classifier, dict]:
    config = json.loads((Path(folder) / "config.json").read_text())
    classifier = Classifier(len(config["classes"]), tuple(config["widths"]))
    classifier.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return classifier.to(device).eval(), config


def score(checkpoint_path: str, classifier_dir: str, heldout_dir: str, per_class: int = 10,
          guidances: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0), steps: int = 20, sampler: str = "ddim",
          eta: float = 0.0, batch_size: int = 64, seed: int = 0, device: str = "auto", precision: str = "auto",
          on_row: Callable[[dict], None] = lambda results: None, eps_scale: float | None = None,
          layout: str | None = None, layout_start: float = cascade.LAYOUT_START) -> dict:
    """Generated images of every class at each guidance, classified and compared with real ones;
    on_row(results so far) after each guidance, so that a long run keeps what it measured. layout:
    a layout model that draws each image first (`corolla sample --layout`; eps_scale is then the
    finish's, the layout model draws at its own)."""
    dev = resolve_device(device)
    model, config = checkpoint.load_for_sampling(checkpoint_path, dev, precision)  # the commands' fast path
    classes, size = config.unet.classes, config.data.image_size
    if not classes:
        raise SystemExit(f"{checkpoint_path} is not class-conditional")
    first = cascade.load(layout, model, size, dev, model.precision, layout_start) if layout else None
    classifier, settings = load_classifier(classifier_dir, dev)
    if settings["size"] != size:
        raise SystemExit(f"the classifier sees {settings['size']}x{settings['size']} images, the model makes "
                         f"{size}x{size}: train one with --size {size}")
    missing = [name for name in classes if name not in settings["classes"]]
    if missing:
        raise SystemExit(f"the classifier does not know {len(missing)} of the model's classes, e.g. {missing[0]!r}")
    # the classifier's number for each of the model's classes
    to_classifier = torch.tensor([settings["classes"].index(name) for name in classes])
    held, held_targets, _ = labelled_folder(heldout_dir, size, tuple(settings["classes"]))
    held_logits = predict(classifier, held, dev)
    held_pixels = held.float() / 255
    asked = torch.arange(len(classes)).repeat_interleave(per_class)
    drawn_at = (model.handover_scale if first else model.sampling_eps_scale)(eps_scale, sampler)  # the finish's
    results = {"checkpoint": str(checkpoint_path), "classes": len(classes), "per_class": per_class, "steps": steps,
               "sampler": sampler, "eta": eta, "eps_scale": drawn_at,
               "layout": layout, "layout_start": layout_start if layout else None,
               "seed": seed, "precision": model.precision,
               "chance": 1 / len(classes),
               "classifier_heldout_accuracy": accuracy(held_logits, held_targets),
               "classifier_heldout_top5": accuracy(held_logits, held_targets, 5),
               "heldout_images": held.shape[0], "heldout_fine_detail": metrics.fine_detail(held_pixels),
               "by_guidance": []}
    for guidance in guidances:
        started = time.perf_counter()
        settings = SamplingSettings(steps=steps, sampler=sampler, eta=eta, batch_size=batch_size, seed=seed,
                                    eps_scale=eps_scale)
        images = metrics.quantise(generate(model, len(asked), settings, image_size=size, classes=asked.tolist(),
                                           guidance=guidance, layout=first))
        seconds = time.perf_counter() - started
        logits = predict(classifier, images, dev)
        targets = to_classifier[asked]
        hits = (logits.argmax(dim=1) == targets).float().view(len(classes), per_class).mean(dim=1)
        swd = metrics.sliced_wasserstein(held, images, seed)
        detail = metrics.fine_detail(images.float() / 255)
        blurred, sigma = metrics.blur_to_fine_detail(held_pixels, detail)
        results["by_guidance"].append({
            "guidance": guidance, "accuracy": accuracy(logits, targets), "top5": accuracy(logits, targets, 5),
            "worst_class": classes[int(hits.argmin())], "worst_class_accuracy": hits.min().item(),
            "accuracy_by_class": dict(zip(classes, hits.tolist())),
            "swd": sum(swd.values()) / len(swd), "fine_detail": detail, "ceiling_blur_sigma": sigma,
            "sharpness_ceiling": accuracy(predict(classifier, metrics.quantise(blurred), dev), held_targets),
            "seconds": round(seconds, 1)})
        on_row(results)
    return results


def blurred_ceilings(classifier_dir: str, heldout_dir: str, sigmas: tuple[float, ...],
                     device: str = "auto") -> list[dict]:
    """[{sigma, fine_detail, accuracy, top5}] of the classifier on the held-out photos blurred by sigma."""
    dev = resolve_device(device)
    classifier, settings = load_classifier(classifier_dir, dev)
    held, targets, _ = labelled_folder(heldout_dir, settings["size"], tuple(settings["classes"]))
    rows = []
    for sigma in sigmas:
        blurred = metrics.quantise(metrics.gaussian_blur(held.float() / 255, sigma))
        logits = predict(classifier, blurred, dev)
        rows.append({"sigma": sigma, "fine_detail": metrics.fine_detail(blurred.float() / 255),
                     "accuracy": accuracy(logits, targets), "top5": accuracy(logits, targets, 5)})
    return rows


def table(results: dict) -> str:
    cascade_note = (f"after the layout model {results['layout']} from t = {results['layout_start']:g}, "
                    if results.get("layout") else "")
    lines = [f"{results['checkpoint']}: {results['classes']} classes x {results['per_class']} images, "
             f"{results['steps']} {results['sampler']} steps, eta {results['eta']:g}, "
             f"eps scale {results.get('eps_scale', 1):g}, seed {results['seed']}, {cascade_note}"
             f"{results['precision']}; chance "
             f"{100 * results['chance']:.1f} %; the classifier on {results['heldout_images']} held-out real images: "
             f"{100 * results['classifier_heldout_accuracy']:.1f} % (top-5 "
             f"{100 * results['classifier_heldout_top5']:.1f} %), their fine detail "
             f"{results['heldout_fine_detail']:.3f}", "",
             "| guidance | accuracy | top-5 | worst class | SWD x1e3 vs held-out | fine detail | sharpness ceiling "
             "| seconds |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["by_guidance"]:
        lines.append(f"| {row['guidance']:g} | {100 * row['accuracy']:.1f} % | {100 * row['top5']:.1f} % | "
                     f"{row['worst_class']} ({100 * row['worst_class_accuracy']:.0f} %) | {row['swd']:.2f} | "
                     f"{row['fine_detail']:.3f} | {100 * row['sharpness_ceiling']:.1f} % | {row['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("classifier", help="train the species classifier; its held-out accuracy is the ceiling")
    p.add_argument("train_dir")
    p.add_argument("heldout_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    s = sub.add_parser("score", help="classify a conditional model's images at several guidances")
    s.add_argument("checkpoint")
    s.add_argument("--classifier", required=True)
    s.add_argument("--heldout", required=True)
    s.add_argument("--per-class", type=int, default=10)
    s.add_argument("--guidance", default="0,1,2,4", help="comma-separated guidance scales")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--sampler", default="ddim")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM's noise: 0 deterministic (the default), 1 DDPM's")
    s.add_argument("--eps-scale", type=float, help="epsilon scaling (corolla sample --eps-scale; default: the model's)")
    add_layout(s, "a layout model drawn first (corolla sample --layout; --eps-scale is then the finish's)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="of the sampling network")
    s.add_argument("--json", help="write the results, per-class accuracies included, to this file")
    c = sub.add_parser("ceiling", help="the classifier on held-out photos blurred by each sigma")
    c.add_argument("--classifier", required=True)
    c.add_argument("--heldout", required=True)
    c.add_argument("--sigmas", default="0,0.5,0.7,0.9,1.2", help="comma-separated blur radii in pixels")
    c.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.command == "ceiling":
        print("| blur sigma (px) | fine detail | accuracy | top-5 |\n| --- | --- | --- | --- |")
        for row in blurred_ceilings(args.classifier, args.heldout, tuple(float(s) for s in args.sigmas.split(",")),
                                    args.device):
            print(f"| {row['sigma']:g} | {row['fine_detail']:.3f} | {100 * row['accuracy']:.1f} % | "
                  f"{100 * row['top5']:.1f} % |")
        return
    if args.command == "classifier":
        config = train_classifier(args.train_dir, args.heldout_dir, args.out, args.size, args.epochs,
                                  args.batch_size, seed=args.seed, device=args.device)
        print(f"{config['train_images']} training images, {len(config['classes'])} classes, {config['seconds']} s; "
              f"held-out accuracy {100 * config['heldout_accuracy']:.1f} % (top-5 "
              f"{100 * config['heldout_top5']:.1f} %) on {config['heldout_images']} images; wrote {args.out}")
        return

    def keep(results: dict) -> None:  # the JSON is rewritten with every guidance measured
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    folder = checkpoint.resolve(args.checkpoint)
    layout, layout_start = layout_choice(args, folder, checkpoint.load_config(folder)) or (None, cascade.LAYOUT_START)
    results = score(args.checkpoint, args.classifier, args.heldout, args.per_class,
                    tuple(float(g) for g in args.guidance.split(",")), args.steps, args.sampler, args.eta,
                    args.batch_size, args.seed, args.device, args.precision, on_row=keep, eps_scale=args.eps_scale,
                    layout=layout, layout_start=layout_start)
    print(table(results))


if __name__ == "__main__":
    main()
