"""How the cost of training and sampling grows with image size, batch size and the number of images.

    python benchmarks/scaling.py [--preset seed64] [--variant channels_last+bf16] [--sizes 32,64,128]
        [--batches 16,64,256] [--train-steps 3] [--sample-counts 1,8,64,256] [--sample-size 64]
        [--sample-steps 20] [--sample-batch 64] [--repeats 1]

Two tables. Training: images/s and peak resident memory for every image size x batch size, the
preset's network otherwise unchanged (the U-Net works at any multiple of 2^levels). Sampling:
seconds for N images with DDIM at one image size, in batches of --sample-batch (corolla sample's
default). Every measurement is a child process of benchmarks/throughput.py (corolla's own build,
train_step and generate), which times one part only, so each peak memory is that part's own.

A configuration the config checks refuse, or one whose predicted peak memory exceeds what the
machine has available, is not run; one that dies in its child (out of memory) is reported as
such. The prediction fits peak memory = fixed + slope x batch x pixels to the configurations
measured so far, which run in order of that product.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import throughput  # noqa: E402  (a sibling script)

MEMORY_MARGIN = 0.9  # of MemAvailable: leave the rest to the system and to other work


def numbers(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


def available_gib() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20  # KiB
    return None


def predicted_gib(measured: list[tuple[int, float]], work: int) -> float | None:
    """Least-squares line through (batch x pixels, peak GiB): activations kept for the backward
    grow with the product, PyTorch, the network and the optimiser do not."""
    xs = [x for x, _ in measured]
    if len(set(xs)) < 2:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(y for _, y in measured) / len(measured)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in measured)
             / sum((x - mean_x) ** 2 for x in xs))
    return mean_y + slope * (work - mean_x)


def why_failed(error: throughput.ChildFailed) -> str:
    lines = [line for line in error.stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else f"exit status {error.returncode}"
    if (error.returncode == -signal.SIGKILL or "MemoryError" in last or "OutOfMemoryError" in last
            or "can't allocate memory" in error.stderr):
        return "out of memory (killed)" if error.returncode == -signal.SIGKILL else f"out of memory: {last[:120]}"
    return f"failed: {last[:160]}"


class Runner:
    """Runs throughput.py children for one variant, keeping every result and why a configuration was not run."""

    def __init__(self, args, device: str):
        self.threads = throughput.variant_options(args.variant)[1]
        self.base = dict(preset=args.preset, device=device, variant=args.variant)
        self.results: dict[tuple, list[dict]] = {}
        self.not_run: dict[tuple, str] = {}

    def run(self, key: tuple, label: str, spec: dict, needed_gib: float | None = None) -> dict | None:
        if key in self.not_run:  # refused, too large or failed in an earlier repeat
            return None
        spec = {**self.base, **spec}
        try:
            throughput.spec_config(spec)  # the config checks, before a child starts
        except ValueError as error:
            self.not_run[key] = f"refused: {error}"
            return None
        free = available_gib()
        too_large = needed_gib is not None and free is not None and needed_gib > MEMORY_MARGIN * free
        if too_large and key not in self.results:  # what fitted once is measured again
            self.not_run[key] = (f"not run: would need about {needed_gib:.1f} GiB, more than "
                                 f"{MEMORY_MARGIN:.0%} of the {free:.1f} GiB available")
            return None
        try:
            result = throughput.run_child("variant", spec, self.threads)
        except throughput.ChildFailed as error:
            self.not_run[key] = why_failed(error)
            print(f"  {label}: {self.not_run[key]}", file=sys.stderr, flush=True)
            return None
        self.results.setdefault(key, []).append(result)
        return result


def measure(args, runner: Runner) -> None:
    # smallest first, so that each memory prediction rests on the configurations before it
    grid = sorted(((size, batch) for size in args.sizes for batch in args.batches), key=lambda sb: sb[1] * sb[0] ** 2)
    sampling = [("ddim", args.sample_steps)]
    memory: list[tuple[int, float]] = []  # (batch x pixels, peak GiB) of every training child
    for _ in range(args.repeats):  # interleaved, so a busy moment affects every row alike
        for size, batch in grid:
            work = batch * size ** 2
            label = f"training {size}x{size}, batch {batch}"
            r = runner.run(("train", size, batch), label, dict(image_size=size, batch_size=batch, parts=["train"],
                                                               train_steps=args.train_steps),
                           predicted_gib(memory, work))
            if r is not None:
                memory.append((work, r["train_rss_gib"]))
                print(f"  measured {label}: {r['train_ips']:.2f} images/s, {r['train_rss_gib']:.2f} GiB",
                      file=sys.stderr, flush=True)
        for count in args.sample_counts:
            label = f"sampling {count} images"
            r = runner.run(("sample", count), label, dict(image_size=args.sample_size, parts=["sample"],
                                                          sampling=sampling, sample_images=count,
                                                          sample_batch=args.sample_batch))
            if r is not None:
                print(f"  measured {label}: {r['sample_s'][f'ddim:{args.sample_steps}']:.2f} s, "
                      f"{r['peak_rss_gib']:.2f} GiB", file=sys.stderr, flush=True)


def print_tables(args, runner: Runner, flops: dict[int, tuple[float, float]], started, seconds: float) -> None:
    results = [r for rs in runner.results.values() for r in rs]
    bf16 = throughput.variant_options(args.variant)[0]["bf16"]
    key = "matmul_bf16_gflops" if bf16 else "matmul_gflops"
    peak = max((r[key] for r in results if r[key] is not None), default=None)  # None: bf16 emulated here
    threads = results[0]["threads"] if results else "?"
    print(f"\n## How cost grows: preset {args.preset}, variant {args.variant}, device {runner.base['device']}")
    print(f"machine: {throughput.machine()}; {threads} thread(s); date {started:%Y-%m-%d %H:%M} UTC; "
          f"{args.repeats} repeat(s), best shown; {args.train_steps} timed training steps after 2 warm-up steps; "
          f"benchmark wall time {seconds:.0f} s")
    if peak is not None:
        print(f"{'bfloat16' if bf16 else 'float32'} matrix-product peak: {peak:.0f} GFLOP/s")
    print("U-Net FLOPs per image (torch.utils.flop_counter), forward / forward + backward: "
          + ", ".join(f"{s}x{s} {f[0] / 1e9:.2f} / {f[1] / 1e9:.2f} G" for s, f in sorted(flops.items())))
    print("peak memory: the child process's peak resident memory (PyTorch, the network and optimiser included)\n")

    of_peak = lambda gflops: "-" if peak is None else f"{gflops / peak:.0%}"
    print("| image size | batch | training images/s | GFLOP/s | of matmul peak | peak memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        for batch in args.batches:
            rs = runner.results.get(("train", size, batch))
            if not rs:
                print(f"| {size} | {batch} | {runner.not_run[('train', size, batch)]} | - | - | - |")
                continue
            ips = max(r["train_ips"] for r in rs)
            gflops = ips * flops[size][1] / 1e9
            print(f"| {size} | {batch} | {ips:.2f} | {gflops:.0f} | {of_peak(gflops)} | "
                  f"{max(r['train_rss_gib'] for r in rs):.2f} |")

    s = args.sample_size
    print(f"\n| images ({s}x{s}, {args.sample_steps} DDIM steps, batches of {args.sample_batch}) | seconds | "
          f"seconds per image | GFLOP/s | of matmul peak | peak memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count in args.sample_counts:
        rs = runner.results.get(("sample", count))
        if not rs:
            print(f"| {count} | {runner.not_run[('sample', count)]} | - | - | - | - |")
            continue
        seconds_taken = min(r["sample_s"][f"ddim:{args.sample_steps}"] for r in rs)
        gflops = count * args.sample_steps * flops[s][0] / 1e9 / seconds_taken
        print(f"| {count} | {seconds_taken:.3g} | {seconds_taken / count:.3g} | {gflops:.0f} | {of_peak(gflops)} | "
              f"{max(r['peak_rss_gib'] for r in rs):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed64", choices=sorted(throughput.configs.PRESETS))
    p.add_argument("--device", default="auto")
    p.add_argument("--variant", default="channels_last+bf16", help="one variant, as in throughput.py")
    p.add_argument("--sizes", type=numbers, default=[32, 64, 128], help="image sizes, comma-separated")
    p.add_argument("--batches", type=numbers, default=[16, 64, 256], help="training batch sizes, comma-separated")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (after 2 warm-up steps)")
    p.add_argument("--sample-counts", type=numbers, default=[1, 8, 64, 256], help="images sampled, comma-separated")
    p.add_argument("--sample-size", type=int, default=64, help="image size of the sampling table")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--sample-batch", type=int, default=64, help="images per batch when sampling")
    p.add_argument("--repeats", type=int, default=1, help="repeats of every measurement; the best is shown")
    args = p.parse_args()
    throughput.variant_options(args.variant)  # fail early on a typo
    device = throughput.resolve_device(args.device)
    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()

    runner = Runner(args, str(device))
    flops = {}
    for size in sorted(set(args.sizes) | {args.sample_size}):
        with contextlib.suppress(ValueError):  # a refused size gets its row from the runner
            config = throughput.spec_config({"preset": args.preset, "image_size": size})
            flops[size] = throughput.flops_per_image(config)
    measure(args, runner)
    print_tables(args, runner, flops, started, time.perf_counter() - start)


if __name__ == "__main__":
    main()
