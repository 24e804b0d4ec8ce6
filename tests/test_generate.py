"""Seeded generation: image i of a seed is the same image whatever the batch it is drawn in."""
import pytest
import torch

from corolla import samplers
from corolla.diffusion import DiffusionModel
from corolla.generation import generate, initial_noise
from corolla.unet import UNetConfig

SIZE = 16


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    """A tiny model whose zero-initialised head is perturbed, so the network's output matters."""
    torch.manual_seed(0)
    m = DiffusionModel(UNetConfig(widths=(8, 16), bottom_width=16, block_depth=1, embedding_size=8))
    with torch.no_grad():
        m.ema_network.head.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(1))
    # images around 0.5 with a small spread, so that denormalising rarely clips
    m.normalizer.set_statistics(torch.full((3,), 0.5), torch.full((3,), 0.01))
    return m.eval()


def _generate(model, **kwargs):
    options = dict(num_images=8, steps=4, seed=3, image_size=SIZE)
    return generate(model, **{**options, **kwargs})


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
    # the default grid is the reference's uniform one
    assert torch.equal(_generate(model), _generate(model, grid="uniform"))
    assert (_generate(model, grid="logsnr") - _generate(model)).abs().mean().item() > 1e-3


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
