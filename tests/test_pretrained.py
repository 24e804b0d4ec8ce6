"""The shipped models load, are chosen by name, and still make the images they were released with.

Regenerate a model's stored reference (only when that model is replaced on purpose):
    python tests/test_pretrained.py NAME      # or MODEL+LAYOUT, a shipped cascade: flowers64+layout32
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import corolla
from corolla import cascade, cli
from corolla.cli import options
from corolla.generation import SamplingSettings, generate
from corolla.storage import checkpoint, pretrained
from corolla.unet import count_parameters

SEED, STEPS, IMAGES, POOL = 0, 10, 4, 4
SHIPPED = pretrained.names()
CASCADES = ["flowers64+layout32", "species64+species32"]  # each shipped layout model and the model it draws for


def reference_file(name: str) -> Path:
    return Path(__file__).with_name("data") / f"{name}_reference.json"


def _low_resolution_samples(name: str) -> torch.Tensor:
    """A conditional model draws classes 0 to 3 at the default guidance; MODEL+LAYOUT is the cascade."""
    name, _, layout = name.partition("+")
    model, config = corolla.load_pretrained(name)
    classes = list(range(IMAGES)) if config.unet.classes else None
    first = cascade.load(layout, model, config.data.image_size, torch.device("cpu"), "fp32") if layout else None
    images = generate(model, IMAGES, SamplingSettings(steps=STEPS, seed=SEED), image_size=config.data.image_size,
                      classes=classes, layout=first)
    pool = POOL * config.data.image_size // 32
    return F.avg_pool2d(images, pool)  # (4, 3, 8, 8): the layout of each image, not its noise-level detail


def test_every_shipped_model_has_a_card_and_a_stored_reference():
    assert pretrained.DEFAULT in SHIPPED and SHIPPED[0] == pretrained.DEFAULT
    for name in SHIPPED:
        assert reference_file(name).is_file(), name
        info = pretrained.describe(name)
        assert info["steps"] > 0 and info["images_seen"] >= info["steps"] and info["data"]


def test_every_layout_model_a_shipped_model_names_is_a_checked_cascade():
    named = [f"{name}+{layout}" for name in SHIPPED
             if (layout := checkpoint.load_config(pretrained.path(name)).sampling.layout)]
    assert sorted(named) == sorted(CASCADES)
    assert all(layout in SHIPPED for layout in (pair.split("+")[1] for pair in CASCADES))


@pytest.mark.parametrize("name", SHIPPED)
def test_a_cards_training_history_adds_up_to_the_steps_it_states(name):
    card = json.loads((pretrained.path(name) / "card.json").read_text())
    history = card.get("history")
    if history is None:
        pytest.skip(f"{name} predates the history table")
    first = history[0]  # a fine-tune's first stint counts the steps of the model it started from
    before = (first["cumulative_steps"] - first["steps"], first["cumulative_images"] - first["images"])
    assert before[0] >= 0 and before[1] >= 0
    for previous, row in zip(history, history[1:]):
        base = row.get("restarted_from") or previous  # a stint started again from another model counts its steps
        assert row["cumulative_steps"] == base["cumulative_steps"] + row["steps"]
        assert row["cumulative_images"] == base["cumulative_images"] + row["images"]
    assert (card["steps"], card["images_seen"]) == (history[-1]["cumulative_steps"], history[-1]["cumulative_images"])
    assert all(row["recipe"] and row["machine"] and row["precision"] in ("fp32", "bf16") for row in history)


def _class_parameters(unet) -> int:
    """A conditional model adds its class vectors (and the null label's) and a class shift for each
    of the 14 residual blocks' 1,024 channels, read from a 32-number vector; joined with the noise
    level, that vector is 128 numbers wide and made by a layer from the class's and the noise's."""
    classes = len(unet.classes)
    if not classes:
        return 0
    if unet.class_with_noise:
        return (classes + 1) * 32 + (64 * 128 + 128) + 1_024 * 128
    return (classes + 1 + 1_024) * 32


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_a_release_checkpoint_of_the_reference_network(name):
    folder = pretrained.path(name)
    files = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    required = {"README.md", "card.json", "config.json", "model.safetensors", "samples.png"}
    # optional: the card's per-epoch strip, its training-history figure and a layout model's cascade grid
    assert required <= files <= required | {"progress.png", "history.png", "cascade.png"}
    model, config = corolla.load_pretrained(name)
    assert dataclasses.replace(config.unet, classes=(), class_with_noise=False) == corolla.preset("seed64").unet
    assert count_parameters(model.network) == 1_950_627 + _class_parameters(config.unet)
    # issue 23: a model update may add at most ~8 MB to the repository (species64's float32 with the
    # class joined with the noise level: 8.40 MB)
    assert (folder / "model.safetensors").stat().st_size < 8.5e6


@pytest.mark.parametrize("name", [*SHIPPED, *CASCADES])
def test_shipped_model_makes_the_images_it_was_released_with(name):
    reference = json.loads(reference_file(name).read_text())
    low = _low_resolution_samples(name)
    stored = torch.tensor(reference["low_resolution"])
    assert low.shape == stored.shape
    # float16 weights and kernels of another CPU may move pixels slightly, a broken model or sampler moves them a lot
    assert (low - stored).abs().max().item() < 3 / 255
    assert torch.allclose(low.mean(dim=(0, 2, 3)), stored.mean(dim=(0, 2, 3)), atol=1 / 255)
    assert low.std().item() > 0.05  # not a flat image


def _args(checkpoint=None, model=None):
    return argparse.Namespace(checkpoint=checkpoint, model=model)


def test_model_option_picks_each_shipped_model_and_refuses_others(tmp_path, capsys, monkeypatch):
    assert options.checkpoint_path(_args("runs/x")) == "runs/x"
    assert options.checkpoint_path(_args()) == str(pretrained.path(pretrained.DEFAULT))
    for name in SHIPPED:
        assert options.checkpoint_path(_args(model=name)) == str(pretrained.MODELS / name)
        out = tmp_path / f"{name}.png"
        assert cli.main(["sample", "--model", name, "-n", "1", "--steps", "1", "--out", str(out)]) == 0
        size = corolla.load_pretrained(name)[1].data.image_size
        with Image.open(out) as image:
            assert image.size[1] == size + 2 * 2  # one image and the grid's 2-pixel border
    with pytest.raises(ValueError, match="not both"):
        options.checkpoint_path(_args("runs/x", SHIPPED[0]))
    # a shipped model's name where a folder goes: the option that takes names, unless such a folder exists
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["interpolate", SHIPPED[0], "--out", str(tmp_path / "i.png")]) == 2
    assert capsys.readouterr().err == (f"corolla: error: no checkpoint folder {SHIPPED[0]!r} here; for the shipped "
                                       f"model of that name give --model {SHIPPED[0]}\n")
    (tmp_path / SHIPPED[0]).mkdir()
    assert options.checkpoint_path(_args(SHIPPED[0])) == SHIPPED[0]
    assert cli.main(["sample", "--model", "roses", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no shipped model named 'roses'" in err and SHIPPED[0] in err
    monkeypatch.setattr(pretrained, "MODELS", tmp_path / "none")
    assert cli.main(["trajectory", "--out", str(tmp_path / "t.png")]) == 2
    assert "none in this install" in capsys.readouterr().err


def test_class_commands_default_to_the_shipped_conditional_model(tmp_path, capsys):
    conditional = str(pretrained.path(pretrained.CONDITIONAL))
    assert corolla.load_pretrained(pretrained.CONDITIONAL)[1].unet.classes
    assert options.checkpoint_path(argparse.Namespace(checkpoint=None, model=None, classes=["rose"])) == conditional
    assert options.checkpoint_path(argparse.Namespace(checkpoint=None, model=None, lists_classes=True)) == conditional
    assert options.checkpoint_path(argparse.Namespace(checkpoint=None, model=None, classes=None)) == \
        str(pretrained.path(pretrained.DEFAULT))
    out = tmp_path / "sunflowers.png"
    assert cli.main(["sample", "--class", "sunflower", "-n", "1", "--steps", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert cli.main(["classes"]) == 0
    assert "sunflower" in capsys.readouterr().out


def test_models_command_lists_each_shipped_model(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "resolution", "classes"]
    assert [line.split()[0] for line in out[1:]] == SHIPPED
    assert out[1].split()[1:4] == ["(default)", "64x64", "-"]  # the default model is unconditional
    for line, name in zip(out[2:], SHIPPED[1:]):
        classes = corolla.load_pretrained(name)[1].unet.classes
        assert line.split()[2] == (str(len(classes)) if classes else "-")


if __name__ == "__main__":
    for name in sys.argv[1:] or SHIPPED:
        reference_file(name).parent.mkdir(exist_ok=True)
        reference_file(name).write_text(json.dumps({"seed": SEED, "steps": STEPS, "pool": POOL,
                                                    "low_resolution": _low_resolution_samples(name).tolist()}) + "\n")
        print(f"wrote {reference_file(name)}")
