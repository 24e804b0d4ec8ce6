"""Sample-quality metrics: FID, KID, sliced Wasserstein distance, held-out loss, memorisation.

All image inputs are uint8 tensors (N, 3, H, W), generated images quantised as a PNG would be,
so generated and real images are measured the same way. Everything random draws from an explicit
seed: the same images give the same numbers.

- FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) compare feature distributions; the
  arithmetic here takes features from any network (inception.py gives the standard one).
- SWD (Karras et al. 2018, progressive GANs, appendix D) compares the distributions of 7x7
  patches of each Laplacian-pyramid level; no pretrained network.
- The held-out loss is the training objective of the EMA network on unseen images, on a fixed
  grid of diffusion times with fixed noise.
- Memorisation compares each generated image's nearest training image with the training set's
  own leave-one-out nearest-neighbour distances.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed, limits, schedules
from . import inception as inception_module
from .data import imagefolder, rundata
from .data.imagefolder import cache_dir
from .diffusion import DiffusionModel
from .generation import SamplingSettings, generate, seeded_generator
from .storage import checkpoint
from .storage.grids import save_grid

# --- FID ------------------------------------------------------------------------------------


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), in float64."""
    f = features.double()
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {f.shape[0]}")
    mean = f.mean(dim=0)
    centred = f - mean
    return mean, centred.T @ centred / (f.shape[0] - 1)


