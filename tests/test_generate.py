"""Seeded generation: image i of a seed is the same image whatever the batch it is drawn in."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import corolla
from corolla import cli, samplers
from corolla.config import preset
from corolla.diffusion import DiffusionModel
from corolla.generation import SamplingSettings, generate, initial_noise
from corolla.storage import checkpoint
from corolla.storage.grids import to_uint8
from corolla.training import build
from corolla.unet import UNetConfig

SIZE = 16


def _perturbed(m: DiffusionModel) -> DiffusionModel:
    """The model with its zero-initialised head perturbed, so the network's output matters."""
    with torch.no_grad():
        m.ema_network.head.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(1))
    # images around 0.5 with a small spread, so that denormalising rarely clips
    m.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.01))
    return m.eval()


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    torch.manual_seed(0)
    return _perturbed(DiffusionModel(UNetConfig(widths=(8, 16), bottom_width=16, block_depth=1, embedding_size=8)))


def _generate(model, num_images=8, start=0, callback=None, guard=None, **settings):
    """generate() of images 0..7 of seed 3 in 4 steps, unless told otherwise."""
    settings = SamplingSettings(**{"steps": 4, "seed": 3, **settings})
    return generate(model, num_images, settings, image_size=SIZE, start=start, callback=callback, guard=guard)


CASES = [("ddim", 0.0, "uniform"), ("ddim", 1.0, "uniform"), ("dpmpp_2m", 0.0, "logsnr"),
         ("dpmpp_3m", 0.0, "karras"), ("unipc", 0.0, "logsnr")]


@pytest.mark.parametrize("sampler,eta,grid", CASES)
def test_image_i_is_the_same_whatever_the_batch_split(model, sampler, eta, grid):
    whole = _generate(model, sampler=sampler, eta=eta, grid=grid, batch_size=8)
    split = _generate(model, sampler=sampler, eta=eta, grid=grid, batch_size=3)
    assert (whole - split).abs().max().item() <= 1 / 255
    # images 5..7 alone are images 5..7 of the whole
    tail = _generate(model, sampler=sampler, eta=eta, grid=grid, num_images=3, start=5)
    assert (whole[5:] - tail).abs().max().item() <= 1 / 255
    # and the images are not trivial: they differ from each other
    assert (whole[0] - whole[1]).abs().mean().item() > 0.01


@pytest.mark.parametrize("sampler,eta,grid", CASES)
def test_generation_is_deterministic_and_the_seed_matters(model, sampler, eta, grid):
    first = _generate(model, sampler=sampler, eta=eta, grid=grid)
    assert torch.equal(first, _generate(model, sampler=sampler, eta=eta, grid=grid))
    other_seed = _generate(model, sampler=sampler, eta=eta, grid=grid, seed=4)
    assert (first - other_seed).abs().mean().item() > 0.01


def test_eta_changes_ddim_images(model):
    assert (_generate(model) - _generate(model, eta=1.0)).abs().mean().item() > 0.005


def test_epsilon_scaling_is_threaded_to_the_sampler(model, monkeypatch):
    """SamplingSettings.eps_scale divides every predicted noise (samplers.scaled_noise); 1 is the
    plain sampler; None (the default) is the model's own, its Config.sampling's."""
    plain = _generate(model)
    assert model.eps_scale == 1.0 and torch.equal(plain, _generate(model, eps_scale=1.0))
    scaled = _generate(model, eps_scale=1.05)
    noise = initial_noise(3, range(8), (3, SIZE, SIZE))
    by_hand = samplers.ddim(samplers.scaled_noise(model.ema_denoiser(), 1.05), model.schedule, noise,
                            samplers.uniform_grid(4, model.schedule))
    assert torch.allclose(scaled, model.normalizer.denormalize(by_hand), atol=1e-6)
    assert (scaled - plain).abs().mean().item() > 0.005
    monkeypatch.setattr(model, "eps_scale", 1.05)
    assert torch.equal(_generate(model), scaled) and torch.equal(_generate(model, eps_scale=1.0), plain)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_3m", "unipc"])
def test_the_multistep_samplers_take_the_model_s_own_multistep_scale(model, monkeypatch, sampler):
    """Config.sampling.multistep_eps_scale is the multistep samplers' default (samplers.own_eps_scale);
    DDIM keeps eps_scale, and a model without one samples every sampler at eps_scale."""
    at = lambda scale, kind=sampler: _generate(model, sampler=kind, eps_scale=scale)
    monkeypatch.setattr(model, "eps_scale", 1.01)
    assert model.multistep_eps_scale is None and torch.equal(_generate(model, sampler=sampler), at(1.01))
    monkeypatch.setattr(model, "multistep_eps_scale", 1.05)
    assert torch.equal(_generate(model, sampler=sampler), at(1.05)) and torch.equal(_generate(model), at(1.01, "ddim"))
    assert (at(1.05) - at(1.01)).abs().mean().item() > 0.003  # the scale changes the images
    assert torch.equal(_generate(model, sampler=sampler, eps_scale=1.0), at(1.0))  # a chosen scale wins


