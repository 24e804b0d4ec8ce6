"""One copy of the sampler mathematics for torch and numpy (corolla.portable.arrays): schedules,
grids, weights and samplers give on numpy arrays what they give on torch tensors."""
import numpy as np
import pytest
import torch

from corolla import samplers, schedules

TIMES = np.linspace(0.0, 1.0, 41)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_schedules_answer_in_the_arrays_kind_and_precision(name):
    schedule = schedules.get(name)
    for dtype, tolerance in ((np.float32, 1e-6), (np.float64, 1e-14)):
        times = TIMES.astype(dtype).reshape(-1, 1, 1, 1)
        for got, expected in zip(schedule(times), schedule(torch.from_numpy(times))):
            assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == times.shape
            np.testing.assert_allclose(got, expected.numpy(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
@pytest.mark.parametrize("grid", sorted(samplers.GRIDS))
def test_numpy_grids_are_torchs(name, grid):
    schedule = schedules.get(name)
    for steps in (1, 2, 5, 20):
        got = samplers.get_grid(grid, steps, schedule, backend="numpy")
        expected = samplers.get_grid(grid, steps, schedule)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (steps + 1,)
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-12)


def test_weights_are_the_same_from_either_backend():
    nodes, lambda_s, lambda_t = [0.3, -0.1, -0.5], 0.3, 0.9
    np.testing.assert_allclose(samplers.exact_weights(nodes, lambda_s, lambda_t, backend="numpy"),
                               samplers.exact_weights(nodes, lambda_s, lambda_t), rtol=1e-13)
    with pytest.raises(ValueError, match="torch, numpy"):
        samplers.exact_weights(nodes, lambda_s, lambda_t, backend="jax")


def _denoiser(array):
    """A smooth nonlinear denoiser in the array's own library."""
    tanh = np.tanh if isinstance(array, np.ndarray) else torch.tanh

    def denoise(x, noise_rates, signal_rates):
        pred_noises = tanh(0.8 * x + 0.3) * (1 + noise_rates)
        return pred_noises, (x - noise_rates * pred_noises) / signal_rates
    return denoise


@pytest.mark.parametrize("sampler", sorted(samplers.SAMPLERS))
@pytest.mark.parametrize("grid", sorted(samplers.GRIDS))
def test_samplers_run_on_numpy_arrays(sampler, grid):
    schedule = schedules.offset_cosine
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    got = samplers.get(sampler)(_denoiser(x), schedule, x, samplers.get_grid(grid, 6, schedule, backend="numpy"))
    expected = samplers.get(sampler)(_denoiser(torch.tensor(0.0)), schedule, torch.from_numpy(x),
                                     samplers.get_grid(grid, 6, schedule))
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10, atol=1e-10)
    # float32 noise stays float32, as in torch
    x32 = x.astype(np.float32)
    assert samplers.get(sampler)(_denoiser(x32), schedule, x32,
                                 samplers.get_grid(grid, 3, schedule, backend="numpy")).dtype == np.float32


def test_stochastic_ddim_takes_numpy_noise():
    schedule, x = schedules.cosine, np.zeros((1, 1, 2, 2), np.float32)
    draws = iter(np.ones((20, 1, 1, 2, 2), np.float32))
    times = samplers.get_grid("uniform", 5, schedule, backend="numpy")
    got = samplers.ddim(_denoiser(x), schedule, x, times, eta=1.0, noise_fn=lambda: next(draws))
    ones = iter(torch.ones(20, 1, 1, 2, 2))
    expected = samplers.ddim(_denoiser(torch.tensor(0.0)), schedule, torch.zeros(1, 1, 2, 2),
                             samplers.get_grid("uniform", 5, schedule), eta=1.0, noise_fn=lambda: next(ones))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_slerp_and_log_snr_follow_the_array():
    a, b = np.ones((2, 3)), np.zeros((2, 3))
    mixed = samplers.slerp(a, b, [0.0, 0.5, 1.0])
    assert isinstance(mixed, np.ndarray) and mixed.shape == (3, 2, 3)
    np.testing.assert_allclose(mixed[:, 0, 0], [0.0, np.sqrt(0.5), 1.0], atol=1e-15)
    assert isinstance(samplers.log_snr(schedules.cosine, np.array([0.5])), np.ndarray)
    assert isinstance(samplers.log_snr(schedules.cosine, 0.5), torch.Tensor)  # a number: torch, as always
