"""Training images/s of 1 process vs N processes (torchrun, DDP, gloo on CPUs / NCCL on GPUs).

    python benchmarks/ddp_scaling.py [--preset seed64] [--steps 5] [--procs 1,2]

Every configuration trains the same global batch with corolla's own train_step; on a CPU each
process gets cores / N threads, so on a 2-core machine this measures DDP's overhead rather than
a speed-up. Prints one line per process count.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch


def worker(preset: str, steps: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from corolla import config as configs
    from corolla import distributed
    from corolla.generation import seeded_generator
    from corolla.training import build, micro_batch_size, resolve_device, train_step
    world, device = distributed.init(resolve_device("auto"))
    config = configs.preset(preset)
    micro = micro_batch_size(config, world)
    model, optimizer = build(config, device)
    ddp = None
    if world.distributed:
        ddp = DistributedDataParallel(model.network, forward_sync_buffers=False,
                                      device_ids=[device.index] if device.type == "cuda" else None)
        model.use_online_forward(ddp)
    size = config.data.image_size
    images = torch.rand((micro, 3, size, size), generator=torch.Generator().manual_seed(world.rank)).to(device)
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            distributed.barrier(world)
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        generators = [seeded_generator(0, step, world.rank, device=device)]
        train_step(model, optimizer, [images], generators, 0.999, ddp, world)
    if device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier(world)
    if world.is_main:
        seconds = time.perf_counter() - started
        print(f"{world.size} process(es), {torch.get_num_threads()} thread(s) each: "
              f"{steps * config.train.batch_size / seconds:.2f} images/s (global batch {config.train.batch_size})",
              flush=True)
    distributed.shutdown(world)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed64")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.preset, args.steps)
    cores = os.cpu_count() or 1
    for n in map(int, args.procs.split(",")):
        env = {**os.environ}
        if not torch.cuda.is_available():
            env["OMP_NUM_THREADS"] = str(max(1, cores // n))
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                        __file__, "--worker", "--preset", args.preset, "--steps", str(args.steps)], env=env, check=True)


if __name__ == "__main__":
    main()
