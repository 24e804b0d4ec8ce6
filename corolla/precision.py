"""Arithmetic precision of the networks: float32, or bfloat16 autocast where the hardware has it.

Only the network's convolutions and matrix products run in bfloat16 (torch.autocast); weights,
optimiser state, EMA, the loss, the schedule and the sinusoidal embedding stay float32.
"""
from __future__ import annotations

import contextlib

import torch

CHOICES = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """True where bfloat16 products run in hardware: CUDA compute capability 8.0+ (Ampere on),
    CPUs with AMX tiles or AVX512-BF16 (Intel Sapphire Rapids, AMD Zen 4 and later)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def resolve(name: str, device: torch.device) -> str:
    """auto -> bf16 where native_bf16, else fp32; bf16 is refused where it would be emulated."""
    if name not in CHOICES:
        raise ValueError(f"unknown precision {name!r}; choose {', '.join(CHOICES)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and device.type == "mps":
        raise ValueError("--precision bf16 is not supported on MPS; use fp32 or auto")
    return name


def autocast(precision: str, device: torch.device):
    """The context the networks run in: bfloat16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
