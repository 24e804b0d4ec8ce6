"""Multi-process training and sampling with PyTorch's own engine (torchrun + DistributedDataParallel).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process group (NCCL on GPUs,
gloo on CPUs). With one process everything here is a no-op, so the same code runs both ways.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .samplers import SamplingSettings


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_environment() -> World:
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group when there is one -> (world, this rank's device)."""
    world = from_environment()
    if not world.distributed:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor over ranks (a copy; the input is left alone)."""
    value = value.detach().clone()
    if world.distributed:
        dist.all_reduce(value)
        value /= world.size
    return value


def any_rank(flag: bool, device: torch.device, world: World) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same step)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_buffers(module: nn.Module, world: World) -> None:
    """Average BatchNorm running statistics over ranks, so the EMA network (which averages
    buffers too) stays identical on every rank; SyncBatchNorm makes this exact on CUDA."""
    if not world.distributed:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if buffers:
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat)
        flat /= world.size
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def shard(count: int, world: World) -> range:
    """The contiguous share of `count` items (images to sample) that this rank makes."""
    per = -(-count // world.size)
    return range(min(world.rank * per, count), min((world.rank + 1) * per, count))


def gather(images: torch.Tensor, count: int, world: World) -> torch.Tensor | None:
    """Concatenate every rank's share in rank order on rank 0 (None elsewhere). Shares are
    padded to one size for all_gather and trimmed to `count` after."""
    if not world.distributed:
        return images
    per = -(-count // world.size)
    padded = torch.zeros((per, *images.shape[1:]), dtype=images.dtype)
    padded[:images.shape[0]] = images
    backend_device = torch.device("cuda", world.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = padded.to(backend_device)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:count].cpu() if world.is_main else None


def generate_all(model, num_images: int, settings: SamplingSettings, on_batch=None, keep: bool = True,
                 **kwargs) -> torch.Tensor | None:
    """corolla.generation.generate_batches(model, ..., settings, **kwargs) over every process: each
    makes its contiguous share of the image indices, rank 0 gets all of them in order (None
    elsewhere). Image i depends only on the seed and i, so the result is the same whatever the
    number of processes.

    on_batch(first index, images) sees each batch as it is made; keep=False keeps none of them
    (and returns None), so that any number of images fits in memory."""
    from .generation import generate_batches
    world = from_environment()
    share = shard(num_images, world)
    kept = []
    for first, images in generate_batches(model, len(share), settings, start=share.start, **kwargs):
        if on_batch is not None:
            on_batch(first, images)
        if keep:
            kept.append(images)
    if not keep:
        return None
    channels, size = model.network.config.channels, kwargs.get("image_size", 64)
    images = torch.cat(kept) if kept else torch.zeros((0, channels, size, size))
    return gather(images, num_images, world)
