"""ONNX export of a trained model, checked against PyTorch before anything is written.

export_onnx(model, out_dir, image_size) writes denoiser.onnx (the EMA U-Net, BatchNorm folded by
corolla.folding, float32, any batch size, the class labels as an input of a conditional
model) and sampler.json (corolla.portable.folder); a cascade's layout model is exported the same
way into out_dir/layout, before the sampler.json that names it. Classifier-free guidance stays with the
sampler, as in PyTorch (corolla.conditioning): it evaluates the conditional and the null label
in one batch and mixes them, so one network serves every guidance.

The export uses torch.onnx's exporter (torch.export, then onnxscript) at its own opset. Before
writing, onnxruntime runs the exported network on random inputs, at a batch size other than the
export's, and its predictions are compared with the unfolded PyTorch network's in float32: beyond
`tolerance` the export is refused with a ValueError and nothing is written. The two files are
each written atomically, sampler.json last; it records denoiser.onnx's SHA-256, so a folder
interrupted between the two is refused when it is loaded.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .. import __version__
from ..cascade import Layout, check_layout
from ..conditioning import DEFAULT_GUIDANCE
from ..diffusion import DiffusionModel
from ..folding import fold_batchnorm
from ..storage.atomic import replacing
from ..storage.checkpoint import model_tensors
from ..storage.digest import file_sha256
from ..unet import UNet
from . import folder, noise
from .mix import ClassMix

DEFAULT_TOLERANCE = 1e-4  # of the largest |predicted noise| (at least 1): float32 rounding is ~1e-6
EXPORT_BATCH, CHECK_BATCH = 2, 3  # the example batch and a different one, to check the free batch size


class _Denoiser(nn.Module):
    """The network with the ONNX inputs as its arguments (a conditional one takes labels)."""

    def __init__(self, network: UNet):
        super().__init__()
        self.network = network

    def forward(self, noisy_images: torch.Tensor, noise_variances: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(noisy_images, noise_variances, labels)


def model_sha256(model: DiffusionModel) -> str:
    """SHA-256 of the EMA weights and normaliser as safetensors bytes (checkpoint.model_tensors with
    ema_only): the weights a sampler uses, whatever the checkpoint file's precision or metadata."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in model_tensors(model, ema_only=True).items()}
    return hashlib.sha256(safetensors_bytes(tensors)).hexdigest()


