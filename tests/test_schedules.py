import math

import pytest
import torch

from corolla import schedules

T = torch.linspace(0, 1, 101, dtype=torch.float64)


@pytest.mark.parametrize("name", ["linear", "cosine", "offset_cosine"])
def test_rates_are_on_the_unit_circle(name):
    noise, signal = schedules.get(name)(T)
    assert torch.allclose(noise ** 2 + signal ** 2, torch.ones_like(T), atol=1e-12)
    assert (signal[1:] <= signal[:-1]).all(), "signal must fall as noise is added"


def test_offset_cosine_endpoints():
    noise, signal = schedules.offset_cosine(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert signal.tolist() == pytest.approx([0.95, 0.02], abs=1e-12)
    assert noise.tolist() == pytest.approx([math.sqrt(1 - 0.95 ** 2), math.sqrt(1 - 0.02 ** 2)], abs=1e-12)


def test_offset_cosine_is_linear_in_angle():
    noise, signal = schedules.offset_cosine(torch.tensor([0.5], dtype=torch.float64))
    angle = (math.acos(0.95) + math.acos(0.02)) / 2
    assert signal.item() == pytest.approx(math.cos(angle), abs=1e-12)


def test_cosine_schedule_formula():
    noise, signal = schedules.cosine(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert signal.tolist() == pytest.approx([1.0, math.cos(math.pi / 4), 0.0], abs=1e-12)


def test_linear_reference_cumulative_product():
    # the reference: betas over t = i / T, abar = cumprod(1 - beta)
    times = torch.arange(1000, dtype=torch.float64) / 1000
    noise, signal = schedules.linear(times)
    betas = [1e-4 + (i / 1000) * (0.02 - 1e-4) for i in range(1000)]
    for k in (0, 1, 10, 500, 999):
        abar = math.prod(1 - b for b in betas[:k + 1])
        assert signal[k].item() ** 2 == pytest.approx(abar, rel=1e-9)
    assert signal[0].item() == pytest.approx(math.sqrt(1 - 1e-4), abs=1e-12)


def test_linear_continuous_matches_discrete_on_the_grid():
    # at t = k / T the continuous form equals prod_{i=1..k} (1 - beta(i/T))
    k = torch.tensor([1, 250, 1000])
    noise, signal = schedules.linear_continuous(k.double() / 1000)
    for j, kk in enumerate(k.tolist()):
        abar = math.prod(1 - (1e-4 + (i / 1000) * (0.02 - 1e-4)) for i in range(1, kk + 1))
        assert signal[j].item() ** 2 == pytest.approx(abar, rel=1e-9)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        schedules.get("sigmoid")
