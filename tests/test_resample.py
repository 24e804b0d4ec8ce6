"""The compile-friendly 2x bilinear upsampling gives F.interpolate's values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from corolla.resample import upsample2x, upsample2x_by_shifts


def _reference(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("channels_last", [False, True])
def test_shifts_give_interpolates_values_and_gradients(channels_last):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, generator=generator)  # odd and even sides: both edges clamp
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(2, 3, 10, 8, generator=generator)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = _reference(a), upsample2x_by_shifts(b)
    assert yb.shape == (2, 3, 10, 8)
    assert (ya - yb).abs().max() < 1e-6
    assert yb.is_contiguous(memory_format=torch.channels_last) == channels_last
    (ya * weights).sum().backward()
    (yb * weights).sum().backward()
    assert (a.grad - b.grad).abs().max() < 1e-5
    assert a.grad.abs().max() > 0.1  # the gradients compared are not all zero


def test_shifts_in_bfloat16_round_like_interpolate():
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    exact = _reference(x)
    for y in (_reference(x.bfloat16()), upsample2x_by_shifts(x.bfloat16())):
        assert y.dtype == torch.bfloat16
        assert ((y.float() - exact).abs() / exact.abs().clamp(min=1)).max() < 2 ** -7


def test_single_pixel_maps_upsample_to_constant_maps():
    x = torch.randn(2, 3, 1, 1, generator=torch.Generator().manual_seed(3))
    for y in (upsample2x_by_shifts(x), _reference(x)):
        assert (y - x.expand(-1, -1, 2, 2)).abs().max() < 1e-6


def test_eager_upsampling_is_interpolate():
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(upsample2x(x), _reference(x))