def random_inputs(network: UNet, batch: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(noisy_images, noise_variances[, labels]) drawn at random: unit Gaussian images, variances in
    [0, 1], labels over every class and the null label."""
    g = torch.Generator().manual_seed(seed)
    c = network.config
    inputs = (torch.randn(batch, c.channels, image_size, image_size, generator=g),
              torch.rand(batch, 1, 1, 1, generator=g))
    if c.classes:
        inputs += (torch.randint(0, len(c.classes) + 1, (batch,), generator=g),)
    return inputs


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Without the exporter's notes on what concerns it alone (torchvision's operators, the batch
    dimension's name, torch's own deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name", category=UserWarning)
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def to_onnx(network: UNet, image_size: int) -> tuple[bytes, int]:
    """The network as ONNX bytes with a free batch size, and the opset written.

    The exporter's optimiser runs as it would, except that it folds no convolution into a
    constant: the edge bias maps of the folded BatchNorm (corolla.folding) would be stored
    at the image size, 40 % of the file at 64x64; onnxruntime folds them when it loads the model."""
    import onnxscript.optimizer  # torch.onnx's exporter needs onnxscript anyway

    example = random_inputs(network, EXPORT_BATCH, image_size)
    names = list(folder.INPUTS[:len(example)])
    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        program = torch.onnx.export(_Denoiser(network).eval(), example, dynamo=True, external_data=False,
                                    input_names=names, output_names=[folder.OUTPUT], verbose=False,
                                    dynamic_shapes={name: {0: batch} for name in names}, optimize=False)
        no_convolutions = lambda node: False if node.op_type == "Conv" else None  # None: the default rules
        onnxscript.optimizer.optimize_ir(program.model, should_fold=no_convolutions)
    return program.model_proto.SerializeToString(), int(program.model.opset_imports[""])


def onnx_error(onnx_bytes: bytes, network: UNet, image_size: int) -> float:
    """The largest |onnxruntime - PyTorch| of the predicted noise on CHECK_BATCH random inputs,
    relative to the largest |PyTorch prediction| when that exceeds 1."""
    import onnxruntime  # an optional dependency: only the export and the portable sampler need it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a small batch: threads cost more than they give
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    inputs = random_inputs(network, CHECK_BATCH, image_size, seed=1)
    got = session.run([folder.OUTPUT], {name: x.numpy() for name, x in zip(folder.INPUTS, inputs)})[0]
    with torch.no_grad():
        expected = network(*inputs).numpy()
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


def export_onnx(model: DiffusionModel, out_dir: str | os.PathLike, image_size: int,
                tolerance: float = DEFAULT_TOLERANCE, class_counts: Sequence[int] = (),
                layout: Layout | None = None) -> Path:
    """Write denoiser.onnx and sampler.json for `model` at `image_size` into `out_dir` (made if
    missing; earlier exports there are replaced) -> out_dir. class_counts: a conditional model's
    training images of each class (Config.data.class_counts), kept as sampler.json's class_mix.
    layout: a cascade's first stage (corolla.cascade), exported into out_dir/layout first, which
    sampler.json then names. Refuses with a ValueError, writing nothing, when onnxruntime's
    predictions differ from PyTorch's beyond `tolerance` (module docstring)."""
    if layout is not None:
        check_layout(layout, model, image_size)
    unet = model.ema_network
    if image_size < 1 or image_size % 2 ** len(unet.config.widths):
        raise ValueError(f"image_size {image_size} must be a positive multiple of {2 ** len(unet.config.widths)} "
                         f"for this network ({len(unet.config.widths)} downsamplings)")
    # a float32 copy in the standard layout on the CPU, whatever model.accelerate chose
    reference = copy.deepcopy(unet).float().cpu().to(memory_format=torch.contiguous_format).eval()
    onnx_bytes, opset = to_onnx(fold_batchnorm(reference), image_size)
    error = onnx_error(onnx_bytes, reference, image_size)
    if not error <= tolerance:  # NaN too
        raise ValueError(f"the exported network's predictions differ from PyTorch's by {error:.3g} (relative), "
                         f"more than the tolerance {tolerance:g}: nothing was written")
    layout_field = None
    if layout is not None:  # checked and written before the sampler.json that vouches for it
        nested = export_onnx(layout.model, Path(out_dir) / folder.LAYOUT_DIR, layout.image_size, tolerance,
                             layout.class_counts)
        layout_field = {"start": layout.start, "sampler_sha256": file_sha256(nested / folder.SAMPLER_FILE)}
    spec = folder.SamplerSpec(
        schedule=model.schedule_name, image_size=image_size, channels=unet.config.channels,
        mean=tuple(model.normalizer.mean.flatten().tolist()),
        variance=tuple(model.normalizer.variance.flatten().tolist()),
        classes=tuple(unet.config.classes), guidance=DEFAULT_GUIDANCE, eps_scale=model.eps_scale,
        multistep_eps_scale=model.multistep_eps_scale, handover_eps_scale=model.handover_eps_scale,
        layout=layout_field,
        class_mix=ClassMix.of_training(unet.config.classes, class_counts).weights if unet.config.classes else (),
        noise_kernel=noise.kernel_for_capability(torch.backends.cpu.get_cpu_capability()),
        model_sha256=model_sha256(model), onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(), opset=opset,
        check={"max_abs_error": error, "tolerance": tolerance, "batch": CHECK_BATCH},
        exporter={"torch": torch.__version__, "corolla": __version__})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, payload in ((folder.ONNX_FILE, onnx_bytes), (folder.SAMPLER_FILE, spec.to_json())):
        with replacing(out / name) as tmp:  # sampler.json last: it vouches for denoiser.onnx
            tmp.write_bytes(payload)
    return out
