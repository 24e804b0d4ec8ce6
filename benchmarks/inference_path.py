"""What each step of corolla's inference path saves: one network evaluation, interleaved.

    python benchmarks/inference_path.py [CHECKPOINT] [--batch 64] [--rounds 7] [--precision fp32]
                                        [--compiled] [--conv-rates]

Loads CHECKPOINT (default: the shipped flowers64) in channels-last and times one evaluation of
the EMA network at --batch images, four ways, one after the other in every round (so that a busy
moment of a shared machine slows all four alike): BatchNorm separate or folded into the
convolutions (corolla.folding), and swish out of place or in place (corolla.unet.ResidualBlock
works in place only without gradients: with gradients enabled, and no tensor requiring one, the
same code runs out of place and records nothing). Prints the best and the median of --rounds
for each, the largest difference from the first, and the machine's limit for one evaluation: the
network's FLOPs at the matrix-product peak of --precision measured in the same process.
--compiled adds a fifth way: corolla's sampling network compiled by inductor with freezing (the
weights constants, prepacked for oneDNN, convolutions fused with swish and additions).
--conv-rates then profiles corolla's sampling once: each convolution shape's time and GFLOP/s,
and what all convolutions and all other operators take of an evaluation. Freed memory is kept
(corolla.heap), as the `corolla` command keeps it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import throughput  # noqa: E402  (a sibling script)

from corolla.heap import keep_freed_memory  # noqa: E402
from corolla.storage import checkpoint, pretrained  # noqa: E402

SAMPLING = "BatchNorm folded, swish in place (corolla's sampling)"


def print_conv_rates(denoise, x, noise_rates, signal_rates, evaluations: int = 3) -> None:
    """Each convolution shape's share of one evaluation and its rate, from torch.profiler."""
    from torch.profiler import profile
    with torch.no_grad(), profile(record_shapes=True) as prof:
        for _ in range(evaluations):
            denoise(x, noise_rates, signal_rates)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / evaluations
    rows = []
    for e in events:
        if e.key != "aten::mkldnn_convolution":
            continue
        (n, c, h, w), (o, i, kh, kw) = e.input_shapes[0], e.input_shapes[1]
        seconds = e.self_cpu_time_total / 1e6 / evaluations
        calls = e.count // evaluations
        flops = 2 * n * h * w * o * i * kh * kw * calls  # stride 1, same padding: one output per pixel
        rows.append((seconds, f"{c} -> {o}, {kh}x{kw}, {h}x{w}", calls, flops / seconds / 1e9))
    conv = sum(r[0] for r in rows)
    print(f"\nconvolutions {conv:.3f} s of {total:.3f} s per evaluation ({conv / total:.0%}); all other operators "
          f"{total - conv:.3f} s\n")
    print("| convolution (channels, kernel, image) | calls | ms per evaluation | GFLOP/s |")
    print("| --- | ---: | ---: | ---: |")
    for seconds, shape, calls, rate in sorted(rows, reverse=True):
        print(f"| {shape} | {calls} | {seconds * 1e3:.1f} | {rate:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run folder (default: the shipped flowers64)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compiled", action="store_true", help="also time the sampling network compiled with freezing")
    p.add_argument("--conv-rates", action="store_true", help="profile corolla's sampling per convolution shape")
    args = p.parse_args()
    keep_freed_memory()
    device = torch.device("cpu")
    source = args.checkpoint or pretrained.path("flowers64")
    plain, config = checkpoint.load_model(source, device)
    plain.accelerate(channels_last=True, precision=args.precision)
    folded, _ = checkpoint.load_model(source, device)
    folded.accelerate(channels_last=True, fold=True, precision=args.precision)
    size = config.data.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, config.unet.channels, size, size, generator=g)
    noise_rates = torch.rand(args.batch, 1, 1, 1, generator=g) * 0.9 + 0.05
    signal_rates = (1 - noise_rates ** 2).sqrt()
    ways = {  # name: (denoise, gradient mode)
        "BatchNorm separate, swish out of place": (plain.denoise, torch.enable_grad),
        "BatchNorm separate, swish in place": (plain.denoise, torch.no_grad),
        "BatchNorm folded, swish out of place": (folded.denoise, torch.enable_grad),
        SAMPLING: (folded.denoise, torch.no_grad),
    }
    if args.compiled:
        import torch._inductor.config as inductor
        inductor.freezing = True  # the weights become constants, prepacked for oneDNN
        compiled, _ = checkpoint.load_model(source, device)
        compiled.accelerate(channels_last=True, fold=True, compile_ema=True, precision=args.precision)
        ways["BatchNorm folded, compiled by inductor with freezing"] = (compiled.denoise, torch.no_grad)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    outputs = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (denoise, mode) in ways.items():
            with mode():
                start = time.perf_counter()
                outputs[name] = denoise(x, noise_rates, signal_rates)[0]
                if round_:
                    seconds[name].append(time.perf_counter() - start)
    peak = throughput.matmul_peak(device, dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
    flops = throughput.flops_per_image(config)[0] * args.batch
    limit_s = flops / 1e9 / peak
    first = next(iter(outputs.values()))
    print(f"{source}: one evaluation of {args.batch} images of {size}x{size}, {args.precision}, channels-last, "
          f"{torch.get_num_threads()} threads; machine: {throughput.machine()}; {args.rounds} rounds")
    print(f"limit: {flops / 1e9:.0f} GFLOP at the {args.precision} matrix-product peak of {peak:.0f} GFLOP/s = "
          f"{limit_s:.3f} s\n")
    print("| way | best (s) | median (s) | best x limit | max difference from the first |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in seconds.items():
        difference = (outputs[name] - first).abs().max().item()
        print(f"| {name} | {min(times):.3f} | {statistics.median(times):.3f} | "
              f"{min(times) / limit_s:.2f} | {difference:.1e} |")
    if args.conv_rates:
        print_conv_rates(ways[SAMPLING][0], x, noise_rates, signal_rates)


if __name__ == "__main__":
    main()
