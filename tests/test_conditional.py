"""Class-conditional training with classifier-free guidance (issue 16), on tiny networks."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, load_script, make_labels_matter
from PIL import Image

from corolla import cascade, cli, conditioning, figures, samplers
from corolla.cli import classes as cli_classes
from corolla.config import Config, preset
from corolla.data import imagefolder, labels
from corolla.diffusion import DiffusionModel
from corolla.generation import ClassMix, SamplingSettings, drawn_classes, generate, initial_noise
from corolla.storage import checkpoint
from corolla.storage.grids import to_uint8
from corolla.storage.pretrained import export_release
from corolla.training import train
from corolla.unet import ResidualBlock, UNet, UNetConfig, count_parameters

TINY = preset("tiny").unet
SIZE = 16


def _model(classes=CLASSES) -> DiffusionModel:
    """A tiny conditional model whose head and class shifts are perturbed, so labels matter."""
    torch.manual_seed(0)
    m = DiffusionModel(UNetConfig(**{**TINY.__dict__, "classes": classes}))
    make_labels_matter(m.ema_network, torch.Generator().manual_seed(1))
    m.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.01))
    return m.eval()


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return _model()


@pytest.fixture(scope="module")
def run(class_folder, tmp_path_factory) -> Path:
    """A conditional tiny run of 6 epochs (30 steps) on the class folder, trained by the command."""
    out = tmp_path_factory.mktemp("run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COROLLA_CACHE_DIR", str(out.parent / "cache"))
        assert cli.main(["train", str(class_folder), "--preset", "tiny", "--conditional", "--epochs", "6",
                         "--repetitions", "2", "--lr", "2e-3", "--out", str(out), "--no-progress"]) == 0
    return out


# -- the network ----------------------------------------------------------------------------

def test_without_classes_the_network_is_the_reference_and_classes_add_the_embedding_and_shifts():
    seed64 = preset("seed64").unet
    assert count_parameters(UNet(seed64)) == 1_950_627
    assert not any("class" in key for key in UNet(seed64).state_dict())
    flowers = UNetConfig(**{**seed64.__dict__, "classes": tuple(f"species {i}" for i in range(102))})
    # a vector for each of 102 classes and the null label, and a shift map for each residual block
    blocks = 2 * (32 + 64 + 96) + 2 * 128 + 2 * (96 + 64 + 32)
    assert count_parameters(UNet(flowers)) == 1_950_627 + 103 * 32 + blocks * 32
    # a config written before classes existed is the unconditional network
    legacy = preset("seed64").to_dict()
    del legacy["unet"]["classes"], legacy["data"]["class_counts"], legacy["train"]["label_dropout"]
    assert Config.from_dict(legacy) == preset("seed64")


def test_a_scale_shift_network_adds_a_scale_map_per_block_and_scales_then_shifts():
    seed64 = preset("seed64").unet
    names = tuple(f"species {i}" for i in range(102))
    shift = count_parameters(UNet(UNetConfig(**{**seed64.__dict__, "classes": names})))
    film = UNet(UNetConfig(**{**seed64.__dict__, "classes": names, "class_modulation": "scale-shift"}))
    assert count_parameters(film) == shift + 2 * (32 + 64 + 96) * 32 + 2 * 128 * 32 + 2 * (96 + 64 + 32) * 32
    torch.manual_seed(0)
    block = ResidualBlock(4, 6, class_size=5, class_scale=True).eval()
    with torch.no_grad():
        block.class_shift.weight.normal_()
        block.class_scale.weight.normal_()
        block.conv2.weight.normal_()
    x, classes = torch.randn(2, 4, 8, 8), torch.randn(2, 5)
    with torch.no_grad():
        inner = block.conv1(block.norm(x))
        inner = inner * (1 + classes @ block.class_scale.weight.T)[:, :, None, None] \
            + (classes @ block.class_shift.weight.T)[:, :, None, None]
        expected = block.conv2(torch.nn.functional.silu(inner)) + block.residual(x)
        assert torch.allclose(block(x, classes), expected, atol=1e-5)
        block.class_scale.weight.zero_()  # no scale: exactly the shift-only block
        shift_only = ResidualBlock(4, 6, class_size=5).eval()
        shift_only.load_state_dict({k: v for k, v in block.state_dict().items() if "class_scale" not in k})
        assert torch.equal(block(x, classes), shift_only(x, classes))


def test_joined_with_the_noise_level_the_blocks_read_a_wider_vector_that_changes_with_the_noise():
    seed64 = preset("seed64").unet
    names = tuple(f"species {i}" for i in range(102))
    shift = count_parameters(UNet(UNetConfig(**{**seed64.__dict__, "classes": names})))
    joined = UNet(UNetConfig(**{**seed64.__dict__, "classes": names, "class_with_noise": True}))
    blocks = 2 * (32 + 64 + 96) + 2 * 128 + 2 * (96 + 64 + 32)
    # the join's Linear(64 -> 128), and maps from 128 numbers instead of 32
    assert count_parameters(joined) == shift + 64 * 128 + 128 + blocks * (128 - 32)
    join = conditioning.ClassNoiseJoin(4, 6)
    classes, noise = torch.randn(3, 4), torch.randn(3, 4)
    with torch.no_grad():
        expected = torch.nn.functional.silu(torch.cat([classes, noise], 1) @ join.linear.weight.T + join.linear.bias)
        assert torch.allclose(join(classes, noise), expected, atol=1e-6)
        # the same class at two noise levels gives the blocks two different vectors
        assert not torch.allclose(join(classes[:1], noise[:1]), join(classes[:1], noise[1:2]))


@pytest.mark.parametrize("design", [{"class_modulation": "shift"}, {"class_modulation": "scale-shift"},
                                    {"class_with_noise": True},
                                    {"class_modulation": "scale-shift", "class_with_noise": True}])
def test_a_new_conditional_network_is_its_unconditional_twin(design):
    """Zero class shifts and scales, the class embedding (and join) drawn last: same weights, same
    output, any label."""
    torch.manual_seed(5)
    plain = UNet(TINY)
    torch.manual_seed(5)
    conditional = UNet(UNetConfig(**{**TINY.__dict__, "classes": CLASSES, **design}))
    shared = plain.state_dict()
    assert all(torch.equal(value, conditional.state_dict()[key]) for key, value in shared.items())
    x, v = torch.randn(4, 3, SIZE, SIZE), torch.rand(4, 1, 1, 1)
    with torch.no_grad():  # an output that is not zero
        plain.head.weight.normal_()
        conditional.head.weight.copy_(plain.head.weight)
    plain.eval()
    conditional.eval()
    assert torch.equal(plain(x, v), conditional(x, v, torch.tensor([0, 1, 2, 3])))


def test_the_null_label_is_the_last_row_and_an_unconditional_network_takes_no_labels(model):
    network = model.ema_network
    x, v = torch.randn(3, 3, SIZE, SIZE), torch.rand(3, 1, 1, 1)
    assert network.class_embedding.weight.shape == (len(CLASSES) + 1, TINY.embedding_size)
    assert torch.equal(network(x, v), network(x, v, torch.full((3,), len(CLASSES))))
    assert not torch.equal(network(x, v), network(x, v, torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="not class-conditional"):
        UNet(TINY).eval()(x, v, torch.tensor([0, 1, 2]))


def test_label_dropout_drops_at_its_rate_to_the_null_label_from_the_given_generator():
    given = torch.arange(40_000) % 3
    dropped = conditioning.drop_labels(given, 0.1, 3, torch.Generator().manual_seed(0))
    share = (dropped == 3).float().mean().item()
    assert abs(share - 0.1) < 0.006  # 4 standard deviations of a binomial share of 40,000
    assert torch.equal(dropped[dropped != 3], given[dropped != 3])  # the others keep their class
    assert torch.equal(dropped, conditioning.drop_labels(given, 0.1, 3, torch.Generator().manual_seed(0)))
    assert torch.equal(conditioning.drop_labels(given, 0.0, 3, torch.Generator()), given)
    # one draw per image whatever the rate: what the generator draws next does not depend on it
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    conditioning.drop_labels(given, 0.0, 3, a), conditioning.drop_labels(given, 0.5, 3, b)
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))


# -- guidance and generation ----------------------------------------------------------------

def _by_hand(model, labels, count=4, steps=4, seed=3):
    """DDIM over the reference grid with the EMA network given `labels` (None: unconditional)."""
    noise = initial_noise(seed, range(count), (3, SIZE, SIZE))
    denoise = lambda x, n, s: model.denoise(x, n, s, ema=True, labels=labels)
    with torch.inference_mode():
        pred = samplers.ddim(denoise, model.schedule, noise, samplers.get_grid("uniform", steps, model.schedule))
    return model.normalizer.denormalize(pred)


def test_guidance_0_is_the_unconditional_output_and_1_the_conditional_output_exactly(model):
    asked = torch.tensor([0, 1, 2, 1])
    options = dict(num_images=4, settings=SamplingSettings(steps=4, seed=3), image_size=SIZE)
    unconditional = generate(model, **options)
    assert torch.equal(generate(model, **options, classes=asked.tolist(), guidance=0.0), unconditional)
    assert torch.equal(unconditional, _by_hand(model, None))
    conditional = generate(model, **options, classes=asked.tolist(), guidance=1.0)
    assert torch.equal(conditional, _by_hand(model, asked))
    assert (conditional - unconditional).abs().mean() > 0.01
    # beyond 1 the images move further from the unconditional ones, the same way
    guided = generate(model, **options, classes=asked.tolist(), guidance=3.0)
    assert (guided - unconditional).abs().mean() > (conditional - unconditional).abs().mean()


def test_guidance_mixes_both_halves_of_one_network_call(model):
    calls = []

    def denoise(x, n, s, labels):
        calls.append(labels.clone())
        return model.denoise(x, n, s, labels=labels)
    asked = torch.tensor([2, 0, 1])
    x, n, s = torch.randn(3, 3, SIZE, SIZE), torch.full((3, 1, 1, 1), 0.6), torch.full((3, 1, 1, 1), 0.8)
    pred_noises, pred_images = conditioning.guided_denoiser(denoise, asked, 2.5, len(CLASSES))(x, n, s)
    assert len(calls) == 1 and calls[0].tolist() == [2, 0, 1, 3, 3, 3]  # conditional and null halves, one batch
    cond, _ = model.denoise(x, n, s, labels=asked)
    uncond, _ = model.denoise(x, n, s)
    assert torch.allclose(pred_noises, uncond + 2.5 * (cond - uncond), atol=1e-5)
    assert torch.allclose(pred_images, (x - n * pred_noises) / s, atol=1e-5)


def test_guided_generation_is_deterministic_and_image_i_does_not_depend_on_the_batch(model):
    asked = [0, 1, 2, 0, 1, 2, 0, 1]
    options = dict(num_images=8, image_size=SIZE, classes=asked, guidance=2.0)
    batches_of = lambda size: SamplingSettings(steps=4, seed=3, batch_size=size)
    whole = generate(model, **options, settings=batches_of(8))
    assert torch.equal(whole, generate(model, **options, settings=batches_of(8)))
    assert (whole - generate(model, **options, settings=batches_of(3))).abs().max() <= 1 / 255
    options["settings"] = batches_of(8)
    # images 5..7 alone, and image i's class asked for every image: still the same images
    tail = generate(model, **{**options, "num_images": 3, "classes": asked[5:]}, start=5)
    assert (whole[5:] - tail).abs().max() <= 1 / 255
    sunflowers = generate(model, **{**options, "classes": "sunflower"})
    assert (whole[2::3] - sunflowers[2::3]).abs().max() <= 1 / 255
    assert (whole[0] - whole[3]).abs().mean() > 0.01  # one class, other noise: another image


def test_a_class_mix_draws_each_image_s_class_by_its_weights_from_the_image_s_own_stream(model):
    mix = ClassMix((1, 0, 3))
    drawn = drawn_classes(model, mix, 0, range(400))
    assert 1 not in drawn.tolist()  # weight 0: never drawn
    assert 0.68 < (drawn == 2).float().mean() < 0.82  # 3 of 4 (0.75 +- 3 standard deviations)
    assert torch.equal(drawn_classes(model, mix, 0, range(100, 110)), drawn[100:110])  # image i's, however many
    assert not torch.equal(drawn_classes(model, mix, 1, range(400)), drawn)  # another seed, other classes
    # generating with the mix is generating with the classes it draws, batch by batch or not
    settings = SamplingSettings(steps=3, seed=0, batch_size=4)
    mixed = generate(model, 6, settings, image_size=SIZE, start=2, classes=mix, guidance=2.0)
    assert torch.equal(mixed, generate(model, 6, settings, image_size=SIZE, start=2, classes=drawn[2:8].tolist(),
                                       guidance=2.0))
    assert ClassMix.of_training(CLASSES, ()) == ClassMix((1, 1, 1))  # a run that kept no counts: equal chances
    assert ClassMix.of_training(CLASSES, (4, 0, 2)) == ClassMix((4, 0, 2))
    with pytest.raises(ValueError, match="a mix of 2 class weights for a model of 3 classes"):
        drawn_classes(model, ClassMix((1, 1)), 0, range(2))
    with pytest.raises(ValueError, match="not class-conditional"):
        generate(DiffusionModel(TINY), 1, settings, image_size=SIZE, classes=mix)


def test_classes_are_asked_by_name_or_number_and_an_unknown_name_suggests_the_closest():
    assert labels.class_number(CLASSES, "sunflower") == 2
    assert labels.class_number(CLASSES, " Rose ") == 1
    assert labels.class_number(CLASSES, "0") == 0 and labels.class_number(CLASSES, 1) == 1
    assert labels.class_number(("7", "12"), "12") == 1  # a name first, then a number
    with pytest.raises(ValueError, match=r"unknown class 'sunflwer'; closest: 'sunflower'"):
        labels.class_number(CLASSES, "sunflwer")
    with pytest.raises(ValueError, match="no name is close"):
        labels.class_number(CLASSES, "xyzzy")
    with pytest.raises(ValueError, match="0 to 2"):
        labels.class_number(CLASSES, 3)
    with pytest.raises(ValueError, match="not class-conditional"):
        generate(_model(()), 1, SamplingSettings(steps=1), image_size=SIZE, classes="rose")


# -- labels ---------------------------------------------------------------------------------

def _class_of_each(found: labels.Labels) -> list[str]:
    return [found.classes[i] for i in found.numbers]


def test_folder_and_csv_labels_agree(class_folder, tmp_path):
    _, names = imagefolder.load_folder(class_folder, SIZE)
    by_folder = labels.from_folders(names, class_folder)
    assert by_folder.classes == CLASSES and by_folder.counts() == (8, 8, 8)
    classes = _class_of_each(by_folder)
    # file names and class names
    by_name = tmp_path / "names.csv"
    by_name.write_text("image,class_name\n" + "".join(f"{Path(n).name},{c}\n" for n, c in zip(names, classes)))
    assert _class_of_each(labels.from_csv(by_name, names)) == classes
    # the layout of flowers102_64/labels.csv: numbers (here in another order) and names, a split
    # column, a BOM, and rows of images that are not in the folder
    numbers = {"sunflower": 1, "daisy": 5, "rose": 9}
    rows = [f"{Path(n).name},{numbers[c]},{c},train\n" for n, c in zip(names, classes)]
    full = tmp_path / "labels.csv"
    full.write_text("\ufeffimage,label,class_name,split\n" + "".join(rows) + "image_99999.jpg,9,rose,test\n")
    by_number = labels.from_csv(full, names)
    assert by_number.classes == ("sunflower", "daisy", "rose")  # ordered by the CSV's numbers
    assert _class_of_each(by_number) == classes
    # relative paths, and numbers alone (then the numbers are the names)
    paths = tmp_path / "paths.csv"
    paths.write_text("image,label\n" + "".join(f"{Path(n).as_posix()},{numbers[c]}\n" for n, c in zip(names, classes)))
    assert _class_of_each(labels.from_csv(paths, names)) == [str(numbers[c]) for c in classes]


@pytest.mark.parametrize("content,message", [
    ("file,kind\nimage_00070.jpg,rose\n", "needs a header row with an 'image' column"),
    ("image,class_name\nimage_00070.jpg,rose\n", r"23 image\(s\) have no row"),
    ("image,label,class_name\nimage_00070.jpg,1,rose\nimage_00139.jpg,1,daisy\n", "class 1 is named 'daisy' here"),
    ("image,label\nimage_00070.jpg,one\n", "label 'one' is not a whole class number"),
    ("image,class_name\nimage_00070.jpg,rose\nimage_00070.jpg,daisy\n", "is given two classes"),
])
def test_a_bad_labels_file_is_one_clear_error(class_folder, tmp_path, content, message):
    _, names = imagefolder.load_folder(class_folder, SIZE)
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(imagefolder.DataError, match=message):
        labels.from_csv(path, names)


def test_images_outside_class_folders_and_unknown_classes_are_refused(class_folder, make_flowers):
    with pytest.raises(imagefolder.DataError, match=r"16 image\(s\) lie directly in .*outside any class sub-folder"):
        labels.from_folders(imagefolder.load_folder(make_flowers(16), SIZE)[1], make_flowers(16))
    _, names = imagefolder.load_folder(class_folder, SIZE)
    not_the_models = r"1 class\(es\) of these images are not the model's \('sunflower'\)"
    with pytest.raises(imagefolder.DataError, match=not_the_models):
        labels.from_folders(names, class_folder, ("daisy", "rose"))


# -- training, checkpoints and the commands -------------------------------------------------

def _losses(run_dir):
    return [r["train_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "train_loss" in r]


def test_a_short_conditional_run_lowers_the_loss_and_keeps_its_classes(run, tmp_path):
    losses = _losses(run)
    assert losses[0] > 0.6 and min(losses[-3:]) < losses[0] - 0.1
    model, config = checkpoint.load_model(run)
    assert config.unet.classes == CLASSES and model.ema_network.class_embedding is not None
    held_out = round(24 * preset("tiny").data.val_fraction)
    assert sum(config.data.class_counts) == 24 - held_out and len(config.data.class_counts) == 3
    assert config.train.label_dropout == 0.1
    assert all(block.class_shift.weight.abs().sum() > 0  # it learned: they start at zero
               for block in model.ema_network.modules() if isinstance(block, ResidualBlock))
    state = json.loads((checkpoint.resolve(run) / "state.json").read_text())
    assert "labels_key" in state["data_identity"]
    release = export_release(run, tmp_path / "release")
    assert checkpoint.load_model(release)[1].unet.classes == CLASSES  # the names survive an export


def test_corolla_classes_lists_numbers_names_and_counts(run, capsys):
    assert cli.main(["classes", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    config = checkpoint.load_config(checkpoint.resolve(run))
    assert out[0].split() == ["number", "name", "training", "images"]
    assert [line.split() for line in out[1:4]] == [[str(i), name, str(count)] for i, (name, count)
                                                   in enumerate(zip(CLASSES, config.data.class_counts))]
    assert out[4].startswith(f"3 classes, {sum(config.data.class_counts)} training images")


def test_sample_draws_one_row_per_class_and_names_files_by_class(run, tmp_path, capsys):
    grid, each = tmp_path / "grid.png", tmp_path / "each"
    assert cli.main(["sample", str(run), "-n", "3", "--steps", "2", "--class", "sunflower", "--class", "0",
                     "--guidance", "2", "--out", str(grid), "--each", str(each), "--no-progress",
                     "--precision", "fp32"]) == 0
    with Image.open(grid) as image:
        assert image.size == (2 + 3 * (SIZE + 2), 2 + 2 * (SIZE + 2))  # 3 columns, 2 rows
    assert sorted(p.name for p in each.iterdir()) == [f"class{c}-0000{j}.png" for c in (0, 2) for j in range(3)]
    model, _ = checkpoint.load_for_sampling(run, torch.device("cpu"), "fp32")  # as the command loads it
    # file j of a class is image j of the seed for that class
    expected = to_uint8(generate(model, 3, SamplingSettings(steps=2), image_size=SIZE, classes="sunflower",
                                 guidance=2.0))[1]
    with Image.open(each / "class2-00001.png") as image:
        assert np.array_equal(np.asarray(image), expected)


def test_class_grid_draws_one_named_row_per_class_from_the_same_seeds(run, tmp_path, capsys):
    out = tmp_path / "classes.png"
    assert cli.main(["class-grid", str(run), "--class", "sunflower", "--class", "0", "-n", "3", "--steps", "2",
                     "--guidance", "2", "--precision", "fp32", "--out", str(out)]) == 0
    title = "guidance 2, 2 DDIM steps, seed 0"
    geometry = figures.grid_geometry(2, 3, SIZE, row_labels=["sunflower", "daisy"], title=title)
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (geometry.height, geometry.width, 3)
    model, _ = checkpoint.load_for_sampling(run, torch.device("cpu"), "fp32")  # as the command loads it
    for row, name in enumerate(["sunflower", "daisy"]):  # the images of sample --class NAME, enlarged
        expected = to_uint8(generate(model, 3, SamplingSettings(steps=2), image_size=SIZE, classes=name,
                                     guidance=2.0))
        for col in range(3):
            x, y = geometry.cell_origin(row, col)
            cell = pixels[y:y + geometry.cell, x:x + geometry.cell]
            assert np.array_equal(cell, expected[col].repeat(geometry.scale, 0).repeat(geometry.scale, 1))
    assert cli_classes.spread(102) == [0, 12, 25, 38, 51, 63, 76, 89] and cli_classes.spread(3) == [0, 1, 2]


def _layout_folder(tmp_path: Path) -> Path:
    """A conditional layout model of half the size, knowing the same classes, saved as a checkpoint."""
    small = preset("tiny").replace(unet={"classes": CLASSES}, data={"image_size": SIZE // 2})
    return checkpoint.save_pretrained(tmp_path / "layout", _model(), small)


def test_class_grid_draws_a_cascade_as_corolla_sample_does(run, tmp_path):
    """--layout: each row is `corolla sample --class NAME --layout MODEL`'s images; the title names
    the layout model, its hand-over and the finish's scale."""
    layout = _layout_folder(tmp_path)
    out = tmp_path / "classes.png"
    assert cli.main(["class-grid", str(run), "--class", "rose", "-n", "2", "--steps", "2", "--precision", "fp32",
                     "--layout", str(layout), "--layout-start", "0.5", "--out", str(out)]) == 0
    title = "guidance 3, 2 DDIM steps, seed 0, layout " + str(layout) + " from t = 0.5, eps scale 1"
    geometry = figures.grid_geometry(1, 2, SIZE, row_labels=["rose"], title=title)
    model, _ = checkpoint.load_for_sampling(run, torch.device("cpu"), "fp32")
    first = cascade.load(str(layout), model, SIZE, torch.device("cpu"), "fp32", 0.5)
    expected = to_uint8(generate(model, 2, SamplingSettings(steps=2), image_size=SIZE, classes="rose",
                                 layout=first))
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (geometry.height, geometry.width, 3)
    for col in range(2):
        x, y = geometry.cell_origin(0, col)
        cell = pixels[y:y + geometry.cell, x:x + geometry.cell]
        assert np.array_equal(cell, expected[col].repeat(geometry.scale, 0).repeat(geometry.scale, 1))
    alone = to_uint8(generate(model, 2, SamplingSettings(steps=2), image_size=SIZE, classes="rose"))
    assert not np.array_equal(alone, expected)


