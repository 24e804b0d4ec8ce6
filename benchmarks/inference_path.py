"""What each step of corolla's inference path saves: one network evaluation, interleaved.

    python benchmarks/inference_path.py [CHECKPOINT] [--batch 64] [--rounds 7] [--precision fp32]

Loads CHECKPOINT (default: the shipped flowers64) in channels-last and times one evaluation of
the EMA network at --batch images, five ways, one after the other in every round (so that a busy
moment of a shared machine slows all alike): BatchNorm separate or folded into the convolutions
(corolla.folding), swish out of place or in place (corolla.unet.ResidualBlock works in place only
without gradients: with gradients enabled, and no tensor requiring one, the same code runs out of
place and records nothing), and the skip added apart or inside each block's last convolution
(fold_batchnorm's fuse_skip, a oneDNN post-op, also only without gradients). Prints the best and
the median of --rounds for each, the largest difference from the first, and the machine's limit
for one evaluation: the network's FLOPs at the matrix-product peak of --precision measured in the
same process.
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

from corolla import precision  # noqa: E402
from corolla.folding import fold_batchnorm  # noqa: E402
from corolla.storage import checkpoint, pretrained  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run folder (default: the shipped flowers64)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    device = torch.device("cpu")
    source = args.checkpoint or pretrained.path("flowers64")
    model, config = checkpoint.load_model(source, device)
    plain = model.ema_network.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    apart, fused = (fold_batchnorm(plain, fuse_skip=fuse) for fuse in (False, True))
    size = config.data.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, config.unet.channels, size, size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    noise_variances = (torch.rand(args.batch, 1, 1, 1, generator=g) * 0.9 + 0.05) ** 2
    ways = {  # name: (network, gradient mode)
        "BatchNorm separate, swish out of place": (plain, torch.enable_grad),
        "BatchNorm separate, swish in place": (plain, torch.no_grad),
        "BatchNorm folded, swish out of place": (apart, torch.enable_grad),
        "BatchNorm folded, swish in place": (apart, torch.no_grad),
        "BatchNorm folded, swish in place, skip added in the convolution (corolla's sampling)": (fused, torch.no_grad),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    outputs = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (network, mode) in ways.items():
            with mode(), precision.autocast(args.precision, device):
                start = time.perf_counter()
                outputs[name] = network(x, noise_variances).float()
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


if __name__ == "__main__":
    main()
