"""The exported folder: denoiser.onnx beside sampler.json, which says what a sampler needs.

sampler.json (format "corolla-onnx", version 1):
    model_sha256      SHA-256 of the EMA weights and normaliser as safetensors bytes (what the
                      export was made from; corolla.portable.export.model_sha256)
    onnx_sha256       SHA-256 of denoiser.onnx: a torn or mismatched pair is refused on loading
    opset             the ONNX opset the exporter wrote
    schedule          the schedule's name (corolla.schedules.SCHEDULES)
    image_size, channels
    normalizer        {"mean": [C floats], "variance": [C floats]}: images = clip(mean + x sqrt(variance), 0, 1)
    classes           the class names of a conditional model ([] for an unconditional one); the
                      network's input `labels` takes their numbers, and len(classes) is the null label
    guidance          the default classifier-free guidance of a conditional model
    class_mix         a conditional model's training images of each class (corolla.portable.mix:
                      the weights `--random-class` draws each image's class with); [] for an
                      unconditional model, absent in exports written before it
    eps_scale         the default epsilon scale for DDIM (corolla.samplers.scaled_noise; the
                      model's Config.sampling); absent in exports written before it: 1
    multistep_eps_scale  the multistep samplers' own (samplers.own_eps_scale); null or absent:
                      eps_scale
    handover_eps_scale  the scale it finishes a cascade's handed-over images at (Config.sampling);
                      null or absent: its own
    layout            a cascade (corolla.cascade): {"start": the hand-over time, "sampler_sha256": the
                      SHA-256 of layout/sampler.json}, the layout model being a complete export in
                      the folder layout/; null or absent: one network
    noise_kernel      the torch.randn kernel of the exporting machine (corolla.portable.noise), so
                      that a sampler elsewhere starts from the noise PyTorch drew there
    check             {"max_abs_error", "tolerance", "batch"}: onnxruntime against PyTorch at export
    exporter          versions of torch and corolla that wrote it
The network: inputs noisy_images (B, C, H, W) float32, noise_variances (B, 1, 1, 1) float32 (the
noise rate squared) and, for a conditional model, labels (B,) int64; output pred_noises
(B, C, H, W) float32. B is free.

Reading needs neither torch nor onnxruntime.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import samplers, schedules
from ..storage.digest import file_sha256
from .noise import KERNELS

FORMAT, VERSION = "corolla-onnx", 1
ONNX_FILE, SAMPLER_FILE = "denoiser.onnx", "sampler.json"
LAYOUT_DIR = "layout"  # a cascade's layout model, itself an export
# the floor on the normaliser's standard deviation (Keras' Normalization layer's), where images are
# normalised: x = (images - mean) / max(sqrt(variance), NORMALIZATION_EPS)
NORMALIZATION_EPS = 1e-7
INPUTS = ("noisy_images", "noise_variances", "labels")
OUTPUT = "pred_noises"
MAX_SAMPLER_BYTES = 2 ** 20  # sampler.json: a few hundred bytes plus the class names
MAX_IMAGE_SIZE = 4096


class FolderError(ValueError):
    """A folder that is not a complete, consistent export (missing, torn, altered or mismatched files)."""


@dataclass(frozen=True)
class SamplerSpec:
    """What sampler.json holds (module docstring)."""
    schedule: str
    image_size: int
    channels: int
    mean: tuple[float, ...]
    variance: tuple[float, ...]
    classes: tuple[str, ...]
    guidance: float
    noise_kernel: str
    model_sha256: str
    onnx_sha256: str
    opset: int
    check: dict
    exporter: dict
    eps_scale: float = 1.0
    class_mix: tuple[int, ...] = ()
    multistep_eps_scale: float | None = None
    handover_eps_scale: float | None = None
    layout: dict | None = None  # {"start", "sampler_sha256"} of a cascade (module docstring)

    @property
    def null_label(self) -> int:
        return len(self.classes)

    def to_json(self) -> bytes:
        fields = asdict(self)
        fields["normalizer"] = {"mean": list(fields.pop("mean")), "variance": list(fields.pop("variance"))}
        fields["classes"] = list(self.classes)
        return (json.dumps({"format": FORMAT, "version": VERSION, **fields}, indent=2) + "\n").encode()


def read(folder: str | os.PathLike) -> SamplerSpec:
    """sampler.json of `folder`, checked, and checked against denoiser.onnx -> SamplerSpec."""
    folder = Path(folder)
    path = folder / SAMPLER_FILE
    try:
        with open(path, "rb") as f:
            payload = f.read(MAX_SAMPLER_BYTES + 1)
    except OSError as error:
        raise FolderError(f"{str(folder)!r} is not an exported corolla model: cannot read {SAMPLER_FILE} "
                          f"({error.strerror or error})") from None
    if len(payload) > MAX_SAMPLER_BYTES:
        raise FolderError(f"{path} is larger than {MAX_SAMPLER_BYTES} bytes: not a corolla {SAMPLER_FILE}")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FolderError(f"{path} is not valid JSON ({error})") from None
    spec = _spec(raw, path)
    onnx_path = folder / ONNX_FILE
    if not onnx_path.is_file():
        raise FolderError(f"{str(folder)!r} has {SAMPLER_FILE} but no {ONNX_FILE}")
    if file_sha256(onnx_path) != spec.onnx_sha256:
        raise FolderError(f"{onnx_path} is not the network {SAMPLER_FILE} was written for (its SHA-256 differs): "
                          f"the folder is torn or altered; export the model again")
    if spec.layout is not None:
        layout_path = folder / LAYOUT_DIR / SAMPLER_FILE
        if not layout_path.is_file() or file_sha256(layout_path) != spec.layout["sampler_sha256"]:
            raise FolderError(f"{layout_path} is missing or not the layout model {path} was written with: the "
                              f"folder is torn or altered; export the model again")
    return spec


def _spec(raw, path: Path) -> SamplerSpec:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FolderError(f"{path} is not a corolla {SAMPLER_FILE} (format {FORMAT!r} expected)")
    if raw.get("version") != VERSION:
        raise FolderError(f"{path} has version {raw.get('version')!r}; this corolla reads version {VERSION}")

    def field(name: str, kind: type | tuple[type, ...], ok=lambda value: True):
        value = raw.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
            raise FolderError(f"{path}: {name} is missing or invalid ({str(value)[:80]!r})")
        return value

    channels = field("channels", int, lambda c: 1 <= c <= 64)
    normalizer = field("normalizer", dict)

    def statistics(name: str, positive: bool) -> tuple[float, ...]:
        values = normalizer.get(name)
        if (not isinstance(values, list) or len(values) != channels
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           and (v >= 0 or not positive) for v in values)):
            raise FolderError(f"{path}: normalizer {name} must be {channels} finite numbers")
        return tuple(float(v) for v in values)

    classes = field("classes", list, lambda names: all(isinstance(n, str) for n in names))
    counts = lambda mix: (not mix or len(mix) == len(classes) and any(mix)
                          and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 2 ** 53 for n in mix))
    low, high = samplers.EPS_SCALES
    return SamplerSpec(
        schedule=field("schedule", str, lambda name: name in schedules.SCHEDULES),
        image_size=field("image_size", int, lambda size: 1 <= size <= MAX_IMAGE_SIZE),
        channels=channels, mean=statistics("mean", False), variance=statistics("variance", True),
        classes=tuple(classes),
        guidance=float(field("guidance", (int, float), math.isfinite)),
        noise_kernel=field("noise_kernel", str, lambda kernel: kernel in KERNELS),
        model_sha256=field("model_sha256", str), onnx_sha256=field("onnx_sha256", str),
        opset=field("opset", int), check=field("check", dict), exporter=field("exporter", dict),
        eps_scale=float(field("eps_scale", (int, float), lambda scale: low <= scale <= high)
                        if "eps_scale" in raw else 1.0),
        class_mix=tuple(field("class_mix", list, counts) if "class_mix" in raw else ()),
        multistep_eps_scale=float(field("multistep_eps_scale", (int, float), lambda scale: low <= scale <= high))
        if raw.get("multistep_eps_scale") is not None else None,
        handover_eps_scale=float(field("handover_eps_scale", (int, float), lambda scale: low <= scale <= high))
        if raw.get("handover_eps_scale") is not None else None,
        layout=_layout(field("layout", dict), path) if raw.get("layout") is not None else None)


def _layout(raw: dict, path: Path) -> dict:
    start, digest = raw.get("start"), raw.get("sampler_sha256")
    if (not isinstance(start, (int, float)) or isinstance(start, bool) or not 0 < start < 1
            or not isinstance(digest, str)):
        raise FolderError(f"{path}: layout must be {{\"start\": a time in (0, 1), \"sampler_sha256\": a "
                          f"SHA-256}} ({str(raw)[:80]!r})")
    return {"start": float(start), "sampler_sha256": digest}
