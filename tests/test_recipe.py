"""Recipe options beyond the reference, each off by default: the learning rate's warm-up and
cool-down, horizontal flips, min-SNR-gamma loss weights, the squared error, the multiscale loss,
a part of the noise levels."""
import math
from pathlib import Path

import pytest
import torch
from conftest import load_script

from corolla import cli, losses, schedules
from corolla.cli import train as cli_train
from corolla.config import preset
from corolla.diffusion import DiffusionModel
from corolla.generation import seeded_generator
from corolla.rates import learning_rate
from corolla.storage import checkpoint
from corolla.training import random_flips, train, train_step, validation_loss

ROOT = Path(__file__).resolve().parents[1]


def test_learning_rate_ramps_up_holds_and_cools_down_to_the_runs_last_step():
    config = preset("seed64").replace(train={"lr_warmup": 4, "lr_cooldown": 4})
    rates = [learning_rate(config, step, last_step=10) for step in range(10)]
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    plain = preset("seed64").replace(train={"lr_warmup": 0})
    assert {learning_rate(plain, step, last_step=10) for step in range(10)} == {1e-3}  # the reference's constant


def test_the_cool_down_ends_at_max_steps_when_given(make_flowers, tmp_path):
    tiny = preset("tiny").replace(train={"epochs": 50, "lr_cooldown": 4})
    folder = train(tiny, make_flowers(16), tmp_path / "run", progress=False, max_steps=3)
    model, _ = checkpoint.load_model(folder)
    optimizer = torch.optim.AdamW(model.network.parameters())
    checkpoint.load_training(folder, model, optimizer)
    # step 2 (0-based) of a run that ends after 3: one step left of a 4-step cool-down
    assert optimizer.param_groups[0]["lr"] == pytest.approx(tiny.train.lr * 1 / 4)