def test_grid_is_threaded_to_the_sampler(model):
    # generate == the sampler called by hand on the named grid, the EMA network and seeded noise
    noise = initial_noise(3, range(8), (3, SIZE, SIZE))
    for grid in ("uniform", "logsnr"):
        times = samplers.get_grid(grid, 4, model.schedule)
        with torch.inference_mode():
            expected = model.normalizer.denormalize(
                samplers.dpmpp_2m(model.ema_denoiser(), model.schedule, noise, times))
        got = _generate(model, sampler="dpmpp_2m", grid=grid)
        assert (got - expected).abs().max().item() <= 1e-6
    # the default grid is the reference's uniform one for DDIM, log-SNR for the multistep samplers
    assert torch.equal(_generate(model), _generate(model, grid="uniform"))
    assert (_generate(model, grid="logsnr") - _generate(model)).abs().mean().item() > 1e-3
    assert torch.equal(_generate(model, sampler="dpmpp_2m"), _generate(model, sampler="dpmpp_2m", grid="logsnr"))


def test_the_library_draws_what_corolla_sample_writes(tmp_path):
    """corolla.generate with a SamplingSettings is `corolla sample` with the same options, on the
    same time grid: log-SNR for dpmpp_2m (generate once drew on the uniform grid for every sampler)."""
    config = preset("tiny").replace(train={"precision": "fp32"})
    folder = checkpoint.save_pretrained(tmp_path / "model", _perturbed(build(config, torch.device("cpu"))[0]), config)
    assert cli.main(["sample", str(folder), "-n", "3", "--steps", "3", "--sampler", "dpmpp_2m", "--seed", "5",
                     "--precision", "fp32", "--device", "cpu", "--each", str(tmp_path / "each"), "--no-progress"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / "each" / f"{i:05d}.png")) for i in range(3)])
    loaded, _ = checkpoint.load_for_sampling(folder, torch.device("cpu"), "fp32")
    settings = corolla.SamplingSettings(steps=3, sampler="dpmpp_2m", seed=5)
    assert np.array_equal(to_uint8(corolla.generate(loaded, 3, settings, image_size=SIZE)), written)
    uniform = to_uint8(corolla.generate(loaded, 3, replace(settings, grid="uniform"), image_size=SIZE))
    assert np.abs(uniform.astype(int) - written).max() > 2  # the grid shows in the images


def test_bad_choices_are_clear_errors(model):
    with pytest.raises(ValueError, match="unknown grid"):
        _generate(model, grid="cosine")
    with pytest.raises(ValueError, match="deterministic"):
        _generate(model, sampler="dpmpp_2m", eta=0.5)


class _Counting:
    """A reusable context manager that counts how often it is held (sample_from_noise's guard)."""

    def __init__(self):
        self.entered = 0
        self.held = False

    def __enter__(self):
        assert not self.held  # never entered twice at once
        self.entered, self.held = self.entered + 1, True

    def __exit__(self, *exc):
        self.held = False


@pytest.mark.parametrize("sampler,eta,grid", CASES)
def test_the_callback_sees_each_evaluation_inside_the_guard_and_changes_nothing(model, sampler, eta, grid):
    seen, guard = [], _Counting()
    watched = _generate(model, sampler=sampler, eta=eta, grid=grid, batch_size=5,
                        callback=lambda done, preview: seen.append((done, preview)), guard=guard)
    assert torch.equal(watched, _generate(model, sampler=sampler, eta=eta, grid=grid, batch_size=5))
    assert [done for done, _ in seen] == [1, 2, 3, 4] * 2 and guard.entered == 8  # 4 steps, batches of 5 and 3
    assert [preview.shape[0] for _, preview in seen] == [5] * 4 + [3] * 4
    assert all(0 <= preview.min() and preview.max() <= 1 for _, preview in seen)
    # the result is the last evaluation's prediction (the reference's rule), as its preview showed it
    assert torch.equal(torch.cat([seen[3][1], seen[7][1]]), watched)


def test_an_exception_from_the_callback_stops_the_sampling_at_that_evaluation(model):
    calls = []

    def stop_at_two(done, preview):
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _generate(model, steps=10, callback=stop_at_two)
    assert calls == [1, 2]
