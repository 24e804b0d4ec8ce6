"""Editing real images (corolla.editing, `corolla edit/inpaint/invert`, `interpolate --images`).

Exact properties on a tiny network, and on Gaussian data whose denoiser is known in closed form
(as in test_samplers.py): x0 ~ N(mu, S) gives E[x0 | x_t] = mu + a S (a^2 S + n^2 I)^-1 (x_t - a mu).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from corolla import cli, editing, figures, samplers, schedules
from corolla.config import preset
from corolla.data import imagefolder
from corolla.diffusion import DiffusionModel
from corolla.generation import SamplingSettings, generate
from corolla.storage import checkpoint
from corolla.storage import recipe as recipes
from corolla.storage.grids import to_uint8

SIZE = 16  # the tiny preset's


# -- a tiny model and photos ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    """The tiny preset's network with its zero-initialised head perturbed, so its output matters."""
    config = preset("tiny")
    torch.manual_seed(0)
    m = DiffusionModel(config.unet, config.train.schedule)
    with torch.no_grad():
        m.ema_network.head.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(1))
    m.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.04))
    return m.eval()


@pytest.fixture(scope="module")
def checkpoint_dir(model, tmp_path_factory):
    return checkpoint.save_pretrained(tmp_path_factory.mktemp("edit") / "tiny", model, preset("tiny"))


