"""Typed, frozen configs and the named presets. A run's whole Config is saved in its checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .limits import check_config, short
from .unet import UNetConfig


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 64
    repetitions: int = 5          # the reference's DATASET_REPETITIONS
    shuffle_seed: int = 42        # image_dataset_from_directory(seed=42)
    val_fraction: float = 0.05    # held out for the validation loss; 0 trains on every image, as the reference
    crop: bool = False            # False squashes the whole image to the square (the reference)
    class_counts: tuple[int, ...] = ()  # training images per class of a conditional run (`corolla classes`)


WARM_START_LR_WARMUP = 200


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    # steps of linear learning-rate warm-up from lr / lr_warmup; None: WARM_START_LR_WARMUP for a run
    # started --init-from (fresh Adam moments beside trained weights), else 0; a run saves the resolved one
    lr_warmup: int | None = None
    lr_cooldown: int = 0          # steps of linear decay to 0 at the end of the run (its last epoch or --max-steps)
    hflip: bool = False           # each training image mirrored left-right with probability 1/2
    min_snr_gamma: float = 0.0    # > 0: min-SNR-gamma loss weights (corolla.losses.min_snr_weights)
    loss: str = "l1"              # of the noise: "l1" the reference's, "mse" (corolla.losses.LOSSES)
    loss_scales: int = 1          # > 1: the loss also at coarser levels (corolla.losses.coarse_errors)
    time_range: tuple[float, float] = (0.0, 1.0)  # diffusion times drawn from [lo, hi): a part of the levels
    loss_space: str = "noise"     # the error on the noise (the reference), the image it implies, or the larger
    weight_decay: float = 1e-4
    adam_eps: float = 1e-7        # Keras' AdamW default
    # the reference's effective AdamW step: it back-propagates the *sum* of its per-pixel L1 map
    # (B x H x W times the mean's gradient) and Keras adds epsilon to the uncorrected sqrt(v);
    # Adam is scale-invariant but for epsilon, so corolla keeps the mean loss and rescales epsilon
    keras_adam_step: bool = False
    adam_betas: tuple[float, float] = (0.9, 0.999)
    ema: float = 0.999
    ema_warmup: bool = False      # decay min(ema, (1 + step) / (10 + step)), for short runs
    ema_init: str = "copy"        # "fresh" is the reference's clone_model (own random weights)
    schedule: str = "offset_cosine"
    seed: int = 0                 # weights, noise and diffusion times
    sample_steps: int = 20        # DDIM steps of the per-epoch grid
    grid_images: int = 16         # images in the per-epoch grid (fixed noise)
    accumulate: int = 1           # micro-batches per optimiser step (per process)
    # speed options: the maths is unchanged, results differ only by float rounding
    channels_last: bool = True    # NHWC: the faster layout here, training and sampling (README Performance)
    compile: bool = False
    precision: str = "auto"       # fp32, bf16 (autocast), auto: bf16 where native; a run saves the resolved one
    sync_bn: bool = False         # SyncBatchNorm across GPUs under torchrun (CUDA only)
    # evaluation during training (corolla.metrics): every N epochs, on fixed generated images
    eval_every: int = 0           # 0: off
    eval_samples: int = 128
    eval_steps: int = 10
    keep_best: str = ""           # a metric (swd, heldout_loss, kid, fid) whose best EMA weights go to run/best
    # conditional runs: the share of images trained with the null label instead of their class, so
    # one network also learns the unconditional prediction (Ho and Salimans 2022; corolla.conditioning)
    label_dropout: float = 0.1


@dataclass(frozen=True)
class SamplingConfig:
    """How the model is best drawn from when a command or caller does not say: not part of the
    weights (a checkpoint's weights are checked against every other section), so a released model's
    config.json may set it after measuring."""
    eps_scale: float = 1.0        # samplers.scaled_noise's divisor for DDIM; 1 is the reference's sampling
    multistep_eps_scale: float | None = None  # dpmpp_2m's, dpmpp_3m's and unipc's; None: eps_scale
    # a cascade's (corolla.cascade): the scale this model finishes an image handed over below t = 1
    # at; None: its own for the sampler. A handed-over image needs more than sampling from noise.
    handover_eps_scale: float | None = None
    # the layout model a command draws this model's images after (corolla.cascade) unless told
    # --layout or --no-layout: a sub-folder of the checkpoint's folder or a shipped model, by name
    layout: str | None = None
    layout_start: float | None = None  # its hand-over time; None: cascade.LAYOUT_START


@dataclass(frozen=True)
class Config:
    preset: str = "seed64"
    unet: UNetConfig = field(default_factory=UNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        check_config(self)  # every field, on construction, replace and load (corolla.limits)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Rebuild from JSON, rejecting unknown keys so a foreign config is a clear error.
        Checkpoints written before `precision` existed stored a `bf16` flag instead."""
        if isinstance(d.get("train"), dict) and "bf16" in d["train"] and "precision" not in d["train"]:
            train = dict(d["train"])
            train["precision"] = "bf16" if train.pop("bf16") else "fp32"
            d = {**d, "train": train}
        def build(kind, values):
            if not isinstance(values, dict):
                raise ValueError(f"{kind.__name__} must be a JSON object, not {short(values)}")
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} keys: {short(', '.join(sorted(unknown)), 100)}")
            kwargs = {}
            for f in dataclasses.fields(kind):
                if f.name not in values:
                    continue
                v = values[f.name]
                sub = {"unet": UNetConfig, "data": DataConfig, "train": TrainConfig,
                       "sampling": SamplingConfig}.get(f.name)
                if kind is Config and sub is not None:
                    v = build(sub, v)
                elif isinstance(v, list):
                    v = tuple(v)
                kwargs[f.name] = v
            return kind(**kwargs)
        return build(cls, d)

    def replace(self, **sections) -> "Config":
        """replace(train={"epochs": 3}) -> a copy with those fields changed."""
        changes = {}
        for name, values in sections.items():
            changes[name] = dataclasses.replace(getattr(self, name), **values) if isinstance(values, dict) else values
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Config] = {
    # The reference, number for number (SPEC.md).
    "seed64": Config(preset="seed64", train=TrainConfig(keras_adam_step=True)),
    # The reference network at 32x32 on a 2-core CPU: about 10 minutes on the bundled flowers.
    "demo": Config(preset="demo", data=DataConfig(image_size=32),
                   train=TrainConfig(epochs=10, batch_size=32, ema_warmup=True)),
    # A few steps of a tiny network: for tests and smoke runs.
    "tiny": Config(preset="tiny", unet=UNetConfig(widths=(8, 16), bottom_width=16, block_depth=1,
                                                  embedding_size=8),
                   data=DataConfig(image_size=16, repetitions=1),
                   train=TrainConfig(epochs=1, batch_size=8, ema_warmup=True, sample_steps=5, grid_images=4)),
}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
