"""Inception-v3 pool features for FID and KID: the 2015-12-05 TensorFlow graph, as FID defines it.

FID and KID are only comparable across papers when computed with the exact network of the
original TF implementation (Heusel et al. 2017), whose weights pytorch-fid ported to PyTorch as
pt_inception-2015-12-05-6726825d.pth (torch-fidelity and torchmetrics ship the same weights as
weights-inception-2015-12-05-6726825d.pth). That graph differs from torchvision's Inception-v3:
its average pools ignore padding (TF's 'SAME' pooling) and the last block pools by max, and it
has 1008 classes. The modules below carry the same names as torchvision's, so that state dict
loads as it is. No network is needed at run time: the weights come from a local file, read with
safetensors or torch.load(weights_only=True) only, never unpickled.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .storage.safefile import open_regular

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries its hash's start
WEIGHTS_ENV = "COROLLA_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
FEATURES = 2048
CLASSES = 1008  # the TF graph's 1001 ImageNet classes padded to 1008


class InceptionWeightsError(ValueError):
    """No usable Inception weights file: the message says which file to get and where to put it."""


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (TF's epsilon 1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _same_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's 3x3 'SAME' average pool divides by the number of real (unpadded) pixels
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b..5d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_same_avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..6e) with factorised 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_same_avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b, 7c) with split 1x3 / 3x1 branches. The TF graph pools Mixed_7c by
    max instead of average (max_pool=True), a quirk FID's numbers depend on."""

    def __init__(self, in_channels: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool
                  else _same_avg_pool(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3(nn.Module):
    """uint8 images (N, 3, H, W) -> (N, 2048) pool3 features, in float32.

    Input handling follows pytorch-fid: scale to [0, 1], resize bilinearly (no antialiasing) to
    299x299, then map to [-1, 1] as the TF graph expects."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, CLASSES)  # unused for features; kept so the weights file loads whole
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                          # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                          # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)                                                      # ... -> (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))                                             # (N, 2048)


def weights_help() -> str:
    return (f"FID and KID need the Inception weights file {WEIGHTS_NAME} (95 MB). Download it from {WEIGHTS_URL} "
            f"and pass it with --inception-weights PATH or the {WEIGHTS_ENV} environment variable, or put it at "
            f"{default_weights_path()}")


def default_weights_path() -> Path:
    from .data.imagefolder import cache_dir
    return cache_dir() / WEIGHTS_NAME


def find_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The weights file to use: `path`, else $COROLLA_INCEPTION_WEIGHTS, else the cache's copy;
    None when none is given or found. A path that was given but does not exist is an error."""
    given = path or os.environ.get(WEIGHTS_ENV)
    if given:
        found = Path(given).expanduser()
        if not found.is_file():
            source = "--inception-weights" if path else WEIGHTS_ENV
            raise InceptionWeightsError(f"{source}: {str(found)!r} is not a file. {weights_help()}")
        return found
    cached = default_weights_path()
    return cached if cached.is_file() else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or from a .pth/.pt through torch.load(weights_only=True), which
    refuses anything but tensors and plain containers (no code runs)."""
    try:
        with open_regular(path) as f:  # never a FIFO or device
            if path.suffix == ".safetensors":
                from safetensors.torch import load
                return load(f.read())
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means: not a weights file we can use
        raise InceptionWeightsError(f"{path}: not a readable weights file ({type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''}). {weights_help()}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InceptionWeightsError(f"{path}: holds no state dict of tensors. {weights_help()}")
    return state


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionV3:
    """The FID Inception network with weights from `path` (or the environment / cache, see
    find_weights); raises InceptionWeightsError naming the file to get when there is none."""
    found = find_weights(path)
    if found is None:
        raise InceptionWeightsError(f"no Inception weights. {weights_help()}")
    state = read_state_dict(found)
    network = InceptionV3()
    expected = network.state_dict()
    # BatchNorm's step counters are bookkeeping only; old files lack them
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise InceptionWeightsError(f"{found}: not the FID Inception weights ({detail}). {weights_help()}")
    for key, value in expected.items():
        if key in state and state[key].shape != value.shape:
            raise InceptionWeightsError(f"{found}: {key} has shape {tuple(state[key].shape)}, expected "
                                        f"{tuple(value.shape)}. {weights_help()}")
    network.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    if found.suffix != ".safetensors" and not file_sha256(found).startswith(WEIGHTS_SHA256_PREFIX):
        warnings.warn(f"{found} loads, but is not the standard {WEIGHTS_NAME} (its SHA-256 does not start with "
                      f"{WEIGHTS_SHA256_PREFIX}): FID and KID will not compare with published figures", stacklevel=2)
    return network.to(device)


def load_available(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[InceptionV3 | None, Path | None]:
    """(network, weights file) when weights are given or found, else (None, None): for callers
    that compute KID and FID only where the weights are present."""
    found = find_weights(path)
    return (load_inception(found, device), found) if found is not None else (None, None)


@torch.no_grad()
def features(network: nn.Module, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> (N, D) float64 features, batch by batch on the network's device."""
    device = next(network.parameters()).device
    out = [network(images[i:i + batch_size].to(device)).double().cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, FEATURES, dtype=torch.float64)
