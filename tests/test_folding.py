"""BatchNorm folded into the convolutions (corolla.folding): the same predictions to
float32 rounding, at every pixel including the edges, on tiny networks and the shipped model."""
import pytest
import torch
from conftest import CLASSES, make_labels_matter

from corolla.folding import FoldedConv, fold_batchnorm
from corolla.storage import checkpoint
from corolla.storage.pretrained import load_pretrained, path
from corolla.unet import UNet, UNetConfig

SMALL = dict(widths=(8, 16), bottom_width=16, block_depth=1, embedding_size=8)


def _network(classes=()) -> UNet:
    """A tiny network with a random head and BatchNorm statistics far from 0 and 1."""
    torch.manual_seed(0)
    network = UNet(UNetConfig(**SMALL, classes=classes))
    g = torch.Generator().manual_seed(1)
    make_labels_matter(network, g)
    with torch.no_grad():
        for norm in network.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.normal_(0.0, 1.0, generator=g)
                norm.running_var.uniform_(0.2, 4.0, generator=g)
    return network.eval()


def _inputs(batch: int, size: int, classes: int = 0) -> tuple:
    g = torch.Generator().manual_seed(2)
    inputs = (torch.randn(batch, 3, size, size, generator=g), torch.rand(batch, 1, 1, 1, generator=g))
    return inputs + ((torch.randint(0, classes + 1, (batch,), generator=g),) if classes else ())


def _error(expected: torch.Tensor, got: torch.Tensor) -> float:
    return ((expected - got).abs().max() / expected.abs().max().clamp_min(1)).item()


@pytest.mark.parametrize("classes", [(), CLASSES])
@torch.no_grad()
def test_folding_keeps_the_predictions(classes):
    network = _network(classes)
    folded = fold_batchnorm(network)
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert sum(isinstance(m, FoldedConv) for m in folded.modules()) == norms == 6  # one per residual block
    assert not [p for p in folded.parameters() if p.requires_grad]
    # the edge bias follows the image size; at 4 px the bottom level is 1x1, all edge, where the
    # map is added whole instead of corrected along the edges
    for size in (4, 8, 16, 24):
        inputs = _inputs(3, size, len(classes))
        expected = network(*inputs)
        assert expected.abs().max() > 0.1
        assert _error(expected, folded(*inputs)) < 2e-6
    # the network folded is left as it was
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules()) == norms


@torch.no_grad()
def test_edges_get_their_own_bias():
    """conv(BN(x)) pads BN(x) with zeros: the edge pixels of a constant image differ from the middle."""
    norm = torch.nn.BatchNorm2d(4, affine=True).eval()
    conv = torch.nn.Conv2d(4, 5, 3, padding=1)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        norm.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 0.25]))
        norm.weight.copy_(torch.tensor([1.5, 0.5, -1.0, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.3, 0.0, 1.0]))
    x = torch.randn(2, 4, 6, 7)
    expected = conv(norm(x))
    folded = FoldedConv(norm, conv)
    # one module's cached edge corrections serve either layout: channels-last between two standard calls
    for layout in (torch.contiguous_format, torch.channels_last, torch.contiguous_format):
        got = folded(x.contiguous(memory_format=layout))
        assert got.is_contiguous(memory_format=layout)
        assert (expected - got).abs().max() < 1e-5
    edge = FoldedConv(norm, conv).bias_map(6, 7, x)
    assert (edge[..., 0, 0] - edge[..., 3, 3]).abs().max() > 0.1  # a per-channel bias would be wrong


@torch.no_grad()
def test_folding_keeps_the_shipped_models_predictions():
    model, _ = load_pretrained()
    network = model.ema_network.eval()
    inputs = _inputs(2, 64)
    assert _error(network(*inputs), fold_batchnorm(network)(*inputs)) < 2e-6
    # in the channels-last layout too, as corolla samples on the CPU
    last = fold_batchnorm(network).to(memory_format=torch.channels_last)
    channels_last = (inputs[0].contiguous(memory_format=torch.channels_last), inputs[1])
    assert _error(network(*inputs), last(*channels_last)) < 2e-6


@torch.no_grad()
def test_bfloat16_folded_is_as_close_to_float32_as_unfolded():
    """Folding scales the weights before autocast rounds them to bfloat16: no worse for it."""
    network = _network(CLASSES)
    folded = fold_batchnorm(network)
    inputs = _inputs(4, 16, len(CLASSES))
    exact = network(*inputs)
    with torch.autocast("cpu", torch.bfloat16):
        unfolded_error = _error(exact, network(*inputs).float())
        folded_error = _error(exact, folded(*inputs).float())
    assert 1e-4 < unfolded_error < 0.05  # bfloat16 did round
    assert folded_error < 2 * unfolded_error


@torch.no_grad()
def test_sampling_commands_call_the_folded_network():
    """load_for_sampling, which every command and the page load through, folds the EMA network;
    its predictions are the unfolded network's, and the online network is not folded."""
    model, _ = checkpoint.load_for_sampling(path(), torch.device("cpu"), "fp32")
    assert any(isinstance(m, FoldedConv) for m in model.sampling_network.modules())
    assert not any(isinstance(m, FoldedConv) for m in model.modules())
    x, v = _inputs(2, 64)
    s = (1 - v ** 2).sqrt()
    folded_noise, _ = model.denoise(x, v, s)
    unfolded_noise = model.ema_network(x.contiguous(memory_format=torch.channels_last), v ** 2)
    assert _error(unfolded_noise, folded_noise) < 2e-6
