"""A cascade: a model of smaller images draws the layout, the model finishes it from the hand-over
time (corolla.cascade, corolla.generation), in the library and through `corolla sample` and
`corolla evaluate`."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from corolla import cascade, cli, generation, samplers
from corolla.cascade import Layout
from corolla.config import preset
from corolla.diffusion import DiffusionModel
from corolla.generation import SamplingSettings, draw_noise, generate, sample_from_noise, seeded_generator
from corolla.storage import checkpoint
from corolla.storage.digest import file_sha256
from corolla.storage.grids import to_uint8
from corolla.training import build
from corolla.unet import UNetConfig

SIZE, SMALL = 16, 8
NETWORK = UNetConfig(widths=(8, 16), bottom_width=16, block_depth=1, embedding_size=8)


def _perturbed(m: DiffusionModel, seed: int) -> DiffusionModel:
    """The model with its zero-initialised head (and class shifts) perturbed, so that its network's
    output (and a class) matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.ema_network.head.weight.normal_(0.0, 0.2, generator=generator)
        for name, weight in m.ema_network.named_parameters():
            if name.endswith("class_shift.weight"):
                weight.normal_(0.0, 0.5, generator=generator)
    m.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.04))
    return m.eval()


@pytest.fixture(scope="module")
def pair() -> tuple[DiffusionModel, Layout]:
    torch.manual_seed(0)
    model = _perturbed(DiffusionModel(NETWORK), 1)
    return model, Layout(_perturbed(DiffusionModel(NETWORK), 2), SMALL)


def _cascade(model, layout, num_images=5, start=0, **settings):
    settings = SamplingSettings(**{"steps": 4, "seed": 3, **settings})
    return generate(model, num_images, settings, image_size=SIZE, start=start, layout=layout)


def test_the_model_finishes_the_upsampled_layout_from_the_hand_over_drawing_from_each_image_s_stream(pair):
    model, layout = pair
    got = _cascade(model, layout)
    # by hand: image i's stream draws the layout's noise, then the noise that takes it to the hand-over
    generators = [seeded_generator(3, i) for i in range(5)]
    layouts = sample_from_noise(layout.model, draw_noise(generators, (3, SMALL, SMALL)), 4)
    start = cascade.handed_over(model, layouts, draw_noise(generators, (3, SIZE, SIZE)), 0.8)
    times = samplers.times_from(samplers.uniform_grid(4, model.schedule), 0.8)
    assert times.tolist() == pytest.approx([0.8, 0.75, 0.5, 0.25, 0.0])  # 3 of the 4 evaluations
    with torch.inference_mode():
        expected = model.normalizer.denormalize(samplers.ddim(model.ema_denoiser(), model.schedule, start, times))
    assert (got - expected).abs().max().item() <= 1e-6
    # the layout shows through: each image is closer to its own upsampled layout than to the others'
    up = cascade.upsample(layouts, SIZE)
    distances = torch.cdist(got.flatten(1), up.flatten(1))
    assert torch.equal(distances.argmin(dim=1), torch.arange(5))
    # image i depends on the seed and i only, whatever the batch; and the layout changes the images
    assert (_cascade(model, layout, num_images=2, start=3, batch_size=1) - got[3:]).abs().max().item() <= 1e-5
    assert (generate(model, 5, SamplingSettings(steps=4, seed=3), image_size=SIZE) - got).abs().mean() > 0.01


def test_the_model_finishes_at_its_hand_over_scale_unless_a_scale_is_chosen(pair, monkeypatch):
    """Config.sampling.handover_eps_scale: a handed-over image needs a larger scale than one from
    pure noise (benchmarks/README.md, "A cascade"); sampling from noise keeps eps_scale."""
    model, layout = pair
    plain = generate(model, 3, SamplingSettings(steps=4), image_size=SIZE)
    at = {scale: _cascade(model, layout, eps_scale=scale) for scale in (1.0, 1.05)}
    assert (at[1.05] - at[1.0]).abs().mean().item() > 1e-3
    assert torch.equal(_cascade(model, layout), at[1.0])  # no hand-over scale: the model's own
    monkeypatch.setattr(model, "handover_eps_scale", 1.05)
    assert torch.equal(_cascade(model, layout), at[1.05])
    assert torch.equal(_cascade(model, layout, eps_scale=1.0), at[1.0])
    assert torch.equal(generate(model, 3, SamplingSettings(steps=4), image_size=SIZE), plain)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_the_callback_counts_both_stages_and_sees_full_size_previews(pair, sampler):
    """A server's progress and Stop: the layout model's evaluations count first, their previews
    upsampled, then the model's from the hand-over on; cascade.evaluations says how many."""
    model, layout = pair
    seen = []
    settings = SamplingSettings(steps=5, seed=3, sampler=sampler, batch_size=2)
    got = generate(model, 2, settings, image_size=SIZE, layout=layout,
                   callback=lambda count, preview: seen.append((count, tuple(preview.shape))))
    total = cascade.evaluations(model, layout, settings)
    # uniform grid: 0.8, 0.6, 0.4, 0.2 below the hand-over; the log-SNR grid has 3 times there
    assert [count for count, _ in seen] == list(range(1, total + 1))
    assert total == 5 + {"ddim": 4, "dpmpp_2m": 3}[sampler]
    assert {shape for _, shape in seen} == {(2, 3, SIZE, SIZE)}
    assert cascade.evaluations(model, None, settings) == 5
    assert torch.equal(got, generate(model, 2, settings, image_size=SIZE, layout=layout))  # watching changes nothing


