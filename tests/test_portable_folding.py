"""BatchNorm folded into the convolutions (corolla.portable.folding): the same predictions to
float32 rounding, at every pixel including the edges, on tiny networks and the shipped model."""
import pytest
import torch
from conftest import CLASSES, make_labels_matter

from corolla.portable.folding import FoldedConv, fold_batchnorm
from corolla.storage.pretrained import load_pretrained
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
    for size in (8, 16, 24):  # the edge bias follows the image size
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
    got = FoldedConv(norm, conv)(x)
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