def test_flips_mirror_about_half_the_images_the_same_way_for_the_same_generator():
    images = torch.arange(1000 * 3 * 2 * 4, dtype=torch.float32).view(1000, 3, 2, 4)
    flipped = random_flips(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert torch.equal(mirrored | (flipped == images).flatten(1).all(1), torch.ones(1000, dtype=torch.bool))
    assert 450 < mirrored.sum().item() < 550
    assert torch.equal(random_flips(images, torch.Generator().manual_seed(0)), flipped)


def test_a_step_with_flips_draws_the_same_noise_and_times_as_one_without():
    torch.manual_seed(0)
    config = preset("tiny")
    images = torch.rand(4, 3, 16, 16)
    losses = {}
    for hflip in (False, True):
        torch.manual_seed(0)
        model = DiffusionModel(config.unet)
        optimizer = torch.optim.AdamW(model.network.parameters())
        losses[hflip] = train_step(model, optimizer, [images], [seeded_generator(0, 0, 0)],
                                   0.9, hflip=hflip).item()
    # a fresh network outputs zeros (zero-initialised last layer): the L1 loss is the mean |noise|,
    # which the flips leave alone only when the noise is the same draw
    assert losses[True] == losses[False]


def test_min_snr_weights_are_min_snr_gamma_over_snr():
    schedule = schedules.get("offset_cosine")
    times = torch.linspace(0, 1, 11).view(-1, 1, 1, 1)
    noise_rates, signal_rates = schedule(times)
    snr = (signal_rates / noise_rates) ** 2
    expected = torch.minimum(snr, torch.tensor(5.0)) / snr
    assert torch.allclose(losses.min_snr_weights(noise_rates, signal_rates, 5.0), expected, rtol=1e-6)
    assert losses.min_snr_weights(torch.ones(1), torch.zeros(1), 5.0).item() == 1.0  # pure noise: SNR 0


def _predicted(model: DiffusionModel, images: torch.Tensor, noises: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """The noise the online network (the one noise_loss trains) predicts for images noised at times."""
    noise_rates, signal_rates = model.schedule(times)
    with torch.no_grad():
        normalized = model.normalizer.normalize(images)
        return model.denoise(signal_rates * normalized + noise_rates * noises, noise_rates, signal_rates, ema=False)[0]


def test_min_snr_gamma_weights_each_images_error_and_zero_is_the_reference_loss():
    torch.manual_seed(1)
    model = DiffusionModel(preset("tiny").unet)
    images, noises = torch.rand(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    times = torch.tensor([0.05, 0.5, 0.95]).view(-1, 1, 1, 1)
    plain = model.noise_loss(images, noises, times)
    assert torch.equal(model.noise_loss(images, noises, times, objective=losses.Objective(min_snr_gamma=0.0)), plain)
    noise_rates, signal_rates = model.schedule(times)
    weights = losses.min_snr_weights(noise_rates, signal_rates, 1.0).flatten()
    assert weights[0] < 1 and weights[-1] == 1  # only the nearly clean image is weighted down
    errors = (_predicted(model, images, noises, times) - noises).abs().mean(dim=(1, 2, 3))
    assert math.isclose(model.noise_loss(images, noises, times, objective=losses.Objective(min_snr_gamma=1.0)).item(),
                        (weights * errors).mean().item(), rel_tol=1e-5)


def _model_and_draws(seed: int) -> tuple[DiffusionModel, torch.Tensor, torch.Tensor]:
    """A tiny network whose zero-initialised head is drawn at random (a prediction other than zeros),
    three images and their noises."""
    torch.manual_seed(seed)
    model = DiffusionModel(preset("tiny").unet)
    torch.nn.init.normal_(model.network.head.weight, std=0.1)
    return model, torch.rand(3, 3, 16, 16), torch.randn(3, 3, 16, 16)


def test_the_squared_error_is_the_mean_square_and_l1_stays_the_references_mean_absolute_error():
    model, images, noises = _model_and_draws(2)
    times = torch.tensor([0.1, 0.5, 0.9]).view(-1, 1, 1, 1)
    differences = _predicted(model, images, noises, times) - noises
    assert model.noise_loss(images, noises, times).item() == pytest.approx(differences.abs().mean().item(), rel=1e-6)
    squared = model.noise_loss(images, noises, times, objective=losses.Objective("mse")).item()
    assert squared == pytest.approx(differences.square().mean().item(), rel=1e-6)
    assert squared != pytest.approx(differences.abs().mean().item(), rel=1e-2)
    noise_rates, signal_rates = model.schedule(times)
    weights = losses.min_snr_weights(noise_rates, signal_rates, 1.0).flatten()
    assert model.noise_loss(images, noises, times, objective=losses.Objective("mse", 1.0)).item() == pytest.approx(
        (weights * differences.square().mean(dim=(1, 2, 3))).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss 'huber'; choose one of l1, mse"):
        model.noise_loss(images, noises, times, objective=losses.Objective("huber"))


def test_the_l1_loss_is_least_at_the_median_and_the_squared_error_at_the_mean():
    """What each loss makes a network predict, on a constant fitted to skewed draws (1 with
    probability 0.8, else -4: median 1, mean 0): the reason a sampler's ODE wants "mse"."""
    draws = torch.where(torch.rand(10_000, generator=torch.Generator().manual_seed(0)) < 0.8, 1.0, -4.0)
    fitted = {}
    for loss in ("l1", "mse"):
        constant = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.Adam([constant], lr=0.05)
        for _ in range(400):
            optimizer.zero_grad()
            losses.errors(constant.expand_as(draws), draws, loss).mean().backward()
            optimizer.step()
        fitted[loss] = constant.item()
    assert fitted["l1"] == pytest.approx(1.0, abs=0.05)
    assert fitted["mse"] == pytest.approx(draws.mean().item(), abs=0.05)


def test_coarse_errors_pool_the_noise_and_weigh_each_level_as_the_full_resolution():
    # a known difference: 4x4 blocks of one value each, so 2x2 and 4x4 means keep it exactly
    blocks = torch.tensor([[1.0, -2.0], [3.0, 0.5]]).repeat_interleave(4, 0).repeat_interleave(4, 1)
    pred, noises = blocks.expand(2, 3, 8, 8).clone(), torch.zeros(2, 3, 8, 8)
    pred[1] *= 2
    mean_abs = blocks.abs().mean().item()  # 1.625
    # level 1/2 scaled by 2, level 1/4 by 4: each the per-pixel mean absolute difference times k
    assert losses.coarse_errors(pred, noises, "l1", 3).tolist() == pytest.approx(
        [(2 + 4) * mean_abs, (2 + 4) * 2 * mean_abs])
    assert losses.coarse_errors(pred, noises, "mse", 2).tolist() == pytest.approx(
        [4 * blocks.square().mean().item(), 16 * blocks.square().mean().item()])
    assert losses.coarse_errors(pred, noises, "l1", 1).tolist() == [0.0, 0.0]
    # white noise loses its fine detail in the mean, not its size: every level costs about what 1 does
    white = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    level_one = losses.errors(white, torch.zeros(()), "l1").mean().item()
    assert losses.coarse_errors(white, torch.zeros_like(white), "l1", 4).mean().item() == pytest.approx(
        3 * level_one, rel=0.02)


def test_loss_scales_add_the_coarse_errors_and_one_is_the_reference_loss():
    model, images, noises = _model_and_draws(3)
    times = torch.tensor([0.1, 0.5, 0.9]).view(-1, 1, 1, 1)
    plain = model.noise_loss(images, noises, times)
    assert torch.equal(model.noise_loss(images, noises, times, objective=losses.Objective(scales=1)), plain)
    predicted = _predicted(model, images, noises, times)
    per_image = (predicted - noises).abs().mean(dim=(1, 2, 3)) + losses.coarse_errors(predicted, noises, "l1", 3)
    assert model.noise_loss(images, noises, times, objective=losses.Objective(scales=3)).item() == pytest.approx(
        per_image.mean().item(), rel=1e-5)
    noise_rates, signal_rates = model.schedule(times)
    weights = losses.min_snr_weights(noise_rates, signal_rates, 1.0).flatten()
    weighted = model.noise_loss(images, noises, times, objective=losses.Objective(min_snr_gamma=1.0, scales=3))
    assert weighted.item() == pytest.approx((weights * per_image).mean().item(), rel=1e-5)


def test_the_image_space_error_is_the_error_of_the_image_the_predicted_noise_implies_and_max_the_larger():
    model, images, noises = _model_and_draws(6)
    times = torch.tensor([0.1, 0.5, 0.95]).view(-1, 1, 1, 1)
    normalized = model.normalizer.normalize(images)
    noise_rates, signal_rates = model.schedule(times)
    _, pred_images = model.denoise(signal_rates * normalized + noise_rates * noises, noise_rates, signal_rates,
                                   ema=False)
    for loss, error in (("l1", torch.abs), ("mse", torch.square)):
        image_space = model.noise_loss(images, noises, times, objective=losses.Objective(loss, space="image"))
        assert image_space.item() == pytest.approx(error(pred_images - normalized).mean().item(), rel=1e-4)
    ratios = (noise_rates / signal_rates).flatten()
    assert ratios[0] < 1 < 10 < ratios[-1]  # nearly clean levels weigh less, the noisiest far more
    noise_errors = (pred_images - normalized).abs().mean(dim=(1, 2, 3)) / ratios
    larger = model.noise_loss(images, noises, times, objective=losses.Objective(space="max"))
    assert larger.item() == pytest.approx((noise_errors * ratios.clamp(min=1)).mean().item(), rel=1e-4)
    assert model.noise_loss(images, noises, times) == model.noise_loss(
        images, noises, times, objective=losses.Objective(space="noise"))
    with pytest.raises(ValueError, match="unknown loss space 'velocity'; choose one of noise, image, max"):
        model.noise_loss(images, noises, times, objective=losses.Objective(space="velocity"))


def test_a_time_range_draws_the_times_uniformly_from_it_and_the_whole_range_is_torch_rand():
    whole = losses.Objective().draw_times(1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(whole, torch.rand((1000, 1, 1, 1), generator=torch.Generator().manual_seed(0)))
    noisy = losses.Objective(times=(0.8, 1.0)).draw_times(1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.allclose(noisy, 0.8 + 0.2 * whole)
    assert 0.8 <= noisy.min() and noisy.max() < 1.0 and abs(noisy.mean().item() - 0.9) < 0.01


def _times_of_a_step(objective: losses.Objective, images: torch.Tensor) -> torch.Tensor:
    """The times a train step drew, read back from the diffusion times the network was called with."""
    torch.manual_seed(4)
    model = DiffusionModel(preset("tiny").unet)
    seen = []
    model.network.register_forward_pre_hook(lambda module, args: seen.append(args[1].detach().clone()))
    train_step(model, torch.optim.AdamW(model.network.parameters()), [images], [seeded_generator(0, 0, 0)], 0.9,
               objective=objective)
    noise_rates, _ = model.schedule(torch.linspace(0, 1, 100_001))
    # the network takes noise variances: invert the schedule on a fine grid
    return torch.linspace(0, 1, 100_001)[(noise_rates ** 2 - seen[0].flatten()[:, None]).abs().argmin(dim=1)]


def test_a_train_step_on_a_time_range_draws_the_same_numbers_mapped_into_it():
    images = torch.rand(64, 3, 16, 16)
    whole = _times_of_a_step(losses.Objective(), images)
    part = _times_of_a_step(losses.Objective(times=(0.8, 1.0)), images)
    assert torch.allclose(part, 0.8 + 0.2 * whole, atol=1e-4)
    assert part.min() >= 0.8 - 1e-4 and whole.min() < 0.5


def test_the_validation_loss_of_a_time_range_is_over_those_noise_levels_only():
    torch.manual_seed(5)
    model = DiffusionModel(preset("tiny").unet)
    torch.nn.init.normal_(model.ema_network.head.weight, std=0.1)
    images = (torch.rand(32, 3, 16, 16) * 255).to(torch.uint8)
    cpu = torch.device("cpu")
    assert validation_loss(model, images, 8, 0, cpu, times=(0.0, 1.0)) == validation_loss(model, images, 8, 0, cpu)
    # at nearly pure noise the noise is the input: a prediction off by a random head errs differently
    low, high = (validation_loss(model, images, 8, 0, cpu, times=span) for span in ((0.0, 0.2), (0.8, 1.0)))
    generator = torch.Generator().manual_seed(0)
    manual = 0.0
    for first in range(0, 32, 8):
        batch = images[first:first + 8].float() / 255
        noises = torch.randn(batch.shape, generator=generator)
        times = 0.8 + 0.2 * torch.rand((8, 1, 1, 1), generator=generator)
        manual += model.noise_loss(batch, noises, times, ema=True).item() * 8
    assert high == pytest.approx(manual / 32, rel=1e-6) and low != pytest.approx(high, rel=1e-3)


def test_the_command_takes_the_recipe_options_and_refuses_bad_values(capsys):
    args = cli.parser().parse_args(["train", "--lr-cooldown", "100", "--hflip", "--min-snr-gamma", "5",
                                    "--loss", "mse", "--loss-scales", "3", "--time-range", "0.8", "1",
                                    "--loss-space", "image"])
    train_config = cli_train.train_config(args).train
    assert (train_config.lr_cooldown, train_config.hflip, train_config.min_snr_gamma, train_config.loss,
            train_config.loss_scales, tuple(train_config.time_range), train_config.loss_space) == (
        100, True, 5.0, "mse", 3, (0.8, 1.0), "image")
    plain = cli_train.train_config(cli.parser().parse_args(["train"])).train
    assert (plain.hflip, plain.loss, plain.loss_scales, plain.time_range, plain.loss_space) == (
        False, "l1", 1, (0.0, 1.0), "noise")
    for span in (["0.9", "0.8"], ["0.5", "0.5"], ["-0.1", "1"], ["0", "1.5"], ["0", "nan"]):
        with pytest.raises(ValueError, match=r"train.time_range = .* must be two numbers lo < hi, from 0 to 1"):
            cli_train.train_config(cli.parser().parse_args(["train", "--time-range", *span]))
    for bad in (["--min-snr-gamma", "-1"], ["--min-snr-gamma", "nan"], ["--lr-cooldown", "-3"], ["--loss", "huber"],
                ["--loss-scales", "0"], ["--loss-scales", "7"], ["--loss-space", "velocity"]):
        with pytest.raises(SystemExit) as stop:
            cli.parser().parse_args(["train", *bad])
        assert stop.value.code == 2
    assert "must be 0 (off)" in capsys.readouterr().err


def test_the_recipe_study_gives_every_variant_the_same_images_and_start():
    study = load_script("benchmarks", "recipe_study.py")
    warm = {name: study.variant_changes(name, 6400, warm_start=True) for name in study.VARIANTS}
    assert warm["batch16"]["batch_size"] == 16 and warm["cooldown"]["lr_cooldown"] == 25  # a quarter of 100 steps
    assert warm["batch16"]["lr_warmup"] * 16 == warm["reference"]["lr_warmup"] * 64  # the same images of warm-up
    anneal = study.variant_changes("anneal", 51200, warm_start=True, warmup_images=6400)
    assert (anneal["lr_warmup"], anneal["lr_cooldown"]) == (100, 700)  # every step after the warm-up decays
    short = study.variant_changes("batch16", 12800, warm_start=True, warmup_images=3200)
    assert short["lr_warmup"] == 200 and study.variant_changes("reference", 12800, True, 3200)["lr_warmup"] == 50
    scratch = study.variant_changes("hflip", 6400, warm_start=False)
    assert scratch["hflip"] and scratch["lr_warmup"] == 0 and scratch["ema_warmup"]
    with pytest.raises(SystemExit, match="unknown variant 'dropout'"):
        study.variant_changes("dropout", 6400, warm_start=True)


def test_a_recipe_change_wins_only_when_every_seed_beats_the_reference_by_more_than_the_spread():
    study = load_script("benchmarks", "recipe_study.py")
    def rows(name, losses, swds):
        return [{"variant": name, "seed": s, "heldout_loss": loss, "swd": w}
                for s, loss, w in zip((1, 2), losses, swds)]
    reference = rows("reference", (0.160, 0.162), (30.0, 31.0))  # spreads 0.002 and 1.0
    runs = (reference + rows("hflip", (0.155, 0.156), (27.0, 28.5)) + rows("batch16", (0.170, 0.171), (34.0, 35.0))
            + rows("cooldown", (0.155, 0.161), (27.0, 28.0)) + rows("min_snr5", (0.150, 0.151), (35.0, 36.0)))
    assert study.verdicts(runs) == {"hflip": "wins", "batch16": "loses", "cooldown": "even", "min_snr5": "even"}
    assert study.verdicts(runs[:1] + runs[2:3]) == {"hflip": "no verdict (one seed)"}


def test_a_run_on_a_time_range_saves_it_and_says_its_network_is_an_expert(make_flowers, tmp_path):
    tiny = preset("tiny").replace(train={"epochs": 1, "time_range": (0.5, 1.0)})
    said = []
    folder = train(tiny, make_flowers(16), tmp_path / "run", progress=False, max_steps=1, log=said.append)
    assert tuple(checkpoint.load_config(folder).train.time_range) == (0.5, 1.0)
    assert any("learns the diffusion times [0.5, 1) only" in line for line in said)
    plain = []
    train(preset("tiny").replace(train={"epochs": 1}), make_flowers(16), tmp_path / "plain", progress=False,
          max_steps=1, log=plain.append)
    assert not any("diffusion times" in line for line in plain)
