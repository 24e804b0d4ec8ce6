"""Figures: data behind each plot against the library, PNG sizes and pixels, interpolation ends."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from corolla import cli, editing, figures, samplers, schedules
from corolla.cli.options import eps_scale_note
from corolla.config import preset
from corolla.data import imagefolder
from corolla.generation import SamplingSettings, generate, initial_noise
from corolla.storage import checkpoint
from corolla.storage.grids import to_uint8
from corolla.training import train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A tiny model trained for 20 steps on the bundled flowers (16x16)."""
    out = tmp_path_factory.mktemp("figures_run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(preset("tiny"), out=out, device="cpu", progress=False, max_steps=20, log=lambda *_: None)
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="session")
def model(run_dir):
    return checkpoint.load_model(run_dir)[0]


def png(path) -> Image.Image:
    with Image.open(path) as image:
        image.load()  # raises if the file does not decode
        assert image.format == "PNG"
        return image.convert("RGB")


def cell_pixels(image: Image.Image, geo: figures.GridGeometry, row: int, col: int) -> np.ndarray:
    x, y = geo.cell_origin(row, col)
    return np.asarray(image)[y:y + geo.cell, x:x + geo.cell]


def enlarged(images: torch.Tensor, scale: int) -> np.ndarray:
    """(C, H, W) in [0, 1] -> the uint8 pixels a grid cell shows."""
    return to_uint8(images[None])[0].repeat(scale, 0).repeat(scale, 1)


# -- labelled grids -------------------------------------------------------------------------------

