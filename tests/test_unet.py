import math

import pytest
import torch
import torch.nn.functional as F

from corolla.config import preset
from corolla.unet import BottomAttention, UNet, UNetConfig, count_parameters, sinusoidal_embedding


def test_seed64_parameter_count_matches_keras_reference():
    assert count_parameters(UNet(preset("seed64").unet)) == 1_950_627


def test_batchnorm_statistics_are_buffers_not_parameters():
    net = UNet()
    names = dict(net.named_buffers())
    assert any(n.endswith("running_mean") for n in names)
    assert not any("norm" in n for n, _ in net.named_parameters())


def test_sinusoidal_embedding_formula():
    v = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64).view(3, 1, 1, 1)
    emb = sinusoidal_embedding(v, 32, 1000.0)
    assert emb.shape == (3, 32, 1, 1)
    freqs = [math.exp(math.log(1000.0) * i / 15) for i in range(16)]
    for b, value in enumerate([0.0, 0.3, 1.0]):
        angles = [2 * math.pi * f * value for f in freqs]
        expected = [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
        assert emb[b, :, 0, 0].tolist() == pytest.approx(expected, abs=1e-9)


def test_output_shape_and_zero_at_initialisation():
    torch.manual_seed(0)
    net = UNet()
    out = net(torch.randn(2, 3, 64, 64), torch.rand(2, 1, 1, 1))
    assert out.shape == (2, 3, 64, 64)
    assert torch.count_nonzero(out) == 0  # the zero-initialised head, as the reference


def test_keras_initialisation_and_batchnorm_settings():
    net = UNet()
    assert torch.count_nonzero(net.stem.bias) == 0
    bound = math.sqrt(6 / (3 + 32))  # Glorot-uniform limit of the 1x1 stem conv
    assert net.stem.weight.abs().max() <= bound
    bn = net.down[0].blocks[0].norm
    assert (bn.eps, bn.momentum, bn.affine) == (1e-3, 0.01, False)


def test_other_sizes_and_widths():
    net = UNet(UNetConfig(widths=(8, 16), bottom_width=16, block_depth=1, embedding_size=8))
    assert net(torch.randn(1, 3, 16, 16), torch.rand(1, 1, 1, 1)).shape == (1, 3, 16, 16)
    assert UNet()(torch.randn(1, 3, 32, 32), torch.rand(1, 1, 1, 1)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("classes", [(), ("a", "b")])
def test_inference_in_place_gives_the_training_forward_and_leaves_the_inputs(classes):
    """Without gradients the residual blocks work in place (swish, residual and class additions):
    the same predictions as with gradients, bit for bit, the inputs untouched, and with gradients
    the backward pass still runs through them."""
    torch.manual_seed(0)
    config = UNetConfig(widths=(8, 16), bottom_width=16, block_depth=1, embedding_size=8, classes=classes)
    net = UNet(config).eval()
    torch.nn.init.normal_(net.head.weight)  # the zero head would hide every difference
    x, v = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 1, 1)
    labels = torch.tensor([0, 1]) if classes else None
    kept = x.clone()
    with torch.no_grad():
        inference = net(x, v, labels)
    x.requires_grad_(True)
    trained = net(x, v, labels)
    assert torch.equal(inference, trained.detach()) and inference.abs().max() > 0.1
    assert torch.equal(x.detach(), kept)
    trained.square().sum().backward()
    block = net.down[0].blocks[0]
    assert block.conv1.weight.grad is not None and block.conv1.weight.grad.abs().max() > 0


def _reference_and_twin(option: str):
    """seed64's network and its twin with `option` on, drawn from the same seed, their heads at
    random: the twin must hold every weight of the reference and compute its output, since what
    the option adds is drawn last and starts at zero -> (reference, twin, x, v)."""
    seed64 = preset("seed64").unet
    torch.manual_seed(5)
    plain = UNet(seed64)
    torch.manual_seed(5)
    twin = UNet(UNetConfig(**{**seed64.__dict__, option: True}))
    assert all(torch.equal(value, twin.state_dict()[key]) for key, value in plain.state_dict().items())
    x, v = torch.randn(2, 3, 64, 64), torch.tensor([0.1, 0.9]).view(2, 1, 1, 1)
    with torch.no_grad():
        plain.head.weight.normal_()
        twin.head.weight.copy_(plain.head.weight)
        plain.eval()
        twin.eval()
        assert torch.equal(plain(x, v), twin(x, v))
    return plain, twin, x, v


def test_noise_in_blocks_adds_a_noise_shift_to_every_block_and_starts_as_the_reference():
    plain, shifted, x, v = _reference_and_twin("noise_in_blocks")
    blocks = 2 * (32 + 64 + 96) + 2 * 128 + 2 * (96 + 64 + 32)
    # BlockNoise's Linear(32 -> 128) and a 128 -> width map in each of the 14 blocks
    assert count_parameters(shifted) == 1_950_627 + 32 * 128 + 128 + blocks * 128
    with torch.no_grad():
        # once learned, a block's shift changes with the noise level
        block = shifted.down[0].blocks[0]
        block.noise_shift.weight.normal_()
        embedding = sinusoidal_embedding(v, 32, 1000.0).flatten(1)
        shifts = block.noise_shift(shifted.block_noise(embedding))
        assert shifts.shape == (2, 32, 1, 1) and not torch.allclose(shifts[0], shifts[1])
        assert not torch.equal(plain(x, v), shifted(x, v))


def test_attention_joins_the_bottom_and_starts_as_the_reference():
    plain, attending, x, v = _reference_and_twin("attention")
    # GroupNorm's scale and shift, the 1x1 convolutions to q, k, v and out, at the 128-wide bottom
    assert count_parameters(attending) == 1_950_627 + 2 * 128 + (128 * 384 + 384) + (128 * 128 + 128)
    assert attending.attention.heads == 4 and attending.attention.norm.num_groups == 32
    with torch.no_grad():
        attending.attention.out.weight.normal_(0.0, 0.1)
        assert not torch.allclose(plain(x, v), attending(x, v))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attending(x, v)
        assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()


def test_bottom_attention_is_scaled_dot_product_attention_over_positions():
    torch.manual_seed(0)
    block = BottomAttention(64)
    with torch.no_grad():
        block.out.weight.normal_(0.0, 0.2)
        block.norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 64, 5, 3)
        q, k, v = block.qkv(block.norm(x)).reshape(2, 3, 2, 32, 15).unbind(1)
        expected = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
        expected = x + block.out(expected.transpose(2, 3).reshape(2, 64, 5, 3))
        assert torch.allclose(block(x), expected, atol=1e-5)
        # every position weighs all the others: a change at one position moves the output everywhere
        moved = x.clone()
        moved[:, :, 0, 0] += 1.0
        assert (block(moved) - block(x))[:, :, 4, 2].abs().max() > 1e-3
        # a width that is not a multiple of 32 channels per head gets one head
        assert BottomAttention(16).heads == 1 and BottomAttention(16).norm.num_groups == 16
