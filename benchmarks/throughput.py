"""Training and sampling throughput of a preset on this device, for several speed options.

    python benchmarks/throughput.py [--preset seed64] [--train-steps 6] [--sample-images 64]

Each variant trains on random images with corolla's own train_step and samples with corolla's
own generate(); variants are interleaved and repeated so a busy machine affects all alike.
Prints images/s (median over repeats) and the ratio to the plain eager path.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from corolla import config as configs
from corolla.generate import generate
from corolla.train import build, resolve_device, train_step

VARIANTS = {
    "eager": dict(),
    "channels_last": dict(channels_last=True),
    "channels_last+compile": dict(channels_last=True, compile=True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_train(config, device, options, steps: int, warmup: int = 2) -> float:
    model, optimizer = build(config, device)
    model.accelerate(**options)
    size, batch = config.data.image_size, config.train.batch_size
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand((batch, 3, size, size), generator=gen, device=device)
    for _ in range(warmup):  # includes compilation
        train_step(model, optimizer, images, gen, 0.999)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, images, gen, 0.999)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def measure_sample(config, device, options, images: int, steps: int) -> float:
    model, _ = build(config, device)
    model.accelerate(**options)
    generate(model, min(images, 4), 2, image_size=config.data.image_size)  # warm-up / compile
    sync(device)
    start = time.perf_counter()
    generate(model, images, steps, image_size=config.data.image_size)
    sync(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed64", choices=sorted(configs.PRESETS))
    p.add_argument("--device", default="auto")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--sample-images", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    device = resolve_device(args.device)
    config = configs.preset(args.preset)
    names = args.variants.split(",")
    train_ips = {n: [] for n in names}
    sample_ips = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            train_ips[name].append(measure_train(config, device, VARIANTS[name], args.train_steps))
            sample_ips[name].append(measure_sample(config, device, VARIANTS[name], args.sample_images,
                                                   args.sample_steps))
    print(f"preset {args.preset} ({config.data.image_size}x{config.data.image_size}, batch "
          f"{config.train.batch_size}), device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"| variant | training images/s | sampling images/s ({args.sample_images} x {args.sample_steps} DDIM steps) "
          f"| sampling seconds | train vs eager |")
    print("| --- | --- | --- | --- | --- |")
    base = statistics.median(train_ips[names[0]])
    for name in names:
        t, s = statistics.median(train_ips[name]), statistics.median(sample_ips[name])
        print(f"| {name} | {t:.2f} | {s:.2f} | {args.sample_images / s:.1f} | {t / base:.2f}x |")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