def test_class_grid_refuses_unknown_classes_and_unconditional_models_before_writing(run, tmp_path, capsys,
                                                                                   make_flowers):
    out = tmp_path / "classes.png"
    assert cli.main(["class-grid", str(run), "--class", "tulip", "--out", str(out)]) == 2
    assert "unknown class 'tulip'" in capsys.readouterr().err
    plain = tmp_path / "plain"
    train(preset("tiny"), make_flowers(16), plain, progress=False, max_steps=1)
    assert cli.main(["class-grid", str(plain), "--out", str(out)]) == 2
    assert "not class-conditional" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("arguments,message", [
    (["--class", "sunflwer"], "unknown class 'sunflwer'; closest: 'sunflower'"),
    (["--class", "7"], "class number 7 is not one of this model's: 0 to 2"),
    (["--guidance", "2"], "--guidance needs --class"),
    (["--class", "rose", "--guidance", "-1"], "-1 is not allowed"),
])
def test_sample_refuses_bad_classes_in_one_line(run, tmp_path, capsys, arguments, message):
    assert cli.main(["sample", str(run), "-n", "1", "--steps", "1", "--out", str(tmp_path / "x.png"),
                     *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("arguments,message", [
    (["sample", "--class", "rose", "--random-class"], "--class and --random-class both choose the classes"),
    (["evaluate", "--guidance", "2"], "--guidance needs --random-class"),
])
def test_random_class_options_refuse_misuse_in_one_line(run, tmp_path, capsys, arguments, message):
    assert cli.main([arguments[0], str(run), *arguments[1:], "--out" if arguments[0] == "sample" else "--json",
                     str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_evaluate_scores_a_conditional_model_at_its_training_mix(run, class_folder, tmp_path):
    """--random-class scores the images of sample --random-class, not the unconditional ones."""
    def evaluated(*options):
        out = tmp_path / f"{len(options)}.json"
        assert cli.main(["evaluate", str(run), "--data", str(class_folder), "--samples", "8", "--steps", "2",
                         "--precision", "fp32", "--json", str(out), "--pairs", str(tmp_path / "pairs.png"),
                         *options]) == 0
        return json.loads(out.read_text())
    plain, mixed = evaluated(), evaluated("--random-class", "--guidance", "1")
    assert (plain["random_class"], mixed["random_class"], mixed["guidance"]) == (False, True, 1.0)
    assert mixed["swd"] > 0 and mixed["swd"] != plain["swd"]


def test_unconditional_models_and_runs_refuse_class_options(run, class_folder, tmp_path, capsys, make_flowers):
    plain = tmp_path / "plain"
    train(preset("tiny"), make_flowers(16), plain, progress=False, max_steps=1)
    assert cli.main(["classes", str(plain)]) == 2
    assert "not class-conditional" in capsys.readouterr().err
    for choice in (["--class", "rose"], ["--random-class"]):
        assert cli.main(["sample", str(plain), "-n", "1", "--steps", "1", *choice,
                         "--out", str(tmp_path / "x.png")]) == 2
        assert "not class-conditional" in capsys.readouterr().err
    assert cli.main(["train", str(class_folder), "--preset", "tiny", "--labels", "x.csv",
                     "--out", str(tmp_path / "r")]) == 2
    assert "add --conditional" in capsys.readouterr().err
    assert cli.main(["train", "--preset", "tiny", "--out", str(plain), "--resume", "--conditional"]) == 2
    assert "cannot become conditional" in capsys.readouterr().err
    assert cli.main(["train", str(class_folder), "--preset", "tiny", "--class-with-noise",
                     "--out", str(tmp_path / "r")]) == 2
    assert "add --conditional" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(run), "--resume", "--class-with-noise"]) == 2
    message = "--class-with-noise set the shape of a new network; a resumed run keeps its own: leave it out"
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_conditional_run_resumes_with_its_labels_and_held_out_class_folders(class_folder, tmp_path):
    """--val-data with class folders labels the held-out images too; a resumed run finds its
    labels file (recorded in state.json) and classes again."""
    _, names = imagefolder.load_folder(class_folder, SIZE)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,class_name\n" + "".join(f"{Path(n).name},{Path(n).parts[0]}\n" for n in names))
    config = preset("tiny").replace(train={"epochs": 2})
    out = tmp_path / "run"
    first = train(config, class_folder, out, progress=False, max_steps=2, val_dir=class_folder,
                  conditional=True, labels_file=csv)
    assert json.loads((first / "state.json").read_text())["labels_file"] == str(csv.resolve())
    last = train(checkpoint.load_config(first), class_folder, out, resume=True, progress=False, val_dir=class_folder)
    assert checkpoint.load_config(last).unet.classes == CLASSES
    assert json.loads((last / "state.json").read_text())["step"] > 2
    csv.write_text(csv.read_text().replace(",daisy", ",rose"))  # the labels changed under the run
    with pytest.raises(imagefolder.DataError, match="not labelled as when the run started"):
        train(checkpoint.load_config(last).replace(train={"epochs": 3}), class_folder, out, resume=True,
              progress=False)


def test_a_stopped_and_resumed_conditional_run_equals_an_uninterrupted_one(class_folder, tmp_path):
    """Label dropout draws from each step's seeded stream: nothing to save, resume is exact."""
    config = preset("tiny").replace(train={"epochs": 2}, data={"val_fraction": 0.0})
    once = train(config, class_folder, tmp_path / "once", progress=False, conditional=True)
    train(config, class_folder, tmp_path / "twice", progress=False, max_steps=4, conditional=True)
    twice = train(config, class_folder, tmp_path / "twice", resume=True, progress=False, conditional=True)
    a, b = (checkpoint.load_model(folder)[0].state_dict() for folder in (once, twice))
    assert json.loads((twice / "state.json").read_text())["step"] == 6
    assert all(torch.equal(a[key], b[key]) for key in a)


# -- the proof tooling ----------------------------------------------------------------------

def test_the_class_accuracy_benchmark_runs_end_to_end(run, tmp_path):
    """Its classifier learns a trivially separable toy set (one colour per class), and scoring a
    conditional checkpoint gives accuracy and SWD for each guidance."""
    bench = load_script("benchmarks", "class_accuracy.py")
    generator = torch.Generator().manual_seed(0)
    colours = {"daisy": (230, 230, 230), "rose": (200, 30, 40), "sunflower": (240, 200, 20)}
    for split, count in (("train", 12), ("heldout", 4)):
        for name, colour in colours.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = torch.tensor(colour).view(1, 1, 3) + 25 * torch.randn(SIZE, SIZE, 3, generator=generator)
                Image.fromarray(pixels.clamp(0, 255).byte().numpy()).save(tmp_path / split / name / f"{i}.png")
    config = bench.train_classifier(str(tmp_path / "train"), str(tmp_path / "heldout"), str(tmp_path / "clf"),
                                    size=SIZE, epochs=3, batch_size=8, lr=1e-2, log=lambda *_: None)
    assert config["classes"] == list(CLASSES) and config["heldout_accuracy"] == 1.0
    rows_kept = []  # what on_row saw: a long run keeps each guidance as it is measured
    results = bench.score(str(run), str(tmp_path / "clf"), str(tmp_path / "heldout"), per_class=2,
                          guidances=(0.0, 2.0), steps=2, device="cpu",
                          on_row=lambda so_far: rows_kept.append([row["guidance"] for row in so_far["by_guidance"]]))
    assert rows_kept == [[0.0], [0.0, 2.0]]
    assert [row["guidance"] for row in results["by_guidance"]] == [0.0, 2.0]
    for row in results["by_guidance"]:
        assert 0 <= row["accuracy"] <= row["top5"] == 1.0 and row["swd"] > 0
        # the sharpness ceiling: the held-out photos blurred to the generated images' fine detail
        assert 0 < row["fine_detail"] and 0 <= row["sharpness_ceiling"] <= 1.0
        assert (row["ceiling_blur_sigma"] > 0) == (row["fine_detail"] < results["heldout_fine_detail"])
        assert set(row["accuracy_by_class"]) == set(CLASSES)
    assert results["classifier_heldout_accuracy"] == 1.0 and "| 2 |" in bench.table(results)
    # a cascade: a conditional layout model of half the size draws each asked class first
    layout = _layout_folder(tmp_path)
    cascaded = bench.score(str(run), str(tmp_path / "clf"), str(tmp_path / "heldout"), per_class=2,
                           guidances=(2.0,), steps=2, device="cpu", layout=str(layout), layout_start=0.5)
    assert (cascaded["layout"], cascaded["layout_start"]) == (str(layout), 0.5) and results["layout"] is None
    assert cascaded["by_guidance"][0]["swd"] != results["by_guidance"][1]["swd"]  # other images
    assert f"after the layout model {layout} from t = 0.5" in bench.table(cascaded)
    # blurred photos: less fine detail at every sigma; unblurred, the held-out accuracy
    rows = bench.blurred_ceilings(str(tmp_path / "clf"), str(tmp_path / "heldout"), (0.0, 1.0, 2.0), device="cpu")
    assert rows[0]["accuracy"] == 1.0 and rows[0]["fine_detail"] > rows[1]["fine_detail"] > rows[2]["fine_detail"]
