"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018): distances between the feature
distributions of real and generated images, from features of any network (corolla.inception
gives the standard one)."""
from __future__ import annotations

import math

import torch


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