def _psd_eigenvalues(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with rounding noise zeroed: below the numerical-rank
    tolerance (size x machine epsilon x largest) they are zero in exact arithmetic, and their
    square roots would otherwise add up to a visible error (FID(x, x) != 0 on few images)."""
    tolerance = values.shape[-1] * torch.finfo(values.dtype).eps * values.abs().max()
    return torch.where(values > tolerance, values, torch.zeros_like(values))


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by its eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * _psd_eigenvalues(values).sqrt()) @ vectors.T


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Squared Frechet distance between N(mean1, cov1) and N(mean2, cov2):
    |mean1 - mean2|^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))  (Heusel et al. 2017, eq. 6).

    Tr (cov1 cov2)^(1/2) is computed as Tr (cov1^(1/2) cov2 cov1^(1/2))^(1/2): the two products
    share their eigenvalues, and the second is symmetric, so its eigenvalues come out real and
    non-negative (up to rounding) instead of through sqrtm of a non-symmetric matrix."""
    root1 = _sqrt_psd(cov1)
    inner = root1 @ cov2 @ root1
    trace_sqrt = _psd_eigenvalues(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    return float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt)


def fid(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID between two sets of (N, D) features.

    With few images next to the feature size (hundreds of images, 2048 features) the D x D
    route is slow and mostly rounding; then, with A and B the centred features, cov1 cov2 =
    A^T A B^T B / c shares its nonzero eigenvalues with M M^T for M = A B^T (N1 x N2), so
    Tr (cov1 cov2)^(1/2) is M's nuclear norm / sqrt(c), c = (N1 - 1)(N2 - 1)."""
    a, b = real_features.double(), fake_features.double()
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    if n1 * n2 > d * d:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n1} and {n2}")
    centred_a, centred_b = a - a.mean(dim=0), b - b.mean(dim=0)
    trace_sqrt = torch.linalg.svdvals(centred_a @ centred_b.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    return float((a.mean(dim=0) - b.mean(dim=0)).square().sum() + centred_a.square().sum() / (n1 - 1)
                 + centred_b.square().sum() / (n2 - 1) - 2 * trace_sqrt)


# --- KID ------------------------------------------------------------------------------------


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0) -> torch.Tensor:
    """k(x, y) = (x.y / D + coef)^degree, KID's kernel (Binkowski et al. 2018, section 3)."""
    return (x @ y.T / x.shape[1] + coef) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0) -> torch.Tensor:
    """Unbiased estimate of the squared MMD: the within-set means leave out k(x_i, x_i)."""
    m, n = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x, degree, coef)
    k_yy = polynomial_kernel(y, y, degree, coef)
    k_xy = polynomial_kernel(x, y, degree, coef)
    return ((k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
            + (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
            - 2 * k_xy.mean())


def kid(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, int]:
    """KID: the unbiased MMD^2 averaged over `subsets` random subsets of each set ->
    (mean, population std over subsets, subset size used). The subset size is clipped to the
    smaller set, as KID on few images must be; each subset is a fresh permutation (real first,
    then fake) from a generator seeded with `seed`."""
    real, fake = real_features.double(), fake_features.double()
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {real.shape[0]} real and {fake.shape[0]} generated")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        r = real[torch.randperm(real.shape[0], generator=generator)[:size]]
        f = fake[torch.randperm(fake.shape[0], generator=generator)[:size]]
        values.append(mmd2_unbiased(r, f))
    stacked = torch.stack(values)
    return float(stacked.mean()), float(stacked.std(unbiased=False)), size


# --- Sliced Wasserstein distance over Laplacian pyramids -------------------------------------

PATCH = 7                  # neighbourhood size of a descriptor
PATCHES_PER_IMAGE = 128    # descriptors drawn per image and level
DIRECTION_REPEATS = 4      # times a fresh set of random directions is drawn
DIRECTIONS = 128           # random directions per repeat
SWD_MIN_RESOLUTION = 16    # coarsest pyramid level, as in Karras et al. 2018
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
GAUSSIAN_5X5 = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0  # the kernel of OpenCV's pyrDown / pyrUp


def _blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 5x5 convolution, borders mirrored without repeating the edge (as pyrDown)."""
    c = images.shape[1]
    weight = kernel.to(images).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), weight, groups=c)


def pyramid_down(images: torch.Tensor) -> torch.Tensor:
    return _blur(images, GAUSSIAN_5X5)[:, :, ::2, ::2]


def pyramid_up(images: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels, then blur with 4x the kernel (each output pixel sees a quarter
    of the taps), as OpenCV's pyrUp."""
    n, c, h, w = images.shape
    spread = images.new_zeros(n, c, 2 * h, 2 * w)
    spread[:, :, ::2, ::2] = images
    return _blur(spread, 4.0 * GAUSSIAN_5X5)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest first: each level is its Gaussian level minus the upsampled next one; the last is
    the coarse Gaussian level itself. Summing back up reproduces the image."""
    pyramid = [images]
    for _ in range(levels - 1):
        coarse = pyramid_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - pyramid_up(coarse)
        pyramid.append(coarse)
    return pyramid


def swd_resolutions(size: int) -> list[int]:
    """The pyramid's resolutions: size, size/2, ... down to 16 (just `size` below 16)."""
    out = [size]
    while out[-1] % 2 == 0 and out[-1] // 2 >= SWD_MIN_RESOLUTION:
        out.append(out[-1] // 2)
    return out


def _descriptors(level: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random 7x7 patches of a level (N, C, H, W), spread evenly over its images, each
    channel normalised to zero mean and unit std over the set -> (count, C*7*7)."""
    n, c, h, w = level.shape
    half = PATCH // 2
    image = torch.arange(count) * n // count
    ys = torch.randint(half, h - half, (count,), generator=generator)
    xs = torch.randint(half, w - half, (count,), generator=generator)
    offsets = torch.arange(-half, half + 1)
    patches = level[image[:, None, None, None], torch.arange(c)[None, :, None, None],
                    (ys[:, None] + offsets)[:, None, :, None], (xs[:, None] + offsets)[:, None, None, :]]
    patches = patches - patches.mean(dim=(0, 2, 3), keepdim=True)
    patches = patches / patches.std(dim=(0, 2, 3), unbiased=False, keepdim=True).clamp_min(1e-8)
    return patches.reshape(count, -1)


def sliced_wasserstein_1d(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between the projected
    point sets (equal sizes: sort both and compare in order)."""
    values = []
    for _ in range(DIRECTION_REPEATS):
        directions = torch.randn(a.shape[1], DIRECTIONS, generator=generator)
        directions = directions / directions.norm(dim=0, keepdim=True)
        # (directions, points), sorted by numpy: several times faster than torch's CPU sort here
        projected_a = np.sort((directions.T @ a.T).numpy(), axis=1)
        projected_b = np.sort((directions.T @ b.T).numpy(), axis=1)
        values.append(float(np.abs(projected_a - projected_b).mean(dtype=np.float64)))
    return sum(values) / len(values)


def sliced_wasserstein(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[int, float]:
    """SWD x 1e3 per pyramid resolution (Karras et al. 2018, table 1 reports it so), between two
    sets of uint8 images of one size. Both sets get 128 descriptors x the smaller set's size."""
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"SWD compares images of one shape, got {tuple(real.shape[1:])} and {tuple(fake.shape[1:])}")
    if min(real.shape[-2:]) < PATCH:
        raise ValueError(f"SWD needs images of at least {PATCH}x{PATCH} pixels")
    generator = torch.Generator().manual_seed(seed)
    resolutions = swd_resolutions(real.shape[-1])
    count = PATCHES_PER_IMAGE * min(real.shape[0], fake.shape[0])
    real_levels = laplacian_pyramid(real.float(), len(resolutions))
    fake_levels = laplacian_pyramid(fake.float(), len(resolutions))
    out = {}
    for resolution, real_level, fake_level in zip(resolutions, real_levels, fake_levels):
        a = _descriptors(real_level, count, generator)
        b = _descriptors(fake_level, count, generator)
        out[resolution] = 1e3 * sliced_wasserstein_1d(a, b, generator)
    return out


# --- Held-out denoising loss -----------------------------------------------------------------

LOSS_TIMES = 10  # the grid (k + 1/2) / 10: a midpoint rule for the expectation over t ~ U(0, 1)


def loss_times(count: int = LOSS_TIMES) -> torch.Tensor:
    return (torch.arange(count, dtype=torch.float32) + 0.5) / count


@torch.no_grad()
def denoising_loss(model: DiffusionModel, images: torch.Tensor, seed: int = 0, times: int = LOSS_TIMES,
                   batch_size: int = 64, schedule: str = "") -> list[float]:
    """The L1 noise loss of the EMA network (BatchNorm frozen) at each time of loss_times(times),
    over uint8 images (N, C, H, W), at the noise levels of `schedule` (default: the model's own).
    Image i always gets the same noises, drawn from its own generator (seed, i), so the value
    depends neither on batching nor on other images."""
    rates = schedules.get(schedule) if schedule else None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    grid = loss_times(times)
    totals = torch.zeros(times, dtype=torch.float64)
    for first in range(0, images.shape[0], batch_size):
        batch = images[first:first + batch_size].to(device).float() / 255.0
        noises = torch.stack([torch.randn((times, *batch.shape[1:]), generator=seeded_generator(seed, i))
                              for i in range(first, first + batch.shape[0])]).to(device)  # (B, T, C, H, W)
        for k in range(times):
            t = torch.full((batch.shape[0], 1, 1, 1), float(grid[k]), device=device)
            totals[k] += model.noise_loss(batch, noises[:, k], t, ema=True, schedule=rates).item() * batch.shape[0]
    model.train(was_training)
    return (totals / images.shape[0]).tolist()


# --- Memorisation ----------------------------------------------------------------------------


def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor, leave_one_out: bool = False,
                       chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image its nearest reference image in pixel space -> (RMS distances in
    [0, 1] units, i.e. L2 / sqrt(C*H*W), float64; indices). leave_one_out: queries are the
    references themselves and an image may not be its own neighbour."""
    q = queries.flatten(1).float() / 255.0
    r = references.flatten(1).float() / 255.0
    r_sq = r.square().sum(dim=1)
    indices = []
    for first in range(0, q.shape[0], chunk):
        block = q[first:first + chunk]
        # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r, one matrix product per chunk
        d2 = block.square().sum(dim=1, keepdim=True) + r_sq - 2 * block @ r.T
        if leave_one_out:
            rows = torch.arange(block.shape[0])
            d2[rows, first + rows] = math.inf
        indices.append(d2.argmin(dim=1))
    index = torch.cat(indices)
    # the chosen pairs' distances again, exactly, without the expansion's cancellation
    distance = (q.double() - r[index].double()).square().mean(dim=1).sqrt()
    return distance, index


def memorisation(generated: torch.Tensor, train: torch.Tensor, train_distances: torch.Tensor,
                 heldout: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Nearest-training-image distances of generated images against the training set's own
    leave-one-out distances (`train_distances`, from nearest_neighbours(train, train, True)):
    the distances a fresh sample of the data distribution would have. -> (summary, distances,
    indices of the nearest training images).

    nn_ratio: median generated distance / median training distance; about 1 for a model that
    samples new images, near 0 for one that copies. nn_copy_fraction: share of generated images
    closer to a training image than 99% of training images are to theirs (about 0.01 or less
    without copying). nn_heldout_median: the same distance for real held-out images."""
    distances, index = nearest_neighbours(generated, train)
    train_median = float(train_distances.median())
    summary = {
        "nn_generated_median": float(distances.median()),
        "nn_generated_min": float(distances.min()),
        "nn_train_median": train_median,
        "nn_ratio": float(distances.median()) / train_median if train_median > 0 else math.nan,
        "nn_copy_fraction": float((distances < torch.quantile(train_distances, 0.01)).double().mean()),
    }
    if heldout is not None and heldout.shape[0] > 0:
        summary["nn_heldout_median"] = float(nearest_neighbours(heldout, train)[0].median())
    return summary, distances, index


def closest_pairs(generated: torch.Tensor, train: torch.Tensor, distances: torch.Tensor, index: torch.Tensor,
                  count: int = 8) -> torch.Tensor:
    """The `count` generated images nearest to a training image, each followed by that training
    image -> (2*count, C, H, W) uint8, to tile two per row."""
    order = torch.argsort(distances)[:count]
    return torch.stack([torch.stack([generated[i], train[index[i]]]) for i in order.tolist()]).flatten(0, 1)


# --- Evaluating a model ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    samples: int = 256            # generated images per evaluation
    # sampling as every command samples (the reference's KID uses 5 steps during training)
    steps: int = SamplingSettings.steps
    sampler: str = SamplingSettings.sampler
    eta: float = SamplingSettings.eta
    seed: int = SamplingSettings.seed  # generation, held-out noise, SWD and KID subsets all derive from it
    batch_size: int = SamplingSettings.batch_size
    kid_subsets: int = 100
    kid_subset_size: int = 1000   # clipped to the number of images
    train_loss_images: int = 64   # training images scored on the loss grid, beside the held-out ones
    # the losses' noise levels: a schedule's name, "" for the model's own; naming one compares
    # models trained under different schedules at the same levels
    loss_schedule: str = ""

    @property
    def sampling(self) -> SamplingSettings:
        """How the images are drawn: on the sampler's default grid, as `corolla sample` draws them."""
        return SamplingSettings(steps=self.steps, sampler=self.sampler, eta=self.eta, batch_size=self.batch_size,
                                seed=self.seed)


PAIRS_MIN_SIZE = 64  # images in the nearest-pairs PNG are shown at least this big


def fine_detail(images: torch.Tensor) -> float:
    """images (N, C, H, W) in [0, 1] -> the standard deviation of each image minus its 3x3 mean
    (edge pixels replicated): texture and edges, what an image smoother than a photo lacks."""
    local_mean = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return float((images - local_mean).std())


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """images (N, C, H, W) blurred by a Gaussian of `sigma` pixels (separable, borders mirrored)."""
    if sigma <= 0:
        return images
    radius = min(int(3 * sigma + 0.5), images.shape[-1] - 1, images.shape[-2] - 1)
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).expand(images.shape[1], 1, -1)
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel[:, :, None, :], groups=images.shape[1])
    return F.conv2d(x, kernel[:, :, :, None], groups=images.shape[1])


def blur_to_fine_detail(images: torch.Tensor, target: float, iterations: int = 20) -> tuple[torch.Tensor, float]:
    """images (N, C, H, W) in [0, 1] blurred (gaussian_blur) until their fine_detail is `target`
    -> (the blurred images, sigma); unchanged (sigma 0) when they are no sharper than that.
    Bisection: fine detail falls as sigma grows."""
    if fine_detail(images) <= target:
        return images, 0.0
    low, high = 0.0, 4.0
    for _ in range(iterations):
        sigma = (low + high) / 2
        low, high = (sigma, high) if fine_detail(gaussian_blur(images, sigma)) > target else (low, sigma)
    sigma = (low + high) / 2
    return gaussian_blur(images, sigma), sigma


def quantise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, rounding as a saved PNG would (grids.to_uint8)."""
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


class Evaluator:
    """Scores models against fixed data: training images (SWD, KID/FID and memorisation
    reference), held-out images (loss) and fixed settings, so successive checkpoints compare.

    What does not depend on the model is computed once here: the training set's leave-one-out
    neighbour distances and, with an Inception network, the real images' features."""

    def __init__(self, train: torch.Tensor, heldout: torch.Tensor, settings: EvalSettings = EvalSettings(),
                 inception: torch.nn.Module | None = None, real_features: torch.Tensor | None = None):
        if train.dtype != torch.uint8 or train.dim() != 4:
            raise ValueError("Evaluator takes uint8 images (N, C, H, W)")
        self.train, self.heldout, self.settings, self.inception = train, heldout, settings, inception
        self.train_distances = nearest_neighbours(train, train, leave_one_out=True)[0]
        if inception is not None and real_features is None:
            real_features = inception_module.features(inception, train, settings.batch_size)
        self.real_features = real_features

    def generate(self, model: DiffusionModel) -> torch.Tensor:
        s = self.settings
        images = generate(model, s.samples, s.sampling, image_size=self.train.shape[-1])
        return quantise(images)

    def __call__(self, model: DiffusionModel, pairs_png: str | Path | None = None,
                 generated: torch.Tensor | None = None) -> dict[str, float | list | None]:
        """-> flat dict of metric values (lower is better for swd, heldout_loss, kid, fid);
        kid, kid_std and fid are None without an Inception network, heldout_loss without
        held-out images. pairs_png: where to save the closest generated/training pairs."""
        s = self.settings
        was_training = model.training
        if generated is None:  # uint8 images already made elsewhere (by several processes, say)
            generated = self.generate(model)
        results: dict[str, float | list | None] = {}
        swd = sliced_wasserstein(self.train, generated, s.seed)
        results["swd"] = sum(swd.values()) / len(swd)
        results.update({f"swd_{resolution}": value for resolution, value in swd.items()})
        by_time = (denoising_loss(model, self.heldout, s.seed, batch_size=s.batch_size, schedule=s.loss_schedule)
                   if self.heldout.shape[0] else None)
        results["heldout_loss"] = sum(by_time) / len(by_time) if by_time else None
        results["heldout_loss_by_time"] = by_time
        train_by_time = denoising_loss(model, self.train[:s.train_loss_images], s.seed, batch_size=s.batch_size,
                                       schedule=s.loss_schedule)
        results["train_loss"] = sum(train_by_time) / len(train_by_time)
        summary, distances, index = memorisation(generated, self.train, self.train_distances, self.heldout)
        results.update(summary)
        results["kid"] = results["kid_std"] = results["fid"] = None
        if self.inception is not None:
            fake_features = inception_module.features(self.inception, generated, s.batch_size)
            results["kid"], results["kid_std"], _ = kid(self.real_features, fake_features, s.kid_subsets,
                                                        s.kid_subset_size, s.seed)
            results["fid"] = fid(self.real_features, fake_features)
        if pairs_png is not None:
            pairs = closest_pairs(generated, self.train, distances, index)
            zoom = max(1, PAIRS_MIN_SIZE // pairs.shape[-1])  # small images are enlarged, pixels kept square
            pairs = pairs.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
            save_grid(pairs.float() / 255.0, pairs_png, ncol=2)
        model.train(was_training)
        return results


def cached_real_features(network: torch.nn.Module, images: torch.Tensor, weights: Path,
                         batch_size: int = 50) -> torch.Tensor:
    """Inception features of real images, cached in the corolla cache folder under a key of the
    images' bytes (so: of the data folder, image size, crop and split) and the weights file."""
    digest = hashlib.sha256(f"{tuple(images.shape)}|{inception_module.file_sha256(weights)}|".encode())
    digest.update(images.contiguous().numpy().tobytes())
    path = cache_dir() / "inception" / f"{digest.hexdigest()[:24]}.safetensors"
    hit = imagefolder.read_cache(path, images.shape[0] * inception_module.FEATURES * 4)
    if hit is not None and "features" in hit[0]:  # else computed again
        return hit[0]["features"].double()
    features = inception_module.features(network, images, batch_size)
    imagefolder.write_cache(path, {"features": features.float()})  # best effort: a warning when it cannot
    return features


def evaluate_checkpoint(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                        settings: EvalSettings = EvalSettings(), inception_weights: str | os.PathLike | None = None,
                        device: str = "auto", pairs_png: str | os.PathLike | None = None, precision: str = "auto",
                        heldout_dir: str | os.PathLike | None = None) -> dict | None:
    """`corolla evaluate` from Python: load a checkpoint and the data folder it was trained on
    (default: the bundled flowers), split it as training did, and score the checkpoint ->
    the metrics with what they were measured on (None on ranks other than 0). heldout_dir: real
    images the model never saw, scored against instead of the split's held-out share. KID and FID
    need Inception weights (the argument, $COROLLA_INCEPTION_WEIGHTS or the cache copy); without
    them they are None."""
    from .devices import resolve_device
    started = time.perf_counter()
    world, dev = distributed.init(resolve_device(device))
    model, config = checkpoint.load_for_sampling(path, dev, precision)
    s = settings
    limits.check_held_images(s.samples, config.data.image_size, "--samples", model.network.config.channels)
    # under torchrun every process makes its share of the images; rank 0 scores them all
    generated = distributed.generate_all(model, s.samples, s.sampling, image_size=config.data.image_size)
    distributed.shutdown(world)
    if not world.is_main:
        return None
    folder = Path(data_dir) if data_dir else imagefolder.bundled_dir()
    images, _ = imagefolder.load_folder(folder, config.data.image_size, config.data.crop)
    parts, _ = rundata.split_images(config, images, heldout_dir)
    network, weights = inception_module.load_available(inception_weights, dev)
    real_features = None if network is None else cached_real_features(network, parts.train, weights,
                                                                      settings.batch_size)
    results = Evaluator(parts.train, parts.val, settings, network, real_features)(model, pairs_png, quantise(generated))
    return {"checkpoint": str(checkpoint.resolve(path)), "data": str(folder),
            "heldout": str(heldout_dir) if heldout_dir else None, "precision": model.precision,
            "image_size": config.data.image_size,
            "train_images": parts.train.shape[0], "heldout_images": parts.val.shape[0],
            **dataclasses.asdict(settings), "inception_weights": str(weights) if weights else None,
            "pairs_png": str(pairs_png) if pairs_png else None, **results,
            "seconds": time.perf_counter() - started}