def photo(path, width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0):
    """A smooth colourful image file of any size and mode."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    (np.random.default_rng(seed).random((height, width)) * 255)], -1).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(path)
    return path


def photos(count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 3, SIZE, SIZE, generator=g) * 255).round() / 255


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# -- SDEdit ---------------------------------------------------------------------------------------

def test_strength_0_returns_the_input_within_quantisation(model, checkpoint_dir, tmp_path, capsys):
    images = photos(3)
    assert np.array_equal(to_uint8(editing.edit(model, images, 0.0, SamplingSettings(steps=5))), to_uint8(images))
    source = photo(tmp_path / "a.png", 16, 16)
    code, _, err = run(["edit", checkpoint_dir, source, "--strength", "0", "--precision", "fp32",
                        "--out", tmp_path / "g.png", "--each", tmp_path / "each"], capsys)
    assert code == 0, err
    assert np.array_equal(png(tmp_path / "each" / "00000.png"), png(source))


@pytest.mark.parametrize("sampler,grid,eta", [("ddim", "uniform", 0.0), ("ddim", "uniform", 1.0),
                                              ("dpmpp_2m", "logsnr", 0.0), ("unipc", "karras", 0.0)])
def test_strength_1_is_plain_sampling_from_the_same_noise_bit_for_bit(model, sampler, grid, eta):
    settings = SamplingSettings(steps=4, seed=5, sampler=sampler, grid=grid, eta=eta)
    assert torch.equal(editing.edit(model, photos(4), 1.0, settings), generate(model, 4, settings, image_size=SIZE))


def test_an_edit_draws_at_the_hand_over_scale_below_strength_1_and_at_its_own_at_1(model, monkeypatch):
    """A photo noised to t and restarted is a cascade's hand-over: Config.sampling.handover_eps_scale
    (where the model has one) below strength 1, its own eps scale at 1; --eps-scale overrides both."""
    settings = SamplingSettings(steps=5, seed=2)
    images = photos(2)
    monkeypatch.setattr(model, "eps_scale", 1.01)
    monkeypatch.setattr(model, "handover_eps_scale", 1.05)
    assert editing.edit_eps_scale(model, 0.5, settings) == 1.05
    assert editing.edit_eps_scale(model, 1.0, settings) == 1.01
    assert editing.edit_eps_scale(model, 0.5, replace(settings, eps_scale=1.0)) == 1.0
    edited = {scale: editing.edit(model, images, 0.5, replace(settings, eps_scale=scale)) for scale in (1.0, 1.05)}
    assert torch.equal(editing.edit(model, images, 0.5, settings), edited[1.05])
    assert (edited[1.05] - edited[1.0]).abs().mean() > 1e-3
    assert torch.equal(editing.edit(model, images, 1.0, settings), generate(model, 2, settings, image_size=SIZE))


def test_the_edit_command_draws_at_the_checkpoint_s_hand_over_scale_and_says_so(model, tmp_path, capsys):
    config = preset("tiny").replace(sampling={"handover_eps_scale": 1.05})
    folder = checkpoint.save_pretrained(tmp_path / "scaled", model, config)
    source = photo(tmp_path / "a.png", 16, 16)
    code, _, err = run(["edit", folder, source, "--strength", "0.5", "--steps", "5", "--precision", "fp32",
                        "--out", tmp_path / "g.png", "--each", tmp_path / "each"], capsys)
    assert code == 0, err
    loaded, _ = checkpoint.load_for_sampling(folder, torch.device("cpu"), "fp32")
    image = torch.from_numpy(png(source).copy()).permute(2, 0, 1)[None].float() / 255
    expected = editing.edit(loaded, image, 0.5, SamplingSettings(steps=5))
    assert np.array_equal(png(tmp_path / "each" / "00000.png"), to_uint8(expected)[0])
    assert recipes.read(tmp_path / "g.png").eps_scale == 1.05


def test_operations_that_step_with_ddim_refuse_another_sampler_and_inversion_an_eta(model):
    images, fill = photos(1), torch.ones(1, 1, SIZE, SIZE, dtype=torch.bool)
    with pytest.raises(ValueError, match="inpainting steps with DDIM itself: sampler 'unipc' cannot be used"):
        editing.inpaint(model, images, fill, SamplingSettings(steps=2, sampler="unipc"))
    with pytest.raises(ValueError, match="inversion is deterministic DDIM: eta must be 0, got 1"):
        editing.invert(model, images, SamplingSettings(steps=2, eta=1.0))
    with pytest.raises(ValueError, match="interpolation steps with DDIM itself"):
        editing.interpolate(model, [images[0], images[0]], 3, SamplingSettings(steps=2, sampler="dpmpp_2m"))


def test_an_edit_runs_the_part_of_the_grid_below_its_strength():
    times = samplers.get_grid("uniform", 20, schedules.offset_cosine)
    part = samplers.times_from(times, 0.6)
    assert part.tolist() == pytest.approx([0.6] + [1 - k / 20 for k in range(9, 20)] + [0.0])
    assert torch.equal(samplers.times_from(times, 1.0), times)
    assert samplers.times_from(times, 0.62).tolist()[:2] == pytest.approx([0.62, 0.6])
    calls = []

    def counting(x, n, s):
        calls.append(1)
        return torch.zeros_like(x), x / s
    editing.sdedit(counting, schedules.offset_cosine, torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), times, 0.6)
    assert len(calls) == 12  # t = 0.6, 0.55, ..., 0.05
    assert editing.sdedit(counting, schedules.offset_cosine, torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2),
                          times, 0.0).eq(1).all() and len(calls) == 12  # strength 0: no evaluation


def _diagonal_gaussian(shape=(3, 4, 4), low=0.5):
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    s = low + (1 - low) * torch.rand(shape, generator=g, dtype=torch.float64)

    def denoise(x, noise_rates, signal_rates):
        pred = mu + s ** 2 * signal_rates * (x - signal_rates * mu) / (signal_rates ** 2 * s ** 2 + noise_rates ** 2)
        return (x - signal_rates * pred) / noise_rates, pred
    return mu, s, denoise


def test_sdedit_converges_to_the_ode_solution_from_the_noised_image_on_gaussian_data():
    # along the probability-flow ODE (x_t - a mu) / sqrt(a^2 s^2 + n^2) is constant: from x at t = 0.5
    # the exact result at the grid's end is known
    schedule = schedules.offset_cosine
    mu, s, denoise = _diagonal_gaussian()
    g = torch.Generator().manual_seed(1)
    x0 = mu + s * torch.randn(8, *mu.shape, generator=g, dtype=torch.float64)
    eps = torch.randn(8, *mu.shape, generator=g, dtype=torch.float64)

    def rates(t):
        n, a = schedule(torch.tensor(t, dtype=torch.float64))
        return n.item(), a.item()
    n, a = rates(0.5)
    invariant = (a * x0 + n * eps - a * mu) / torch.sqrt(a ** 2 * s ** 2 + n ** 2)
    errors = []
    for steps in (10, 40, 160):
        times = samplers.get_grid("logsnr", steps, schedule)
        n_end, a_end = rates(times[-2].item())
        x_end = a_end * mu + torch.sqrt(a_end ** 2 * s ** 2 + n_end ** 2) * invariant
        exact = mu + s ** 2 * a_end * (x_end - a_end * mu) / (a_end ** 2 * s ** 2 + n_end ** 2)
        result = editing.sdedit(denoise, schedule, x0, eps, times, 0.5, "dpmpp_2m")
        errors.append((result - exact).pow(2).mean().sqrt().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


# -- inpainting -----------------------------------------------------------------------------------

def test_repaint_walks_back_and_forth_and_resample_1_is_plain_replacement():
    assert editing.repaint_walk(5) == [0, 1, 2, 3, 4]
    assert editing.repaint_walk(6, resample=2, jump=2) == [0, 1, 2, 0, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5]
    assert editing.repaint_evaluations(6, 2, 2) == 12
    assert editing.repaint_evaluations(50, 5, 5) == 250 and editing.repaint_evaluations(50, 1, 1) == 50


def test_inpainting_never_changes_a_known_pixel(model):
    images = photos(3)
    fill = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) < 0.3
    filled = editing.inpaint(model, images, fill, replace(editing.INPAINTING, steps=6), resample=2, jump=2)
    known = (~fill).expand_as(images)
    assert torch.equal(filled[known], images[known])
    assert not torch.allclose(filled[~known], images[~known], atol=0.05)  # the hole was filled


def _correlated_gaussian():
    """4 pixels (1, 2, 2), strongly correlated; the first two are known."""
    corr = torch.tensor([[1.0, 0.9, 0.8, 0.7], [0.9, 1.0, 0.9, 0.8], [0.8, 0.9, 1.0, 0.9], [0.7, 0.8, 0.9, 1.0]],
                        dtype=torch.float64)
    cov, mu = 0.5 * corr, torch.tensor([0.2, -0.1, 0.3, 0.0], dtype=torch.float64)

    def denoise(x, noise_rates, signal_rates):
        a, n = signal_rates.flatten()[0].item(), noise_rates.flatten()[0].item()
        gain = a * cov @ torch.linalg.inv(a * a * cov + n * n * torch.eye(4, dtype=torch.float64))
        pred = (mu + (x.reshape(-1, 4) - a * mu) @ gain.T).reshape(x.shape)
        return (x - a * pred) / n, pred
    return mu, cov, denoise


def test_repaint_matches_the_conditional_mean_on_gaussian_data_and_plain_replacement_does_not():
    # The cosine schedule reaches noise 0, so the known pixels can enter the last prediction
    # noise-free (the offset cosine's noise floor of 0.31 biases every method; README).
    schedule = schedules.cosine
    mu, cov, denoise = _correlated_gaussian()
    known = torch.tensor([1.4, 1.3], dtype=torch.float64)
    conditional = mu[2:] + cov[2:, :2] @ torch.linalg.solve(cov[:2, :2], known - mu[:2])
    count = 400
    images = torch.zeros(count, 4, dtype=torch.float64)
    images[:, :2] = known
    images = images.view(count, 1, 2, 2)
    fill = torch.tensor([False, False, True, True]).view(1, 1, 2, 2).expand(count, 1, 2, 2)
    times = samplers.get_grid("uniform", 50, schedule)
    errors = {}
    for resample in (1, 50):
        g = torch.Generator().manual_seed(0)
        draw = lambda: torch.randn(count, 1, 2, 2, generator=g, dtype=torch.float64)
        filled = editing.repaint(denoise, schedule, images, fill, draw(), times, draw, resample, 1).view(count, 4)
        assert torch.equal(filled[:, :2], images.view(count, 4)[:, :2])
        standard_error = filled[:, 2:].std(0) / math.sqrt(count)
        errors[resample] = ((filled[:, 2:].mean(0) - conditional) / standard_error).abs()
    assert (errors[50] < 4).all(), errors  # within sampling error
    assert (errors[1] > 10).all(), errors  # replacement is biased towards the prior mean
    assert (errors[50] < errors[1]).all()


# -- inversion ------------------------------------------------------------------------------------

def test_inversion_then_sampling_reconstructs_the_input_at_first_order_on_gaussian_data():
    schedule = schedules.offset_cosine
    mu, s, denoise = _diagonal_gaussian()
    x0 = mu + s * torch.randn(8, *mu.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step_counts = [10, 20, 40, 80]
    errors, stalled = [], []
    for steps in step_counts:
        times = samplers.get_grid("uniform", steps, schedule)
        for refine, out in ((20, errors), (0, stalled)):
            noise = editing.ddim_invert(denoise, schedule, x0, times, refine)
            out.append((samplers.ddim(denoise, schedule, noise, times) - x0).pow(2).mean().sqrt().item())
    order = -np.polyfit(np.log(step_counts), np.log(errors), 1)[0]
    assert order == pytest.approx(1.0, abs=0.15), errors  # measured 0.91 (DDIM is first order both ways)
    assert errors[-1] < 0.015
    # without placing the last state, the error stalls at the fixed point's residual
    assert min(stalled) > 5 * errors[-1]


def test_inversion_and_decoding_are_batch_independent_and_deterministic(model):
    images = photos(5)
    settings = replace(editing.INVERSION, steps=4, batch_size=5)
    noise = editing.invert(model, images, settings, refine=2)
    torch.testing.assert_close(editing.invert(model, images, replace(settings, batch_size=2), refine=2), noise,
                               rtol=0, atol=1e-5)
    assert torch.equal(editing.invert(model, images, settings, refine=2), noise)
    torch.testing.assert_close(editing.decode(model, noise, settings),
                               editing.decode(model, noise, replace(settings, batch_size=1)), rtol=0, atol=1e-5)


# -- seeds and batches ----------------------------------------------------------------------------

def test_same_seed_same_edits_whatever_the_batch(model):
    images = photos(5)
    fill = torch.zeros(5, 1, SIZE, SIZE, dtype=torch.bool)
    fill[..., 4:12, 4:12] = True
    for make in (lambda **k: editing.edit(model, images, 0.7, SamplingSettings(steps=5, seed=3, eta=1.0, **k)),
                 lambda **k: editing.inpaint(model, images, fill, replace(editing.INPAINTING, steps=5, seed=3, **k),
                                             resample=2, jump=2)):
        whole, split = make(batch_size=5), make(batch_size=2)
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)  # convolution kernels differ per batch size
        assert torch.equal(make(batch_size=5), whole)
        # image 3 alone, drawn from its own stream, is image 3 of the batch
        torch.testing.assert_close(make(batch_size=1)[3], whole[3], rtol=0, atol=1e-5)
    other_seed = editing.edit(model, images, 0.7, SamplingSettings(steps=5, seed=4, eta=1.0))
    assert not torch.allclose(other_seed, editing.edit(model, images, 0.7, SamplingSettings(steps=5, seed=3, eta=1.0)),
                              atol=1e-3)


# -- photos, masks and the commands ---------------------------------------------------------------

def test_any_photo_is_centre_cropped_with_a_warning_and_resized(tmp_path):
    path = photo(tmp_path / "wide.png", 40, 30)
    with pytest.warns(UserWarning, match="40x30, not square: using its central 30x30"):
        image, size = editing.load_photo(path, SIZE)
    assert size == (40, 30) and image.shape == (3, SIZE, SIZE)
    expected = imagefolder.resize(np.asarray(Image.open(path).convert("RGB"))[:, 5:35], SIZE)
    assert torch.equal((image * 255).round().to(torch.uint8), expected)
    for mode in ("L", "P", "RGBA", "CMYK"):
        grey = photo(tmp_path / f"x_{mode}.{'jpg' if mode == 'CMYK' else 'png'}", 20, 20, mode)
        assert editing.load_photo(grey, SIZE)[0].shape == (3, SIZE, SIZE)


def test_a_thin_mask_is_never_lost_in_the_resize_and_a_box_is_in_photo_pixels(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 31] = 255  # one pixel wide at 4x the model's size
    Image.fromarray(mask).save(tmp_path / "m.png")
    fill = editing.load_mask(tmp_path / "m.png", (64, 64), SIZE)
    assert fill.shape == (1, SIZE, SIZE) and fill[0, :, 7].all() and fill.sum() == SIZE
    assert editing.box_mask((0, 0, 32, 32), (64, 64), SIZE)[0, :8, :8].all()
    assert editing.box_mask((0, 0, 32, 32), (64, 64), SIZE).sum() == 64


def test_the_inpaint_command_keeps_every_known_pixel_and_draws_its_panel(checkpoint_dir, tmp_path, capsys):
    source = photo(tmp_path / "p.png", 16, 16)
    code, out, err = run(["inpaint", checkpoint_dir, source, "--box", "4,4,8,8", "-n", "2", "--steps", "4",
                          "--resample", "2", "--jump", "2", "--precision", "fp32", "--out", tmp_path / "g.png",
                          "--each", tmp_path / "each", "--figure", tmp_path / "panel.png"], capsys)
    assert code == 0, err
    assert "RePaint, resample 2, jump 2, 8 evaluations each" in out
    original = png(source)
    keep = np.ones((16, 16), bool)
    keep[4:12, 4:12] = False
    for index in (0, 1):
        filled = png(tmp_path / "each" / f"{index:05d}.png")
        assert np.array_equal(filled[keep], original[keep]) and not np.array_equal(filled, original)
    assert png(tmp_path / "panel.png").shape[1] > 4 * 64  # input, to fill, 2 fills


def test_the_invert_command_writes_noise_that_decodes_to_its_reconstruction(model, checkpoint_dir, tmp_path,
                                                                             capsys):
    sources = [photo(tmp_path / f"p{i}.png", 16, 16, seed=i) for i in range(2)]
    code, out, err = run(["invert", checkpoint_dir, *sources, "--steps", "5", "--grid", "uniform",
                          "--precision", "fp32", "--out", tmp_path / "z.safetensors", "--each", tmp_path / "rec"],
                         capsys)
    assert code == 0, err
    assert out.count("round-trip RMSE") == 2
    with safe_open(str(tmp_path / "z.safetensors"), framework="pt") as f:
        noise, meta = f.get_tensor("noise"), f.metadata()
    assert noise.shape == (2, 3, SIZE, SIZE) and meta["steps"] == "5" and meta["grid"] == "uniform"
    decoded = editing.decode(model, noise, SamplingSettings(steps=5, grid="uniform"))
    assert np.array_equal(png(tmp_path / "rec" / "00001.png"), to_uint8(decoded)[1])


def test_interpolate_mixes_seeds_and_photos_in_command_line_order(model, checkpoint_dir, tmp_path, capsys):
    source = photo(tmp_path / "b.png", 16, 16)
    code, out, err = run(["interpolate", checkpoint_dir, "--seeds", "3", "--images", source, "--frames", "3",
                          "--steps", "4", "--grid", "uniform", "--precision", "fp32", "--out", tmp_path / "i.png",
                          "--each", tmp_path / "frames"], capsys)
    assert code == 0, err
    # w = 0 is seed 3's image 0, as `corolla sample` draws it; w = 1 the photo's reconstruction
    first = png(tmp_path / "frames" / "pair0_00000.png").astype(int)
    settings = SamplingSettings(steps=4, seed=3, grid="uniform")
    assert np.abs(first - to_uint8(generate(model, 1, settings, image_size=SIZE))[0]).max() <= 1
    noise = editing.invert(model, editing.load_photo(source, SIZE)[0][None], settings)
    last = png(tmp_path / "frames" / "pair0_00002.png").astype(int)
    assert np.abs(last - to_uint8(editing.decode(model, noise, settings))[0]).max() <= 1
    code, _, err = run(["interpolate", checkpoint_dir, "--images", source, "--out", tmp_path / "j.png"], capsys)
    assert code == 2 and "pairs of ends" in err
    # a photo comes back only at the scale it was inverted at
    code, _, err = run(["interpolate", checkpoint_dir, "--seeds", "3", "--images", source, "--eps-scale", "1.05",
                        "--out", tmp_path / "k.png"], capsys)
    assert code == 2 and "--eps-scale 1.05 is for seed ends" in err and not (tmp_path / "k.png").exists()


def test_interpolate_between_seeds_on_the_new_path_makes_the_old_path_s_frames(model, checkpoint_dir, tmp_path,
                                                                                capsys):
    # --each routes seed pairs through corolla.cli.edit; the frames must be figures.interpolate's
    code, _, err = run(["interpolate", checkpoint_dir, "--seeds", "3", "7", "--frames", "3", "--steps", "4",
                        "--precision", "fp32", "--out", tmp_path / "i.png", "--each", tmp_path / "frames"], capsys)
    assert code == 0, err
    frames = to_uint8(figures.interpolate(model, [(3, 7)], 3, SamplingSettings(steps=4), image_size=SIZE)[0])
    for index in range(3):
        assert np.array_equal(png(tmp_path / "frames" / f"pair0_{index:05d}.png"), frames[index])


def _bad_inputs(tmp_path):
    good = photo(tmp_path / "good.png", 20, 20)
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small_mask.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "black_mask.png")
    return [
        (["edit", tmp_path / "notes.jpg"], "is not an image corolla can read"),
        (["edit", tmp_path / "missing.png"], "does not exist"),
        (["edit", good, "--strength", "1.5"], "strength 1.5 is not allowed"),
        (["edit", good, "--strength", "-0.1"], "it is a diffusion time in [0, 1]"),
        (["edit", good, "--strength", "half"], "is not a number"),
        (["inpaint", good, "--mask", tmp_path / "small_mask.png"], "is 10x10 but the image is 20x20"),
        (["inpaint", good, "--mask", tmp_path / "black_mask.png"], "marks nothing to fill"),
        (["inpaint", good, "--mask", tmp_path / "notes.jpg"], "mask"),
        (["inpaint", good, "--box", "15,15,10,10"], "is not inside the 20x20 image"),
        (["inpaint", good, "--box", "1,2,3"], "give x,y,w,h"),
        (["edit", good, "--sampler", "unipc", "--eta", "0.5"], "--eta needs --sampler ddim"),
        (["edit", good, "--eta", "2"], "must be 0 (deterministic) up to 1"),
        (["inpaint", good, "--box", "1,1,4,4", "--resample", "0"], "must be 1 or more"),
        (["inpaint", good], "one of the arguments --mask --box is required"),
        (["invert", tmp_path / "notes.jpg"], "is not an image"),
        (["invert"], "name at least one image file"),
    ]


def test_bad_inputs_are_one_line_errors_with_exit_status_2(checkpoint_dir, tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path):
        out = tmp_path / "out.png"
        command, *rest = argv
        code, _, err = run([command, checkpoint_dir, *rest, "--out", out, "--precision", "fp32"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("corolla: error: ") and message in lines[0], \
            (argv, err)
        assert not out.exists()
