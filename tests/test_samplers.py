"""Samplers on Gaussian data, where the denoiser and the probability-flow ODE are known exactly.

Data x0 ~ N(mu, s^2) per pixel, x_t = a x0 + n eps (a = signal rate, n = noise rate):
    E[x0 | x_t] = mu + s^2 a (x_t - a mu) / (a^2 s^2 + n^2),
and along the probability-flow ODE (x_t - a mu) / sqrt(a^2 s^2 + n^2) stays constant, so the
exact result of a deterministic sampler, the prediction at its last evaluation time, is known.
"""
import math

import numpy as np
import pytest
import torch

from corolla import samplers, schedules

SCHEDULE = schedules.offset_cosine
ORDERS = {"ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 3}
SHAPE = (3, 4, 4)


def _gaussian(seed: int = 0, shape=SHAPE):
    """Per-pixel means in [-1, 1] and deviations in [0.1, 1] (varied, so that no error term cancels
    in every pixel at once), with the exact denoiser."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    s = 0.1 + 0.9 * torch.rand(shape, generator=g, dtype=torch.float64)

    def denoise(x, noise_rates, signal_rates):
        variance = signal_rates ** 2 * s ** 2 + noise_rates ** 2
        pred_images = mu + s ** 2 * signal_rates * (x - signal_rates * mu) / variance
        return (x - signal_rates * pred_images) / noise_rates, pred_images

    return mu, s, denoise


def _rates(t: float):
    noise, signal = SCHEDULE(torch.tensor(t, dtype=torch.float64))
    return noise.item(), signal.item()


def _exact(mu, s, x1, t: float) -> torch.Tensor:
    """E[x0 | x_t] at the point the exact ODE from x1 (at t = 1) reaches at time t."""
    n1, a1 = _rates(1.0)
    n, a = _rates(t)
    invariant = (x1 - a1 * mu) / torch.sqrt(a1 ** 2 * s ** 2 + n1 ** 2)
    x = a * mu + torch.sqrt(a ** 2 * s ** 2 + n ** 2) * invariant
    return mu + s ** 2 * a * (x - a * mu) / (a ** 2 * s ** 2 + n ** 2)


def _noise(batch: int = 8, seed: int = 1, shape=SHAPE) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 20])
def test_ddim_gives_the_analytic_result_of_its_steps_on_gaussian_data(steps):
    # one DDIM step maps y = x - a mu to y (a a' s^2 + n n') / (a^2 s^2 + n^2): compose the steps
    # in closed form and compare with the sampler
    mu, s, denoise = _gaussian()
    x1 = _noise()
    times = samplers.uniform_times(steps).tolist()
    y = x1 - _rates(times[0])[1] * mu
    for t, t_next in zip(times[:-2], times[1:-1]):
        (n, a), (n2, a2) = _rates(t), _rates(t_next)
        y = y * (a * a2 * s ** 2 + n * n2) / (a ** 2 * s ** 2 + n ** 2)
    n, a = _rates(times[-2])
    analytic = mu + s ** 2 * a * y / (a ** 2 * s ** 2 + n ** 2)
    result = samplers.ddim(denoise, SCHEDULE, x1, samplers.uniform_times(steps))
    torch.testing.assert_close(result, analytic, rtol=0, atol=1e-12)


def test_ddim_is_not_exact_on_gaussian_data_but_converges_to_the_ode_solution():
    # Cauchy-Schwarz: the DDIM factor (a a' s^2 + n n') / v is below sqrt(v' / v) unless a/n = a'/n'
    mu, s, denoise = _gaussian()
    x1 = _noise()
    errors = []
    for steps in (5, 50, 500):
        times = samplers.uniform_times(steps)
        errors.append(_rmse(samplers.ddim(denoise, SCHEDULE, x1, times), _exact(mu, s, x1, times[-2].item())))
    assert errors[0] > 1e-2
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 8
    assert errors[2] < 2e-3


def _slope(sampler: str, grid: str, steps_list) -> float:
    """Least-squares slope of -log(error) against log(steps)."""
    mu, s, denoise = _gaussian()
    x1 = _noise()
    errors = []
    for steps in steps_list:
        times = samplers.get_grid(grid, steps, SCHEDULE)
        result = samplers.get(sampler)(denoise, SCHEDULE, x1, times)
        errors.append(_rmse(result, _exact(mu, s, x1, times[-2].item())))
    return -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]


@pytest.mark.parametrize("sampler", sorted(ORDERS))
def test_error_shrinks_at_the_solvers_order_on_the_log_snr_grid(sampler):
    assert _slope(sampler, "logsnr", [20, 40, 80, 160]) == pytest.approx(ORDERS[sampler], abs=0.3)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_error_shrinks_at_the_solvers_order_on_the_reference_grid(sampler):
    assert _slope(sampler, "uniform", [20, 40, 80, 160]) == pytest.approx(ORDERS[sampler], abs=0.3)


def test_higher_order_solvers_beat_ddim_at_equal_evaluations():
    mu, s, denoise = _gaussian()
    x1 = _noise()
    times = samplers.get_grid("logsnr", 20, SCHEDULE)
    exact = _exact(mu, s, x1, 0.0)
    errors = {name: _rmse(samplers.get(name)(denoise, SCHEDULE, x1, times), exact) for name in ORDERS}
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        assert errors[name] < errors["ddim"] / 20


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_3m", "unipc"])
@pytest.mark.parametrize("steps", [1, 2])
def test_every_solver_starts_with_a_ddim_step(sampler, steps):
    _, _, denoise = _gaussian()
    x1 = _noise()
    times = samplers.get_grid("logsnr", steps, SCHEDULE)
    torch.testing.assert_close(samplers.get(sampler)(denoise, SCHEDULE, x1, times),
                               samplers.ddim(denoise, SCHEDULE, x1, times), rtol=0, atol=1e-12)


def test_few_steps_keep_the_full_order_to_the_last_step():
    """With 3 evaluations, DPM-Solver++(2M)'s second step, the last, uses both predictions (issue 27
    item 6: no lower-order final step), as written out here with its weights; and with 5 steps
    every multistep solver is closer to the exact solution than DDIM."""
    mu, s, denoise = _gaussian()
    x1 = _noise()
    times = samplers.get_grid("logsnr", 3, SCHEDULE)
    noise, signal = SCHEDULE(times)
    lambdas = (signal.log() - noise.log()).tolist()
    x, preds = x1, []
    for i in range(2):
        preds.insert(0, denoise(x, *_rates(times[i].item()))[1])
        nodes = lambdas[i::-1][:2]
        weights = samplers.dpmpp_2m_weights(nodes, lambdas[i], lambdas[i + 1])
        x = (noise[i + 1] / noise[i]) * x + signal[i + 1] * sum(w * d for w, d in zip(weights, preds))
    expected = denoise(x, *_rates(times[2].item()))[1]
    torch.testing.assert_close(samplers.dpmpp_2m(denoise, SCHEDULE, x1, times), expected, rtol=0, atol=1e-12)
    assert _rmse(expected, samplers.ddim(denoise, SCHEDULE, x1, times)) > 1e-3  # not DDIM's last step

    times = samplers.get_grid("logsnr", 5, SCHEDULE)
    exact = _exact(mu, s, x1, 0.0)
    ddim_error = _rmse(samplers.ddim(denoise, SCHEDULE, x1, times), exact)
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        assert _rmse(samplers.get(name)(denoise, SCHEDULE, x1, times), exact) < ddim_error / 2


def test_ddim_with_eta_zero_ignores_the_noise_source():
    _, _, denoise = _gaussian()
    x1 = _noise()
    times = samplers.uniform_times(10)
    draws = [torch.Generator().manual_seed(k) for k in (1, 2)]
    results = [samplers.ddim(denoise, SCHEDULE, x1, times, eta=0.0,
                             noise_fn=lambda g=g: torch.randn(x1.shape, generator=g, dtype=x1.dtype))
               for g in draws]
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], samplers.ddim(denoise, SCHEDULE, x1, times))


def test_ddim_with_eta_one_is_stochastic_with_the_right_marginal():
    # x0 ~ N(0.3, 0.5^2) everywhere; at the last evaluation the prediction E[x0 | x_t] of a
    # correctly distributed x_t has mean mu and variance s^4 a^2 / (a^2 s^2 + n^2). Sampling is
    # first order in the marginal too (20 steps: 9 % low), hence 200 steps.
    shape = (1, 16, 16)
    mu, s = torch.full(shape, 0.3, dtype=torch.float64), torch.full(shape, 0.5, dtype=torch.float64)

    def denoise(x, noise_rates, signal_rates):
        pred = mu + s ** 2 * signal_rates * (x - signal_rates * mu) / (signal_rates ** 2 * s ** 2 + noise_rates ** 2)
        return (x - signal_rates * pred) / noise_rates, pred

    x1 = _noise(64, seed=3, shape=shape)
    times = samplers.uniform_times(200)
    results = []
    for seed in (4, 5):
        g = torch.Generator().manual_seed(seed)
        results.append(samplers.ddim(denoise, SCHEDULE, x1, times, eta=1.0,
                                     noise_fn=lambda: torch.randn(x1.shape, generator=g, dtype=x1.dtype)))
    deterministic = samplers.ddim(denoise, SCHEDULE, x1, times)
    n, a = _rates(times[-2].item())
    variance = 0.5 ** 4 * a ** 2 / (a ** 2 * 0.5 ** 2 + n ** 2)
    for result in results:
        assert result.mean().item() == pytest.approx(0.3, abs=0.01)
        assert result.var().item() == pytest.approx(variance, rel=0.06)
        # the added noise moves each image well away from the deterministic one
        assert _rmse(result, deterministic) > 0.5 * math.sqrt(variance)
    assert _rmse(results[0], results[1]) > 0.5 * math.sqrt(variance)


def test_epsilon_scaling_divides_the_noise_and_keeps_the_pair_consistent():
    """scaled_noise: the predicted noise / scale, and the image that the noisy one then implies
    (x = signal * image + noise * noise): more of x is kept as image. Torch and numpy alike."""
    _, _, denoise = _gaussian()
    x, (n, a) = _noise(), _rates(0.3)
    assert samplers.scaled_noise(denoise, 1.0) is denoise
    noises, images = samplers.scaled_noise(denoise, 1.25)(x, n, a)
    assert torch.allclose(noises, denoise(x, n, a)[0] / 1.25)
    assert torch.allclose(a * images + n * noises, x)
    on_numpy = samplers.scaled_noise(lambda x, n, s: (0.5 * x, (x - n * 0.5 * x) / s), 1.25)
    noises, images = on_numpy(x.numpy(), n, a)
    assert isinstance(images, np.ndarray) and np.allclose(noises, 0.4 * x.numpy())
    assert np.allclose(images, (1 - 0.4 * n) * x.numpy() / a)
    # along a whole DDIM run on Gaussian data, divided noise leaves more of each step's x in the
    # images: they spread wider than the exact denoiser's, in every pixel
    mu, s, denoise = _gaussian()
    times = samplers.uniform_grid(20, SCHEDULE)
    plain, scaled = (samplers.ddim(samplers.scaled_noise(denoise, scale), SCHEDULE, _noise(256), times) - mu
                     for scale in (1.0, 1.02))
    assert (scaled.std(0) > plain.std(0)).all()


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_3m", "unipc"])
def test_deterministic_solvers_reject_eta(sampler):
    _, _, denoise = _gaussian()
    with pytest.raises(ValueError, match="deterministic"):
        samplers.get(sampler)(denoise, SCHEDULE, _noise(), samplers.uniform_times(4), eta=0.5,
                              noise_fn=lambda: torch.zeros(8, *SHAPE))


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="dpmpp_2m"):
        samplers.get("euler")
    with pytest.raises(ValueError, match="logsnr"):
        samplers.get_grid("cosine", 10, SCHEDULE)
    with pytest.raises(ValueError, match="at least 1"):
        samplers.get_grid("karras", 0, SCHEDULE)


# --- grids and weights -------------------------------------------------------------------------

def test_uniform_grid_is_the_reference_grid():
    assert torch.equal(samplers.get_grid("uniform", 20, SCHEDULE), samplers.uniform_times(20))


def test_log_snr_grid_is_equally_spaced_in_lambda_and_ends_at_zero():
    times = samplers.get_grid("logsnr", 10, SCHEDULE)
    assert len(times) == 11 and times[0].item() == 1.0 and times[-2].item() == 0.0 and times[-1].item() == 0.0
    lambdas = samplers.log_snr(SCHEDULE, times[:-1])
    # offset cosine: lambda = log(0.02 / sqrt(1 - 0.02^2)) at t = 1, log(0.95 / sqrt(1 - 0.95^2)) at t = 0
    assert lambdas[0].item() == pytest.approx(math.log(0.02 / math.sqrt(1 - 0.02 ** 2)), abs=1e-9)
    assert lambdas[-1].item() == pytest.approx(math.log(0.95 / math.sqrt(1 - 0.95 ** 2)), abs=1e-9)
    torch.testing.assert_close(lambdas.diff(), torch.full((9,), (lambdas[-1] - lambdas[0]).item() / 9,
                                                          dtype=torch.float64), rtol=0, atol=1e-9)


def test_karras_grid_spaces_sigma_to_the_one_seventh_equally():
    times = samplers.get_grid("karras", 8, SCHEDULE)
    assert times[0].item() == 1.0 and times[-2].item() == 0.0
    sigmas = torch.exp(-samplers.log_snr(SCHEDULE, times[:-1]))  # noise / signal
    steps = (sigmas ** (1 / 7)).diff()
    torch.testing.assert_close(steps, steps[:1].expand(7), rtol=0, atol=1e-9)
    assert (times.diff() <= 0).all()


@pytest.mark.parametrize("schedule", ["linear", "cosine", "offset_cosine"])
def test_grids_stay_finite_where_a_schedule_reaches_noise_or_signal_zero(schedule):
    sched = schedules.get(schedule)
    for grid in ("logsnr", "karras"):
        times = samplers.get_grid(grid, 12, sched)
        lambdas = samplers.log_snr(sched, times)
        assert torch.isfinite(lambdas).all() and (lambdas.abs() <= samplers.LOG_SNR_LIMIT + 1e-9).all()
        assert (times.diff() <= 0).all() and 0.0 <= times.min() and times.max() <= 1.0


def test_times_at_log_snr_inverts_log_snr():
    t = torch.tensor([0.0, 0.1, 0.5, 0.93, 1.0], dtype=torch.float64)
    torch.testing.assert_close(samplers.times_at_log_snr(SCHEDULE, samplers.log_snr(SCHEDULE, t)), t,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("h", [0.01, 0.3, 0.7, 2.0])
def test_exact_weights_integrate_polynomials_exactly(h):
    # integral_{l_s}^{l_t} e^-(l_t - l) P(l) dl for a quadratic P through three unevenly spaced nodes,
    # against a fine trapezoid rule
    lambda_s, lambda_t = 0.4, 0.4 + h
    nodes = [lambda_s, lambda_s - 0.8 * h, lambda_s - 2.1 * h]

    def poly(lam):
        return 0.7 - 1.3 * lam + 0.9 * lam ** 2

    weights = samplers.exact_weights(nodes, lambda_s, lambda_t)
    grid = np.linspace(lambda_s, lambda_t, 200001)
    integrand = np.exp(-(lambda_t - grid)) * poly(grid)
    quadrature = float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(grid)))
    assert sum(w * poly(node) for w, node in zip(weights, nodes)) == pytest.approx(quadrature, rel=1e-9)


def test_dpmpp_2m_weights_follow_lu_et_al():
    h, r = 0.5, 0.8
    weights = samplers.dpmpp_2m_weights([1.0, 1.0 - r * h], 1.0, 1.0 + h)
    first = 1 - math.exp(-h)
    assert weights == pytest.approx([first * (1 + 1 / (2 * r)), -first / (2 * r)], rel=1e-12)
    assert samplers.dpmpp_2m_weights([1.0], 1.0, 1.0 + h) == pytest.approx([first], rel=1e-12)


# --- every schedule, sampler and grid, with a network's float32 arithmetic ---------------------

def _network_like(seed: int = 0):
    """The Gaussian data's denoiser as DiffusionModel computes it: a float32 noise prediction, here
    exact but for a small error (1e-3 tanh(x): no network is exact), and the image recovered as
    (x - n eps) / a. Where a is about 0 that division amplifies the error without bound."""
    mu, s, _ = _gaussian(seed)

    def denoise(x, noise_rates, signal_rates):
        x64, n, a = x.double(), noise_rates.double(), signal_rates.double()
        pred_images = mu + s ** 2 * a * (x64 - a * mu) / (a ** 2 * s ** 2 + n ** 2)
        pred_noises = ((x64 - a * pred_images) / n + 1e-3 * torch.tanh(x64)).float()
        return pred_noises, (x - noise_rates * pred_noises) / signal_rates

    return mu, s, denoise


def _exact_from(schedule, mu, s, x_start, t_start: float, t: float) -> torch.Tensor:
    """_exact for any schedule, the ODE started at t_start."""
    (n1, a1), (n, a) = [[v.item() for v in schedule(torch.tensor(u, dtype=torch.float64))] for u in (t_start, t)]
    invariant = (x_start - a1 * mu) / torch.sqrt(a1 ** 2 * s ** 2 + n1 ** 2)
    x = a * mu + torch.sqrt(a ** 2 * s ** 2 + n ** 2) * invariant
    return mu + s ** 2 * a * (x - a * mu) / (a ** 2 * s ** 2 + n ** 2)


@pytest.mark.parametrize("schedule", sorted(schedules.SCHEDULES))
@pytest.mark.parametrize("sampler", sorted(ORDERS))
@pytest.mark.parametrize("grid", sorted(samplers.GRIDS))
def test_every_schedule_sampler_and_grid_solves_the_gaussian_ode_in_float32(schedule, sampler, grid):
    # the cosine's signal rate at t = 1 is -4.4e-8 in float32: a grid starting there multiplied the
    # 1e-3 error by 10**7 and gave an RMSE of 260 instead of below 0.04
    sched = schedules.get(schedule)
    mu, s, denoise = _network_like()
    x_start = _noise().float()
    times = samplers.get_grid(grid, 50, sched)
    result = samplers.get(sampler)(denoise, sched, x_start, times)
    exact = _exact_from(sched, mu, s, x_start.double(), times[0].item(), times[-2].item())
    assert result.dtype == torch.float32 and _rmse(result.double(), exact) < 0.05


@pytest.mark.parametrize("schedule", sorted(schedules.SCHEDULES))
def test_the_uniform_grid_starts_where_the_log_snr_grid_does(schedule):
    sched = schedules.get(schedule)
    uniform, logsnr = samplers.get_grid("uniform", 20, sched), samplers.get_grid("logsnr", 20, sched)
    assert uniform[0].item() == pytest.approx(logsnr[0].item(), abs=1e-12)
    assert samplers.log_snr(sched, uniform[0].item()).item() >= -samplers.LOG_SNR_LIMIT - 1e-9
    torch.testing.assert_close(uniform.diff(), uniform.diff()[:1].expand(20), rtol=0, atol=1e-12)  # still uniform
    if schedule == "offset_cosine":  # the reference's grid, bit for bit
        assert torch.equal(uniform, torch.linspace(1.0, 0.0, 21, dtype=torch.float64))
    else:  # linear: lambda(1) = -5.06; cosine: signal rate 0 at t = 1
        assert uniform[0].item() < 1.0
