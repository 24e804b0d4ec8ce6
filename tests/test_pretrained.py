"""The shipped flower model loads and still makes the images it made when it was released.

Regenerate the stored reference (only when the shipped model is replaced on purpose):
    python tests/test_pretrained.py
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import corolla
from corolla import pretrained
from corolla.generate import generate
from corolla.unet import count_parameters

REFERENCE = Path(__file__).with_name("data") / "pretrained_reference.json"
SEED, STEPS, IMAGES, POOL = 0, 10, 4, 4


def _low_resolution_samples() -> torch.Tensor:
    model, config = corolla.load_pretrained()
    images = generate(model, IMAGES, STEPS, SEED, image_size=config.data.image_size)
    return F.avg_pool2d(images, POOL)  # (4, 3, 8, 8): the layout of each image, not its noise-level detail


def test_shipped_model_is_a_release_checkpoint_of_the_reference_network():
    folder = pretrained.path()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        ["README.md", "config.json", "model.safetensors", "samples.png"]
    model, config = corolla.load_pretrained()
    assert count_parameters(model.network) == 1_950_627
    assert config.unet == corolla.preset("seed64").unet
    assert (folder / "model.safetensors").stat().st_size < 8 * 2 ** 20


def test_shipped_model_makes_the_images_it_was_released_with():
    reference = json.loads(REFERENCE.read_text())
    low = _low_resolution_samples()
    stored = torch.tensor(reference["low_resolution"])
    assert low.shape == stored.shape
    # float16 weights and kernels of another CPU may move pixels slightly, a broken model or sampler moves them a lot
    assert (low - stored).abs().max().item() < 3 / 255
    assert torch.allclose(low.mean(dim=(0, 2, 3)), stored.mean(dim=(0, 2, 3)), atol=1 / 255)
    assert low.std().item() > 0.05  # not a flat image


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({"seed": SEED, "steps": STEPS, "pool": POOL,
                                     "low_resolution": _low_resolution_samples().tolist()}) + "\n")
    print(f"wrote {REFERENCE}")
