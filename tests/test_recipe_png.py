"""Every PNG corolla writes carries its recipe (storage/recipe.py): `corolla sample`'s grid and
--each files, `corolla edit`'s and `corolla inpaint`'s; a sampled image's recipe makes it again
bit for bit; a PNG with no recipe, or a recipe out of its bounds, is refused with a line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_labels_matter
from PIL import Image, PngImagePlugin

from corolla import cli
from corolla.config import preset
from corolla.diffusion import DiffusionModel
from corolla.generation import ClassMix, SamplingSettings, drawn_classes, generate
from corolla.storage import checkpoint
from corolla.storage import recipe as recipes
from corolla.storage.digest import file_sha256
from corolla.storage.grids import save_image, to_uint8
from corolla.unet import UNetConfig

CONFIG = preset("tiny")
CPU = ["--device", "cpu", "--precision", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    torch.manual_seed(0)
    model = DiffusionModel(UNetConfig(**{**CONFIG.unet.__dict__, "classes": CLASSES}))
    make_labels_matter(model.ema_network, torch.Generator().manual_seed(1))
    model.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.05))
    return str(checkpoint.save_pretrained(tmp_path_factory.mktemp("model") / "model", model,
                                          CONFIG.replace(unet={"classes": CLASSES})))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_corolla_sample_s_pngs_carry_recipes_that_make_them_again(conditional, tmp_path):
    assert cli.main(["sample", conditional, "--class", "rose", "--class", "daisy", "--guidance", "2", "-n", "3",
                     "--steps", "3", "--seed", "4", "--sampler", "unipc", "--eps-scale", "1.05", *CPU,
                     "--out", str(tmp_path / "grid.png"),
                     "--each", str(tmp_path / "each")]) == 0
    grid = recipes.read(tmp_path / "grid.png")
    assert (grid.model, grid.seed, grid.index, grid.count, grid.classes, grid.guidance, grid.sampler, grid.grid,
            grid.precision, grid.eps_scale) == (conditional, 4, 0, 3, ("rose", "daisy"), 2.0, "unipc", "logsnr",
                                                "fp32", 1.05)
    assert grid.model_sha256 == recipes.model_sha256(conditional)
    with Image.open(tmp_path / "grid.png") as image:
        assert image.text["parameters"].startswith(f"sample, model {conditional} (sha256 ")
        assert ", eta 0, eps scale 1.05, precision fp32," in image.text["parameters"]
    model, _ = recipes.load_model(grid)  # the recipe's own model, its weights checked
    again = recipes.remake(grid, model)
    assert np.array_equal(pixels(tmp_path / "grid.png")[2:18, 2:18], to_uint8(again)[0])  # the grid's first cell
    for path in sorted((tmp_path / "each").glob("*.png")):  # class1-00002.png: daisy's image 2
        made = recipes.read(path)
        assert (made.index, made.count) == (int(path.stem[-5:]), 1)
        assert made.classes == ((CLASSES[int(path.name[5])],))
        assert np.array_equal(pixels(path), to_uint8(recipes.remake(made, model))[0])
    again = save_image(recipes.remake(made, model)[0], tmp_path / "again.png", made)  # the file, made again
    assert (tmp_path / "again.png").read_bytes() == path.read_bytes() and again.name == "again.png"


def test_a_recipe_records_the_model_s_own_eps_scale(conditional, tmp_path):
    """Sampled without --eps-scale, a model whose config says 1.05 draws at 1.05, and its PNGs say so."""
    model = checkpoint.load_model(conditional)[0]
    scaled = checkpoint.save_pretrained(tmp_path / "scaled", model, CONFIG.replace(
        unet={"classes": CLASSES}, sampling={"eps_scale": 1.05}))
    for folder in (conditional, scaled):
        assert cli.main(["sample", str(folder), "-n", "2", "--steps", "3", *CPU,
                         "--out", str(tmp_path / f"{Path(folder).name}.png")]) == 0
    made = recipes.read(tmp_path / "scaled.png")
    assert made.eps_scale == 1.05 and recipes.read(tmp_path / "model.png").eps_scale == 1.0
    # the multistep samplers' own scale, where the model has one, is what their PNGs record
    multistep = checkpoint.save_pretrained(tmp_path / "multistep", model, CONFIG.replace(
        unet={"classes": CLASSES}, sampling={"eps_scale": 1.05, "multistep_eps_scale": 1.02}))
    for sampler in ("ddim", "dpmpp_2m"):
        assert cli.main(["sample", str(multistep), "-n", "1", "--steps", "3", "--sampler", sampler, *CPU,
                         "--out", str(tmp_path / f"{sampler}.png")]) == 0
    assert (recipes.read(tmp_path / "ddim.png").eps_scale, recipes.read(tmp_path / "dpmpp_2m.png").eps_scale) == (
        1.05, 1.02)
    again = to_uint8(recipes.remake(made, recipes.load_model(made)[0]))
    assert np.array_equal(pixels(tmp_path / "scaled.png")[2:18, 2:18], again[0])
    assert not np.array_equal(pixels(tmp_path / "scaled.png"), pixels(tmp_path / "model.png"))


def test_a_random_class_grid_records_its_mix_and_makes_it_again(conditional, tmp_path):
    """sample --random-class draws each image's class at the training mix (config data.class_counts)
    and records the weights: the grid and each file are made again from the recipe alone."""
    model = checkpoint.load_model(conditional)[0]
    mixed = checkpoint.save_pretrained(tmp_path / "mixed", model, CONFIG.replace(
        unet={"classes": CLASSES}, data={"class_counts": (3, 0, 1)}))
    assert cli.main(["sample", str(mixed), "--random-class", "--guidance", "2", "-n", "4", "--steps", "3", *CPU,
                     "--out", str(tmp_path / "grid.png"), "--each", str(tmp_path / "each")]) == 0
    grid = recipes.read(tmp_path / "grid.png")
    assert (grid.class_mix, grid.classes, grid.guidance, grid.count) == ((3, 0, 1), (), 2.0, 4)
    with Image.open(tmp_path / "grid.png") as image:
        assert image.text["parameters"].endswith(", class drawn by 3 weights, guidance 2")
    loaded = recipes.load_model(grid)[0]
    again = to_uint8(recipes.remake(grid, loaded))
    drawn = generate(loaded, 4, SamplingSettings(steps=3), image_size=16, guidance=2.0,
                     classes=drawn_classes(loaded, ClassMix((3, 0, 1)), 0, range(4)).tolist())
    assert np.array_equal(again, to_uint8(drawn))  # the classes the mix drew, as if asked
    assert np.array_equal(pixels(tmp_path / "grid.png")[2:18, 20:36], again[1])  # the grid's second cell
    classes = drawn_classes(loaded, ClassMix((3, 0, 1)), 0, range(4)).tolist()
    files = [tmp_path / "each" / f"class{c}-{i:05d}.png" for i, c in enumerate(classes)]  # named by drawn class
    assert sorted((tmp_path / "each").iterdir()) == sorted(files)
    made = recipes.read(files[3])
    assert (made.index, made.class_mix) == (3, (3, 0, 1))
    assert np.array_equal(pixels(files[3]), to_uint8(recipes.remake(made, loaded))[0])
    older = {k: v for k, v in json.loads(made.to_json()).items() if k != "class_mix"}
    assert recipes.from_json(json.dumps(older)).class_mix == ()  # written before mixes: none
    with pytest.raises(ValueError, match="the recipe's class_mix .* is not allowed"):
        recipes.from_json(json.dumps({**older, "class_mix": [1, -1, 2]}))


def test_edit_and_inpaint_pngs_carry_what_was_done(conditional, tmp_path):
    photo = next(p for p in sorted(cli.edit.editing.imagefolder.bundled_dir().glob("*.jpg")) if p.stat().st_size)
    assert cli.main(["edit", conditional, str(photo), "--strength", "0.5", "--steps", "4", "--device", "cpu",
                     "--out", str(tmp_path / "edit.png"), "--each", str(tmp_path / "edits")]) == 0
    made = recipes.read(tmp_path / "edits" / "00000.png")
    assert (made.kind, made.details["strength"], made.details["photos"]) == (
        "edit", 0.5, {photo.name: file_sha256(photo)})
    with pytest.raises(ValueError, match="the recipe of an edit needs its photo"):
        recipes.remake(made, checkpoint.load_model(conditional)[0])
    assert cli.main(["inpaint", conditional, str(photo), "--box", "8,8,16,16", "--steps", "4", "--resample", "1",
                     "--device", "cpu", "--out", str(tmp_path / "inpainted.png")]) == 0
    made = recipes.read(tmp_path / "inpainted.png")
    assert (made.kind, made.details["mask"], made.details["resample"]) == ("inpaint", [8, 8, 16, 16], 1)


def test_a_png_without_a_good_recipe_is_refused_with_a_line(conditional, tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")
    (tmp_path / "text.png").write_text("not an image")
    for name, message in (("plain.png", "carries no corolla recipe"), ("photo.jpg", "is a JPEG file, not a PNG"),
                          ("text.png", "is not a PNG corolla can read")):
        with pytest.raises(ValueError, match=message):
            recipes.read(tmp_path / name)
    good = recipes.Recipe("flowers64", "a" * 64, 64, "fp32", 0, 20, "ddim", "uniform")
    for field, value, message in (("seed", -1, "the recipe's seed -1 is not allowed: it must be a whole number"),
                                  ("steps", 10 ** 9, "the recipe's steps 1000000000 is not allowed"),
                                  ("sampler", "euler", "the recipe's sampler 'euler' is not allowed: it must be one "
                                                       "of ddim, dpmpp_2m, dpmpp_3m, unipc"),
                                  ("model_sha256", "x", "it must be 64 hexadecimal digits"),
                                  ("eps_scale", 5, "the recipe's eps_scale 5 is not allowed: it must be a finite "
                                                   "number at least 0.8 and at most 1.2")):
        info = PngImagePlugin.PngInfo()
        info.add_itxt(recipes.KEY, json.dumps({**json.loads(good.to_json()), field: value}))
        Image.new("RGB", (4, 4)).save(tmp_path / "bad.png", pnginfo=info)
        with pytest.raises(ValueError, match=message):
            recipes.read(tmp_path / "bad.png")
    older = json.loads(good.to_json())  # written before epsilon scaling: the reference's sampling
    del older["eps_scale"]
    assert recipes.from_json(json.dumps(older)) == good and good.eps_scale == 1.0
    other = dataclasses.replace(good, model_sha256="b" * 64)
    with pytest.raises(ValueError, match="not these"):
        recipes.check_model(other, "a" * 64, 64)