def test_a_later_hand_over_leaves_more_to_the_model(pair):
    model, layout = pair
    layouts = cascade.upsample(sample_from_noise(layout.model, draw_noise(
        [seeded_generator(3, i) for i in range(5)], (3, SMALL, SMALL)), 4), SIZE)
    far = {start: (_cascade(model, replace(layout, start=start)) - layouts).abs().mean().item()
           for start in (0.3, 0.9)}
    assert far[0.3] < far[0.9]


def test_upsampling_keeps_flat_images_flat_and_stays_in_range():
    flat = torch.full((2, 3, 4, 4), 0.3)
    assert torch.allclose(cascade.upsample(flat, 8), torch.full((2, 3, 8, 8), 0.3), atol=1e-6)
    checks = (torch.arange(16).reshape(1, 1, 4, 4) % 2).float().expand(1, 3, 4, 4)
    up = cascade.upsample(checks, 16)
    assert up.shape == (1, 3, 16, 16) and up.min().item() == 0.0 and up.max().item() == 1.0  # bicubic overshoot clamped


def test_layouts_that_cannot_start_the_model_are_refused(pair):
    model, layout = pair
    settings = SamplingSettings(steps=2)
    with pytest.raises(ValueError, match="the layout model draws 16x16 images: it must draw smaller ones than "
                                         "the model's 16x16"):
        generate(model, 1, settings, image_size=SIZE, layout=replace(layout, image_size=SIZE))
    conditional = DiffusionModel(replace(NETWORK, classes=("a", "b")))
    other = Layout(DiffusionModel(replace(NETWORK, classes=("a", "c"))), SMALL)
    with pytest.raises(ValueError, match="both class-conditional but know different classes"):
        generate(conditional, 1, settings, image_size=SIZE, layout=other)
    with pytest.raises(ValueError, match="this model is not class-conditional"):
        generate(model, 1, settings, image_size=SIZE, classes="a", layout=layout)  # no stage knows classes
    for start in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match=f"layout start {start} is not allowed: it is the diffusion time in"):
            generate(model, 1, settings, image_size=SIZE, layout=replace(layout, start=start))


@pytest.fixture(scope="module")
def conditional_layout() -> Layout:
    torch.manual_seed(4)
    return Layout(_perturbed(DiffusionModel(replace(NETWORK, classes=("a", "b"))), 3), SMALL, class_counts=(1, 3))


def test_a_conditional_layout_model_gives_an_unconditional_model_s_images_their_class(pair, conditional_layout):
    model, layout = pair
    settings = SamplingSettings(steps=4, seed=3)
    got = generate(model, 3, settings, image_size=SIZE, classes=["a", "b", "b"], guidance=2.0,
                   layout=conditional_layout)
    generators = [seeded_generator(3, i) for i in range(3)]
    labels = torch.tensor([0, 1, 1])
    layouts = sample_from_noise(conditional_layout.model, draw_noise(generators, (3, SMALL, SMALL)), 4,
                                labels=labels, guidance=2.0)
    start = cascade.handed_over(model, layouts, draw_noise(generators, (3, SIZE, SIZE)), 0.8)
    expected = sample_from_noise(model, start, 4, start=0.8)  # the unconditional model takes no labels
    assert (got - expected).abs().max().item() <= 1e-6
    # the class moves the image; no class: the layout model's null label
    assert (got[0] - generate(model, 1, settings, image_size=SIZE, classes="b", guidance=2.0,
                              layout=conditional_layout)[0]).abs().mean().item() > 1e-3
    generator = [seeded_generator(3, 0)]
    null = sample_from_noise(conditional_layout.model, draw_noise(generator, (3, SMALL, SMALL)), 4)
    start = cascade.handed_over(model, null, draw_noise(generator, (3, SIZE, SIZE)), 0.8)
    unconditional = generate(model, 1, settings, image_size=SIZE, layout=conditional_layout)
    assert (unconditional - sample_from_noise(model, start, 4, start=0.8)).abs().max().item() <= 1e-6
    assert (unconditional[0] - got[0]).abs().mean().item() > 1e-3
    # the training mix a drawn class comes from is the layout model's
    assert generation.training_mix(model, (), conditional_layout).weights == (1, 3)


