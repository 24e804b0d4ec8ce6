"""What changes with the optimiser step: the learning rate's warm-up and cool-down, AdamW's
epsilon in the reference's units, and the EMA decay."""
from __future__ import annotations

import math

from .config import WARM_START_LR_WARMUP, Config


def ema_decay(config: Config, step: int) -> float:
    """Constant decay, or with warm-up min(decay, (1 + step) / (10 + step)) so short runs'
    EMA networks are not still mostly their starting point."""
    if config.train.ema_warmup:
        return min(config.train.ema, (1 + step) / (10 + step))
    return config.train.ema


def learning_rate(config: Config, step: int, last_step: int) -> float:
    """The learning rate of optimiser step `step` (0-based) of a run that ends after `last_step`
    steps: lr, ramped up linearly over the first lr_warmup steps (resolved: see resolve_lr_warmup)
    and down linearly towards 0 over the last lr_cooldown."""
    t = config.train
    warmup = min(1.0, (step + 1) / t.lr_warmup) if t.lr_warmup else 1.0
    cooldown = min(1.0, (last_step - step) / t.lr_cooldown) if t.lr_cooldown else 1.0
    return t.lr * min(warmup, cooldown)


def resolve_lr_warmup(config: Config, warm_start: bool) -> Config:
    """lr_warmup None -> the default: a warm start's trained weights meet fresh Adam moments, whose
    first full-size steps would jolt them, so it ramps up; a run from random weights does not."""
    if config.train.lr_warmup is not None:
        return config
    return config.replace(train={"lr_warmup": WARM_START_LR_WARMUP if warm_start else 0})


def adam_epsilon(config: Config, step: int) -> float:
    """AdamW's epsilon for optimiser step `step` (0-based). With keras_adam_step, the reference's
    update in corolla's units: its gradient is the per-pixel sum, B x H x W times corolla's mean,
    and Keras adds epsilon to sqrt(v) before bias correction, PyTorch after it."""
    t = config.train
    if not t.keras_adam_step:
        return t.adam_eps
    pixels = t.batch_size * config.data.image_size ** 2
    return t.adam_eps / (pixels * math.sqrt(1.0 - t.adam_betas[1] ** (step + 1)))
