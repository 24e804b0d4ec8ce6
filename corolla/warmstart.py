"""Start a new run from a trained model's weights (fine-tuning) instead of random ones.

The source's EMA network (the weights a release holds) becomes both the trained network and the
EMA network of the new run; the optimiser, the step count and the data statistics are the new
run's own. The architecture must be the same, except that an unconditional source may start a
class-conditional run, and a source without the blocks' noise shifts or the bottom's attention a
run with them (unet.noise_in_blocks, unet.attention): those terms start at zero
(corolla.conditioning, corolla.unet), so the new network begins as exactly the source and only has
to learn what they add. The schedule may differ: the network takes the noise variance, not the
diffusion time, so another schedule continues it on another spread of noise levels (`corolla
train` keeps the source's unless one is named).
"""
from __future__ import annotations

import os
from dataclasses import replace

from .config import Config
from .diffusion import DiffusionModel
from .storage import checkpoint, pretrained


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
    weights = trained.ema_network.state_dict()
    for network in (model.network, model.ema_network):
        missing, unexpected = network.load_state_dict(weights, strict=False)
        assert not unexpected and all("class_" in k or "noise" in k or k.startswith("attention.") for k in missing), \
            (missing, unexpected)
    return str(where)