def test_a_conditional_model_draws_its_class_over_an_unconditional_layout(pair):
    model, layout = pair
    conditional = _perturbed(DiffusionModel(replace(NETWORK, classes=("a", "b"))), 5)
    settings = SamplingSettings(steps=4, seed=3)
    got = generate(conditional, 2, settings, image_size=SIZE, classes="b", guidance=1.5, layout=layout)
    generators = [seeded_generator(3, i) for i in range(2)]
    layouts = sample_from_noise(layout.model, draw_noise(generators, (3, SMALL, SMALL)), 4)
    start = cascade.handed_over(conditional, layouts, draw_noise(generators, (3, SIZE, SIZE)), 0.8)
    expected = sample_from_noise(conditional, start, 4, labels=torch.tensor([1, 1]), guidance=1.5, start=0.8)
    assert (got - expected).abs().max().item() <= 1e-6


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny 16x16 checkpoint and an 8x8 one, their heads perturbed."""
    root = tmp_path_factory.mktemp("cascade")
    config = preset("tiny").replace(train={"precision": "fp32"})
    small = config.replace(data={"image_size": SMALL})
    return (checkpoint.save_pretrained(root / "model", _perturbed(build(config, torch.device("cpu"))[0], 1), config),
            checkpoint.save_pretrained(root / "layout", _perturbed(build(small, torch.device("cpu"))[0], 2), small))


def test_corolla_sample_layout_writes_the_library_s_cascade_and_says_so_in_its_recipe(folders, tmp_path):
    model_folder, layout_folder = folders
    out = tmp_path / "grid.png"
    assert cli.main(["sample", str(model_folder), "--layout", str(layout_folder), "--layout-start", "0.6",
                     "-n", "3", "--steps", "5", "--seed", "2", "--precision", "fp32", "--device", "cpu",
                     "--each", str(tmp_path / "each"), "--out", str(out), "--no-progress"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / "each" / f"{i:05d}.png")) for i in range(3)])
    cpu = torch.device("cpu")
    model, _ = checkpoint.load_for_sampling(model_folder, cpu, "fp32")
    layout = cascade.load(str(layout_folder), model, SIZE, cpu, "fp32", 0.6)
    assert layout.image_size == SMALL and layout.folder == layout_folder
    made = generate(model, 3, SamplingSettings(steps=5, seed=2), image_size=SIZE, layout=layout)
    assert np.array_equal(to_uint8(made), written)
    recipe = json.loads(Image.open(out).text["corolla"])
    assert recipe["details"]["layout"] == str(layout_folder) and recipe["details"]["layout_start"] == 0.6
    assert recipe["details"]["layout_sha256"] == file_sha256(layout_folder / "model.safetensors")


def test_corolla_sample_draws_classes_through_a_conditional_layout_model(folders, tmp_path):
    model_folder, _ = folders
    config = preset("tiny").replace(train={"precision": "fp32"}, data={"image_size": SMALL, "class_counts": (1, 3)},
                                    unet={"classes": ("a", "b")})
    torch.manual_seed(6)
    layout_folder = checkpoint.save_pretrained(tmp_path / "conditional",
                                               _perturbed(build(config, torch.device("cpu"))[0], 7), config)
    common = ["sample", str(model_folder), "--layout", str(layout_folder), "-n", "4", "--steps", "4", "--seed", "5",
              "--precision", "fp32", "--device", "cpu", "--no-progress"]
    assert cli.main([*common, "--random-class", "--guidance", "2", "--each", str(tmp_path / "mix")]) == 0
    assert cli.main([*common, "--class", "b", "--out", str(tmp_path / "b.png")]) == 0
    cpu = torch.device("cpu")
    model, _ = checkpoint.load_for_sampling(model_folder, cpu, "fp32")
    layout = cascade.load(str(layout_folder), model, SIZE, cpu, "fp32")
    mix = generation.training_mix(model, (), layout)
    drawn = generation.drawn_classes(layout.model, mix, 5, range(4)).tolist()
    made = generate(model, 4, SamplingSettings(steps=4, seed=5), image_size=SIZE, classes=mix, guidance=2.0,
                    layout=layout)
    written = np.stack([np.asarray(Image.open(tmp_path / "mix" / f"class{c}-{i:05d}.png"))
                        for i, c in enumerate(drawn)])
    assert np.array_equal(to_uint8(made), written)
    recipe = json.loads(Image.open(tmp_path / "b.png").text["corolla"])
    assert recipe["classes"] == ["b"] and recipe["details"]["layout"] == str(layout_folder)


@pytest.mark.parametrize("arguments,message", [
    (["--layout-start", "0.5"], "--layout-start needs a layout model: give --layout MODEL"),
    (["--no-layout", "--layout", "LAYOUT"], "--no-layout draws the model alone: leave out --layout"),
    (["--layout", "LAYOUT", "--layout-start", "1"], "layout start 1.0 is not allowed: it is the diffusion time in"),
    (["--layout", "LAYOUT", "--layout-start", "x"], "'x' is not a number"),
    (["--layout", "MODEL"], "the layout model draws 16x16 images: it must draw smaller ones than the model's 16x16"),
    (["--layout", "LAYOUT", "--random-class"], "this model is not class-conditional"),
])
def test_corolla_sample_refuses_a_layout_it_cannot_draw_in_one_line(folders, tmp_path, capsys, arguments, message):
    model_folder, layout_folder = folders
    names = {"MODEL": str(model_folder), "LAYOUT": str(layout_folder)}
    arguments = [names.get(a, a) for a in arguments]
    try:  # argparse's refusals exit, the command's return
        code = cli.main(["sample", str(model_folder), *arguments, "-n", "1", "--steps", "2", "--device", "cpu",
                         "--out", str(tmp_path / "no.png"), "--no-progress"])
    except SystemExit as stopped:
        code = stopped.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no.png").exists()


def test_a_checkpoint_names_the_layout_model_the_commands_draw_it_after(folders, tmp_path, capsys):
    """Config.sampling.layout: a sub-folder of the checkpoint (or a shipped model) drawn first unless
    --layout chooses another or --no-layout none; sampling.layout_start its hand-over time."""
    model_folder, layout_folder = folders
    bundled = tmp_path / "bundled"
    shutil.copytree(model_folder, bundled)
    shutil.copytree(layout_folder, bundled / "first")
    config = json.loads((bundled / "config.json").read_text())
    config["sampling"].update(layout="first", layout_start=0.6)
    (bundled / "config.json").write_text(json.dumps(config))
    common = ["-n", "2", "--steps", "5", "--seed", "2", "--precision", "fp32", "--device", "cpu", "--no-progress"]

    def sampled(name, *options):
        assert cli.main(["sample", str(bundled), *common, *options, "--out", str(tmp_path / name)]) == 0
        return np.asarray(Image.open(tmp_path / name)), json.loads(Image.open(tmp_path / name).text["corolla"])
    own, recipe = sampled("own.png")
    given, _ = sampled("given.png", "--layout", str(layout_folder), "--layout-start", "0.6")
    alone, alone_recipe = sampled("alone.png", "--no-layout")
    later, later_recipe = sampled("later.png", "--layout-start", "0.9")
    assert np.array_equal(own, given) and not np.array_equal(own, alone) and not np.array_equal(own, later)
    assert recipe["details"]["layout"] == str(bundled / "first") and recipe["details"]["layout_start"] == 0.6
    assert later_recipe["details"]["layout_start"] == 0.9 and "layout" not in alone_recipe.get("details", {})
    cpu = torch.device("cpu")
    loaded, _ = checkpoint.load_for_sampling(bundled, cpu, "fp32")
    made = generate(loaded, 2, SamplingSettings(steps=5, seed=2), image_size=SIZE,
                    layout=cascade.load(str(layout_folder), loaded, SIZE, cpu, "fp32", 0.6))
    assert np.array_equal(own[2:2 + SIZE, 2:2 + SIZE], to_uint8(made)[0])  # the grid's first image
    # a name that is neither a sub-folder nor a shipped model: one line, nothing written
    config["sampling"]["layout"] = "elsewhere"
    (bundled / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(["sample", str(bundled), *common, "--out", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err
    assert "names the layout model 'elsewhere', which is neither a sub-folder" in err and err.count("\n") == 1
    assert not (tmp_path / "no.png").exists()
    for bad in ("../first", "..", "a/b"):
        with pytest.raises(ValueError, match="sampling.layout"):
            preset("tiny").replace(sampling={"layout": bad})


def test_corolla_evaluate_layout_scores_the_cascade(folders, make_flowers, tmp_path):
    model_folder, layout_folder = folders
    common = ["evaluate", str(model_folder), "--data", str(make_flowers(12)), "--samples", "4", "--steps", "3",
              "--precision", "fp32", "--device", "cpu", "--pairs", str(tmp_path / "pairs.png")]
    assert cli.main([*common, "--layout", str(layout_folder), "--json", str(tmp_path / "cascade.json")]) == 0
    assert cli.main([*common, "--json", str(tmp_path / "alone.json")]) == 0
    scored = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("cascade", "alone")}
    assert scored["cascade"]["layout"] == str(layout_folder) and scored["cascade"]["layout_start"] == 0.8
    assert "layout" not in scored["alone"]
    assert scored["cascade"]["swd_16"] != scored["alone"]["swd_16"]  # other images were scored