def test_labelled_grid_places_every_image_at_its_cell(tmp_path):
    images = torch.rand((2, 3, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    cols, rows = ["a", "long column label\nline two", "c"], ["row one", "row two"]
    path = figures.save_labelled_grid(images, tmp_path / "g.png", cols, rows, title="title",
                                      cell_labels=[["x"] * 3] * 2)
    geo = figures.grid_geometry(2, 3, 16, cols, rows, "title")
    image = png(path)
    assert image.size == (geo.width, geo.height)
    assert geo.scale == 4 and geo.pitch > geo.cell + figures.PAD_PX  # widened for the long label
    for r in range(2):
        for c in range(3):
            # the corner label covers the top-left; the bottom half is the image, pixel for pixel
            shown = cell_pixels(image, geo, r, c)[geo.cell // 2:]
            assert np.array_equal(shown, enlarged(images[r, c], 4)[geo.cell // 2:])


# -- schedules and noising ------------------------------------------------------------------------

def test_schedule_curves_are_the_library_schedules_on_the_article_grid():
    curves = figures.schedule_curves()
    t = torch.arange(1000, dtype=torch.float64) / 1000
    assert list(curves) == ["linear", "cosine", "offset_cosine"]
    for name, reference in (("linear", schedules.linear), ("cosine", schedules.cosine),
                            ("offset_cosine", schedules.offset_cosine)):
        times, noise, signal = curves[name]
        assert torch.equal(times, t)
        expected_noise, expected_signal = reference(t)
        assert torch.equal(noise, expected_noise) and torch.equal(signal, expected_signal)
        assert torch.allclose(noise ** 2 + signal ** 2, torch.ones_like(t), atol=1e-12)
    # the article's numbers: first linear beta 1e-4; offset cosine signal from 0.95; cosine starts clean
    assert curves["linear"][2][0].item() == pytest.approx(math.sqrt(1 - 1e-4), abs=1e-12)
    assert curves["offset_cosine"][2][0].item() == pytest.approx(0.95, abs=1e-12)
    assert curves["cosine"][2][0].item() == 1.0
    assert curves["linear"][2][-1].item() < 0.01  # abar_T of DDPM's linear schedule: about 4e-5


def test_schedules_command_writes_the_plot(tmp_path):
    out = tmp_path / "schedules.png"
    assert cli.main(["schedules", "--out", str(out)]) == 0
    assert png(out).size == (1100, 420)


def test_noised_images_follow_each_schedule():
    image = imagefolder.load_image(imagefolder.scan(imagefolder.bundled_dir())[0], 16)
    grid = figures.noised_images(image, [0.0, 0.5, 1.0], seed=1)
    assert grid.shape == (3, 3, 3, 16, 16)
    # cosine at t = 0 is the image itself; at t = 1 nothing of it is left (the same noise whatever
    # the image), while the offset cosine keeps signal 0.02 of it
    assert torch.allclose(grid[1, 0], image.float() / 255, atol=1e-6)
    other = imagefolder.load_image(imagefolder.scan(imagefolder.bundled_dir())[1], 16)
    other_grid = figures.noised_images(other, [1.0], seed=1)
    x = image.double()[None] / 255
    y = other.double()[None] / 255

    def standardised_noise(grid_value, pixels):  # undo the display's per-channel de-standardising
        mean = pixels.mean(dim=(2, 3), keepdim=True)
        std = pixels.std(dim=(2, 3), keepdim=True, unbiased=False)
        return ((grid_value.double() - mean) / std)[0]

    unclipped = (grid[1, 2] > 0) & (grid[1, 2] < 1) & (other_grid[1, 0] > 0) & (other_grid[1, 0] < 1)
    a = standardised_noise(grid[1, 2][None], x)[unclipped]
    b = standardised_noise(other_grid[1, 0][None], y)[unclipped]
    assert torch.allclose(a, b, atol=1e-5)


def test_noising_command_bundled_and_given_image(tmp_path):
    times = [0.0, 0.25, 0.5, 0.75, 1.0]
    out = tmp_path / "noising.png"
    assert cli.main(["noising", "--times", "0,0.25,0.5,0.75,1", "--size", "16", "--out", str(out)]) == 0
    name = imagefolder.scan(imagefolder.bundled_dir())[0].name
    geo = figures.grid_geometry(3, 5, 16, [f"t = {t:.2f}" for t in times], figures.SCHEDULE_NAMES,
                                f"forward diffusion of {name} (seed 0)")
    image = png(out)
    assert image.size == (geo.width, geo.height)
    # cosine at t = 0 shows the image unchanged
    flower = imagefolder.load_image(imagefolder.scan(imagefolder.bundled_dir())[0], 16).float() / 255
    assert np.array_equal(cell_pixels(image, geo, 1, 0)[32:], enlarged(flower, 4)[32:])

    own = tmp_path / "own.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(own)
    assert cli.main(["noising", str(own), "--size", "32", "--out", str(tmp_path / "own_noised.png")]) == 0
    assert png(tmp_path / "own_noised.png").size[1] == figures.grid_geometry(3, 11, 32, ["t"], [], "t").height


def test_noising_command_rejects_bad_input(tmp_path, capsys):
    assert cli.main(["noising", str(tmp_path / "missing.png"), "--out", str(tmp_path / "n.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert cli.main(["noising", "--times", "0,1.5"]) == 2
    assert "--times" in capsys.readouterr().err


# -- sweep ----------------------------------------------------------------------------------------

def test_step_sweep_decodes_the_same_noises_as_generate(model, tmp_path):
    results = figures.step_sweep(model, [1, 3], num_images=2, seed=5, image_size=16)
    assert [r.steps for r in results] == [1, 3]
    for r in results:
        assert torch.equal(r.images, generate(model, 2, SamplingSettings(steps=r.steps, seed=5), image_size=16))
        assert r.seconds > 0 and r.seconds_per_image == pytest.approx(r.seconds / 2)
    assert not torch.equal(results[0].images, results[1].images)
    table = figures.sweep_table(results).splitlines()
    assert len(table) == 3 and table[1].split()[0] == "1" and table[2].split()[0] == "3"

    path = figures.plot_sweep(results, tmp_path / "sweep.png", title="sweep")
    labels = figures.sweep_labels(results)
    assert labels[0].startswith("1 step\n") and labels[1].startswith("3 steps\n") and labels[1].endswith("/image")
    geo = figures.grid_geometry(2, 2, 16, labels, (), "sweep")
    image = png(path)
    assert image.size == (geo.width, geo.height)
    assert np.array_equal(cell_pixels(image, geo, 1, 1), enlarged(results[1].images[1], geo.scale))


def test_the_figures_draw_at_the_eps_scale_asked_for_else_the_model_s(model, monkeypatch):
    """sweep, trajectory and interpolate decode as corolla sample does: --eps-scale, else the model's own."""
    def sampled(eps_scale, count=2):  # images 0..count-1 of seed 5, as corolla sample draws them
        return generate(model, count, SamplingSettings(steps=3, seed=5, eps_scale=eps_scale), image_size=16)
    plain, scaled = sampled(1.0), sampled(1.05)
    assert not torch.equal(plain, scaled)
    assert torch.equal(figures.step_sweep(model, [3], 2, 5, 16, eps_scale=1.05)[0].images, scaled)
    noise = initial_noise(5, [0], (3, 16, 16))[0]
    final = lambda trajectory: model.normalizer.denormalize(trajectory.final[None])
    assert torch.equal(final(figures.ddim_trajectory(model, noise, 3, eps_scale=1.05)), sampled(1.05, 1))
    frames = figures.interpolate(model, [(5, 7)], 3, SamplingSettings(steps=3, eps_scale=1.05, batch_size=1),
                                 image_size=16)
    assert torch.equal(frames[0, :1], sampled(1.05, 1))
    monkeypatch.setattr(model, "eps_scale", 1.05)  # a model whose config.json says 1.05
    assert torch.equal(figures.step_sweep(model, [3], 2, 5, 16)[0].images, scaled)
    assert torch.equal(final(figures.ddim_trajectory(model, noise, 3)), sampled(1.05, 1))
    assert torch.equal(final(figures.ddim_trajectory(model, noise, 3, eps_scale=1.0)), sampled(1.0, 1))
    assert eps_scale_note(model, None) == ", eps scale 1.05" and eps_scale_note(model, 1.0) == ""
    monkeypatch.setattr(model, "eps_scale", 1.0)
    assert eps_scale_note(model, None) == "" and eps_scale_note(model, 1.02) == ", eps scale 1.02"


def test_the_figure_commands_pass_eps_scale_on(run_dir, tmp_path, capsys, monkeypatch):
    """--eps-scale reaches the library call of sweep, trajectory and interpolate; left out, None (the model's)."""
    seen = []

    def recording(function, scale_of):
        def wrapper(*args, **kwargs):
            seen.append(scale_of(*args, **kwargs))
            return function(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(figures, "step_sweep", recording(figures.step_sweep, lambda *a, **k: a[5]))
    monkeypatch.setattr(figures, "ddim_trajectory", recording(figures.ddim_trajectory, lambda *a, **k: a[3]))
    # both of interpolate's paths (seed pairs, and --each) decode through editing.interpolate
    monkeypatch.setattr(editing, "interpolate", recording(editing.interpolate, lambda *a, **k: a[3].eps_scale))
    commands = (["sweep", "--steps", "2", "-n", "1"], ["trajectory", "--steps", "2"],
                ["interpolate", "--steps", "2", "--frames", "2"],
                ["interpolate", "--steps", "2", "--frames", "2", "--each", str(tmp_path / "each")])
    for i, (command, *extra) in enumerate(commands):
        for scale in ([], ["--eps-scale", "1.1"]):
            out = str(tmp_path / f"{i}-{len(scale)}.png")
            assert cli.main([command, str(run_dir), *extra, *scale, "--out", out]) == 0, command
    assert seen == [None, 1.1] * 4
    capsys.readouterr()
    assert cli.main(["trajectory", str(run_dir), "--eps-scale", "2", "--out", str(tmp_path / "t.png")]) == 2
    assert "must be 0.8 to 1.2" in capsys.readouterr().err


def test_sweep_command(run_dir, tmp_path, capsys):
    out = tmp_path / "sweep.png"
    assert cli.main(["sweep", str(run_dir), "--steps", "1,2,4", "-n", "3", "--seed", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["steps", "seconds", "s/image", "ms/step/image"]
    assert [line.split()[0] for line in printed[1:4]] == ["1", "2", "4"]
    width, height = png(out).size
    shortest = figures.grid_geometry(3, 3, 16, ["1 step\n1.0 ms/image"], (), "t")
    assert height == shortest.height and width >= shortest.width
    capsys.readouterr()
    assert cli.main(["sweep", str(run_dir), "--steps", "0,2"]) == 2
    assert "'0,2' is not allowed" in capsys.readouterr().err


# -- interpolation --------------------------------------------------------------------------------

def test_slerp_keeps_unit_variance():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    a, b = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    weights = [i / 10 for i in range(11)]
    mean_squares = samplers.slerp(a, b, weights).pow(2).mean(dim=1)
    tolerance = 5 * math.sqrt(2 / n)  # x^2 of a unit Gaussian has variance 2
    assert torch.all((mean_squares - 1).abs() < tolerance)
    # a straight line between the noises would not: at w = 0.5 its variance is 0.5
    assert ((a + b) / 2).pow(2).mean().item() == pytest.approx(0.5, abs=tolerance)
    frames = figures.interpolation_noises(3, 7, 11, (3, 64, 64))
    assert torch.all((frames.pow(2).mean(dim=(1, 2, 3)) - 1).abs() < 5 * math.sqrt(2 / frames[0].numel()))


def test_interpolation_ends_are_the_seeds_noises():
    shape = (3, 16, 16)
    frames = figures.interpolation_noises(3, 7, 6, shape)
    assert frames.dtype == torch.float32 and frames.shape == (6, *shape)
    assert torch.equal(frames[0], initial_noise(3, [0], shape)[0])
    assert torch.equal(frames[-1], initial_noise(7, [0], shape)[0])
    assert not torch.equal(frames[2], frames[0]) and not torch.equal(frames[2], frames[-1])
    with pytest.raises(ValueError, match="at least 2"):
        editing.interpolation_weights(1)


def test_interpolation_end_frames_equal_plain_samples(model, run_dir, tmp_path):
    first, second = (generate(model, 1, SamplingSettings(steps=5, seed=seed), image_size=16) for seed in (3, 7))
    one_by_one = figures.interpolate(model, [(3, 7)], 4, SamplingSettings(steps=5, batch_size=1), image_size=16)
    assert torch.equal(one_by_one[0, 0], first[0]) and torch.equal(one_by_one[0, -1], second[0])
    batched = figures.interpolate(model, [(3, 7), (11, 12)], 4, SamplingSettings(steps=5), image_size=16)
    assert batched.shape == (2, 4, 3, 16, 16)
    assert np.array_equal(to_uint8(batched[0, [0, -1]]), to_uint8(torch.cat([first, second])))
    seed_11 = generate(model, 1, SamplingSettings(steps=5, seed=11), image_size=16)
    assert torch.allclose(batched[1, 0], seed_11[0], atol=1e-5)

    # end to end: the figure's first cell is `corolla sample --seed 3`'s image 0, pixel for pixel
    assert cli.main(["sample", str(run_dir), "--seed", "3", "-n", "1", "--steps", "5", "--precision", "fp32",
                     "--out", str(tmp_path / "s.png"), "--each", str(tmp_path / "each")]) == 0
    sampled = np.asarray(Image.open(tmp_path / "each" / "00000.png").convert("RGB"))
    path = figures.plot_interpolation(one_by_one, [(3, 7)], tmp_path / "interp.png", title="i")
    geo = figures.grid_geometry(1, 4, 16, [f"w = {w:.2f}" for w in editing.interpolation_weights(4)],
                                ["seed 3 -> 7"], "i")
    image = png(path)
    assert image.size == (geo.width, geo.height)
    assert np.array_equal(cell_pixels(image, geo, 0, 0), sampled.repeat(geo.scale, 0).repeat(geo.scale, 1))


def test_interpolate_command_rows_and_gif(run_dir, tmp_path):
    out, gif = tmp_path / "interp.png", tmp_path / "interp.gif"
    assert cli.main(["interpolate", str(run_dir), "--seeds", "3", "7", "11", "12", "--frames", "10",
                     "--steps", "3", "--out", str(out), "--gif", str(gif)]) == 0
    geo = figures.grid_geometry(2, 10, 16, [f"w = {w:.2f}" for w in editing.interpolation_weights(10)],
                                ["seed 11 -> 12"], "t")
    assert png(out).size == (geo.width, geo.height)
    with Image.open(gif) as animation:
        assert animation.format == "GIF" and animation.n_frames == 18  # forward 10, back 8
        assert animation.size == (2 * 16 * 4, 16 * 4)


def test_interpolate_command_needs_pairs(run_dir, tmp_path, capsys):
    assert cli.main(["interpolate", str(run_dir), "--seeds", "3", "7", "11", "--out", str(tmp_path / "i.png")]) == 2
    assert "pairs" in capsys.readouterr().err
    assert cli.main(["interpolate", str(run_dir), "--frames", "1", "--out", str(tmp_path / "i.png")]) == 2


# -- trajectory -----------------------------------------------------------------------------------

def test_trajectory_final_image_is_ddims(model):
    noise = initial_noise(0, [0], (3, 16, 16))[0]
    trajectory = figures.ddim_trajectory(model, noise, 7)
    reference = samplers.ddim(model.ema_denoiser(), model.schedule, noise[None], samplers.uniform_times(7))
    assert torch.equal(trajectory.final, reference[0])
    assert trajectory.times == pytest.approx([1 - s / 7 for s in range(7)])
    assert trajectory.pred_images.shape == (7, 3, 16, 16) and trajectory.noisy_images.shape == (8, 3, 16, 16)
    assert torch.equal(trajectory.noisy_images[0], noise)
    # and through denormalising, the figure's last image is what generate gives
    final = model.normalizer.denormalize(trajectory.final[None])
    assert torch.equal(final, generate(model, 1, SamplingSettings(steps=7), image_size=16))


def test_trajectory_command(run_dir, tmp_path):
    out = tmp_path / "traj.png"
    assert cli.main(["trajectory", str(run_dir), "--seed", "0", "--steps", "20", "--out", str(out)]) == 0
    geo = figures.grid_geometry(4, 10, 16, (), ["predicted\nimage", "noisy\nimage"], "t")
    assert png(out).size == (geo.width, geo.height)


# -- training curves ------------------------------------------------------------------------------

def _write_log(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_plot_training_with_and_without_validation(tmp_path):
    with_val = tmp_path / "with_val"
    with_val.mkdir()
    records = [{"step": s, "epoch": 1, "train_loss": 1.0 / s} for s in (10, 20, 30)]
    records += [{"step": 30, "epoch": 1, "val_loss": 0.2, "images_per_s": 12.5},
                {"step": 40, "epoch": 2, "train_loss": 0.1}, {"step": 60, "epoch": 2, "val_loss": None,
                                                               "images_per_s": 11.0}]
    _write_log(with_val / "metrics.jsonl", records, tail='{"step": 70, "epo')  # a line being written
    series = figures.loss_series(figures.read_metrics(with_val / "metrics.jsonl"))
    assert series["train"] == ([10, 20, 30, 40], [0.1, 0.05, 1.0 / 30, 0.1])
    assert series["val"] == ([30], [0.2])
    assert figures.plot_training(with_val) == with_val / "loss.png"
    assert png(with_val / "loss.png").size == (700, 400)

    train_only = tmp_path / "train_only"
    train_only.mkdir()
    _write_log(train_only / "metrics.jsonl", [{"step": 10, "epoch": 1, "train_loss": 0.5}])
    assert figures.plot_training(train_only) == train_only / "loss.png"
    assert png(train_only / "loss.png").size == (700, 400)


def test_plot_training_never_raises_on_short_logs(tmp_path):
    assert figures.plot_training(tmp_path / "no_such_run") is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert figures.plot_training(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text('not json\n{"step": 5, "epoch": 1, "val_loss": null}\n[1, 2]\n')
    assert figures.plot_training(tmp_path) is None and not (tmp_path / "loss.png").exists()


def test_plot_training_on_a_real_run(run_dir):
    assert figures.plot_training(run_dir) == run_dir / "loss.png"
    assert png(run_dir / "loss.png").size == (700, 400)


# -- learning progress ----------------------------------------------------------------------------

def test_split_grid_returns_the_tiles_grid_array_drew():
    from corolla.storage.grids import grid_array, split_grid
    images = torch.rand(10, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    tiles = split_grid(grid_array(images), 10, 12)
    assert np.array_equal(tiles, to_uint8(images))
    with pytest.raises(ValueError, match="is not 9 images of 12 px"):
        split_grid(grid_array(images), 9, 12)


def test_progress_command_stacks_the_same_tiles_of_every_epoch(run_dir, tmp_path, capsys):
    import shutil

    from corolla.storage.grids import save_grid
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    config = checkpoint.load_config(checkpoint.resolve(run))
    side, count = config.data.image_size, config.train.grid_images
    grids = {epoch: torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(epoch))
             for epoch in (1, 2, 5)}
    for epoch, images in grids.items():
        save_grid(images, run / "samples" / f"epoch_{epoch:03d}.png")

    images, epochs = figures.learning_progress(run, side, count, [5, 1], images=3)
    assert epochs == [5, 1] and images.shape == (2, 3, 3, side, side)
    assert torch.equal(images[0], torch.from_numpy(to_uint8(grids[5][:3])).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(images[1], torch.from_numpy(to_uint8(grids[1][:3])).permute(0, 3, 1, 2).float() / 255)

    out = tmp_path / "progress.png"
    assert cli.main(["progress", str(run), "--images", "2", "--out", str(out)]) == 0
    geo = figures.grid_geometry(3, 2, side, row_labels=["epoch 1", "epoch 2", "epoch 5"], title="t")
    assert png(out).size[1] == geo.height
    assert cli.main(["progress", str(run), "--epochs", "1,3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no per-epoch grid for epoch(s) [3]" in err and "it has epochs 1-5" in err
