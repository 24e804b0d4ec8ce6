"""Start a new run from a trained model's weights (fine-tuning) instead of random ones.

The source's EMA network (the weights a release holds) becomes both the trained network and the
EMA network of the new run; the optimiser, the step count and the data statistics are the new
run's own. The architecture must be the same, except that an unconditional source may start a
class-conditional run, and a source without the blocks' noise shifts or the bottom's attention a
run with them (unet.noise_in_blocks, unet.attention): those terms start at zero
(corolla.conditioning, corolla.unet), so the new network begins as exactly the source and only has
to learn what they add. And a conditional source whose class is joined with the noise level may
start an unconditional run with the blocks' noise shifts as its null-label network, exactly
(null_label_twin). The schedule may differ: the network takes the noise variance, not the
diffusion time, so another schedule continues it on another spread of noise levels (`corolla
train` keeps the source's unless one is named).
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch

from .config import Config
from .diffusion import DiffusionModel
from .storage import checkpoint, pretrained
from .unet import UNetConfig


def source_path(source: str | os.PathLike):
    """A checkpoint or run folder, or the name of a shipped model (`corolla models`)."""
    if str(source) in pretrained.names():
        return pretrained.path(str(source))
    return checkpoint.resolve(source)


def load_into(model: DiffusionModel, config: Config, source: str | os.PathLike) -> str:
    """Copy the source's EMA weights into both of model's networks -> the source's path, for the
    run's records. Raises ValueError when the networks differ in more than the class conditioning."""
    where = source_path(source)
    trained, trained_config = checkpoint.load_model(where)
    theirs, ours = trained_config.unet, config.unet
    weights = trained.ema_network.state_dict()
    if theirs.classes and not ours.classes:
        if not ours.noise_in_blocks:
            raise ValueError(f"--init-from {source}: a conditional model starts an unconditional run only as its "
                             f"null-label network, which needs --noise-in-blocks (or add --conditional)")
        theirs, weights = null_label_twin(theirs, weights, source)
    # an unconditional source has no class terms, so it starts a conditional run of any class design
    neutral = {"classes": ()} if theirs.classes else {"classes": (), "class_modulation": ours.class_modulation,
                                                      "class_with_noise": ours.class_with_noise}
    for added in ("noise_in_blocks", "attention"):  # parts that start at zero
        if not getattr(theirs, added):
            neutral[added] = getattr(ours, added)
    if replace(theirs, **neutral) != replace(ours, **neutral):
        raise ValueError(f"--init-from {source}: its network is not this run's (image size, widths, blocks, "
                         f"embedding or class design differ); choose the same --preset, --image-size, "
                         f"--class-modulation, --class-with-noise, --noise-in-blocks and --attention")
    if theirs.classes and theirs.classes != ours.classes:
        raise ValueError(f"--init-from {source}: a conditional model starts only a run of its own "
                         f"{len(theirs.classes)} classes, in the same order")
    for network in (model.network, model.ema_network):
        missing, unexpected = network.load_state_dict(weights, strict=False)
        assert not unexpected and all("class_" in k or "noise" in k or k.startswith("attention.") for k in missing), \
            (missing, unexpected)
    return str(where)


def null_label_twin(theirs: UNetConfig, weights: dict[str, torch.Tensor], source: str | os.PathLike
                    ) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """A conditional network whose class vector is joined with the noise level and shifts each
    block's features -> the unconditional network with the blocks' noise shifts that computes its
    null-label prediction exactly, and its weights. The join is swish(W [c; e] + b) for class vector
    c and noise embedding e; at the null label c is one fixed vector, so it is swish(W_e e + b'),
    b' = b + W_c c: corolla.unet.BlockNoise's form, and each block's class shift becomes its noise
    shift. Raises ValueError for a design that has no such twin."""
    if not theirs.class_with_noise or theirs.class_modulation != "shift" or theirs.noise_in_blocks:
        raise ValueError(f"--init-from {source}: only a conditional model with --class-with-noise, shifts alone "
                         f"and no --noise-in-blocks of its own has an unconditional twin")
    null = weights["class_embedding.weight"][-1]
    join, bias = weights["class_join.linear.weight"], weights["class_join.linear.bias"]
    twin = {key.replace(".class_shift.", ".noise_shift."): value for key, value in weights.items()
            if not key.startswith(("class_embedding.", "class_join."))}
    twin["block_noise.linear.weight"] = join[:, null.shape[0]:]
    twin["block_noise.linear.bias"] = bias + join[:, :null.shape[0]] @ null
    return replace(theirs, classes=(), class_with_noise=False, noise_in_blocks=True), twin
